//! aic-v1, the network: MDCT features → MLP encoder → 32-d latent in (-1, 1) → residual VQ
//! (20 stages of 4096 entries; a mode sends the first 20, 8 or 4) → MLP decoder told the
//! mode → features → inverse MDCT. Streaming state is the previous input half-block on the
//! encoder side and the overlap tail on the decoder side; `encode`/`decode` over many frames
//! run the same code as the streaming `step`s, batched.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::ModelError;
use super::bitstream::AIC_V1;
use super::mdct::{self, HOP};
use crate::codec::modes::Mode;

pub const LATENT: usize = 32;
pub const HIDDEN: usize = 512;
pub const STAGES: usize = 20;
pub const CODEBOOK: usize = 4096;
/// Per frame: the compressed spectrum's shape (unit RMS) and its log RMS.
pub const FEATURES: usize = HOP + 1;
/// Encoder input: this frame's features and the previous frame's.
pub const ENC_IN: usize = 2 * FEATURES;
/// Decoder input: the quantized latent and the mode, one-hot.
pub const DEC_IN: usize = LATENT + 3;

/// Two hidden GELU layers.
pub struct Mlp {
    layers: [Linear; 3],
}

impl Mlp {
    pub fn new(vb: VarBuilder, input: usize, output: usize) -> Result<Mlp, ModelError> {
        Ok(Mlp {
            layers: [
                candle_nn::linear(input, HIDDEN, vb.pp("l1"))?,
                candle_nn::linear(HIDDEN, HIDDEN, vb.pp("l2"))?,
                candle_nn::linear(HIDDEN, output, vb.pp("l3"))?,
            ],
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.layers[0].forward(x)?.gelu()?;
        let h = self.layers[1].forward(&h)?.gelu()?;
        Ok(self.layers[2].forward(&h)?)
    }
}

/// MDCT coefficients `[T, HOP]` → features `[T, FEATURES]`: the coefficients are compressed
/// (signed square root, which spends precision more like hearing does), then split into a
/// unit-RMS shape and the log of the RMS.
pub fn features(coefs: &Tensor) -> Result<Tensor, ModelError> {
    let y = (coefs.abs()?.affine(1.0, 1e-9)?.powf(-0.5)? * coefs)?;
    let rms = y.sqr()?.mean_keepdim(1)?.affine(1.0, 1e-8)?.sqrt()?;
    let shape = y.broadcast_div(&rms)?;
    Ok(Tensor::cat(&[shape, rms.log()?], 1)?)
}

/// The inverse of [`features`].
pub fn coefficients(features: &Tensor) -> Result<Tensor, ModelError> {
    let shape = features.narrow(1, 0, HOP)?;
    let gain = features.narrow(1, HOP, 1)?.exp()?;
    let y = shape.broadcast_mul(&gain)?;
    Ok((y.abs()? * y)?)
}

/// Per frame (`[T, 1]`): how far decoded features are from the reference's. The shape error
/// is weighted down on quiet frames; the level error counts on all. Training aic-v1
/// minimizes it.
pub fn frame_loss(decoded: &Tensor, reference: &Tensor) -> Result<Tensor, ModelError> {
    let log_rms = reference.narrow(1, HOP, 1)?;
    let weight = log_rms.affine(0.5, 2.0)?.clamp(0.05f32, 1f32)?;
    let shape = (decoded.narrow(1, 0, HOP)? - reference.narrow(1, 0, HOP)?)?.sqr()?.mean_keepdim(1)?;
    let gain = (decoded.narrow(1, HOP, 1)? - log_rms)?.sqr()?;
    Ok(((shape * weight)? + gain.affine(0.5, 0.0)?)?)
}

pub fn mode_index(mode: Mode) -> usize {
    Mode::ALL.iter().position(|m| *m == mode).expect("ALL holds every mode")
}

/// `[T, 3]`, the mode one-hot on every row.
pub fn mode_one_hot(mode: Mode, rows: usize, device: &Device) -> Result<Tensor, ModelError> {
    let mut v = vec![0f32; rows * 3];
    for r in 0..rows {
        v[r * 3 + mode_index(mode)] = 1.0;
    }
    Ok(Tensor::from_vec(v, (rows, 3), device)?)
}

/// The residual vector quantizer.
pub struct Rvq {
    /// `STAGES × [CODEBOOK, LATENT]`.
    pub codebooks: Vec<Tensor>,
    /// Squared norms, `STAGES × [1, CODEBOOK]`.
    norms: Vec<Tensor>,
}

impl Rvq {
    pub fn new(codebooks: Vec<Tensor>) -> Result<Rvq, ModelError> {
        let norms = codebooks.iter().map(|c| Ok(c.sqr()?.sum_keepdim(1)?.t()?)).collect::<Result<_, ModelError>>()?;
        Ok(Rvq { codebooks, norms })
    }

    /// Codes `[T, stages]` of `z` (`[T, LATENT]`), and the quantized latent.
    pub fn quantize(&self, z: &Tensor, stages: usize) -> Result<(Vec<Vec<u16>>, Tensor), ModelError> {
        let rows = z.dim(0)?;
        let mut residual = z.clone();
        let mut codes = vec![Vec::with_capacity(stages); rows];
        for s in 0..stages {
            // |r - c|² = |r|² - 2 r·c + |c|², and |r|² is the same for every entry.
            let dist = self.norms[s].broadcast_sub(&residual.matmul(&self.codebooks[s].t()?)?.affine(2.0, 0.0)?)?;
            let idx = dist.argmin(1)?;
            for (row, i) in codes.iter_mut().zip(idx.to_vec1::<u32>()?) {
                row.push(i as u16);
            }
            residual = (residual - self.codebooks[s].index_select(&idx, 0)?)?;
        }
        Ok((codes, (z - residual)?))
    }

    /// The quantized latent `[T, LATENT]` that codes `[T, stages]` stand for.
    pub fn dequantize(&self, codes: &[Vec<u16>], device: &Device) -> Result<Tensor, ModelError> {
        let stages = codes.first().map_or(0, Vec::len);
        let mut zq = Tensor::zeros((codes.len(), LATENT), DType::F32, device)?;
        for s in 0..stages {
            let idx: Vec<u32> = codes.iter().map(|row| u32::from(row[s])).collect();
            let idx = Tensor::from_vec(idx, codes.len(), device)?;
            zq = (zq + self.codebooks[s].index_select(&idx, 0)?)?;
        }
        Ok(zq)
    }
}

/// A loaded model.
pub struct AicModel {
    device: Device,
    basis: Tensor,
    pub encoder: Mlp,
    pub decoder: Mlp,
    pub rvq: Rvq,
}

impl AicModel {
    /// Builds the network over `vb` (weights from a file, or variables being trained).
    pub fn new(vb: VarBuilder, rvq: Rvq) -> Result<AicModel, ModelError> {
        let device = vb.device().clone();
        Ok(AicModel {
            basis: mdct::basis(&device)?,
            encoder: Mlp::new(vb.pp("enc"), ENC_IN, LATENT)?,
            decoder: Mlp::new(vb.pp("dec"), DEC_IN, FEATURES)?,
            rvq,
            device,
        })
    }

    /// Loads a model file (safetensors: `enc.*`, `dec.*`, `rvq.codebooks`).
    pub fn load(path: &Path, device: &Device) -> Result<AicModel, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io(path.display().to_string(), e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
        let books = vb.get((STAGES, CODEBOOK, LATENT), "rvq.codebooks")?;
        let rvq = Rvq::new((0..STAGES).map(|s| books.get(s)).collect::<Result<_, _>>()?)?;
        AicModel::new(vb, rvq)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Features of every frame of `pcm` (16 kHz, a multiple of HOP), after `before`.
    pub fn analyze(&self, pcm: &[f32], before: &[f32; HOP]) -> Result<Tensor, ModelError> {
        features(&mdct::blocks(pcm, before, &self.device)?.matmul(&self.basis)?)
    }

    /// Latents of consecutive frames' features, `prev` being the features of the frame
    /// before the first.
    pub fn latents(&self, feats: &Tensor, prev: &Tensor) -> Result<Tensor, ModelError> {
        let frames = feats.dim(0)?;
        let before = Tensor::cat(&[prev, &feats.narrow(0, 0, frames - 1)?], 0)?;
        Ok(self.encoder.forward(&Tensor::cat(&[feats, &before], 1)?)?.tanh()?)
    }

    /// Decoded features of quantized latents.
    pub fn reconstruct(&self, zq: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
        let input = Tensor::cat(&[zq, &mode_one_hot(mode, zq.dim(0)?, &self.device)?], 1)?;
        self.decoder.forward(&input)
    }

    /// Audio (HOP samples per frame) from decoded features, continuing after `tail`.
    pub fn synthesize(&self, feats: &Tensor, tail: &mut [f32; HOP]) -> Result<Vec<f32>, ModelError> {
        let blocks = coefficients(feats)?.matmul(&self.basis.t()?)?;
        Ok(mdct::overlap_add(&blocks.flatten_all()?.to_vec1::<f32>()?, tail))
    }
}

/// Streaming encoder for one track.
pub struct AicEncoder {
    model: std::sync::Arc<AicModel>,
    before: [f32; HOP],
    prev: Tensor,
}

impl AicEncoder {
    pub fn new(model: std::sync::Arc<AicModel>) -> Result<AicEncoder, ModelError> {
        // What training saw before each file's first frame: the features of silence.
        let prev = features(&Tensor::zeros((1, HOP), DType::F32, model.device())?)?;
        Ok(AicEncoder { model, before: [0.0; HOP], prev })
    }

    /// Codes of each 20 ms frame of `pcm` (16 kHz, a multiple of HOP samples) at `mode`.
    pub fn encode(&mut self, pcm: &[f32], mode: Mode) -> Result<Vec<Vec<u16>>, ModelError> {
        if pcm.is_empty() || !pcm.len().is_multiple_of(HOP) {
            return Err(ModelError::FrameSize(pcm.len()));
        }
        let feats = self.model.analyze(pcm, &self.before)?;
        let z = self.model.latents(&feats, &self.prev)?;
        let frames = feats.dim(0)?;
        self.prev = feats.narrow(0, frames - 1, 1)?;
        self.before.copy_from_slice(&pcm[pcm.len() - HOP..]);
        Ok(self.model.rvq.quantize(&z, AIC_V1.levels(mode))?.0)
    }

    pub fn reset_state(&mut self) -> Result<(), ModelError> {
        *self = AicEncoder::new(self.model.clone())?;
        Ok(())
    }
}

/// Streaming decoder for one track. Its output runs one frame behind the encoder's input
/// (the MDCT's overlap): 40 ms of algorithmic delay in all.
pub struct AicDecoder {
    model: std::sync::Arc<AicModel>,
    tail: [f32; HOP],
}

impl AicDecoder {
    pub fn new(model: std::sync::Arc<AicModel>) -> AicDecoder {
        AicDecoder { model, tail: [0.0; HOP] }
    }

    /// HOP samples per frame of codes. Every frame must carry `mode`'s number of stages.
    pub fn decode(&mut self, codes: &[Vec<u16>], mode: Mode) -> Result<Vec<f32>, ModelError> {
        let stages = AIC_V1.levels(mode);
        if codes.is_empty() || codes.iter().any(|c| c.len() != stages || c.iter().any(|&i| usize::from(i) >= CODEBOOK))
        {
            return Err(ModelError::Codes { stages });
        }
        let zq = self.model.rvq.dequantize(codes, self.model.device())?;
        let feats = self.model.reconstruct(&zq, mode)?;
        self.model.synthesize(&feats, &mut self.tail)
    }

    pub fn reset_state(&mut self) {
        self.tail = [0.0; HOP];
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use super::*;
    use crate::codec::aic::bitstream::{Frame, HEADER_LEN, Packet};

    /// The committed weights, loaded once for all tests.
    fn model() -> Arc<AicModel> {
        static MODEL: OnceLock<Arc<AicModel>> = OnceLock::new();
        MODEL
            .get_or_init(|| {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/aic/aic-v1.safetensors");
                Arc::new(AicModel::load(&path, &Device::Cpu).expect("models/aic/aic-v1.safetensors loads"))
            })
            .clone()
    }

    #[test]
    fn streaming_equals_batch_for_encoder_and_decoder() {
        let m = model();
        let pcm = &crate::codec::vowel(1.0)[..40 * HOP];
        for mode in Mode::ALL {
            let batch_codes = AicEncoder::new(m.clone()).unwrap().encode(pcm, mode).unwrap();
            let mut enc = AicEncoder::new(m.clone()).unwrap();
            let stream_codes: Vec<Vec<u16>> = pcm.chunks(HOP).flat_map(|f| enc.encode(f, mode).unwrap()).collect();
            assert_eq!(batch_codes.len(), 40);
            let same = batch_codes.iter().zip(&stream_codes).filter(|(a, b)| a == b).count();
            // Batched and single-row products may round differently; a near tie can then pick
            // the neighbouring entry, which is why this is not required of every frame.
            assert!(same >= 38, "{mode:?}: only {same} of 40 frames coded alike");

            let batch_pcm = AicDecoder::new(m.clone()).decode(&batch_codes, mode).unwrap();
            let mut dec = AicDecoder::new(m.clone());
            let stream_pcm: Vec<f32> =
                batch_codes.iter().flat_map(|c| dec.decode(std::slice::from_ref(c), mode).unwrap()).collect();
            assert_eq!(batch_pcm.len(), pcm.len());
            let worst = batch_pcm.iter().zip(&stream_pcm).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{mode:?}: streaming decode differs by {worst}");
        }
    }

    #[test]
    fn codes_survive_the_bitstream_and_modes_change_mid_stream() {
        let m = model();
        let pcm = &crate::codec::vowel(1.0)[..30 * HOP];
        let mut enc = AicEncoder::new(m.clone()).unwrap();
        let mut dec = AicDecoder::new(m.clone());
        let mut out = Vec::new();
        for (i, frame) in pcm.chunks(HOP).enumerate() {
            let mode = Mode::ALL[i / 10];
            let mut codes = enc.encode(frame, mode).unwrap();
            assert_eq!(codes.len(), 1);
            assert_eq!(codes[0].len(), AIC_V1.levels(mode));
            let frame = Frame::Codes(codes.pop().unwrap());
            let bytes =
                Packet { mode, model_id: AIC_V1.model_id, sequence: i as u8, frame: frame.clone() }.encode().unwrap();
            assert_eq!(bytes.len(), HEADER_LEN + (AIC_V1.frame_bits(mode)).div_ceil(8));
            let got = Packet::decode(&bytes).unwrap();
            assert_eq!(got.frame, frame);
            let Frame::Codes(codes) = got.frame else { unreachable!("aic-v1 sends codes") };
            out.extend(dec.decode(&[codes], got.mode).unwrap());
        }
        assert_eq!(out.len(), pcm.len());
        assert!(out.iter().all(|s| s.is_finite()));
        // The decoder reproduces the signal's level (one frame late) in every mode.
        for third in 0..3 {
            let range = (third * 10 + 2) * HOP..(third * 10 + 10) * HOP;
            let energy = |s: &[f32]| s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32;
            let ratio = energy(&out[range.clone()]) / energy(&pcm[range.start - HOP..range.end - HOP]);
            assert!((0.25..4.0).contains(&ratio), "mode {:?}: output energy ratio {ratio}", Mode::ALL[third]);
        }
    }

    #[test]
    fn wrong_input_is_an_error_not_a_panic() {
        let m = model();
        let mut enc = AicEncoder::new(m.clone()).unwrap();
        assert!(matches!(enc.encode(&[0.0; 100], Mode::Adaptive), Err(ModelError::FrameSize(100))));
        assert!(matches!(enc.encode(&[], Mode::Adaptive), Err(ModelError::FrameSize(0))));
        let mut dec = AicDecoder::new(m);
        assert!(matches!(dec.decode(&[vec![1; 4]], Mode::Adaptive), Err(ModelError::Codes { stages: 8 })));
        assert!(matches!(dec.decode(&[vec![4096; 8]], Mode::Adaptive), Err(ModelError::Codes { .. })));
        assert!(matches!(dec.decode(&[], Mode::Adaptive), Err(ModelError::Codes { .. })));
        enc.reset_state().unwrap();
        dec.reset_state();
        assert_eq!(dec.decode(&[vec![0; 8]], Mode::Adaptive).unwrap().len(), HOP);
    }
}
