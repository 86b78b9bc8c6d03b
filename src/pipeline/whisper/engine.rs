//! One Whisper model loaded in candle, and greedy decoding of up to 30 s of speech without
//! timestamps, the encoder reading the utterance rather than a whole 30 s window: what a
//! caption needs. Long-form tricks (seeking, temperature fallback) are
//! not needed: the speech tap hands over one utterance at a time.

use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_nn::ops::log_softmax;
use candle_transformers::models::whisper::{self as m, Config, HOP_LENGTH, N_FRAMES, N_SAMPLES, audio};

use super::tokens::Vocabulary;
use super::{WhisperError, mel};

/// Silence after the speech that the encoder reads (mel frames, 10 ms each). Whisper was
/// trained on 30 s windows, but its encoder's work grows with the window: reading an utterance
/// plus 3 s instead of 30 s took tiny.en from RTF 0.38 to 0.12 on 2 cores with no loss of
/// accuracy on our English set (WER 1.7 % → 0.6 %, benches/pipeline). With 1 s, base's
/// translation of German espeak speech went wrong.
const CONTEXT_PAD_FRAMES: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Text in the language spoken.
    Transcribe,
    /// English text, whatever the language spoken (multilingual models only).
    Translate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// The language spoken: as asked, detected, or `en` for English-only models.
    pub language: String,
    /// Mean log-probability of the text's tokens: Whisper's own confidence.
    pub avg_logprob: f64,
    /// Probability of the no-speech token at the start: high for noise and silence.
    pub no_speech_prob: f64,
}

impl Transcript {
    /// Whisper's rule for skipping a segment as silence (likely no speech, and the decoder
    /// unsure of what it read into it), and one more: a no-speech probability above 0.9 is
    /// silence whatever the confidence, since Whisper reads a confident "you" into quiet.
    pub fn is_silence(&self) -> bool {
        self.text.is_empty()
            || self.no_speech_prob > 0.9
            || (self.no_speech_prob > m::NO_SPEECH_THRESHOLD && self.avg_logprob < m::LOGPROB_THRESHOLD)
    }

    /// The confidence stored with transcripts, 0 to 1: the mean token probability.
    pub fn confidence(&self) -> f64 {
        self.avg_logprob.exp().clamp(0.0, 1.0)
    }
}

/// Greedy decoding can fall into a loop on short or odd audio ("Activated. Activated. …"):
/// when the text ends in the same run of tokens repeated (three times for runs of 3 tokens or
/// more, more often for shorter ones, so "no, no, no" is still speech), the length to keep:
/// the text up to the first of them, and that one.
fn looping(text: &[u32]) -> Option<usize> {
    let n = text.len();
    (1..=n / 3).find_map(|p| {
        let repeats = 3.max(9usize.div_ceil(p));
        let last = &text[n - p..];
        (n >= repeats * p && (2..=repeats).all(|k| text[n - k * p..n - (k - 1) * p] == *last))
            .then(|| n - (repeats - 1) * p)
    })
}

pub struct Whisper {
    model: m::model::Whisper,
    vocab: Vocabulary,
    filters: Vec<f32>,
    device: Device,
    multilingual: bool,
    /// Added to the logits of every step: `-inf` where a token may never come.
    suppress: Tensor,
    /// Also added at the first step: no empty text, no leading blank.
    suppress_first: Tensor,
}

impl Whisper {
    /// Loads a folder `auralink whisper convert` wrote: `model.safetensors`, `config.json`
    /// and `vocabulary.txt`.
    pub fn load(dir: &Path, device: &Device) -> Result<Whisper, WhisperError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| WhisperError::Missing(format!("{}: {e}", path.display())))
        };
        let config: Config = serde_json::from_str(&read("config.json")?)
            .map_err(|e| WhisperError::Format(format!("config.json: {e}")))?;
        let vocab = Vocabulary::parse(&read("vocabulary.txt")?)?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(WhisperError::Missing(weights.display().to_string()));
        }
        // SAFETY: the file is mapped read-only and not modified while the model lives: the
        // converter writes a new file rather than rewriting one in place.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        let multilingual = vocab.len() >= 51865;
        let model = m::model::Whisper::load(&vb, config.clone())?;
        let mask = |extra: &[u32]| {
            let v: Vec<f32> = (0..config.vocab_size as u32)
                .map(|i| {
                    let special = i > vocab.eot;
                    if special || config.suppress_tokens.contains(&i) || extra.contains(&i) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::new(v.as_slice(), device)
        };
        // 220 is "Ġ", a lone space, in both vocabularies.
        let (suppress, suppress_first) = (mask(&[])?, mask(&[vocab.eot, 220])?);
        Ok(Whisper {
            filters: mel::filters(config.num_mel_bins),
            model,
            vocab,
            device: device.clone(),
            multilingual,
            suppress,
            suppress_first,
        })
    }

    pub fn multilingual(&self) -> bool {
        self.multilingual
    }

    /// Reads up to 30 s of 16 kHz mono speech (more is cut off). `language` is an ISO code
    /// Whisper knows, or `None` to detect it (English for English-only models).
    pub fn transcribe(&mut self, pcm: &[f32], language: Option<&str>, task: Task) -> Result<Transcript, WhisperError> {
        let pcm = &pcm[..pcm.len().min(N_SAMPLES)];
        let cfg = self.model.config.clone();
        let mel = audio::pcm_to_mel(&cfg, pcm, &self.filters);
        let frames = mel.len() / cfg.num_mel_bins;
        // `pcm_to_mel` pads with at least 15 s of silence; the encoder reads the speech and
        // `CONTEXT_PAD_FRAMES` of that (an even count: its second convolution halves it).
        let window = ((pcm.len() / HOP_LENGTH + CONTEXT_PAD_FRAMES).div_ceil(2) * 2).min(N_FRAMES).min(frames);
        let mel = Tensor::from_vec(mel, (1, cfg.num_mel_bins, frames), &self.device)?.narrow(2, 0, window)?;
        let features = self.model.encoder.forward(&mel, true)?;

        let mut prompt = vec![self.vocab.sot];
        let language = if self.multilingual {
            let code = match language {
                Some(code) => code.to_string(),
                None => self.detect(&features)?,
            };
            prompt.push(self.vocab.language(&code).ok_or_else(|| WhisperError::Language(code.clone()))?);
            prompt.push(if task == Task::Translate { self.vocab.translate } else { self.vocab.transcribe });
            code
        } else {
            if task == Task::Translate || language.is_some_and(|l| l != "en") {
                return Err(WhisperError::EnglishOnly);
            }
            "en".to_string()
        };
        prompt.push(self.vocab.no_timestamps);

        // About 3 tokens a second of speech is plenty; the cap stops a decoder that loops.
        let max_tokens = (24 + pcm.len() * 6 / 16_000).min(cfg.max_target_positions / 2);
        let mut tokens = prompt.clone();
        let (mut logprobs, mut no_speech_prob) = (Vec::new(), 0.0);
        for i in 0..max_tokens {
            let input = Tensor::new(tokens.as_slice(), &self.device)?.unsqueeze(0)?;
            let ys = self.model.decoder.forward(&input, &features, i == 0)?;
            if i == 0
                && let Some(ns) = self.vocab.no_speech
            {
                let first = self.model.decoder.final_linear(&ys.i((..1, ..1))?)?.i(0)?.i(0)?;
                no_speech_prob = candle_nn::ops::softmax(&first, D::Minus1)?.i(ns as usize)?.to_scalar::<f32>()? as f64;
            }
            let (_, len, _) = ys.dims3()?;
            let logits = self.model.decoder.final_linear(&ys.i((..1, len - 1..))?)?.i(0)?.i(0)?;
            let mask = if i == 0 { &self.suppress_first } else { &self.suppress };
            let logits = logits.broadcast_add(mask)?;
            let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
            logprobs.push(log_softmax(&logits, D::Minus1)?.i(next as usize)?.to_scalar::<f32>()? as f64);
            tokens.push(next);
            if next == self.vocab.eot {
                break;
            }
            if let Some(keep) = looping(&tokens[prompt.len()..]) {
                tokens.truncate(prompt.len() + keep);
                logprobs.truncate(keep);
                break;
            }
        }
        let generated = &tokens[prompt.len()..];
        Ok(Transcript {
            text: self.vocab.decode(generated).trim().to_string(),
            language,
            avg_logprob: logprobs.iter().sum::<f64>() / logprobs.len().max(1) as f64,
            no_speech_prob,
        })
    }

    /// The most likely spoken language: the language token the decoder ranks first after
    /// the start token.
    fn detect(&mut self, features: &Tensor) -> Result<String, WhisperError> {
        let input = Tensor::new(&[self.vocab.sot], &self.device)?.unsqueeze(0)?;
        let ys = self.model.decoder.forward(&input, features, true)?;
        let logits = self.model.decoder.final_linear(&ys.i((..1, ..1))?)?.i(0)?.i(0)?.to_vec1::<f32>()?;
        let best = self
            .vocab
            .languages
            .iter()
            .max_by(|a, b| logits[a.0 as usize].total_cmp(&logits[b.0 as usize]))
            .ok_or_else(|| WhisperError::Format("no language tokens".into()))?;
        Ok(best.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::looping;

    #[test]
    fn loops_are_cut_to_one_round() {
        assert_eq!(looping(&[5, 1, 2, 3, 1, 2, 3, 1, 2, 3]), Some(4));
        assert_eq!(looping(&[5, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]), Some(3));
        assert_eq!(looping(&[7; 9]), Some(1));
        // Short runs need more repeats: "no no no" is speech.
        assert_eq!(looping(&[7, 7, 7]), None);
        assert_eq!(looping(&[1, 2, 1, 2, 1, 2]), None);
        assert_eq!(looping(&[1, 2, 3, 1, 2, 3]), None);
        assert_eq!(looping(&[]), None);
    }
}
