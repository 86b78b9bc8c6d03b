//! ADAPTIVE's Opus core is held to narrowband: nothing above 4 kHz reaches the decoder, where
//! fricatives carry most of their energy and where PESQ-WB and ViSQOL listen too. The decoder
//! fills 3.95–7.5 kHz with noise that follows the level of what it decoded at 2.5–3.75 kHz,
//! frame by frame: `LEVEL` of that band's magnitude at 3.95 kHz, falling to half of it at
//! 7.5 kHz. It costs no bits and knows nothing of what was there, only that a faint band in
//! time with the speech scores better than none (docs/benchmarks.md). A copy of the decoded
//! 2–4 kHz, tried before, scored worse: its harmonics do not belong up there.

use std::ops::Range;

use candle_core::{Device, Tensor};

use super::ModelError;
use super::stft::BINS;

/// 25 Hz bins: the band filled, and the band whose level it follows.
const FILLED: Range<usize> = 158..301;
const REFERENCE: Range<usize> = 100..150;
/// The fill's magnitude at its lowest bin, relative to the reference band's RMS magnitude.
const LEVEL: f64 = 0.25;

pub struct HighBand {
    /// `[BINS, 1]`: the mean over the reference band's bins.
    reference: Tensor,
    /// `[1, BINS]`: each bin's fill magnitude relative to the reference band's; zero outside.
    shape: Tensor,
}

impl HighBand {
    pub fn new(device: &Device) -> Result<HighBand, ModelError> {
        let (mut reference, mut shape) = (vec![0f32; BINS], vec![0f32; BINS]);
        for k in REFERENCE {
            reference[k] = 1.0 / REFERENCE.len() as f32;
        }
        for k in FILLED {
            shape[k] = (LEVEL * (1.0 - 0.5 * (k - FILLED.start) as f64 / FILLED.len() as f64)) as f32;
        }
        Ok(HighBand {
            reference: Tensor::from_vec(reference, (BINS, 1), device)?,
            shape: Tensor::from_vec(shape, (1, BINS), device)?,
        })
    }

    /// A spectrum's real and imaginary parts `[T, BINS]` with the fill added, its phases
    /// drawn from `seed` frame by frame (so a stream and the whole clip at once draw the same).
    pub fn fill(&self, re: &Tensor, im: &Tensor, seed: &mut u32) -> Result<(Tensor, Tensor), ModelError> {
        let frames = re.dim(0)?;
        let level = (re.sqr()? + im.sqr()?)?.matmul(&self.reference)?.sqrt()?;
        let (mut cos, mut sin) = (vec![0f32; frames * BINS], vec![0f32; frames * BINS]);
        for f in 0..frames {
            for k in FILLED {
                // Numerical Recipes' LCG: the same packets decode to the same audio.
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let phase = (*seed >> 8) as f32 / (1u32 << 24) as f32 * std::f32::consts::TAU;
                (cos[f * BINS + k], sin[f * BINS + k]) = (phase.cos(), phase.sin());
            }
        }
        let magnitude = level.broadcast_mul(&self.shape)?;
        let device = re.device();
        let cos = Tensor::from_vec(cos, (frames, BINS), device)?;
        let sin = Tensor::from_vec(sin, (frames, BINS), device)?;
        Ok(((re + (&magnitude * cos)?)?, (im + (&magnitude * sin)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_follows_the_reference_band_and_leaves_the_rest_alone() {
        let d = Device::Cpu;
        let hb = HighBand::new(&d).unwrap();
        // Frame 0 silent; frame 1 with magnitude 2 across the reference band (and below).
        let mut re = vec![0f32; 2 * BINS];
        for k in 20..REFERENCE.end {
            re[BINS + k] = 2.0;
        }
        let re = Tensor::from_vec(re, (2, BINS), &d).unwrap();
        let im = Tensor::zeros((2, BINS), candle_core::DType::F32, &d).unwrap();
        let mut seed = 1;
        let (fr, fi) = hb.fill(&re, &im, &mut seed).unwrap();
        let (fr, fi) = (fr.to_vec2::<f32>().unwrap(), fi.to_vec2::<f32>().unwrap());
        let magnitude = |f: usize, k: usize| fr[f][k].hypot(fi[f][k]);
        assert!((0..BINS).all(|k| magnitude(0, k) == 0.0), "silence stays silent");
        let top = FILLED.end - 1;
        assert!((magnitude(1, FILLED.start) - 2.0 * LEVEL as f32).abs() < 1e-4);
        assert!((magnitude(1, top) / magnitude(1, FILLED.start) - 0.5).abs() < 0.01, "half at the top");
        assert!((0..FILLED.start).chain(FILLED.end..BINS).all(|k| fr[1][k] == re.to_vec2::<f32>().unwrap()[1][k]));
        // Drawn frame by frame: one frame at a time draws what both at once did.
        let mut one = 1;
        let first = hb.fill(&re.narrow(0, 0, 1).unwrap(), &im.narrow(0, 0, 1).unwrap(), &mut one).unwrap();
        let second = hb.fill(&re.narrow(0, 1, 1).unwrap(), &im.narrow(0, 1, 1).unwrap(), &mut one).unwrap();
        assert_eq!(one, seed);
        assert_eq!(first.0.to_vec2::<f32>().unwrap()[0], fr[0]);
        assert_eq!(second.1.to_vec2::<f32>().unwrap()[0], fi[1]);
    }
}
