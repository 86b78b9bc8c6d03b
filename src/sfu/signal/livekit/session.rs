//! One LiveKit signal connection: protobuf `SignalRequest`s in, `SignalResponse`s out, and
//! router events turned into participant updates. Dual peer connection mode: the client's
//! publisher connection offers, the server offers on the subscriber connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::participant_info::State as PState;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use str0m::Candidate;
use str0m::channel::{ChannelConfig, Reliability};
use str0m::media::MediaKind;
use tokio::sync::broadcast::error::RecvError;

use super::LiveKitState;
use super::convert;
use super::data::{self, LiveKitData};
use super::registry::{ParticipantMeta, TrackMeta};
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};
use crate::sfu::SubscribeFilter;
use crate::sfu::core::{JoinRequest, LeaveReason, ParticipantInfo, SfuError, SfuEvent, TrackInfo};
use crate::sfu::driver::DriverGone;
use crate::sfu::signal::token::{Claims, Permissions};

/// The protocol version we speak (LiveKit's `protocol` query parameter and ServerInfo).
const PROTOCOL: i32 = 16;
/// The LiveKit server release whose signal protocol this implements. The SDK gates features
/// on the server version (RPC needs 1.8), so it is what we report; our own version goes in
/// `debug_info`.
const LIVEKIT_VERSION: &str = "1.9.0";
/// Seconds: the SDK pings every `PING_INTERVAL` and gives up after `PING_TIMEOUT`; so do we.
const PING_INTERVAL: i32 = 5;
const PING_TIMEOUT: i32 = 15;

/// Connection options from the query string.
#[derive(Debug)]
pub struct Options {
    pub auto_subscribe: bool,
    pub resume: bool,
    pub sid: Option<String>,
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
    Sfu(#[from] SfuError),
    #[error("media router is not running")]
    Gone(#[from] DriverGone),
    #[error("no ping within {PING_TIMEOUT} s")]
    PingTimeout,
    #[error("removed by the server ({0:?})")]
    Removed(LeaveReason),
}

impl SessionError {
    /// WebSocket close code: 1008 policy violation for bad input, 1011 for server trouble.
    fn close_code(&self) -> u16 {
        match self {
            SessionError::Malformed
            | SessionError::TextFrame
            | SessionError::OutOfOrder(_)
            | SessionError::Invalid(_) => 1008,
            SessionError::Sfu(_) => 1008,
            // 1009: the message was too big (or the stream broke; then nobody reads this).
            SessionError::WebSocket(_) => 1009,
            SessionError::Gone(_) => 1011,
            SessionError::PingTimeout | SessionError::Removed(_) => 1000,
        }
    }
}

struct Session {
    state: LiveKitState,
    room: RoomName,
    identity: Identity,
    perms: Permissions,
    /// The participant, which is also its subscriber connection.
    participant: ParticipantId,
    publisher: Option<ParticipantId>,
    /// Publisher candidates trickled before the publisher's offer.
    early_candidates: Vec<Candidate>,
    offer_id: u32,
    speakers: Vec<ParticipantId>,
    can_update_metadata: bool,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Serves one WebSocket until the client leaves, times out or misbehaves.
pub async fn run(state: LiveKitState, claims: Claims, opts: Options, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let mut events = state.sfu.subscribe();
    let session = match Session::join(state, &claims, &opts).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "livekit join refused");
            let _ = send(&mut tx, leave(proto::DisconnectReason::JoinFailure)).await;
            let _ = tx.send(close(&e)).await;
            return;
        }
    };
    let mut session = session;
    match session.serve(&mut tx, &mut rx, &mut events).await {
        Ok(()) => {
            let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "left".into() }))).await;
        }
        Err(e) => {
            tracing::info!(participant = %session.participant, error = %e, "livekit session closed");
            if let SessionError::Removed(reason) = e {
                let why = match reason {
                    LeaveReason::DuplicateIdentity => proto::DisconnectReason::DuplicateIdentity,
                    _ => proto::DisconnectReason::ParticipantRemoved,
                };
                let _ = send(&mut tx, leave(why)).await;
            }
            let _ = tx.send(close(&e)).await;
        }
    }
    session.finish().await;
}

type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
type Rx = futures_util::stream::SplitStream<WebSocket>;

async fn send(tx: &mut Tx, m: Resp) -> Result<(), axum::Error> {
    let bytes = proto::SignalResponse { message: Some(m) }.encode_to_vec();
    tx.send(Message::Binary(bytes.into())).await
}

fn close(e: &SessionError) -> Message {
    Message::Close(Some(CloseFrame { code: e.close_code(), reason: e.to_string().into() }))
}

fn leave(reason: proto::DisconnectReason) -> Resp {
    Resp::Leave(proto::LeaveRequest {
        can_reconnect: false,
        reason: reason as i32,
        action: proto::leave_request::Action::Disconnect as i32,
        ..Default::default()
    })
}

impl Session {
    async fn join(state: LiveKitState, claims: &Claims, opts: &Options) -> Result<Session, SessionError> {
        let room = RoomName::new(claims.video.room.clone()).map_err(|e| SessionError::Invalid(format!("room: {e}")))?;
        let identity =
            Identity::new(claims.sub.clone()).map_err(|e| SessionError::Invalid(format!("identity: {e}")))?;
        let perms = claims.video.permissions();
        if opts.resume {
            // Resuming needs the old connections, which end with the old WebSocket: the SDK
            // falls back to a full reconnect when this join answers instead of resuming.
            tracing::debug!(sid = ?opts.sid, "resume requested; starting a new session");
        }
        let subscribe =
            if opts.auto_subscribe && perms.subscribe { SubscribeFilter::All } else { SubscribeFilter::None };
        // LiveKit's subscriber connection carries server-opened `_reliable` and `_lossy`
        // channels; the SDK adopts them by label.
        let server_channels = vec![
            ChannelConfig { label: data::RELIABLE.into(), ..Default::default() },
            ChannelConfig {
                label: data::LOSSY.into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            },
        ];
        let req = JoinRequest { subscribe, server_channels, ..JoinRequest::new(room.clone(), identity.clone(), perms) };
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
                sfu.join_server_offered(now, req)
            })
            .await?;
        state.registry.set_participant(
            participant,
            ParticipantMeta {
                name: claims.name.clone(),
                metadata: claims.metadata.clone(),
                attributes: Default::default(),
                joined_at_ms: now_ms(),
                permission: proto::ParticipantPermission {
                    can_update_metadata: claims.video.can_update_own_metadata,
                    ..convert::permission(perms)
                },
            },
        );
        Ok(Session {
            state,
            room,
            identity,
            perms,
            participant,
            publisher: None,
            early_candidates: Vec::new(),
            offer_id: 0,
            speakers: Vec::new(),
            can_update_metadata: claims.video.can_update_own_metadata,
        })
    }

    async fn participants(&self) -> Result<Vec<ParticipantInfo>, SessionError> {
        let room = self.room.clone();
        Ok(self.state.sfu.call(move |sfu, _| sfu.participants(&room)).await?)
    }

    fn join_response(&self, all: &[ParticipantInfo]) -> Resp {
        let reg = &self.state.registry;
        let me = all
            .iter()
            .find(|p| p.id == self.participant)
            .map(|p| convert::participant_info(p, reg, PState::Joined))
            .unwrap_or_default();
        let others = all
            .iter()
            .filter(|p| p.id != self.participant)
            .map(|p| convert::participant_info(p, reg, PState::Active))
            .collect();
        let ice_servers = self
            .state
            .ice_servers
            .iter()
            .map(|s| proto::IceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        Resp::Join(proto::JoinResponse {
            room: Some(proto::Room {
                sid: format!("RM_{}", self.room),
                name: self.room.to_string(),
                num_participants: all.len() as u32,
                ..Default::default()
            }),
            participant: Some(me),
            other_participants: others,
            server_version: LIVEKIT_VERSION.to_string(),
            ice_servers,
            // The client's publisher connection comes up first and carries its data channels.
            subscriber_primary: false,
            // A session ends with its WebSocket (see docs/livekit-compat.md), so the SDK must
            // rejoin rather than try to resume it.
            client_configuration: Some(proto::ClientConfiguration {
                resume_connection: proto::ClientConfigSetting::Disabled as i32,
                ..Default::default()
            }),
            ping_timeout: PING_TIMEOUT,
            ping_interval: PING_INTERVAL,
            server_info: Some(proto::ServerInfo {
                edition: proto::server_info::Edition::Standard as i32,
                version: LIVEKIT_VERSION.to_string(),
                protocol: PROTOCOL,
                node_id: "auralink".to_string(),
                debug_info: format!("auralink {}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn serve(
        &mut self,
        tx: &mut Tx,
        rx: &mut Rx,
        events: &mut tokio::sync::broadcast::Receiver<SfuEvent>,
    ) -> Result<(), SessionError> {
        let all = self.participants().await?;
        send(tx, self.join_response(&all)).await.map_err(|_| SessionError::OutOfOrder("send"))?;
        let timeout = Duration::from_secs(PING_TIMEOUT as u64);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut described = self.state.described.subscribe();
        loop {
            tokio::select! {
                Ok(participant) = described.recv() => {
                    // Unknown here (another room) means no update; lagging only delays one.
                    for out in self.update_for(participant).await? {
                        send(tx, out).await.map_err(|_| SessionError::OutOfOrder("send"))?;
                    }
                }
                m = rx.next() => {
                    let bytes = match m {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Text(_))) => return Err(SessionError::TextFrame),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        // Oversized frames end up here, as do broken connections.
                        Some(Err(e)) => return Err(SessionError::WebSocket(e.to_string())),
                    };
                    deadline = tokio::time::Instant::now() + timeout;
                    let msg = super::decode_request(&bytes).ok_or(SessionError::Malformed)?;
                    if let Req::Leave(_) = msg {
                        return Ok(());
                    }
                    for out in self.handle_request(msg).await? {
                        send(tx, out).await.map_err(|_| SessionError::OutOfOrder("send"))?;
                    }
                }
                e = events.recv() => {
                    let e = match e {
                        Ok(e) => e,
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(participant = %self.participant, missed = n, "signal session lagged behind router events");
                            continue;
                        }
                        Err(RecvError::Closed) => return Err(DriverGone.into()),
                    };
                    for out in self.handle_event(e).await? {
                        send(tx, out).await.map_err(|_| SessionError::OutOfOrder("send"))?;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(SessionError::PingTimeout),
            }
        }
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
                        answer
                    }
                    Some(id) => sfu.call(move |sfu, now| sfu.renegotiate(now, id, &sdp)).await??,
                };
                Ok(vec![Resp::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp: answer.to_sdp_string(),
                    id: sd.id,
                    ..Default::default()
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
                match target {
                    Some(id) => sfu.call(move |sfu, now| sfu.add_remote_candidate(now, id, c)).await??,
                    None => self.early_candidates.push(c),
                }
                Ok(vec![])
            }
            Req::AddTrack(req) => self.add_track(req).await,
            Req::Mute(m) => {
                let track = self.own_track(&m.sid).await?;
                sfu.call(move |sfu, now| sfu.set_track_muted(now, track, m.muted)).await??;
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
            Req::PingReq(p) => {
                Ok(vec![Resp::PongResp(proto::Pong { last_ping_timestamp: p.timestamp, timestamp: now_ms() })])
            }
            Req::UpdateMetadata(u) => {
                use proto::request_response::Reason;
                let reason = if !self.can_update_metadata {
                    Reason::NotAllowed
                } else if u.name.len() > 256 || u.metadata.len() > 64 * 1024 || u.attributes.len() > 64 {
                    Reason::LimitExceeded
                } else {
                    self.state.registry.update_participant(self.participant, |m| {
                        m.name = u.name.clone();
                        m.metadata = u.metadata.clone();
                        // An empty value removes the attribute, as in LiveKit.
                        for (k, v) in &u.attributes {
                            if v.is_empty() {
                                m.attributes.remove(k);
                            } else {
                                m.attributes.insert(k.clone(), v.clone());
                            }
                        }
                    });
                    let _ = self.state.described.send(self.participant);
                    Reason::Ok
                };
                Ok(vec![Resp::RequestResponse(proto::RequestResponse {
                    request_id: u.request_id,
                    reason: reason as i32,
                    message: if reason == Reason::NotAllowed {
                        "token does not grant canUpdateOwnMetadata".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                })])
            }
            // Accepted and not acted on; see docs/livekit-compat.md.
            Req::SyncState(_)
            | Req::Simulate(_)
            | Req::UpdateLayers(_)
            | Req::SubscriptionPermission(_)
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
        };
        self.state.registry.set_track(track, meta.clone());
        let rids = if req.layers.len() > 1 { req.layers.iter().map(|l| l.rid.clone()).collect() } else { Vec::new() };
        let info = TrackInfo { id: track, owner: self.participant, kind, muted: req.muted, layers: rids };
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

    async fn update_for(&self, participant: ParticipantId) -> Result<Vec<Resp>, SessionError> {
        let all = self.participants().await?;
        let Some(p) = all.iter().find(|p| p.id == participant) else { return Ok(vec![]) };
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
            SfuEvent::ParticipantLeft { participant, reason, .. } if participant == self.participant => {
                Err(SessionError::Removed(reason))
            }
            SfuEvent::ParticipantJoined { room, participant, .. } if room == self.room => {
                self.update_for(participant).await
            }
            SfuEvent::ParticipantLeft { room, participant, identity, .. } if room == self.room => {
                let info = proto::ParticipantInfo {
                    sid: participant.to_string(),
                    identity: identity.to_string(),
                    state: PState::Disconnected as i32,
                    version: self.state.registry.next_version(),
                    ..Default::default()
                };
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
                if p.id == self.participant {
                    return Ok(vec![]);
                }
                let info = convert::participant_info(p, &self.state.registry, PState::Active);
                Ok(vec![Resp::Update(proto::ParticipantUpdate { participants: vec![info] })])
            }
            SfuEvent::ConnectionQuality { room, participant, quality } if room == self.room => {
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
            SfuEvent::SpeakersChanged { room, speakers } if room == self.room => {
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
        let room = self.room.clone();
        let tracks = self
            .state
            .sfu
            .call(move |sfu, now| {
                let tracks: Vec<TrackId> = sfu
                    .participants(&room)
                    .into_iter()
                    .filter(|p| p.id == participant)
                    .flat_map(|p| p.tracks.into_iter().map(|t| t.id))
                    .collect();
                sfu.remove_participant(now, participant, LeaveReason::ClientRequest);
                tracks
            })
            .await
            .unwrap_or_default();
        self.state.registry.remove_participant(participant, &tracks);
    }
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
