//! `POST /v1/tokens`: a room join token (LiveKit format) for one of the org's rooms, signed
//! with the org's LiveKit key, so it joins the org's room and no other org's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{not_found, open};
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::error::ApiError;
use crate::ids::{Identity, RoomName, record_id};
use std::sync::Arc;

use crate::db::redis::{Redis, RedisError};
use crate::sfu::driver::{DriverGone, SfuHandle};
use crate::signal::revocation::{self, Revocations};
use crate::signal::token;

/// Longest validity a token may ask for.
const MAX_TTL_SECS: u64 = 24 * 3600;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tokens", post(create)).route("/v1/tokens/{jti}/revoke", post(revoke))
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    room: String,
    identity: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    metadata: String,
    ttl_secs: Option<u64>,
    #[serde(default = "yes")]
    can_publish: bool,
    #[serde(default = "yes")]
    can_subscribe: bool,
    #[serde(default = "yes")]
    can_publish_data: bool,
    #[serde(default)]
    can_update_own_metadata: bool,
    #[serde(default)]
    hidden: bool,
}

#[derive(sqlx::FromRow)]
struct Exists {
    id: String,
}

async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let org = caller.require(Perm::TokensCreate)?;
    let room =
        RoomName::new(req.room.clone()).map_err(|e| ApiError::unprocessable("invalid_field", format!("room {e}")))?;
    let identity = Identity::new(req.identity.clone())
        .map_err(|e| ApiError::unprocessable("invalid_field", format!("identity {e}")))?;
    let ttl = req.ttl_secs.unwrap_or(6 * 3600);
    if !(60..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::unprocessable("invalid_field", "ttl_secs must be 60 to 86400"));
    }
    if req.name.len() > 256 || req.metadata.len() > 16 * 1024 {
        return Err(ApiError::unprocessable("invalid_field", "name ≤ 256 bytes, metadata ≤ 16 KiB"));
    }
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let sql = "SELECT id FROM rooms WHERE org_id = $1 AND name = $2 AND deleted_at IS NULL";
    let room_row: Exists = tx.fetch_optional(sql, args![org, room.as_str()]).await?.ok_or_else(|| not_found("room"))?;
    let (key, secret) = super::livekit_keys::signing_key(&mut tx, &s.secrets, org)
        .await?
        .ok_or_else(|| ApiError::conflict("no_signing_key", "the org has no LiveKit key to sign with"))?;
    let jti = record_id("tok", now);
    let mut claims = token::join_claims(&key, room.as_str(), identity.as_str(), (now / 1000) as u64, ttl);
    claims.jti = Some(jti.clone());
    claims.name = req.name;
    claims.metadata = req.metadata;
    claims.video.can_publish = Some(req.can_publish);
    claims.video.can_subscribe = Some(req.can_subscribe);
    claims.video.can_publish_data = Some(req.can_publish_data);
    claims.video.can_update_own_metadata = req.can_update_own_metadata;
    claims.video.hidden = req.hidden;
    let expires_at = claims.exp * 1000;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "token.create",
            target_type: "token",
            target_id: Some(&jti),
            before: None,
            after: Some(
                json!({ "room": room_row.id, "identity": identity, "expires_at": expires_at, "video": claims.video }),
            ),
        },
    )
    .await?;
    let jwt = token::mint(&claims, &secret);
    Ok((StatusCode::CREATED, Json(json!({ "token": jwt, "jti": jti, "expires_at": expires_at, "api_key": key }))))
}

#[derive(sqlx::FromRow)]
struct Minted {
    after: Option<String>,
}

/// Revokes a token the org minted: refused at every later join, and whoever joined with it
/// on this node is disconnected.
async fn revoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(jti): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::TokensCreate).await?;
    let sql = "SELECT after FROM audit_log WHERE org_id = $1 AND action = 'token.create' AND target_type = 'token' \
               AND target_id = $2";
    let minted: Minted = tx.fetch_optional(sql, args![org, &jti]).await?.ok_or_else(|| not_found("token"))?;
    let expires_at = minted
        .after
        .and_then(|a| serde_json::from_str::<Value>(&a).ok())
        .and_then(|a| a["expires_at"].as_i64())
        .unwrap_or(now + MAX_TTL_SECS as i64 * 1000);
    let tokens = &s.livekit.tokens;
    // Verification accepts a token a little past its expiry, and a session joined with it
    // holds refreshed copies (same jti) that outlive it by up to one refresh: so long it
    // stays revoked.
    let until = expires_at.max(now) + (token::LEEWAY_SECS + token::REFRESHED_TTL_SECS) as i64 * 1000;
    tokens.revocations.revoke(&jti, until, now).await.map_err(not_shared)?;
    let change = Change {
        action: "token.revoke",
        target_type: "token",
        target_id: Some(&jti),
        before: None,
        after: Some(json!({ "until": until })),
    };
    audit::commit(tx, &caller, org, now, change).await?;
    // Only once the revocation is recorded: a failure before leaves the sessions to a retry.
    let disconnected = end_sessions(&s.sfu, &tokens.revocations, &jti).await.map_err(|_| ApiError::unavailable())?;
    // Other nodes end theirs when they hear of it; one that does not hear still refuses the
    // token at its next join.
    if let Err(e) = tokens.revocations.announce(&jti).await {
        tracing::warn!(error = %e, "revocation not announced to other nodes");
    }
    Ok(Json(json!({ "jti": jti, "revoked": true, "disconnected": disconnected })))
}

fn not_shared(e: RedisError) -> ApiError {
    tracing::warn!(error = %e, "revocation not shared");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "revocation_unavailable", "Redis is unavailable; retry")
}

/// Refuses, from now on, the join tokens for `room` of `org` issued until `now`: the room is
/// being deleted. Refused for as long as a token minted here can live, and its refreshes.
pub(crate) async fn revoke_room(s: &AppState, org: &str, room: &str, now: i64) -> Result<(), ApiError> {
    let until = now + (MAX_TTL_SECS + token::LEEWAY_SECS + token::REFRESHED_TTL_SECS) as i64 * 1000;
    s.livekit.tokens.revocations.revoke_room(org, room, now, until).await.map_err(not_shared)
}

/// Lets tokens that do not say when they were issued join `room` of `org` again: the room is
/// being created (again).
pub(crate) async fn room_created(s: &AppState, org: &str, room: &str, now: i64) -> Result<(), ApiError> {
    s.livekit.tokens.revocations.room_created(org, room, now).await.map_err(not_shared)
}

/// Ends the sessions that joined with `jti` on this node; how many.
pub async fn end_sessions(sfu: &SfuHandle, revocations: &Revocations, jti: &str) -> Result<usize, DriverGone> {
    let joined = revocations.take_joined(jti);
    let n = joined.len();
    sfu.call(move |sfu, now| {
        use crate::sfu::core::LeaveReason::Removed;
        for p in joined {
            // A participant, or one connection of somebody else's (a WHEP player beside a
            // publisher of the same identity): either way the token's sessions end.
            sfu.remove_participant(now, p, Removed);
            let _ = sfu.leave(now, p, Removed);
        }
    })
    .await?;
    Ok(n)
}

/// Ends, on this node, the sessions of tokens other nodes revoke (heard through Redis),
/// subscribing again after Redis comes back.
pub fn follow_revocations(redis: Redis, sfu: SfuHandle, revocations: Arc<Revocations>) {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        loop {
            match redis.subscribe(revocation::CHANNEL).await {
                Ok(mut jtis) => {
                    while let Some(jti) = jtis.next().await {
                        match end_sessions(&sfu, &revocations, &jti).await {
                            Ok(n) if n > 0 => {
                                tracing::info!(jti, sessions = n, "ended sessions of a token revoked elsewhere")
                            }
                            Ok(_) => {}
                            Err(DriverGone) => return,
                        }
                    }
                    tracing::warn!("revocation subscription ended; subscribing again");
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to revocations; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}
