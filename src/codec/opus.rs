//! Opus mono in 20 ms frames: at 48 kHz as the SFU carries it (what the pipeline decodes
//! tracks from and re-encodes them to, and the baseline AIC is measured against), and at
//! 16 kHz inside AIC's Opus-core modes, whose network works on wideband speech.

use crate::codec::CodecError;

pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Wideband: what AIC's networks work on.
pub const WIDEBAND_RATE: u32 = 16_000;
/// Opus packets are at most this long (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1275;

fn codec_error(e: opus::Error) -> CodecError {
    CodecError::Opus(e.to_string())
}

pub struct OpusEncoder {
    inner: opus::Encoder,
    frame: usize,
    out: [u8; MAX_PACKET],
}

impl OpusEncoder {
    /// A speech encoder at 48 kHz and `bitrate_bps` (6 000 to 510 000).
    pub fn new(bitrate_bps: u32) -> Result<Self, CodecError> {
        OpusEncoder::at(SAMPLE_RATE, bitrate_bps)
    }

    /// A speech encoder taking `rate` Hz (8, 12, 16, 24 or 48 kHz).
    pub fn at(rate: u32, bitrate_bps: u32) -> Result<Self, CodecError> {
        let mut inner = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).map_err(codec_error)?;
        inner.set_bitrate(opus::Bitrate::Bits(bitrate_bps as i32)).map_err(codec_error)?;
        Ok(OpusEncoder { inner, frame: rate as usize / 50, out: [0; MAX_PACKET] })
    }

    /// Changes the rate from the next frame on.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), CodecError> {
        self.inner.set_bitrate(opus::Bitrate::Bits(bitrate_bps as i32)).map_err(codec_error)
    }

    /// Holds the encoder to one audio bandwidth instead of choosing by bitrate.
    pub fn set_bandwidth(&mut self, bandwidth: opus::Bandwidth) -> Result<(), CodecError> {
        self.inner.set_bandwidth(bandwidth).map_err(codec_error)
    }

    pub fn reset_state(&mut self) -> Result<(), CodecError> {
        self.inner.reset_state().map_err(codec_error)
    }

    /// How many samples the decoded audio lags the input by.
    pub fn lookahead(&mut self) -> Result<usize, CodecError> {
        Ok(self.inner.get_lookahead().map_err(codec_error)? as usize)
    }

    /// One packet for one frame of samples in -1..1.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != self.frame {
            return Err(CodecError::FrameSize { want: self.frame, got: pcm.len() });
        }
        let n = self.inner.encode_float(pcm, &mut self.out).map_err(codec_error)?;
        Ok(self.out[..n].to_vec())
    }
}

pub struct OpusDecoder {
    inner: opus::Decoder,
    frame: usize,
}

impl OpusDecoder {
    /// A decoder to 48 kHz.
    pub fn new() -> Result<Self, CodecError> {
        OpusDecoder::at(SAMPLE_RATE)
    }

    /// A decoder to `rate` Hz (8, 12, 16, 24 or 48 kHz).
    pub fn at(rate: u32) -> Result<Self, CodecError> {
        let inner = opus::Decoder::new(rate, opus::Channels::Mono).map_err(codec_error)?;
        Ok(OpusDecoder { inner, frame: rate as usize / 50 })
    }

    /// One packet's samples (mono, whatever the sender's channel count); `None` for a lost
    /// packet, which Opus conceals with one frame of its best guess.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<f32>, CodecError> {
        let Some(p) = packet else { return self.conceal(self.frame) };
        // A packet holds at most 120 ms.
        let mut out = vec![0f32; self.frame * 6];
        let n = self.inner.decode_float(p, &mut out, false).map_err(codec_error)?;
        out.truncate(n);
        Ok(out)
    }

    /// `samples` (a multiple of 2.5 ms) of Opus's best guess after a loss.
    pub fn conceal(&mut self, samples: usize) -> Result<Vec<f32>, CodecError> {
        let mut out = vec![0f32; samples];
        let n = self.inner.decode_float(&[], &mut out, false).map_err(codec_error)?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 440 Hz tone at half scale, `frames` frames long.
    fn tone(frames: usize) -> Vec<f32> {
        (0..frames * FRAME_SAMPLES)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / SAMPLE_RATE as f32).sin())
            .collect()
    }

    #[test]
    fn speech_rate_round_trip_keeps_the_signal_and_the_rate() {
        let pcm = tone(50);
        let mut enc = OpusEncoder::new(24_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut bytes = 0;
        let mut out = Vec::new();
        for frame in pcm.chunks(FRAME_SAMPLES) {
            let packet = enc.encode(frame).unwrap();
            bytes += packet.len();
            out.extend(dec.decode(Some(&packet)).unwrap());
        }
        assert_eq!(out.len(), pcm.len());
        // One second of audio at 24 kbit/s, within the encoder's slack.
        assert!((2_000..=4_000).contains(&bytes), "{bytes} bytes");
        // After the codec's start-up, the decoded tone has the input's energy.
        let energy = |x: &[f32]| x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32;
        let (a, b) = (energy(&pcm[FRAME_SAMPLES * 10..]), energy(&out[FRAME_SAMPLES * 10..]));
        assert!((b / a - 1.0).abs() < 0.2, "energy in {a}, out {b}");
    }

    #[test]
    fn a_lost_packet_is_concealed_and_a_wrong_frame_refused() {
        let mut dec = OpusDecoder::new().unwrap();
        assert_eq!(dec.decode(None).unwrap().len(), FRAME_SAMPLES);
        let mut enc = OpusEncoder::new(12_000).unwrap();
        assert!(matches!(enc.encode(&[0.0; 100]), Err(CodecError::FrameSize { want: 960, got: 100 })));
        assert!(matches!(dec.decode(Some(&[0xff; 3])), Err(CodecError::Opus(_))));
    }
}
