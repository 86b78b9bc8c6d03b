//! WHIP (RFC 9725) and WHEP: one HTTP POST carries the SDP offer, the `201 Created` carries the
//! answer and a `Location` for the session; `PATCH` trickles candidates or restarts ICE;
//! `DELETE` ends the session. Authorized by a LiveKit-format Bearer token.

mod sessions;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::RngCore;
use sha2::{Digest, Sha256};
use str0m::Candidate;
use str0m::change::SdpAnswer;
use tokio::sync::broadcast::{self, error::RecvError};

use super::sdpfrag::{self, SdpFrag};
use super::token::{Claims, TokenError, TokenVerifier};
use crate::config::IceServer;
use crate::error::ApiError;
use crate::ids::{Identity, ParticipantId, RoomName};
use crate::sfu::SubscribeFilter;
use crate::sfu::core::{JoinRequest, LeaveReason, Sfu, SfuError, SfuEvent};
use crate::sfu::driver::SfuHandle;
use sessions::{LimitError, Owner, Session, SessionTable, WhipLimits};

/// Everything the WHIP/WHEP routes need.
#[derive(Clone)]
pub struct WhipState {
    pub sfu: SfuHandle,
    pub tokens: TokenVerifier,
    pub ice_servers: Vec<IceServer>,
    pub max_body: usize,
    /// Where rooms' settings live (`max_participants`, empty timeout), read at each join.
    pub db: crate::db::Db,
    sessions: Arc<Mutex<SessionTable>>,
}

impl WhipState {
    /// The routes' state, with the [`WhipLimits`] defaults.
    pub fn new(
        sfu: SfuHandle,
        tokens: TokenVerifier,
        ice_servers: Vec<IceServer>,
        max_body: usize,
        db: crate::db::Db,
    ) -> Self {
        let sessions = Arc::new(Mutex::new(SessionTable::new(WhipLimits::default())));
        tokio::spawn(follow_router(sfu.subscribe(), sfu.clone(), Arc::clone(&sessions)));
        WhipState { sfu, tokens, ice_servers, max_body, db, sessions }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.sessions.lock().expect("not poisoned")
    }
}

/// Forgets the sessions of participants the router ended on its own (ICE timeout, transport
/// error, removal), so their resources stop resolving and their owners' counts are released.
/// Events lost to lag are made up for by asking the router which participants still exist.
async fn follow_router(mut events: broadcast::Receiver<SfuEvent>, sfu: SfuHandle, sessions: Arc<Mutex<SessionTable>>) {
    loop {
        match events.recv().await {
            Ok(SfuEvent::ParticipantLeft { participant, .. }) => {
                sessions.lock().expect("not poisoned").remove_participants(&HashSet::from([participant]));
            }
            Ok(SfuEvent::ConnectionClosed { connection, .. }) => {
                sessions.lock().expect("not poisoned").remove_connection(connection);
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "WHIP session follower lagged; resynchronising with the router");
                // Only participants listed before asking are judged: one that joins meanwhile
                // is absent from this list, not gone. Ids are never reused, so gone is final.
                let listed = sessions.lock().expect("not poisoned").participants();
                let Ok(gone) = sfu.call(move |sfu, _| gone_participants(sfu, listed)).await else { return };
                sessions.lock().expect("not poisoned").remove_participants(&gone);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Those of `listed` the router no longer has.
fn gone_participants(sfu: &Sfu, listed: Vec<(RoomName, ParticipantId)>) -> HashSet<ParticipantId> {
    let mut present = HashSet::new();
    let mut rooms: Vec<&RoomName> = listed.iter().map(|(r, _)| r).collect();
    rooms.dedup();
    for room in rooms {
        present.extend(sfu.participants(room).into_iter().map(|p| p.id));
    }
    listed.into_iter().map(|(_, p)| p).filter(|p| !present.contains(p)).collect()
}

/// A session counted against its owner while it is being created; released on drop unless
/// it became a session (the request may fail, or be cancelled by its client, at any await).
struct Reservation {
    sessions: Arc<Mutex<SessionTable>>,
    owner: Option<Owner>,
}

impl Reservation {
    fn new(sessions: &Arc<Mutex<SessionTable>>, owner: Owner) -> Result<Self, LimitError> {
        sessions.lock().expect("not poisoned").reserve(&owner)?;
        Ok(Reservation { sessions: Arc::clone(sessions), owner: Some(owner) })
    }

    fn commit(mut self, resource: String, session: impl FnOnce(Owner) -> Session) {
        let owner = self.owner.take().expect("committed once");
        self.sessions.lock().expect("not poisoned").insert(resource, session(owner));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            self.sessions.lock().expect("not poisoned").unreserve(owner);
        }
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
    let max_candidates = s.table().limits().candidates_per_session;
    let candidates = crate::sfu::core::distinct_candidates(&offer);
    if candidates > max_candidates {
        return Err(LimitError::Candidates(max_candidates).into());
    }
    let token = bearer(&headers)?;
    let token_digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let owner = Owner {
        room: room.clone(),
        identity: identity.clone(),
        token: claims.jti.clone().unwrap_or_else(|| hex(&token_digest)),
    };
    let reservation = Reservation::new(&s.sessions, owner)?;
    let subscribe = match (role, only) {
        (Role::Subscribe, Some(i)) => SubscribeFilter::Only(i),
        _ => SubscribeFilter::All,
    };
    let (_, limits) = super::room_settings::stored(&s.db, room.org().unwrap_or_default(), room.local()).await;
    let req = JoinRequest { subscribe, limits, ..JoinRequest::new(room.clone(), identity, perms) };
    let offer2 = offer.clone();
    let joined = s
        .sfu
        .call(move |sfu, now| join_identity(sfu, now, req, &offer2))
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(sfu_error)?;
    s.tokens.note_join(&claims, joined.connection);
    let resource = random_resource_id();
    reservation.commit(resource.clone(), |owner| Session {
        connection: joined.connection,
        participant: joined.participant,
        owner,
        token_digest,
        offer,
        candidates,
    });
    let base = if role == Role::Publish { "whip" } else { "whep" };
    let location = format!("/{base}/{}/{resource}", room.local());
    let mut resp = (StatusCode::CREATED, joined.answer.to_sdp_string()).into_response();
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

/// A new router connection and the participant it belongs to.
struct Joined {
    connection: ParticipantId,
    participant: ParticipantId,
    answer: SdpAnswer,
}

/// Joins `req` as a connection of its identity's participant if the room has one, so
/// others see one participant with all its tracks (a user's WHIP publisher and WHEP players).
fn join_identity(sfu: &mut Sfu, now: Instant, req: JoinRequest, offer: &str) -> Result<Joined, SfuError> {
    let existing = sfu.find_identity(&req.room, &req.identity).first().copied();
    let (connection, answer) = sfu.join(now, JoinRequest { participant: existing, ..req }, offer)?;
    Ok(Joined { connection, participant: existing.unwrap_or(connection), answer })
}

/// The session at `/{kind}/{room}/{resource}`, if the request may act on it: RFC 9725 §4.3
/// authenticates PATCH and DELETE as POST, here by the token that created the session. A
/// request for another room, or with another token, finds nothing and changes nothing.
fn owned_session(s: &WhipState, room: &str, resource: &str, headers: &HeaderMap) -> Result<Session, ApiError> {
    let session = s.table().get(resource).filter(|x| x.owner.room.local() == room).cloned();
    let session = session.ok_or_else(|| ApiError::not_found("session_not_found", "no such WHIP/WHEP session"))?;
    let digest: [u8; 32] = Sha256::digest(bearer(headers)?.as_bytes()).into();
    if digest != session.token_digest {
        return Err(ApiError::forbidden("session_token_mismatch", "present the token that created the session"));
    }
    Ok(session)
}

async fn delete(
    State(s): State<WhipState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = owned_session(&s, &room, &resource, &headers)?;
    // A concurrent DELETE may have won; only one ends the connection.
    s.table().remove(&resource).ok_or_else(|| ApiError::not_found("session_not_found", "no such WHIP/WHEP session"))?;
    let id = session.connection;
    // A connection the router ended meanwhile is as ended as one this removes.
    let _gone_already = s
        .sfu
        .call(move |sfu, now| sfu.leave(now, id, LeaveReason::ClientRequest))
        .await
        .map_err(|_| ApiError::unavailable())?;
    Ok(StatusCode::OK.into_response())
}

/// Trickle (`a=candidate` lines) or ICE restart (new `a=ice-ufrag`/`a=ice-pwd`), per RFC 9725 §4.3.
async fn patch(
    State(s): State<WhipState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let session = owned_session(&s, &room, &resource, &headers)?;
    require_content_type(&headers, "application/trickle-ice-sdpfrag")?;
    let text = read_text(body, s.max_body).await?;
    let frag = SdpFrag::parse(&text).map_err(sdpfrag_error)?;
    let id = session.connection;
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
        s.table().set_offer(&resource, offer);
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
    // Counted before the router sees them: each candidate costs it work on every check.
    s.table().add_candidates(&resource, candidates.len())?;
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
    let mut list = s.sfu.call(move |sfu, _| sfu.participants(&room)).await.map_err(|_| ApiError::unavailable())?;
    list.retain(|p| !p.hidden);
    Ok(axum::Json(serde_json::json!({ "participants": list })).into_response())
}

/// Checks the token for `room`, and that it is not revoked, and returns its claims with the
/// router's name for the room (scoped to the org whose key signed the token).
async fn authorize(
    tokens: &TokenVerifier,
    headers: &HeaderMap,
    room: &RoomName,
) -> Result<(Claims, RoomName), ApiError> {
    let token = bearer(headers)?;
    let now = crate::wall::unix_secs();
    tokens.learn_key(token).await;
    let claims = tokens.verify_join(token, room.as_str(), now).map_err(token_error)?;
    let org = tokens.org_of(&claims.iss).ok_or_else(|| token_error(TokenError::UnknownKey))?;
    tokens.check_revoked(&claims).await.map_err(token_error)?;
    Ok((claims, RoomName::in_org(&org, room)))
}

/// The request's Bearer token.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "token_missing", "Authorization: Bearer <token> is required")
        })
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

fn sdpfrag_error(e: sdpfrag::SdpFragError) -> ApiError {
    ApiError::bad_request(e.code(), e.to_string())
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
    hex(&b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
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
    use std::time::Duration;

    use str0m::media::MediaKind;

    use super::*;
    use crate::client::{Client, MediaSpec};
    use crate::sfu::Permissions;
    use crate::sfu::SfuConfig;
    use crate::sfu::ice_tcp::IceTcpLimits;

    /// A router task without sockets: sessions join, nothing connects.
    fn router() -> SfuHandle {
        let sfu = Sfu::new(SfuConfig {
            candidates: vec![Candidate::host("127.0.0.1:3478".parse().unwrap(), "udp").unwrap()],
            disconnect_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            empty_room_timeout: Duration::from_secs(10),
            initial_bwe: str0m::bwe::Bitrate::kbps(1500),
        });
        crate::sfu::driver::spawn(sfu, Vec::new(), Vec::new(), IceTcpLimits::default())
    }

    /// Joins `identity` as the create route does and records its session as `resource`.
    async fn join(sfu: &SfuHandle, table: &Arc<Mutex<SessionTable>>, identity: &str, resource: &str) -> Joined {
        let room = RoomName::new("r").unwrap();
        let identity = Identity::new(identity).unwrap();
        let perms = Permissions { publish: true, subscribe: true, publish_data: true, hidden: false };
        let offer = Client::new(Instant::now(), "127.0.0.1:50000".parse().unwrap())
            .offer(&[MediaSpec::recv(MediaKind::Audio)], None);
        let req = JoinRequest::new(room.clone(), identity.clone(), perms);
        let joined = sfu.call(move |sfu, now| join_identity(sfu, now, req, &offer)).await.unwrap().unwrap();
        let owner = Owner { room, identity, token: resource.into() };
        Reservation::new(table, owner).unwrap().commit(resource.into(), |owner| Session {
            connection: joined.connection,
            participant: joined.participant,
            owner,
            token_digest: [0; 32],
            offer: String::new(),
            candidates: 0,
        });
        joined
    }

    async fn until(what: &str, table: &Arc<Mutex<SessionTable>>, done: impl Fn(&SessionTable) -> bool) {
        let wait = async {
            while !done(&table.lock().unwrap()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait).await.unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn a_participant_that_leaves_takes_all_its_sessions() {
        let sfu = router();
        let table = Arc::new(Mutex::new(SessionTable::new(WhipLimits::default())));
        tokio::spawn(follow_router(sfu.subscribe(), sfu.clone(), Arc::clone(&table)));
        // A publisher and a player of one identity: two connections of one participant.
        let first = join(&sfu, &table, "alice", "pub").await;
        let second = join(&sfu, &table, "alice", "play").await;
        assert_eq!(second.participant, first.participant);
        assert_ne!(second.connection, second.participant);
        let p = first.participant;
        sfu.call(move |sfu, now| sfu.remove_participant(now, p, LeaveReason::Removed)).await.unwrap();
        until("both sessions forgotten", &table, |t| t.len() == 0).await;
        // Their owner's count is released with them.
        join(&sfu, &table, "alice", "pub").await;
    }

    #[tokio::test]
    async fn a_connection_the_router_closes_takes_only_its_own_session() {
        let sfu = router();
        let table = Arc::new(Mutex::new(SessionTable::new(WhipLimits::default())));
        tokio::spawn(follow_router(sfu.subscribe(), sfu.clone(), Arc::clone(&table)));
        join(&sfu, &table, "alice", "pub").await;
        let player = join(&sfu, &table, "alice", "play").await.connection;
        // The player's connection ends (it never connected, say); the publisher stays.
        sfu.call(move |sfu, now| sfu.leave(now, player, LeaveReason::Timeout)).await.unwrap().unwrap();
        until("the player's session forgotten", &table, |t| t.get("play").is_none()).await;
        assert!(table.lock().unwrap().get("pub").is_some(), "the publisher is still there");
    }

    #[tokio::test]
    async fn a_follower_that_lags_asks_the_router_what_is_left() {
        let sfu = router();
        let table = Arc::new(Mutex::new(SessionTable::new(WhipLimits::default())));
        let (events, rx) = broadcast::channel(1);
        let follower = tokio::spawn(follow_router(rx, sfu.clone(), Arc::clone(&table)));
        join(&sfu, &table, "alice", "a").await;
        let bob = join(&sfu, &table, "bob", "b").await.connection;
        // Bob's ParticipantLeft goes to the router's bus, not this follower's, which lags.
        sfu.call(move |sfu, now| sfu.leave(now, bob, LeaveReason::Timeout)).await.unwrap().unwrap();
        for _ in 0..3 {
            events.send(SfuEvent::RoomStarted { room: RoomName::new("elsewhere").unwrap() }).unwrap();
        }
        until("bob's session forgotten", &table, |t| t.get("b").is_none()).await;
        assert!(table.lock().unwrap().get("a").is_some(), "alice is still in the room");
        drop(events);
        tokio::time::timeout(Duration::from_secs(5), follower).await.expect("follower ends with the bus").unwrap();
    }

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
