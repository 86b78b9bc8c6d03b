//! WHIP (RFC 9725) and WHEP: one HTTP POST carries the SDP offer, the `201 Created` carries the
//! answer and a `Location` for the session; `PATCH` trickles candidates or restarts ICE;
//! `DELETE` ends the session. Authorized by a LiveKit-format Bearer token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::RngCore;
use str0m::Candidate;

use super::sdpfrag::{self, SdpFrag};
use super::token::{Claims, TokenError, TokenVerifier};
use crate::config::IceServer;
use crate::error::ApiError;
use crate::ids::{Identity, ParticipantId, RoomName};
use crate::sfu::core::{JoinRequest, LeaveReason, SfuError, SfuEvent};
use crate::sfu::driver::SfuHandle;
use crate::sfu::peer::SubscribeFilter;

/// Everything the WHIP/WHEP routes need.
#[derive(Clone)]
pub struct WhipState {
    pub sfu: SfuHandle,
    pub tokens: TokenVerifier,
    pub ice_servers: Vec<IceServer>,
    pub max_body: usize,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

/// A live WHIP/WHEP resource.
#[derive(Debug, Clone)]
struct Session {
    participant: ParticipantId,
    room: RoomName,
    /// The client's last full offer: an ICE restart by PATCH is applied as this offer with
    /// new credentials, so the router sees one negotiation path.
    offer: String,
}

impl WhipState {
    pub fn new(sfu: SfuHandle, tokens: TokenVerifier, ice_servers: Vec<IceServer>, max_body: usize) -> Self {
        let state = WhipState { sfu, tokens, ice_servers, max_body, sessions: Arc::default() };
        // Sessions the router ended on its own (ICE timeout, transport error) stop resolving.
        let mut events = state.sfu.subscribe();
        let sessions = Arc::clone(&state.sessions);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SfuEvent::ParticipantLeft { participant, .. }) => {
                        sessions.lock().expect("not poisoned").retain(|_, s| s.participant != participant);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        state
    }
}

/// WHIP at `/whip/{room}`, WHEP at `/whep/{room}` (every publisher) and
/// `/whep/{room}/{identity}` (one publisher), and the room listing WHEP players poll.
pub fn router(state: WhipState) -> Router {
    Router::new()
        .route("/whip/{room}", post(whip_post))
        .route("/whip/{room}/{resource}", axum::routing::delete(delete).patch(patch))
        .route("/whep/{room}", post(whep_post_all))
        .route("/whep/{room}/{id}", post(whep_post_one).delete(delete).patch(patch))
        .route("/rooms/{room}/participants", get(list_participants))
        .with_state(state)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Publish,
    Subscribe,
}

async fn whip_post(State(s): State<WhipState>, Path(room): Path<String>, headers: HeaderMap, body: Body) -> Response {
    create(s, room, None, Role::Publish, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn whep_post_all(
    State(s): State<WhipState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create(s, room, None, Role::Subscribe, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn whep_post_one(
    State(s): State<WhipState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create(s, room, Some(id), Role::Subscribe, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn create(
    s: WhipState,
    room: String,
    only: Option<String>,
    role: Role,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let room = RoomName::new(room).map_err(|e| ApiError::bad_request("invalid_room", format!("room name {e}")))?;
    let only = only
        .map(Identity::new)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_identity", format!("identity {e}")))?;
    let (claims, room) = authorize(&s.tokens, &headers, &room).await?;
    s.tokens.check_revoked(&claims).await.map_err(token_error)?;
    let perms = claims.video.permissions();
    if role == Role::Publish && !perms.publish {
        return Err(ApiError::forbidden("publish_not_allowed", "token does not grant canPublish"));
    }
    if role == Role::Subscribe && !perms.subscribe {
        return Err(ApiError::forbidden("subscribe_not_allowed", "token does not grant canSubscribe"));
    }
    let identity = Identity::new(claims.sub.clone())
        .map_err(|e| ApiError::bad_request("invalid_identity", format!("identity {e}")))?;
    require_content_type(&headers, "application/sdp")?;
    let offer = read_text(body, s.max_body).await?;
    let subscribe = match (role, only) {
        (Role::Subscribe, Some(i)) => SubscribeFilter::Only(i),
        _ => SubscribeFilter::All,
    };
    let req = JoinRequest { subscribe, ..JoinRequest::new(room.clone(), identity, perms) };
    let offer2 = offer.clone();
    let (participant, answer) = s
        .sfu
        .call(move |sfu, now| {
            // An identity is one participant: a WHIP publisher and the WHEP players of the same
            // user are its connections, so others see one participant with all its tracks.
            let req = JoinRequest { participant: sfu.find_identity(&req.room, &req.identity).first().copied(), ..req };
            sfu.join(now, req, &offer2)
        })
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(sfu_error)?;
    s.tokens.note_join(&claims, participant);
    let resource = random_resource_id();
    s.sessions
        .lock()
        .expect("not poisoned")
        .insert(resource.clone(), Session { participant, room: room.clone(), offer });
    let base = if role == Role::Publish { "whip" } else { "whep" };
    let location = format!("/{base}/{}/{resource}", room.local());
    let mut resp = (StatusCode::CREATED, answer.to_sdp_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    h.insert(header::LOCATION, HeaderValue::from_str(&location).expect("ascii path"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{resource}\"")).expect("hex"));
    for link in ice_server_links(&s.ice_servers) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(header::LINK, v);
        }
    }
    Ok(resp)
}

async fn delete(State(s): State<WhipState>, Path((room, resource)): Path<(String, String)>) -> Response {
    let session = s.sessions.lock().expect("not poisoned").remove(&resource);
    let Some(session) = session.filter(|x| x.room.local() == room) else {
        return ApiError::not_found("session_not_found", "no such WHIP/WHEP session").into_response();
    };
    let id = session.participant;
    match s.sfu.call(move |sfu, now| sfu.leave(now, id, LeaveReason::ClientRequest)).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(_) => ApiError::unavailable().into_response(),
    }
}

/// Trickle (`a=candidate` lines) or ICE restart (new `a=ice-ufrag`/`a=ice-pwd`), per RFC 9725 §4.3.
async fn patch(
    State(s): State<WhipState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let session = s.sessions.lock().expect("not poisoned").get(&resource).cloned();
    let session = session
        .filter(|x| x.room.local() == room)
        .ok_or_else(|| ApiError::not_found("session_not_found", "no such WHIP/WHEP session"))?;
    require_content_type(&headers, "application/trickle-ice-sdpfrag")?;
    let text = read_text(body, s.max_body).await?;
    let frag = SdpFrag::parse(&text).map_err(|e| ApiError::bad_request("sdpfrag_malformed", e.to_string()))?;
    let id = session.participant;
    let restart = frag.ice.as_ref().filter(|(ufrag, _)| sdpfrag::ice_ufrag(&session.offer) != Some(ufrag.as_str()));
    if let Some((ufrag, pwd)) = restart {
        let offer = sdpfrag::replace_ice_credentials(&session.offer, ufrag, pwd);
        let offer2 = offer.clone();
        let answer = s
            .sfu
            .call(move |sfu, now| sfu.renegotiate(now, id, &offer2))
            .await
            .map_err(|_| ApiError::unavailable())?
            .map_err(sfu_error)?;
        if let Some(x) = s.sessions.lock().expect("not poisoned").get_mut(&resource) {
            x.offer = offer;
        }
        let body = sdpfrag::answer_fragment(&answer.to_sdp_string());
        let mut resp = (StatusCode::OK, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/trickle-ice-sdpfrag"));
        return Ok(resp);
    }
    let mut candidates = Vec::new();
    for line in &frag.candidates {
        let c = Candidate::from_sdp_string(line)
            .map_err(|e| ApiError::bad_request("candidate_malformed", e.to_string()))?;
        candidates.push(c);
    }
    s.sfu
        .call(move |sfu, now| candidates.into_iter().try_for_each(|c| sfu.add_remote_candidate(now, id, c)))
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(sfu_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_participants(
    State(s): State<WhipState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = RoomName::new(room).map_err(|e| ApiError::bad_request("invalid_room", format!("room name {e}")))?;
    let (_, room) = authorize(&s.tokens, &headers, &room).await?;
    let list = s.sfu.call(move |sfu, _| sfu.participants(&room)).await.map_err(|_| ApiError::unavailable())?;
    Ok(axum::Json(serde_json::json!({ "participants": list })).into_response())
}

/// Checks the token for `room` and returns its claims with the router's name for the room
/// (scoped to the org whose key signed the token).
async fn authorize(
    tokens: &TokenVerifier,
    headers: &HeaderMap,
    room: &RoomName,
) -> Result<(Claims, RoomName), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "token_missing", "Authorization: Bearer <token> is required")
        })?;
    let now = crate::wall::unix_secs();
    tokens.learn_key(token.trim()).await;
    let claims = tokens.verify_join(token.trim(), room.as_str(), now).map_err(token_error)?;
    let org = tokens.org_of(&claims.iss).ok_or_else(|| token_error(TokenError::UnknownKey))?;
    Ok((claims, RoomName::in_org(&org, room)))
}

/// Maps a token failure to what the client sees.
pub fn token_error(e: TokenError) -> ApiError {
    let status = match e {
        TokenError::WrongRoom(_) => StatusCode::FORBIDDEN,
        TokenError::RevocationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn sfu_error(e: SfuError) -> ApiError {
    let status = match e {
        SfuError::BadSdp(_) | SfuError::Negotiation(_) | SfuError::NoPendingOffer | SfuError::NotAudio => {
            StatusCode::BAD_REQUEST
        }
        SfuError::NoParticipant | SfuError::NoTrack | SfuError::NoRoom => StatusCode::NOT_FOUND,
        SfuError::RoomFull => StatusCode::FORBIDDEN,
        SfuError::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn require_content_type(headers: &HeaderMap, want: &str) -> Result<(), ApiError> {
    let got = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = got.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be {want}"),
        ))
    }
}

async fn read_text(body: Body, limit: usize) -> Result<String, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body exceeds {limit} bytes"))
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::bad_request("body_not_utf8", "body is not UTF-8"))
}

fn random_resource_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `Link` header values for ICE servers, as RFC 9725 §4.6 writes them.
fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let mut out = Vec::new();
    for s in servers {
        for url in &s.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(u), Some(c)) = (&s.username, &s.credential) {
                link.push_str(&format!("; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""));
            }
            out.push(link);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let servers = vec![
            IceServer { urls: vec!["stun:127.0.0.1:3478".into()], username: None, credential: None },
            IceServer {
                urls: vec!["turn:127.0.0.1:3478".into()],
                username: Some("u".into()),
                credential: Some("p".into()),
            },
        ];
        assert_eq!(
            ice_server_links(&servers),
            [
                "<stun:127.0.0.1:3478>; rel=\"ice-server\"",
                "<turn:127.0.0.1:3478>; rel=\"ice-server\"; username=\"u\"; credential=\"p\"; credential-type=\"password\""
            ]
        );
    }
}
