//! The codec's fixed analysis: an MDCT of 20 ms hops over 40 ms sine-windowed blocks at
//! 16 kHz. It is critically sampled (320 coefficients per 320 new samples) and, with
//! overlap-add, reconstructs its input exactly, so everything lost is lost in the quantizer.

use candle_core::{Device, Tensor};

use super::ModelError;

/// Samples per frame (20 ms at 16 kHz) and coefficients per block.
pub const HOP: usize = 320;
pub const BLOCK: usize = 2 * HOP;

/// The orthonormal MDCT basis, windowed: `[BLOCK, HOP]`.
pub fn basis(device: &Device) -> Result<Tensor, ModelError> {
    let n = HOP as f64;
    let mut b = Vec::with_capacity(BLOCK * HOP);
    for i in 0..BLOCK {
        let w = (std::f64::consts::PI * (i as f64 + 0.5) / (2.0 * n)).sin();
        for k in 0..HOP {
            let c = (std::f64::consts::PI / n * (i as f64 + 0.5 + n / 2.0) * (k as f64 + 0.5)).cos();
            b.push((w * c * (2.0 / n).sqrt()) as f32);
        }
    }
    Ok(Tensor::from_vec(b, (BLOCK, HOP), device)?)
}

/// Blocks of `pcm` for frames `0..pcm.len() / HOP`: frame t covers samples
/// `[(t-1)·HOP, (t+1)·HOP)`, zeros before the start. `[frames, BLOCK]`.
pub fn blocks(pcm: &[f32], before: &[f32; HOP], device: &Device) -> Result<Tensor, ModelError> {
    let frames = pcm.len() / HOP;
    let mut v = Vec::with_capacity(frames * BLOCK);
    for t in 0..frames {
        if t == 0 {
            v.extend_from_slice(before);
        } else {
            v.extend_from_slice(&pcm[(t - 1) * HOP..t * HOP]);
        }
        v.extend_from_slice(&pcm[t * HOP..(t + 1) * HOP]);
    }
    Ok(Tensor::from_vec(v, (frames, BLOCK), device)?)
}

/// Overlap-adds synthesized blocks (`[frames, BLOCK]`, already multiplied by the basis'
/// transpose) after `tail`, the second half left by the previous block. Returns HOP samples
/// per block; `tail` keeps the last half for the next call.
pub fn overlap_add(blocks: &[f32], tail: &mut [f32; HOP]) -> Vec<f32> {
    let mut out = Vec::with_capacity(blocks.len() / 2);
    for b in blocks.chunks_exact(BLOCK) {
        out.extend(b[..HOP].iter().zip(tail.iter()).map(|(a, t)| a + t));
        tail.copy_from_slice(&b[HOP..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_then_synthesis_is_the_identity_one_frame_late() {
        let d = Device::Cpu;
        let pcm: Vec<f32> = (0..HOP * 12).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b = basis(&d).unwrap();
        let coefs = blocks(&pcm, &[0.0; HOP], &d).unwrap().matmul(&b).unwrap();
        let synth = coefs.matmul(&b.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut tail = [0.0; HOP];
        let out = overlap_add(&synth, &mut tail);
        // Block t completes frame t-1.
        for (a, b) in out[HOP..].iter().zip(&pcm[..pcm.len() - HOP]) {
            assert!((a - b).abs() < 1e-4, "{a} != {b}");
        }
    }
}
