//! Fitting the vocoder's line quantizer (`auralink aic train-vocoder`): the lines the
//! vocoder's encoder finds in every audible frame of the training clips, and one k-means
//! codebook per split of them ([`super::lsf`]). Under five minutes on 2 cores, most of it
//! finding the lines; every random choice comes from the seed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::ModelError;
use super::lpc::LpcEncoder;
use super::lsf::{self, Codebook, ENTRIES, ORDER, SPLITS};
use super::train::{self, kmeans};

/// Frames quieter than this (dBFS) are left out: their lines are the noise floor's.
const FLOOR_DB: f32 = -60.0;

#[derive(Debug, Clone)]
pub struct VocoderConfig {
    /// Holds `train/` (see [`train::TrainConfig::data`]).
    pub data: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub iterations: usize,
}

impl Default for VocoderConfig {
    fn default() -> Self {
        VocoderConfig { data: PathBuf::new(), out: PathBuf::new(), seed: 1, iterations: 30 }
    }
}

pub struct VocoderReport {
    pub minutes: BTreeMap<String, f64>,
    pub files: usize,
    /// Frames the codebooks were fitted to.
    pub frames: usize,
    /// RMS distance (Hz) of those frames' lines from their quantized lines.
    pub rms_error_hz: f32,
    pub seconds: f64,
    pub file: PathBuf,
}

pub fn train(cfg: &VocoderConfig) -> Result<VocoderReport, ModelError> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let clips = train::clips(&cfg.data)?;
    let mut lines = Vec::new();
    for pcm in &clips.pcm {
        lines.extend(LpcEncoder::lines(pcm, FLOOR_DB)?);
    }
    let frames = lines.len();
    tracing::info!(frames, "vocoder lines");
    let all = Tensor::from_vec(lines.concat(), (frames, ORDER), &Device::Cpu)?;
    let mut tensors = HashMap::new();
    let mut start = 0;
    for (s, &width) in SPLITS.iter().enumerate() {
        let (c, _) = kmeans(&all.narrow(1, start, width)?.contiguous()?, ENTRIES, cfg.iterations, &mut rng)?;
        tensors.insert(lsf::split_name(s), c.to_dtype(DType::F16)?);
        start += width;
    }
    let file = cfg.out.join(lsf::FILE);
    candle_core::safetensors::save(&tensors, &file)?;
    // What ships is the half-precision file, read back as the build will read it.
    let bytes = std::fs::read(&file).map_err(|e| ModelError::Io(file.display().to_string(), e))?;
    let book = Codebook::from_bytes(&bytes)?;
    let squared: f64 = lines
        .iter()
        .map(|l| {
            let q = book.lines(book.quantize(l));
            l.iter().zip(&q).map(|(a, b)| f64::from((a - b) * (a - b))).sum::<f64>()
        })
        .sum();
    let rms_error_hz = (squared / (frames * ORDER).max(1) as f64).sqrt() as f32;
    tracing::info!(rms_error_hz, "vocoder line codebooks");
    Ok(VocoderReport {
        minutes: clips.minutes,
        files: clips.files,
        frames,
        rms_error_hz,
        seconds: started.elapsed().as_secs_f64(),
        file,
    })
}

/// The manifest committed next to the codebooks.
pub fn manifest(cfg: &VocoderConfig, report: &VocoderReport, command: &str) -> Result<String, ModelError> {
    #[derive(serde::Serialize)]
    struct Details {
        kmeans_iterations: usize,
        splits: [usize; 3],
        entries: usize,
        floor_dbfs: f32,
        rms_error_hz: f32,
    }
    let details = Details {
        kmeans_iterations: cfg.iterations,
        splits: SPLITS,
        entries: ENTRIES,
        floor_dbfs: FLOOR_DB,
        rms_error_hz: report.rms_error_hz,
    };
    // K-means reads every row at each iteration: one batch of all of them.
    let run = train::Run {
        command,
        files: report.files,
        frames: report.frames,
        seed: cfg.seed,
        batch: report.frames,
        seconds: report.seconds,
        minutes: &report.minutes,
    };
    train::manifest_toml("aic-v2-lsf", &report.file, &run, &details)
}
