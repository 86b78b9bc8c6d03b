//! The node's Whisper workers: a few threads, each with its own copy of the models it has
//! been asked for (decoding keeps state), taking utterances from one bounded queue. The
//! number of threads bounds how many utterances are read at once (each read uses candle's
//! thread pool for its matrix products); the queue bounds the audio waiting.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::pipeline::whisper::{Backend, Task, Transcript, Whisper, WhisperError};

/// Caption lag buckets (ms): end of speech to caption sent.
pub const LAG_BUCKETS_MS: [u64; 8] = [250, 500, 1000, 2000, 3000, 5000, 10000, 30000];

#[derive(Debug, Default)]
pub struct SpeechStats {
    /// Utterances (complete) handed to the workers.
    pub segments: AtomicU64,
    /// Complete utterances dropped because the workers were behind.
    pub segments_dropped: AtomicU64,
    /// Previews not made because the workers were busy.
    pub partials_skipped: AtomicU64,
    pub partials: AtomicU64,
    /// Utterances Whisper found to be silence or noise.
    pub silent: AtomicU64,
    pub errors: AtomicU64,
    /// Audio read and time spent reading it: their ratio is the real-time factor.
    pub audio_ms: AtomicU64,
    pub inference_ms: AtomicU64,
    pub captions: AtomicU64,
    /// Captions the sender could not keep up with.
    pub captions_dropped: AtomicU64,
    /// Final captions by lag, the last counting the rest; and the sum.
    pub lag_buckets: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
    pub lag_ms_sum: AtomicU64,
    /// Tracks turned away by the per-node limit.
    pub tracks_refused: AtomicU64,
}

impl SpeechStats {
    pub fn record_lag(&self, ms: u64) {
        let i = LAG_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LAG_BUCKETS_MS.len());
        self.lag_buckets[i].fetch_add(1, Relaxed);
        self.lag_ms_sum.fetch_add(ms, Relaxed);
    }
}

/// One utterance to read, and what to do with the result (called on the worker thread).
pub struct Job {
    pub model: &'static str,
    pub pcm: Vec<f32>,
    pub language: Option<String>,
    pub task: Task,
    pub reply: Box<dyn FnOnce(Result<Transcript, WhisperError>) + Send>,
}

pub struct SpeechWorkers {
    tx: SyncSender<Job>,
    dir: PathBuf,
    pub stats: Arc<SpeechStats>,
}

impl SpeechWorkers {
    /// `threads` workers reading models from `dir/<name>/`, with `queue` utterances waiting
    /// at most.
    pub fn spawn(dir: PathBuf, device: Device, threads: usize, queue: usize) -> std::io::Result<Arc<SpeechWorkers>> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(SpeechStats::default());
        for i in 0..threads.max(1) {
            let (rx, dir, device, stats) = (Arc::clone(&rx), dir.clone(), device.clone(), Arc::clone(&stats));
            std::thread::Builder::new().name(format!("whisper-{i}")).spawn(move || work(&rx, &dir, &device, &stats))?;
        }
        Ok(Arc::new(SpeechWorkers { tx, dir, stats }))
    }

    /// Whether the model's files are there (they are loaded on first use).
    pub fn check(&self, model: &str) -> Result<(), WhisperError> {
        for file in ["model.safetensors", "config.json", "vocabulary.txt"] {
            let path = self.dir.join(model).join(file);
            if !path.is_file() {
                return Err(WhisperError::Missing(path.display().to_string()));
            }
        }
        Ok(())
    }

    /// Queues `job` unless the queue is full (then it comes back).
    pub fn try_submit(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }
}

fn work(rx: &Mutex<Receiver<Job>>, dir: &Path, device: &Device, stats: &SpeechStats) {
    let mut models: HashMap<&'static str, Box<dyn Backend>> = HashMap::new();
    loop {
        let Ok(job) = rx.lock().expect("whisper queue lock").recv() else { return };
        let started = Instant::now();
        // A panic in the model (candle asserts) fails this utterance, not the worker: with one
        // worker, a dead thread would silence every room on the node.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let model = match models.entry(job.model) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    tracing::info!(model = job.model, "loading Whisper model");
                    e.insert(Box::new(Whisper::load(&dir.join(job.model), device)?))
                }
            };
            model.transcribe(&job.pcm, job.language.as_deref(), job.task)
        }))
        .unwrap_or_else(|_| {
            // Its decoding state may be half-updated: load it again next time.
            models.remove(job.model);
            Err(WhisperError::Panicked)
        });
        let took: Duration = started.elapsed();
        stats.audio_ms.fetch_add(job.pcm.len() as u64 / 16, Relaxed);
        stats.inference_ms.fetch_add(took.as_millis() as u64, Relaxed);
        if let Err(e) = &result {
            tracing::warn!(model = job.model, error = %e, "speech not transcribed");
            stats.errors.fetch_add(1, Relaxed);
        }
        (job.reply)(result);
    }
}
