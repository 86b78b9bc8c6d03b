//! Whisper speech recognition in candle: the weights PyPI ships (CTranslate2 format)
//! converted to safetensors, the mel front end, the vocabulary, and greedy decoding.

pub mod ct2;
pub mod engine;
pub mod mel;
pub mod tokens;

pub use self::engine::{Task, Transcript, Whisper};

/// What the speech workers run: candle's Whisper ([`Whisper`]) is the backend built; a
/// second (whisper.cpp) would implement this too (docs/speech.md).
pub trait Backend: Send {
    /// Reads up to 30 s of 16 kHz mono speech; `language` `None` detects it.
    fn transcribe(&mut self, pcm: &[f32], language: Option<&str>, task: Task) -> Result<Transcript, WhisperError>;
}

impl Backend for Whisper {
    fn transcribe(&mut self, pcm: &[f32], language: Option<&str>, task: Task) -> Result<Transcript, WhisperError> {
        Whisper::transcribe(self, pcm, language, task)
    }
}

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
