//! The speech stage on a track's pipeline: 48 kHz frames down to 16 kHz, cut into
//! utterances, each handed to the Whisper workers without waiting; their text comes back
//! as captions through a [`CaptionSink`].

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::segmenter::{FRAME, PAUSE_MS, Segment, Segmenter, merge};
use super::translate::TextTranslator;
use super::workers::{Job, SpeechWorkers};
use super::{Caption, CaptionSink, SpeechConfig};
use crate::codec::resample::Downsampler;
use crate::ids::RoomName;
use crate::pipeline::whisper::{Task, Transcript};
use crate::pipeline::{PcmFrame, Stage};

/// How often a preview of an utterance in progress is made, when the workers are free.
pub const PARTIAL_EVERY_MS: i64 = 2_000;

pub struct SpeechStage {
    settings: watch::Receiver<SpeechConfig>,
    workers: Arc<SpeechWorkers>,
    sink: Arc<dyn CaptionSink>,
    translator: Option<Arc<dyn TextTranslator>>,
    down: Downsampler,
    pcm: Vec<f32>,
    segmenter: Segmenter,
    /// Reads the wall clock (ms), once: at the first frame.
    clock: Box<dyn Fn() -> i64 + Send>,
    /// The first frame's RTP time and the wall-clock ms it stands for.
    anchor: Option<(u64, i64)>,
    /// Where the next frame is due (ms): a later one comes after a gap (muted, paused).
    next_ms: Option<i64>,
    /// Who speaks (from the first frame), for the utterance in progress when the track ends.
    speaker: Option<Speaker>,
    /// A preview is being read: no second one until it is done.
    partial_busy: Arc<AtomicBool>,
    /// The last final text, so a cut's repeated words are left out of the next.
    last_final: Arc<Mutex<String>>,
}

impl SpeechStage {
    /// `clock`: the wall clock in ms, which caption times are on.
    pub fn new(
        settings: watch::Receiver<SpeechConfig>,
        workers: Arc<SpeechWorkers>,
        sink: Arc<dyn CaptionSink>,
        translator: Option<Arc<dyn TextTranslator>>,
        clock: Box<dyn Fn() -> i64 + Send>,
    ) -> SpeechStage {
        SpeechStage {
            settings,
            workers,
            sink,
            translator,
            down: Downsampler::default(),
            pcm: Vec::with_capacity(2 * FRAME),
            segmenter: Segmenter::new(PARTIAL_EVERY_MS),
            clock,
            anchor: None,
            next_ms: None,
            speaker: None,
            partial_busy: Arc::default(),
            last_final: Arc::default(),
        }
    }

    fn submit(&self, seg: Segment) {
        let Some(Speaker { room, identity, track }) = &self.speaker else { return };
        let stats = &self.workers.stats;
        let config = self.settings.borrow().clone();
        if !config.enabled {
            return;
        }
        if !seg.complete && self.partial_busy.swap(true, Relaxed) {
            stats.partials_skipped.fetch_add(1, Relaxed);
            return;
        }
        // Whisper translates into English only; other targets are translated from the text.
        let task = if config.translate_to.as_deref() == Some("en") { Task::Translate } else { Task::Transcribe };
        let text_target = config.translate_to.clone().filter(|t| t != "en");
        let caption = Caption {
            room: room.clone(),
            participant: identity.to_string(),
            track: track.clone(),
            start_ms: seg.start_ms,
            end_ms: seg.end_ms,
            text: String::new(),
            language: String::new(),
            source_language: None,
            is_final: seg.complete,
            confidence: 0.0,
        };
        let continues = seg.continues;
        let (sink, workers_stats) = (Arc::clone(&self.sink), Arc::clone(stats));
        let (busy, last_final, translator) =
            (Arc::clone(&self.partial_busy), Arc::clone(&self.last_final), self.translator.clone());
        let reply = move |result: Result<Transcript, _>| {
            if !caption.is_final {
                busy.store(false, Relaxed);
            }
            let Ok(t) = result else { return };
            if t.is_silence() {
                workers_stats.silent.fetch_add(1, Relaxed);
                return;
            }
            let mut c = caption;
            c.confidence = t.confidence();
            c.language = t.language.clone();
            c.text = if c.is_final {
                let mut last = last_final.lock().expect("last caption lock");
                let text = if continues { merge(&last, &t.text).to_string() } else { t.text.clone() };
                last.clone_from(&t.text);
                text
            } else {
                t.text.clone()
            };
            if task == Task::Translate && t.language != "en" {
                c.source_language = Some(t.language.clone());
                c.language = "en".into();
            }
            if let (Some(to), Some(tr)) = (&text_target, &translator)
                && *to != t.language
            {
                match tr.translate(&c.text, &t.language, to) {
                    Ok(text) => {
                        c.text = text;
                        c.source_language = Some(t.language.clone());
                        c.language = to.clone();
                    }
                    Err(e) => tracing::warn!(error = %e, "caption not translated; sent as spoken"),
                }
            }
            if !c.text.is_empty() {
                sink.deliver(c);
            }
        };
        let job = Job { model: config.model(), pcm: seg.pcm, language: config.language, task, reply: Box::new(reply) };
        let complete = seg.complete;
        match self.workers.try_submit(job) {
            Ok(()) if complete => stats.segments.fetch_add(1, Relaxed),
            Ok(()) => stats.partials.fetch_add(1, Relaxed),
            Err(_) if complete => stats.segments_dropped.fetch_add(1, Relaxed),
            Err(_) => {
                self.partial_busy.store(false, Relaxed);
                stats.partials_skipped.fetch_add(1, Relaxed)
            }
        };
    }
}

impl Stage for SpeechStage {
    fn process(&mut self, frame: &PcmFrame<'_>) {
        if !self.settings.borrow().enabled {
            return;
        }
        let (rtp, wall) = *self.anchor.get_or_insert_with(|| (frame.rtp_time, (self.clock)()));
        let mut time_ms = wall + (frame.rtp_time.saturating_sub(rtp) / 48) as i64;
        self.speaker.get_or_insert_with(|| Speaker {
            room: frame.room.clone(),
            identity: frame.identity.as_str().to_string(),
            track: frame.track.to_string(),
        });
        // The pipeline sends nothing through a long silence (muted, paused): that is a pause
        // too, and an utterance in progress ends at it.
        if self.next_ms.is_some_and(|next| time_ms >= next + PAUSE_MS)
            && let Some(seg) = self.segmenter.finish()
        {
            self.submit(seg);
        }
        self.next_ms = Some(time_ms + (frame.samples.len() / 48) as i64);
        self.pcm.extend(self.down.process(frame.samples));
        while self.pcm.len() >= FRAME {
            let chunk: Vec<f32> = self.pcm.drain(..FRAME).collect();
            if let Some(seg) = self.segmenter.handle_frame(&chunk, time_ms) {
                self.submit(seg);
            }
            time_ms += 20;
        }
    }
}

struct Speaker {
    room: RoomName,
    identity: String,
    track: String,
}

/// The track ended (or its tap closed): an utterance in progress is read as it is, unless
/// the room turned transcription off (`submit` checks).
impl Drop for SpeechStage {
    fn drop(&mut self) {
        if let Some(seg) = self.segmenter.finish() {
            self.submit(seg);
        }
    }
}
