//! Call history: one call per room session, with who was in it and when
//! (written by [`crate::api::history`]).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::not_found;
use crate::api::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/calls", get(list)).route("/v1/calls/{id}", get(read))
}

#[derive(Serialize, sqlx::FromRow)]
struct Call {
    id: String,
    room: String,
    sid: String,
    started_at: i64,
    ended_at: Option<i64>,
    end_reason: Option<String>,
    max_participants: i64,
}

#[derive(Serialize, sqlx::FromRow)]
struct Participant {
    identity: String,
    name: String,
    sid: String,
    kind: String,
    joined_at: i64,
    left_at: Option<i64>,
    leave_reason: Option<String>,
}

macro_rules! select_calls {
    ($tail:literal) => {
        concat!(
            "SELECT c.id AS id, r.name AS room, c.sid AS sid, c.started_at AS started_at, c.ended_at AS ended_at, ",
            "c.end_reason AS end_reason, c.max_participants AS max_participants ",
            "FROM calls c JOIN rooms r ON r.org_id = c.org_id AND r.id = c.room_id WHERE c.org_id = $1",
            $tail
        )
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only calls of this room.
    room: Option<String>,
    limit: Option<i64>,
    /// Calls older than this one (the last of the previous page).
    before: Option<String>,
}

/// Newest first.
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::CallsRead)?;
    let limit = super::page_limit(q.limit);
    let mut tx = s.db.begin(org).await?;
    // Call ids grow with time, so "before" is a plain comparison.
    let sql =
        select_calls!(" AND ($2 IS NULL OR r.name = $2) AND ($3 IS NULL OR c.id < $3) ORDER BY c.id DESC LIMIT $4");
    let calls: Vec<Call> = tx.fetch_all(sql, args![org, q.room, q.before, limit]).await?;
    tx.commit().await?;
    Ok(Json(json!({ "calls": calls })))
}

async fn read(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::CallsRead)?;
    let mut tx = s.db.begin(org).await?;
    let call: Call =
        tx.fetch_optional(select_calls!(" AND c.id = $2"), args![org, &id]).await?.ok_or_else(|| not_found("call"))?;
    let sql = "SELECT identity, name, sid, kind, joined_at, left_at, leave_reason FROM participants \
               WHERE org_id = $1 AND call_id = $2 ORDER BY joined_at, id";
    let participants: Vec<Participant> = tx.fetch_all(sql, args![org, &id]).await?;
    tx.commit().await?;
    let mut out = serde_json::to_value(call).expect("serializes");
    out["participants"] = serde_json::to_value(participants).expect("serializes");
    Ok(Json(out))
}
