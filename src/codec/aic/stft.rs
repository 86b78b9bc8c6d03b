//! A short-time Fourier transform for the enhancer: 40 ms square-root-Hann windows every
//! 20 ms at 16 kHz, 321 bins of 25 Hz. The squared windows overlap-add to exactly one, so
//! gains of one give back the input (one frame late), and changing gains fade into each other
//! across the overlap instead of leaving the time-domain aliasing an MDCT would.

use candle_core::{Device, Tensor};

use super::ModelError;
use super::mdct::{BLOCK, HOP};

/// Bins from 0 to 8 kHz.
pub const BINS: usize = HOP + 1;

/// Analysis and synthesis bases, windowed.
pub struct Stft {
    /// `[BLOCK, BINS]` each: real and imaginary parts.
    cos: Tensor,
    sin: Tensor,
    /// `[BINS, BLOCK]` each: back to windowed samples.
    icos: Tensor,
    isin: Tensor,
}

impl Stft {
    pub fn new(device: &Device) -> Result<Stft, ModelError> {
        let n = BLOCK as f64;
        let window = |i: usize| (0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n).cos()).sqrt();
        let angle = |i: usize, k: usize| std::f64::consts::TAU * ((i * k) % BLOCK) as f64 / n;
        let (mut c, mut s) = (Vec::with_capacity(BLOCK * BINS), Vec::with_capacity(BLOCK * BINS));
        for i in 0..BLOCK {
            for k in 0..BINS {
                c.push((window(i) * angle(i, k).cos()) as f32);
                s.push((-window(i) * angle(i, k).sin()) as f32);
            }
        }
        let (mut ic, mut is) = (Vec::with_capacity(BLOCK * BINS), Vec::with_capacity(BLOCK * BINS));
        for k in 0..BINS {
            // A real signal's spectrum is symmetric: every bin but DC and Nyquist counts twice.
            let weight = if k == 0 || k == BINS - 1 { 1.0 } else { 2.0 } / n;
            for i in 0..BLOCK {
                ic.push((weight * window(i) * angle(i, k).cos()) as f32);
                is.push((-weight * window(i) * angle(i, k).sin()) as f32);
            }
        }
        Ok(Stft {
            cos: Tensor::from_vec(c, (BLOCK, BINS), device)?,
            sin: Tensor::from_vec(s, (BLOCK, BINS), device)?,
            icos: Tensor::from_vec(ic, (BINS, BLOCK), device)?,
            isin: Tensor::from_vec(is, (BINS, BLOCK), device)?,
        })
    }

    /// Real and imaginary parts `[T, BINS]` of blocks `[T, BLOCK]` (see `mdct::blocks`).
    pub fn forward(&self, blocks: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        Ok((blocks.matmul(&self.cos)?, blocks.matmul(&self.sin)?))
    }

    /// Windowed blocks `[T, BLOCK]` to overlap-add (`mdct::overlap_add`).
    pub fn inverse(&self, re: &Tensor, im: &Tensor) -> Result<Tensor, ModelError> {
        Ok((re.matmul(&self.icos)? + im.matmul(&self.isin)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::aic::mdct;

    #[test]
    fn analysis_then_synthesis_is_the_identity_one_frame_late() {
        let d = Device::Cpu;
        let stft = Stft::new(&d).unwrap();
        let pcm: Vec<f32> = (0..HOP * 12).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let (re, im) = stft.forward(&mdct::blocks(&pcm, &[0.0; HOP], &d).unwrap()).unwrap();
        let blocks = stft.inverse(&re, &im).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let out = mdct::overlap_add(&blocks, &mut [0.0; HOP]);
        for (a, b) in out[HOP..].iter().zip(&pcm[..pcm.len() - HOP]) {
            assert!((a - b).abs() < 1e-4, "{a} != {b}");
        }
    }
}
