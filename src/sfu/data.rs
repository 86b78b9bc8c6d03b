//! Data channel messages as the router moves them between sessions that frame them
//! differently: raw bytes on per-sender channels (WHIP/WHEP), or a signaling protocol's own
//! envelope (LiveKit's `DataPacket`) supplied as a [`DataCodec`].

use std::fmt::Debug;

use str0m::channel::ChannelConfig;
use str0m::channel::Reliability;

use crate::ids::{Identity, ParticipantId};

/// One message on its way from a sender to the other sessions of a room.
#[derive(Debug, Clone, PartialEq)]
pub struct DataMessage {
    pub reliable: bool,
    /// Sent as binary (not text) by a raw client; envelopes are always binary.
    pub binary: bool,
    /// The channel label (raw sessions) or the envelope's topic.
    pub topic: String,
    pub payload: Vec<u8>,
    /// Identities to deliver to; empty means everyone.
    pub destinations: Vec<Identity>,
    /// The message in the sender's own envelope, tagged with the codec that made it, so
    /// recipients speaking the same protocol get everything it carried.
    pub native: Option<(&'static str, Vec<u8>)>,
    /// The sender's number for a reliable message (LiveKit's `DataPacket.sequence`, counting
    /// up from 1): a client that resumes resends what it is not sure arrived, and the router
    /// relays each number once.
    pub sequence: Option<u32>,
}

/// The most a message sent through the API may carry: LiveKit's documented limit for one
/// data packet, which every client's SCTP stack takes in one message.
pub const MAX_SERVER_MESSAGE: usize = 15 * 1024;

impl DataMessage {
    /// A message the server sends (an API call), not relayed from a client.
    pub fn from_server(payload: Vec<u8>, topic: String, reliable: bool, destinations: Vec<Identity>) -> Self {
        DataMessage { reliable, binary: true, topic, payload, destinations, native: None, sequence: None }
    }
}

/// A signaling protocol's framing of data messages.
pub trait DataCodec: Send + Sync + Debug {
    /// Reads a message the client sent on its channel `label`; `None` drops it.
    fn decode(&self, label: &str, reliable: bool, data: &[u8]) -> Option<DataMessage>;

    /// Frames `msg` from `sender` (identity and participant; `None`: the server) for this
    /// client: the label of the client's channel to send it on, and the bytes. `None` when
    /// this client cannot take it.
    fn encode(&self, msg: &DataMessage, sender: Option<(&Identity, ParticipantId)>) -> Option<(String, Vec<u8>)>;
}

/// Whether a channel configuration retransmits until delivery.
pub fn is_reliable(config: &ChannelConfig) -> bool {
    config.reliability == Reliability::Reliable
}

/// The configuration of a channel the router opens to carry `msg` from `sender` to a raw
/// session: same label, same reliability, the sender's identity as the protocol (empty for
/// the server).
pub fn per_sender_channel(msg: &DataMessage, sender: Option<&Identity>) -> ChannelConfig {
    ChannelConfig {
        label: msg.topic.clone(),
        ordered: msg.reliable,
        reliability: if msg.reliable { Reliability::Reliable } else { Reliability::MaxRetransmits { retransmits: 0 } },
        negotiated: None,
        protocol: sender.map(|s| s.to_string()).unwrap_or_default(),
    }
}
