//! The AIC loopback's output: a stage's audio made 48 kHz Opus again, one packet per 20 ms
//! frame, for a track the server publishes back into the room.

use crate::codec::CodecError;
use crate::codec::opus::{FRAME_SAMPLES, OpusEncoder};
use crate::codec::resample::Upsampler;

/// Well above what speech needs, so what listeners hear is the codec under test, not this
/// second encoding.
pub const LOOPBACK_BPS: u32 = 48_000;

/// Where the packets go: `(rtp_time, packet)`; false when it could not take one.
pub type PacketSink = Box<dyn FnMut(u64, Vec<u8>) -> bool + Send>;

pub struct Loopback {
    up: Upsampler,
    enc: OpusEncoder,
    sink: PacketSink,
}

impl Loopback {
    pub fn new(sink: PacketSink) -> Result<Loopback, CodecError> {
        Ok(Loopback { up: Upsampler::default(), enc: OpusEncoder::new(LOOPBACK_BPS)?, sink })
    }

    /// Sends 20 ms of 16 kHz audio as the packet for `rtp_time` (48 kHz clock); false when
    /// the sink refused it.
    pub fn send_16k(&mut self, rtp_time: u64, pcm: &[f32]) -> Result<bool, CodecError> {
        let pcm = self.up.process(pcm);
        self.send_48k(rtp_time, &pcm)
    }

    /// Sends 20 ms of 48 kHz audio as the packet for `rtp_time`.
    pub fn send_48k(&mut self, rtp_time: u64, pcm: &[f32]) -> Result<bool, CodecError> {
        debug_assert_eq!(pcm.len(), FRAME_SAMPLES);
        let packet = self.enc.encode(pcm)?;
        Ok((self.sink)(rtp_time, packet))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::codec::aic::mdct::HOP;
    use crate::codec::opus::OpusDecoder;

    #[test]
    fn frames_come_out_as_decodable_opus_at_their_rtp_time_and_refusals_are_reported() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&sent);
        let mut lb = Loopback::new(Box::new(move |t, p| {
            log.lock().unwrap().push((t, p));
            t < 960 * 4
        }))
        .unwrap();
        let tone: Vec<f32> =
            (0..HOP * 6).map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin()).collect();
        let taken: Vec<bool> =
            tone.chunks(HOP).enumerate().map(|(n, frame)| lb.send_16k(960 * n as u64, frame).unwrap()).collect();
        assert_eq!(taken, [true, true, true, true, false, false]);
        let sent = sent.lock().unwrap();
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 960, 1920, 2880, 3840, 4800]);
        let mut dec = OpusDecoder::new().unwrap();
        let last: Vec<f32> =
            sent.iter().flat_map(|(_, p)| dec.decode(Some(p)).unwrap()).skip(4 * FRAME_SAMPLES).collect();
        let rms = (last.iter().map(|x| x * x).sum::<f32>() / last.len() as f32).sqrt();
        // A 0.3 sine has an RMS of 0.21; resampling and Opus keep it within a few percent.
        assert!((0.18..0.24).contains(&rms), "rms {rms}");
    }
}
