//! Each org's LiveKit API key pairs: what its tokens (`POST /v1/tokens`) are signed with and
//! what its server SDKs (RoomService, Twirp) authenticate with. Secrets are sealed at rest
//! ([`crate::secrets`]); the token verifier holds them opened in memory.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{check_len, not_found, open};
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::config::generate_key_pair;
use crate::db::{Db, DbError, Tx};
use crate::error::ApiError;
use crate::ids::record_id;
use crate::secrets::{KEY_ID, SecretBox};
use crate::signal::token::{KeySource, TokenVerifier};
use futures_util::future::BoxFuture;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/livekit-keys", get(list).post(add)).route("/v1/livekit-keys/{id}", delete(revoke))
}

/// What a sealed secret is bound to.
fn context(org: &str, api_key: &str) -> String {
    format!("livekit_keys/{org}/{api_key}")
}

/// A new key pair for `org`, stored sealed; returns `(api key, secret)`.
pub async fn create(
    tx: &mut Tx,
    secrets: &SecretBox,
    org: &str,
    name: &str,
    now: i64,
) -> Result<(String, String), DbError> {
    let (api_key, secret) = generate_key_pair();
    let sealed = secrets.seal(secret.as_bytes(), &context(org, &api_key));
    let sql = "INSERT INTO livekit_keys (id, org_id, api_key, secret_ct, enc_key_id, name, created_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7)";
    tx.execute(sql, args![record_id("lkk", now), org, &api_key, sealed, KEY_ID, name, now]).await?;
    let sql = "INSERT INTO key_lookup (kind, lookup, org_id) VALUES ('livekit_key', $1, $2)";
    tx.execute(sql, args![&api_key, org]).await?;
    Ok((api_key, secret))
}

#[derive(sqlx::FromRow)]
struct Sealed {
    api_key: String,
    secret_ct: Vec<u8>,
}

async fn opened(tx: &mut Tx, secrets: &SecretBox, org: &str) -> Result<Vec<(String, String)>, DbError> {
    let sql = "SELECT api_key, secret_ct FROM livekit_keys WHERE org_id = $1 AND revoked_at IS NULL ORDER BY id";
    let rows: Vec<Sealed> = tx.fetch_all(sql, args![org]).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match secrets.open(&r.secret_ct, &context(org, &r.api_key)) {
            Ok(s) => Some((r.api_key, String::from_utf8_lossy(&s).into_owned())),
            Err(e) => {
                tracing::error!(org, api_key = r.api_key, error = %e, "LiveKit key does not open; is secret_key the one it was sealed with?");
                None
            }
        })
        .collect())
}

/// The key `org`'s tokens are signed with: its oldest live one.
pub async fn signing_key(tx: &mut Tx, secrets: &SecretBox, org: &str) -> Result<Option<(String, String)>, DbError> {
    Ok(opened(tx, secrets, org).await?.into_iter().next())
}

/// Finds keys created after this node started (an org created through another node) in the
/// control database.
pub struct StoredKeys {
    pub db: Db,
    pub secrets: SecretBox,
}

impl KeySource for StoredKeys {
    fn find<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<(String, String)>, String>> {
        Box::pin(async move {
            let found = async {
                let Some(org) = self.db.org_of_key("livekit_key", key).await? else { return Ok(None) };
                let mut tx = self.db.begin(&org).await?;
                let secret = opened(&mut tx, &self.secrets, &org).await?.into_iter().find(|(k, _)| k == key);
                tx.commit().await?;
                Ok::<_, DbError>(secret.map(|(_, s)| (s, org)))
            };
            found.await.map_err(|e| e.to_string())
        })
    }
}

/// Teaches the verifier every org's keys (at start).
pub async fn load_all(db: &Db, secrets: &SecretBox, tokens: &TokenVerifier) -> Result<usize, DbError> {
    let mut orgs: Vec<String> = db.lookups("livekit_key").await?.into_iter().map(|(_, org)| org).collect();
    orgs.sort();
    orgs.dedup();
    let mut n = 0;
    for org in orgs {
        let mut tx = db.begin(&org).await?;
        for (key, secret) in opened(&mut tx, secrets, &org).await? {
            tokens.add(key, secret, org.clone());
            n += 1;
        }
        tx.commit().await?;
    }
    Ok(n)
}

macro_rules! select_keys {
    ($tail:literal) => {
        concat!("SELECT id, api_key, name, created_at, revoked_at FROM livekit_keys WHERE org_id = $1", $tail)
    };
}

#[derive(Serialize, sqlx::FromRow)]
struct Listed {
    id: String,
    api_key: String,
    name: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

async fn list(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::KeysRead)?;
    let mut tx = s.db.begin(org).await?;
    let sql = select_keys!(" ORDER BY id");
    let keys: Vec<Listed> = tx.fetch_all(sql, args![org]).await?;
    tx.commit().await?;
    Ok(Json(json!({ "livekit_keys": keys })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
}

/// Another key pair for the org (rotation: add the new one, move clients, revoke the old).
/// The secret is shown once.
async fn add(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<NewKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let org = caller.require(Perm::KeysWrite)?;
    check_len("name", &req.name, 128)?;
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let (api_key, secret) = create(&mut tx, &s.secrets, org, req.name.trim(), now).await?;
    let sql = select_keys!(" AND api_key = $2");
    let key: Listed = tx.fetch_one(sql, args![org, &api_key]).await?;
    let change = Change {
        action: "livekit_key.create",
        target_type: "livekit_key",
        target_id: Some(&key.id),
        before: None,
        after: Some(json!(key)),
    };
    audit::commit(tx, &caller, org, now, change).await?;
    s.livekit.tokens.add(api_key, secret.clone(), org.to_string());
    let mut body = json!(key);
    body["api_secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// Revokes a key pair: tokens it signed are refused from then on (on other nodes within a
/// minute), and it signs no new ones; participants already in rooms stay.
async fn revoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::KeysWrite).await?;
    let sql = select_keys!(" AND id = $2");
    let key: Listed = tx.fetch_optional(sql, args![org, &id]).await?.ok_or_else(|| not_found("LiveKit key"))?;
    if key.revoked_at.is_none() {
        let sql = "UPDATE livekit_keys SET revoked_at = $1 WHERE org_id = $2 AND id = $3";
        tx.execute(sql, args![now, org, &id]).await?;
        let sql = "DELETE FROM key_lookup WHERE kind = 'livekit_key' AND lookup = $1 AND org_id = $2";
        tx.execute(sql, args![&key.api_key, org]).await?;
        let change = Change {
            action: "livekit_key.revoke",
            target_type: "livekit_key",
            target_id: Some(&id),
            before: Some(json!(key)),
            after: None,
        };
        audit::record(&mut tx, &caller, org, now, change).await?;
    }
    tx.commit().await?;
    s.livekit.tokens.remove(&key.api_key);
    Ok(StatusCode::NO_CONTENT)
}
