//! aic-v2's Opus-core modes: Opus carries the speech at the mode's rate (16 kHz, 20 ms
//! frames), and a network trained on what that Opus decoder makes of speech sets a gain per
//! critical band of the decoded audio's short-time spectrum ([`super::stft`]) to bring its
//! band levels closer to the original's. Opus keeps the waveform (phase, pitch, timing), which
//! a network trained in an hour on 2 cores cannot synthesize; the network only reshapes the
//! spectrum's envelope, which costs no bits. Where the core is narrowband (ADAPTIVE), noise
//! in time with the speech fills the band above it ([`super::high_band`]). The output runs one
//! frame (the windows' overlap) behind Opus's.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::high_band::HighBand;
use super::mdct::{self, HOP};
use super::model::{self, Mlp};
use super::quality::{self, BANDS};
use super::stft::{BINS, Stft};
use super::{ModelError, bitstream};
use crate::codec::modes::Mode;
use crate::codec::opus::OpusEncoder;

/// Per frame: the decoded spectrum's magnitudes, compressed, as unit-RMS shape and log RMS.
pub const FEATURES: usize = BINS + 1;
/// Frames of decoded features the network sees: this one and the two before.
pub const CONTEXT: usize = 3;
/// Network input: the context's features, newest first, and the mode, one-hot.
pub const ENH_IN: usize = CONTEXT * FEATURES + 3;
/// Gains lie in (0, MAX_GAIN): the network may halve or double a band, never flip it.
const MAX_GAIN: f64 = 2.0;

/// What carries a mode's audio in aic-v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Core {
    /// Opus asked for this many bit/s, enhanced by the network.
    Opus(u32),
    /// The vocoder ([`super::lpc`]) as it is: Opus cannot go below about 4.4 kbit/s, even
    /// in 60 ms frames, and the network trained on the vocoder's output cost Whisper's word
    /// error rate more than it gained in STOI (docs/benchmarks.md).
    Vocoder,
}

/// What carries `mode`: Opus asked for the mode's bitstream rate (what [`opus_rate_at`] gives
/// at the mode's own target ratio), or the vocoder.
pub fn core(mode: Mode) -> Core {
    match mode {
        Mode::Conservative | Mode::Adaptive => Core::Opus(mode.bitrate_bps()),
        Mode::Aggressive => Core::Vocoder,
    }
}

/// The rate Opus is asked for in a mode whose core is Opus.
pub fn opus_rate(mode: Mode) -> Option<u32> {
    match core(mode) {
        Core::Opus(rate) => Some(rate),
        Core::Vocoder => None,
    }
}

/// The rate Opus is asked for in a mode whose core is Opus when the track's settings ask for
/// packets of `target_ratio` the size of Opus at 24 kbit/s (the mode's own ratio asks for its
/// rate above), and at least `CORE_FLOOR_BPS`.
pub fn opus_rate_at(mode: Mode, target_ratio: f64) -> Option<u32> {
    let rate = (target_ratio.clamp(0.0, 1.0) * f64::from(Mode::REFERENCE_BPS)).round() as u32;
    opus_rate(mode).map(|_| rate.max(CORE_FLOOR_BPS))
}

/// The least the Opus core is asked for. Asked for less, Opus spends no fewer bits (its floor
/// in 20 ms frames is 4.3–5 kbit/s, by the signal), and under 1.2 kbit/s it sends bare TOC bytes of
/// whatever bandwidth it last had, which the bitstream cannot carry.
const CORE_FLOOR_BPS: u32 = 4_800;

/// Sets `enc` up as `mode`'s Opus core at `target_ratio` ([`opus_rate_at`]) and the bandwidth
/// the bitstream holds the mode to (a mode without an Opus core leaves it as it is).
pub fn set_core(enc: &mut OpusEncoder, mode: Mode, target_ratio: f64) -> Result<(), ModelError> {
    if let (Some(rate), Some(bandwidth)) = (opus_rate_at(mode, target_ratio), bitstream::core_bandwidth(mode)) {
        enc.set_bitrate(rate)?;
        enc.set_bandwidth(bandwidth)?;
    }
    Ok(())
}

/// One frame's spectrum: real and imaginary parts `[T, BINS]`, and the network's features.
pub struct Spectrum {
    pub re: Tensor,
    pub im: Tensor,
    pub features: Tensor,
}

pub struct Enhancer {
    device: Device,
    stft: Stft,
    /// `[BANDS, BINS]`: a band's gain onto its bins.
    spread: Tensor,
    high_band: HighBand,
    pub net: Mlp,
}

impl Enhancer {
    /// Builds the network over `vb` (weights from a file, or variables being trained).
    pub fn new(vb: VarBuilder) -> Result<Enhancer, ModelError> {
        let device = vb.device().clone();
        Ok(Enhancer {
            stft: Stft::new(&device)?,
            spread: quality::band_matrix(BINS, &device)?.t()?.contiguous()?,
            high_band: HighBand::new(&device)?,
            net: Mlp::new(vb.pp("enh"), ENH_IN, BANDS)?,
            device,
        })
    }

    /// Loads a weights file (safetensors: `enh.*`).
    pub fn load(path: &Path, device: &Device) -> Result<Enhancer, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io(path.display().to_string(), e))?;
        Enhancer::new(VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The spectrum of every frame of `pcm` (16 kHz, whole frames) after `before`.
    pub fn analyze(&self, pcm: &[f32], before: &[f32; HOP]) -> Result<Spectrum, ModelError> {
        let (re, im) = self.stft.forward(&mdct::blocks(pcm, before, &self.device)?)?;
        let magnitude = (re.sqr()? + im.sqr()?)?.sqrt()?;
        Ok(Spectrum { features: model::features(&magnitude)?, re, im })
    }

    /// Per-bin gains `[T, BINS]` (each its band's) for input rows `[T, ENH_IN]`.
    pub fn gains(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        Ok(candle_nn::ops::sigmoid(&self.net.forward(input)?)?.affine(MAX_GAIN, 0.0)?.matmul(&self.spread)?)
    }
}

/// The features of silence: what the context holds before the first frame.
pub fn silence(frames: usize, device: &Device) -> Result<Tensor, ModelError> {
    model::features(&Tensor::zeros((frames, BINS), DType::F32, device)?)
}

/// Input rows for consecutive frames' features `[T, FEATURES]`, `history` holding the
/// `CONTEXT - 1` frames before the first, oldest first.
pub fn inputs(feats: &Tensor, history: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
    let frames = feats.dim(0)?;
    let all = Tensor::cat(&[history, feats], 0)?;
    let mut parts: Vec<Tensor> =
        (0..CONTEXT).map(|k| all.narrow(0, CONTEXT - 1 - k, frames)).collect::<Result<_, _>>()?;
    parts.push(model::mode_one_hot(mode, frames, feats.device())?);
    Ok(Tensor::cat(&parts, 1)?)
}

/// One track's enhancement of decoded Opus audio.
pub struct EnhancerState {
    enhancer: Arc<Enhancer>,
    before: [f32; HOP],
    history: Tensor,
    tail: [f32; HOP],
    /// The high band's noise ([`HighBand`]).
    seed: u32,
}

impl EnhancerState {
    pub fn new(enhancer: Arc<Enhancer>) -> Result<EnhancerState, ModelError> {
        let history = silence(CONTEXT - 1, enhancer.device())?;
        Ok(EnhancerState { enhancer, before: [0.0; HOP], history, tail: [0.0; HOP], seed: 1 })
    }

    /// Enhanced audio for whole 20 ms frames of decoded 16 kHz audio, one frame behind.
    pub fn process(&mut self, pcm: &[f32], mode: Mode) -> Result<Vec<f32>, ModelError> {
        if pcm.is_empty() || !pcm.len().is_multiple_of(HOP) {
            return Err(ModelError::FrameSize(pcm.len()));
        }
        let e = &self.enhancer;
        let spectrum = e.analyze(pcm, &self.before)?;
        let gains = e.gains(&inputs(&spectrum.features, &self.history, mode)?)?;
        let (mut re, mut im) = ((&spectrum.re * &gains)?, (&spectrum.im * &gains)?);
        if matches!(bitstream::core_bandwidth(mode), Some(opus::Bandwidth::Narrowband)) {
            (re, im) = e.high_band.fill(&re, &im, &mut self.seed)?;
        }
        let blocks = e.stft.inverse(&re, &im)?;
        let all = Tensor::cat(&[&self.history, &spectrum.features], 0)?;
        self.history = all.narrow(0, all.dim(0)? - (CONTEXT - 1), CONTEXT - 1)?;
        self.before.copy_from_slice(&pcm[pcm.len() - HOP..]);
        Ok(mdct::overlap_add(&blocks.flatten_all()?.to_vec1::<f32>()?, &mut self.tail))
    }

    pub fn reset_state(&mut self) -> Result<(), ModelError> {
        *self = EnhancerState::new(self.enhancer.clone())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_batch_and_wrong_sizes_are_errors() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/aic/aic-v2-enhancer.safetensors");
        let e = Arc::new(Enhancer::load(&path, &Device::Cpu).expect("the committed enhancer loads"));
        let pcm = &crate::codec::vowel(1.0)[..30 * HOP];
        let batch = EnhancerState::new(e.clone()).unwrap().process(pcm, Mode::Adaptive).unwrap();
        let mut s = EnhancerState::new(e.clone()).unwrap();
        let stream: Vec<f32> = pcm.chunks(HOP).flat_map(|f| s.process(f, Mode::Adaptive).unwrap()).collect();
        assert_eq!(batch.len(), pcm.len());
        let worst = batch.iter().zip(&stream).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "streaming differs by {worst}");
        // Gains lie in (0, 2): the output is the input's spectrum reshaped, never blown up.
        let energy = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>();
        let ratio = energy(&batch[HOP..]) / energy(&pcm[..pcm.len() - HOP]);
        assert!((0.1..4.0).contains(&ratio), "energy ratio {ratio}");
        assert!(matches!(s.process(&[0.0; 100], Mode::Adaptive), Err(ModelError::FrameSize(100))));
        assert!(matches!(s.process(&[], Mode::Adaptive), Err(ModelError::FrameSize(0))));
    }
}
