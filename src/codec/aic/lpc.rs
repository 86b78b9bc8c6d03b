//! aic-v2's AGGRESSIVE core: a linear-prediction vocoder at 8 kHz in 40 bits per 20 ms frame
//! (2.4 kbit/s with the packet's header). Opus cannot go below about 4.4 kbit/s even in 60 ms
//! frames, and aic-v1's codes at this rate are not intelligible; a vocoder sends what
//! intelligibility rests on (the spectral envelope, pitch, voicing, level) and synthesizes the
//! rest.
//!
//! A frame: ten line spectral frequencies (27 bits, [`super::lsf`]'s split vector quantizer),
//! the level (5), voicing (1) and the pitch lag (7). The decoder interpolates envelope, level
//! and pitch over four 5 ms subframes and drives the all-pole filter with a pulse train
//! (voiced) or noise.

use super::ModelError;
use super::bits::{BitReader, BitWriter};
use super::lsf::{ORDER, SPLIT_BITS, codebook, flat, to_lpc, to_lsf};
use super::mdct::HOP;
use crate::codec::resample::{self, Downsampler, Upsampler};

/// Payload bytes per frame.
pub const FRAME_BYTES: usize = 5;
/// Samples of 16 kHz audio the decoded frame lags the encoded one by: the resamplers'.
pub const DELAY: usize = 2 * resample::delay(2);

/// Samples per frame at 8 kHz.
const N: usize = HOP / 2;
const SUBFRAMES: usize = 4;
const SUB: usize = N / SUBFRAMES;
/// The envelope's analysis window: this frame and the 10 ms before it.
const WINDOW: usize = 240;
/// Pitch lags 20..=147 (400 Hz down to 54 Hz) in 7 bits.
const MIN_LAG: usize = 20;
const MAX_LAG: usize = MIN_LAG + 127;
/// Frame level in dB (full scale) in 5 bits; code 0 (−78 dBFS, inaudible) stands for silence
/// too.
const LEVEL_MIN_DB: f32 = -78.0;
const LEVEL_STEP_DB: f32 = 2.25;
/// Normalized correlation of the prediction residual above which a frame counts as voiced.
const VOICED: f32 = 0.3;
/// Noise mixed into voiced excitation, relative: pure pulses sound buzzy.
const BREATH: f32 = 0.15;

/// One frame's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Params {
    /// Line spectral frequencies, Hz, ascending.
    lsf: [f32; ORDER],
    /// RMS of the frame.
    level: f32,
    voiced: bool,
    lag: usize,
}

impl Params {
    /// The 40-bit frame, most significant bit first.
    fn encode(&self) -> [u8; FRAME_BYTES] {
        let mut bits = BitWriter::default();
        for i in codebook().quantize(&self.lsf) {
            bits.put(u32::from(i), SPLIT_BITS);
        }
        let db = 20.0 * self.level.max(1e-9).log10();
        bits.put(((db - LEVEL_MIN_DB) / LEVEL_STEP_DB).round().clamp(0.0, 31.0) as u32, 5);
        bits.put(u32::from(self.voiced), 1);
        bits.put((self.lag.clamp(MIN_LAG, MAX_LAG) - MIN_LAG) as u32, 7);
        bits.finish().try_into().expect("40 bits")
    }

    /// Any 40 bits are a frame: lags come out in range and lines in order.
    fn decode(frame: &[u8; FRAME_BYTES]) -> Params {
        let mut bits = BitReader::new(frame);
        let lsf = codebook().lines(std::array::from_fn(|_| bits.take(SPLIT_BITS) as u16));
        let level = 10f32.powf((LEVEL_MIN_DB + LEVEL_STEP_DB * bits.take(5) as f32) / 20.0);
        let voiced = bits.take(1) == 1;
        let lag = MIN_LAG + bits.take(7) as usize;
        Params { lsf, level, voiced, lag }
    }
}

/// Prediction coefficients `a` (A(z) = 1 + Σ a_k z^-k) of `x`, Hamming-windowed, with 60 Hz of
/// bandwidth expansion so sharp resonances survive quantization.
fn analyze(x: &[f32]) -> [f32; ORDER] {
    let n = x.len();
    let w: Vec<f64> = (0..n)
        .map(|i| f64::from(x[i]) * (0.54 - 0.46 * (std::f64::consts::TAU * i as f64 / (n - 1) as f64).cos()))
        .collect();
    let mut r = [0f64; ORDER + 1];
    for (k, rk) in r.iter_mut().enumerate() {
        *rk = (k..n).map(|i| w[i] * w[i - k]).sum::<f64>();
        *rk *= (-0.5 * (std::f64::consts::TAU * 60.0 * k as f64 / 8000.0).powi(2)).exp();
    }
    // A floor of white noise 40 dB down keeps the recursion well conditioned on silence.
    r[0] = r[0] * 1.0001 + 1e-9;
    let mut a = [0f64; ORDER + 1];
    a[0] = 1.0;
    let mut err = r[0];
    for i in 1..=ORDER {
        let k = -(0..i).map(|j| a[j] * r[i - j]).sum::<f64>() / err;
        let prev = a;
        for j in 1..i {
            a[j] = prev[j] + k * prev[i - j];
        }
        a[i] = k;
        err *= 1.0 - k * k;
    }
    std::array::from_fn(|k| a[k + 1] as f32)
}

/// Normalized correlation of `e`'s last `N` samples with those `lag` before, for every lag.
fn correlations(e: &[f32]) -> Vec<f32> {
    let end = e.len();
    let now = &e[end - N..];
    let energy = |s: &[f32]| s.iter().map(|x| x * x).sum::<f32>();
    let e_now = energy(now);
    (MIN_LAG..=MAX_LAG)
        .map(|lag| {
            let then = &e[end - N - lag..end - lag];
            let c: f32 = now.iter().zip(then).map(|(a, b)| a * b).sum();
            c / (e_now * energy(then)).sqrt().max(1e-12)
        })
        .collect()
}

/// The pitch lag of the residual's last frame and whether it is voiced. Multiples of the
/// period correlate nearly as well as the period: a shorter lag close to the best wins.
fn pitch(residual: &[f32]) -> (usize, bool) {
    let c = correlations(residual);
    let best = (0..c.len()).max_by(|&i, &j| c[i].total_cmp(&c[j])).expect("lags");
    let lag = MIN_LAG + best;
    let mut chosen = (lag, c[best]);
    for div in [4, 3, 2] {
        let sub = (lag as f32 / div as f32).round() as usize;
        if sub >= MIN_LAG && c[sub - MIN_LAG] > 0.85 * c[best] {
            chosen = (sub, c[sub - MIN_LAG]);
            break;
        }
    }
    (chosen.0, chosen.1 > VOICED)
}

/// One track's vocoder encoder: 16 kHz frames in, [`FRAME_BYTES`]-byte frames out.
pub struct LpcEncoder {
    down: Downsampler,
    /// The last samples at 8 kHz: this frame, the longest lag before it, and the filter's
    /// memory before that.
    history: Vec<f32>,
    last_lsf: [f32; ORDER],
}

impl Default for LpcEncoder {
    fn default() -> Self {
        LpcEncoder { down: Downsampler::new(2), history: vec![0.0; N + MAX_LAG + ORDER], last_lsf: flat() }
    }
}

impl LpcEncoder {
    fn analyze(&mut self, pcm: &[f32]) -> Result<Params, ModelError> {
        if pcm.len() != HOP {
            return Err(ModelError::FrameSize(pcm.len()));
        }
        let x = self.down.process(pcm);
        self.history.drain(..N);
        self.history.extend_from_slice(&x);
        let h = &self.history;
        let a = analyze(&h[h.len() - WINDOW..]);
        let lsf = to_lsf(&a).unwrap_or(self.last_lsf);
        self.last_lsf = lsf;
        let residual: Vec<f32> =
            (ORDER..h.len()).map(|n| h[n] + (0..ORDER).map(|k| a[k] * h[n - 1 - k]).sum::<f32>()).collect();
        let (lag, voiced) = pitch(&residual);
        let level = (x.iter().map(|v| v * v).sum::<f32>() / N as f32).sqrt();
        Ok(Params { lsf, level, voiced, lag })
    }

    pub fn encode(&mut self, pcm: &[f32]) -> Result<[u8; FRAME_BYTES], ModelError> {
        Ok(self.analyze(pcm)?.encode())
    }

    /// The lines the encoder finds in every frame of `pcm` (whole frames) louder than
    /// `floor_db` (dBFS): what the line quantizer is fitted to.
    pub(super) fn lines(pcm: &[f32], floor_db: f32) -> Result<Vec<[f32; ORDER]>, ModelError> {
        let mut enc = LpcEncoder::default();
        let floor = 10f32.powf(floor_db / 20.0);
        let mut out = Vec::with_capacity(pcm.len() / HOP);
        for frame in pcm.chunks_exact(HOP) {
            let p = enc.analyze(frame)?;
            if p.level > floor {
                out.push(p.lsf);
            }
        }
        Ok(out)
    }
}

/// One track's vocoder decoder: [`FRAME_BYTES`]-byte frames in, 16 kHz frames out, [`DELAY`]
/// late.
pub struct LpcDecoder {
    up: Upsampler,
    last: Params,
    /// The synthesis filter's last outputs, newest first ([`all_pole`]).
    memory: [f32; ORDER],
    /// Samples until the next pulse.
    to_pulse: usize,
    /// A 32-bit LCG: the noise is the same on every run.
    seed: u32,
}

impl Default for LpcDecoder {
    fn default() -> Self {
        let silence = Params { lsf: flat(), level: 0.0, voiced: false, lag: MIN_LAG };
        LpcDecoder { up: Upsampler::new(2), last: silence, memory: [0.0; ORDER], to_pulse: 0, seed: 1 }
    }
}

impl LpcDecoder {
    pub fn decode(&mut self, frame: &[u8; FRAME_BYTES]) -> Vec<f32> {
        self.synthesize(&Params::decode(frame))
    }

    fn synthesize(&mut self, p: &Params) -> Vec<f32> {
        let mut out = Vec::with_capacity(N);
        for s in 0..SUBFRAMES {
            let w = (s + 1) as f32 / SUBFRAMES as f32;
            let a = to_lpc(&std::array::from_fn(|i| (1.0 - w) * self.last.lsf[i] + w * p.lsf[i]));
            let level = (1.0 - w) * self.last.level + w * p.level;
            let lag = if self.last.voiced && p.voiced {
                ((1.0 - w) * self.last.lag as f32 + w * p.lag as f32).round() as usize
            } else {
                p.lag
            };
            // White excitation of variance σ² comes out of 1/A with σ² times its impulse
            // response's energy.
            let sigma = level / power_gain(&a).sqrt();
            // The first pulse of a voiced stretch comes at once, and a shorter period at the
            // latest one period on.
            self.to_pulse = if p.voiced { self.to_pulse.min(lag) } else { 0 };
            for _ in 0..SUB {
                let noise = self.noise();
                let e = if p.voiced {
                    let pulse = if self.to_pulse == 0 {
                        self.to_pulse = lag;
                        (lag as f32).sqrt()
                    } else {
                        0.0
                    };
                    self.to_pulse -= 1;
                    sigma * ((1.0 - BREATH * BREATH).sqrt() * pulse + BREATH * noise)
                } else {
                    sigma * noise
                };
                out.push(all_pole(&a, &mut self.memory, e));
            }
        }
        self.last = *p;
        // A loud, low-pitched frame's pulses can peak past full scale; the original did not.
        self.up.process(&out).into_iter().map(|s| s.clamp(-1.0, 1.0)).collect()
    }

    /// Uniform noise of unit variance.
    fn noise(&mut self) -> f32 {
        self.seed = self.seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((self.seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 12f32.sqrt()
    }
}

/// One sample through the synthesis filter 1/A(z), whose last outputs `memory` holds, newest
/// first.
fn all_pole(a: &[f32; ORDER], memory: &mut [f32; ORDER], x: f32) -> f32 {
    let y = x - (0..ORDER).map(|k| a[k] * memory[k]).sum::<f32>();
    memory.rotate_right(1);
    memory[0] = y;
    y
}

/// Energy of 1/A's impulse response (its first 64 ms: the sharpest resonances the quantizers
/// allow keep ringing past 32 ms).
fn power_gain(a: &[f32; ORDER]) -> f32 {
    let mut memory = [0f32; ORDER];
    (0..512).map(|n| all_pole(a, &mut memory, if n == 0 { 1.0 } else { 0.0 }).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_to_the_same_filter() {
        let vowel = crate::codec::vowel(0.1);
        let x = Downsampler::new(2).process(&vowel);
        let a = analyze(&x[x.len() - WINDOW..]);
        let lsf = to_lsf(&a).expect("ten lines");
        assert!(lsf.windows(2).all(|w| w[0] < w[1]) && lsf[0] > 0.0 && lsf[9] < 4000.0, "{lsf:?}");
        let back = to_lpc(&lsf);
        for k in 0..ORDER {
            assert!((back[k] - a[k]).abs() < 1e-3, "a[{k}]: {} != {}", back[k], a[k]);
        }
    }

    #[test]
    fn a_frame_round_trips_through_the_quantizers() {
        let p = Params {
            lsf: [300.0, 650.0, 1000.0, 1400.0, 1800.0, 2150.0, 2500.0, 2900.0, 3250.0, 3600.0],
            level: 0.05,
            voiced: true,
            lag: 80,
        };
        let q = Params::decode(&p.encode());
        assert_eq!(q.lsf, codebook().lines(codebook().quantize(&p.lsf)), "the lines are the codebooks' nearest");
        assert!((20.0 * (q.level / p.level).log10()).abs() <= LEVEL_STEP_DB / 2.0 + 1e-3);
        assert_eq!((q.voiced, q.lag), (true, 80));
        assert_eq!(
            crate::codec::aic::lsf::SPLITS.len() as u32 * u32::from(SPLIT_BITS) + 5 + 1 + 7,
            8 * FRAME_BYTES as u32
        );
    }

    #[test]
    fn a_vowel_keeps_its_pitch_and_level_and_silence_stays_quiet() {
        // codec::vowel is 120 Hz: a lag of 66.7 samples at 8 kHz.
        let vowel = crate::codec::vowel(1.0);
        let (mut enc, mut dec) = (LpcEncoder::default(), LpcDecoder::default());
        let mut out = Vec::new();
        for (i, frame) in vowel.chunks(HOP).enumerate() {
            let p = enc.analyze(frame).unwrap();
            // Its level swells and fades three times a second; where it is loud, it is voiced.
            if i > 3 && p.level > 0.03 {
                assert!(p.voiced && (p.lag as i32 - 67).abs() <= 1, "frame {i}: {p:?}");
            }
            out.extend(dec.decode(&p.encode()));
        }
        let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let ratio = rms(&out[HOP * 10..]) / rms(&vowel[HOP * 10..]);
        assert!((0.7..1.4).contains(&ratio), "level ratio {ratio}");
        let mut enc = LpcEncoder::default();
        let quiet: Vec<f32> = (0..10).flat_map(|_| dec.decode(&enc.encode(&[0.0; HOP]).unwrap())).collect();
        assert!(rms(&quiet[HOP * 5..]) < 1e-3, "silence decodes to {}", rms(&quiet[HOP * 5..]));
    }
}
