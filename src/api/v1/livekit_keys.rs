//! Each org's LiveKit API key pairs: what its tokens (`POST /v1/tokens`) are signed with and
//! what its server SDKs (RoomService, Twirp) authenticate with. Secrets are sealed at rest
//! ([`crate::api::secrets`]); the token verifier holds them opened in memory.

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use crate::api::auth::{Caller, Perm};
use crate::api::secrets::{KEY_ID, SecretBox};
use crate::args;
use crate::config::generate_key_pair;
use crate::db::{Db, DbError, Tx};
use crate::error::ApiError;
use crate::ids::record_id;
use crate::sfu::signal::token::{KeySource, TokenVerifier};
use futures_util::future::BoxFuture;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/livekit-keys", get(list))
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
    fn find<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<(String, String)>> {
        Box::pin(async move {
            let found = async {
                let Some(org) = self.db.org_of_key("livekit_key", key).await? else { return Ok(None) };
                let mut tx = self.db.begin(&org).await?;
                let secret = opened(&mut tx, &self.secrets, &org).await?.into_iter().find(|(k, _)| k == key);
                tx.commit().await?;
                Ok::<_, DbError>(secret.map(|(_, s)| (s, org)))
            };
            found.await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "LiveKit key lookup failed");
                None
            })
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
    let sql = "SELECT id, api_key, name, created_at, revoked_at FROM livekit_keys WHERE org_id = $1 ORDER BY id";
    let keys: Vec<Listed> = tx.fetch_all(sql, args![org]).await?;
    tx.commit().await?;
    Ok(Json(json!({ "livekit_keys": keys })))
}
