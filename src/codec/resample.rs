//! 48 kHz ↔ 16 kHz, streaming, for models that work on wideband speech (AIC, Whisper) and
//! tracks that travel at Opus's 48 kHz. One windowed-sinc low-pass serves both directions:
//! before dropping two samples in three, and after stuffing two zeros between samples.

/// 48 000 / 16 000.
pub const FACTOR: usize = 3;
/// Filter length: a transition band of about 1.8 kHz at 48 kHz, 1.5 ms of delay each way.
const TAPS: usize = 145;
/// Cut-off below 8 kHz (the 16 kHz Nyquist frequency) so what folds back is attenuated.
const CUTOFF_HZ: f64 = 7_200.0;

/// Blackman-windowed sinc low-pass at 48 kHz, unity gain at DC.
fn lowpass() -> Vec<f32> {
    let fc = CUTOFF_HZ / 48_000.0;
    let mid = (TAPS - 1) as f64 / 2.0;
    let mut h: Vec<f64> = (0..TAPS)
        .map(|n| {
            let t = n as f64 - mid;
            let sinc = if t == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * t).sin() / (std::f64::consts::PI * t)
            };
            let w = 2.0 * std::f64::consts::PI * n as f64 / (TAPS - 1) as f64;
            sinc * (0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos())
        })
        .collect();
    let sum: f64 = h.iter().sum();
    h.iter_mut().for_each(|x| *x /= sum);
    h.into_iter().map(|x| x as f32).collect()
}

/// 48 kHz in, 16 kHz out; keeps what it needs of earlier input between calls.
pub struct Downsampler {
    h: Vec<f32>,
    /// The last `TAPS - 1` input samples, then the new ones.
    buf: Vec<f32>,
    /// Input samples to skip before the next output (the phase across calls).
    skip: usize,
}

impl Default for Downsampler {
    fn default() -> Self {
        Downsampler { h: lowpass(), buf: vec![0.0; TAPS - 1], skip: 0 }
    }
}

impl Downsampler {
    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        self.buf.extend_from_slice(input);
        let mut out = Vec::with_capacity(input.len() / FACTOR + 1);
        // Output i is centred on input `TAPS - 1 + pos` (the newest sample of its window).
        let mut pos = self.skip;
        while pos < input.len() {
            let end = pos + TAPS;
            let window = &self.buf[pos..end];
            out.push(window.iter().rev().zip(&self.h).map(|(x, h)| x * h).sum());
            pos += FACTOR;
        }
        self.skip = pos - input.len();
        self.buf.drain(..input.len());
        out
    }
}

/// 16 kHz in, 48 kHz out.
pub struct Upsampler {
    /// The filter split by phase: output `3i + j` uses taps `j, j + 3, j + 6, …`.
    phases: Vec<Vec<f32>>,
    /// The last input samples, newest last, as many as the longest phase needs.
    history: Vec<f32>,
}

impl Default for Upsampler {
    fn default() -> Self {
        let h = lowpass();
        let phases: Vec<Vec<f32>> =
            (0..FACTOR).map(|j| h.iter().skip(j).step_by(FACTOR).map(|x| x * FACTOR as f32).collect()).collect();
        let len = phases[0].len();
        Upsampler { phases, history: vec![0.0; len] }
    }
}

impl Upsampler {
    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(input.len() * FACTOR);
        for &x in input {
            self.history.remove(0);
            self.history.push(x);
            for phase in &self.phases {
                out.push(phase.iter().zip(self.history.iter().rev()).map(|(h, x)| h * x).sum());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, rate: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate).sin()).collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn speech_band_passes_both_ways_and_what_would_alias_is_removed() {
        let input = sine(1_000.0, 48_000.0, 48_000);
        let mut down = Downsampler::default();
        let low = down.process(&input);
        assert_eq!(low.len(), 16_000);
        assert!((rms(&low[1_000..]) / rms(&input) - 1.0).abs() < 0.01);
        let mut up = Upsampler::default();
        let back = up.process(&low);
        assert_eq!(back.len(), 48_000);
        assert!((rms(&back[3_000..]) / rms(&input) - 1.0).abs() < 0.01);
        // 12 kHz would fold onto 4 kHz at 16 kHz: it must all but vanish (> 60 dB down).
        let high = Downsampler::default().process(&sine(12_000.0, 48_000.0, 48_000));
        assert!(rms(&high[1_000..]) < 0.001, "{}", rms(&high[1_000..]));
    }

    #[test]
    fn frame_by_frame_is_the_same_as_all_at_once() {
        let input = sine(440.0, 48_000.0, 9_600);
        let whole = Downsampler::default().process(&input);
        let mut d = Downsampler::default();
        // Frames whose length is not a multiple of three carry the phase across calls.
        let framed: Vec<f32> = input.chunks(500).flat_map(|c| d.process(c)).collect();
        assert_eq!(whole.len(), framed.len());
        assert!(whole.iter().zip(&framed).all(|(a, b)| (a - b).abs() < 1e-6));
        let whole_up = Upsampler::default().process(&whole);
        let mut u = Upsampler::default();
        let framed_up: Vec<f32> = whole.chunks(320).flat_map(|c| u.process(c)).collect();
        assert!(whole_up.iter().zip(&framed_up).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
