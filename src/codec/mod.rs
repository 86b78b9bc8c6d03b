//! Audio codecs: Opus as tracks carry it, resampling between 48 and 16 kHz, and the AIC
//! neural compression stage's settings (see docs/aic.md).

pub mod aic;
pub mod device;
pub mod modes;
pub mod opus;
pub mod resample;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("opus: {0}")]
    Opus(String),
    #[error("a frame must have {want} samples, not {got}")]
    FrameSize { want: usize, got: usize },
}
