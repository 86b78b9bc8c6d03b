//! One LiveKit signal connection: protobuf `SignalRequest`s in, `SignalResponse`s out, and
//! router events turned into participant updates. With one peer connection (`/rtc/v1`) only
//! the client offers, and the server asks it for more receiving m-lines when it needs them;
//! with two (`/rtc`) the client offers on its publisher connection and the server on the
//! subscriber connection.

mod socket;

pub use self::socket::run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::leave_request::Action;
use proto::participant_info::State as PState;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use str0m::Candidate;
use str0m::channel::{ChannelConfig, Reliability};
use str0m::media::MediaKind;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use super::LiveKitState;
use super::convert;
use super::data::{self, LiveKitData};
use super::notices::Notice;
use super::registry::{self, ParticipantMeta, TrackMeta};
use super::resume::RESUME_WINDOW;
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};
use crate::sfu::Permissions;
use crate::sfu::SubscribeFilter;
use crate::sfu::core::{
    ClientAnswer, JoinRequest, LeaveReason, MAX_GRANT_ENTRIES, MAX_REMOTE_CANDIDATES, ParticipantInfo, SfuError,
    SfuEvent, SubscriptionGrant, TrackInfo,
};
use crate::sfu::driver::DriverGone;
use crate::sfu::layer_select::Quality;
use crate::signal::room_settings::stored as stored_room;
use crate::signal::token::{self, Claims};

/// The protocol version we speak (LiveKit's `protocol` query parameter and ServerInfo).
const PROTOCOL: i32 = 16;
/// The LiveKit server release whose signal protocol this implements. The SDK gates features
/// on the server version (RPC needs 1.8), so it is what we report; our own version goes in
/// `debug_info`.
const LIVEKIT_VERSION: &str = "1.9.0";
/// Seconds: the SDK pings every `PING_INTERVAL` and gives up after `PING_TIMEOUT`; so do we.
const PING_INTERVAL: i32 = 5;
const PING_TIMEOUT: i32 = 15;
/// A client gets a fresh token this long before the one it holds expires (LiveKit refreshes
/// every five minutes, with ten-minute tokens).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(token::REFRESHED_TTL_SECS / 2);
/// Messages held for a client whose signal connection is down; a busier room than this
/// while it is away makes it rejoin instead.
const MAX_BACKLOG: usize = 1024;

/// Connection options from the query string.
#[derive(Debug)]
pub struct Options {
    pub auto_subscribe: bool,
    pub resume: bool,
    pub sid: Option<String>,
    /// One peer connection for both directions (`/rtc/v1`).
    pub single_pc: bool,
    /// The client's first offer, sent with the join (`/rtc/v1`).
    pub offer: Option<proto::SessionDescription>,
}

/// Why a session ended, as the client is told.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("malformed signal message")]
    Malformed,
    #[error("text frames are not part of the protocol")]
    TextFrame,
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("{0} is not valid now")]
    OutOfOrder(&'static str),
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("negotiation failed: {0}")]
    Sfu(SfuError),
    /// A limit of the room's or the connection's (docs/limits.md).
    #[error("{0}")]
    Limit(SfuError),
    #[error("media router is not running")]
    Gone(#[from] DriverGone),
    #[error("no ping within {PING_TIMEOUT} s")]
    PingTimeout,
    #[error("signal connection closed without a leave")]
    Dropped,
    #[error("removed by the server ({0:?})")]
    Removed(LeaveReason),
}

impl From<SfuError> for SessionError {
    fn from(e: SfuError) -> Self {
        match e {
            SfuError::RoomFull | SfuError::LimitExceeded(_) => SessionError::Limit(e),
            e => SessionError::Sfu(e),
        }
    }
}

impl SessionError {
    /// WebSocket close code: 1008 policy violation for bad input, 1011 for server trouble.
    fn close_code(&self) -> u16 {
        match self {
            SessionError::Malformed
            | SessionError::TextFrame
            | SessionError::OutOfOrder(_)
            | SessionError::Invalid(_) => 1008,
            SessionError::Sfu(_) | SessionError::Limit(_) => 1008,
            // 1009: the message was too big (or the stream broke; then nobody reads this).
            SessionError::WebSocket(_) => 1009,
            SessionError::Gone(_) => 1011,
            SessionError::PingTimeout | SessionError::Removed(_) | SessionError::Dropped => 1000,
        }
    }

    /// Whether the client may come back on a new signal connection: it lost this one, as
    /// opposed to breaking the protocol or being removed.
    fn resumable(&self) -> bool {
        matches!(self, SessionError::WebSocket(_) | SessionError::PingTimeout | SessionError::Dropped)
    }
}

struct Session {
    state: LiveKitState,
    org: String,
    room: RoomName,
    identity: Identity,
    perms: Permissions,
    /// The participant, which is also its subscriber connection (or its only connection).
    participant: ParticipantId,
    publisher: Option<ParticipantId>,
    single_pc: bool,
    /// The offer that came with the join, answered right after the join response.
    first_offer: Option<proto::SessionDescription>,
    /// Publisher candidates trickled before the publisher's offer.
    early_candidates: Vec<Candidate>,
    offer_id: u32,
    speakers: Vec<ParticipantId>,
    /// The other participants this client has been told about: hidden ones never are, and
    /// it hears of a departure, a speaker or a quality change only of those it knows.
    known: HashMap<ParticipantId, Identity>,
    can_update_metadata: bool,
    /// What the client missed while its signal connection was down.
    backlog: Vec<Resp>,
    /// The token it joined with, or the last refresh of it.
    claims: Claims,
    room_metadata: String,
    refresh_at: tokio::time::Instant,
}

fn leave(reason: proto::DisconnectReason, action: Action) -> Resp {
    Resp::Leave(proto::LeaveRequest {
        can_reconnect: action != Action::Disconnect,
        reason: reason as i32,
        action: action as i32,
        ..Default::default()
    })
}

fn server_info() -> proto::ServerInfo {
    proto::ServerInfo {
        edition: proto::server_info::Edition::Standard as i32,
        version: LIVEKIT_VERSION.to_string(),
        protocol: PROTOCOL,
        node_id: "auralink".to_string(),
        debug_info: format!("auralink {}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }
}

impl Session {
    async fn join(state: LiveKitState, claims: &Claims, opts: &Options) -> Result<Session, SessionError> {
        let room = RoomName::new(claims.video.room.clone()).map_err(|e| SessionError::Invalid(format!("room: {e}")))?;
        let org = state.tokens.org_of(&claims.iss).ok_or_else(|| SessionError::Invalid("token key".into()))?;
        let room = RoomName::in_org(&org, &room);
        let identity =
            Identity::new(claims.sub.clone()).map_err(|e| SessionError::Invalid(format!("identity: {e}")))?;
        let (room_metadata, limits) = stored_room(&state.db, &org, room.local()).await;
        let perms = claims.video.permissions();
        let subscribe =
            if opts.auto_subscribe && perms.subscribe { SubscribeFilter::All } else { SubscribeFilter::None };
        // LiveKit's subscriber connection carries server-opened `_reliable` and `_lossy`
        // channels; the SDK adopts them by label. A single connection carries the client's.
        let server_channels = if opts.single_pc {
            Vec::new()
        } else {
            vec![
                ChannelConfig { label: data::RELIABLE.into(), ..Default::default() },
                ChannelConfig {
                    label: data::LOSSY.into(),
                    ordered: false,
                    reliability: Reliability::MaxRetransmits { retransmits: 0 },
                    ..Default::default()
                },
            ]
        };
        let data_codec = opts.single_pc.then(|| Arc::new(LiveKitData) as Arc<dyn crate::sfu::data::DataCodec>);
        let req = JoinRequest {
            subscribe,
            server_channels,
            data_codec,
            limits,
            ..JoinRequest::new(room.clone(), identity.clone(), perms)
        };
        let single_pc = opts.single_pc;
        let registry = Arc::clone(&state.registry);
        let participant = state
            .sfu
            .call(move |sfu, now| {
                // One identity, one LiveKit participant: a rejoin replaces the old one, and
                // others see it leave before the new one arrives. (WHIP/WHEP sessions may share
                // an identity, a publisher and a player, and are left alone.)
                for old in sfu.find_identity(&req.room, &req.identity) {
                    if registry.participant(old).is_some() {
                        sfu.remove_participant(now, old, LeaveReason::DuplicateIdentity);
                    }
                }
                if single_pc { sfu.join_client_offers(now, req) } else { sfu.join_server_offered(now, req) }
            })
            .await??;
        state.registry.set_participant(
            participant,
            room.clone(),
            ParticipantMeta {
                name: claims.name.clone(),
                metadata: claims.metadata.clone(),
                attributes: Default::default(),
                joined_at_ms: crate::wall::unix_ms(),
                permission: proto::ParticipantPermission {
                    can_update_metadata: claims.video.can_update_own_metadata,
                    ..convert::permission(perms)
                },
            },
        );
        Ok(Session {
            state,
            org,
            room,
            identity,
            perms,
            participant,
            publisher: single_pc.then_some(participant),
            single_pc,
            first_offer: opts.offer.clone(),
            early_candidates: Vec::new(),
            offer_id: 0,
            speakers: Vec::new(),
            known: HashMap::new(),
            can_update_metadata: claims.video.can_update_own_metadata,
            backlog: Vec::new(),
            claims: claims.clone(),
            refresh_at: refresh_time(claims.exp),
            room_metadata,
        })
    }

    /// A token like the one the client holds, valid for longer (with its current name and
    /// metadata), so that it can still reconnect after the first one expires.
    fn refresh_token(&mut self) -> Vec<Resp> {
        let now = crate::wall::unix_secs();
        if let Some(meta) = self.state.registry.participant(self.participant) {
            self.claims.name = meta.name;
            self.claims.metadata = meta.metadata;
        }
        let refreshed = self.state.tokens.refresh(&self.claims, now, token::REFRESHED_TTL_SECS);
        self.claims.exp = now + token::REFRESHED_TTL_SECS;
        self.refresh_at = refresh_time(self.claims.exp);
        refreshed.map(Resp::RefreshToken).into_iter().collect()
    }

    /// Who may subscribe to this participant's tracks, as its client wrote it: participants
    /// named by identity or by sid (those not in the room are left out), each allowed all its
    /// tracks or some. One entry more than the router takes is kept, so it can refuse.
    async fn grant(&self, p: &proto::SubscriptionPermission) -> Result<SubscriptionGrant, SessionError> {
        let all = self.participants().await?;
        let mut allowed = HashMap::new();
        for tp in p.track_permissions.iter().take(MAX_GRANT_ENTRIES + 1) {
            let identity = match Identity::new(tp.participant_identity.clone()) {
                Ok(identity) => Some(identity),
                Err(_) => all.iter().find(|x| x.id.to_string() == tp.participant_sid).map(|x| x.identity.clone()),
            };
            let Some(identity) = identity else { continue };
            let tracks = if tp.all_tracks {
                None
            } else {
                Some(
                    tp.track_sids
                        .iter()
                        .take(MAX_GRANT_ENTRIES + 1)
                        .map(|s| parse_track(s))
                        .collect::<Result<_, _>>()?,
                )
            };
            allowed.insert(identity, tracks);
        }
        Ok(SubscriptionGrant { allowed })
    }

    async fn participants(&self) -> Result<Vec<ParticipantInfo>, SessionError> {
        let room = self.room.clone();
        Ok(self.state.sfu.call(move |sfu, _| sfu.participants(&room)).await?)
    }

    /// The participants this client may see: everyone but itself and the hidden. They become
    /// the ones it knows.
    fn others<'a>(&mut self, all: &'a [ParticipantInfo]) -> Vec<&'a ParticipantInfo> {
        let others: Vec<&ParticipantInfo> = all.iter().filter(|p| p.id != self.participant && !p.hidden).collect();
        self.known = others.iter().map(|p| (p.id, p.identity.clone())).collect();
        others
    }

    fn join_response(&mut self, all: &[ParticipantInfo]) -> Resp {
        let me = all
            .iter()
            .find(|p| p.id == self.participant)
            .map(|p| convert::participant_info(p, &self.state.registry, PState::Joined))
            .unwrap_or_default();
        let others: Vec<proto::ParticipantInfo> = self
            .others(all)
            .into_iter()
            .map(|p| convert::participant_info(p, &self.state.registry, PState::Active))
            .collect();
        Resp::Join(proto::JoinResponse {
            room: Some(self.room_info(visible(all))),
            participant: Some(me),
            other_participants: others,
            server_version: LIVEKIT_VERSION.to_string(),
            ice_servers: self.ice_servers(),
            // The client's publisher connection comes up first and carries its data channels.
            subscriber_primary: false,
            ping_timeout: PING_TIMEOUT,
            ping_interval: PING_INTERVAL,
            server_info: Some(server_info()),
            ..Default::default()
        })
    }

    fn room_info(&self, participants: usize) -> proto::Room {
        proto::Room {
            sid: format!("RM_{}", self.room.local()),
            name: self.room.local().to_string(),
            num_participants: participants as u32,
            metadata: self.room_metadata.clone(),
            ..Default::default()
        }
    }

    async fn room_update(&mut self, metadata: String) -> Result<Vec<Resp>, SessionError> {
        self.room_metadata = metadata;
        let n = visible(&self.participants().await?);
        Ok(vec![Resp::RoomUpdate(proto::RoomUpdate { room: Some(self.room_info(n)) })])
    }

    async fn handle_notice(&mut self, n: Notice) -> Result<Vec<Resp>, SessionError> {
        match n {
            Notice::Described(p) => self.described(p).await,
            Notice::Metadata(metadata) => self.room_update(metadata).await,
        }
    }

    /// Catches up after missing events or notices: everyone visible as they are now, those
    /// it knew that are gone as disconnected, and the room's metadata as stored.
    async fn resync(&mut self) -> Result<Vec<Resp>, SessionError> {
        let all = self.participants().await?;
        if !all.iter().any(|p| p.id == self.participant) {
            return Err(SessionError::Removed(LeaveReason::Removed));
        }
        let mut infos = self.catch_up(&all);
        if let Some(me) = all.iter().find(|p| p.id == self.participant) {
            infos.push(convert::participant_info(me, &self.state.registry, PState::Active));
        }
        let (metadata, _) = stored_room(&self.state.db, &self.org, self.room.local()).await;
        let mut out = vec![Resp::Update(proto::ParticipantUpdate { participants: infos })];
        out.extend(self.room_update(metadata).await?);
        // What the router told this participant once and will not repeat: which qualities of
        // its tracks are watched, and which tracks it may not have.
        let id = self.participant;
        let standing = self.state.sfu.call(move |sfu, _| sfu.standing_notices(id)).await?;
        for e in standing {
            out.extend(self.handle_event(e).await?);
        }
        Ok(out)
    }

    /// Everyone the client may see as they are in `all`, and those it knew that are gone as
    /// disconnected (their departure may have been missed); they become the ones it knows.
    fn catch_up(&mut self, all: &[ParticipantInfo]) -> Vec<proto::ParticipantInfo> {
        let before = std::mem::take(&mut self.known);
        let mut infos: Vec<proto::ParticipantInfo> = self
            .others(all)
            .into_iter()
            .map(|p| convert::participant_info(p, &self.state.registry, PState::Active))
            .collect();
        for (id, identity) in before.into_iter().filter(|(id, _)| !self.known.contains_key(id)) {
            infos.push(self.departed(id, &identity));
        }
        infos
    }

    /// How a participant that left is described to those that knew it.
    fn departed(&self, id: ParticipantId, identity: &Identity) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: id.to_string(),
            identity: identity.to_string(),
            state: PState::Disconnected as i32,
            version: self.state.registry.next_version(),
            ..Default::default()
        }
    }

    fn ice_servers(&self) -> Vec<proto::IceServer> {
        self.state
            .ice_servers
            .iter()
            .map(|s| proto::IceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect()
    }

    async fn handle_request(&mut self, msg: Req) -> Result<Vec<Resp>, SessionError> {
        let sfu = &self.state.sfu;
        match msg {
            Req::Offer(sd) => {
                let sdp = sd.sdp;
                let answer = match self.publisher {
                    None => {
                        let req = JoinRequest {
                            participant: Some(self.participant),
                            data_codec: Some(Arc::new(LiveKitData)),
                            subscribe: SubscribeFilter::None,
                            ..JoinRequest::new(self.room.clone(), self.identity.clone(), self.perms)
                        };
                        let early = std::mem::take(&mut self.early_candidates);
                        let (id, answer) = sfu
                            .call(move |sfu, now| {
                                let (id, answer) = sfu.join(now, req, &sdp)?;
                                for c in early {
                                    sfu.add_remote_candidate(now, id, c)?;
                                }
                                Ok::<_, SfuError>((id, answer))
                            })
                            .await??;
                        self.publisher = Some(id);
                        ClientAnswer { sdp: answer.to_sdp_string(), tracks: Vec::new() }
                    }
                    Some(id) => sfu.call(move |sfu, now| sfu.answer_offer(now, id, &sdp)).await??,
                };
                // Which track each receiving m-line carries: with one peer connection the
                // browser's track ids are its own, and the SDK looks publications up by mid.
                let mid_to_track_id =
                    answer.tracks.iter().map(|(mid, track)| (mid.to_string(), track.to_string())).collect();
                Ok(vec![Resp::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp: answer.sdp,
                    id: sd.id,
                    mid_to_track_id,
                })])
            }
            Req::Answer(sd) => {
                let id = self.participant;
                sfu.call(move |sfu, now| sfu.handle_answer(now, id, &sd.sdp)).await?.map_err(|e| match e {
                    SfuError::NoPendingOffer => SessionError::OutOfOrder("answer without an offer"),
                    e => e.into(),
                })?;
                Ok(vec![])
            }
            Req::Trickle(t) => {
                let Some(c) = parse_candidate(&t.candidate_init)? else { return Ok(vec![]) };
                let target = if t.target == proto::SignalTarget::Subscriber as i32 {
                    Some(self.participant)
                } else {
                    self.publisher
                };
                // Candidates past the limit are dropped, not kept: a client that trickles the
                // same ones again (as SDKs do after a resume) loses nothing it needs.
                match target {
                    Some(id) => match sfu.call(move |sfu, now| sfu.add_remote_candidate(now, id, c)).await? {
                        Err(SfuError::LimitExceeded(what)) => {
                            tracing::debug!(participant = %self.participant, "{what}: limit reached; candidate dropped");
                        }
                        other => other?,
                    },
                    None if self.early_candidates.len() >= MAX_REMOTE_CANDIDATES => {
                        tracing::debug!(participant = %self.participant, "early candidates: limit reached; dropped");
                    }
                    None => self.early_candidates.push(c),
                }
                Ok(vec![])
            }
            Req::AddTrack(req) => self.add_track(req).await,
            Req::Mute(m) => {
                let track = parse_track(&m.sid)?;
                match self.own_track(&m.sid).await {
                    Ok(track) => sfu.call(move |sfu, now| sfu.set_track_muted(now, track, m.muted)).await??,
                    // A mute of a track of its own that the server unpublished meanwhile (its
                    // publish permission was taken) is late, not wrong: LiveKit ignores it too.
                    Err(_) if self.state.registry.described_by(track, self.participant) => {}
                    Err(e) => return Err(e),
                }
                Ok(vec![])
            }
            Req::Subscription(u) => {
                let sids = u.track_sids.iter().chain(u.participant_tracks.iter().flat_map(|p| p.track_sids.iter()));
                let tracks: Vec<TrackId> = sids.map(|s| parse_track(s)).collect::<Result<_, _>>()?;
                let (id, on) = (self.participant, u.subscribe);
                sfu.call(move |sfu, now| {
                    for t in tracks {
                        // A track that went away meanwhile is not an error of the client's.
                        let _ = sfu.set_subscribed(now, id, t, on);
                    }
                })
                .await?;
                Ok(vec![])
            }
            Req::TrackSetting(s) => {
                let id = self.participant;
                for sid in &s.track_sids {
                    let track = parse_track(sid)?;
                    let quality = if s.width > 0 && s.height > 0 {
                        self.state.registry.track(track).map(|m| convert::quality_for_size(&m, s.width, s.height))
                    } else {
                        convert::quality(s.quality)
                    };
                    let enabled = !s.disabled && (quality.is_some() || s.width > 0);
                    sfu.call(move |sfu, now| {
                        let _ = sfu.set_track_enabled(now, id, track, enabled);
                        if let Some(q) = quality.filter(|_| enabled) {
                            let _ = sfu.set_max_quality(now, id, track, q);
                        }
                    })
                    .await?;
                }
                Ok(vec![])
            }
            Req::Ping(ts) => Ok(vec![Resp::Pong(ts)]),
            Req::PingReq(p) => Ok(vec![Resp::PongResp(proto::Pong {
                last_ping_timestamp: p.timestamp,
                timestamp: crate::wall::unix_ms(),
            })]),
            Req::UpdateMetadata(u) => {
                use proto::request_response::Reason;
                let (reason, message) = if !self.can_update_metadata {
                    (Reason::NotAllowed, "token does not grant canUpdateOwnMetadata".to_string())
                } else {
                    match self.state.update_description(
                        self.participant,
                        Some(&u.name),
                        Some(&u.metadata),
                        &u.attributes,
                    ) {
                        Ok(()) => (Reason::Ok, String::new()),
                        Err(e) => (Reason::LimitExceeded, e.to_string()),
                    }
                };
                Ok(vec![Resp::RequestResponse(proto::RequestResponse {
                    request_id: u.request_id,
                    reason: reason as i32,
                    message,
                    ..Default::default()
                })])
            }
            Req::SubscriptionPermission(p) => {
                let grant = if p.all_participants { None } else { Some(self.grant(&p).await?) };
                let id = self.participant;
                sfu.call(move |sfu, now| sfu.set_subscription_grant(now, id, grant)).await??;
                Ok(vec![])
            }
            // Accepted and not acted on; see docs/livekit-compat.md.
            Req::SyncState(_)
            | Req::Simulate(_)
            | Req::UpdateLayers(_)
            | Req::UpdateAudioTrack(_)
            | Req::UpdateVideoTrack(_)
            | Req::PublishDataTrackRequest(_)
            | Req::UnpublishDataTrackRequest(_)
            | Req::UpdateDataSubscription(_)
            | Req::StoreDataBlobRequest(_)
            | Req::GetDataBlobRequest(_) => Ok(vec![]),
            Req::Leave(_) => Ok(vec![]),
        }
    }

    async fn add_track(&mut self, req: proto::AddTrackRequest) -> Result<Vec<Resp>, SessionError> {
        if !self.perms.publish {
            // The SDK checks the permission it was sent before asking; a client that asks
            // anyway gets no publication.
            tracing::info!(participant = %self.participant, "add track without publish permission ignored");
            return Ok(vec![]);
        }
        if req.cid.is_empty() || req.cid.len() > 256 {
            return Err(SessionError::Invalid("track cid".into()));
        }
        // A track's description is a name, a stream name and a few simulcast layers.
        if req.name.len() > registry::MAX_NAME || req.stream.len() > registry::MAX_NAME || req.layers.len() > 8 {
            return Err(SessionError::Invalid("track description too large".into()));
        }
        let kind = if req.r#type == proto::TrackType::Audio as i32 { MediaKind::Audio } else { MediaKind::Video };
        let on = self.publisher.unwrap_or(self.participant);
        let cid = req.cid.clone();
        let track = self.state.sfu.call(move |sfu, _| sfu.announce_track(on, &cid)).await??;
        let meta = TrackMeta {
            name: req.name.clone(),
            source: req.source,
            width: req.width,
            height: req.height,
            layers: req.layers.clone(),
            stereo: req.stereo,
            disable_dtx: req.disable_dtx,
            stream: req.stream.clone(),
            // A codec name is short; anything else is not one.
            codec: req.simulcast_codecs.first().map(|c| c.codec.clone()).filter(|c| c.len() <= 32).unwrap_or_default(),
            encryption: req.encryption,
        };
        self.state
            .registry
            .set_track(track, self.participant, meta.clone())
            .map_err(|e| SessionError::Invalid(e.to_string()))?;
        let rids = if req.layers.len() > 1 { req.layers.iter().map(|l| l.rid.clone()).collect() } else { Vec::new() };
        // The codec is known once the m-line is negotiated; until then, what the client says.
        let info = TrackInfo {
            id: track,
            owner: self.participant,
            kind,
            muted: req.muted,
            layers: rids,
            mime: String::new(),
            server: false,
        };
        Ok(vec![Resp::TrackPublished(proto::TrackPublishedResponse {
            cid: req.cid,
            track: Some(convert::track_info(&info, Some(&meta))),
        })])
    }

    /// The track `sid` if this participant publishes it.
    async fn own_track(&self, sid: &str) -> Result<TrackId, SessionError> {
        let track = parse_track(sid)?;
        let mine = self.participants().await?.into_iter().find(|p| p.id == self.participant);
        if mine.is_some_and(|p| p.tracks.iter().any(|t| t.id == track)) {
            Ok(track)
        } else {
            Err(SessionError::Invalid(format!("{sid} is not a track of this participant")))
        }
    }

    /// A participant's description changed; if it is this one, its permission may have too.
    async fn described(&mut self, participant: ParticipantId) -> Result<Vec<Resp>, SessionError> {
        if participant == self.participant
            && let Some(meta) = self.state.registry.participant(participant)
        {
            let p = &meta.permission;
            self.perms = Permissions {
                publish: p.can_publish,
                subscribe: p.can_subscribe,
                publish_data: p.can_publish_data,
                hidden: p.hidden,
            };
            self.can_update_metadata = p.can_update_metadata;
            // Refreshed tokens carry what the participant may do now, not what it joined with.
            let grant = &mut self.claims.video;
            grant.can_publish = Some(p.can_publish);
            grant.can_subscribe = Some(p.can_subscribe);
            grant.can_publish_data = Some(p.can_publish_data);
            grant.can_update_own_metadata = p.can_update_metadata;
            grant.hidden = p.hidden;
        }
        self.update_for(participant).await
    }

    async fn update_for(&mut self, participant: ParticipantId) -> Result<Vec<Resp>, SessionError> {
        let all = self.participants().await?;
        let Some(p) = all.iter().find(|p| p.id == participant) else { return Ok(vec![]) };
        if p.hidden && p.id != self.participant {
            // Hidden since the client saw it (RoomService changed its permission): it leaves.
            return Ok(match self.known.remove(&p.id) {
                Some(identity) => {
                    vec![Resp::Update(proto::ParticipantUpdate { participants: vec![self.departed(p.id, &identity)] })]
                }
                None => vec![],
            });
        }
        if p.id != self.participant {
            self.known.insert(p.id, p.identity.clone());
        }
        let info = convert::participant_info(p, &self.state.registry, PState::Active);
        Ok(vec![Resp::Update(proto::ParticipantUpdate { participants: vec![info] })])
    }

    async fn handle_event(&mut self, e: SfuEvent) -> Result<Vec<Resp>, SessionError> {
        match e {
            SfuEvent::Offer { participant, sdp } if participant == self.participant => {
                self.offer_id += 1;
                Ok(vec![Resp::Offer(proto::SessionDescription {
                    r#type: "offer".into(),
                    sdp,
                    id: self.offer_id,
                    ..Default::default()
                })])
            }
            SfuEvent::SectionsNeeded { participant, audio, video } if participant == self.participant => {
                Ok(vec![Resp::MediaSectionsRequirement(proto::MediaSectionsRequirement {
                    num_audios: audio,
                    num_videos: video,
                })])
            }
            SfuEvent::ParticipantLeft { participant, reason, .. } if participant == self.participant => {
                Err(SessionError::Removed(reason))
            }
            SfuEvent::QualitiesWanted { owner, track, up_to, mime } if owner == self.participant => {
                let subscribed_qualities: Vec<proto::SubscribedQuality> =
                    [Quality::Low, Quality::Medium, Quality::High]
                        .into_iter()
                        .map(|q| proto::SubscribedQuality {
                            quality: convert::video_quality(q) as i32,
                            enabled: up_to.is_some_and(|max| q <= max),
                        })
                        .collect();
                // Current SDKs read the qualities per codec, by the name they announced the
                // codec with (else the negotiated one); older ones the list itself.
                let announced = self.state.registry.track(track).map(|m| m.codec).filter(|c| !c.is_empty());
                let negotiated = mime.strip_prefix("video/").map(str::to_ascii_lowercase);
                let subscribed_codecs = vec![proto::SubscribedCodec {
                    codec: announced.or(negotiated).unwrap_or_else(|| "vp8".to_string()),
                    qualities: Vec::clone(&subscribed_qualities),
                }];
                Ok(vec![Resp::SubscribedQualityUpdate(proto::SubscribedQualityUpdate {
                    track_sid: track.to_string(),
                    subscribed_qualities,
                    subscribed_codecs,
                })])
            }
            SfuEvent::SubscriptionAllowed { participant, owner, track, allowed } if participant == self.participant => {
                Ok(vec![Resp::SubscriptionPermissionUpdate(proto::SubscriptionPermissionUpdate {
                    participant_sid: owner.to_string(),
                    track_sid: track.to_string(),
                    allowed,
                })])
            }
            // Its publisher connection ended on its own (it never connected, or its transport
            // failed): the client starts over rather than offer on a connection that is gone.
            SfuEvent::ConnectionClosed { connection, reason, .. }
                if Some(connection) == self.publisher && connection != self.participant =>
            {
                Err(SessionError::Removed(reason))
            }
            SfuEvent::ParticipantJoined { room, participant, .. } if room == self.room => {
                self.update_for(participant).await
            }
            SfuEvent::ParticipantLeft { room, participant, identity, .. } if room == self.room => {
                if self.known.remove(&participant).is_none() {
                    return Ok(vec![]);
                }
                let info = self.departed(participant, &identity);
                Ok(vec![Resp::Update(proto::ParticipantUpdate { participants: vec![info] })])
            }
            SfuEvent::TrackPublished { room, track } | SfuEvent::TrackUnpublished { room, track }
                if room == self.room && track.owner != self.participant =>
            {
                self.update_for(track.owner).await
            }
            SfuEvent::TrackMuted { room, track, .. } if room == self.room => {
                let all = self.participants().await?;
                let Some(p) = all.iter().find(|p| p.tracks.iter().any(|t| t.id == track)) else { return Ok(vec![]) };
                if p.id == self.participant || p.hidden {
                    return Ok(vec![]);
                }
                let info = convert::participant_info(p, &self.state.registry, PState::Active);
                Ok(vec![Resp::Update(proto::ParticipantUpdate { participants: vec![info] })])
            }
            SfuEvent::ConnectionQuality { room, participant, quality }
                if room == self.room && (participant == self.participant || self.known.contains_key(&participant)) =>
            {
                use crate::sfu::quality::Quality as Q;
                let (q, score) = match quality {
                    Q::Excellent => (proto::ConnectionQuality::Excellent, 5.0),
                    Q::Good => (proto::ConnectionQuality::Good, 3.5),
                    Q::Poor => (proto::ConnectionQuality::Poor, 2.0),
                    Q::Lost => (proto::ConnectionQuality::Lost, 1.0),
                };
                Ok(vec![Resp::ConnectionQuality(proto::ConnectionQualityUpdate {
                    updates: vec![proto::ConnectionQualityInfo {
                        participant_sid: participant.to_string(),
                        quality: q as i32,
                        score,
                    }],
                })])
            }
            SfuEvent::SpeakersChanged { room, mut speakers } if room == self.room => {
                speakers.retain(|s| s.participant == self.participant || self.known.contains_key(&s.participant));
                let now: Vec<ParticipantId> = speakers.iter().map(|s| s.participant).collect();
                let mut infos: Vec<proto::SpeakerInfo> = speakers
                    .iter()
                    .map(|s| proto::SpeakerInfo { sid: s.participant.to_string(), level: s.level, active: true })
                    .collect();
                // LiveKit sends changes: those who stopped speaking come as inactive.
                infos.extend(self.speakers.iter().filter(|p| !now.contains(p)).map(|p| proto::SpeakerInfo {
                    sid: p.to_string(),
                    level: 0.0,
                    active: false,
                }));
                self.speakers = now;
                Ok(vec![Resp::SpeakersChanged(proto::SpeakersChanged { speakers: infos })])
            }
            _ => Ok(vec![]),
        }
    }

    /// Leaves both connections and forgets the participant.
    async fn finish(self) {
        let participant = self.participant;
        let _ = self
            .state
            .sfu
            .call(move |sfu, now| sfu.remove_participant(now, participant, LeaveReason::ClientRequest))
            .await;
        self.state.registry.remove_participant(participant);
    }
}

/// When a token expiring at `exp` (Unix seconds) is refreshed: [`REFRESH_BEFORE_EXPIRY`]
/// ahead, or now if it expires sooner.
fn refresh_time(exp: u64) -> tokio::time::Instant {
    // Tokens live at most a day or so; a signed one claiming centuries is not worth an overflow.
    let left = Duration::from_secs(exp.saturating_sub(crate::wall::unix_secs()).min(365 * 86_400));
    tokio::time::Instant::now() + left.saturating_sub(REFRESH_BEFORE_EXPIRY)
}

/// How many participants of `all` clients are told about.
fn visible(all: &[ParticipantInfo]) -> usize {
    all.iter().filter(|p| !p.hidden).count()
}

fn parse_track(sid: &str) -> Result<TrackId, SessionError> {
    sid.parse().map_err(|_| SessionError::Invalid(format!("track sid {sid:?}")))
}

/// `candidate_init` is the browser's RTCIceCandidateInit as JSON. `None` for the empty
/// end-of-candidates marker and for candidates we cannot use (mDNS `.local` names).
fn parse_candidate(json: &str) -> Result<Option<Candidate>, SessionError> {
    #[derive(serde::Deserialize)]
    struct Init {
        candidate: String,
    }
    let init: Init = serde_json::from_str(json).map_err(|_| SessionError::Invalid("candidate_init".into()))?;
    let c = init.candidate.trim();
    let c = c.strip_prefix("a=").unwrap_or(c);
    if c.is_empty() {
        return Ok(None);
    }
    match Candidate::from_sdp_string(c) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::debug!(candidate = c, error = %e, "unusable candidate ignored");
            Ok(None)
        }
    }
}
