//! Rooms (records in the org) and their live participants (in the media router).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::not_found;
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::db::Tx;
use crate::error::ApiError;
use crate::ids::{Identity, RoomName, TrackId, record_id};
use crate::sfu::Permissions;
use crate::sfu::core::{LeaveReason, ParticipantInfo};
use crate::sfu::data::{DataMessage, MAX_SERVER_MESSAGE};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/rooms", get(list).post(create))
        .route("/v1/rooms/{name}", get(read).patch(update).delete(remove))
        .route("/v1/rooms/{name}/participants", get(participants))
        .route(
            "/v1/rooms/{name}/participants/{identity}",
            get(participant).patch(update_participant).delete(remove_participant),
        )
        .route("/v1/rooms/{name}/participants/{identity}/mute", post(mute))
        .route("/v1/rooms/{name}/data", post(send_data))
}

#[derive(Serialize, sqlx::FromRow)]
pub(super) struct Room {
    pub(super) id: String,
    name: String,
    metadata: String,
    empty_timeout_secs: Option<i64>,
    max_participants: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

macro_rules! select_rooms {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, metadata, empty_timeout_secs, max_participants, created_at, updated_at ",
            "FROM rooms WHERE org_id = $1 AND deleted_at IS NULL",
            $tail
        )
    };
}

fn room_name(name: &str) -> Result<RoomName, ApiError> {
    RoomName::new(name.to_string()).map_err(|e| ApiError::unprocessable("invalid_field", format!("room name {e}")))
}

/// The org's live room of this name; 404 otherwise.
pub(super) async fn load(tx: &mut Tx, org: &str, name: &str) -> Result<Room, ApiError> {
    find_room(tx, org, name).await?.ok_or_else(|| not_found("room"))
}

pub(super) async fn find_room(tx: &mut Tx, org: &str, name: &str) -> Result<Option<Room>, ApiError> {
    Ok(tx.fetch_optional(select_rooms!(" AND name = $2"), args![org, name]).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    /// Rooms after this name (the last of the previous page).
    after: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsRead)?;
    let limit = super::page_limit(q.limit);
    let mut tx = s.db.begin(org).await?;
    let rooms: Vec<Room> = tx
        .fetch_all(select_rooms!(" AND ($2 IS NULL OR name > $2) ORDER BY name LIMIT $3"), args![org, q.after, limit])
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "rooms": rooms })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: String,
    #[serde(default)]
    metadata: String,
    empty_timeout_secs: Option<i64>,
    max_participants: Option<i64>,
}

/// The limits on a room's settings, wherever they are set (here and LiveKit's RoomService).
pub(crate) fn check_room_fields(
    metadata: Option<&str>,
    timeout: Option<i64>,
    max: Option<i64>,
) -> Result<(), ApiError> {
    if metadata.is_some_and(|m| m.len() > 64 * 1024) {
        return Err(ApiError::unprocessable("invalid_field", "metadata must be at most 64 KiB"));
    }
    if timeout.is_some_and(|t| !(0..=86_400).contains(&t)) {
        return Err(ApiError::unprocessable("invalid_field", "empty_timeout_secs must be 0 to 86400"));
    }
    if max.is_some_and(|m| !(0..=100_000).contains(&m)) {
        return Err(ApiError::unprocessable("invalid_field", "max_participants must be 0 to 100000"));
    }
    Ok(())
}

async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateRoom>,
) -> Result<(StatusCode, Json<Room>), ApiError> {
    let org = caller.require(Perm::RoomsWrite)?;
    room_name(&req.name)?;
    check_room_fields(Some(&req.metadata), req.empty_timeout_secs, req.max_participants)?;
    let now = s.clock.now_ms();
    let id = record_id("room", now);
    let mut tx = s.db.begin(org).await?;
    let sql = "INSERT INTO rooms (id, org_id, name, metadata, empty_timeout_secs, max_participants, created_at, \
               updated_at, requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)";
    tx.execute(sql, args![&id, org, &req.name, &req.metadata, req.empty_timeout_secs, req.max_participants, now])
        .await
        .map_err(|e| match e {
            crate::db::DbError::Conflict => ApiError::conflict("already_exists", format!("room {} exists", req.name)),
            e => e.into(),
        })?;
    super::room_created(&s, org, &req.name, now).await?;
    let room = load(&mut tx, org, &req.name).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "room.create",
            target_type: "room",
            target_id: Some(&id),
            before: None,
            after: Some(json!(room)),
        },
    )
    .await?;
    // The room may be live already: somebody joined it before it was recorded.
    if !room.metadata.is_empty() {
        s.livekit.room_metadata_changed(RoomName::in_org(org, &room_name(&req.name)?), room.metadata.clone());
    }
    Ok((StatusCode::CREATED, Json(room)))
}

async fn read(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsRead)?;
    let mut tx = s.db.begin(org).await?;
    let room = load(&mut tx, org, &name).await?;
    tx.commit().await?;
    let live = live_participants(&s, org, &name).await?;
    let mut out = json!(room);
    out["num_participants"] = json!(live.len());
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRoom {
    metadata: Option<String>,
    empty_timeout_secs: Option<i64>,
    max_participants: Option<i64>,
}

async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(req): Body<UpdateRoom>,
) -> Result<Json<Room>, ApiError> {
    let org = caller.require(Perm::RoomsWrite)?;
    check_room_fields(req.metadata.as_deref(), req.empty_timeout_secs, req.max_participants)?;
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let before = load(&mut tx, org, &name).await?;
    let sql = "UPDATE rooms SET metadata = COALESCE($1, metadata), \
               empty_timeout_secs = COALESCE($2, empty_timeout_secs), \
               max_participants = COALESCE($3, max_participants), updated_at = $4 WHERE org_id = $5 AND id = $6";
    tx.execute(sql, args![req.metadata.clone(), req.empty_timeout_secs, req.max_participants, now, org, &before.id])
        .await?;
    let after = load(&mut tx, org, &name).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "room.update",
            target_type: "room",
            target_id: Some(&before.id),
            before: Some(json!(before)),
            after: Some(json!(after)),
        },
    )
    .await?;
    if req.metadata.is_some() {
        s.livekit.room_metadata_changed(RoomName::in_org(org, &room_name(&name)?), after.metadata.clone());
    }
    Ok(Json(after))
}

/// Deletes the room and disconnects everyone in it; the tokens issued for it stop joining it
/// (see `signal::revocation`).
async fn remove(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let org = caller.require(Perm::RoomsWrite)?;
    // A name no room can have names no room: 404, as for any other missing room.
    let room = RoomName::in_org(org, &room_name(&name).map_err(|_| not_found("room"))?);
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let before = load(&mut tx, org, &name).await?;
    let sql = "UPDATE rooms SET deleted_at = $1, updated_at = $1 WHERE org_id = $2 AND id = $3";
    tx.execute(sql, args![now, org, &before.id]).await?;
    // Before the deletion is committed: a failure leaves the room for a retry.
    super::revoke_room(&s, org, &name, now).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "room.delete",
            target_type: "room",
            target_id: Some(&before.id),
            before: Some(json!(before)),
            after: None,
        },
    )
    .await?;
    s.sfu.call(move |sfu, now| sfu.close_room(now, &room)).await.map_err(|_| ApiError::unavailable())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn live_participants(s: &AppState, org: &str, name: &str) -> Result<Vec<ParticipantInfo>, ApiError> {
    let room = RoomName::in_org(org, &room_name(name)?);
    s.sfu.call(move |sfu, _| sfu.participants(&room)).await.map_err(|_| ApiError::unavailable())
}

/// The room must be the caller's before anything about its participants is told or done.
async fn own_room(s: &AppState, org: &str, name: &str) -> Result<(), ApiError> {
    let mut tx = s.db.begin(org).await?;
    load(&mut tx, org, name).await?;
    tx.commit().await?;
    Ok(())
}

async fn participants(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::ParticipantsRead)?;
    own_room(&s, org, &name).await?;
    Ok(Json(json!({ "participants": live_participants(&s, org, &name).await? })))
}

async fn find(s: &AppState, org: &str, name: &str, identity: &str) -> Result<Vec<ParticipantInfo>, ApiError> {
    let identity = Identity::new(identity.to_string()).map_err(|_| not_found("participant"))?;
    let found: Vec<ParticipantInfo> =
        live_participants(s, org, name).await?.into_iter().filter(|p| p.identity == identity).collect();
    if found.is_empty() { Err(not_found("participant")) } else { Ok(found) }
}

async fn participant(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, identity)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::ParticipantsRead)?;
    own_room(&s, org, &name).await?;
    let sessions = find(&s, org, &name, &identity).await?;
    Ok(Json(detail(&s, &identity, &sessions).await?))
}

/// A participant as the API shows it: its sid, the tracks of all its connections, and what
/// it may do.
async fn detail(s: &AppState, identity: &str, sessions: &[ParticipantInfo]) -> Result<Value, ApiError> {
    let id = sessions[0].id;
    let tracks: Vec<_> = sessions.iter().flat_map(|p| p.tracks.clone()).collect();
    let perms = s.sfu.call(move |sfu, _| sfu.permissions(id)).await.map_err(|_| ApiError::unavailable())?;
    let perms = perms.ok_or_else(|| not_found("participant"))?;
    Ok(json!({
        "identity": identity,
        "sid": id.to_string(),
        "tracks": tracks,
        "permissions": {
            "can_publish": perms.publish,
            "can_subscribe": perms.subscribe,
            "can_publish_data": perms.publish_data,
            "can_update_metadata": s.livekit.can_update_metadata(id),
            "hidden": perms.hidden,
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatePermissions {
    can_publish: Option<bool>,
    can_subscribe: Option<bool>,
    can_publish_data: Option<bool>,
    can_update_metadata: Option<bool>,
    hidden: Option<bool>,
}

/// Changes what a participant may do, live: without `can_publish` its tracks are
/// unpublished, without `can_subscribe` it loses its subscriptions; LiveKit clients are told.
async fn update_participant(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, identity)): Path<(String, String)>,
    Body(req): Body<UpdatePermissions>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::ParticipantsWrite)?;
    own_room(&s, org, &name).await?;
    let sessions = find(&s, org, &name, &identity).await?;
    let before = detail(&s, &identity, &sessions).await?;
    let was = &before["permissions"];
    let pick = |v: Option<bool>, field: &str| v.unwrap_or_else(|| was[field].as_bool().unwrap_or(false));
    let perms = Permissions {
        publish: pick(req.can_publish, "can_publish"),
        subscribe: pick(req.can_subscribe, "can_subscribe"),
        publish_data: pick(req.can_publish_data, "can_publish_data"),
        hidden: pick(req.hidden, "hidden"),
    };
    let can_update_metadata = pick(req.can_update_metadata, "can_update_metadata");
    let now = s.clock.now_ms();
    let tx = s.db.begin(org).await?;
    let after = json!({ "can_publish": perms.publish, "can_subscribe": perms.subscribe,
        "can_publish_data": perms.publish_data, "can_update_metadata": can_update_metadata, "hidden": perms.hidden });
    let change = Change {
        action: "participant.update_permissions",
        target_type: "participant",
        target_id: Some(&identity),
        before: Some(json!({ "room": name, "permissions": was })),
        after: Some(json!({ "room": name, "permissions": after })),
    };
    audit::commit(tx, &caller, org, now, change).await?;
    let id = sessions[0].id;
    if !s.livekit.update_permission(id, perms, can_update_metadata).await.map_err(|_| ApiError::unavailable())? {
        return Err(not_found("participant"));
    }
    let sessions = find(&s, org, &name, &identity).await?;
    Ok(Json(detail(&s, &identity, &sessions).await?))
}

async fn remove_participant(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, identity)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = caller.require(Perm::ParticipantsWrite)?;
    own_room(&s, org, &name).await?;
    let sessions = find(&s, org, &name, &identity).await?;
    let now = s.clock.now_ms();
    let tx = s.db.begin(org).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "participant.remove",
            target_type: "participant",
            target_id: Some(&identity),
            before: Some(json!({ "room": name, "sessions": sessions.len() })),
            after: None,
        },
    )
    .await?;
    let ids: Vec<_> = sessions.iter().map(|p| p.id).collect();
    s.sfu
        .call(move |sfu, now| {
            for id in ids {
                sfu.remove_participant(now, id, LeaveReason::Removed);
            }
        })
        .await
        .map_err(|_| ApiError::unavailable())?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mute {
    track_sid: String,
    muted: bool,
}

async fn mute(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, identity)): Path<(String, String)>,
    Body(req): Body<Mute>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::ParticipantsWrite)?;
    own_room(&s, org, &name).await?;
    let sessions = find(&s, org, &name, &identity).await?;
    let track: TrackId = req.track_sid.parse().map_err(|_| not_found("track"))?;
    if !sessions.iter().any(|p| p.tracks.iter().any(|t| t.id == track)) {
        return Err(not_found("track"));
    }
    let now = s.clock.now_ms();
    let tx = s.db.begin(org).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "track.mute",
            target_type: "track",
            target_id: Some(&req.track_sid),
            before: None,
            after: Some(json!({ "room": name, "identity": identity, "muted": req.muted })),
        },
    )
    .await?;
    s.sfu
        .call(move |sfu, now| sfu.set_track_muted(now, track, req.muted))
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|_| not_found("track"))?;
    Ok(Json(json!({ "track_sid": req.track_sid, "muted": req.muted })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendData {
    /// Base64 (standard alphabet, padded), as LiveKit's JSON carries bytes.
    data: String,
    #[serde(default)]
    topic: String,
    #[serde(default = "yes")]
    reliable: bool,
    /// Only these participants; empty or absent: everyone in the room.
    #[serde(default)]
    destination_identities: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Sends a data message from the server to the room's participants (LiveKit clients get a
/// user packet with no sender, WHIP/WHEP clients a message on a channel named after the topic).
async fn send_data(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(req): Body<SendData>,
) -> Result<Json<Value>, ApiError> {
    use base64::Engine;
    let org = caller.require(Perm::DataSend)?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&req.data)
        .map_err(|_| ApiError::unprocessable("invalid_field", "data must be base64"))?;
    if payload.len() > MAX_SERVER_MESSAGE {
        let msg = format!("data must be at most {MAX_SERVER_MESSAGE} bytes");
        return Err(ApiError::unprocessable("invalid_field", msg));
    }
    if req.topic.len() > 256 {
        return Err(ApiError::unprocessable("invalid_field", "topic must be at most 256 characters"));
    }
    let to = req
        .destination_identities
        .iter()
        .map(|i| Identity::new(i.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::unprocessable("invalid_field", format!("destination identity {e}")))?;
    own_room(&s, org, &name).await?;
    let room = RoomName::in_org(org, &room_name(&name)?);
    let now = s.clock.now_ms();
    let tx = s.db.begin(org).await?;
    let after = json!({ "room": name, "topic": req.topic, "bytes": payload.len(), "reliable": req.reliable, "destination_identities": req.destination_identities });
    let change = Change {
        action: "room.send_data",
        target_type: "room",
        target_id: Some(&name),
        before: None,
        after: Some(after),
    };
    audit::commit(tx, &caller, org, now, change).await?;
    let msg = DataMessage::from_server(payload, req.topic, req.reliable, to);
    let delivered =
        s.sfu.call(move |sfu, now| sfu.send_data(now, &room, &msg)).await.map_err(|_| ApiError::unavailable())?;
    Ok(Json(json!({ "delivered": delivered })))
}
