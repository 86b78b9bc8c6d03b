//! How far decoded audio is from the original, frame by frame, as hearing (and PESQ, which
//! integrates power over critical bands) would mostly judge it: the difference of log
//! energies in bands about as wide as the ear's critical bands, blind to the signs (phase)
//! that no codec at these rates keeps exactly. The enhancer is trained to minimize it; the
//! runtime guard turns it into a PESQ-like estimate.

use candle_core::{Device, Tensor};

use super::ModelError;
use super::mdct::{self, HOP};

/// Upper edges (MDCT bins of 25 Hz) of the bands: 100 Hz wide up to 1 kHz, then widening as
/// critical bands do.
pub const BAND_EDGES: [usize; BANDS] =
    [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 46, 52, 60, 68, 78, 88, 100, 114, 130, 148, 168, 192, 220, 250, 284, 320];
pub const BANDS: usize = 26;
/// Band energy that counts as silence: about 50 dB under speech's louder bands.
const BAND_FLOOR: f64 = 1e-5;
/// Mean absolute coefficient above which a frame counts as speech.
const VOICED: f32 = 2.5e-3;

/// MDCT analysis and band sums, built once.
pub struct QualityMeter {
    basis: Tensor,
    bands: Tensor,
}

impl QualityMeter {
    pub fn new(device: &Device) -> Result<QualityMeter, ModelError> {
        Ok(QualityMeter { basis: mdct::basis(device)?, bands: band_matrix(HOP, device)? })
    }

    /// MDCT coefficients `[T, HOP]` of whole frames of `pcm` after `before`.
    pub fn coefficients(&self, pcm: &[f32], before: &[f32; HOP]) -> Result<Tensor, ModelError> {
        Ok(mdct::blocks(pcm, before, self.basis.device())?.matmul(&self.basis)?)
    }

    /// Per frame (`[T, 1]`), the mean squared difference of log band energies.
    pub fn distance(&self, decoded: &Tensor, original: &Tensor) -> Result<Tensor, ModelError> {
        band_distance(&decoded.sqr()?, &original.sqr()?, &self.bands)
    }

    /// Per frame, whether the original is speech rather than silence.
    pub fn voiced(&self, original: &Tensor) -> Result<Vec<bool>, ModelError> {
        Ok(original.abs()?.mean(1)?.to_vec1::<f32>()?.into_iter().map(|m| m > VOICED).collect())
    }
}

/// Per frame (`[T, 1]`), the mean squared difference of log band energies of two power
/// spectra `[T, bins]`, `bands` being [`band_matrix`] for that many bins.
pub fn band_distance(decoded: &Tensor, original: &Tensor, bands: &Tensor) -> Result<Tensor, ModelError> {
    Ok(level_difference(decoded, original, bands)?.sqr()?.mean_keepdim(1)?)
}

/// Per frame and band (`[T, BANDS]`), the decoded log band energy minus the original's.
pub fn level_difference(decoded: &Tensor, original: &Tensor, bands: &Tensor) -> Result<Tensor, ModelError> {
    let level = |p: &Tensor| -> Result<Tensor, ModelError> { Ok(p.matmul(bands)?.affine(1.0, BAND_FLOOR)?.log()?) };
    Ok((level(decoded)? - level(original)?)?)
}

/// `[bins, BANDS]`: 1 where a bin (of 25 Hz from 0 Hz, or from 12.5 Hz for the MDCT's 320)
/// belongs to a band; bins past the last edge belong to the last band.
pub fn band_matrix(bins: usize, device: &Device) -> Result<Tensor, ModelError> {
    let mut m = vec![0f32; bins * BANDS];
    for k in 0..bins {
        let b = BAND_EDGES.iter().position(|&hi| k < hi).unwrap_or(BANDS - 1);
        m[k * BANDS + b] = 1.0;
    }
    Ok(Tensor::from_vec(m, (bins, BANDS), device)?)
}

/// A PESQ-like (1 to 4.5) estimate from a voiced frame's [`QualityMeter::distance`]: a
/// straight line fit to PESQ-WB against mean distance over the held-out set, both AIC
/// designs (`cargo bench --bench codec` prints the fit).
pub fn estimate(distance: f32) -> f64 {
    let (intercept, slope) = QUALITY_FIT;
    (intercept + slope * f64::from(distance)).clamp(1.0, 4.5)
}

const QUALITY_FIT: (f64, f64) = (2.884, -0.083);
