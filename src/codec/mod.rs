//! Audio codecs: Opus as tracks carry it, resampling between 48 and 16 kHz, and the AIC
//! neural compression stage's settings (see docs/aic.md).

pub mod aic;
pub mod device;
pub mod modes;
pub mod opus;
pub mod resample;
pub mod stoi;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("opus: {0}")]
    Opus(String),
    #[error("a frame must have {want} samples, not {got}")]
    FrameSize { want: usize, got: usize },
}

/// A vowel-like test signal at 16 kHz: a 120 Hz voice's first 19 harmonics under a 3 Hz
/// syllable envelope. For tests and the codec benchmark's smoke run.
pub fn vowel(seconds: f64) -> Vec<f32> {
    (0..(16_000.0 * seconds) as usize)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            let env = (0.5 + 0.5 * (std::f64::consts::TAU * 3.0 * t).sin()).powi(2);
            let v: f64 = (1..20).map(|h| (std::f64::consts::TAU * 120.0 * h as f64 * t).sin() / h as f64).sum();
            (0.2 * env * v) as f32
        })
        .collect()
}
