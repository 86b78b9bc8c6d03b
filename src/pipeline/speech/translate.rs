//! Translation of caption text into languages Whisper does not translate to (it only
//! translates into English). No translator ships with the server: the agents' LLM
//! providers will back this; until one is configured, such targets are refused.

/// Turns text from one language into another (ISO 639-1 codes).
pub trait TextTranslator: Send + Sync {
    fn translate(&self, text: &str, from: &str, to: &str) -> Result<String, String>;
}
