//! LiveKit's signal protocol over WebSocket, so LiveKit's client SDKs join AuraLink rooms
//! unchanged. Each connection is a [`session::Session`] task; the router sees a LiveKit
//! participant as two connections (publisher and subscriber peer connections) of one
//! participant. See docs/livekit-compat.md for what is covered.

// The protocol marks fields deprecated that SDKs in the field still send and read
// (stereo, layers, UserPacket identities); compatibility means handling them.
#![allow(deprecated)]

mod convert;
mod data;
mod registry;
mod resume;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

pub use self::data::LiveKitData;
pub use self::registry::Registry;
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
    /// Participants whose name, metadata or attributes changed: every session of the room
    /// sends the new description.
    pub described: tokio::sync::broadcast::Sender<crate::ids::ParticipantId>,
}

impl LiveKitState {
    /// A participant as LiveKit clients and server SDKs see it.
    pub fn describe(&self, p: &crate::sfu::core::ParticipantInfo) -> livekit_protocol::ParticipantInfo {
        convert::participant_info(p, &self.registry, livekit_protocol::participant_info::State::Active)
    }

    pub fn describe_track(&self, t: &crate::sfu::core::TrackInfo) -> livekit_protocol::TrackInfo {
        convert::track_info(t, self.registry.track(t.id).as_ref())
    }

    /// Changes a participant's self-description (`None` keeps a field; an empty attribute
    /// value removes the attribute, as in LiveKit) and has every session of its room send it.
    pub fn update_description(
        &self,
        id: crate::ids::ParticipantId,
        name: Option<&str>,
        metadata: Option<&str>,
        attributes: &std::collections::HashMap<String, String>,
    ) {
        self.registry.update_participant(id, |m| {
            if let Some(n) = name {
                m.name = n.to_string();
            }
            if let Some(md) = metadata {
                m.metadata = md.to_string();
            }
            for (k, v) in attributes {
                if v.is_empty() {
                    m.attributes.remove(k);
                } else {
                    m.attributes.insert(k.clone(), v.clone());
                }
            }
        });
        let _ = self.described.send(id);
    }
}

/// Query parameters of `/rtc` as `livekit-client` sends them.
#[derive(Debug, Deserialize)]
struct RtcQuery {
    access_token: Option<String>,
    #[serde(default)]
    auto_subscribe: Option<String>,
    #[serde(default)]
    reconnect: Option<String>,
    #[serde(default)]
    sid: Option<String>,
}

/// `/rtc` (WebSocket) and `/rtc/validate`. The single-peer-connection path `/rtc/v1` answers
/// 404, the signal the SDK takes to fall back to `/rtc` (see docs/livekit-compat.md).
pub fn router(state: LiveKitState) -> Router {
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(v1_not_supported))
        .route("/rtc/v1/validate", get(v1_not_supported))
        .with_state(state)
}

async fn v1_not_supported() -> Response {
    (StatusCode::NOT_FOUND, "single peer connection signaling (/rtc/v1) is not supported; use /rtc").into_response()
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

async fn validate(State(s): State<LiveKitState>, Query(q): Query<RtcQuery>) -> Response {
    match authorize_now(&s.tokens, q.access_token.as_deref()).await {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err((status, msg)) => (status, msg).into_response(),
    }
}

/// [`authorize`], then the revocation list.
async fn authorize_now(tokens: &TokenVerifier, token: Option<&str>) -> Result<Claims, (StatusCode, String)> {
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

async fn rtc(State(s): State<LiveKitState>, Query(q): Query<RtcQuery>, ws: WebSocketUpgrade) -> Response {
    let claims = match authorize_now(&s.tokens, q.access_token.as_deref()).await {
        Ok(c) => c,
        Err((status, msg)) => return (status, msg).into_response(),
    };
    let opts = session::Options {
        auto_subscribe: q.auto_subscribe.as_deref() != Some("0"),
        resume: q.reconnect.as_deref() == Some("1"),
        sid: q.sid,
    };
    ws.max_message_size(MAX_SIGNAL_MESSAGE)
        .on_upgrade(move |socket| session::run(s, claims, opts, socket))
        .into_response()
}
