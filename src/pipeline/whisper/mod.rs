//! Whisper speech recognition in candle: the weights PyPI ships (CTranslate2 format)
//! converted to safetensors, the mel front end, the vocabulary, and greedy decoding.

pub mod ct2;
pub mod engine;
pub mod mel;
pub mod tokens;

pub use self::engine::{Task, Transcript, Whisper};

#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    #[error("model file missing: {0} (run scripts/models.sh)")]
    Missing(String),
    #[error("model format: {0}")]
    Format(String),
    #[error("language {0:?} is not one Whisper knows")]
    Language(String),
    #[error("an English-only model cannot transcribe other languages or translate")]
    EnglishOnly,
    #[error("the model panicked")]
    Panicked,
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
