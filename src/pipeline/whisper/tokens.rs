//! Whisper's vocabulary as CTranslate2 ships it (`vocabulary.txt`, one token per line in id
//! order, in GPT-2's byte-to-character spelling): ids of the special tokens, and text from
//! token ids. Only decoding is needed: prompts are made of special tokens.

use std::collections::HashMap;

use super::WhisperError;

#[derive(Debug)]
pub struct Vocabulary {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// GPT-2's printable stand-ins for bytes, reversed.
    bytes: HashMap<char, u8>,
    pub eot: u32,
    pub sot: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub no_timestamps: u32,
    pub no_speech: Option<u32>,
    /// Language tokens `<|en|>` … in id order, with their codes.
    pub languages: Vec<(u32, String)>,
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others for
/// characters from U+0100 on, in byte order.
fn byte_chars() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("below U+0200")
            };
            (c, b)
        })
        .collect()
}

impl Vocabulary {
    pub fn parse(text: &str) -> Result<Vocabulary, WhisperError> {
        let tokens: Vec<String> = text.lines().map(str::to_string).collect();
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let id = |t: &str| ids.get(t).copied().ok_or_else(|| WhisperError::Format(format!("vocabulary lacks {t}")));
        let (sot, translate) = (id("<|startoftranscript|>")?, id("<|translate|>")?);
        let languages = (sot + 1..translate)
            .filter_map(|i| {
                let t = &tokens[i as usize];
                Some((i, t.strip_prefix("<|")?.strip_suffix("|>")?.to_string()))
            })
            .collect();
        Ok(Vocabulary {
            eot: id("<|endoftext|>")?,
            sot,
            transcribe: id("<|transcribe|>")?,
            translate,
            no_timestamps: id("<|notimestamps|>")?,
            no_speech: id("<|nospeech|>").or_else(|_| id("<|nocaptions|>")).ok(),
            languages,
            bytes: byte_chars(),
            ids,
            tokens,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn language(&self, code: &str) -> Option<u32> {
        self.ids.get(&format!("<|{code}|>")).copied()
    }

    /// Text of the ordinary tokens among `ids` (special tokens are left out).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&i| i < self.eot)
            .filter_map(|&i| self.tokens.get(i as usize))
            .flat_map(|t| t.chars().filter_map(|c| self.bytes.get(&c).copied()))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_byte_level_tokens() {
        // "Ġ" is the stand-in for a space; "Ã©" the two bytes of "é".
        let mut lines: Vec<String> = vec!["Hello".into(), "Ġw".into(), "orld".into(), "ĠcafÃ©".into()];
        lines.extend(["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>"].map(String::from));
        lines.extend(["<|transcribe|>", "<|notimestamps|>"].map(String::from));
        let v = Vocabulary::parse(&lines.join("\n")).unwrap();
        assert_eq!(v.decode(&[0, 1, 2, 3, 4]), "Hello world café");
        assert_eq!(v.languages, vec![(6, "en".to_string()), (7, "fr".to_string())]);
        assert_eq!(v.language("fr"), Some(7));
        assert!(v.no_speech.is_none());
        assert!(Vocabulary::parse("a\nb").is_err());
    }
}
