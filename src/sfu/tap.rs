//! Copies of a track's audio for processing off the media path (transcription, the AIC
//! stage). The router offers each frame to a sink that must answer at once: a consumer that
//! is behind loses the frame, and forwarding never waits for it.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::ids::{Identity, ParticipantId, RoomName, TrackId};

/// One received audio frame (an Opus packet, 48 kHz RTP clock), as the publisher sent it.
#[derive(Debug, Clone)]
pub struct TapFrame {
    pub room: RoomName,
    pub track: TrackId,
    pub participant: ParticipantId,
    pub identity: Identity,
    /// RTP timestamp, extended past wrap-around (48 kHz for Opus).
    pub rtp_time: u64,
    pub received: Instant,
    pub data: Arc<[u8]>,
}

/// What a sink did with an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// The consumer is behind: the frame is dropped and counted.
    Full,
    /// The consumer is gone: the tap is removed.
    Closed,
}

/// Where tapped frames go. `offer` must not block.
pub trait TapSink: Send {
    fn offer(&mut self, frame: TapFrame) -> Offer;
}

impl TapSink for mpsc::Sender<TapFrame> {
    fn offer(&mut self, frame: TapFrame) -> Offer {
        match self.try_send(frame) {
            Ok(()) => Offer::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}
