//! The room router: sans-IO. It owns every participant's `Rtc`, the rooms, tracks and
//! subscriptions, and decides what is forwarded where. Input comes in through `join`,
//! `handle_receive` and `handle_timeout` with the time as a parameter; datagrams, events and the
//! next wake-up come out through `poll_transmit`, `poll_event` and `poll_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, ChannelData, ChannelId};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{
    Direction, KeyframeRequestKind, MediaAdded, MediaChanged, MediaData, MediaKind, MediaTime, Mid, Rid,
};
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};

use super::data::{self, DataCodec, DataMessage};
use super::describe;
use super::forward::{Decision, Forwarder, Layer};
use super::layer_select::{self, LayerRate, Quality};
use super::peer::{MAX_PENDING_MESSAGES, Negotiation, OutChannel, Peer, Slot, SubscribeFilter};
use super::permissions::Permissions;
use super::quality::{self, Quality as ConnectionQuality};
use super::speaker::{Speaker, SpeakerDetector};
use super::tap::{Offer, TapFrame, TapSink};
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};

// The router's parts, one concept a file, each an `impl Sfu` over its private state. The
// large ones (negotiate, forwarding, data_relay, rooms, taps) take this module's types and
// imports whole (`use super::*`) rather than repeat its import list.
mod data_relay;
mod dynacast;
mod forwarding;
mod grants;
mod local;
mod negotiate;
mod rooms;
mod taps;

pub use self::negotiate::distinct_candidates;

pub use grants::{MAX_GRANT_ENTRIES, SubscriptionGrant};

use self::local::Local;

/// Keyframe requests to one publisher layer are at most this frequent.
const KEYFRAME_MIN_GAP: Duration = Duration::from_millis(500);
/// Window over which layer bitrates are measured.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// How often str0m reports loss and round-trip time per connection.
const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// What an Opus track needs on the wire (a 32 kbit/s voice stream plus RTP/SRTP/UDP headers).
const AUDIO_BPS: u64 = 48_000;
/// What a video track without measured layers is assumed to need.
const VIDEO_BPS: u64 = 2_000_000;
/// Receiving m-lines a client-offering session is asked to hold at most.
const MAX_CLIENT_LINES: usize = 64;
/// Channels the router opens towards one raw (WHIP/WHEP) session at most; messages that
/// would need another are dropped and counted.
const MAX_OUT_CHANNELS: usize = 64;
/// Remote ICE candidates one connection accepts: a real client sends a few per network
/// interface, and str0m pairs each with every local candidate.
pub const MAX_REMOTE_CANDIDATES: usize = 64;
/// Tracks announced (LiveKit AddTrack) and not yet on an m-line, per connection.
pub const MAX_ANNOUNCED_TRACKS: usize = 16;
/// Tracks one connection publishes at once; receiving m-lines beyond carry nothing.
pub const MAX_PUBLISHED_TRACKS: usize = 32;

/// Router settings.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Host candidates every session advertises (the driver's sockets).
    pub candidates: Vec<Candidate>,
    pub disconnect_timeout: Duration,
    /// A session that has not connected (ICE and DTLS) this long after it was created ends.
    pub connect_timeout: Duration,
    pub empty_room_timeout: Duration,
    pub initial_bwe: Bitrate,
}

/// Who is joining, and what they may do.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Join as one more peer connection of this participant (same room and identity).
    pub participant: Option<ParticipantId>,
    /// How the client frames data messages; `None` for raw per-sender channels.
    pub data_codec: Option<Arc<dyn DataCodec>>,
    pub room: RoomName,
    pub identity: Identity,
    pub permissions: Permissions,
    pub subscribe: SubscribeFilter,
    pub negotiation: Negotiation,
    /// Data channels the server's first offer opens (LiveKit's subscriber connection). They
    /// also keep the transport up when every media m-line is stopped: a bundle with nothing
    /// left in it is closed by the browser.
    pub server_channels: Vec<ChannelConfig>,
    /// The room's settings as stored now; they replace those the room had.
    pub limits: RoomLimits,
}

/// A room's settings from the control API, applied as participants join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomLimits {
    /// Participants the room holds at most (0: no limit); a join beyond is refused.
    pub max_participants: u32,
    /// How long the room stays open once empty; `None`: the node's default.
    pub empty_timeout: Option<Duration>,
}

impl JoinRequest {
    /// A new participant receiving every track on the m-lines it offers, raw data channels.
    pub fn new(room: RoomName, identity: Identity, permissions: Permissions) -> Self {
        JoinRequest {
            participant: None,
            data_codec: None,
            room,
            identity,
            permissions,
            subscribe: SubscribeFilter::All,
            negotiation: Negotiation::Fixed,
            server_channels: Vec::new(),
            limits: RoomLimits::default(),
        }
    }
}

/// An answer to a client-offering session, with the track each sending m-line carries.
#[derive(Debug, Clone)]
pub struct ClientAnswer {
    pub sdp: String,
    pub tracks: Vec<(Mid, TrackId)>,
}

/// The msid stream id of a forwarded track, `<participant>|<track>`: how LiveKit clients map
/// an incoming track to the participant and publication it belongs to.
fn stream_id(owner: ParticipantId, track: TrackId) -> String {
    format!("{owner}|{track}")
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client ended it (WHIP/WHEP DELETE, LiveKit leave).
    ClientRequest,
    /// ICE stayed disconnected past the timeout.
    Timeout,
    /// The transport failed (DTLS, malformed media the stack refused).
    TransportError,
    /// The server removed it (room deleted, admin action).
    Removed,
    /// The same identity joined again (LiveKit semantics: the newer connection wins).
    DuplicateIdentity,
    /// The room was deleted (control API, RoomService `DeleteRoom`).
    RoomDeleted,
    /// Not known: the router never says this, but a consumer that missed the leave and saw
    /// only that the participant was gone (`sfu::mirror`) does.
    Unknown,
}

/// Errors from router operations.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("malformed SDP: {0}")]
    BadSdp(String),
    #[error("offer could not be negotiated: {0}")]
    Negotiation(String),
    #[error("no such participant")]
    NoParticipant,
    #[error("no such track")]
    NoTrack,
    #[error("no such room")]
    NoRoom,
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    #[error("only audio tracks can be tapped")]
    NotAudio,
    #[error("the room is full")]
    RoomFull,
    #[error("too many {0}")]
    LimitExceeded(&'static str),
}

impl SfuError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::BadSdp(_) => "sdp_malformed",
            SfuError::Negotiation(_) => "sdp_negotiation_failed",
            SfuError::NoParticipant => "participant_not_found",
            SfuError::NoTrack => "track_not_found",
            SfuError::NoRoom => "room_not_found",
            SfuError::NoPendingOffer => "no_pending_offer",
            SfuError::NotAudio => "track_not_audio",
            SfuError::RoomFull => "room_full",
            SfuError::LimitExceeded(_) => "limit_exceeded",
        }
    }
}

/// A published track, as signaling layers describe it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub owner: ParticipantId,
    #[serde(serialize_with = "ser_kind")]
    pub kind: MediaKind,
    pub muted: bool,
    /// Simulcast layers, lowest quality first; empty without simulcast.
    pub layers: Vec<String>,
    /// The codec as negotiated, as a MIME type (`audio/opus`, `video/VP8`, `video/H264`, …);
    /// empty when not known yet.
    #[serde(rename = "mime_type")]
    pub mime: String,
    /// Published by a participant the server plays: a stage's output, never tapped again.
    #[serde(skip)]
    pub server: bool,
}

fn ser_kind<S: serde::Serializer>(k: &MediaKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *k == MediaKind::Audio { "audio" } else { "video" })
}

/// A participant session in a room.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub identity: Identity,
    pub tracks: Vec<TrackInfo>,
    /// Played by the server itself (see `Sfu::join_local`), not a client.
    pub server: bool,
    /// Joined with the `hidden` grant: other clients are not told about it.
    #[serde(skip)]
    pub hidden: bool,
}

/// What happened, for signaling layers, webhooks and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum SfuEvent {
    RoomStarted {
        room: RoomName,
    },
    RoomClosed {
        room: RoomName,
    },
    ParticipantJoined {
        room: RoomName,
        participant: ParticipantId,
        identity: Identity,
    },
    /// ICE and DTLS are up (or ICE is back after a disconnection): media can flow.
    ParticipantConnected {
        room: RoomName,
        participant: ParticipantId,
    },
    /// ICE lost its path; the session is removed unless it recovers (or restarts ICE) in time.
    ParticipantDisconnected {
        room: RoomName,
        participant: ParticipantId,
    },
    ParticipantLeft {
        room: RoomName,
        participant: ParticipantId,
        identity: Identity,
        reason: LeaveReason,
    },
    /// One connection of a participant ended (before `ParticipantLeft` when it was the last).
    ConnectionClosed {
        room: RoomName,
        connection: ParticipantId,
        reason: LeaveReason,
    },
    TrackPublished {
        room: RoomName,
        track: TrackInfo,
    },
    TrackUnpublished {
        room: RoomName,
        track: TrackInfo,
    },
    TrackMuted {
        room: RoomName,
        track: TrackId,
        muted: bool,
    },
    SpeakersChanged {
        room: RoomName,
        speakers: Vec<Speaker>,
    },
    /// A participant's connection quality changed (the worst of its connections).
    ConnectionQuality {
        room: RoomName,
        participant: ParticipantId,
        quality: ConnectionQuality,
    },
    /// The server offers a renegotiation (new or stopped tracks); answer with `handle_answer`.
    Offer {
        participant: ParticipantId,
        sdp: String,
    },
    /// The simulcast qualities of `owner`'s video `track` that its subscribers want: all up
    /// to `up_to`, none when `None` (see `dynacast`).
    QualitiesWanted {
        owner: ParticipantId,
        track: TrackId,
        up_to: Option<Quality>,
        /// The track's codec as negotiated (`TrackInfo::mime`).
        mime: String,
    },
    /// Whether `participant` may subscribe to `track` (of `owner`) by the owner's
    /// subscription grant: told when it may not have a track it would get, and when it may
    /// again.
    SubscriptionAllowed {
        participant: ParticipantId,
        owner: ParticipantId,
        track: TrackId,
        allowed: bool,
    },
    /// A [`Negotiation::ClientOffers`] session should offer again, with `audio` and `video`
    /// more receiving m-lines ((0, 0): so that the answer can describe changed ones).
    SectionsNeeded {
        participant: ParticipantId,
        audio: u32,
        video: u32,
    },
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SfuStats {
    pub frames_in: u64,
    pub frames_forwarded: u64,
    pub bytes_forwarded: u64,
    pub frames_dropped: u64,
    pub keyframe_requests: u64,
    pub data_messages_relayed: u64,
    /// Data messages a session's codec could not read.
    pub data_messages_dropped: u64,
    pub datagrams_unrouted: u64,
    pub datagrams_malformed: u64,
    /// Audio frames copied to taps, and those dropped because the tap's consumer was behind.
    pub tap_frames: u64,
    pub tap_frames_dropped: u64,
}

/// A frame on its way to a track's subscribers.
struct Outgoing {
    rid: Option<Rid>,
    keyframe: bool,
    time: MediaTime,
    network_time: Instant,
    /// The publisher's payload; `None` for a local track, which is Opus.
    params: Option<PayloadParams>,
    /// Level (-dBov) and voice activity.
    audio_level: Option<(i8, bool)>,
    data: Arc<[u8]>,
}

/// Bytes per layer over a window, turned into bits per second when the window closes.
#[derive(Debug)]
struct RateMeter {
    start: Instant,
    bytes: HashMap<Layer, u64>,
}

struct Track {
    info: TrackInfo,
    room: RoomName,
    /// The connection that receives it (`info.owner` is the participant, which may have
    /// several connections), and the m-line there.
    session: ParticipantId,
    identity: Identity,
    mid: Mid,
    /// Ordered lowest quality first (see `layer_select::order`).
    layers: Vec<LayerRate>,
    meter: RateMeter,
    /// Inferred from the publisher going quiet (str0m's StreamPaused).
    paused: bool,
    subscribers: Vec<(ParticipantId, Mid)>,
    last_keyframe_request: HashMap<Layer, Instant>,
    /// Consumers of copies of this (Opus audio) track's frames.
    taps: Vec<Box<dyn TapSink>>,
    /// The qualities its publisher was last told are wanted, up to this one (none: not
    /// watched); unset until told (see `dynacast`).
    wanted: Option<Option<Quality>>,
}

struct Room {
    participants: Vec<ParticipantId>,
    /// In publication order: older tracks are offered to free slots first.
    tracks: Vec<TrackId>,
    empty_since: Option<Instant>,
    limits: RoomLimits,
    speakers: SpeakerDetector,
}

/// The sans-IO router.
pub struct Sfu {
    config: SfuConfig,
    rooms: BTreeMap<RoomName, Room>,
    peers: BTreeMap<ParticipantId, Peer>,
    tracks: BTreeMap<TrackId, Track>,
    locals: BTreeMap<ParticipantId, Local>,
    /// Publishers (participant ids) that narrowed who may subscribe to their tracks.
    grants: HashMap<ParticipantId, SubscriptionGrant>,
    /// Sessions told they may not have a track, until they may again or either goes.
    denied: BTreeSet<(ParticipantId, TrackId)>,
    /// Tracks whose wanted simulcast qualities may have changed (see `dynacast`).
    dynacast_dirty: BTreeSet<TrackId>,
    by_mid: HashMap<(ParticipantId, Mid), TrackId>,
    /// Last session seen on a remote address: the first place to look when demultiplexing.
    by_source: HashMap<SocketAddr, ParticipantId>,
    dirty: VecDeque<ParticipantId>,
    dirty_set: HashSet<ParticipantId>,
    needs_offer: BTreeSet<ParticipantId>,
    needs_sections: BTreeSet<ParticipantId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SfuEvent>,
    next_id: u64,
    stats: SfuStats,
}

impl Sfu {
    pub fn new(config: SfuConfig) -> Self {
        Sfu {
            config,
            rooms: BTreeMap::new(),
            peers: BTreeMap::new(),
            tracks: BTreeMap::new(),
            locals: BTreeMap::new(),
            grants: HashMap::new(),
            denied: BTreeSet::new(),
            dynacast_dirty: BTreeSet::new(),
            by_mid: HashMap::new(),
            by_source: HashMap::new(),
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            needs_offer: BTreeSet::new(),
            needs_sections: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            stats: SfuStats::default(),
        }
    }

    /// Feeds raw bytes received on a socket. Returns false if they are malformed or no
    /// session accepts them; both are counted, neither affects any session.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(contents) = DatagramRecv::try_from(data) else {
            self.stats.datagrams_malformed += 1;
            return false;
        };
        self.handle_receive(now, Receive { proto, source, destination, contents })
    }

    /// Feeds a received datagram. Returns false if no session accepts it.
    pub fn handle_receive(&mut self, now: Instant, r: Receive<'_>) -> bool {
        let source = r.source;
        let input = Input::Receive(now, r);
        let accepts = |p: &Peer| guard("accepts", || p.rtc.accepts(&input)).unwrap_or(false);
        let cached = self.by_source.get(&source).copied().filter(|id| self.peers.get(id).is_some_and(accepts));
        let Some(id) = cached.or_else(|| self.peers.values().find(|p| accepts(p)).map(|p| p.id)) else {
            self.stats.datagrams_unrouted += 1;
            return false;
        };
        self.by_source.insert(source, id);
        let peer = self.peers.get_mut(&id).expect("found above");
        match guard("handle_input", || peer.rtc.handle_input(input)) {
            Ok(Ok(())) => self.mark(id),
            Ok(Err(e)) => {
                tracing::info!(participant = %id, error = %e, "input refused; closing session");
                self.remove_peer(now, id, LeaveReason::TransportError);
            }
            Err(Panicked) => self.remove_peer(now, id, LeaveReason::TransportError),
        }
        self.drive(now);
        true
    }

    /// Moves time forward: str0m timers, ICE timeouts, empty rooms, speaker updates.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ParticipantId> = self.peers.values().filter(|p| p.next_timeout <= now).map(|p| p.id).collect();
        for id in due {
            let Some(peer) = self.peers.get_mut(&id) else { continue };
            match guard("handle_timeout", || peer.rtc.handle_input(Input::Timeout(now))) {
                Ok(Ok(())) => self.mark(id),
                Ok(Err(e)) => {
                    tracing::info!(participant = %id, error = %e, "timeout handling failed; closing session");
                    self.remove_peer(now, id, LeaveReason::TransportError);
                }
                Err(Panicked) => self.remove_peer(now, id, LeaveReason::TransportError),
            }
        }
        self.drive(now);

        let gone: Vec<(ParticipantId, LeaveReason)> = self
            .peers
            .values()
            .filter_map(|p| {
                if p.broken || !p.rtc.is_alive() {
                    Some((p.id, LeaveReason::TransportError))
                } else if self.deadline(p).is_some_and(|t| now >= t) {
                    Some((p.id, LeaveReason::Timeout))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in gone {
            self.remove_peer(now, id, reason);
        }

        let mut closed = Vec::new();
        for (name, room) in self.rooms.iter_mut() {
            let empty_timeout = room.limits.empty_timeout.unwrap_or(self.config.empty_room_timeout);
            if room.empty_since.is_some_and(|t| now >= t + empty_timeout) {
                closed.push(name.clone());
                continue;
            }
            if let Some(speakers) = room.speakers.handle_timeout(now) {
                self.events.push_back(SfuEvent::SpeakersChanged { room: name.clone(), speakers });
            }
        }
        for name in closed {
            self.close(name, LeaveReason::Removed);
        }
        self.drive(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for signaling layers.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next; `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().flat_map(|p| std::iter::once(p.next_timeout).chain(self.deadline(p)));
        let rooms = self.rooms.values().map(|r| match r.empty_since {
            Some(t) => t + r.limits.empty_timeout.unwrap_or(self.config.empty_room_timeout),
            None => r.speakers.poll_timeout(),
        });
        peers.chain(rooms).min()
    }

    /// When a session ends unless its connection comes (back) up: it never connected in time,
    /// or it stayed disconnected too long.
    fn deadline(&self, p: &Peer) -> Option<Instant> {
        if !p.connected {
            return Some(p.joined_at + self.config.connect_timeout);
        }
        p.disconnected_since.map(|t| t + self.config.disconnect_timeout)
    }

    fn mark(&mut self, id: ParticipantId) {
        if self.dirty_set.insert(id) {
            self.dirty.push_back(id);
        }
    }

    /// Polls every session touched since the last drive until each is waiting on a timeout.
    fn drive(&mut self, now: Instant) {
        loop {
            self.poll_dirty(now);
            let offers: Vec<ParticipantId> = std::mem::take(&mut self.needs_offer).into_iter().collect();
            if offers.is_empty() {
                break;
            }
            for id in offers {
                self.make_offer(now, id);
            }
        }
        for id in std::mem::take(&mut self.needs_sections) {
            self.request_sections(id);
        }
        self.poll_dynacast();
    }

    fn poll_dirty(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop_front() {
            self.dirty_set.remove(&id);
            while let Some(peer) = self.peers.get_mut(&id) {
                match guard("poll_output", || peer.rtc.poll_output()) {
                    Ok(Ok(Output::Timeout(t))) => {
                        peer.next_timeout = t;
                        break;
                    }
                    Ok(Ok(Output::Transmit(t))) => self.transmits.push_back(t),
                    Ok(Ok(Output::Event(e))) => self.handle_event(now, id, e),
                    Ok(Err(e)) => {
                        tracing::info!(participant = %id, error = %e, "transport failed; closing session");
                        self.remove_peer(now, id, LeaveReason::TransportError);
                        break;
                    }
                    Err(Panicked) => {
                        self.remove_peer(now, id, LeaveReason::TransportError);
                        break;
                    }
                }
            }
        }
    }

    fn handle_event(&mut self, now: Instant, id: ParticipantId, e: Event) {
        match e {
            Event::Connected => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.connected = true;
                    self.events.push_back(SfuEvent::ParticipantConnected { room: p.room.clone(), participant: id });
                }
            }
            Event::IceConnectionStateChange(state) => {
                let Some(p) = self.peers.get_mut(&id) else { return };
                let room = p.room.clone();
                match state {
                    IceConnectionState::Disconnected if p.disconnected_since.is_none() => {
                        p.disconnected_since = Some(now);
                        self.events.push_back(SfuEvent::ParticipantDisconnected { room, participant: id });
                        self.set_quality(id, Some(ConnectionQuality::Lost));
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed if p.disconnected_since.is_some() => {
                        p.disconnected_since = None;
                        self.events.push_back(SfuEvent::ParticipantConnected { room, participant: id });
                    }
                    _ => {}
                }
            }
            Event::MediaAdded(m) => self.handle_media_added(now, id, m),
            Event::MediaChanged(m) => self.handle_media_changed(now, id, m),
            Event::MediaData(d) => self.handle_media_data(now, id, d),
            Event::KeyframeRequest(req) => {
                // A subscriber asks for a keyframe: pass it to the publisher of that slot's layer.
                let Some(p) = self.peers.get_mut(&id) else { return };
                let Some(slot) = p.slot_mut(req.mid) else { return };
                let (Some(track), Some(layer)) =
                    (slot.track, slot.fwd.current().cloned().or(slot.fwd.target().cloned()))
                else {
                    return;
                };
                self.request_keyframe(now, track, layer);
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. }) => {
                let Some(p) = self.peers.get_mut(&id) else { return };
                p.estimate_bps = Some(estimate.as_u64());
                self.reselect(now, id);
            }
            Event::PeerStats(st) => {
                let loss = st.ingress_loss_fraction.unwrap_or(0.0).max(st.egress_loss_fraction.unwrap_or(0.0));
                self.set_quality(id, Some(quality::rate(loss, st.rtt)));
            }
            Event::StreamPaused(sp) => {
                let Some(&track) = self.by_mid.get(&(id, sp.mid)) else { return };
                let Some(t) = self.tracks.get_mut(&track) else { return };
                // Simulcast layers pause one by one; the track is quiet when its only stream is.
                if t.info.layers.is_empty() && t.paused != sp.paused {
                    t.paused = sp.paused;
                    self.events.push_back(SfuEvent::TrackMuted { room: t.room.clone(), track, muted: sp.paused });
                    if !sp.paused {
                        self.resume_subscribers(now, track);
                    }
                }
            }
            // The client closed DTLS (or SCTP): it is gone, by its own choice.
            Event::Closed => self.remove_peer(now, id, LeaveReason::ClientRequest),
            Event::ChannelOpen(cid, _label) => self.handle_channel_open(now, id, cid),
            Event::ChannelData(d) => self.relay_data(now, id, d),
            Event::ChannelClose(cid) => {
                let Some(p) = self.peers.get_mut(&id) else { return };
                p.channels_in.remove(&cid);
                p.channels_out.retain(|_, c| c.id != cid);
            }
            _ => {}
        }
    }

    /// Records a connection's quality; reports the participant's (its worst connection's)
    /// when that changes.
    fn set_quality(&mut self, id: ParticipantId, q: Option<ConnectionQuality>) {
        let Some(p) = self.peers.get(&id) else { return };
        let (participant, room) = (p.participant, p.room.clone());
        let worst = |peers: &BTreeMap<ParticipantId, Peer>| {
            peers.values().filter(|x| x.participant == participant).filter_map(|x| x.quality).min()
        };
        let before = worst(&self.peers);
        self.peers.get_mut(&id).expect("checked above").quality = q;
        let after = worst(&self.peers);
        if let Some(quality) = after.filter(|a| Some(*a) != before) {
            self.events.push_back(SfuEvent::ConnectionQuality { room, participant, quality });
        }
    }
}

impl Track {
    fn new(
        info: TrackInfo,
        room: RoomName,
        session: ParticipantId,
        identity: Identity,
        mid: Mid,
        layers: Vec<LayerRate>,
        now: Instant,
    ) -> Track {
        Track {
            info,
            room,
            session,
            identity,
            mid,
            layers,
            meter: RateMeter { start: now, bytes: HashMap::new() },
            paused: false,
            subscribers: Vec::new(),
            last_keyframe_request: HashMap::new(),
            taps: Vec::new(),
            wanted: None,
        }
    }

    /// Counts a frame; true when a window closed and the layer order may have changed.
    fn measure(&mut self, rid: Option<Rid>, len: usize, now: Instant) -> bool {
        *self.meter.bytes.entry(rid).or_default() += len as u64;
        let elapsed = now.saturating_duration_since(self.meter.start);
        if elapsed < RATE_WINDOW || self.layers.is_empty() {
            return false;
        }
        let secs = elapsed.as_secs_f64();
        for l in self.layers.iter_mut() {
            let bytes = self.meter.bytes.get(&Some(l.rid)).copied().unwrap_or(0);
            l.bps = (bytes as f64 * 8.0 / secs) as u64;
        }
        layer_select::order(&mut self.layers);
        self.info.layers = self.layers.iter().map(|l| l.rid.to_string()).collect();
        self.meter = RateMeter { start: now, bytes: HashMap::new() };
        true
    }
}

/// str0m panicked: its state for that connection is not to be trusted any more.
struct Panicked;

/// Every entry into str0m goes through here. A panic there is a bug in str0m, but input a
/// client controls may reach it, and it must end only that client's connection, not the
/// router and every room with it.
fn guard<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        tracing::warn!(call = what, "str0m panicked; the connection is closed");
        Panicked
    })
}
