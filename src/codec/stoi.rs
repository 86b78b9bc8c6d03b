//! STOI, short-time objective intelligibility (Taal et al., 2011), for the codec benchmark:
//! the correlation of clean and processed speech envelopes in one-third octave bands over
//! 384 ms segments, at 10 kHz, with silent frames of the clean signal left out. 1 is
//! identical; unintelligible speech scores near 0.

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

const RATE: f64 = 10_000.0;
const FRAME: usize = 256;
const FFT: usize = 512;
const BANDS: usize = 15;
const LOWEST_CENTER: f64 = 150.0;
const SEGMENT: usize = 30;
/// Clipping bound: the processed envelope may exceed the clean one by at most 15 dB.
const BETA_DB: f64 = -15.0;
const DYNAMIC_RANGE_DB: f64 = 40.0;

/// STOI of `processed` against `clean`, both at `rate` Hz and time-aligned. `None` when the
/// clean signal has too little speech (fewer than 30 frames) to score.
pub fn stoi(clean: &[f32], processed: &[f32], rate: u32) -> Option<f64> {
    let n = clean.len().min(processed.len());
    let x = resample(&clean[..n], f64::from(rate));
    let y = resample(&processed[..n], f64::from(rate));
    let (x, y) = remove_silence(&x, &y);
    let xs = band_envelopes(&x);
    let ys = band_envelopes(&y);
    let frames = xs.len();
    if frames < SEGMENT {
        return None;
    }
    let clip = 10f64.powf(-BETA_DB / 20.0);
    let mut total = 0.0;
    let mut count = 0usize;
    for end in SEGMENT..=frames {
        for j in 0..BANDS {
            let xseg: Vec<f64> = (end - SEGMENT..end).map(|m| xs[m][j]).collect();
            let yseg: Vec<f64> = (end - SEGMENT..end).map(|m| ys[m][j]).collect();
            let alpha = norm(&xseg) / (norm(&yseg) + f64::EPSILON);
            let yseg: Vec<f64> = yseg.iter().zip(&xseg).map(|(y, x)| (y * alpha).min(x * (1.0 + clip))).collect();
            total += correlation(&xseg, &yseg);
            count += 1;
        }
    }
    Some(total / count as f64)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (a.iter().sum::<f64>() / a.len() as f64, b.iter().sum::<f64>() / b.len() as f64);
    let a: Vec<f64> = a.iter().map(|x| x - ma).collect();
    let b: Vec<f64> = b.iter().map(|x| x - mb).collect();
    a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / (norm(&a) * norm(&b) + f64::EPSILON)
}

/// Windowed-sinc resampling to 10 kHz.
fn resample(input: &[f32], rate: f64) -> Vec<f64> {
    let step = rate / RATE;
    let cutoff = 0.5 * RATE.min(rate) / rate;
    let half = 32i64;
    let out_len = (input.len() as f64 / step) as usize;
    (0..out_len)
        .map(|i| {
            let t = i as f64 * step;
            let center = t.floor() as i64;
            let mut acc = 0.0;
            for k in center - half + 1..=center + half {
                if k < 0 || k as usize >= input.len() {
                    continue;
                }
                let d = t - k as f64;
                let h = if d == 0.0 {
                    2.0 * cutoff
                } else {
                    (std::f64::consts::TAU * cutoff * d).sin() / (std::f64::consts::PI * d)
                };
                let w = 0.5 + 0.5 * (std::f64::consts::PI * d / half as f64).cos();
                acc += f64::from(input[k as usize]) * h * w;
            }
            acc
        })
        .collect()
}

fn hann() -> Vec<f64> {
    // MATLAB's hanning(FRAME): no zero end points.
    (1..=FRAME).map(|i| 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / (FRAME + 1) as f64).cos()).collect()
}

/// Drops frames more than 40 dB below the clean signal's loudest, from both signals.
fn remove_silence(x: &[f64], y: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let w = hann();
    let hop = FRAME / 2;
    let frames: Vec<usize> = (0..).map(|m| m * hop).take_while(|s| s + FRAME <= x.len()).collect();
    let energy: Vec<f64> = frames
        .iter()
        .map(|&s| {
            20.0 * (norm(&x[s..s + FRAME].iter().zip(&w).map(|(a, b)| a * b).collect::<Vec<_>>()) + f64::EPSILON)
                .log10()
        })
        .collect();
    let max = energy.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let kept: Vec<usize> =
        frames.iter().zip(&energy).filter(|(_, e)| **e > max - DYNAMIC_RANGE_DB).map(|(s, _)| *s).collect();
    let rebuild = |sig: &[f64]| {
        let mut out = vec![0.0; (kept.len() + 1) * hop];
        for (i, &s) in kept.iter().enumerate() {
            for k in 0..FRAME {
                out[i * hop + k] += sig[s + k] * w[k];
            }
        }
        out
    };
    (rebuild(x), rebuild(y))
}

/// One-third octave band magnitudes of each frame.
fn band_envelopes(sig: &[f64]) -> Vec<[f64; BANDS]> {
    let w = hann();
    let hop = FRAME / 2;
    let fft = FftPlanner::new().plan_fft_forward(FFT);
    let bin_hz = RATE / FFT as f64;
    let nearest = |f: f64| (f / bin_hz).round() as usize;
    let bands: Vec<(usize, usize)> = (0..BANDS)
        .map(|k| {
            let lo = LOWEST_CENTER * 2f64.powf((2.0 * k as f64 - 1.0) / 6.0);
            let hi = LOWEST_CENTER * 2f64.powf((2.0 * k as f64 + 1.0) / 6.0);
            (nearest(lo), nearest(hi).min(FFT / 2 + 1))
        })
        .collect();
    let mut out = Vec::new();
    let mut s = 0;
    while s + FRAME <= sig.len() {
        let mut buf: Vec<Complex<f64>> =
            (0..FFT).map(|i| Complex::new(if i < FRAME { sig[s + i] * w[i] } else { 0.0 }, 0.0)).collect();
        fft.process(&mut buf);
        let mut e = [0.0; BANDS];
        for (j, &(lo, hi)) in bands.iter().enumerate() {
            e[j] = buf[lo..hi].iter().map(|c| c.norm_sqr()).sum::<f64>().sqrt();
        }
        out.push(e);
        s += hop;
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn identical_scores_one_and_noise_scores_less_the_more_there_is() {
        let clean = crate::codec::vowel(3.0);
        assert!((stoi(&clean, &clean, 16_000).unwrap() - 1.0).abs() < 1e-6);
        let mut rng = StdRng::seed_from_u64(3);
        let noisy = |level: f32, rng: &mut StdRng| -> Vec<f32> {
            clean.iter().map(|s| s + level * rng.gen_range(-1.0f32..1.0)).collect()
        };
        let light = stoi(&clean, &noisy(0.02, &mut rng), 16_000).unwrap();
        let heavy = stoi(&clean, &noisy(0.3, &mut rng), 16_000).unwrap();
        assert!(light > heavy && light < 1.0 && heavy > 0.0, "light {light}, heavy {heavy}");
        assert_eq!(stoi(&clean[..3000], &clean[..3000], 16_000), None, "too short to score");
    }
}
