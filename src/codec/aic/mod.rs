//! AIC, the neural speech codec: its bitstream, its analysis transform, the network, and
//! how it is trained. See docs/aic.md.

mod bits;
pub mod bitstream;
pub mod enhance;
pub mod guard;
mod high_band;
pub mod lpc;
mod lsf;
pub mod mdct;
pub mod model;
pub mod quality;
pub mod stft;
pub mod track;
pub mod train;
pub mod train_enhance;
pub mod train_vocoder;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("AIC works on whole 20 ms frames (multiples of 320 samples at 16 kHz), not {0} samples")]
    FrameSize(usize),
    #[error("AIC frames must carry {stages} codes below 4096 each")]
    Codes { stages: usize },
    #[error("training data: {0}")]
    Data(String),
    #[error(transparent)]
    Bitstream(#[from] bitstream::BitstreamError),
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
}
