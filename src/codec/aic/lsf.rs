//! Line spectral frequencies: the vocoder's envelope as ten ascending frequencies, which
//! interpolate and quantize without making an unstable filter; and aic-v2's split vector
//! quantizer of them, 27 bits a frame: three codebooks of 512 entries (lines 1–3, 4–6, 7–10)
//! that `auralink aic train-vocoder` fits by k-means to the training set's lines
//! ([`super::train_vocoder`]). The codebooks are compiled in: they define what a frame's bits
//! mean, so two builds that decode each other must hold the same ones.
//!
//! Private to `aic`: the vocoder and its trainer are its only users, and `lines` trusts its
//! indices to be 9-bit, as the frame's bits make them.

use std::collections::HashMap;
use std::sync::LazyLock;

use candle_core::{DType, Device, Tensor};

use super::ModelError;

pub const ORDER: usize = 10;
/// Lines per codebook, lowest first.
pub const SPLITS: [usize; 3] = [3, 3, 4];
/// Index bits per codebook.
pub const SPLIT_BITS: u8 = 9;
pub const ENTRIES: usize = 1 << SPLIT_BITS;
/// The codebooks' file under models/aic/.
pub const FILE: &str = "aic-v2-lsf.safetensors";
/// Lines closer than this are pushed apart: two nearly equal lines make a resonance that
/// rings.
const MIN_GAP_HZ: f32 = 50.0;

static COMMITTED: LazyLock<Codebook> = LazyLock::new(|| {
    Codebook::from_bytes(include_bytes!("../../../models/aic/aic-v2-lsf.safetensors"))
        .expect("the committed line codebooks load (a test checks them)")
});

/// The codebooks this build reads and writes frames with.
pub fn codebook() -> &'static Codebook {
    &COMMITTED
}

/// The name of codebook `s` in the file.
pub fn split_name(s: usize) -> String {
    format!("split{s}")
}

/// Where codebook `s`'s lines start in a frame's ten.
fn offset(s: usize) -> usize {
    SPLITS[..s].iter().sum()
}

pub struct Codebook {
    /// Per split, `ENTRIES` rows of its lines (Hz), row after row.
    splits: [Vec<f32>; 3],
}

impl Codebook {
    pub fn from_bytes(bytes: &[u8]) -> Result<Codebook, ModelError> {
        Codebook::from_tensors(&candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?)
    }

    /// From tensors `split0..2`, each `[ENTRIES, SPLITS[s]]`.
    fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Codebook, ModelError> {
        let split = |s: usize| -> Result<Vec<f32>, ModelError> {
            let name = split_name(s);
            let v = t.get(&name).ok_or_else(|| ModelError::Data(format!("line codebooks: no {name}")))?;
            if v.dims() != [ENTRIES, SPLITS[s]] {
                return Err(ModelError::Data(format!("line codebook {name} is {:?}", v.dims())));
            }
            Ok(v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        Ok(Codebook { splits: [split(0)?, split(1)?, split(2)?] })
    }

    /// The nearest entry of each codebook to its lines (squared distance in Hz).
    pub fn quantize(&self, lsf: &[f32; ORDER]) -> [u16; 3] {
        std::array::from_fn(|s| {
            let target = &lsf[offset(s)..offset(s) + SPLITS[s]];
            let distance = |row: &[f32]| row.iter().zip(target).map(|(c, x)| (c - x) * (c - x)).sum::<f32>();
            let rows = self.splits[s].chunks(SPLITS[s]).map(distance).enumerate();
            rows.min_by(|a, b| a.1.total_cmp(&b.1)).map_or(0, |(i, _)| i as u16)
        })
    }

    /// The lines of three indices (each below `ENTRIES`), in order and apart.
    pub fn lines(&self, index: [u16; 3]) -> [f32; ORDER] {
        let mut lsf = [0f32; ORDER];
        for (s, &i) in index.iter().enumerate() {
            let row = usize::from(i) * SPLITS[s];
            lsf[offset(s)..offset(s) + SPLITS[s]].copy_from_slice(&self.splits[s][row..row + SPLITS[s]]);
        }
        spread(&mut lsf);
        lsf
    }
}

/// Sorts lines and keeps them `MIN_GAP_HZ` apart and inside (0, 4 kHz).
fn spread(lsf: &mut [f32; ORDER]) {
    lsf.sort_by(f32::total_cmp);
    let mut floor = MIN_GAP_HZ;
    for f in lsf.iter_mut() {
        *f = f.max(floor);
        floor = *f + MIN_GAP_HZ;
    }
    let mut ceiling = 4000.0 - MIN_GAP_HZ;
    for f in lsf.iter_mut().rev() {
        *f = f.min(ceiling);
        ceiling = *f - MIN_GAP_HZ;
    }
}

/// The sum and difference polynomials' real-valued forms on the unit circle: the LSFs are
/// their zeros in (0, π), interlaced.
fn lsf_functions(a: &[f32; ORDER], w: f64) -> (f64, f64) {
    // P = A + z^-(p+1) A(1/z) is symmetric and Q = A − z^-(p+1) A(1/z) antisymmetric: times
    // e^{jω(p+1)/2}, P is a sum of cosines and Q j times a sum of sines.
    let coef = |k: usize| {
        if k == 0 {
            1.0
        } else if k <= ORDER {
            f64::from(a[k - 1])
        } else {
            0.0
        }
    };
    let half = (ORDER + 1) as f64 / 2.0;
    let (mut p, mut q) = (0.0, 0.0);
    for k in 0..=ORDER + 1 {
        let (c, r) = (coef(k), coef(ORDER + 1 - k));
        let t = (k as f64 - half) * w;
        p += (c + r) * t.cos();
        q += (c - r) * t.sin();
    }
    (p, q)
}

/// Line spectral frequencies (Hz) of `a`, or `None` where the search does not find all ten.
pub fn to_lsf(a: &[f32; ORDER]) -> Option<[f32; ORDER]> {
    const GRID: usize = 512;
    let mut found = Vec::with_capacity(ORDER);
    for which in 0..2 {
        let f = |w: f64| {
            let (p, q) = lsf_functions(a, w);
            if which == 0 { p } else { q }
        };
        let step = std::f64::consts::PI / GRID as f64;
        // The trivial zeros (P at π, Q at 0) lie outside the open grid.
        let mut lo = step * 0.5;
        let mut f_lo = f(lo);
        for i in 1..GRID {
            let hi = step * (i as f64 + 0.5);
            let f_hi = f(hi);
            if f_lo.signum() != f_hi.signum() {
                let (mut l, mut h, mut fl) = (lo, hi, f_lo);
                for _ in 0..16 {
                    let m = 0.5 * (l + h);
                    let fm = f(m);
                    if fm.signum() == fl.signum() {
                        (l, fl) = (m, fm);
                    } else {
                        h = m;
                    }
                }
                found.push((0.5 * (l + h) * 4000.0 / std::f64::consts::PI) as f32);
            }
            (lo, f_lo) = (hi, f_hi);
        }
    }
    let mut lsf: [f32; ORDER] = found.try_into().ok()?;
    lsf.sort_by(f32::total_cmp);
    Some(lsf)
}

/// Prediction coefficients of ascending line spectral frequencies (Hz).
pub fn to_lpc(lsf: &[f32; ORDER]) -> [f32; ORDER] {
    // Odd lines (1st, 3rd, …) are P's zeros, even ones Q's; P has a zero at z = −1, Q at 1.
    let product = |first: usize, trivial: f64| {
        let mut poly = vec![1.0, trivial];
        for f in lsf.iter().skip(first).step_by(2) {
            let c = -2.0 * (f64::from(*f) * std::f64::consts::PI / 4000.0).cos();
            let mut next = vec![0.0; poly.len() + 2];
            for (i, p) in poly.iter().enumerate() {
                next[i] += p;
                next[i + 1] += p * c;
                next[i + 2] += p;
            }
            poly = next;
        }
        poly
    };
    let (p, q) = (product(0, 1.0), product(1, -1.0));
    let mut a = [0f32; ORDER];
    for k in 0..ORDER {
        a[k] = (0.5 * (p[k + 1] + q[k + 1])) as f32;
    }
    a
}

/// Evenly spaced lines: a flat envelope.
pub fn flat() -> [f32; ORDER] {
    std::array::from_fn(|i| 4000.0 * (i + 1) as f32 / (ORDER + 1) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_codebooks_hold_ordered_lines_and_any_indices_decode_to_ordered_lines() {
        let c = codebook();
        for (s, (book, &width)) in c.splits.iter().zip(&SPLITS).enumerate() {
            assert!(book.chunks(width).all(|r| r.windows(2).all(|w| w[0] <= w[1])), "codebook {s}");
        }
        for i in [0u16, 1, 255, 511] {
            let lsf = c.lines([i, 511 - i, i / 2]);
            assert!(lsf.windows(2).all(|w| w[1] - w[0] >= MIN_GAP_HZ - 1e-3), "{lsf:?}");
            assert!(lsf[0] > 0.0 && lsf[ORDER - 1] < 4000.0, "{lsf:?}");
        }
    }

    #[test]
    fn quantizing_finds_the_entry_itself_and_stays_near_typical_lines() {
        let c = codebook();
        let index = [17, 300, 511];
        assert_eq!(c.quantize(&c.lines(index)), index);
        // A neutral vowel's lines: the codebooks, fitted to speech, hold something near them.
        let schwa = [250.0, 520.0, 900.0, 1350.0, 1700.0, 2150.0, 2500.0, 2950.0, 3300.0, 3650.0];
        let q = c.lines(c.quantize(&schwa));
        let rms = (q.iter().zip(&schwa).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / ORDER as f32).sqrt();
        assert!(rms < 120.0, "{q:?}: {rms} Hz off");
    }
}
