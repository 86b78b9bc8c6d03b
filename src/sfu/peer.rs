//! One participant session: a str0m `Rtc` and what the router keeps beside it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use str0m::Rtc;
use str0m::change::SdpPendingOffer;
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::media::{MediaKind, Mid};

use super::data::DataCodec;
use super::forward::Forwarder;
use super::layer_select::Quality;
use super::permissions::Permissions;
use super::quality::Quality as ConnectionQuality;
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};

/// How a session's m-lines change after the first offer and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// They don't: tracks are forwarded on the receiving m-lines of the client's offer (WHEP).
    Fixed,
    /// The server offers an m-line per track it adds (LiveKit's subscriber connection).
    ServerOffers,
    /// Only the client offers. Tracks go on its receiving m-lines; when it has too few, or an
    /// m-line now carries something else, the router asks it to offer again with
    /// `SfuEvent::SectionsNeeded`, and `Sfu::answer_offer` describes each m-line in the
    /// answer (LiveKit's single peer connection).
    ClientOffers,
}

/// Which tracks a session receives automatically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeFilter {
    /// Every track in the room (auto-subscribe).
    All,
    /// Only tracks of this identity (WHEP on `/whep/{room}/{identity}`).
    Only(Identity),
    /// Nothing until asked for explicitly.
    None,
}

/// A sending m-line of a session: forwards at most one track at a time.
#[derive(Debug)]
pub(crate) struct Slot {
    pub mid: Mid,
    pub kind: MediaKind,
    pub track: Option<TrackId>,
    pub fwd: Forwarder,
    pub max_quality: Quality,
    /// The track the client was last told this m-line carries (client-offering sessions).
    pub announced: Option<TrackId>,
}

impl Slot {
    pub fn new(mid: Mid, kind: MediaKind) -> Self {
        Slot { mid, kind, track: None, fwd: Forwarder::new(kind), max_quality: Quality::High, announced: None }
    }
}

/// A data channel the router opened towards this session for one sender and label.
#[derive(Debug)]
pub(crate) struct OutChannel {
    pub id: ChannelId,
    pub open: bool,
    pub pending: VecDeque<(bool, Vec<u8>)>,
}

/// Messages held per out channel while it opens; beyond this, the oldest are dropped.
pub(crate) const MAX_PENDING_MESSAGES: usize = 64;

pub(crate) struct Peer {
    /// This session.
    pub id: ParticipantId,
    /// The participant it belongs to: its own id, or the first session of a client that
    /// uses several peer connections (LiveKit's publisher and subscriber).
    pub participant: ParticipantId,
    pub room: RoomName,
    pub identity: Identity,
    pub permissions: Permissions,
    pub subscribe: SubscribeFilter,
    pub negotiation: Negotiation,
    /// An offer of the client's has been answered (client-offering sessions).
    pub offered: bool,
    /// `SfuEvent::SectionsNeeded` went out, asking for this many more lines, and the client
    /// has not acted on it yet.
    pub sections_requested: Option<u32>,
    /// Receiving lines after the last answer (client-offering sessions).
    pub lines_offered: usize,
    pub rtc: Rtc,
    /// When the `Rtc` wants `Input::Timeout` next.
    pub next_timeout: Instant,
    pub disconnected_since: Option<Instant>,
    /// When the session was created: it must connect within the connect timeout.
    pub joined_at: Instant,
    /// ICE and DTLS came up at least once.
    pub connected: bool,
    /// str0m panicked in a call whose caller could not end the session there: its state is
    /// not to be trusted, and the next timer ends it.
    pub broken: bool,
    /// The highest reliable data message number relayed from this connection.
    pub data_sequence: u32,
    /// Remote candidates of the current ICE generation (in offers and trickled), at most
    /// `MAX_REMOTE_CANDIDATES`.
    pub remote_candidates: usize,
    /// The client's ICE username fragment in its last offer: a new one restarts the count.
    pub remote_ufrag: Option<String>,
    /// The client's track id per mid in its last offer (`a=msid`), which it announces tracks by.
    pub client_tracks: HashMap<String, String>,
    pub estimate_bps: Option<u64>,
    pub slots: Vec<Slot>,
    pub published: Vec<TrackId>,
    pub channels_in: HashMap<ChannelId, ChannelConfig>,
    /// By sending session (`None`: the server) and label.
    pub channels_out: HashMap<(Option<ParticipantId>, String), OutChannel>,
    /// Our offer awaiting the client's answer, with the sending m-lines it adds per track.
    pub pending: Option<(SdpPendingOffer, Vec<(Mid, TrackId)>)>,
    /// Tracks waiting for an m-line: in the server's next offer, or in the client's.
    pub to_add: Vec<TrackId>,
    /// Sending m-lines to stop in the next offer (their track went away).
    pub to_stop: Vec<Mid>,
    /// The next offer restarts ICE (a LiveKit client resuming its session).
    pub ice_restart: bool,
    /// Tracks the client announced before their m-line arrived, by the msid track id.
    pub announced: HashMap<String, TrackId>,
    /// How this client frames data messages; `None`: raw bytes on per-sender channels.
    pub data_codec: Option<Arc<dyn DataCodec>>,
    /// Channels the next server offer opens.
    pub channels_to_open: Vec<ChannelConfig>,
    /// Channels the server opened through SDP; they are not the client's.
    pub own_channels: Vec<ChannelId>,
    /// From the last stats str0m reported; `None` until the first.
    pub quality: Option<ConnectionQuality>,
}

impl Peer {
    pub fn slot_mut(&mut self, mid: Mid) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.mid == mid)
    }

    /// A slot that carries nothing and that the client knows carries nothing.
    pub fn free_slot(&self, kind: MediaKind) -> Option<Mid> {
        self.slots.iter().find(|s| s.track.is_none() && s.announced.is_none() && s.kind == kind).map(|s| s.mid)
    }

    /// The slot forwarding `track`, if any.
    pub fn slot_for(&mut self, track: TrackId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.track == Some(track))
    }

    /// Forgets our unanswered offer (str0m applies nothing until the answer); its tracks go
    /// into the next one.
    pub fn drop_pending_offer(&mut self) {
        if let Some((_, planned)) = self.pending.take() {
            self.to_add.extend(planned.into_iter().map(|p| p.1));
        }
    }

    /// Whether this session already forwards, or is about to offer, `track`.
    pub fn has(&self, track: TrackId) -> bool {
        self.slots.iter().any(|s| s.track == Some(track))
            || self.to_add.contains(&track)
            || self.pending.as_ref().is_some_and(|(_, planned)| planned.iter().any(|p| p.1 == track))
    }

    /// Whether this session takes `owner`'s track without being asked.
    pub fn wants(&self, owner: &Identity) -> bool {
        if !self.permissions.subscribe || owner == &self.identity {
            return false;
        }
        match &self.subscribe {
            SubscribeFilter::All => true,
            SubscribeFilter::Only(i) => i == owner,
            SubscribeFilter::None => false,
        }
    }
}
