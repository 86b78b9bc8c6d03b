//! Cuts a track's 16 kHz audio into utterances for Whisper (sans-IO: frames and their times
//! in, segments out). Voice activity is frame energy against a noise floor, the quietest
//! frame of the last few seconds (speech has pauses between words; steady noise has none); an utterance starts after a few loud frames (with some audio from
//! before, so first consonants are kept) and ends after a pause. One that runs too long is
//! cut, and the next piece starts with the last second of it again, so a word cut in two is
//! whole in one of them (the caption text drops the repeated words, see [`merge`]).

use std::collections::VecDeque;

/// 20 ms at 16 kHz.
pub const FRAME: usize = 320;
const FRAME_MS: i64 = 20;
/// Loud frames in a row that start an utterance.
const ONSET_FRAMES: usize = 3;
/// Quiet that ends one.
pub const PAUSE_MS: i64 = 600;
/// Audio kept from before the onset.
const PRE_ROLL_FRAMES: usize = 15;
/// Longest piece handed to Whisper (it reads at most 30 s).
pub const MAX_SEGMENT_MS: i64 = 15_000;
/// Repeated at the start of the next piece after a cut.
pub const OVERLAP_MS: i64 = 1_000;
/// Speech stands this far above the noise floor…
const ABOVE_FLOOR_DB: f32 = 12.0;
/// …and above this absolute level (dBFS), so digital silence is never speech.
const MIN_SPEECH_DB: f32 = -50.0;
/// Frames the noise floor is the minimum of: 3 s.
const FLOOR_FRAMES: usize = 150;
/// Shorter utterances are clicks and coughs, not words.
const MIN_SPEECH_MS: i64 = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// When it starts (with the pre-roll) and when its speech ends (the pause after it is
    /// in `pcm` but not counted), on the caller's clock (ms).
    pub start_ms: i64,
    pub end_ms: i64,
    pub pcm: Vec<f32>,
    /// `false`: speech goes on, this is a preview of the utterance so far.
    pub complete: bool,
    /// It starts with the end of the piece before it (cut for length): words it repeats are
    /// left out of its text (see [`merge`]).
    pub continues: bool,
}

#[derive(Debug)]
pub struct Segmenter {
    /// Recent frames while quiet (the pre-roll), or the utterance so far.
    pcm: Vec<f32>,
    start_ms: i64,
    in_speech: bool,
    loud_run: usize,
    quiet_ms: i64,
    speech_ms: i64,
    /// End of the last loud frame.
    speech_end_ms: i64,
    /// Levels of recent frames (dB), oldest first.
    levels: VecDeque<f32>,
    /// The utterance in progress began with a cut's overlap.
    continues: bool,
    /// A preview is due once the utterance is this long.
    next_partial_ms: i64,
    partial_every_ms: i64,
}

fn level_db(frame: &[f32]) -> f32 {
    let energy = frame.iter().map(|x| x * x).sum::<f32>() / frame.len().max(1) as f32;
    10.0 * (energy + 1e-10).log10()
}

impl Segmenter {
    /// `partial_every_ms`: how often a preview of an utterance in progress comes out (0: never).
    pub fn new(partial_every_ms: i64) -> Segmenter {
        Segmenter {
            pcm: Vec::new(),
            start_ms: 0,
            in_speech: false,
            loud_run: 0,
            quiet_ms: 0,
            speech_ms: 0,
            speech_end_ms: 0,
            continues: false,
            levels: VecDeque::with_capacity(FLOOR_FRAMES),
            next_partial_ms: 0,
            partial_every_ms,
        }
    }

    /// Takes 20 ms of audio (`FRAME` samples) starting at `time_ms`.
    pub fn handle_frame(&mut self, frame: &[f32], time_ms: i64) -> Option<Segment> {
        let db = level_db(frame);
        if self.levels.len() == FLOOR_FRAMES {
            self.levels.pop_front();
        }
        self.levels.push_back(db);
        let floor = self.levels.iter().copied().fold(f32::INFINITY, f32::min);
        let loud = db > (floor + ABOVE_FLOOR_DB).max(MIN_SPEECH_DB);
        if !self.in_speech {
            if self.pcm.is_empty() {
                self.start_ms = time_ms;
            }
            self.pcm.extend_from_slice(frame);
            let keep = PRE_ROLL_FRAMES * FRAME;
            if self.pcm.len() > keep {
                let cut = self.pcm.len() - keep;
                self.pcm.drain(..cut);
                self.start_ms = time_ms + FRAME_MS - (keep / FRAME) as i64 * FRAME_MS;
            }
            self.loud_run = if loud { self.loud_run + 1 } else { 0 };
            if self.loud_run >= ONSET_FRAMES {
                self.in_speech = true;
                self.quiet_ms = 0;
                self.speech_ms = ONSET_FRAMES as i64 * FRAME_MS;
                self.speech_end_ms = time_ms + FRAME_MS;
                self.next_partial_ms = self.partial_every_ms;
            }
            return None;
        }
        self.pcm.extend_from_slice(frame);
        let end_ms = time_ms + FRAME_MS;
        if loud {
            self.quiet_ms = 0;
            self.speech_ms += FRAME_MS;
            self.speech_end_ms = end_ms;
        } else {
            self.quiet_ms += FRAME_MS;
        }
        if self.quiet_ms >= PAUSE_MS {
            return self.finish();
        }
        if end_ms - self.start_ms >= MAX_SEGMENT_MS {
            let overlap = (OVERLAP_MS / FRAME_MS) as usize * FRAME;
            let tail = self.pcm[self.pcm.len().saturating_sub(overlap)..].to_vec();
            let seg = Segment {
                start_ms: self.start_ms,
                end_ms,
                pcm: std::mem::replace(&mut self.pcm, tail),
                complete: true,
                continues: std::mem::replace(&mut self.continues, true),
            };
            self.start_ms = end_ms - OVERLAP_MS;
            self.speech_ms = OVERLAP_MS;
            self.next_partial_ms = self.partial_every_ms;
            return Some(seg);
        }
        let length = end_ms - self.start_ms;
        if self.partial_every_ms > 0 && length >= self.next_partial_ms {
            self.next_partial_ms = length + self.partial_every_ms;
            let pcm = self.pcm.clone();
            return Some(Segment { start_ms: self.start_ms, end_ms, pcm, complete: false, continues: self.continues });
        }
        None
    }

    /// Ends the utterance (a pause, or the track ending): the segment, unless it was too
    /// short to hold a word.
    pub fn finish(&mut self) -> Option<Segment> {
        let was_speech = std::mem::take(&mut self.in_speech) && self.speech_ms >= MIN_SPEECH_MS;
        self.loud_run = 0;
        let pcm = std::mem::take(&mut self.pcm);
        let continues = std::mem::take(&mut self.continues);
        was_speech.then_some(Segment {
            start_ms: self.start_ms,
            end_ms: self.speech_end_ms,
            pcm,
            complete: true,
            continues,
        })
    }
}

/// `next` without the words it repeats from the end of `previous` (a cut's overlap).
pub fn merge<'a>(previous: &str, next: &'a str) -> &'a str {
    let norm = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    let prev: Vec<String> = previous.split_whitespace().map(norm).collect();
    let words: Vec<(usize, &str)> =
        next.split_whitespace().map(|w| (w.as_ptr() as usize - next.as_ptr() as usize, w)).collect();
    // The longest run of words that ends `previous` and starts `next`, at most the 8 a
    // second of overlap can hold.
    let repeated = (1..=words.len().min(prev.len()).min(8))
        .rev()
        .find(|&n| prev[prev.len() - n..].iter().zip(&words[..n]).all(|(a, (_, b))| *a == norm(b)))
        .unwrap_or(0);
    match words.get(repeated) {
        Some((at, _)) if repeated > 0 => &next[*at..],
        _ if repeated > 0 => "",
        _ => next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(level: f32) -> Vec<f32> {
        (0..FRAME).map(|i| level * (i as f32 * 0.2).sin()).collect()
    }

    /// Feeds `(frames, level)` runs, returning the segments with the frame index they came at.
    fn run(seg: &mut Segmenter, runs: &[(usize, f32)]) -> Vec<(usize, Segment)> {
        let mut out = Vec::new();
        let mut i = 0;
        for &(n, level) in runs {
            for _ in 0..n {
                if let Some(s) = seg.handle_frame(&tone(level), i as i64 * FRAME_MS) {
                    out.push((i, s));
                }
                i += 1;
            }
        }
        out
    }

    #[test]
    fn an_utterance_between_pauses() {
        let mut seg = Segmenter::new(0);
        // 1 s of quiet, 2 s of speech, 1 s of quiet.
        let out = run(&mut seg, &[(50, 0.001), (100, 0.3), (50, 0.001)]);
        assert_eq!(out.len(), 1);
        let (at, s) = &out[0];
        assert!(s.complete && !s.continues);
        // Ends one pause after the speech; starts one pre-roll before it.
        assert_eq!(*at, 150 + (PAUSE_MS / FRAME_MS) as usize - 1);
        assert_eq!(s.start_ms, (50 + ONSET_FRAMES - PRE_ROLL_FRAMES) as i64 * FRAME_MS);
        // Ends where the speech does; the pause is in the audio but not in the times.
        assert_eq!(s.end_ms, 150 * FRAME_MS);
        assert_eq!(s.pcm.len() as i64, ((*at as i64 + 1) * FRAME_MS - s.start_ms) / FRAME_MS * FRAME as i64);
    }

    #[test]
    fn clicks_and_silence_are_not_speech() {
        let mut seg = Segmenter::new(0);
        assert!(run(&mut seg, &[(100, 0.0), (5, 0.3), (100, 0.0)]).is_empty());
        // A steady hum is the floor.
        assert!(run(&mut Segmenter::new(0), &[(600, 0.05)]).is_empty());
    }

    #[test]
    fn long_speech_is_cut_with_overlap_and_previews() {
        let mut seg = Segmenter::new(2_000);
        // 20 s of syllables: 200 ms voiced, 40 ms between.
        let mut runs = vec![(20, 0.001)];
        runs.extend([(10, 0.3), (2, 0.001)].repeat(83));
        runs.push((40, 0.001));
        let out = run(&mut seg, &runs);
        let complete: Vec<&Segment> = out.iter().map(|(_, s)| s).filter(|s| s.complete).collect();
        assert!(complete.len() >= 2);
        for s in &complete {
            assert!(s.end_ms - s.start_ms <= MAX_SEGMENT_MS);
        }
        assert_eq!(complete[1].start_ms, complete[0].end_ms - OVERLAP_MS);
        assert!(!complete[0].continues && complete[1].continues);
        let partials: Vec<&Segment> = out.iter().map(|(_, s)| s).filter(|s| !s.complete).collect();
        assert!(partials.len() >= 5, "{}", partials.len());
        assert!(partials.windows(2).all(|w| w[0].start_ms != w[1].start_ms || w[1].end_ms > w[0].end_ms));
    }

    #[test]
    fn merge_drops_the_repeated_words() {
        assert_eq!(merge("the quick brown fox", "Brown fox jumps over"), "jumps over");
        assert_eq!(merge("one two", "three four"), "three four");
        assert_eq!(merge("a b c", "b c"), "");
        assert_eq!(merge("", "hello"), "hello");
    }
}
