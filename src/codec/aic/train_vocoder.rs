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
    std::fs::create_dir_all(&cfg.out).map_err(|e| ModelError::Io(cfg.out.display().to_string(), e))?;
    let clips = train::clips(&cfg.data)?;
    let mut lines = Vec::new();
    for pcm in &clips.pcm {
        lines.extend(LpcEncoder::lines(pcm, FLOOR_DB)?);
    }
    let frames = lines.len();
    if frames == 0 {
        return Err(ModelError::Data(format!("no frame of the training clips is louder than {FLOOR_DB} dBFS")));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_fits_codebooks_that_load_and_a_manifest_that_names_them() {
        let dir = std::env::temp_dir().join(format!("aic-vocoder-{}", std::process::id()));
        let clips = dir.join("train/vowels");
        std::fs::create_dir_all(&clips).unwrap();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        for (i, seconds) in [1.0, 1.5].into_iter().enumerate() {
            let mut w = hound::WavWriter::create(clips.join(format!("{i}.wav")), spec).unwrap();
            for s in crate::codec::vowel(seconds) {
                w.write_sample((s * 32767.0) as i16).unwrap();
            }
            w.finalize().unwrap();
        }
        let cfg = VocoderConfig { data: dir.clone(), out: dir.clone(), iterations: 3, ..Default::default() };
        let report = train(&cfg).unwrap();
        // A vowel's lines barely move: 512 entries per split hold them within a few Hz.
        assert!(
            report.frames > 100 && report.rms_error_hz < 20.0,
            "{} frames, {} Hz",
            report.frames,
            report.rms_error_hz
        );
        let book = Codebook::from_bytes(&std::fs::read(&report.file).unwrap()).unwrap();
        let lines = LpcEncoder::lines(&crate::codec::vowel(1.0), FLOOR_DB).unwrap();
        let q = book.lines(book.quantize(&lines[20]));
        assert!(q.iter().zip(&lines[20]).all(|(a, b)| (a - b).abs() < 60.0), "{q:?} for {:?}", lines[20]);
        let doc: toml::Value = toml::from_str(&manifest(&cfg, &report, "auralink aic train-vocoder").unwrap()).unwrap();
        assert_eq!(doc["model"]["file"].as_str(), Some(lsf::FILE));
        assert_eq!(doc["training"]["files"].as_integer(), Some(2));
        assert_eq!(doc["training"]["kmeans_iterations"].as_integer(), Some(3));
        // Silence alone has no lines to fit: an error, not a panic.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&clips).unwrap();
        let mut w = hound::WavWriter::create(clips.join("quiet.wav"), spec).unwrap();
        for _ in 0..16_000 {
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        assert!(matches!(train(&cfg), Err(ModelError::Data(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
