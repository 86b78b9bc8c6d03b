//! Per-track processing off the media path. The router copies a track's Opus frames into a
//! bounded channel (see `sfu::tap`); a worker thread per track decodes them, conceals gaps,
//! and hands 20 ms of 48 kHz audio to each stage in order. A stage that is slow makes the
//! channel fill up, and the router drops and counts frames instead of waiting.

pub mod aic;
pub mod speech;
pub mod whisper;
mod worker;

pub use self::worker::{PcmFrame, PipelineStats, Stage, TrackPipeline, spawn};

use tokio::sync::{mpsc, watch};

use crate::sfu::{Offer, TapFrame, TapSink};

/// A track's tap for a stage its room can turn off: it closes itself at the first frame
/// after the settings say so, so the track's pipeline thread ends instead of decoding for
/// nothing.
pub struct GatedTap<C> {
    pub tx: mpsc::Sender<TapFrame>,
    pub settings: watch::Receiver<C>,
    pub open: fn(&C) -> bool,
}

impl<C: Send + Sync> TapSink for GatedTap<C> {
    fn offer(&mut self, frame: TapFrame) -> Offer {
        if !(self.open)(&self.settings.borrow()) {
            return Offer::Closed;
        }
        self.tx.offer(frame)
    }
}

/// Tapped frames a track's pipeline may hold before the router drops new ones: one second.
pub const QUEUE_FRAMES: usize = 50;
