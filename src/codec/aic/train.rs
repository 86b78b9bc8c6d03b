//! Training aic-v1 on 2 CPU cores (`auralink aic train`), in three phases:
//! 1. encoder and decoder together, with the quantizer stood in for by noise on the latent
//!    as large as each mode's quantization error (the decoder is told the mode);
//! 2. the residual quantizer's codebooks, by k-means on the encoder's latents, stage by stage;
//! 3. the decoder again, on really quantized latents of every mode.
//!
//! Every random choice comes from the seed, so a run is repeatable on the same machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ModelError;
use super::bitstream::AIC_V1;
use super::mdct::{self, HOP};
use super::model::{self, AicModel, CODEBOOK, FEATURES, LATENT, Mlp, Rvq, STAGES};
use crate::codec::modes::Mode;

/// Standard deviation of the noise that stands in for each mode's quantization error in
/// phase 1 (latents lie in (-1, 1)).
const MODE_NOISE: [f32; 3] = [0.02, 0.08, 0.15];

#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Holds `train/` (16 kHz mono 16-bit WAV files, in any subfolders); nothing else in it
    /// is read.
    pub data: PathBuf,
    /// Where `aic-v1.safetensors` is written.
    pub out: PathBuf,
    pub seed: u64,
    pub batch: usize,
    pub autoencoder_steps: usize,
    pub kmeans_rows: usize,
    pub kmeans_iterations: usize,
    pub decoder_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            out: PathBuf::new(),
            seed: 1,
            batch: 256,
            autoencoder_steps: 6000,
            kmeans_rows: 32_768,
            kmeans_iterations: 6,
            decoder_steps: 2000,
        }
    }
}

/// What a run did, for the manifest.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Minutes of audio per source folder under `train/`.
    pub minutes: BTreeMap<String, f64>,
    pub files: usize,
    pub frames: usize,
    /// Mean loss over the first and last 100 steps of phases 1 and 3.
    pub autoencoder_loss: (f32, f32),
    pub decoder_loss: (f32, f32),
    pub seconds: f64,
    pub file: PathBuf,
}

/// Reads a 16 kHz mono 16-bit WAV file as samples in -1..1.
pub fn read_wav(path: &Path) -> Result<Vec<f32>, ModelError> {
    let bad = |e: &dyn std::fmt::Display| ModelError::Data(format!("{}: {e}", path.display()));
    let mut r = hound::WavReader::open(path).map_err(|e| bad(&e))?;
    let spec = r.spec();
    if spec.sample_rate != 16_000 || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(bad(&"must be 16 kHz mono 16-bit"));
    }
    r.samples::<i16>().map(|s| s.map(|s| f32::from(s) / 32768.0).map_err(|e| bad(&e))).collect()
}

/// Every `.wav` under `dir`, sorted.
pub fn wav_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| ModelError::Io(d.display().to_string(), e))?;
        for e in entries {
            let p = e.map_err(|e| ModelError::Io(d.display().to_string(), e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wav") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The training clips: every file under `data/train/`, cut to whole frames (files under two
/// frames are left out), with minutes per source folder and the number of files.
pub(super) struct Clips {
    pub pcm: Vec<Vec<f32>>,
    pub minutes: BTreeMap<String, f64>,
    pub files: usize,
}

pub(super) fn clips(data: &Path) -> Result<Clips, ModelError> {
    let root = data.join("train");
    let files = wav_files(&root)?;
    if files.is_empty() {
        return Err(ModelError::Data(format!("no .wav files under {}", root.display())));
    }
    let mut minutes = BTreeMap::new();
    let mut pcm = Vec::with_capacity(files.len());
    for f in &files {
        let mut clip = read_wav(f)?;
        let source = f.strip_prefix(&root).ok().and_then(|p| p.iter().next()).map_or("", |s| s.to_str().unwrap_or(""));
        *minutes.entry(source.to_string()).or_insert(0.0) += clip.len() as f64 / 16_000.0 / 60.0;
        clip.truncate(clip.len() / HOP * HOP);
        if clip.len() >= 2 * HOP {
            pcm.push(clip);
        }
    }
    Ok(Clips { pcm, minutes, files: files.len() })
}

/// Encoder inputs of every frame of every clip, `[N, ENC_IN]`.
fn dataset(clips: &Clips, device: &Device) -> Result<Tensor, ModelError> {
    let basis = mdct::basis(device)?;
    let mut rows = Vec::new();
    for pcm in &clips.pcm {
        let feats = model::features(&mdct::blocks(pcm, &[0.0; HOP], device)?.matmul(&basis)?)?;
        let frames = feats.dim(0)?;
        let first = model::features(&Tensor::zeros((1, HOP), DType::F32, device)?)?;
        let before = Tensor::cat(&[&first, &feats.narrow(0, 0, frames - 1)?], 0)?;
        rows.push(Tensor::cat(&[&feats, &before], 1)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Replaces every variable with uniform(±1/√fan_in) draws from `rng`, in name order, so that
/// initialization follows the seed.
pub(super) fn init_vars(varmap: &VarMap, rng: &mut StdRng) -> Result<(), ModelError> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let fan_in = if dims.len() == 2 { dims[1] } else { model::HIDDEN };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let v: Vec<f32> = (0..var.elem_count()).map(|_| rng.gen_range(-bound..bound)).collect();
        var.set(&Tensor::from_vec(v, dims, var.device())?)?;
    }
    Ok(())
}

pub(super) fn batch(data: &Tensor, size: usize, rng: &mut StdRng) -> Result<Tensor, ModelError> {
    let n = data.dim(0)?;
    let idx: Vec<u32> = (0..size).map(|_| rng.gen_range(0..n as u32)).collect();
    Ok(data.index_select(&Tensor::from_vec(idx, size, data.device())?, 0)?)
}

fn loss(out: &Tensor, target: &Tensor) -> Result<Tensor, ModelError> {
    Ok(model::frame_loss(out, target)?.mean_all()?)
}

fn decoder_input(z: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
    Ok(Tensor::cat(&[z, &model::mode_one_hot(mode, z.dim(0)?, z.device())?], 1)?)
}

pub(super) fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

pub(super) fn ends(losses: &[f32]) -> (f32, f32) {
    let k = losses.len().min(100);
    (mean(&losses[..k]), mean(&losses[losses.len() - k..]))
}

/// A `k`-entry k-means codebook for `data` (`[N, dims]`), and each row's entry.
pub(super) fn kmeans(
    data: &Tensor,
    k: usize,
    iterations: usize,
    rng: &mut StdRng,
) -> Result<(Tensor, Vec<u32>), ModelError> {
    let rows = data.to_vec2::<f32>()?;
    let (n, dims) = data.dims2()?;
    let pick = |rng: &mut StdRng| rows[rng.gen_range(0..n)].clone();
    let mut centroids: Vec<Vec<f32>> = (0..k).map(|_| pick(rng)).collect();
    let mut assign = vec![0u32; n];
    for it in 0..=iterations {
        let c = Tensor::from_vec(centroids.concat(), (k, dims), data.device())?;
        let norms = c.sqr()?.sum_keepdim(1)?.t()?;
        // In chunks: the full distance matrix would not fit.
        for start in (0..n).step_by(8192) {
            let len = (n - start).min(8192);
            let d = norms.broadcast_sub(&data.narrow(0, start, len)?.matmul(&c.t()?)?.affine(2.0, 0.0)?)?;
            assign[start..start + len].copy_from_slice(&d.argmin(D::Minus1)?.to_vec1::<u32>()?);
        }
        if it == iterations {
            return Ok((c, assign));
        }
        let mut sums = vec![vec![0f64; dims]; k];
        let mut counts = vec![0usize; k];
        for (row, &a) in rows.iter().zip(&assign) {
            counts[a as usize] += 1;
            for (s, x) in sums[a as usize].iter_mut().zip(row) {
                *s += f64::from(*x);
            }
        }
        for j in 0..k {
            centroids[j] = if counts[j] == 0 {
                pick(rng)
            } else {
                sums[j].iter().map(|s| (s / counts[j] as f64) as f32).collect()
            };
        }
    }
    unreachable!("the loop returns on its last iteration")
}

pub fn train(cfg: &TrainConfig) -> Result<TrainReport, ModelError> {
    let started = Instant::now();
    let device = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let clips = clips(&cfg.data)?;
    let data = dataset(&clips, &device)?;
    let (minutes, files) = (clips.minutes, clips.files);
    drop(clips.pcm);
    let frames = data.dim(0)?;
    tracing::info!(files, frames, "training data loaded");

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let encoder = Mlp::new(vb.pp("enc"), model::ENC_IN, LATENT)?;
    let decoder = Mlp::new(vb.pp("dec"), model::DEC_IN, FEATURES)?;
    init_vars(&varmap, &mut rng)?;
    let all_vars = varmap.all_vars();
    let params = ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(all_vars, params.clone())?;

    let mut ae_losses = Vec::new();
    for step in 0..cfg.autoencoder_steps {
        if step == cfg.autoencoder_steps * 3 / 4 {
            opt.set_learning_rate(3e-4);
        }
        let x = batch(&data, cfg.batch, &mut rng)?;
        let mode = Mode::ALL[step % 3];
        let z = encoder.forward(&x)?.tanh()?;
        let sigma = MODE_NOISE[model::mode_index(mode)];
        let noise: Vec<f32> = (0..cfg.batch * LATENT).map(|_| gaussian(&mut rng) * sigma).collect();
        let z = (z + Tensor::from_vec(noise, (cfg.batch, LATENT), &device)?)?;
        let l = loss(&decoder.forward(&decoder_input(&z, mode)?)?, &x.narrow(1, 0, FEATURES)?)?;
        opt.backward_step(&l)?;
        ae_losses.push(l.to_scalar::<f32>()?);
        if step % 500 == 0 {
            tracing::info!(
                step,
                loss = mean(&ae_losses[ae_losses.len().saturating_sub(100)..]),
                "phase 1: autoencoder"
            );
        }
    }

    let sample = batch(&data, cfg.kmeans_rows.min(frames), &mut rng)?;
    let mut residual = encoder.forward(&sample)?.tanh()?;
    let mut codebooks = Vec::with_capacity(STAGES);
    for stage in 0..STAGES {
        let (c, assign) = kmeans(&residual, CODEBOOK, cfg.kmeans_iterations, &mut rng)?;
        let idx = Tensor::from_vec(assign, residual.dim(0)?, &device)?;
        residual = (residual - c.index_select(&idx, 0)?)?;
        let rms = residual.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        tracing::info!(stage, residual_rms = rms, "phase 2: codebooks");
        codebooks.push(c);
    }
    let rvq = Rvq::new(codebooks)?;

    let dec_vars: Vec<Var> = {
        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().filter(|n| n.starts_with("dec.")).collect();
        names.sort();
        names.into_iter().map(|n| data[n].clone()).collect()
    };
    let mut opt = AdamW::new(dec_vars, ParamsAdamW { lr: 3e-4, ..params })?;
    let mut dec_losses = Vec::new();
    for step in 0..cfg.decoder_steps {
        let x = batch(&data, cfg.batch, &mut rng)?;
        let mode = Mode::ALL[step % 3];
        let z = encoder.forward(&x)?.tanh()?.detach();
        let (_, zq) = rvq.quantize(&z, AIC_V1.levels(mode))?;
        let l = loss(&decoder.forward(&decoder_input(&zq, mode)?)?, &x.narrow(1, 0, FEATURES)?)?;
        opt.backward_step(&l)?;
        dec_losses.push(l.to_scalar::<f32>()?);
        if step % 500 == 0 {
            tracing::info!(step, loss = mean(&dec_losses[dec_losses.len().saturating_sub(100)..]), "phase 3: decoder");
        }
    }

    std::fs::create_dir_all(&cfg.out).map_err(|e| ModelError::Io(cfg.out.display().to_string(), e))?;
    let file = cfg.out.join("aic-v1.safetensors");
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        tensors.insert(name.clone(), var.as_tensor().to_dtype(DType::F16)?);
    }
    tensors.insert("rvq.codebooks".into(), Tensor::stack(&rvq.codebooks, 0)?.to_dtype(DType::F16)?);
    candle_core::safetensors::save(&tensors.into_iter().collect(), &file)?;
    // The saved (half-precision) file is what ships; it must load.
    AicModel::load(&file, &device)?;
    Ok(TrainReport {
        minutes,
        files,
        frames,
        autoencoder_loss: ends(&ae_losses),
        decoder_loss: ends(&dec_losses),
        seconds: started.elapsed().as_secs_f64(),
        file,
    })
}

/// The manifest committed next to the weights: what they are and how to make them again.
pub fn manifest(cfg: &TrainConfig, report: &TrainReport, command: &str) -> Result<String, ModelError> {
    #[derive(serde::Serialize)]
    struct Phases {
        autoencoder_steps: usize,
        kmeans_rows: usize,
        kmeans_iterations: usize,
        decoder_steps: usize,
        autoencoder_loss_first_last: [f32; 2],
        decoder_loss_first_last: [f32; 2],
    }
    let phases = Phases {
        autoencoder_steps: cfg.autoencoder_steps,
        kmeans_rows: cfg.kmeans_rows,
        kmeans_iterations: cfg.kmeans_iterations,
        decoder_steps: cfg.decoder_steps,
        autoencoder_loss_first_last: [report.autoencoder_loss.0, report.autoencoder_loss.1],
        decoder_loss_first_last: [report.decoder_loss.0, report.decoder_loss.1],
    };
    let run = Run {
        command,
        files: report.files,
        frames: report.frames,
        seed: cfg.seed,
        batch: cfg.batch,
        seconds: report.seconds,
        minutes: &report.minutes,
    };
    manifest_toml("aic-v1", &report.file, &run, &phases)
}

/// What every training run's manifest records.
pub(super) struct Run<'a> {
    pub command: &'a str,
    pub files: usize,
    pub frames: usize,
    pub seed: u64,
    pub batch: usize,
    pub seconds: f64,
    /// Minutes of audio per source folder.
    pub minutes: &'a BTreeMap<String, f64>,
}

/// `[model]` (name, file, sha256, size) over `[training]` (the run, and what `details` adds).
pub(super) fn manifest_toml<T: serde::Serialize>(
    name: &str,
    file: &Path,
    run: &Run,
    details: &T,
) -> Result<String, ModelError> {
    use sha2::Digest;

    #[derive(serde::Serialize)]
    struct Manifest<'a, T> {
        model: ModelEntry<'a>,
        training: Training<'a, T>,
    }
    #[derive(serde::Serialize)]
    struct ModelEntry<'a> {
        name: &'a str,
        file: &'a str,
        sha256: String,
        bytes: usize,
        dtype: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Training<'a, T> {
        command: &'a str,
        data: &'a str,
        files: usize,
        frames: usize,
        seed: u64,
        batch: usize,
        seconds: u64,
        #[serde(flatten)]
        details: &'a T,
        minutes: BTreeMap<String, f64>,
    }
    let bytes = std::fs::read(file).map_err(|e| ModelError::Io(file.display().to_string(), e))?;
    let doc = Manifest {
        model: ModelEntry {
            name,
            file: file.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            sha256: hex(&sha2::Sha256::digest(&bytes)),
            bytes: bytes.len(),
            dtype: "f16",
        },
        training: Training {
            command: run.command,
            data: "train/ of the set scripts/aic-data.sh builds; heldout/ is never read",
            files: run.files,
            frames: run.frames,
            seed: run.seed,
            batch: run.batch,
            seconds: run.seconds.round() as u64,
            details,
            minutes: run.minutes.iter().map(|(k, v)| (k.clone(), (v * 10.0).round() / 10.0)).collect(),
        },
    };
    toml::to_string(&doc).map_err(|e| ModelError::Data(e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u: f32 = rng.gen_range(f32::EPSILON..1.0);
    let v: f32 = rng.gen_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}
