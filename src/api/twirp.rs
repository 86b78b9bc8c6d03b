//! LiveKit's RoomService over Twirp (`POST /twirp/livekit.RoomService/<Method>`), so
//! `livekit-server-sdk`'s `RoomServiceClient` works against AuraLink unchanged. Bodies are
//! JSON (protobuf's JSON mapping, which is what the SDK sends) or binary protobuf; auth is a
//! LiveKit JWT with `roomCreate`, `roomList` or `roomAdmin` grants, acting for the org whose
//! key signed it (the node's configured keys: [`NODE_ORG`]); docs/livekit-compat.md lists
//! the subset.

use std::net::SocketAddr;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use livekit_protocol as proto;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::audit::{self, Actor, Change};
use super::ratelimit::{self, Limited};
use super::v1::check_room_fields;
use crate::api::state::AppState;
use crate::args;
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::ids::{Identity, ParticipantId, RoomName, TrackId, record_id};
use crate::sfu::Permissions;
use crate::sfu::core::{LeaveReason, ParticipantInfo};
use crate::sfu::data::{DataMessage, MAX_SERVER_MESSAGE};
use crate::signal::token::{Claims, TokenError};

pub use crate::signal::token::NODE_ORG;

/// Creates the node org on first start.
pub async fn ensure_node_org(db: &Db, now: i64) -> Result<(), DbError> {
    let mut tx = db.begin(NODE_ORG).await?;
    let sql = "INSERT INTO orgs (id, name, metadata, created_at, updated_at) VALUES ($1, 'node', '{}', $2, $2) \
               ON CONFLICT (id) DO NOTHING";
    tx.execute(sql, args![NODE_ORG, now]).await?;
    tx.commit().await
}

pub fn router(state: AppState) -> Router {
    Router::new().route("/twirp/livekit.RoomService/{method}", post(call)).with_state(state)
}

/// A Twirp error: `{"code","msg"}` with exactly `application/json`, which the SDK checks.
struct TwirpError {
    status: StatusCode,
    code: &'static str,
    msg: String,
}

fn err(status: StatusCode, code: &'static str, msg: impl Into<String>) -> TwirpError {
    TwirpError { status, code, msg: msg.into() }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "msg": self.msg }).to_string();
        (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl From<DbError> for TwirpError {
    fn from(e: DbError) -> Self {
        let api = crate::error::ApiError::from(e);
        let code = if api.status == StatusCode::SERVICE_UNAVAILABLE { "unavailable" } else { "internal" };
        err(api.status, code, api.message)
    }
}

fn gone() -> TwirpError {
    err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the media router is not running")
}

fn not_found(what: &str) -> TwirpError {
    err(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
}

/// How the request was encoded; the response uses the same.
#[derive(Clone, Copy)]
enum Codec {
    Json,
    Protobuf,
}

fn decode<T: Message + Default + DeserializeOwned>(codec: Codec, body: &[u8]) -> Result<T, TwirpError> {
    match codec {
        Codec::Protobuf => T::decode(body).map_err(|e| err(StatusCode::BAD_REQUEST, "malformed", e.to_string())),
        Codec::Json => {
            serde_json::from_slice(body).map_err(|e| err(StatusCode::BAD_REQUEST, "malformed", e.to_string()))
        }
    }
}

fn encode<T: Message + Serialize>(codec: Codec, v: &T) -> Response {
    match codec {
        Codec::Protobuf => ([(header::CONTENT_TYPE, "application/protobuf")], v.encode_to_vec()).into_response(),
        Codec::Json => {
            let body = serde_json::to_vec(v).expect("protocol messages serialize");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

fn now_secs(s: &AppState) -> u64 {
    (s.clock.now_ms() / 1000) as u64
}

/// The token's claims and the org its key belongs to. A revoked token is refused here as at
/// a join.
async fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(Claims, String), TwirpError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "unauthenticated", "missing Bearer token"))?;
    let tokens = &s.livekit.tokens;
    tokens.learn_key(token).await;
    let claims = tokens
        .verify(token, now_secs(s))
        .map_err(|e| err(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))?;
    let org =
        tokens.org_of(&claims.iss).ok_or_else(|| err(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown key"))?;
    tokens.check_revoked(&claims).await.map_err(|e| match e {
        TokenError::RevocationUnavailable => err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        e => err(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
    })?;
    Ok((claims, org))
}

/// Twirp's answer to a caller over its budget: 429 `resource_exhausted`, with `Retry-After`.
fn limited(l: Limited) -> Response {
    let msg = format!("retry in {} s", l.retry_after_secs);
    l.with_retry_after(err(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", msg).into_response())
}

/// What the control API's checks refuse, in Twirp's terms.
impl From<ApiError> for TwirpError {
    fn from(e: ApiError) -> Self {
        match e.status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                err(StatusCode::BAD_REQUEST, "invalid_argument", e.message)
            }
            StatusCode::SERVICE_UNAVAILABLE => err(e.status, "unavailable", e.message),
            status => err(status, "internal", e.message),
        }
    }
}

/// Largest request body read: room metadata (64 KiB) with room to spare for its JSON escaping.
const MAX_BODY: usize = 256 * 1024;

/// LiveKit answers a missing grant with 401 "permissions denied"; so does this.
fn need(granted: bool) -> Result<(), TwirpError> {
    if granted { Ok(()) } else { Err(err(StatusCode::UNAUTHORIZED, "unauthenticated", "permissions denied")) }
}

/// `roomAdmin` for exactly this room; returns the router's name for it.
fn need_admin(claims: &Claims, org: &str, room: &str) -> Result<RoomName, TwirpError> {
    need(claims.video.room_admin && claims.video.room == room)?;
    Ok(RoomName::in_org(org, &room_name(room)?))
}

fn room_name(room: &str) -> Result<RoomName, TwirpError> {
    RoomName::new(room.to_string()).map_err(|e| err(StatusCode::BAD_REQUEST, "invalid_argument", format!("room {e}")))
}

/// Authenticates (failures count against the client address, as the control API's do),
/// spends one request of the key's budget, then dispatches.
async fn call(
    State(s): State<AppState>,
    Path(method): Path<String>,
    connected: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, TwirpError> {
    let ip = connected.map(|c| c.0.0.ip().to_string());
    let failed = |e: &TwirpError| e.status == StatusCode::UNAUTHORIZED;
    let (claims, org) = match ratelimit::guard_auth(&s, ip.as_deref(), authorize(&s, &headers), failed).await {
        Ok(authorized) => authorized?,
        Err(l) => return Ok(limited(l)),
    };
    if let Err(l) = ratelimit::admit(&s, &format!("livekit_key:{}", claims.iss)).await {
        return Ok(limited(l));
    }
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        err(StatusCode::PAYLOAD_TOO_LARGE, "malformed", format!("request body larger than {} KiB", MAX_BODY / 1024))
    })?;
    let codec = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.starts_with("application/protobuf") => Codec::Protobuf,
        _ => Codec::Json,
    };
    let response = dispatch(s.clone(), &claims, &org, &method, codec, body.clone()).await?;
    // Changes are audited as the API's are, by the LiveKit key that made them.
    if let Some((action, target_type, target, request)) = audit_entry(&method, codec, &body) {
        let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
        let actor = Actor { kind: "livekit_key", id: &claims.iss, ip: ip.as_deref(), user_agent };
        let now = s.clock.now_ms();
        let change = Change { action, target_type, target_id: Some(&target), before: None, after: Some(request) };
        // The change is made (the router's part cannot be rolled back): a caller told it failed
        // would retry it. A missing entry is logged instead.
        let written = async {
            let mut tx = s.db.begin(&org).await?;
            audit::record_by(&mut tx, &actor, &org, now, change).await?;
            tx.commit().await
        };
        if let Err(e) = written.await {
            tracing::error!(org, action, target, error = %e, "RoomService change made but not audited");
        }
    }
    Ok(response)
}

/// The audit entry for a RoomService mutation: action, target type, target (the room),
/// and the request as JSON, without data payloads. `None` for reads.
fn audit_entry(
    method: &str,
    codec: Codec,
    body: &[u8],
) -> Option<(&'static str, &'static str, String, serde_json::Value)> {
    fn json<T: Message + Default + DeserializeOwned + Serialize>(
        codec: Codec,
        body: &[u8],
    ) -> Option<serde_json::Value> {
        serde_json::to_value(decode::<T>(codec, body).ok()?).ok()
    }
    let (action, target_type, mut request) = match method {
        "CreateRoom" => ("room.create", "room", json::<proto::CreateRoomRequest>(codec, body)?),
        "DeleteRoom" => ("room.delete", "room", json::<proto::DeleteRoomRequest>(codec, body)?),
        "UpdateRoomMetadata" => ("room.update", "room", json::<proto::UpdateRoomMetadataRequest>(codec, body)?),
        "RemoveParticipant" => {
            ("participant.remove", "participant", json::<proto::RoomParticipantIdentity>(codec, body)?)
        }
        "MutePublishedTrack" => ("track.mute", "track", json::<proto::MuteRoomTrackRequest>(codec, body)?),
        "UpdateParticipant" => {
            ("participant.update", "participant", json::<proto::UpdateParticipantRequest>(codec, body)?)
        }
        "UpdateSubscriptions" => {
            ("participant.update_subscriptions", "participant", json::<proto::UpdateSubscriptionsRequest>(codec, body)?)
        }
        "SendData" => ("room.send_data", "room", json::<proto::SendDataRequest>(codec, body)?),
        _ => return None,
    };
    // Payloads, and settings that can hold credentials (egress storage keys, agent metadata),
    // stay out of the log.
    if let Some(fields) = request.as_object_mut() {
        for secretive in ["data", "egress", "agents"] {
            fields.remove(secretive);
        }
    }
    let room = request.get("room").or_else(|| request.get("name")).and_then(|v| v.as_str()).unwrap_or_default();
    Some((action, target_type, room.to_string(), request))
}

async fn dispatch(
    s: AppState,
    claims: &Claims,
    org: &str,
    method: &str,
    codec: Codec,
    body: Bytes,
) -> Result<Response, TwirpError> {
    match method {
        "CreateRoom" => {
            need(claims.video.room_create)?;
            let req: proto::CreateRoomRequest = decode(codec, &body)?;
            Ok(encode(codec, &create_room(&s, org, req).await?))
        }
        "ListRooms" => {
            need(claims.video.room_list)?;
            let req: proto::ListRoomsRequest = decode(codec, &body)?;
            let rooms =
                list_rooms(&s, org).await?.into_iter().filter(|r| req.names.is_empty() || req.names.contains(&r.name));
            Ok(encode(codec, &proto::ListRoomsResponse { rooms: rooms.collect() }))
        }
        "DeleteRoom" => {
            need(claims.video.room_create)?;
            let req: proto::DeleteRoomRequest = decode(codec, &body)?;
            delete_room(&s, org, &req.room).await?;
            Ok(encode(codec, &proto::DeleteRoomResponse {}))
        }
        "UpdateRoomMetadata" => {
            let req: proto::UpdateRoomMetadataRequest = decode(codec, &body)?;
            let name = need_admin(claims, org, &req.room)?;
            check_room_fields(Some(&req.metadata), None, None)?;
            // Only a room that exists as ListRooms counts them: a record whose room closed
            // (or whose wait for a first participant ran out) is not one.
            if !list_rooms(&s, org).await?.iter().any(|r| r.name == req.room) {
                return Err(not_found("room"));
            }
            let mut tx = s.db.begin(org).await?;
            let sql = "UPDATE rooms SET metadata = $1, updated_at = $2 WHERE org_id = $3 AND name = $4 \
                       AND deleted_at IS NULL";
            let n = tx.execute(sql, args![&req.metadata, s.clock.now_ms(), org, &req.room]).await?;
            tx.commit().await?;
            if n == 0 {
                // A room that exists only because somebody joined it gets its record now.
                let create = proto::CreateRoomRequest {
                    name: req.room.clone(),
                    metadata: req.metadata.clone(),
                    ..Default::default()
                };
                create_room(&s, org, create).await?;
            }
            s.livekit.room_metadata_changed(name, req.metadata.clone());
            let room =
                list_rooms(&s, org).await?.into_iter().find(|r| r.name == req.room).ok_or_else(|| not_found("room"))?;
            Ok(encode(codec, &room))
        }
        "ListParticipants" => {
            let req: proto::ListParticipantsRequest = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            let all = participants(&s, room).await?;
            let participants = all.iter().map(|p| s.livekit.describe(p)).collect();
            Ok(encode(codec, &proto::ListParticipantsResponse { participants }))
        }
        "GetParticipant" => {
            let req: proto::RoomParticipantIdentity = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            let p = find(&s, room, &req.identity).await?;
            Ok(encode(codec, &s.livekit.describe(&p)))
        }
        "RemoveParticipant" => {
            let req: proto::RoomParticipantIdentity = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            let p = find(&s, room.clone(), &req.identity).await?;
            let identity = p.identity.clone();
            s.sfu
                .call(move |sfu, now| {
                    for id in sfu.find_identity(&room, &identity) {
                        sfu.remove_participant(now, id, LeaveReason::Removed);
                    }
                })
                .await
                .map_err(|_| gone())?;
            Ok(encode(codec, &proto::RemoveParticipantResponse {}))
        }
        "MutePublishedTrack" => {
            let req: proto::MuteRoomTrackRequest = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            if !req.muted {
                // LiveKit unmutes remotely only when the operator enabled it; AuraLink does not.
                return Err(err(
                    StatusCode::PRECONDITION_FAILED,
                    "failed_precondition",
                    "remote unmute is not enabled",
                ));
            }
            let p = find(&s, room, &req.identity).await?;
            let track: TrackId = req.track_sid.parse().map_err(|_| not_found("track"))?;
            let info = p.tracks.iter().find(|t| t.id == track).cloned().ok_or_else(|| not_found("track"))?;
            s.sfu
                .call(move |sfu, now| sfu.set_track_muted(now, track, true))
                .await
                .map_err(|_| gone())?
                .map_err(|_| not_found("track"))?;
            let mut described = s.livekit.describe_track(&info);
            described.muted = true;
            Ok(encode(codec, &proto::MuteRoomTrackResponse { track: Some(described) }))
        }
        "UpdateParticipant" => {
            let req: proto::UpdateParticipantRequest = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            let too_large =
                |e: crate::signal::livekit::TooLarge| err(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string());
            // What one request may carry is checked before the participant is looked for; what
            // it adds up to with what the participant has, before anything changes.
            crate::signal::livekit::registry::fits(&req.name, &req.metadata, &req.attributes).map_err(too_large)?;
            let p = find(&s, room.clone(), &req.identity).await?;
            // Empty means unchanged here, as in LiveKit's RoomService.
            let keep = |v: &str| (!v.is_empty()).then_some(v.to_string());
            let (name, metadata) = (keep(&req.name), keep(&req.metadata));
            s.livekit
                .update_description(p.id, name.as_deref(), metadata.as_deref(), &req.attributes)
                .map_err(too_large)?;
            // The permission is replaced as a whole, as in LiveKit.
            if let Some(perm) = &req.permission {
                let perms = Permissions {
                    publish: perm.can_publish,
                    subscribe: perm.can_subscribe,
                    publish_data: perm.can_publish_data,
                    hidden: perm.hidden,
                };
                if !s.livekit.update_permission(p.id, perms, perm.can_update_metadata).await.map_err(|_| gone())? {
                    return Err(not_found("participant"));
                }
            }
            let p = find(&s, room, &req.identity).await?;
            Ok(encode(codec, &s.livekit.describe(&p)))
        }
        "UpdateSubscriptions" => {
            let req: proto::UpdateSubscriptionsRequest = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            let p = find(&s, room, &req.identity).await?;
            let sids = req.track_sids.iter().chain(req.participant_tracks.iter().flat_map(|t| t.track_sids.iter()));
            let tracks: Vec<TrackId> = sids.filter_map(|t| t.parse().ok()).collect();
            let (id, on) = (p.id, req.subscribe);
            s.sfu
                .call(move |sfu, now| {
                    for t in tracks {
                        let _ = sfu.set_subscribed(now, id, t, on);
                    }
                })
                .await
                .map_err(|_| gone())?;
            Ok(encode(codec, &proto::UpdateSubscriptionsResponse {}))
        }
        // Older server SDKs address by participant sid (a deprecated field).
        #[allow(deprecated)]
        "SendData" => {
            let req: proto::SendDataRequest = decode(codec, &body)?;
            let room = need_admin(claims, org, &req.room)?;
            if req.data.len() > MAX_SERVER_MESSAGE {
                let msg = format!("data is larger than {MAX_SERVER_MESSAGE} bytes");
                return Err(err(StatusCode::BAD_REQUEST, "invalid_argument", msg));
            }
            let mut to: Vec<Identity> =
                req.destination_identities.iter().filter_map(|i| Identity::new(i.clone()).ok()).collect();
            if !req.destination_sids.is_empty() {
                let all = participants(&s, room.clone()).await?;
                to.extend(
                    all.into_iter().filter(|p| req.destination_sids.contains(&p.id.to_string())).map(|p| p.identity),
                );
            }
            // Destinations that name nobody here reach nobody (not everyone).
            let addressed = !req.destination_identities.is_empty() || !req.destination_sids.is_empty();
            if !addressed || !to.is_empty() {
                let reliable = req.kind != proto::data_packet::Kind::Lossy as i32;
                let msg = DataMessage::from_server(req.data, req.topic.unwrap_or_default(), reliable, to);
                s.sfu.call(move |sfu, now| sfu.send_data(now, &room, &msg)).await.map_err(|_| gone())?;
            }
            Ok(encode(codec, &proto::SendDataResponse {}))
        }
        // LiveKit Cloud's: they move a participant between rooms, which needs rooms that span
        // nodes; refused by name rather than as unknown, so callers can tell.
        "ForwardParticipant" | "MoveParticipant" => Err(err(
            StatusCode::NOT_IMPLEMENTED,
            "unimplemented",
            format!("{method} is not supported: a participant stays in the room it joined"),
        )),
        _ => Err(err(StatusCode::NOT_FOUND, "bad_route", format!("no method {method}"))),
    }
}

#[derive(sqlx::FromRow)]
struct RoomRow {
    name: String,
    metadata: String,
    empty_timeout_secs: Option<i64>,
    max_participants: Option<i64>,
    created_at: i64,
    /// When it was last asked for through the API; none if only joins recorded it.
    requested_at: Option<i64>,
    /// Calls that started in it since then.
    calls_since: i64,
}

fn room_info(r: &RoomRow, live: usize) -> proto::Room {
    proto::Room {
        sid: format!("RM_{}", r.name),
        name: r.name.clone(),
        empty_timeout: r.empty_timeout_secs.unwrap_or(300) as u32,
        departure_timeout: 20,
        max_participants: r.max_participants.unwrap_or(0) as u32,
        creation_time: r.created_at / 1000,
        creation_time_ms: r.created_at,
        metadata: r.metadata.clone(),
        num_participants: live as u32,
        ..Default::default()
    }
}

/// Get-or-create, as LiveKit: an existing room keeps its settings except those given.
async fn create_room(s: &AppState, org: &str, req: proto::CreateRoomRequest) -> Result<proto::Room, TwirpError> {
    room_name(&req.name)?;
    let nonzero = |v: u32| (v > 0).then_some(v as i64);
    check_room_fields(Some(&req.metadata), nonzero(req.empty_timeout), nonzero(req.max_participants))?;
    let now = s.clock.now_ms();
    let metadata = (!req.metadata.is_empty()).then_some(req.metadata.clone());
    let mut tx = s.db.begin(org).await?;
    // One statement: call history may record the room at the same moment (a join racing
    // a deletion), and an update-then-insert would then collide with its row.
    let sql = "INSERT INTO rooms (id, org_id, name, metadata, empty_timeout_secs, max_participants, created_at, \
               updated_at, requested_at) VALUES ($1, $2, $3, COALESCE($4, ''), $5, $6, $7, $7, $7) \
               ON CONFLICT (org_id, name) WHERE deleted_at IS NULL DO UPDATE SET \
               metadata = COALESCE($4, rooms.metadata), empty_timeout_secs = COALESCE($5, rooms.empty_timeout_secs), \
               max_participants = COALESCE($6, rooms.max_participants), updated_at = $7, requested_at = $7";
    let args = args![
        record_id("room", now),
        org,
        &req.name,
        metadata,
        nonzero(req.empty_timeout),
        nonzero(req.max_participants),
        now
    ];
    tx.execute(sql, args).await?;
    // Existing or not (call history may have recorded a deleted room again), the room is
    // wanted from now on.
    crate::api::v1::room_created(s, org, &req.name, now).await?;
    let sql = "SELECT name, metadata, empty_timeout_secs, max_participants, created_at, requested_at, \
               CAST(0 AS BIGINT) AS calls_since FROM rooms WHERE org_id = $1 AND name = $2 AND deleted_at IS NULL";
    let row: RoomRow = tx.fetch_one(sql, args![org, &req.name]).await?;
    tx.commit().await?;
    // The room as stored, whether or not ListRooms would count it now (an empty timeout of 0).
    let name = RoomName::in_org(org, &room_name(&req.name)?);
    let live = s.sfu.call(move |sfu, _| sfu.participants(&name).len()).await.map_err(|_| gone())?;
    let room = room_info(&row, live);
    if !req.metadata.is_empty() {
        s.livekit.room_metadata_changed(RoomName::in_org(org, &room_name(&req.name)?), room.metadata.clone());
    }
    Ok(room)
}

/// The org's rooms that exist as LiveKit counts them: those open on the router (someone is
/// in, or left less than the empty timeout ago), and those created through the API that wait
/// for their first participant, for the empty timeout after their creation. Records of rooms
/// that were used and closed stay in the control API (`GET /v1/rooms`), not here.
async fn list_rooms(s: &AppState, org: &str) -> Result<Vec<proto::Room>, TwirpError> {
    let mut tx = s.db.begin_read(org).await?;
    let sql = "SELECT name, metadata, empty_timeout_secs, max_participants, created_at, requested_at, \
               (SELECT COUNT(*) FROM calls c WHERE c.org_id = r.org_id AND c.room_id = r.id \
               AND c.started_at >= r.requested_at) AS calls_since \
               FROM rooms r WHERE org_id = $1 AND deleted_at IS NULL ORDER BY name";
    let rows: Vec<RoomRow> = tx.fetch_all(sql, args![org]).await?;
    tx.commit().await?;
    let owner = org.to_string();
    let (live, default_timeout) = s
        .sfu
        .call(move |sfu, _| {
            let names: Vec<RoomName> = sfu.rooms().filter(|r| r.org() == Some(owner.as_str())).cloned().collect();
            let live: Vec<(String, usize)> =
                names.iter().map(|r| (r.local().to_string(), sfu.participants(r).len())).collect();
            (live, sfu.empty_room_timeout())
        })
        .await
        .map_err(|_| gone())?;
    let now = s.clock.now_ms();
    let waiting = |r: &RoomRow| {
        let timeout_ms = match r.empty_timeout_secs {
            Some(secs) if secs > 0 => secs * 1000,
            _ => default_timeout.as_millis() as i64,
        };
        r.calls_since == 0 && r.requested_at.is_some_and(|at| now < at + timeout_ms)
    };
    let count = |name: &str| live.iter().find(|(n, _)| n == name).map(|(_, c)| *c);
    let mut rooms: Vec<proto::Room> = rows
        .iter()
        .filter(|r| count(&r.name).is_some() || waiting(r))
        .map(|r| room_info(r, count(&r.name).unwrap_or(0)))
        .collect();
    for (name, n) in &live {
        if !rows.iter().any(|r| &r.name == name) {
            let row = RoomRow {
                name: name.clone(),
                metadata: String::new(),
                empty_timeout_secs: None,
                max_participants: None,
                created_at: 0,
                requested_at: None,
                calls_since: 0,
            };
            rooms.push(room_info(&row, *n));
        }
    }
    Ok(rooms)
}

/// Deletes the room's record, disconnects everyone in it and revokes its tokens, as
/// `DELETE /v1/rooms/{name}` does; 404 for a room neither recorded nor live.
async fn delete_room(s: &AppState, org: &str, room: &str) -> Result<(), TwirpError> {
    let name = RoomName::in_org(org, &room_name(room)?);
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let sql =
        "UPDATE rooms SET deleted_at = $1, updated_at = $1 WHERE org_id = $2 AND name = $3 AND deleted_at IS NULL";
    let recorded = tx.execute(sql, args![now, org, room]).await? > 0;
    let open = name.clone();
    let live = s.sfu.call(move |sfu, _| sfu.rooms().any(|r| *r == open)).await.map_err(|_| gone())?;
    if !recorded && !live {
        return Err(not_found("room"));
    }
    // Before the deletion is committed: a failure leaves the room for a retry.
    crate::api::v1::revoke_room(s, org, room, now).await?;
    tx.commit().await?;
    s.sfu.call(move |sfu, now| sfu.close_room(now, &name)).await.map_err(|_| gone())?;
    Ok(())
}

async fn participants(s: &AppState, room: RoomName) -> Result<Vec<ParticipantInfo>, TwirpError> {
    s.sfu.call(move |sfu, _| sfu.participants(&room)).await.map_err(|_| gone())
}

/// A LiveKit participant: its main session, with the tracks of all its sessions.
async fn find(s: &AppState, room: RoomName, identity: &str) -> Result<ParticipantInfo, TwirpError> {
    let identity = Identity::new(identity.to_string()).map_err(|_| not_found("participant"))?;
    let sessions: Vec<ParticipantInfo> =
        participants(s, room).await?.into_iter().filter(|p| p.identity == identity).collect();
    let main: ParticipantId = sessions.iter().map(|p| p.id).min().ok_or_else(|| not_found("participant"))?;
    let tracks = sessions.iter().flat_map(|p| p.tracks.clone()).collect();
    let (server, hidden) = (sessions.iter().any(|p| p.server), sessions.iter().any(|p| p.hidden));
    Ok(ParticipantInfo { id: main, identity, tracks, server, hidden })
}
