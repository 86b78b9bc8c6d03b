//! Integer-factor resampling, streaming: 48 kHz ↔ 16 kHz for models that work on wideband
//! speech (AIC, Whisper) and tracks that travel at Opus's 48 kHz, and 16 kHz ↔ 8 kHz for
//! AIC's narrowband vocoder. One windowed-sinc low-pass serves both directions: before
//! dropping samples, and after stuffing zeros between them.

/// 48 000 / 16 000: what `default()` resamples by.
pub const FACTOR: usize = 3;

/// Filter taps per unit of factor, plus one: a transition band of about a ninth of the lower
/// rate.
const TAPS_PER_FACTOR: usize = 48;

/// Blackman-windowed sinc low-pass for resampling by `factor`, unity gain at DC, cut off at 0.9
/// of the lower rate's Nyquist frequency so what folds back is attenuated.
fn lowpass(factor: usize) -> Vec<f32> {
    assert!(factor > 0, "a resampling factor is at least 1");
    let taps = TAPS_PER_FACTOR * factor + 1;
    let fc = 0.45 / factor as f64;
    let mid = (taps - 1) as f64 / 2.0;
    let mut h: Vec<f64> = (0..taps)
        .map(|n| {
            let t = n as f64 - mid;
            let sinc = if t == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * t).sin() / (std::f64::consts::PI * t)
            };
            let w = 2.0 * std::f64::consts::PI * n as f64 / (taps - 1) as f64;
            sinc * (0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos())
        })
        .collect();
    let sum: f64 = h.iter().sum();
    h.iter_mut().for_each(|x| *x /= sum);
    h.into_iter().map(|x| x as f32).collect()
}

/// Samples of delay each way, at the higher rate: half the filter.
pub const fn delay(factor: usize) -> usize {
    TAPS_PER_FACTOR / 2 * factor
}

/// A high rate in, a rate `factor` times lower out; keeps what it needs of earlier input
/// between calls.
pub struct Downsampler {
    factor: usize,
    h: Vec<f32>,
    /// The last `taps - 1` input samples, then the new ones.
    buf: Vec<f32>,
    /// Input samples to skip before the next output (the phase across calls).
    skip: usize,
}

impl Default for Downsampler {
    fn default() -> Self {
        Downsampler::new(FACTOR)
    }
}

impl Downsampler {
    pub fn new(factor: usize) -> Downsampler {
        let h = lowpass(factor);
        Downsampler { factor, buf: vec![0.0; h.len() - 1], h, skip: 0 }
    }

    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        self.buf.extend_from_slice(input);
        let mut out = Vec::with_capacity(input.len() / self.factor + 1);
        // Output i is centred on input `taps - 1 + pos` (the newest sample of its window).
        let mut pos = self.skip;
        while pos < input.len() {
            let window = &self.buf[pos..pos + self.h.len()];
            out.push(window.iter().rev().zip(&self.h).map(|(x, h)| x * h).sum());
            pos += self.factor;
        }
        self.skip = pos - input.len();
        self.buf.drain(..input.len());
        out
    }
}

/// A low rate in, a rate `factor` times higher out.
pub struct Upsampler {
    /// The filter split by phase: output `factor·i + j` uses taps `j, j + factor, …`.
    phases: Vec<Vec<f32>>,
    /// The last input samples, newest last, as many as the longest phase needs.
    history: Vec<f32>,
}

impl Default for Upsampler {
    fn default() -> Self {
        Upsampler::new(FACTOR)
    }
}

impl Upsampler {
    pub fn new(factor: usize) -> Upsampler {
        let h = lowpass(factor);
        let phases: Vec<Vec<f32>> =
            (0..factor).map(|j| h.iter().skip(j).step_by(factor).map(|x| x * factor as f32).collect()).collect();
        let len = phases[0].len();
        Upsampler { phases, history: vec![0.0; len] }
    }

    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(input.len() * self.phases.len());
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
    fn halving_and_doubling_pass_narrowband_speech_and_remove_what_would_alias() {
        let input = sine(1_000.0, 16_000.0, 16_000);
        let low = Downsampler::new(2).process(&input);
        assert_eq!(low.len(), 8_000);
        assert!((rms(&low[1_000..]) / rms(&input) - 1.0).abs() < 0.01);
        let back = Upsampler::new(2).process(&low);
        assert_eq!(back.len(), 16_000);
        assert!((rms(&back[2_000..]) / rms(&input) - 1.0).abs() < 0.01);
        // 1 kHz comes back where it was, `delay` samples late each way.
        let d = 2 * delay(2);
        assert!(back[2_000..].iter().zip(&input[2_000 - d..]).all(|(a, b)| (a - b).abs() < 0.01));
        let high = Downsampler::new(2).process(&sine(6_000.0, 16_000.0, 16_000));
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
