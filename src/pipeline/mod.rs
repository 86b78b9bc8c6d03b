//! Per-track processing off the media path. The router copies a track's Opus frames into a
//! bounded channel (see `sfu::tap`); a worker thread per track decodes them, conceals gaps,
//! and hands 20 ms of 48 kHz audio to each stage in order. A stage that is slow makes the
//! channel fill up, and the router drops and counts frames instead of waiting.

pub mod aic;
mod worker;

pub use self::worker::{PcmFrame, PipelineStats, Stage, TrackPipeline, spawn};

/// Tapped frames a track's pipeline may hold before the router drops new ones: one second.
pub const QUEUE_FRAMES: usize = 50;
