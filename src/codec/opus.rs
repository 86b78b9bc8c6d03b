//! Opus at 48 kHz mono in 20 ms frames, as the SFU carries it: what the pipeline decodes
//! tracks from and re-encodes them to, and the baseline AIC is measured against.

use crate::codec::CodecError;

pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 960;
/// Opus packets are at most this long (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1275;

fn codec_error(e: opus::Error) -> CodecError {
    CodecError::Opus(e.to_string())
}

pub struct OpusEncoder {
    inner: opus::Encoder,
    out: [u8; MAX_PACKET],
}

impl OpusEncoder {
    /// A speech encoder at `bitrate_bps` (6 000 to 510 000).
    pub fn new(bitrate_bps: u32) -> Result<Self, CodecError> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip).map_err(codec_error)?;
        inner.set_bitrate(opus::Bitrate::Bits(bitrate_bps as i32)).map_err(codec_error)?;
        Ok(OpusEncoder { inner, out: [0; MAX_PACKET] })
    }

    /// One packet for one frame of samples in -1..1.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize { want: FRAME_SAMPLES, got: pcm.len() });
        }
        let n = self.inner.encode_float(pcm, &mut self.out).map_err(codec_error)?;
        Ok(self.out[..n].to_vec())
    }
}

pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, CodecError> {
        Ok(OpusDecoder { inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).map_err(codec_error)? })
    }

    /// One packet's samples (mono, whatever the sender's channel count); `None` for a lost
    /// packet, which Opus conceals with one frame of its best guess.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<f32>, CodecError> {
        let Some(p) = packet else { return self.conceal(FRAME_SAMPLES) };
        // A packet holds at most 120 ms.
        let mut out = vec![0f32; FRAME_SAMPLES * 6];
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
