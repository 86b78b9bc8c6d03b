//! AIC against Opus on the held-out set (scripts/aic-data.sh builds it; training never reads
//! it): for each AIC mode (aic-v1, and aic-v2: where it sends Opus, with and without its
//! enhancer) and for Opus at the same packet bitrate and at 24 kbit/s, the
//! bitrate, PESQ-WB (P.862.2, the `pesq` crate), ViSQOL (v3 speech mode, the `visqol-rs`
//! crate) and STOI, and AIC's per-frame latency
//! (encode + decode, p50/p99) and real-time factor on one thread; and, when the Whisper models
//! are there (scripts/models.sh), the word error rate of Whisper tiny.en reading each codec's
//! output against its reading of the clean clip (the first `WER_CLIPS` clips of each set).
//!
//! `cargo bench --bench codec` (`AURALINK_AIC_DATA` names the data folder, default
//! ~/.cache/auralink-aic-data; `AURALINK_AIC_MODEL` and `AURALINK_AIC_ENHANCER` the weights,
//! default models/aic/aic-v1.safetensors and aic-v2-enhancer.safetensors; `AURALINK_AIC_MODES`
//! the modes to score, comma-separated, default all three). Without `--bench` (as `cargo test --all-targets` runs it)
//! it scores two seconds of a synthetic vowel, to show every path works.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use auralink::codec::aic::bitstream::{AIC_V1, Frame, Packet};
use auralink::codec::aic::enhance::{self, Enhancer};
use auralink::codec::aic::mdct::HOP;
use auralink::codec::aic::model::{AicDecoder, AicEncoder, AicModel};
use auralink::codec::aic::quality::QualityMeter;
use auralink::codec::aic::track::{AicModels, TrackDecoder, TrackEncoder};
use auralink::codec::aic::train::{read_wav, wav_files};
use auralink::codec::modes::{Mode, ModelType};
use auralink::codec::opus::{FRAME_SAMPLES, OpusDecoder, OpusEncoder, WIDEBAND_RATE};
use auralink::codec::resample::{Downsampler, Upsampler};
use auralink::codec::stoi::stoi;
use auralink::pipeline::speech::wer::wer;
use auralink::pipeline::whisper::{Task, Whisper};
use visqol_rs::AudioSignal;
use visqol_rs::constants::{DEFAULT_WINDOW_SIZE, NUM_BANDS_SPEECH};
use visqol_rs::variant::Variant;
use visqol_rs::visqol_manager::VisqolManager;

/// Clips per set that Whisper reads for the word error rate (reading is the slow part).
const WER_CLIPS: usize = 40;

/// One codec's scores over a set.
#[derive(Default)]
struct Tally {
    /// Each clip's output, aligned to the clean clip (for the word error rate).
    decoded: Vec<Vec<f32>>,
    bits: f64,
    seconds: f64,
    pesq: Vec<f64>,
    visqol: Vec<f64>,
    stoi: Vec<f64>,
    /// Per-frame encode + decode time, microseconds.
    frame_us: Vec<f64>,
    busy: f64,
    failed: usize,
    /// Per clip where PESQ scored it: mean band distance of voiced frames, and PESQ.
    fit: Vec<(f64, f64)>,
}

impl Tally {
    /// Scores `out` against `clean`, `delay` samples late (found by correlation where the
    /// codec does not say: a vocoder's waveform does not correlate with the original's).
    fn score(&mut self, clean: &[f32], out: &[f32], delay: Option<usize>) {
        let delay = delay.unwrap_or_else(|| find_delay(clean, out));
        let out = &out[delay..];
        let n = clean.len().min(out.len());
        self.decoded.push(out[..n].to_vec());
        let distance = voiced_distance(&clean[..n], &out[..n]);
        let pcm = |s: &[f32]| s.iter().map(|x| (x.clamp(-1.0, 1.0) * 32767.0) as i16).collect::<Vec<i16>>();
        if let Some(s) = stoi(&clean[..n], &out[..n], 16_000) {
            self.stoi.push(s);
        }
        // By the clip's length, not the aligned part's, so that every codec scores the same clips.
        if clean.len() as f64 >= VISQOL_MIN_SECONDS * 16_000.0
            && let Some(v) = visqol(&clean[..n], &out[..n])
        {
            self.visqol.push(v);
        }
        let (reference, degraded) = (pcm(&clean[..n]), pcm(&out[..n]));
        // pesq 0.2 panics on some inputs (an index past its utterance buffer): a failure too.
        match std::panic::catch_unwind(|| pesq::pesq_wb(&reference, &degraded).ok()).ok().flatten() {
            Some(p) => {
                self.pesq.push(f64::from(p));
                self.fit.push((distance, f64::from(p)));
            }
            None => self.failed += 1,
        }
    }

    /// Mean band distance of voiced frames (what the runtime quality estimate reads).
    fn distance(&self) -> f64 {
        mean(&self.fit.iter().map(|f| f.0).collect::<Vec<_>>())
    }

    fn kbps(&self) -> f64 {
        self.bits / self.seconds / 1000.0
    }
}

/// Clips shorter than this are not scored by ViSQOL: visqol-rs 0.4 panics on most clips
/// under about 1.5 s (too few patches left after aligning), and skipping by the clip's length
/// keeps every codec's mean over the same clips.
const VISQOL_MIN_SECONDS: f64 = 1.5;

/// ViSQOL's MOS-LQO (speech mode, 16 kHz, scaled so that identical signals score 5);
/// `None` where it cannot align the two or panics.
fn visqol(clean: &[f32], out: &[f32]) -> Option<f64> {
    let f64s = |s: &[f32]| s.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let (reference, degraded) = (f64s(clean), f64s(out));
    std::panic::catch_unwind(|| {
        let mut manager = VisqolManager::<NUM_BANDS_SPEECH>::new(
            Variant::Wideband { use_unscaled_mos_mapping: false },
            DEFAULT_WINDOW_SIZE,
        );
        let (mut r, mut d) = (AudioSignal::new(&reference, 16_000), AudioSignal::new(&degraded, 16_000));
        manager.compute_results(&mut r, &mut d).ok().map(|s| s.moslqo)
    })
    .ok()
    .flatten()
}

/// Whisper's reading of the codec's output against its reading of the clean clips, as a
/// word error rate in percent; `None` without the model.
fn wer_vs_clean(whisper: &mut Option<(Whisper, Vec<String>)>, t: &Tally) -> Option<f64> {
    let (w, clean) = whisper.as_mut()?;
    let (mut errors, mut words) = (0.0, 0.0);
    for (reference, out) in clean.iter().zip(&t.decoded) {
        let text = w.transcribe(out, Some("en"), Task::Transcribe).map(|t| t.text).unwrap_or_default();
        let n = reference.split_whitespace().count() as f64;
        errors += wer(reference, &text) * n;
        words += n;
    }
    Some(100.0 * errors / words.max(1.0))
}

fn opus_row(name: &str, o: &Tally, wer: Option<f64>) {
    println!(
        "{name:<28} {:>8.2} {:>8.3} {:>7.3} {:>7.3} {:>37} {:>6.3}",
        o.kbps(),
        mean(&o.pesq),
        mean(&o.visqol),
        mean(&o.stoi),
        show(wer),
        o.distance()
    );
}

fn show(wer: Option<f64>) -> String {
    wer.map_or_else(|| "-".to_string(), |w| format!("{w:.1}"))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

/// The codec's delay in samples (0..50 ms), by cross-correlation.
fn find_delay(clean: &[f32], out: &[f32]) -> usize {
    (0..800.min(out.len()))
        .max_by(|&a, &b| {
            let c = |d: usize| clean.iter().zip(&out[d..]).map(|(x, y)| f64::from(x * y)).sum::<f64>();
            c(a).total_cmp(&c(b))
        })
        .unwrap_or(0)
}

fn aic(model: &Arc<AicModel>, mode: Mode, clean: &[f32], t: &mut Tally) {
    let mut enc = AicEncoder::new(model.clone()).unwrap();
    let mut dec = AicDecoder::new(model.clone());
    let mut out = Vec::with_capacity(clean.len() + HOP);
    // One more frame of silence flushes the decoder's last frame.
    let mut input = clean.to_vec();
    input.resize(clean.len().div_ceil(HOP) * HOP + HOP, 0.0);
    for (seq, frame) in input.chunks(HOP).enumerate() {
        let start = Instant::now();
        let frame = Frame::Codes(enc.encode(frame, mode).unwrap().remove(0));
        let packet = Packet { mode, model_id: AIC_V1.model_id, sequence: seq as u8, frame }.encode().unwrap();
        let Frame::Codes(codes) = Packet::decode(&packet).unwrap().frame else { unreachable!("aic-v1 sends codes") };
        out.extend(dec.decode(&[codes], mode).unwrap());
        let us = start.elapsed().as_secs_f64() * 1e6;
        t.frame_us.push(us);
        t.busy += us / 1e6;
        t.bits += packet.len() as f64 * 8.0;
    }
    t.seconds += input.len() as f64 / 16_000.0;
    t.score(clean, &out, None);
}

/// Mean band distance (what the runtime quality estimate is made from) over voiced frames.
fn voiced_distance(clean: &[f32], out: &[f32]) -> f64 {
    static METER: std::sync::OnceLock<QualityMeter> = std::sync::OnceLock::new();
    let meter = METER.get_or_init(|| QualityMeter::new(&candle_core::Device::Cpu).unwrap());
    let n = clean.len().min(out.len()) / HOP * HOP;
    let reference = meter.coefficients(&clean[..n], &[0.0; HOP]).unwrap();
    let decoded = meter.coefficients(&out[..n], &[0.0; HOP]).unwrap();
    let d = meter.distance(&decoded, &reference).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let voiced = meter.voiced(&reference).unwrap();
    mean(&d.iter().zip(voiced).filter(|(_, v)| *v).map(|(x, _)| f64::from(*x)).collect::<Vec<_>>())
}

/// Least squares `pesq ≈ a + b·loss`, and the correlation.
fn line_fit(points: &[(f64, f64)]) -> (f64, f64, f64) {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let b = sxy / sxx;
    (my - b * mx, b, sxy / (sxx * syy).sqrt())
}

/// aic-v2 through one track's encoder and decoder; with `core_only`, the same packets' Opus
/// decoded without the enhancer.
fn aic_v2(models: &AicModels, mode: Mode, core_only: bool, clean: &[f32], t: &mut Tally) {
    let mut enc = TrackEncoder::new(models).unwrap();
    let mut dec = TrackDecoder::new(models).unwrap();
    let mut core = OpusDecoder::at(WIDEBAND_RATE).unwrap();
    let mut out = Vec::with_capacity(clean.len() + 2 * HOP);
    // Two more frames of silence flush Opus's lookahead and the enhancer's frame.
    let mut input = clean.to_vec();
    input.resize(clean.len().div_ceil(HOP) * HOP + 2 * HOP, 0.0);
    for frame in input.chunks(HOP) {
        let start = Instant::now();
        let packet = enc.encode(frame, mode, ModelType::AicV2, mode.target_ratio()).unwrap();
        if core_only {
            let Frame::Opus(f) = Packet::decode(&packet).unwrap().frame else { unreachable!("the Opus core") };
            out.extend(core.decode(Some(&f)).unwrap());
        } else {
            out.extend(dec.decode(&packet).unwrap());
        }
        let us = start.elapsed().as_secs_f64() * 1e6;
        t.frame_us.push(us);
        t.busy += us / 1e6;
        t.bits += (packet.len() * 8) as f64;
    }
    t.seconds += input.len() as f64 / 16_000.0;
    let delay = enc.delay(mode, ModelType::AicV2) - if core_only { HOP } else { 0 };
    t.score(clean, &out, Some(delay));
}

fn opus(bitrate: u32, clean: &[f32], t: &mut Tally) {
    let mut up = Upsampler::default();
    let mut down = Downsampler::default();
    let mut enc = OpusEncoder::new(bitrate).unwrap();
    let mut dec = OpusDecoder::new().unwrap();
    let mut input = up.process(clean);
    input.resize(input.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES + FRAME_SAMPLES, 0.0);
    let mut out48 = Vec::with_capacity(input.len());
    for frame in input.chunks(FRAME_SAMPLES) {
        let packet = enc.encode(frame).unwrap();
        t.bits += packet.len() as f64 * 8.0;
        out48.extend(dec.decode(Some(&packet)).unwrap());
    }
    t.seconds += input.len() as f64 / 48_000.0;
    t.score(clean, &down.process(&out48), None);
}

fn main() {
    // pesq 0.2 panics on some inputs; `score` counts that as a failure, and one line instead
    // of a backtrace says where it happened.
    std::panic::set_hook(Box::new(|info| eprintln!("(panic: {info})")));
    let bench = std::env::args().any(|a| a == "--bench");
    let model_path = std::env::var("AURALINK_AIC_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/aic/aic-v1.safetensors"));
    let model = Arc::new(AicModel::load(&model_path, &candle_core::Device::Cpu).expect("the AIC model loads"));
    let enhancer_path = std::env::var("AURALINK_AIC_ENHANCER").map(PathBuf::from).unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/aic").join(auralink::codec::aic::train_enhance::WEIGHTS)
    });
    let enhancer = Enhancer::load(&enhancer_path, &candle_core::Device::Cpu).ok().map(Arc::new);
    let models = enhancer.map(|e| AicModels::new(model.clone(), e).unwrap());
    if models.is_none() {
        println!("no {}: aic-v1 only", enhancer_path.display());
    }
    let sets: Vec<(String, Vec<Vec<f32>>)> = if bench {
        let data = std::env::var("AURALINK_AIC_DATA").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/auralink-aic-data")
        });
        ["human-en", "espeak-en"]
            .iter()
            .map(|set| {
                let dir = data.join("heldout").join(set);
                let files = wav_files(&dir).unwrap_or_else(|e| panic!("{e} (run scripts/aic-data.sh)"));
                (set.to_string(), files.iter().map(|f| read_wav(f).unwrap()).collect())
            })
            .collect()
    } else {
        vec![("synthetic vowel".to_string(), vec![auralink::codec::vowel(2.0)])]
    };
    println!("model {} ({} threads for tensors)", model_path.display(), candle_core::utils::get_num_threads());
    let whisper_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/whisper/tiny.en");
    let mut whisper = if bench { Whisper::load(&whisper_dir, &candle_core::Device::Cpu).ok() } else { None };
    if bench && whisper.is_none() {
        println!("no {} (scripts/models.sh): no word error rates", whisper_dir.display());
    }
    let modes: Vec<Mode> = std::env::var("AURALINK_AIC_MODES").map_or_else(
        |_| Mode::ALL.to_vec(),
        |list| {
            let parse = |m: &str| Mode::parse(m.trim()).unwrap_or_else(|| panic!("AURALINK_AIC_MODES: no mode {m:?}"));
            list.split(',').map(parse).collect()
        },
    );
    let mut fit = Vec::new();
    for (set, clips) in &sets {
        let minutes = clips.iter().map(|c| c.len()).sum::<usize>() as f64 / 16_000.0 / 60.0;
        let long = clips.iter().filter(|c| c.len() as f64 >= VISQOL_MIN_SECONDS * 16_000.0).count();
        println!(
            "\n{set}: {} clips, {minutes:.1} min; ViSQOL scores the {long} of {VISQOL_MIN_SECONDS} s or more",
            clips.len()
        );
        // Whisper's reading of the clean clips is the reference the codecs' outputs are held to.
        let mut reader = whisper.take().map(|mut w| {
            let clean = clips
                .iter()
                .take(WER_CLIPS)
                .map(|c| w.transcribe(c, Some("en"), Task::Transcribe).map(|t| t.text).unwrap_or_default())
                .collect();
            (w, clean)
        });
        println!(
            "{:<28} {:>8} {:>8} {:>7} {:>7} {:>10} {:>10} {:>7} {:>7} {:>6}",
            "codec", "kbit/s", "PESQ-WB", "ViSQOL", "STOI", "p50 µs", "p99 µs", "RTF", "WER %", "dist"
        );
        for &mode in &modes {
            let mut v1 = Tally::default();
            for c in clips {
                aic(&model, mode, c, &mut v1);
            }
            let mut rows = vec![(format!("aic-v1 {}", mode.as_str()), v1)];
            if let Some(m) = &models {
                let mut designs = vec![(format!("aic-v2 {}", mode.as_str()), false)];
                if enhance::opus_rate(mode).is_some() {
                    designs.insert(0, ("Opus core alone".to_string(), true));
                }
                for (name, core_only) in designs {
                    let mut t = Tally::default();
                    for c in clips {
                        aic_v2(m, mode, core_only, c, &mut t);
                    }
                    rows.push((name, t));
                }
            }
            // Opus asked for the bitrate the mode's design (the last row) produced.
            let a = &rows.last().expect("a row per mode").1;
            let same = (a.kbps() * 1000.0).round() as u32;
            let mut o = Tally::default();
            for c in clips {
                opus(same.max(500), c, &mut o);
            }
            for (name, t) in &rows {
                if name.starts_with("aic-") {
                    fit.extend(&t.fit);
                }
                println!(
                    "{:<28} {:>8.2} {:>8.3} {:>7.3} {:>7.3} {:>10.0} {:>10.0} {:>7.3} {:>7} {:>6.3}",
                    name,
                    t.kbps(),
                    mean(&t.pesq),
                    mean(&t.visqol),
                    mean(&t.stoi),
                    percentile(&t.frame_us, 0.5),
                    percentile(&t.frame_us, 0.99),
                    t.busy / t.seconds,
                    show(wer_vs_clean(&mut reader, t)),
                    t.distance()
                );
            }
            let wer = wer_vs_clean(&mut reader, &o);
            opus_row(&format!("Opus asked for {:.1}", f64::from(same) / 1000.0), &o, wer);
            let (name, a) = rows.last().expect("a row per mode");
            println!(
                "  ratio {name}/Opus: PESQ {:.2}, ViSQOL {:.2}, STOI {:.2} (PESQ failures: AIC {}, Opus {}; ViSQOL scored {} and {} clips)",
                mean(&a.pesq) / mean(&o.pesq),
                mean(&a.visqol) / mean(&o.visqol),
                mean(&a.stoi) / mean(&o.stoi),
                a.failed,
                o.failed,
                a.visqol.len(),
                o.visqol.len()
            );
            // docs/aic.md's quality floor: Opus at 12 kbit/s for CONSERVATIVE, at 6 for ADAPTIVE.
            let floor = match mode {
                Mode::Conservative => Some(12_000),
                Mode::Adaptive => Some(6_000),
                Mode::Aggressive => None,
            };
            if let Some(bps) = floor {
                let mut f = Tally::default();
                for c in clips {
                    opus(bps, c, &mut f);
                }
                let wer = wer_vs_clean(&mut reader, &f);
                opus_row(&format!("Opus asked for {:.1} (floor)", f64::from(bps) / 1000.0), &f, wer);
                println!(
                    "  ratio {name}/floor: PESQ {:.2}, ViSQOL {:.2}, STOI {:.2}",
                    mean(&a.pesq) / mean(&f.pesq),
                    mean(&a.visqol) / mean(&f.visqol),
                    mean(&a.stoi) / mean(&f.stoi)
                );
            }
            assert!(!a.pesq.is_empty() && !o.pesq.is_empty(), "PESQ scored nothing");
            assert!(!a.visqol.is_empty() && !o.visqol.is_empty(), "ViSQOL scored nothing");
        }
        let mut o = Tally::default();
        for c in clips {
            opus(24_000, c, &mut o);
        }
        let wer = wer_vs_clean(&mut reader, &o);
        opus_row("Opus 24", &o, wer);
        whisper = reader.map(|(w, _)| w);
    }
    // The runtime quality estimate's calibration (quality::estimate).
    let (a, b, r) = line_fit(&fit);
    println!(
        "\nquality estimate fit over {} AIC clips: PESQ-WB ≈ {a:.3} + {b:.3} × band distance (r = {r:.2})",
        fit.len()
    );
}
