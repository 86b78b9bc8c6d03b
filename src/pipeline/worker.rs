//! A track's pipeline: Opus decoding with gap concealment, then the stages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::codec::CodecError;
use crate::codec::opus::{FRAME_SAMPLES, OpusDecoder};
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};
use crate::sfu::TapFrame;

/// Lost frames concealed at most per gap; a longer silence (a muted or paused publisher)
/// restarts the decoder instead of inventing audio.
const MAX_CONCEALED: u64 = 5;

/// 20 ms of a track's audio, 48 kHz mono.
#[derive(Debug)]
pub struct PcmFrame<'a> {
    pub room: &'a RoomName,
    pub track: TrackId,
    pub participant: ParticipantId,
    pub identity: &'a Identity,
    /// RTP time of the frame's first sample (48 kHz).
    pub rtp_time: u64,
    pub samples: &'a [f32],
    /// Made up by loss concealment, not decoded from a packet.
    pub concealed: bool,
    /// Bytes of Opus this frame's share of its packet took (0 when concealed).
    pub opus_bytes: usize,
}

/// One processing step. Called on the track's worker thread, in frame order.
pub trait Stage: Send {
    fn process(&mut self, frame: &PcmFrame<'_>);
}

/// Counters a pipeline shares with whoever reports on it.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub frames_decoded: AtomicU64,
    pub frames_concealed: AtomicU64,
    /// Packets the decoder refused (corrupt Opus); the stages see concealment instead.
    pub decode_errors: AtomicU64,
}

/// Decodes a track's tapped frames in order and runs the stages on them.
pub struct TrackPipeline {
    decoder: OpusDecoder,
    stages: Vec<Box<dyn Stage>>,
    stats: Arc<PipelineStats>,
    /// RTP time the next frame is expected at.
    next_time: Option<u64>,
}

impl TrackPipeline {
    pub fn new(stages: Vec<Box<dyn Stage>>, stats: Arc<PipelineStats>) -> Result<Self, CodecError> {
        Ok(TrackPipeline { decoder: OpusDecoder::new()?, stages, stats, next_time: None })
    }

    pub fn handle_frame(&mut self, f: &TapFrame) {
        let step = FRAME_SAMPLES as u64;
        match self.next_time {
            // Reordered or duplicated: its slot has been played (or concealed) already.
            Some(next) if f.rtp_time < next => return,
            Some(next) if f.rtp_time - next <= MAX_CONCEALED * step => {
                let mut t = next;
                while t < f.rtp_time {
                    self.run(f, t, None);
                    t += step;
                }
            }
            Some(_) => {
                if let Ok(d) = OpusDecoder::new() {
                    self.decoder = d;
                }
            }
            None => {}
        }
        self.run(f, f.rtp_time, Some(&f.data));
    }

    fn run(&mut self, f: &TapFrame, rtp_time: u64, packet: Option<&[u8]>) {
        let decoded = match packet {
            Some(p) => match self.decoder.decode(Some(p)) {
                Ok(pcm) => Some(pcm),
                Err(e) => {
                    tracing::debug!(track = %f.track, error = %e, "tapped frame not decodable");
                    self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            None => None,
        };
        let (samples, concealed) = match decoded {
            Some(pcm) => {
                self.stats.frames_decoded.fetch_add(1, Ordering::Relaxed);
                (pcm, false)
            }
            None => match self.decoder.decode(None) {
                Ok(pcm) => {
                    self.stats.frames_concealed.fetch_add(1, Ordering::Relaxed);
                    (pcm, true)
                }
                Err(_) => return,
            },
        };
        // A packet may hold more than 20 ms (Opus allows up to 120): stages get 20 ms pieces.
        let pieces = samples.len().div_ceil(FRAME_SAMPLES).max(1);
        let opus_bytes = if concealed { 0 } else { packet.map_or(0, <[u8]>::len) / pieces };
        for (i, chunk) in samples.chunks(FRAME_SAMPLES).enumerate() {
            let frame = PcmFrame {
                room: &f.room,
                track: f.track,
                participant: f.participant,
                identity: &f.identity,
                rtp_time: rtp_time + (i * FRAME_SAMPLES) as u64,
                samples: chunk,
                concealed,
                opus_bytes,
            };
            for stage in &mut self.stages {
                stage.process(&frame);
            }
        }
        self.next_time = Some(rtp_time + samples.len() as u64);
    }
}

/// Runs `pipeline` on its own thread over the frames that arrive on `rx`; it ends when the
/// sender side (the router's tap) is dropped. Returns the sender to register as the tap.
pub fn spawn(mut pipeline: TrackPipeline) -> mpsc::Sender<TapFrame> {
    let (tx, mut rx) = mpsc::channel::<TapFrame>(super::QUEUE_FRAMES);
    tokio::task::spawn_blocking(move || {
        while let Some(f) = rx.blocking_recv() {
            pipeline.handle_frame(&f);
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::codec::opus::OpusEncoder;

    /// Records (rtp_time, concealed, samples) of each frame it sees.
    struct Record(Arc<Mutex<Vec<(u64, bool, usize)>>>);

    impl Stage for Record {
        fn process(&mut self, f: &PcmFrame<'_>) {
            self.0.lock().unwrap().push((f.rtp_time, f.concealed, f.samples.len()));
        }
    }

    fn frame(rtp_time: u64, data: Vec<u8>) -> TapFrame {
        TapFrame {
            room: RoomName::new("r").unwrap(),
            track: TrackId(1),
            participant: ParticipantId(2),
            identity: Identity::new("alice").unwrap(),
            rtp_time,
            received: Instant::now(),
            data: data.into(),
        }
    }

    #[test]
    fn gaps_are_concealed_late_frames_skipped_and_long_silences_not_invented() {
        let mut enc = OpusEncoder::new(24_000).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(PipelineStats::default());
        let mut p = TrackPipeline::new(vec![Box::new(Record(seen.clone()))], stats.clone()).unwrap();
        let step = FRAME_SAMPLES as u64;
        let base = 1_000_000;
        let packets: Vec<Vec<u8>> = (0..3).map(|_| enc.encode(&[0.1; FRAME_SAMPLES]).unwrap()).collect();
        p.handle_frame(&frame(base, packets[0].clone()));
        // Two frames lost, then one arrives.
        p.handle_frame(&frame(base + 3 * step, packets[1].clone()));
        // A straggler from the gap: too late to play.
        p.handle_frame(&frame(base + step, packets[2].clone()));
        // Garbage: concealed instead.
        p.handle_frame(&frame(base + 4 * step, vec![0xff; 3]));
        // Ten seconds later: the publisher was muted; nothing is made up for the silence.
        p.handle_frame(&frame(base + 505 * step, packets[2].clone()));
        let seen = seen.lock().unwrap();
        let times: Vec<(u64, bool)> = seen.iter().map(|s| ((s.0 - base) / step, s.1)).collect();
        assert_eq!(times, [(0, false), (1, true), (2, true), (3, false), (4, true), (505, false)]);
        assert!(seen.iter().all(|s| s.2 == FRAME_SAMPLES));
        assert_eq!(stats.frames_decoded.load(Ordering::Relaxed), 3);
        assert_eq!(stats.frames_concealed.load(Ordering::Relaxed), 3);
        assert_eq!(stats.decode_errors.load(Ordering::Relaxed), 1);
    }
}
