//! The AIC stage on a track: each 20 ms frame is taken to 16 kHz, encoded, packed, unpacked
//! and decoded (the loopback transcode), timed, and its quality estimated by comparing the
//! decoded audio's spectrum with the input's as it was the codec's delay earlier. The guard
//! decides frame by frame whether the track runs AIC or stays Opus; with a loopback, what a
//! listener would get (the decoded audio, or the publisher's on Opus) is published back into
//! the room. Settings changes arrive through a watch channel and apply from the next frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::loopback::Loopback;
use super::{PcmFrame, Stage};
use crate::codec::aic::ModelError;
use crate::codec::aic::guard::{Guard, Route, Transition};
use crate::codec::aic::mdct::HOP;
use crate::codec::aic::quality;
use crate::codec::aic::track::{AicDevices, AicModels, TrackDecoder, TrackEncoder};
use crate::codec::modes::{Mode, ModelType};
use crate::codec::resample::Downsampler;

/// What a track's AIC stage runs with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AicConfig {
    pub mode: Mode,
    /// Target size relative to Opus at 24 kbit/s, 0.01..=1.
    pub target_ratio: f64,
    /// A frame that takes longer to encode and decode sends the track back to Opus.
    pub max_latency_ms: u32,
    pub model_type: ModelType,
    /// Run on the GPU when the server has one (CUDA builds).
    pub use_gpu: bool,
    /// Estimated quality (PESQ-like, 1..5) below which the track falls back to Opus.
    pub min_quality: f64,
    pub enabled: bool,
    /// Publish each AIC track's audio, after the codec, back into the room as a participant
    /// of its own (identity `aic:<publisher>`), so the codec can be heard.
    pub loopback: bool,
}

impl Default for AicConfig {
    fn default() -> Self {
        let mode = Mode::Adaptive;
        AicConfig {
            mode,
            target_ratio: mode.target_ratio(),
            max_latency_ms: 20,
            model_type: ModelType::AicV2,
            use_gpu: false,
            min_quality: 2.0,
            // Off until an operator turns it on: the stage costs CPU on every audio track,
            // and only the loopback (below) uses its output so far (docs/aic.md, "Status").
            enabled: false,
            loopback: false,
        }
    }
}

/// Upper bounds (seconds) of the per-frame latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 8] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5];

/// AIC counters: one set per track (the API's per-track metrics) and one for the node
/// (`/metrics`); a stage updates both.
#[derive(Debug, Default)]
pub struct AicStats {
    /// Tracks fallen back to Opus now (0 or 1 for a track's own set).
    pub fallen_back: AtomicU64,
    pub frames_aic: AtomicU64,
    pub frames_opus: AtomicU64,
    pub aic_bytes: AtomicU64,
    /// What the same frames took as the publisher's Opus (bandwidth saved: the difference).
    pub opus_bytes: AtomicU64,
    pub fallbacks: AtomicU64,
    pub recoveries: AtomicU64,
    pub errors: AtomicU64,
    /// Packets of the loopback track handed to the router, and those it had no room for.
    pub loopback_packets: AtomicU64,
    pub loopback_dropped: AtomicU64,
    /// Cumulative counts per [`LATENCY_BUCKETS`] bucket, then the sum in microseconds.
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    pub latency_count: AtomicU64,
    pub latency_sum_us: AtomicU64,
    /// Sum (in thousandths) and count of voiced frames' quality estimates.
    pub quality_milli_sum: AtomicU64,
    pub quality_count: AtomicU64,
}

impl AicStats {
    fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// Input samples kept to compare the output with: two frames (an MDCT block) before the
/// codec's delay, which is under two frames.
const HISTORY: usize = 4 * HOP;

pub struct AicStage {
    devices: Arc<AicDevices>,
    /// The models on the device the settings pick, which `enc` and `dec` run.
    models: Arc<AicModels>,
    settings: watch::Receiver<AicConfig>,
    config: AicConfig,
    down: Downsampler,
    enc: TrackEncoder,
    dec: TrackDecoder,
    guard: Guard,
    /// The track's counters and the node's.
    stats: [Arc<AicStats>; 2],
    /// The input's last HISTORY samples, and the decoded output's previous frame (analysis
    /// state).
    history: Vec<f32>,
    output_before: [f32; HOP],
    loopback: Option<Loopback>,
}

impl AicStage {
    pub fn new(
        devices: Arc<AicDevices>,
        mut settings: watch::Receiver<AicConfig>,
        stats: [Arc<AicStats>; 2],
        loopback: Option<Loopback>,
    ) -> Result<AicStage, ModelError> {
        let config = settings.borrow_and_update().clone();
        let models = Arc::clone(devices.pick(config.use_gpu));
        Ok(AicStage {
            devices,
            enc: TrackEncoder::new(&models)?,
            dec: TrackDecoder::new(&models)?,
            guard: Guard::new(Duration::from_millis(config.max_latency_ms.into()), config.min_quality),
            models,
            settings,
            config,
            down: Downsampler::default(),
            history: vec![0.0; HISTORY],
            output_before: [0.0; HOP],
            stats,
            loopback,
        })
    }

    pub fn fallback_count(&self) -> u64 {
        self.guard.fallback_count()
    }

    /// Runs one 16 kHz frame through the codec; returns its latency, quality estimate, packet
    /// size and decoded audio.
    fn transcode(&mut self, pcm: &[f32]) -> Result<(Duration, Option<f64>, usize, Vec<f32>), ModelError> {
        let (mode, model_type) = (self.config.mode, self.config.model_type);
        let start = Instant::now();
        let packet = self.enc.encode(pcm, mode, model_type, self.config.target_ratio)?;
        let out = self.dec.decode(&packet)?;
        let latency = start.elapsed();

        self.history.drain(..HOP);
        self.history.extend_from_slice(pcm);
        // The block the output's block stands for: the input `delay` samples ago.
        let end = HISTORY - self.enc.delay(mode, model_type);
        let (before, frame) = self.history[end - 2 * HOP..end].split_at(HOP);
        let meter = &self.models.meter;
        let reference = meter.coefficients(frame, before.try_into().expect("HOP samples"))?;
        let output = meter.coefficients(&out, &self.output_before)?;
        self.output_before.copy_from_slice(&out);
        let quality = if meter.voiced(&reference)?[0] {
            let d = meter.distance(&output, &reference)?.flatten_all()?.get(0)?.to_scalar::<f32>()?;
            Some(quality::estimate(d))
        } else {
            None
        };
        Ok((latency, quality, packet.len(), out))
    }

    fn add(&self, counter: impl Fn(&AicStats) -> &AtomicU64, v: u64) {
        for s in &self.stats {
            counter(s).fetch_add(v, Relaxed);
        }
    }

    /// Publishes what listeners of the track get for this frame: the decoded audio while it
    /// runs AIC, else the publisher's.
    fn play(&mut self, frame: &PcmFrame<'_>, decoded: Option<&[f32]>) {
        let Some(lb) = &mut self.loopback else { return };
        let sent = match decoded {
            Some(pcm) => lb.send_16k(frame.rtp_time, pcm),
            None => lb.send_48k(frame.rtp_time, frame.samples),
        };
        match sent {
            Ok(true) => self.add(|s| &s.loopback_packets, 1),
            Ok(false) => self.add(|s| &s.loopback_dropped, 1),
            Err(e) => tracing::debug!(track = %frame.track, error = %e, "loopback frame not encoded"),
        }
    }

    /// Moves the track to the models on the device the settings now pick, starting its
    /// codec over there (state lives with the models' device). The guard stays as it is: a
    /// track that fell back on one device probes its way back on the other.
    fn follow_device(&mut self) -> Result<(), ModelError> {
        let models = self.devices.pick(self.config.use_gpu);
        if Arc::ptr_eq(models, &self.models) {
            return Ok(());
        }
        let (enc, dec) = (TrackEncoder::new(models)?, TrackDecoder::new(models)?);
        (self.enc, self.dec, self.models) = (enc, dec, Arc::clone(models));
        self.history = vec![0.0; HISTORY];
        self.output_before = [0.0; HOP];
        Ok(())
    }

    fn reset(&mut self) -> Result<(), ModelError> {
        self.enc.reset_state()?;
        self.dec.reset_state()?;
        self.history = vec![0.0; HISTORY];
        self.output_before = [0.0; HOP];
        Ok(())
    }
}

impl Drop for AicStage {
    fn drop(&mut self) {
        if self.guard.fallen_back().is_some() {
            for s in &self.stats {
                s.fallen_back.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl Stage for AicStage {
    fn process(&mut self, frame: &PcmFrame<'_>) {
        if self.settings.has_changed().unwrap_or(false) {
            self.config = self.settings.borrow_and_update().clone();
            self.guard.set_limits(Duration::from_millis(self.config.max_latency_ms.into()), self.config.min_quality);
            if let Err(e) = self.follow_device() {
                tracing::warn!(track = %frame.track, error = %e, "AIC stays on its device");
            }
        }
        let pcm = self.down.process(frame.samples);
        // Concealment is the pipeline's guess, not the publisher's audio: nothing to compress
        // (and a consumer that is behind should not get more work).
        if frame.concealed {
            return;
        }
        let route = if self.config.enabled { self.guard.route() } else { Route::Opus };
        if route == Route::Opus || pcm.len() != HOP {
            self.add(|s| &s.frames_opus, 1);
            self.play(frame, None);
            return;
        }
        let (latency, quality, bytes, decoded) = match self.transcode(&pcm) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(track = %frame.track, error = %e, "AIC frame failed");
                self.add(|s| &s.errors, 1);
                self.add(|s| &s.frames_opus, 1);
                self.play(frame, None);
                return;
            }
        };
        for s in &self.stats {
            s.observe_latency(latency);
        }
        if let Some(q) = quality {
            self.add(|s| &s.quality_milli_sum, (q * 1000.0) as u64);
            self.add(|s| &s.quality_count, 1);
        }
        if route == Route::Aic {
            self.add(|s| &s.frames_aic, 1);
            self.add(|s| &s.aic_bytes, bytes as u64);
            self.add(|s| &s.opus_bytes, frame.opus_bytes as u64);
            self.play(frame, Some(&decoded));
        } else {
            self.add(|s| &s.frames_opus, 1);
            self.play(frame, None);
        }
        match self.guard.handle_frame(latency, quality) {
            Some(Transition::FellBack(reason)) => {
                tracing::info!(track = %frame.track, ?reason, ?latency, ?quality, "AIC falls back to Opus");
                self.add(|s| &s.fallen_back, 1);
                self.add(|s| &s.fallbacks, 1);
            }
            Some(Transition::Recovered) => {
                tracing::info!(track = %frame.track, "AIC is healthy again");
                for s in &self.stats {
                    s.fallen_back.fetch_sub(1, Relaxed);
                }
                self.add(|s| &s.recoveries, 1);
                if let Err(e) = self.reset() {
                    tracing::warn!(track = %frame.track, error = %e, "AIC state reset failed");
                }
            }
            None => {}
        }
    }
}

impl crate::db::aic::Counters {
    /// The stage's counters as `aic_metrics` keeps them.
    pub fn of(s: &AicStats) -> crate::db::aic::Counters {
        let load = |v: &AtomicU64| i64::try_from(v.load(Relaxed)).unwrap_or(i64::MAX);
        let (aic_bytes, opus_bytes) = (load(&s.aic_bytes), load(&s.opus_bytes));
        crate::db::aic::Counters {
            frames_aic: load(&s.frames_aic),
            frames_opus: load(&s.frames_opus),
            aic_bytes,
            opus_bytes,
            // As /metrics has it: what the same frames took as Opus, less what they took as
            // AIC; below zero where AIC took more (a high target ratio against a low-rate
            // publisher).
            saved_bytes: opus_bytes - aic_bytes,
            latency_us_sum: load(&s.latency_sum_us),
            latency_count: load(&s.latency_count),
            quality_milli_sum: load(&s.quality_milli_sum),
            quality_count: load(&s.quality_count),
            fallback_count: load(&s.fallbacks),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::codec::modes::ModelType;
    use crate::codec::opus::FRAME_SAMPLES;
    use crate::ids::{Identity, ParticipantId, RoomName, TrackId};

    /// Enabled, with the largest latency budget the API allows: a debug build on a busy
    /// machine can take 20 ms over a frame, and these tests set the budget where they test it.
    fn on() -> AicConfig {
        AicConfig { enabled: true, max_latency_ms: 1000, ..AicConfig::default() }
    }

    fn stage(config: AicConfig) -> (AicStage, watch::Sender<AicConfig>, Arc<AicStats>) {
        stage_with(config, None)
    }

    fn models() -> Arc<AicModels> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/aic");
        let models = AicModels::load(
            &dir.join("aic-v1.safetensors"),
            &dir.join("aic-v2-enhancer.safetensors"),
            &candle_core::Device::Cpu,
        );
        Arc::new(models.unwrap())
    }

    fn stage_with(
        config: AicConfig,
        loopback: Option<Loopback>,
    ) -> (AicStage, watch::Sender<AicConfig>, Arc<AicStats>) {
        stage_on(AicDevices { cpu: models(), gpu: None }, config, loopback)
    }

    fn stage_on(
        devices: AicDevices,
        config: AicConfig,
        loopback: Option<Loopback>,
    ) -> (AicStage, watch::Sender<AicConfig>, Arc<AicStats>) {
        let (tx, rx) = watch::channel(config);
        let stats = Arc::new(AicStats::default());
        (AicStage::new(Arc::new(devices), rx, [stats.clone(), Arc::default()], loopback).unwrap(), tx, stats)
    }

    #[test]
    fn use_gpu_moves_a_running_track_to_the_gpus_models_and_without_a_gpu_it_stays_on_the_cpu() {
        // A second copy on the CPU stands in for the GPU's: which copy runs is what is tested.
        let (cpu, gpu) = (models(), models());
        let devices = AicDevices { cpu: cpu.clone(), gpu: Some(gpu.clone()) };
        let (mut s, tx, stats) = stage_on(devices, on(), None);
        run(&mut s, 10);
        assert!(Arc::ptr_eq(&s.models, &cpu));
        tx.send_modify(|c| c.use_gpu = true);
        run(&mut s, 10);
        assert!(Arc::ptr_eq(&s.models, &gpu), "use_gpu picks the GPU's models");
        tx.send_modify(|c| c.use_gpu = false);
        run(&mut s, 10);
        assert!(Arc::ptr_eq(&s.models, &cpu));
        assert_eq!((stats.frames_aic.load(Relaxed), stats.errors.load(Relaxed)), (30, 0), "every frame ran AIC");

        let (mut s, _tx, stats) = stage(AicConfig { use_gpu: true, ..on() });
        run(&mut s, 5);
        assert_eq!(stats.frames_aic.load(Relaxed), 5, "no GPU: the CPU's models run the track");
    }

    fn run(stage: &mut AicStage, frames: usize) {
        let (room, identity) = (RoomName::new("r").unwrap(), Identity::new("a").unwrap());
        for n in 0..frames {
            let samples: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|i| 0.2 * ((n * FRAME_SAMPLES + i) as f32 * 180.0 * std::f32::consts::TAU / 48_000.0).sin())
                .collect();
            stage.process(&PcmFrame {
                room: &room,
                track: TrackId(1),
                participant: ParticipantId(1),
                identity: &identity,
                rtp_time: (n * FRAME_SAMPLES) as u64,
                samples: &samples,
                concealed: false,
                opus_bytes: 60,
            });
        }
    }

    #[test]
    fn frames_go_through_aic_and_a_latency_budget_nobody_meets_falls_back_to_opus() {
        let v1 = AicConfig { model_type: ModelType::AicV1, ..on() };
        let (mut s, settings, stats) = stage(v1);
        run(&mut s, 10);
        assert_eq!(stats.frames_aic.load(Relaxed), 10);
        assert_eq!(stats.latency_count.load(Relaxed), 10);
        // aic-v1 ADAPTIVE: 96 bits of codes and a 1-byte header per frame.
        assert_eq!(stats.aic_bytes.load(Relaxed), 10 * 13);
        // aic-v2 ADAPTIVE from the next frame: Opus at 4.8 kbit/s (12 bytes a frame, give or
        // take what its rate control spends), the header in place of its TOC byte.
        settings.send_modify(|c| c.model_type = ModelType::AicV2);
        run(&mut s, 10);
        let v2_bytes = stats.aic_bytes.load(Relaxed) - 10 * 13;
        assert!((10 * 8..=10 * 25).contains(&v2_bytes), "{v2_bytes} bytes in 10 frames");
        assert_eq!(stats.errors.load(Relaxed), 0);
        s.reset().unwrap();
        let (mut s, _settings, stats) = stage(on());
        run(&mut s, 10);
        assert_eq!(stats.opus_bytes.load(Relaxed), 10 * 60);
        assert!(stats.quality_count.load(Relaxed) > 0, "a loud tone is voiced");

        // A budget no frame can meet (the API's smallest, 1 ms, might be met; zero cannot).
        s.guard.set_limits(Duration::ZERO, 1.0);
        run(&mut s, 3);
        assert_eq!(s.fallback_count(), 1);
        assert_eq!((stats.fallbacks.load(Relaxed), stats.fallen_back.load(Relaxed)), (1, 1));
        run(&mut s, 10);
        assert_eq!(stats.frames_aic.load(Relaxed), 13, "fallen back: frames stay Opus");
        drop(s);
        assert_eq!(stats.fallen_back.load(Relaxed), 0, "an ended track is not fallen back");

        // Disabled live: nothing goes through AIC.
        let (mut s, settings, stats) = stage(on());
        settings.send_modify(|c| c.enabled = false);
        run(&mut s, 5);
        assert_eq!((stats.frames_aic.load(Relaxed), stats.frames_opus.load(Relaxed)), (0, 5));
    }

    #[test]
    fn a_fallen_back_track_that_meets_its_limits_again_comes_back_to_aic() {
        let (mut s, _settings, stats) = stage(on());
        s.guard.set_limits(Duration::ZERO, 1.0);
        run(&mut s, 5);
        assert_eq!(stats.fallen_back.load(Relaxed), 1);
        let fell_at = stats.frames_aic.load(Relaxed);
        // Limits it meets: every 50th frame after it fell back (at the third slow one) probes,
        // and three good probes in a row bring it back, its codec starting over.
        s.guard.set_limits(Duration::from_secs(1), 1.0);
        run(&mut s, 147);
        assert_eq!(stats.fallen_back.load(Relaxed), 1, "two probes are not enough");
        run(&mut s, 1);
        assert_eq!((stats.recoveries.load(Relaxed), stats.fallen_back.load(Relaxed)), (1, 0));
        assert_eq!(stats.frames_aic.load(Relaxed), fell_at, "probes are not sent");
        run(&mut s, 10);
        assert_eq!(stats.frames_aic.load(Relaxed), fell_at + 10, "back on AIC");
        assert_eq!((stats.fallbacks.load(Relaxed), stats.errors.load(Relaxed)), (1, 0));
    }

    #[test]
    fn the_loopback_plays_the_decoded_audio_and_the_publishers_while_fallen_back() {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&sent);
        let lb = Loopback::new(Box::new(move |t, p| {
            log.lock().unwrap().push((t, p));
            true
        }))
        .unwrap();
        let conservative = AicConfig { mode: crate::codec::modes::Mode::Conservative, ..on() };
        let (mut s, _settings, stats) = stage_with(conservative, Some(lb));
        run(&mut s, 50);
        s.guard.set_limits(Duration::ZERO, 1.0);
        run(&mut s, 10);
        assert_eq!(s.fallback_count(), 1);
        assert!((51..=54).contains(&stats.frames_aic.load(Relaxed)), "the guard takes a few frames to fall back");
        assert_eq!(stats.loopback_packets.load(Relaxed), 60);
        let sent = sent.lock().unwrap();
        let times: Vec<u64> = sent.iter().map(|(t, _)| *t).collect();
        // (`run` starts its frames at RTP time 0.)
        assert!(times.iter().copied().eq((0..50).chain(0..10).map(|n| n * FRAME_SAMPLES as u64)), "{times:?}");
        // What listeners hear is the tone, through the codec and then as it was.
        let mut dec = crate::codec::opus::OpusDecoder::new().unwrap();
        let pcm: Vec<Vec<f32>> = sent.iter().map(|(_, p)| dec.decode(Some(p)).unwrap()).collect();
        let rms = |frames: &[Vec<f32>]| {
            let n = frames.iter().map(Vec::len).sum::<usize>() as f32;
            (frames.iter().flatten().map(|x| x * x).sum::<f32>() / n).sqrt()
        };
        // A 0.2 sine: RMS 0.141.
        for (what, frames) in [("through AIC", &pcm[10..50]), ("fallen back", &pcm[56..60])] {
            let r = rms(frames);
            assert!((0.1..0.18).contains(&r), "{what}: rms {r}");
        }
    }
}
