//! Whisper's mel filter bank, computed rather than downloaded: 80 (or 128) triangular
//! filters on the Slaney mel scale over a 400-point FFT at 16 kHz, area-normalised, as
//! librosa's `filters.mel` makes them (which is where OpenAI's `mel_filters.npz` came from).

use candle_transformers::models::whisper::{N_FFT, SAMPLE_RATE};

fn hz_to_mel(hz: f64) -> f64 {
    // Linear below 1 kHz, logarithmic above (Slaney's Auditory Toolbox).
    let f_sp = 200.0 / 3.0;
    if hz < 1000.0 { hz / f_sp } else { 1000.0 / f_sp + (hz / 1000.0).ln() / (6.4f64.ln() / 27.0) }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_mel = 1000.0 / f_sp;
    if mel < min_log_mel { mel * f_sp } else { 1000.0 * ((6.4f64.ln() / 27.0) * (mel - min_log_mel)).exp() }
}

/// Row-major `[n_mels][N_FFT / 2 + 1]`, the layout `pcm_to_mel` takes.
pub fn filters(n_mels: usize) -> Vec<f32> {
    let bins = N_FFT / 2 + 1;
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..bins).map(|k| k as f64 * sr / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let mut out = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (left, centre, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rise = (f - left) / (centre - left);
            let fall = (right - f) / (right - centre);
            out[m * bins + k] = (rise.min(fall).max(0.0) * norm) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_triangles() {
        let f = filters(80);
        assert_eq!(f.len(), 80 * 201);
        // librosa's construction, evaluated independently (Python) at these bins.
        assert!((f[1] - 0.024_862_59).abs() < 1e-6, "{}", f[1]);
        assert!((f[201 + 2] - 0.022_871_77).abs() < 1e-6, "{}", f[203]);
        assert_eq!(f[0], 0.0);
        // The top filter ends at the Nyquist bin.
        assert_eq!(f[79 * 201 + 200], 0.0);
        assert!(f[79 * 201 + 199] > 0.0);
        // Mel round trip.
        for hz in [0.0, 500.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
    }
}
