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
use super::peer::{MAX_PENDING_MESSAGES, OutChannel, Peer, Slot, SubscribeFilter};
use super::quality::{self, Quality as ConnectionQuality};
use super::signal::token::Permissions;
use super::speaker::{Speaker, SpeakerDetector};
use super::tap::{Offer, TapFrame, TapSink};
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};

mod dynacast;
mod grants;
mod local;

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

/// How a session's m-lines change after the first offer and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// They don't: tracks are forwarded on the receiving m-lines of the client's offer (WHEP).
    Fixed,
    /// The server offers an m-line per track it adds (LiveKit's subscriber connection).
    ServerOffers,
    /// Only the client offers. Tracks go on its receiving m-lines; when it has too few, or an
    /// m-line now carries something else, the router asks it to offer again with
    /// [`SfuEvent::SectionsNeeded`], and [`Sfu::answer_offer`] describes each m-line in the
    /// answer (LiveKit's single peer connection).
    ClientOffers,
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

    /// Adds a session from the client's SDP offer and returns the answer.
    pub fn join(
        &mut self,
        now: Instant,
        req: JoinRequest,
        offer: &str,
    ) -> Result<(ParticipantId, SdpAnswer), SfuError> {
        let facts = OfferFacts::read(offer)?;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(sdp_error_text(&e.to_string())))?;
        self.admit(&req)?;
        let mut rtc = self.new_rtc(now);
        let answer = negotiate(|| rtc.sdp_api().accept_offer(offer)).map_err(SfuError::from)?;
        let id = self.add_session(now, req, rtc, facts);
        Ok((id, answer))
    }

    /// Adds a session whose first offer comes from the server, once there is something to
    /// send (a LiveKit subscriber connection). Renegotiation is implied.
    pub fn join_server_offered(&mut self, now: Instant, mut req: JoinRequest) -> Result<ParticipantId, SfuError> {
        self.admit(&req)?;
        req.negotiation = Negotiation::ServerOffers;
        let room = req.room.clone();
        let rtc = self.new_rtc(now);
        let id = self.add_session(now, req, rtc, OfferFacts::default());
        // The first offer carries the channels and whatever the room already publishes.
        self.fill_slots(now, &room);
        self.offer_later(id);
        self.drive(now);
        Ok(id)
    }

    /// Adds a session whose m-lines come from the client's offers, all of them answered with
    /// [`Sfu::answer_offer`] (a LiveKit single peer connection). Tracks it should receive wait
    /// for its first offer.
    pub fn join_client_offers(&mut self, now: Instant, mut req: JoinRequest) -> Result<ParticipantId, SfuError> {
        self.admit(&req)?;
        req.negotiation = Negotiation::ClientOffers;
        let room = req.room.clone();
        let rtc = self.new_rtc(now);
        let id = self.add_session(now, req, rtc, OfferFacts::default());
        self.fill_slots(now, &room);
        self.drive(now);
        Ok(id)
    }

    /// Refuses a new participant that the room's `max_participants` has no place for; another
    /// connection of a participant already there always comes in.
    fn admit(&self, req: &JoinRequest) -> Result<(), SfuError> {
        let max = req.limits.max_participants as usize;
        let existing = req.participant.is_some_and(|pp| self.peers.values().any(|p| p.participant == pp));
        if max == 0 || existing {
            return Ok(());
        }
        let mut present: Vec<ParticipantId> =
            self.peers.values().filter(|p| p.room == req.room).map(|p| p.participant).collect();
        present.sort();
        present.dedup();
        if present.len() >= max { Err(SfuError::RoomFull) } else { Ok(()) }
    }

    /// Answers an offer of a session: as [`Sfu::renegotiate`], and for a client-offering
    /// session with every receiving m-line described: `sendonly` with the msid of the track it
    /// now carries, or `inactive`. str0m answers those with a random msid, and a browser
    /// announces a track (`ontrack`) only when a transceiver starts receiving, so a line that
    /// has nothing yet must not look like it sends.
    pub fn answer_offer(&mut self, now: Instant, id: ParticipantId, offer: &str) -> Result<ClientAnswer, SfuError> {
        let answer = self.renegotiate(now, id, offer)?.to_sdp_string();
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if peer.negotiation != Negotiation::ClientOffers {
            return Ok(ClientAnswer { sdp: answer, tracks: Vec::new() });
        }
        let lines_before = peer.lines_offered;
        peer.lines_offered = peer.slots.len();
        let grew = peer.lines_offered > lines_before;
        let mut lines = Vec::new();
        let mut starting = Vec::new();
        for slot in &mut peer.slots {
            if let Some(track) = slot.track.filter(|_| slot.announced != slot.track) {
                starting.push((slot.mid, track));
            }
            slot.announced = slot.track;
            let Some(track) = slot.track else { continue };
            let owner = self.tracks.get(&track).map_or(peer.participant, |t| t.info.owner);
            lines.push(describe::Sending { mid: slot.mid, stream: stream_id(owner, track), track });
        }
        peer.offered = true;
        // A client asked for more lines that offered again without them while tracks wait has
        // not yet acted on the request (or cannot: a codec it lacks); it is not asked again
        // until it offers more. Any other offer answers the request, and tracks that came
        // meanwhile are asked for afresh.
        peer.sections_requested =
            peer.sections_requested.filter(|&lines| lines > 0 && !grew && !peer.to_add.is_empty());
        let room = peer.room.clone();
        let sdp = describe::sending_lines(&answer, &lines);
        // The client starts decoding once it has this answer: video needs a keyframe then,
        // even if one was asked for a moment ago when the line was bound.
        for (mid, track) in starting {
            if let Some(t) = self.tracks.get_mut(&track) {
                t.last_keyframe_request.clear();
            }
            self.resume_one(now, id, mid);
        }
        // Lines this answer described as idle can take waiting tracks at once.
        self.fill_slots(now, &room);
        self.needs_sections.insert(id);
        self.drive(now);
        Ok(ClientAnswer { sdp, tracks: lines.into_iter().map(|l| (l.mid, l.track)).collect() })
    }

    fn new_rtc(&self, now: Instant) -> Rtc {
        let mut rtc_config = Rtc::builder().enable_bwe(Some(self.config.initial_bwe));
        // str0m's defaults take over half a minute to notice a vanished peer; these notice in
        // about ten seconds, after which `disconnect_timeout` runs.
        rtc_config.set_max_stun_rto(Duration::from_millis(1500));
        rtc_config.set_max_stun_retransmits(6);
        // Peer stats feed connection quality.
        let mut rtc = rtc_config.set_stats_interval(Some(STATS_INTERVAL)).build(now);
        for c in &self.config.candidates {
            rtc.add_local_candidate(c.clone());
        }
        rtc
    }

    fn add_session(&mut self, now: Instant, req: JoinRequest, rtc: Rtc, offer: OfferFacts) -> ParticipantId {
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        // Another connection of a participant still in the room joins it; otherwise it is new.
        let participant = req
            .participant
            .filter(|pp| self.peers.values().any(|p| p.participant == *pp && p.room == req.room))
            .unwrap_or(id);
        let room = self.rooms.entry(req.room.clone()).or_insert_with(|| {
            self.events.push_back(SfuEvent::RoomStarted { room: req.room.clone() });
            Room {
                participants: Vec::new(),
                tracks: Vec::new(),
                empty_since: None,
                limits: req.limits,
                speakers: SpeakerDetector::new(now),
            }
        });
        room.participants.push(id);
        room.empty_since = None;
        // Settings come with new participants; another connection of one brings none.
        if participant == id {
            room.limits = req.limits;
        }
        self.peers.insert(
            id,
            Peer {
                id,
                participant,
                room: req.room.clone(),
                identity: req.identity.clone(),
                permissions: req.permissions,
                subscribe: req.subscribe,
                negotiation: req.negotiation,
                offered: false,
                sections_requested: None,
                lines_offered: 0,
                rtc,
                next_timeout: now,
                disconnected_since: None,
                joined_at: now,
                connected: false,
                broken: false,
                data_sequence: 0,
                remote_candidates: offer.candidates,
                remote_ufrag: offer.ufrag,
                client_tracks: offer.tracks,
                estimate_bps: None,
                slots: Vec::new(),
                published: Vec::new(),
                channels_in: HashMap::new(),
                channels_out: HashMap::new(),
                pending: None,
                to_add: Vec::new(),
                to_stop: Vec::new(),
                ice_restart: false,
                announced: HashMap::new(),
                data_codec: req.data_codec,
                channels_to_open: req.server_channels,
                own_channels: Vec::new(),
                quality: None,
            },
        );
        if participant == id {
            self.events.push_back(SfuEvent::ParticipantJoined {
                room: req.room,
                participant: id,
                identity: req.identity,
            });
        }
        self.mark(id);
        self.drive(now);
        id
    }

    /// Applies a new offer from an existing session: added m-lines, or an ICE restart when the
    /// offer carries new ICE credentials.
    pub fn renegotiate(&mut self, now: Instant, id: ParticipantId, offer: &str) -> Result<SdpAnswer, SfuError> {
        let facts = OfferFacts::read(offer)?;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(sdp_error_text(&e.to_string())))?;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        // Offers repeat the candidates gathered so far; new credentials start a new set.
        let known = if facts.ufrag == peer.remote_ufrag { peer.remote_candidates } else { 0 };
        if known.max(facts.candidates) > MAX_REMOTE_CANDIDATES {
            return Err(SfuError::LimitExceeded("ICE candidates"));
        }
        (peer.remote_candidates, peer.remote_ufrag) = (known.max(facts.candidates), facts.ufrag);
        peer.client_tracks = facts.tracks;
        // Glare: the client's offer wins; ours is dropped and its tracks go into the next one.
        peer.drop_pending_offer();
        let answer = match negotiate(|| peer.rtc.sdp_api().accept_offer(offer)) {
            Ok(a) => a,
            Err(e) => return Err(self.failed_negotiation(now, id, e)),
        };
        self.mark(id);
        self.offer_later(id);
        self.drive(now);
        Ok(answer)
    }

    /// Restarts ICE from the server's side with a fresh offer (a LiveKit client resuming a
    /// session, possibly from a new network). An offer still out is dropped: the client lost it
    /// with its signal connection, and the new offer carries its tracks instead.
    pub fn restart_ice(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        peer.drop_pending_offer();
        peer.ice_restart = true;
        // The client answers with new credentials and trickles a new set.
        peer.remote_candidates = 0;
        self.offer_later(id);
        self.drive(now);
        Ok(())
    }

    /// Applies the client's answer to our last offer.
    pub fn handle_answer(&mut self, now: Instant, id: ParticipantId, sdp: &str) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if peer.pending.is_none() {
            return Err(SfuError::NoPendingOffer);
        }
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(sdp_error_text(&e.to_string())))?;
        let (pending, planned) = peer.pending.take().expect("checked above");
        if let Err(e) = negotiate(|| peer.rtc.sdp_api().accept_answer(pending, answer)) {
            return Err(self.failed_negotiation(now, id, e));
        }
        for (mid, track) in planned {
            let allowed = self.may_subscribe(id, track);
            let peer = self.peers.get_mut(&id).expect("checked above");
            let kind = self.tracks.get(&track).map(|t| t.info.kind);
            // Unpublished while the offer was out, or the session may no longer subscribe (to
            // anything, or to this track by its publisher's grant).
            let Some(kind) = kind.filter(|_| peer.permissions.subscribe && allowed) else {
                peer.to_stop.push(mid);
                if kind.is_some() && !allowed {
                    self.deny(id, track);
                }
                continue;
            };
            if peer.slot_mut(mid).is_none() {
                peer.slots.push(Slot::new(mid, kind));
            }
            self.bind(now, id, mid, track);
        }
        self.mark(id);
        self.offer_later(id);
        self.drive(now);
        Ok(())
    }

    /// A negotiation that panicked inside str0m may have left the session half-changed: it
    /// ends. One that was refused leaves it as it was.
    fn failed_negotiation(&mut self, now: Instant, id: ParticipantId, e: NegotiationFailure) -> SfuError {
        if let NegotiationFailure::Panicked = e {
            self.remove_peer(now, id, LeaveReason::TransportError);
            self.drive(now);
        }
        e.into()
    }

    /// Registers a track the client announced (LiveKit AddTrack) before its m-line arrives;
    /// the m-line whose msid track id is `client_track_id` will publish as the returned id.
    /// Announcing the same id again gives the same track.
    pub fn announce_track(&mut self, id: ParticipantId, client_track_id: &str) -> Result<TrackId, SfuError> {
        let track = TrackId(self.next_id);
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if let Some(&known) = peer.announced.get(client_track_id) {
            return Ok(known);
        }
        if peer.announced.len() >= MAX_ANNOUNCED_TRACKS {
            return Err(SfuError::LimitExceeded("announced tracks"));
        }
        self.next_id += 1;
        peer.announced.insert(client_track_id.to_string(), track);
        Ok(track)
    }

    /// Adds a trickled remote candidate.
    pub fn add_remote_candidate(&mut self, now: Instant, id: ParticipantId, c: Candidate) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if peer.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return Err(SfuError::LimitExceeded("ICE candidates"));
        }
        peer.remote_candidates += 1;
        if guard("add_remote_candidate", || peer.rtc.add_remote_candidate(c)).is_err() {
            self.remove_peer(now, id, LeaveReason::TransportError);
            self.drive(now);
            return Err(SfuError::Negotiation("the candidate could not be applied".into()));
        }
        self.mark(id);
        self.drive(now);
        Ok(())
    }

    /// Ends a session.
    pub fn leave(&mut self, now: Instant, id: ParticipantId, reason: LeaveReason) -> Result<(), SfuError> {
        if !self.peers.contains_key(&id) {
            return Err(SfuError::NoParticipant);
        }
        self.remove_peer(now, id, reason);
        self.drive(now);
        Ok(())
    }

    /// Ends every connection of a participant.
    pub fn remove_participant(&mut self, now: Instant, participant: ParticipantId, reason: LeaveReason) {
        let ids: Vec<ParticipantId> =
            self.peers.values().filter(|p| p.participant == participant).map(|p| p.id).collect();
        for id in ids {
            self.remove_peer(now, id, reason);
        }
        self.remove_local(participant, reason);
        self.drive(now);
    }

    /// Removes everyone in `room` (it was deleted); returns how many participants left.
    pub fn close_room(&mut self, now: Instant, room: &RoomName) -> usize {
        let everyone = self.participants(room);
        for p in &everyone {
            self.remove_participant(now, p.id, LeaveReason::RoomDeleted);
        }
        // A deleted room does not wait out its empty timeout: it is gone now, as in LiveKit.
        self.close(room.clone(), LeaveReason::RoomDeleted);
        self.drive(now);
        everyone.len()
    }

    /// Ends a room: the server's own participants there leave, then the room goes.
    fn close(&mut self, name: RoomName, reason: LeaveReason) {
        let locals: Vec<ParticipantId> =
            self.locals.iter().filter(|(_, l)| l.room == name).map(|(id, _)| *id).collect();
        for id in locals {
            self.remove_local(id, reason);
        }
        if self.rooms.remove(&name).is_some() {
            self.events.push_back(SfuEvent::RoomClosed { room: name });
        }
    }

    /// How long a room with no participants stays open unless its settings say otherwise.
    pub fn empty_room_timeout(&self) -> Duration {
        self.config.empty_room_timeout
    }

    /// Participants in `room` with this identity.
    pub fn find_identity(&self, room: &RoomName, identity: &Identity) -> Vec<ParticipantId> {
        let mut out: Vec<ParticipantId> =
            self.peers.values().filter(|p| &p.room == room && &p.identity == identity).map(|p| p.participant).collect();
        out.dedup();
        out
    }

    /// Changes what a participant (every connection of it) may do. Without `subscribe` it
    /// loses its subscriptions; without `publish`, its tracks are unpublished (its client
    /// keeps sending, to nobody); granted `subscribe` again, it gets what its filter wants.
    pub fn set_permissions(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        perms: Permissions,
    ) -> Result<(), SfuError> {
        let sessions: Vec<ParticipantId> =
            self.peers.values().filter(|p| p.participant == participant).map(|p| p.id).collect();
        let room = self.peers.get(sessions.first().ok_or(SfuError::NoParticipant)?).map(|p| p.room.clone());
        for &id in &sessions {
            let Some(p) = self.peers.get_mut(&id) else { continue };
            p.permissions = perms;
            if !perms.subscribe {
                p.to_add.clear();
                let bound: Vec<Mid> = p.slots.iter().filter(|s| s.track.is_some()).map(|s| s.mid).collect();
                for mid in bound {
                    self.unbind(id, mid);
                }
            }
            if !perms.publish {
                let published = self.peers.get_mut(&id).map(|p| std::mem::take(&mut p.published)).unwrap_or_default();
                for track in published {
                    self.unpublish(track);
                }
            }
            self.mark(id);
        }
        if let Some(room) = room {
            self.fill_slots(now, &room);
        }
        self.drive(now);
        Ok(())
    }

    /// What a participant may do now.
    pub fn permissions(&self, participant: ParticipantId) -> Option<Permissions> {
        self.peers.values().find(|p| p.participant == participant).map(|p| p.permissions)
    }

    /// Takes a track out of the room: its subscribers' slots are released.
    fn unpublish(&mut self, track: TrackId) {
        let Some(t) = self.tracks.remove(&track) else { return };
        self.denied.retain(|(_, d)| *d != track);
        self.by_mid.remove(&(t.session, t.mid));
        for &(sub, mid) in &t.subscribers {
            if let Some(slot) = self.peers.get_mut(&sub).and_then(|p| p.slot_mut(mid)) {
                slot.track = None;
                slot.fwd = Forwarder::new(slot.kind);
            }
            self.release_slot(sub, mid);
        }
        for p in self.peers.values_mut() {
            p.to_add.retain(|x| *x != track);
        }
        if let Some(r) = self.rooms.get_mut(&t.room) {
            r.tracks.retain(|x| *x != track);
        }
        self.events.push_back(SfuEvent::TrackUnpublished { room: t.room, track: t.info });
    }

    /// Mutes or unmutes a published track for everyone.
    pub fn set_track_muted(&mut self, now: Instant, track: TrackId, muted: bool) -> Result<(), SfuError> {
        let t = self.tracks.get_mut(&track).ok_or(SfuError::NoTrack)?;
        if t.info.muted == muted {
            return Ok(());
        }
        t.info.muted = muted;
        let room = t.room.clone();
        self.events.push_back(SfuEvent::TrackMuted { room, track, muted });
        if !muted {
            self.resume_subscribers(now, track);
        }
        self.drive(now);
        Ok(())
    }

    /// Caps the quality a session receives for the track in slot `mid` (explicit request).
    pub fn set_max_quality(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track: TrackId,
        q: Quality,
    ) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        peer.slot_for(track).ok_or(SfuError::NoTrack)?.max_quality = q;
        self.touch_dynacast(track);
        self.reselect(now, id);
        self.drive(now);
        Ok(())
    }

    /// Subscribes a session to a track (or stops), independent of its filter.
    pub fn set_subscribed(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track: TrackId,
        on: bool,
    ) -> Result<(), SfuError> {
        let t = self.tracks.get(&track).ok_or(SfuError::NoTrack)?;
        let kind = t.info.kind;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        // Track ids are node-wide: one from another room (another org's) is not there to take,
        // and neither is anything for a session without the subscribe permission.
        if t.room != peer.room || (on && !peer.permissions.subscribe) {
            return Err(SfuError::NoTrack);
        }
        if on {
            if peer.has(track) {
                return Ok(());
            }
            if !self.place(now, id, track, kind) {
                return Err(SfuError::NoTrack);
            }
        } else {
            // Nor is it to be given the track should its publisher allow it later.
            self.denied.remove(&(id, track));
            self.drop_subscription(id, track);
        }
        self.drive(now);
        Ok(())
    }

    /// Session `id` no longer gets `track`: waiting for a line or on one.
    fn drop_subscription(&mut self, id: ParticipantId, track: TrackId) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        peer.to_add.retain(|t| *t != track);
        if let Some(mid) = peer.slot_for(track).map(|s| s.mid) {
            self.unbind(id, mid);
        }
    }

    /// Pauses (or resumes) forwarding of a subscribed track to a session without
    /// unsubscribing it (LiveKit's "disabled" track setting: the video element is hidden).
    pub fn set_track_enabled(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track: TrackId,
        enabled: bool,
    ) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        let slot = peer.slot_for(track).ok_or(SfuError::NoTrack)?;
        if enabled == slot.fwd.target().is_some() {
            return Ok(());
        }
        self.dynacast_dirty.insert(track);
        if enabled {
            // Back to the single layer; simulcast tracks get theirs from `reselect`.
            slot.fwd.set_target(Some(None));
            let mid = slot.mid;
            self.reselect(now, id);
            self.resume_one(now, id, mid);
        } else {
            slot.fwd.set_target(None);
        }
        self.drive(now);
        Ok(())
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

    /// Sessions in a room with their tracks.
    pub fn participants(&self, room: &RoomName) -> Vec<ParticipantInfo> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut out: Vec<ParticipantInfo> = Vec::new();
        for p in r.participants.iter().filter_map(|id| self.peers.get(id)) {
            let tracks = p.published.iter().filter_map(|t| self.tracks.get(t)).map(|t| t.info.clone());
            match out.iter_mut().find(|x| x.id == p.participant) {
                Some(x) => x.tracks.extend(tracks),
                None => out.push(ParticipantInfo {
                    id: p.participant,
                    identity: p.identity.clone(),
                    tracks: tracks.collect(),
                    server: false,
                    hidden: p.permissions.hidden,
                }),
            }
        }
        out.extend(self.locals.iter().filter(|(_, l)| &l.room == room).map(|(&id, l)| ParticipantInfo {
            id,
            identity: l.identity.clone(),
            tracks: l.published.iter().filter_map(|t| self.tracks.get(t)).map(|t| t.info.clone()).collect(),
            server: true,
            hidden: false,
        }));
        out
    }

    /// Open rooms.
    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.keys()
    }

    /// The track currently forwarded in each sending slot of a session, by mid.
    pub fn subscriptions(&self, id: ParticipantId) -> Vec<(Mid, Option<TrackId>, Option<Layer>)> {
        let Some(p) = self.peers.get(&id) else {
            return Vec::new();
        };
        p.slots.iter().map(|s| (s.mid, s.track, s.fwd.current().cloned())).collect()
    }

    pub fn stats(&self) -> &SfuStats {
        &self.stats
    }

    /// Open rooms, sessions and published tracks right now.
    pub fn gauges(&self) -> (usize, usize, usize) {
        (self.rooms.len(), self.peers.len(), self.tracks.len())
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

    fn handle_media_added(&mut self, now: Instant, id: ParticipantId, m: MediaAdded) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
        let sends = matches!(m.direction, Direction::SendOnly | Direction::SendRecv);
        // m-lines we offered get their slot when the answer arrives (`handle_answer`).
        if sends && p.permissions.subscribe && p.slot_mut(m.mid).is_none() && p.negotiation != Negotiation::ServerOffers
        {
            p.slots.push(Slot::new(m.mid, m.kind));
        }
        if receives && p.permissions.publish && p.published.len() >= MAX_PUBLISHED_TRACKS {
            tracing::info!(participant = %id, mid = %m.mid, "publishes too many tracks; m-line not published");
        } else if receives && p.permissions.publish {
            let rids: Vec<Rid> = m
                .simulcast
                .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
                .unwrap_or_default()
                .into_iter()
                .map(|l| l.rid)
                .collect();
            let mut layers: Vec<LayerRate> = rids.into_iter().map(|rid| LayerRate { rid, bps: 0 }).collect();
            layer_select::order(&mut layers);
            // The client's own id for the track, as its offer wrote it: str0m makes one up
            // where the offer names no stream (`a=msid:- <track>`, as LiveKit's native SDKs write).
            let client_track_id = match p.client_tracks.get(&*m.mid) {
                Some(t) => t.clone(),
                None => p.rtc.media(m.mid).map(|x| x.track_id().to_string()).unwrap_or_default(),
            };
            // The announcement may have gone to another connection of the same participant.
            let participant = p.participant;
            let announced = self
                .peers
                .values_mut()
                .filter(|x| x.participant == participant)
                .find_map(|x| x.announced.remove(&client_track_id));
            let track = announced.unwrap_or_else(|| {
                self.next_id += 1;
                TrackId(self.next_id - 1)
            });
            let p = self.peers.get_mut(&id).expect("event for a live session");
            let info = TrackInfo {
                id: track,
                owner: p.participant,
                kind: m.kind,
                muted: false,
                layers: layers.iter().map(|l| l.rid.to_string()).collect(),
                mime: negotiated_mime(&p.rtc, m.mid, m.kind),
                server: false,
            };
            p.published.push(track);
            self.by_mid.insert((id, m.mid), track);
            let t = Track::new(info, p.room.clone(), id, p.identity.clone(), m.mid, layers, now);
            self.add_track(t);
        }
        if let Some(room) = self.peers.get(&id).map(|p| p.room.clone()) {
            self.fill_slots(now, &room);
        }
    }

    /// A client stopped sending on an m-line it published (how LiveKit's SDKs unpublish: the
    /// transceiver stops sending and they offer again), or sends on one again (a new track on
    /// a reused transceiver, announced as a new one).
    fn handle_media_changed(&mut self, now: Instant, id: ParticipantId, m: MediaChanged) {
        let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
        let Some(p) = self.peers.get_mut(&id) else { return };
        match self.by_mid.get(&(id, m.mid)).copied() {
            Some(track) if !receives => {
                p.published.retain(|t| *t != track);
                self.unpublish(track);
                if let Some(room) = self.peers.get(&id).map(|p| p.room.clone()) {
                    self.fill_slots(now, &room);
                }
            }
            // (A line the router sends on is a subscription of the client's, not a publication.)
            None if receives && p.slot_mut(m.mid).is_none() => {
                let Some(kind) = p.rtc.media(m.mid).map(|x| x.kind()) else { return };
                let added = MediaAdded { mid: m.mid, kind, direction: m.direction, simulcast: None };
                self.handle_media_added(now, id, added);
            }
            _ => {}
        }
    }

    /// Puts a published track in its room and tells signaling.
    fn add_track(&mut self, t: Track) {
        if let Some(r) = self.rooms.get_mut(&t.room) {
            r.tracks.push(t.info.id);
        }
        self.events.push_back(SfuEvent::TrackPublished { room: t.room.clone(), track: t.info.clone() });
        // Nobody watches it yet: its publisher may hold back what it would encode.
        self.dynacast_dirty.insert(t.info.id);
        self.tracks.insert(t.info.id, t);
    }

    /// Binds free slots of every session in the room to tracks it wants, oldest tracks first.
    fn fill_slots(&mut self, now: Instant, room: &RoomName) {
        let Some(r) = self.rooms.get(room) else { return };
        let tracks = r.tracks.clone();
        let participants = r.participants.clone();
        for id in participants {
            // Tracks a client-offering session waits for go first, into the lines it added.
            let waiting = match self.peers.get_mut(&id) {
                Some(p) if p.negotiation == Negotiation::ClientOffers => std::mem::take(&mut p.to_add),
                _ => Vec::new(),
            };
            for &track in waiting.iter().chain(&tracks) {
                let Some(t) = self.tracks.get(&track) else { continue };
                let (kind, owner_identity) = (t.info.kind, t.identity.clone());
                // Nobody is told a hidden participant is there, so nobody gets its tracks unasked.
                let hidden = self.peers.get(&t.session).is_some_and(|o| o.permissions.hidden);
                let Some(p) = self.peers.get_mut(&id) else { break };
                let asked = waiting.contains(&track);
                if !(asked || (p.wants(&owner_identity) && !hidden)) || p.has(track) {
                    continue;
                }
                self.place(now, id, track, kind);
            }
            self.offer_later(id);
        }
    }

    /// Gives session `id` the track: an m-line in the next offer, a free slot, or (a
    /// client-offering session) a wait for one. False when a fixed session has no free slot.
    fn place(&mut self, now: Instant, id: ParticipantId, track: TrackId, kind: MediaKind) -> bool {
        if !self.may_subscribe(id, track) {
            self.deny(id, track);
            return false;
        }
        let Some(p) = self.peers.get_mut(&id) else { return false };
        if p.negotiation == Negotiation::ServerOffers {
            p.to_add.push(track);
            self.offer_later(id);
            return true;
        }
        if let Some(mid) = p.free_slot(kind) {
            self.bind(now, id, mid, track);
            return true;
        }
        if p.negotiation == Negotiation::ClientOffers {
            p.to_add.push(track);
            self.needs_sections.insert(id);
            return true;
        }
        false
    }

    /// Asks a client-offering session to offer again if it lacks lines or has lines whose
    /// description changed; once per answer.
    fn request_sections(&mut self, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if p.negotiation != Negotiation::ClientOffers || !p.offered || p.sections_requested.is_some() {
            return;
        }
        let (mut audio, mut video) = (0, 0);
        for t in p.to_add.iter().filter_map(|t| self.tracks.get(t)) {
            match t.info.kind {
                MediaKind::Audio => audio += 1,
                MediaKind::Video => video += 1,
            }
        }
        // However many tracks wait, a client is not asked to grow past this many lines.
        let room_for = MAX_CLIENT_LINES.saturating_sub(p.slots.len()) as u32;
        let audio = audio.min(room_for);
        let video = video.min(room_for - audio);
        let changed = p.slots.iter().any(|s| s.announced != s.track);
        if audio + video == 0 && !changed {
            return;
        }
        p.sections_requested = Some(audio + video);
        self.events.push_back(SfuEvent::SectionsNeeded { participant: id, audio, video });
    }

    /// Batches a renegotiation: offers are made once the current input is fully handled, so
    /// tracks that appear together travel in one offer.
    fn offer_later(&mut self, id: ParticipantId) {
        self.needs_offer.insert(id);
    }

    /// Offers the m-lines a renegotiating session is waiting for, unless an offer is out.
    fn make_offer(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if p.negotiation != Negotiation::ServerOffers {
            return;
        }
        if !p.permissions.subscribe {
            // Tracks of an offer dropped after the permission went (glare, ICE restart).
            p.to_add.clear();
        }
        let nothing_to_do =
            p.to_add.is_empty() && p.to_stop.is_empty() && p.channels_to_open.is_empty() && !p.ice_restart;
        if p.pending.is_some() || nothing_to_do {
            return;
        }
        let tracks = &self.tracks;
        let made = guard("offer", || {
            let mut api = p.rtc.sdp_api();
            if std::mem::take(&mut p.ice_restart) {
                // The server's host candidates do not change with the credentials.
                api.ice_restart(true);
            }
            for c in p.channels_to_open.drain(..) {
                p.own_channels.push(api.add_channel_with_config(c));
            }
            let mut planned = Vec::new();
            for track in p.to_add.drain(..) {
                let Some(t) = tracks.get(&track) else { continue };
                let stream = stream_id(t.info.owner, track);
                let mid = api.add_media(t.info.kind, Direction::SendOnly, Some(stream), Some(track.to_string()), None);
                planned.push((mid, track));
            }
            for mid in p.to_stop.drain(..) {
                api.stop_media(mid);
            }
            api.apply().map(|applied| (applied, planned))
        });
        let Ok(made) = made else {
            self.remove_peer(now, id, LeaveReason::TransportError);
            return;
        };
        if let Some(((offer, pending), planned)) = made {
            p.pending = Some((pending, planned));
            self.events.push_back(SfuEvent::Offer { participant: id, sdp: offer.to_sdp_string() });
            self.mark(id);
        }
    }

    fn bind(&mut self, now: Instant, id: ParticipantId, mid: Mid, track: TrackId) {
        let (Some(p), Some(t)) = (self.peers.get_mut(&id), self.tracks.get_mut(&track)) else { return };
        let Some(slot) = p.slot_mut(mid) else { return };
        slot.track = Some(track);
        slot.fwd = Forwarder::new(t.info.kind);
        t.subscribers.push((id, mid));
        self.dynacast_dirty.insert(track);
        if p.negotiation == Negotiation::ClientOffers {
            self.needs_sections.insert(id);
        }
        tracing::debug!(subscriber = %id, %track, %mid, "subscribed");
        self.reselect(now, id);
        self.resume_one(now, id, mid);
    }

    fn unbind(&mut self, id: ParticipantId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let Some(slot) = p.slot_mut(mid) else { return };
        if let Some(t) = slot.track.take().and_then(|t| self.tracks.get_mut(&t)) {
            t.subscribers.retain(|s| *s != (id, mid));
            self.dynacast_dirty.insert(t.info.id);
        }
        slot.fwd = Forwarder::new(slot.kind);
        self.release_slot(id, mid);
        self.update_bwe_targets(id);
    }

    /// A slot that lost its track: WHEP slots wait for the next track; a server-offering
    /// session stops the m-line, since its msid named the old track; a client-offering one
    /// needs an answer that says the line is inactive before it can carry another track.
    fn release_slot(&mut self, id: ParticipantId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        match p.negotiation {
            Negotiation::Fixed => {}
            Negotiation::ServerOffers => {
                p.slots.retain(|s| s.mid != mid);
                p.to_stop.push(mid);
                self.offer_later(id);
            }
            Negotiation::ClientOffers => {
                self.needs_sections.insert(id);
            }
        }
    }

    /// A subscriber starting (or restarting) on a video track needs a keyframe.
    fn resume_one(&mut self, now: Instant, id: ParticipantId, mid: Mid) {
        let Some(slot) = self.peers.get_mut(&id).and_then(|p| p.slot_mut(mid)) else { return };
        if slot.kind != MediaKind::Video {
            return;
        }
        let (Some(track), Some(layer)) = (slot.track, slot.fwd.target().cloned()) else { return };
        self.request_keyframe(now, track, layer);
    }

    fn resume_subscribers(&mut self, now: Instant, track: TrackId) {
        let subs = self.tracks.get(&track).map(|t| t.subscribers.clone()).unwrap_or_default();
        for (id, mid) in subs {
            self.resume_one(now, id, mid);
        }
    }

    /// Re-evaluates the simulcast layer of each video slot of a session.
    fn reselect(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let mut switches = Vec::new();
        for slot in p.slots.iter_mut() {
            let Some(t) = slot.track.and_then(|t| self.tracks.get(&t)) else { continue };
            if t.layers.is_empty() {
                continue;
            }
            let target = layer_select::select(&t.layers, p.estimate_bps, slot.max_quality);
            if slot.fwd.set_target(Some(target)) {
                tracing::debug!(subscriber = %id, track = %t.info.id, ?target, "switching layer");
                switches.push((t.info.id, target));
            }
        }
        for (track, layer) in switches {
            self.request_keyframe(now, track, layer);
        }
        self.update_bwe_targets(id);
    }

    /// Tells the subscriber's bandwidth estimator what it should find room for. Without a
    /// target above its start value it never probes, and its pacer holds media to that start
    /// value: a subscriber of twenty audio tracks then queues for seconds (docs/benchmarks.md).
    fn update_bwe_targets(&mut self, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let (mut audio, mut all) = (0u64, 0u64);
        for t in p.slots.iter().filter_map(|s| s.track).filter_map(|t| self.tracks.get(&t)) {
            if t.info.kind == MediaKind::Audio {
                audio += AUDIO_BPS;
                all += AUDIO_BPS;
            } else {
                all += t.layers.last().map(|l| l.bps).filter(|b| *b > 0).unwrap_or(VIDEO_BPS);
            }
        }
        // Audio must always fit; the rest is what probing should aim for, with headroom for
        // headers and retransmissions.
        if guard("bitrate", || p.rtc.bwe().set_bitrate(Bitrate::bps(audio), Bitrate::bps(all + all / 4))).is_err() {
            p.broken = true;
        }
    }

    fn request_keyframe(&mut self, now: Instant, track: TrackId, layer: Layer) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.info.kind != MediaKind::Video {
            return;
        }
        if t.last_keyframe_request.get(&layer).is_some_and(|last| now < *last + KEYFRAME_MIN_GAP) {
            return;
        }
        let owner = t.session;
        let Some(p) = self.peers.get_mut(&owner) else { return };
        let mid = t.mid;
        let requested = guard("keyframe request", || {
            let Some(mut w) = p.rtc.writer(mid) else { return Ok(false) };
            if !w.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
                return Ok(false);
            }
            w.request_keyframe(layer, KeyframeRequestKind::Pli).map(|_| true)
        });
        match requested {
            Ok(Ok(true)) => {
                t.last_keyframe_request.insert(layer, now);
                self.stats.keyframe_requests += 1;
                self.mark(owner);
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::debug!(%track, error = %e, "keyframe request failed"),
            Err(Panicked) => self.remove_peer(now, owner, LeaveReason::TransportError),
        }
    }

    fn handle_media_data(&mut self, now: Instant, id: ParticipantId, d: MediaData) {
        self.stats.frames_in += 1;
        let Some(&track) = self.by_mid.get(&(id, d.mid)) else { return };
        let Some(t) = self.tracks.get_mut(&track) else { return };
        let rates_changed = t.measure(d.rid, d.data.len(), now);
        if t.info.kind == MediaKind::Audio
            && let (Some(level), Some(r)) = (d.ext_vals.audio_level, self.rooms.get_mut(&t.room))
        {
            r.speakers.handle_level(self.peers.get(&id).map_or(id, |p| p.participant), level);
        }
        let kind = t.info.kind;
        if !d.contiguous && kind == MediaKind::Video {
            // A gap the publisher could not repair: decoders downstream need a fresh keyframe.
            self.request_keyframe(now, track, d.rid);
        }
        let out = Outgoing {
            rid: d.rid,
            keyframe: d.is_keyframe(),
            time: d.time,
            network_time: d.network_time,
            params: Some(d.params),
            audio_level: d.ext_vals.audio_level.map(|l| (l, d.ext_vals.voice_activity.unwrap_or(false))),
            data: Arc::clone(&d.data),
        };
        self.forward(now, track, &out);
        // After forwarding, so that a tap can never hold a subscriber's frame back.
        if kind == MediaKind::Audio && d.params.spec().codec == Codec::Opus {
            self.feed_taps(track, &d);
        }
        if rates_changed {
            tracing::trace!(%track, layers = ?self.tracks[&track].layers, "layer rates");
            let subs: Vec<ParticipantId> = self.tracks[&track].subscribers.iter().map(|s| s.0).collect();
            for sub in subs {
                self.reselect(now, sub);
            }
        }
    }

    /// Sends a frame of `track` to its subscribers (unless the track is muted).
    fn forward(&mut self, now: Instant, track: TrackId, f: &Outgoing) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.info.muted {
            return;
        }
        // Borrowed out of the track for the loop (nothing below changes subscriptions), so the
        // list is not copied for every frame; it goes back at the end.
        let subscribers = std::mem::take(&mut t.subscribers);
        let mut need_keyframe = Vec::new();
        let mut broken = Vec::new();
        for &(sub, mid) in &subscribers {
            let Some(p) = self.peers.get_mut(&sub) else { continue };
            let Some(slot) = p.slot_mut(mid) else { continue };
            match slot.fwd.on_frame(f.rid, f.keyframe, f.time, f.network_time) {
                Decision::Forward(time) => {
                    let Some(w) = p.rtc.writer(mid) else { continue };
                    let pt = match f.params {
                        Some(params) => w.match_params(params),
                        None => w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()),
                    };
                    let Some(pt) = pt else {
                        self.stats.frames_dropped += 1;
                        continue;
                    };
                    let w = match f.audio_level {
                        Some((level, active)) => w.audio_level(level, active),
                        None => w,
                    };
                    match guard("write", || w.write(pt, f.network_time, time, Arc::clone(&f.data))) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(subscriber = %sub, error = %e, "write failed");
                            self.stats.frames_dropped += 1;
                            continue;
                        }
                        Err(Panicked) => {
                            broken.push(sub);
                            continue;
                        }
                    }
                    self.stats.frames_forwarded += 1;
                    self.stats.bytes_forwarded += f.data.len() as u64;
                    self.mark(sub);
                }
                Decision::NeedKeyframe(layer) => {
                    self.stats.frames_dropped += 1;
                    need_keyframe.push(layer);
                }
                Decision::Drop => {}
            }
        }
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers = subscribers;
        }
        for layer in need_keyframe {
            self.request_keyframe(now, track, layer);
        }
        for sub in broken {
            self.remove_peer(now, sub, LeaveReason::TransportError);
        }
    }

    fn feed_taps(&mut self, track: TrackId, d: &MediaData) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.taps.is_empty() {
            return;
        }
        let frame = TapFrame {
            room: t.room.clone(),
            track,
            participant: t.info.owner,
            identity: t.identity.clone(),
            rtp_time: d.time.numer(),
            received: d.network_time,
            data: Arc::clone(&d.data),
        };
        let stats = &mut self.stats;
        t.taps.retain_mut(|sink| match sink.offer(frame.clone()) {
            Offer::Taken => {
                stats.tap_frames += 1;
                true
            }
            Offer::Full => {
                stats.tap_frames_dropped += 1;
                true
            }
            Offer::Closed => false,
        });
    }

    /// Sends copies of an audio track's Opus frames to `sink` until the sink reports it is
    /// closed or the track ends.
    pub fn add_tap(&mut self, track: TrackId, sink: Box<dyn TapSink>) -> Result<(), SfuError> {
        let t = self.tracks.get_mut(&track).ok_or(SfuError::NoTrack)?;
        if t.info.kind != MediaKind::Audio {
            return Err(SfuError::NotAudio);
        }
        t.taps.push(sink);
        Ok(())
    }

    fn handle_channel_open(&mut self, now: Instant, id: ParticipantId, cid: ChannelId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if let Some(out) = p.channels_out.values_mut().find(|c| c.id == cid) {
            out.open = true;
            let pending: Vec<_> = out.pending.drain(..).collect();
            let flushed = guard("channel write", || {
                if let Some(mut ch) = p.rtc.channel(cid) {
                    for (binary, data) in pending {
                        let _ = ch.write(binary, &data);
                    }
                }
            });
            match flushed {
                Ok(()) => self.mark(id),
                Err(Panicked) => self.remove_peer(now, id, LeaveReason::TransportError),
            }
            return;
        }
        if p.own_channels.contains(&cid) {
            return;
        }
        let config = guard("channel config", || p.rtc.channel(cid).and_then(|c| c.config().cloned()))
            .ok()
            .flatten()
            .unwrap_or_default();
        p.channels_in.insert(cid, config);
    }

    /// Relays a data channel message to the other participants of the room: in their own
    /// envelope for sessions with a codec, else on a per-sender channel of the same label and
    /// reliability whose protocol names the sender.
    fn relay_data(&mut self, now: Instant, from: ParticipantId, d: ChannelData) {
        let Some(p) = self.peers.get_mut(&from) else { return };
        if !p.permissions.publish_data {
            return;
        }
        let Some(config) = p.channels_in.get(&d.id) else { return };
        let reliable = data::is_reliable(config);
        let msg = match &p.data_codec {
            Some(codec) => codec.decode(&config.label, reliable, &d.data),
            None => Some(DataMessage {
                reliable,
                binary: d.binary,
                topic: config.label.clone(),
                payload: d.data,
                destinations: Vec::new(),
                native: None,
                sequence: None,
            }),
        };
        let Some(msg) = msg else {
            self.stats.data_messages_dropped += 1;
            return;
        };
        if let Some(seq) = msg.sequence {
            // Resent after a resume, and already relayed.
            if seq <= p.data_sequence {
                self.stats.data_messages_dropped += 1;
                return;
            }
            p.data_sequence = seq;
        }
        let (room, sender, sender_id) = (p.room.clone(), p.identity.clone(), p.participant);
        self.deliver(now, &room, Some((from, &sender, sender_id)), &msg);
    }

    /// The standing word the router gave `participant` through events it will not repeat
    /// (which qualities of its tracks are watched, which tracks it may not have), for a
    /// signaling session that missed events to say again.
    pub fn standing_notices(&self, participant: ParticipantId) -> Vec<SfuEvent> {
        let mut out = self.qualities_told(participant);
        out.extend(self.denials_told(participant));
        out
    }

    /// The highest reliable message number relayed from `participant` (any of its
    /// connections; 0 for none): what a resuming LiveKit client is told arrived.
    pub fn data_sequence(&self, participant: ParticipantId) -> u32 {
        self.peers.values().filter(|p| p.participant == participant).map(|p| p.data_sequence).max().unwrap_or(0)
    }

    /// Sends a message from the server (an API call) to the room's participants, or to those
    /// among them `msg.destinations` names; returns how many it went to.
    pub fn send_data(&mut self, now: Instant, room: &RoomName, msg: &DataMessage) -> usize {
        let n = self.deliver(now, room, None, msg);
        self.drive(now);
        n
    }

    /// Delivers `msg` from `sender` (its session, identity and participant; `None`: the
    /// server) to everyone else in the room it is meant for.
    fn deliver(
        &mut self,
        now: Instant,
        room: &RoomName,
        sender: Option<(ParticipantId, &Identity, ParticipantId)>,
        msg: &DataMessage,
    ) -> usize {
        let Some(r) = self.rooms.get(room) else { return 0 };
        // One delivery per identity: a client may hold several connections (LiveKit's
        // publisher and subscriber, a WHIP publisher beside WHEP players). The connection
        // that speaks an envelope wins, then the oldest; only those whose client opened a
        // channel have SCTP up.
        let mut recipients: Vec<(Identity, bool, ParticipantId)> = r
            .participants
            .iter()
            .filter_map(|id| self.peers.get(id))
            .filter(|q| sender.is_none_or(|s| &q.identity != s.1) && !q.channels_in.is_empty())
            .filter(|q| msg.destinations.is_empty() || msg.destinations.contains(&q.identity))
            .map(|q| (q.identity.clone(), q.data_codec.is_none(), q.id))
            .collect();
        recipients.sort();
        recipients.dedup_by(|a, b| a.0 == b.0);
        let delivered = recipients.len();
        let mut broken = Vec::new();
        for (_, _, to) in recipients {
            let Some(q) = self.peers.get_mut(&to) else { continue };
            let written = guard("channel write", || Self::write_message(q, msg, sender, &mut self.stats));
            match written {
                Ok(true) => {
                    self.stats.data_messages_relayed += 1;
                    self.mark(to);
                }
                Ok(false) => {}
                Err(Panicked) => broken.push(to),
            }
        }
        for id in broken {
            self.remove_peer(now, id, LeaveReason::TransportError);
        }
        delivered
    }

    /// Writes `msg` to one recipient's channel for it (opening one for a raw session); false
    /// when there is none to write to.
    fn write_message(
        q: &mut Peer,
        msg: &DataMessage,
        sender: Option<(ParticipantId, &Identity, ParticipantId)>,
        stats: &mut SfuStats,
    ) -> bool {
        match q.data_codec.clone() {
            Some(codec) => {
                let Some((label, bytes)) = codec.encode(msg, sender.map(|s| (s.1, s.2))) else { return false };
                let Some(cid) = q.channels_in.iter().find(|(_, c)| c.label == label).map(|(id, _)| *id) else {
                    return false;
                };
                if let Some(mut ch) = q.rtc.channel(cid) {
                    let _ = ch.write(true, &bytes);
                }
            }
            None => {
                let key = (sender.map(|s| s.0), msg.topic.clone());
                if !q.channels_out.contains_key(&key) && q.channels_out.len() >= MAX_OUT_CHANNELS {
                    stats.data_messages_dropped += 1;
                    return false;
                }
                let out = q.channels_out.entry(key).or_insert_with(|| {
                    let id = q.rtc.direct_api().create_data_channel(data::per_sender_channel(msg, sender.map(|s| s.1)));
                    OutChannel { id, open: false, pending: VecDeque::new() }
                });
                if out.open {
                    if let Some(mut ch) = q.rtc.channel(out.id) {
                        let _ = ch.write(msg.binary, &msg.payload);
                    }
                } else {
                    if out.pending.len() == MAX_PENDING_MESSAGES {
                        out.pending.pop_front();
                    }
                    out.pending.push_back((msg.binary, msg.payload.clone()));
                }
            }
        }
        true
    }

    fn remove_peer(&mut self, now: Instant, id: ParticipantId, reason: LeaveReason) {
        let Some(mut peer) = self.peers.remove(&id) else { return };
        let _ = guard("disconnect", || peer.rtc.disconnect());
        self.by_source.retain(|_, p| *p != id);
        // Its subscriptions.
        for slot in &peer.slots {
            if let Some(t) = slot.track.and_then(|t| self.tracks.get_mut(&t)) {
                t.subscribers.retain(|s| s.0 != id);
                self.dynacast_dirty.insert(t.info.id);
            }
        }
        for &track in &peer.published {
            self.unpublish(track);
        }
        // Channels others had for its messages.
        for other in self.peers.values_mut() {
            let keys: Vec<_> = other.channels_out.keys().filter(|k| k.0 == Some(id)).cloned().collect();
            for k in keys {
                if let Some(c) = other.channels_out.remove(&k)
                    && guard("close channel", || other.rtc.direct_api().close_data_channel(c.id)).is_err()
                {
                    other.broken = true;
                }
            }
        }
        let last_connection = !self.peers.values().any(|p| p.participant == peer.participant);
        self.forget_grants_of(id, last_connection.then_some(peer.participant));
        if let Some(r) = self.rooms.get_mut(&peer.room) {
            r.participants.retain(|p| *p != id);
            if last_connection {
                r.speakers.remove(peer.participant);
            }
            if r.participants.is_empty() {
                r.empty_since = Some(now);
            }
        }
        let room = peer.room.clone();
        self.events.push_back(SfuEvent::ConnectionClosed { room: room.clone(), connection: id, reason });
        if last_connection {
            self.events.push_back(SfuEvent::ParticipantLeft {
                room: room.clone(),
                participant: peer.participant,
                identity: peer.identity,
                reason,
            });
        }
        let others: Vec<ParticipantId> = self.peers.keys().copied().collect();
        for o in others {
            self.mark(o);
        }
        self.fill_slots(now, &room);
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

/// How an SDP offer or answer failed to apply.
enum NegotiationFailure {
    Refused(RtcError),
    /// str0m asserted (e.g. "Pt locked multiple times" on offers whose fmtp lines are gone).
    Panicked,
}

impl From<NegotiationFailure> for SfuError {
    fn from(e: NegotiationFailure) -> Self {
        match e {
            NegotiationFailure::Refused(e) => SfuError::Negotiation(e.to_string()),
            NegotiationFailure::Panicked => SfuError::Negotiation("the offer could not be negotiated".into()),
        }
    }
}

/// Applies SDP through str0m, which asserts on some inputs a client controls: one client
/// must not be able to take the router, and every room with it, down.
fn negotiate<T>(f: impl FnOnce() -> Result<T, RtcError>) -> Result<T, NegotiationFailure> {
    match guard("negotiation", f) {
        Ok(r) => r.map_err(NegotiationFailure::Refused),
        Err(Panicked) => Err(NegotiationFailure::Panicked),
    }
}

/// How many distinct remote candidates an SDP carries: browsers repeat a bundle's candidates
/// in every m-section, and those count once (what [`MAX_REMOTE_CANDIDATES`] limits).
pub fn distinct_candidates(sdp: &str) -> usize {
    sdp.lines().filter_map(|l| l.trim().strip_prefix("a=candidate:")).collect::<HashSet<&str>>().len()
}

/// The codec a client sends on `mid` as a MIME type: its first payload type there (the one it
/// prefers) among those negotiated.
fn negotiated_mime(rtc: &Rtc, mid: Mid, kind: MediaKind) -> String {
    let pt = rtc.media(mid).and_then(|m| m.remote_pts().first().copied());
    let codec = pt.and_then(|pt| rtc.codec_config().iter().find(|p| p.pt() == pt).map(|p| p.spec().codec));
    let kind = if kind == MediaKind::Audio { "audio" } else { "video" };
    codec.map(|c| format!("{kind}/{c}")).unwrap_or_default()
}

/// What the router reads from a client's offer itself, before str0m takes it.
#[derive(Debug, Default, PartialEq)]
struct OfferFacts {
    /// Distinct remote candidates, at most [`MAX_REMOTE_CANDIDATES`].
    candidates: usize,
    /// The ICE username fragment.
    ufrag: Option<String>,
    /// The client's track id per mid, from `a=msid` (or `a=ssrc:… msid:`).
    tracks: HashMap<String, String>,
}

impl OfferFacts {
    fn read(sdp: &str) -> Result<OfferFacts, SfuError> {
        let candidates = distinct_candidates(sdp);
        if candidates > MAX_REMOTE_CANDIDATES {
            return Err(SfuError::LimitExceeded("ICE candidates"));
        }
        let lines = || sdp.lines().map(str::trim);
        let ufrag = lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).map(str::to_string);
        let mut tracks = HashMap::new();
        let (mut mid, mut track): (Option<&str>, Option<&str>) = (None, None);
        let mut section_done = |mid: Option<&str>, track: Option<&str>| {
            if let (Some(m), Some(t)) = (mid, track) {
                tracks.insert(m.to_string(), t.to_string());
            }
        };
        for l in lines() {
            if l.starts_with("m=") {
                section_done(mid.take(), track.take());
            } else if let Some(m) = l.strip_prefix("a=mid:") {
                mid = Some(m.trim());
            } else if let Some(v) = l.strip_prefix("a=msid:") {
                track = v.split_whitespace().nth(1).or(track);
            } else if let Some(v) = l.strip_prefix("a=ssrc:") {
                // `a=ssrc:<ssrc> msid:<stream> <track>`: only where the m-line has no a=msid.
                let msid = v.split_once(' ').and_then(|(_, a)| a.strip_prefix("msid:"));
                if track.is_none() {
                    track = msid.and_then(|m| m.split_whitespace().nth(1));
                }
            }
        }
        section_done(mid, track);
        Ok(OfferFacts { candidates, ufrag, tracks })
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

/// The parser's message without the memory address it embeds ("at PointerOffset(0x…)"),
/// on one line: clients see it.
fn sdp_error_text(raw: &str) -> String {
    let text: Vec<&str> = raw.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let text = text.join("; ");
    match (text.find(" at PointerOffset("), text.find(')')) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &text[..a], &text[b + 1..]),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_offer_counts_each_candidate_once() {
        // Bundled m-sections repeat the same candidates.
        let line = "a=candidate:1 1 udp 2113937151 10.0.0.1 5000 typ host\r\n";
        let sdp = format!("v=0\r\na=ice-ufrag:u1\r\nm=audio 9 x\r\n{line}m=video 9 x\r\n{line}");
        let facts = super::OfferFacts::read(&sdp).unwrap();
        assert_eq!((facts.candidates, facts.ufrag.as_deref()), (1, Some("u1")));
        let many: String = (0..=super::MAX_REMOTE_CANDIDATES)
            .map(|n| format!("a=candidate:{n} 1 udp 1 10.0.0.1 {} typ host\r\n", 5000 + n))
            .collect();
        assert!(matches!(super::OfferFacts::read(&many), Err(super::SfuError::LimitExceeded(_))));
    }

    #[test]
    fn an_offer_names_the_clients_track_per_mid_whatever_its_stream() {
        let sdp = "v=0\r\nm=audio 9 x\r\na=mid:0\r\na=msid:- TR_native\r\n\
                   m=video 9 x\r\na=mid:1\r\na=ssrc:1 cname:c\r\na=ssrc:1 msid:s1 from-ssrc\r\n\
                   m=audio 9 x\r\na=mid:2\r\na=msid:s2 browser\r\na=ssrc:2 msid:s2 ignored\r\n\
                   m=application 9 x\r\na=mid:3\r\n";
        let tracks = super::OfferFacts::read(sdp).unwrap().tracks;
        let expected: std::collections::HashMap<String, String> =
            [("0", "TR_native"), ("1", "from-ssrc"), ("2", "browser")].map(|(m, t)| (m.into(), t.into())).into();
        assert_eq!(tracks, expected);
    }

    #[test]
    fn sdp_errors_hide_addresses() {
        let raw = "SDP parse: Parse error at PointerOffset(0x7f0228001c90)\nUnexpected `g`\nExpected `v`\n";
        assert_eq!(super::sdp_error_text(raw), "SDP parse: Parse error; Unexpected `g`; Expected `v`");
    }
}
