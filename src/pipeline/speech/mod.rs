//! Speech taps: utterances cut from a track's audio ([`segmenter`]), read by Whisper on a
//! node-wide pool of workers ([`workers`]), and handed on as captions ([`Caption`]) to be
//! sent to the room and stored. A track's stage never waits for Whisper: when the workers
//! are busy, previews are skipped and utterances dropped, each counted.

pub mod segmenter;
pub mod stage;
pub mod translate;
pub mod wer;
pub mod workers;

use serde::{Deserialize, Serialize};

pub use self::stage::SpeechStage;
pub use self::workers::{SpeechStats, SpeechWorkers};

/// The languages Whisper knows, in its vocabulary's order.
pub const LANGUAGES: [&str; 99] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi",
    "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml",
    "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs",
    "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am",
    "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su",
];

/// English-only and small: for rooms that speak English and want it as text.
pub const MODEL_ENGLISH: &str = "tiny.en";
/// Multilingual: language detection, other languages, translation to English.
pub const MODEL_MULTILINGUAL: &str = "base";

/// A room's transcription settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeechConfig {
    pub enabled: bool,
    /// What participants speak; `None` detects it per utterance.
    pub language: Option<String>,
    /// Captions in this language instead of the one spoken.
    pub translate_to: Option<String>,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig { enabled: false, language: Some("en".into()), translate_to: None }
    }
}

impl SpeechConfig {
    /// The model these settings need: the English one only when nothing else is asked of it.
    pub fn model(&self) -> &'static str {
        if self.language.as_deref() == Some("en") && self.translate_to.is_none() {
            MODEL_ENGLISH
        } else {
            MODEL_MULTILINGUAL
        }
    }
}

/// What the room's data channel carries and transcripts store: one utterance's text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Caption {
    #[serde(skip)]
    pub room: crate::ids::RoomName,
    pub participant: String,
    pub track: String,
    /// Wall-clock ms of the utterance's first and past-the-last sample.
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
    /// The caption's language (the target when translated).
    pub language: String,
    /// The language spoken, when the caption is a translation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_language: Option<String>,
    /// `false`: a preview of an utterance still going on, replaced by the next caption.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Mean token probability, 0 to 1.
    pub confidence: f64,
}

/// Where a stage's captions go (the API layer sends and stores them).
pub trait CaptionSink: Send + Sync {
    fn deliver(&self, caption: Caption);
}
