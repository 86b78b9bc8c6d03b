//! LiveKit's signal protocol over WebSocket, so LiveKit's client SDKs join AuraLink rooms
//! unchanged. Each connection is a [`session::Session`] task. On `/rtc/v1` a participant has
//! one peer connection that the client always offers on; on `/rtc` (older SDKs) it has two,
//! which the router sees as two connections (publisher and subscriber) of one participant.
//! See docs/livekit-compat.md for what is covered.

// The protocol marks fields deprecated that SDKs in the field still send and read
// (stereo, layers, UserPacket identities); compatibility means handling them.
#![allow(deprecated)]

mod convert;
mod data;
pub mod join_request;
mod notices;
pub mod registry;
mod resume;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

pub use self::data::{LiveKitData, transcription};
pub use self::notices::Notices;
pub use self::registry::{ParticipantMeta, Registry, TooLarge, TrackMeta};
pub use self::resume::Sessions;
use super::token::{Claims, TokenError, TokenVerifier};
use crate::config::IceServer;
use crate::sfu::driver::SfuHandle;

/// Largest signal message accepted from a client; LiveKit's own limit is in this range.
pub const MAX_SIGNAL_MESSAGE: usize = 256 * 1024;

/// What every LiveKit connection needs.
#[derive(Clone)]
pub struct LiveKitState {
    pub sfu: SfuHandle,
    pub tokens: TokenVerifier,
    pub ice_servers: Vec<IceServer>,
    pub registry: Arc<Registry>,
    /// Sessions a client may resume on a new signal connection.
    pub sessions: Arc<Sessions>,
    /// Descriptions and room metadata that changed, for the sessions of each room.
    pub notices: Arc<Notices>,
    /// Where room metadata lives; read when a participant joins.
    pub db: crate::db::Db,
}

impl LiveKitState {
    /// A participant as LiveKit clients and server SDKs see it.
    pub fn describe(&self, p: &crate::sfu::core::ParticipantInfo) -> livekit_protocol::ParticipantInfo {
        convert::participant_info(p, &self.registry, livekit_protocol::participant_info::State::Active)
    }

    pub fn describe_track(&self, t: &crate::sfu::core::TrackInfo) -> livekit_protocol::TrackInfo {
        convert::track_info(t, self.registry.track(t.id).as_ref())
    }

    /// Tells every session in `room` (the router's name) its new metadata.
    pub fn room_metadata_changed(&self, room: crate::ids::RoomName, metadata: String) {
        self.notices.send(&room, notices::Notice::Metadata(metadata));
    }

    /// Changes what a participant may do (RoomService `UpdateParticipant` permission, or the
    /// control API): the router applies it, and every session of its room, its own included,
    /// sends the new permission. False if the participant is gone.
    pub async fn update_permission(
        &self,
        id: crate::ids::ParticipantId,
        perms: crate::sfu::Permissions,
        can_update_metadata: bool,
    ) -> Result<bool, crate::sfu::driver::DriverGone> {
        if self.sfu.call(move |sfu, now| sfu.set_permissions(now, id, perms)).await?.is_err() {
            return Ok(false);
        }
        self.registry.update_participant(id, |m| {
            m.permission = livekit_protocol::ParticipantPermission { can_update_metadata, ..convert::permission(perms) }
        });
        self.described(id);
        Ok(true)
    }

    /// What a participant may update about itself (`canUpdateOwnMetadata`); false for those
    /// that did not join through LiveKit's protocol.
    pub fn can_update_metadata(&self, id: crate::ids::ParticipantId) -> bool {
        self.registry.participant(id).is_some_and(|m| m.permission.can_update_metadata)
    }

    /// Changes a participant's self-description (see [`Registry::describe`]) and has every
    /// session of its room send it; refused whole when the result would be over a limit.
    pub fn update_description(
        &self,
        id: crate::ids::ParticipantId,
        name: Option<&str>,
        metadata: Option<&str>,
        attributes: &std::collections::HashMap<String, String>,
    ) -> Result<(), TooLarge> {
        if self.registry.describe(id, name, metadata, attributes)? {
            self.described(id);
        }
        Ok(())
    }

    /// Has the sessions of `id`'s room send its description again.
    fn described(&self, id: crate::ids::ParticipantId) {
        if let Some(room) = self.registry.room_of(id) {
            self.notices.send(&room, notices::Notice::Described(id));
        }
    }
}

/// Query parameters of `/rtc` as `livekit-client` sends them.
#[derive(Debug, Deserialize)]
struct RtcQuery {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    auto_subscribe: Option<String>,
    #[serde(default)]
    reconnect: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    /// `/rtc/v1` only: everything else about the join (see [`join_request`]).
    #[serde(default)]
    join_request: Option<String>,
}

/// `/rtc/v1` (single peer connection, what current SDKs try first), `/rtc` (two peer
/// connections) and the `validate` probe of each, which the SDK calls after a failed upgrade.
pub fn router(state: LiveKitState) -> Router {
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(rtc_v1))
        .route("/rtc/v1/validate", get(validate_v1))
        .with_state(state)
}

/// Decodes one client frame; `None` for anything that is not a `SignalRequest` with a message.
pub fn decode_request(bytes: &[u8]) -> Option<livekit_protocol::signal_request::Message> {
    use prost::Message;
    livekit_protocol::SignalRequest::decode(bytes).ok()?.message
}

/// Checks the token the way the SDK's `/validate` probe and the WebSocket both need.
fn authorize(tokens: &TokenVerifier, token: Option<&str>) -> Result<Claims, (StatusCode, String)> {
    let token = token.ok_or((StatusCode::UNAUTHORIZED, "missing access_token".to_string()))?;
    let claims =
        tokens.verify(token, crate::wall::unix_secs()).map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    if !claims.video.room_join || claims.video.room.is_empty() {
        return Err((StatusCode::FORBIDDEN, TokenError::WrongRoom(claims.video.room.clone()).to_string()));
    }
    if claims.sub.is_empty() {
        return Err((StatusCode::UNAUTHORIZED, TokenError::NoIdentity.to_string()));
    }
    Ok(claims)
}

/// The join token: `Authorization: Bearer …` (what LiveKit's Rust-core SDKs send) or
/// `?access_token=` (livekit-client), the header first as LiveKit's server reads them.
fn token<'a>(headers: &'a HeaderMap, q: &'a RtcQuery) -> Option<&'a str> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let bearer = header.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
    bearer.filter(|t| !t.is_empty()).or(q.access_token.as_deref())
}

async fn validate(State(s): State<LiveKitState>, headers: HeaderMap, Query(q): Query<RtcQuery>) -> Response {
    match authorize_now(&s.tokens, token(&headers, &q)).await {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err((status, msg)) => (status, msg).into_response(),
    }
}

/// [`authorize`] (with a key created on another node looked up first), then the revocation
/// list.
async fn authorize_now(tokens: &TokenVerifier, token: Option<&str>) -> Result<Claims, (StatusCode, String)> {
    if let Some(t) = token {
        tokens.learn_key(t).await;
    }
    let claims = authorize(tokens, token)?;
    tokens.check_revoked(&claims).await.map_err(|e| {
        let status = if e == TokenError::RevocationUnavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        };
        (status, e.to_string())
    })?;
    Ok(claims)
}

async fn rtc(
    State(s): State<LiveKitState>,
    headers: HeaderMap,
    Query(q): Query<RtcQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let claims = match authorize_now(&s.tokens, token(&headers, &q)).await {
        Ok(c) => c,
        Err((status, msg)) => return (status, msg).into_response(),
    };
    let opts = session::Options {
        auto_subscribe: q.auto_subscribe.as_deref() != Some("0"),
        resume: q.reconnect.as_deref() == Some("1"),
        sid: q.sid,
        single_pc: false,
        offer: None,
    };
    upgrade(s, claims, opts, ws)
}

fn upgrade(s: LiveKitState, claims: Claims, opts: session::Options, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_SIGNAL_MESSAGE)
        .on_upgrade(move |socket| session::run(s, claims, opts, socket))
        .into_response()
}

/// The token, then the join request; a malformed one is 400, which the SDK reports as it is
/// rather than falling back to `/rtc`.
async fn authorize_v1(
    s: &LiveKitState,
    headers: &HeaderMap,
    q: &RtcQuery,
) -> Result<(Claims, session::Options), (StatusCode, String)> {
    let claims = authorize_now(&s.tokens, token(headers, q)).await?;
    let param = q.join_request.as_deref().ok_or((StatusCode::BAD_REQUEST, "missing join_request".to_string()))?;
    let join = join_request::decode(param).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let opts = session::Options {
        // Absent settings mean LiveKit's defaults, which subscribe.
        auto_subscribe: join.connection_settings.as_ref().is_none_or(|s| s.auto_subscribe),
        resume: join.reconnect,
        sid: Some(join.participant_sid).filter(|s| !s.is_empty()),
        single_pc: true,
        offer: join.publisher_offer,
    };
    Ok((claims, opts))
}

async fn rtc_v1(
    State(s): State<LiveKitState>,
    headers: HeaderMap,
    Query(q): Query<RtcQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    match authorize_v1(&s, &headers, &q).await {
        Ok((claims, opts)) => upgrade(s, claims, opts, ws),
        Err((status, msg)) => (status, msg).into_response(),
    }
}

async fn validate_v1(State(s): State<LiveKitState>, headers: HeaderMap, Query(q): Query<RtcQuery>) -> Response {
    match authorize_v1(&s, &headers, &q).await {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err((status, msg)) => (status, msg).into_response(),
    }
}
