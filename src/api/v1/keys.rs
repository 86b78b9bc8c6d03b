//! API keys: `alk_<prefix>_<secret>`, shown once at creation and stored as the SHA-256 of
//! the secret, with a role, scopes, an optional expiry, and revocation. A key minted by a key
//! goes when its minting key goes (revoked, or its user removed), and so on down the line.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{check_len, not_found, open};
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, NewKey, Perm, Principal, Role, generate_key, parse_scopes};
use crate::api::state::AppState;
use crate::args;
use crate::db::{DbError, Tx};
use crate::error::ApiError;
use crate::ids::record_id;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/api-keys", get(list).post(create)).route("/v1/api-keys/{id}", delete(revoke))
}

/// Stores a new key and its lookup entry. `created_by` is the actor (`api_key:<id>`,
/// `admin:admin`); `created_by_key` the API key that minted it, if one did.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    tx: &mut Tx,
    org: &str,
    id: &str,
    user: Option<&str>,
    name: &str,
    key: &NewKey,
    role: Role,
    scopes: &[String],
    expires_at: Option<i64>,
    created_by: &str,
    created_by_key: Option<&str>,
    now: i64,
) -> Result<(), DbError> {
    let sql = "INSERT INTO api_keys (id, org_id, user_id, name, prefix, secret_hash, role, scopes, expires_at, \
               created_by, created_by_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    let scopes = serde_json::to_string(scopes).expect("strings serialize");
    tx.execute(
        sql,
        args![
            id,
            org,
            user,
            name,
            &key.prefix,
            key.secret_hash.clone(),
            role.as_str(),
            scopes,
            expires_at,
            created_by,
            created_by_key,
            now
        ],
    )
    .await?;
    let sql = "INSERT INTO key_lookup (kind, lookup, org_id) VALUES ('api_key', $1, $2)";
    tx.execute(sql, args![&key.prefix, org]).await?;
    Ok(())
}

#[derive(Serialize, sqlx::FromRow)]
struct Key {
    id: String,
    name: String,
    prefix: String,
    user_id: Option<String>,
    role: String,
    #[serde(serialize_with = "super::raw_json")]
    scopes: String,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    created_by: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

macro_rules! select_keys {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, prefix, user_id, role, scopes, expires_at, last_used_at, created_by, created_at, ",
            "revoked_at FROM api_keys WHERE org_id = $1",
            $tail
        )
    };
}

async fn list(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::KeysRead)?;
    let mut tx = s.db.begin(org).await?;
    let keys: Vec<Key> = tx.fetch_all(select_keys!(" ORDER BY id"), args![org]).await?;
    tx.commit().await?;
    Ok(Json(json!({ "api_keys": keys })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    /// Default: the caller's role.
    role: Option<String>,
    /// Default: every scope the caller holds.
    scopes: Option<Vec<String>>,
    expires_in_secs: Option<i64>,
}

async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let org = caller.require(Perm::KeysWrite)?;
    check_len("name", &req.name, 128)?;
    let role = match req.role.as_deref() {
        None => caller.role(),
        Some(r) => Role::parse(r)
            .ok_or_else(|| ApiError::unprocessable("invalid_field", "role must be owner, admin, member or viewer"))?,
    };
    if role > caller.role() {
        return Err(ApiError::forbidden("insufficient_role", "a key cannot have a role above its creator's"));
    }
    let scopes = match req.scopes {
        Some(s) => s,
        None => match &caller.principal {
            Principal::Key { scopes, .. } => scopes.clone(),
            Principal::Admin => vec!["*".into()],
        },
    };
    parse_scopes(&scopes)?;
    if scopes.is_empty() || scopes.len() > Perm::ALL.len() {
        return Err(ApiError::unprocessable("invalid_field", "scopes must list 1 to 14 scopes"));
    }
    if !caller.holds_scopes(&scopes) {
        return Err(ApiError::forbidden("missing_scope", "a key cannot have scopes its creator lacks"));
    }
    let now = s.clock.now_ms();
    let expires_at = match req.expires_in_secs {
        Some(secs) if !(60..=10 * 365 * 86_400).contains(&secs) => {
            return Err(ApiError::unprocessable("invalid_field", "expires_in_secs must be 60 s to 10 years"));
        }
        Some(secs) => Some(now + secs * 1000),
        None => None,
    };
    let id = record_id("key", now);
    let key = generate_key();
    let (actor_type, actor_id) = caller.actor();
    let created_by = format!("{actor_type}:{actor_id}");
    let minted_by = match &caller.principal {
        Principal::Key { key_id, .. } => Some(key_id.as_str()),
        Principal::Admin => None,
    };
    let mut tx = s.db.begin(org).await?;
    if let Some(minter) = minted_by {
        hold_minter(&mut tx, org, minter).await?;
    }
    let name = req.name.trim();
    insert(&mut tx, org, &id, None, name, &key, role, &scopes, expires_at, &created_by, minted_by, now).await?;
    let stored: Key = tx.fetch_one(select_keys!(" AND id = $2"), args![org, &id]).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "api_key.create",
            target_type: "api_key",
            target_id: Some(&id),
            before: None,
            after: Some(json!(stored)),
        },
    )
    .await?;
    let mut out = json!(stored);
    out["key"] = json!(key.plaintext);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn revoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::KeysWrite).await?;
    let before: Key =
        tx.fetch_optional(select_keys!(" AND id = $2"), args![org, &id]).await?.ok_or_else(|| not_found("API key"))?;
    if Role::parse(&before.role).is_some_and(|r| r > caller.role()) {
        return Err(ApiError::forbidden("insufficient_role", "cannot revoke a key above your own role"));
    }
    let revoked = revoke_lineage(&mut tx, &caller, org, Lineage::Key(&id), now).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "api_key.revoke",
            target_type: "api_key",
            target_id: Some(&id),
            before: Some(json!(before)),
            after: Some(json!({ "revoked": revoked })),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Locks the key that mints another until the transaction ends, and refuses when it has been
/// revoked meanwhile (it was valid when the request authenticated). With [`revoke_lineage`]
/// locking every key it revokes, a mint and a revocation of its minter never both commit
/// without the new key being revoked: whichever locks the minter's row first makes the other
/// wait, and a waiting mint then sees the revocation. The update changes nothing; it is the
/// portable row lock (PostgreSQL's `FOR UPDATE`; SQLite's writer lock is already held).
async fn hold_minter(tx: &mut Tx, org: &str, minter: &str) -> Result<(), ApiError> {
    let held: Option<Revoked> = tx
        .fetch_optional(
            "UPDATE api_keys SET revoked_at = revoked_at WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL \
             RETURNING id",
            args![org, minter],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "key_revoked", "this API key was revoked")),
    }
}

/// Where a revocation starts.
pub(super) enum Lineage<'a> {
    /// One key.
    Key(&'a str),
    /// Every key of a user.
    User(&'a str),
}

/// The revocation of the keys `$seed` selects and, transitively, of every key they minted:
/// one statement, so it is all in the caller's transaction. Keys already revoked are walked
/// through (what they minted before revocation cascaded still goes) but keep their record.
macro_rules! revoke_lineage_sql {
    ($seed:literal) => {
        concat!(
            "WITH RECURSIVE lineage (id) AS (SELECT id FROM api_keys WHERE org_id = $3 AND ",
            $seed,
            " UNION SELECT k.id FROM api_keys k JOIN lineage l ON k.created_by_key = l.id WHERE k.org_id = $3) ",
            "UPDATE api_keys SET revoked_at = $1, revoked_by = $2 ",
            "WHERE org_id = $3 AND revoked_at IS NULL AND id IN (SELECT id FROM lineage) RETURNING id"
        )
    };
}

#[derive(sqlx::FromRow)]
struct Revoked {
    id: String,
}

/// Revokes the keys `from` names and every key minted from them; returns the ids it revoked
/// now, sorted (for the audit entry).
pub(super) async fn revoke_lineage(
    tx: &mut Tx,
    caller: &Caller,
    org: &str,
    from: Lineage<'_>,
    now: i64,
) -> Result<Vec<String>, DbError> {
    let (actor_type, actor_id) = caller.actor();
    let by = format!("{actor_type}:{actor_id}");
    // On PostgreSQL one statement sees the keys committed when it started: a key minted by a
    // mint that held its minter's row until just after that is found by the next round, and
    // mints from a key this transaction has revoked wait on its row, then fail. So repeat
    // until a round revokes nothing (on SQLite, whose writer lock excludes mints, the second
    // round finds nothing).
    let mut ids = Vec::new();
    loop {
        let rows: Vec<Revoked> = match from {
            Lineage::Key(id) => tx.fetch_all(revoke_lineage_sql!("id = $4"), args![now, &by, org, id]).await?,
            Lineage::User(id) => tx.fetch_all(revoke_lineage_sql!("user_id = $4"), args![now, &by, org, id]).await?,
        };
        if rows.is_empty() {
            break;
        }
        ids.extend(rows.into_iter().map(|r| r.id));
    }
    ids.sort();
    Ok(ids)
}
