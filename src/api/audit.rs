//! The append-only audit log: one entry per mutation, written in the mutation's own
//! transaction (no change without its entry, no entry without its change), readable by admins.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::db::{DbError, Tx};
use crate::error::ApiError;
use crate::ids::record_id;

/// What changed.
pub struct Change<'a> {
    /// `resource.verb`, e.g. `room.create`.
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

pub async fn record(tx: &mut Tx, caller: &Caller, org: &str, now: i64, c: Change<'_>) -> Result<(), DbError> {
    let (kind, id) = caller.actor();
    let actor = Actor { kind, id, ip: caller.ip.as_deref(), user_agent: caller.user_agent.as_deref() };
    record_by(tx, &actor, org, now, c).await
}

/// Records `c` in the transaction that made it, and commits both.
pub async fn commit(mut tx: Tx, caller: &Caller, org: &str, now: i64, c: Change<'_>) -> Result<(), DbError> {
    record(&mut tx, caller, org, now, c).await?;
    tx.commit().await
}

/// Who made a change and from where, for changes made without an API key (LiveKit's
/// RoomService, authenticated by a LiveKit token).
pub struct Actor<'a> {
    pub kind: &'static str,
    pub id: &'a str,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// Longest `User-Agent` kept in an entry: the header is the client's to fill, and the log
/// keeps every entry forever.
pub const MAX_USER_AGENT: usize = 256;

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    &s[..end]
}

pub async fn record_by(tx: &mut Tx, actor: &Actor<'_>, org: &str, now: i64, c: Change<'_>) -> Result<(), DbError> {
    let (actor_type, actor_id) = (actor.kind, actor.id);
    let user_agent = actor.user_agent.map(|ua| clip(ua, MAX_USER_AGENT));
    let sql = "INSERT INTO audit_log (id, org_id, at, actor_type, actor_id, action, target_type, target_id, \
               before, after, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    let json = |v: Option<Value>| v.map(|v| v.to_string());
    tx.execute(
        sql,
        args![
            record_id("aud", now),
            org,
            now,
            actor_type,
            actor_id,
            c.action,
            c.target_type,
            c.target_id,
            json(c.before),
            json(c.after),
            actor.ip,
            user_agent
        ],
    )
    .await?;
    Ok(())
}

#[derive(Serialize, sqlx::FromRow)]
struct Entry {
    id: String,
    at: i64,
    actor_type: String,
    actor_id: String,
    action: String,
    target_type: String,
    target_id: Option<String>,
    #[serde(serialize_with = "super::v1::raw_json")]
    before: Option<String>,
    #[serde(serialize_with = "super::v1::raw_json")]
    after: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Entries older than this id (the last id of the previous page).
    before: Option<String>,
    limit: Option<i64>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(list))
}

/// Newest first, paged by id.
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::AuditRead)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut tx = s.db.begin(org).await?;
    let sql = "SELECT id, at, actor_type, actor_id, action, target_type, target_id, before, after, ip, user_agent \
               FROM audit_log WHERE org_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";
    let entries: Vec<Entry> = tx.fetch_all(sql, args![org, q.before, limit]).await?;
    tx.commit().await?;
    Ok(Json(serde_json::json!({ "entries": entries })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_whole_characters() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc");
        // "é" is two bytes: cutting inside it drops it whole.
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip(&"€".repeat(100), MAX_USER_AGENT).len(), 255);
    }
}
