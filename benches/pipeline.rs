//! What the speech taps cost on this machine: Whisper's real-time factor (inference time over
//! audio time, the baseline being real time) per model with candle on every core, its word
//! error rate on espeak-ng English, how many always-talking tracks a core carries at RTF < 1,
//! and the caption lag (end of speech to final caption) with 1, 2 and 4 live tracks through
//! the real stage and the node's default single worker.
//!
//! `cargo bench --bench pipeline` (needs scripts/models.sh, espeak-ng and sox). Without
//! `--bench` (as `cargo test --all-targets` runs it) it reads one utterance with tiny.en and
//! runs one live track for a few seconds, to show every path works.

#[path = "../tests/support/speech.rs"]
mod speech;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auralink::codec::resample::Upsampler;
use auralink::ids::{Identity, ParticipantId, RoomName, TrackId};
use auralink::pipeline::speech::wer::wer;
use auralink::pipeline::speech::{Caption, CaptionSink, SpeechConfig, SpeechStage, SpeechWorkers};
use auralink::pipeline::whisper::{Task, Whisper};
use auralink::pipeline::{PcmFrame, Stage};

const SENTENCES: [&str; 8] = [
    "Good morning everyone, thank you for joining the call today.",
    "Can you hear me now? The sound is much better than before.",
    "Please send the quarterly report to the finance team before Friday.",
    "Let us move on to the next item on the agenda.",
    "I think we should test the new release on more devices.",
    "The customer asked for a demo of the translation feature.",
    "We will meet again next week at the same time.",
    "Could you share your screen so everyone can see the numbers?",
];
const VOICES: [&str; 4] = ["en-us", "en-us+f2", "en-us+m3", "en-gb"];

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn now_ms() -> i64 {
    auralink::wall::unix_ms()
}

/// Final captions and when they arrived.
struct Arrivals(Mutex<Vec<(Caption, i64)>>);

impl CaptionSink for Arrivals {
    fn deliver(&self, c: Caption) {
        self.0.lock().unwrap().push((c, now_ms()));
    }
}

/// `tracks` speakers talking at once in real time, each reading `utterances` (16 kHz) with a
/// second between them, through the stage onto one worker. Returns caption lags (ms) of the
/// finals, and (utterances sent, finals received, dropped).
fn live(models: &Path, tracks: usize, utterances: &[Vec<f32>]) -> (Vec<f64>, (usize, usize, u64)) {
    let workers = SpeechWorkers::spawn(models.to_path_buf(), candle_core::Device::Cpu, 1, 8).unwrap();
    let sink = Arc::new(Arrivals(Mutex::new(Vec::new())));
    let room = RoomName::new("bench").unwrap();
    let start = Instant::now();
    let t0 = now_ms();
    let threads: Vec<_> = (0..tracks)
        .map(|t| {
            let (workers, sink, room) = (Arc::clone(&workers), Arc::clone(&sink), room.clone());
            // Each speaker starts with a different sentence so the worker sees a mix.
            let mut pcm16 = vec![0.0; 8_000 * (t + 1)];
            for i in 0..utterances.len() {
                pcm16.extend(&utterances[(i + t) % utterances.len()]);
                pcm16.extend(vec![0.0; 16_000]);
            }
            std::thread::spawn(move || {
                let pcm48 = Upsampler::default().process(&pcm16);
                let config = SpeechConfig { enabled: true, ..Default::default() };
                let (_keep, rx) = tokio::sync::watch::channel(config);
                let mut stage = SpeechStage::new(rx, workers, sink, None, Box::new(move || t0));
                let identity = Identity::new(format!("speaker-{t}")).unwrap();
                for (i, chunk) in pcm48.chunks_exact(960).enumerate() {
                    // Real time: frame i is due 20·i ms after the start.
                    let due = Duration::from_millis(20 * i as u64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let frame = PcmFrame {
                        room: &room,
                        track: TrackId(t as u64),
                        participant: ParticipantId(t as u64),
                        identity: &identity,
                        rtp_time: (i * 960) as u64,
                        samples: chunk,
                        concealed: false,
                        opus_bytes: 0,
                    };
                    stage.process(&frame);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let sent = tracks * utterances.len();
    // Let the worker finish what is queued (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let got = sink.0.lock().unwrap().iter().filter(|(c, _)| c.is_final).count();
        let dropped = workers.stats.segments_dropped.load(std::sync::atomic::Ordering::Relaxed) as usize;
        let silent = workers.stats.silent.load(std::sync::atomic::Ordering::Relaxed) as usize;
        if got + dropped + silent >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let arrivals = sink.0.lock().unwrap();
    let lags: Vec<f64> = arrivals.iter().filter(|(c, _)| c.is_final).map(|(c, at)| (at - c.end_ms) as f64).collect();
    let dropped = workers.stats.segments_dropped.load(std::sync::atomic::Ordering::Relaxed);
    (lags.clone(), (sent, lags.len(), dropped))
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/whisper");
    let corpus: Vec<(String, Vec<f32>)> = if bench {
        VOICES
            .iter()
            .enumerate()
            .flat_map(|(v, voice)| SENTENCES.iter().skip(v % 2).step_by(2).map(move |s| (voice, s)))
            .map(|(voice, s)| (s.to_string(), speech::speak(voice, s)))
            .collect()
    } else {
        let (voice, text) = speech::ENGLISH[0];
        vec![(text.to_string(), speech::speak(voice, text))]
    };
    let audio_s: f64 = corpus.iter().map(|(_, p)| p.len() as f64 / 16_000.0).sum();
    let threads = candle_core::utils::get_num_threads();
    println!("{} utterances, {audio_s:.1} s of espeak-ng English; candle on {threads} threads", corpus.len());
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>8} {:>16}",
        "model", "WER", "RTF p50", "RTF all", "ms/utt", "tracks per core"
    );
    let mut rtf_tiny = f64::NAN;
    for name in if bench { vec!["tiny.en", "base"] } else { vec!["tiny.en"] } {
        let mut w = Whisper::load(&models.join(name), &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{e} (run scripts/models.sh)"));
        // The first call pays for allocation and page faults; not counted.
        w.transcribe(&corpus[0].1, Some("en"), Task::Transcribe).unwrap();
        let (mut errors, mut words, mut busy, mut rtfs) = (0.0, 0.0, 0.0, Vec::new());
        for (text, pcm) in &corpus {
            let started = Instant::now();
            let t = w.transcribe(pcm, Some("en"), Task::Transcribe).unwrap();
            let took = started.elapsed().as_secs_f64();
            let n = text.split_whitespace().count() as f64;
            errors += wer(text, &t.text) * n;
            words += n;
            busy += took;
            rtfs.push(took / (pcm.len() as f64 / 16_000.0));
        }
        let rtf = busy / audio_s;
        if name == "tiny.en" {
            rtf_tiny = rtf;
        }
        println!(
            "{name:<10} {:>7.1}% {:>10.3} {:>10.3} {:>8.0} {:>16.1}",
            100.0 * errors / words,
            percentile(&mut rtfs, 0.5),
            rtf,
            1000.0 * busy / corpus.len() as f64,
            // Always-talking tracks the node reads in real time, per core.
            1.0 / rtf / threads as f64,
        );
    }
    println!("\ncaption lag, end of speech to final caption (tiny.en, one worker, 1 s pauses, previews every 2 s)");
    println!("{:<8} {:>10} {:>10} {:>10} {:>10}", "tracks", "p50 ms", "p95 ms", "finals", "dropped");
    let utterances: Vec<Vec<f32>> = corpus.iter().take(if bench { 6 } else { 1 }).map(|(_, p)| p.clone()).collect();
    for tracks in if bench { vec![1, 2, 4] } else { vec![1] } {
        let (mut lags, (sent, finals, dropped)) = live(&models, tracks, &utterances);
        println!(
            "{tracks:<8} {:>10.0} {:>10.0} {:>10} {:>10}",
            percentile(&mut lags, 0.5),
            percentile(&mut lags, 0.95),
            format!("{finals}/{sent}"),
            dropped
        );
    }
    println!("\nRTF is inference time over audio time: below 1 is faster than real time (tiny.en {rtf_tiny:.3}).");
}
