//! Per-track processing off the media path. The router copies a track's Opus frames into a
//! bounded channel (see `sfu::tap`); a worker thread per track decodes them, conceals gaps,
//! and hands 20 ms of 48 kHz audio to each stage in order. A stage that is slow makes the
//! channel fill up, and the router drops and counts frames instead of waiting.

pub mod aic;
pub mod control;
pub mod loopback;
pub mod speech;
pub mod whisper;
mod worker;

pub use self::worker::{PcmFrame, PipelineStats, Stage, TrackPipeline, spawn};

/// Tapped frames a track's pipeline may hold before the router drops new ones: one second.
pub const QUEUE_FRAMES: usize = 50;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::sfu::{Offer, TapFrame, TapSink};

/// A track's tap for a stage its room can take off again: it closes itself at the first frame
/// after `revoked` is set, so the track's pipeline thread ends instead of decoding for nothing.
/// A flag per tap rather than the room's settings: a stage turned off and on again while the
/// track is silent must leave one tap, not two.
pub struct GatedTap {
    pub tx: mpsc::Sender<TapFrame>,
    pub revoked: Arc<AtomicBool>,
}

impl TapSink for GatedTap {
    fn offer(&mut self, frame: TapFrame) -> Offer {
        if self.revoked.load(Ordering::Relaxed) {
            return Offer::Closed;
        }
        self.tx.offer(frame)
    }
}
