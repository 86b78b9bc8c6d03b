//! Training the Opus enhancer (`auralink aic train-enhancer`) on 2 CPU cores: every training
//! clip goes through Opus at 16 kHz at each Opus-core mode's rate, and the network learns
//! a gain per critical band that brings the decoded frame's band levels closest to the
//! original's ([`super::quality`]). Every random choice comes from the seed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::ModelError;
use super::enhance::{self, CONTEXT, ENH_IN, Enhancer};
use super::mdct::HOP;
use super::quality;
use super::stft::BINS;
use super::train::{self, batch, ends, init_vars, mean};
use crate::codec::modes::Mode;
use crate::codec::opus::{OpusDecoder, OpusEncoder, WIDEBAND_RATE};

pub const WEIGHTS: &str = "aic-v2-enhancer.safetensors";

#[derive(Debug, Clone)]
pub struct EnhanceConfig {
    /// Holds `train/` (see [`train::TrainConfig::data`]).
    pub data: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub batch: usize,
    pub steps: usize,
}

impl Default for EnhanceConfig {
    fn default() -> Self {
        EnhanceConfig { data: PathBuf::new(), out: PathBuf::new(), seed: 1, batch: 256, steps: 8000 }
    }
}

pub struct EnhanceReport {
    pub minutes: BTreeMap<String, f64>,
    pub files: usize,
    pub frames: usize,
    /// Mean band distance of plain Opus (every gain 1) over the training frames, per Opus-core
    /// mode.
    pub opus_loss: Vec<(Mode, f32)>,
    pub loss: (f32, f32),
    pub seconds: f64,
    pub file: PathBuf,
}

/// Extra weight of a band's excess energy over its missing energy in the loss.
const OVER_WEIGHT: f32 = 2.0;

/// The modes whose bitstream carries Opus.
fn opus_modes() -> impl Iterator<Item = (Mode, u32)> {
    Mode::ALL.into_iter().filter_map(|m| enhance::opus_rate(m).map(|r| (m, r)))
}

/// What the Opus decoder makes of `pcm` through `mode`'s core, and `pcm` delayed as the
/// decoder's output is, so that frame t of one lines up with frame t of the other.
fn through_opus(pcm: &[f32], mode: Mode, bitrate: u32) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let mut enc = OpusEncoder::at(WIDEBAND_RATE, bitrate)?;
    enhance::set_core(&mut enc, mode, f64::from(bitrate) / f64::from(Mode::REFERENCE_BPS))?;
    let mut dec = OpusDecoder::at(WIDEBAND_RATE)?;
    let delay = enc.lookahead()?;
    let mut decoded = Vec::with_capacity(pcm.len());
    for frame in pcm.chunks(HOP) {
        let packet = enc.encode(frame)?;
        decoded.extend(dec.decode(Some(&packet))?);
    }
    let mut target = vec![0.0; delay];
    target.extend_from_slice(&pcm[..pcm.len() - delay]);
    Ok((decoded, target))
}

/// Rows of every other frame of every clip through every Opus-core mode:
/// `[N, ENH_IN + 2 BINS + 1]`, the network's input, the decoded power spectrum the gains apply
/// to (squared), the original's, and the row's weight: one over its mode's plain-Opus
/// distance, so that ADAPTIVE, whose Opus leaves out everything above 4 kHz (a distance the
/// gains cannot make up), does not drown CONSERVATIVE.
fn dataset(clips: &train::Clips, enhancer: &Enhancer) -> Result<(Tensor, Vec<(Mode, f32)>), ModelError> {
    let device = enhancer.device();
    let bands = quality::band_matrix(BINS, device)?;
    let mut rows = Vec::new();
    let mut opus_loss = Vec::new();
    for (mode, rate) in opus_modes() {
        let mut losses = Vec::new();
        let first = rows.len();
        for (i, pcm) in clips.pcm.iter().enumerate() {
            let (decoded, target) = through_opus(pcm, mode, rate)?;
            let d = enhancer.analyze(&decoded, &[0.0; HOP])?;
            let o = enhancer.analyze(&target, &[0.0; HOP])?;
            let original = (o.re.sqr()? + o.im.sqr()?)?;
            let x = enhance::inputs(&d.features, &enhance::silence(CONTEXT - 1, device)?, mode)?;
            let plain = (d.re.sqr()? + d.im.sqr()?)?;
            losses.push(quality::band_distance(&plain, &original, &bands)?.mean_all()?.to_scalar::<f32>()?);
            // Neighbouring frames say nearly the same; every other one halves the memory.
            let keep: Vec<u32> = (0..x.dim(0)? as u32).filter(|t| (*t as usize + i).is_multiple_of(2)).collect();
            let keep = Tensor::from_vec(keep.clone(), keep.len(), device)?;
            rows.push(Tensor::cat(&[&x, &plain, &original], 1)?.index_select(&keep, 0)?);
        }
        tracing::info!(?mode, rate, loss = mean(&losses), "plain Opus");
        for r in &mut rows[first..] {
            let weight = Tensor::full(1.0 / mean(&losses), (r.dim(0)?, 1), device)?;
            *r = Tensor::cat(&[&*r, &weight], 1)?;
        }
        opus_loss.push((mode, mean(&losses)));
    }
    Ok((Tensor::cat(&rows, 0)?, opus_loss))
}

pub fn train(cfg: &EnhanceConfig) -> Result<EnhanceReport, ModelError> {
    let started = Instant::now();
    let device = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let varmap = VarMap::new();
    let enhancer = Enhancer::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    init_vars(&varmap, &mut rng)?;
    // The last layer starts at zero: every gain one, the Opus core as it is.
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        if name.starts_with("enh.l3.") {
            var.set(&var.as_tensor().zeros_like()?)?;
        }
    }
    let clips = train::clips(&cfg.data)?;
    let (data, opus_loss) = dataset(&clips, &enhancer)?;
    let frames = data.dim(0)?;
    tracing::info!(files = clips.files, frames, "enhancer training data ready");
    drop(clips.pcm);
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() })?;
    let bands = quality::band_matrix(BINS, &device)?;
    let mut losses = Vec::new();
    for step in 0..cfg.steps {
        if step == cfg.steps * 3 / 4 {
            opt.set_learning_rate(3e-4);
        }
        let b = batch(&data, cfg.batch, &mut rng)?;
        let x = b.narrow(1, 0, ENH_IN)?;
        let decoded = b.narrow(1, ENH_IN, BINS)?;
        let original = b.narrow(1, ENH_IN + BINS, BINS)?;
        let weight = b.narrow(1, ENH_IN + 2 * BINS, 1)?;
        let out = (decoded * enhancer.gains(&x)?.sqr()?)?;
        let d = quality::level_difference(&out, &original, &bands)?;
        // Energy added (coding noise in the spectrum's valleys) costs more than energy
        // missing, as it does in PESQ's disturbance.
        let over = d.relu()?.sqr()?.affine(f64::from(OVER_WEIGHT), 0.0)?;
        let l = ((d.sqr()? + over)?.mean_keepdim(1)? * weight)?.mean_all()?;
        opt.backward_step(&l)?;
        losses.push(l.to_scalar::<f32>()?);
        if step % 500 == 0 {
            tracing::info!(step, loss = mean(&losses[losses.len().saturating_sub(100)..]), "enhancer");
        }
    }

    std::fs::create_dir_all(&cfg.out).map_err(|e| ModelError::Io(cfg.out.display().to_string(), e))?;
    let file = cfg.out.join(WEIGHTS);
    let tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F16)?)))
        .collect::<Result<_, ModelError>>()?;
    candle_core::safetensors::save(&tensors, &file)?;
    // The saved (half-precision) file is what ships; it must load.
    Enhancer::load(&file, &device)?;
    Ok(EnhanceReport {
        minutes: clips.minutes,
        files: clips.files,
        frames,
        opus_loss,
        loss: ends(&losses),
        seconds: started.elapsed().as_secs_f64(),
        file,
    })
}

/// The manifest committed next to the weights.
pub fn manifest(cfg: &EnhanceConfig, report: &EnhanceReport, command: &str) -> Result<String, ModelError> {
    #[derive(serde::Serialize)]
    struct Details {
        steps: usize,
        loss_first_last: [f32; 2],
        opus_rates_bps: BTreeMap<&'static str, u32>,
        plain_opus_band_distance: BTreeMap<&'static str, f32>,
    }
    let details = Details {
        steps: cfg.steps,
        loss_first_last: [report.loss.0, report.loss.1],
        opus_rates_bps: opus_modes().map(|(m, r)| (m.as_str(), r)).collect(),
        plain_opus_band_distance: report.opus_loss.iter().map(|(m, l)| (m.as_str(), *l)).collect(),
    };
    let run = train::Run {
        command,
        files: report.files,
        frames: report.frames,
        seed: cfg.seed,
        batch: cfg.batch,
        seconds: report.seconds,
        minutes: &report.minutes,
    };
    train::manifest_toml("aic-v2-enhancer", &report.file, &run, &details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_names_the_weights_and_the_run_and_reads_back() {
        let file = std::env::temp_dir().join(format!("aic-manifest-{}.bin", std::process::id()));
        std::fs::write(&file, b"weights").unwrap();
        let report = EnhanceReport {
            minutes: BTreeMap::from([("espeak".to_string(), 72.24)]),
            files: 3,
            frames: 40,
            opus_loss: vec![(Mode::Conservative, 0.5), (Mode::Adaptive, 14.0)],
            loss: (1.25, 0.75),
            seconds: 9.6,
            file: file.clone(),
        };
        let text = manifest(&EnhanceConfig::default(), &report, "auralink aic train-enhancer").unwrap();
        std::fs::remove_file(&file).unwrap();
        let doc: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(doc["model"]["bytes"].as_integer(), Some(7));
        let t = &doc["training"];
        assert_eq!(t["command"].as_str(), Some("auralink aic train-enhancer"));
        assert_eq!((t["files"].as_integer(), t["seconds"].as_integer()), (Some(3), Some(10)));
        assert_eq!(t["steps"].as_integer(), Some(8000));
        assert_eq!(t["opus_rates_bps"]["conservative"].as_integer(), Some(12_000));
        assert_eq!(t["plain_opus_band_distance"]["adaptive"].as_float(), Some(14.0));
        assert_eq!(t["minutes"]["espeak"].as_float(), Some(72.2));
    }
}
