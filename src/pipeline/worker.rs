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

/// Decodes a track's tapped frames in order, cuts the audio into 20 ms frames whatever the
/// publisher's packet duration, and runs the stages on them.
pub struct TrackPipeline {
    decoder: OpusDecoder,
    stages: Vec<Box<dyn Stage>>,
    stats: Arc<PipelineStats>,
    /// RTP time the next packet is expected at, and the last packet's duration.
    next_time: Option<u64>,
    packet_samples: u64,
    /// Decoded audio not yet a whole frame: its first sample's RTP time, the Opus bytes it
    /// stands for, and the RTP time up to which it is concealment.
    pending: Vec<f32>,
    pending_time: u64,
    pending_bytes: f64,
    concealed_until: u64,
}

impl TrackPipeline {
    pub fn new(stages: Vec<Box<dyn Stage>>, stats: Arc<PipelineStats>) -> Result<Self, CodecError> {
        Ok(TrackPipeline {
            decoder: OpusDecoder::new()?,
            stages,
            stats,
            next_time: None,
            packet_samples: FRAME_SAMPLES as u64,
            pending: Vec::with_capacity(2 * FRAME_SAMPLES),
            pending_time: 0,
            pending_bytes: 0.0,
            concealed_until: 0,
        })
    }

    pub fn handle_frame(&mut self, f: &TapFrame) {
        match self.next_time {
            // Reordered or duplicated: its slot has been played (or concealed) already.
            Some(next) if f.rtp_time < next => return,
            Some(next) if f.rtp_time - next <= MAX_CONCEALED * self.packet_samples => {
                let mut t = next;
                while t < f.rtp_time {
                    // Whole 2.5 ms steps: what Opus can conceal.
                    let n = ((f.rtp_time - t).min(self.packet_samples) / 120 * 120).max(120);
                    let Ok(pcm) = self.decoder.conceal(n as usize) else { break };
                    self.stats.frames_concealed.fetch_add(1, Ordering::Relaxed);
                    self.push(f, t, &pcm, 0, true);
                    t += n;
                }
            }
            Some(_) => {
                // A long silence (muted, paused): start over rather than invent audio.
                if let Ok(d) = OpusDecoder::new() {
                    self.decoder = d;
                }
                self.pending.clear();
                self.pending_bytes = 0.0;
            }
            None => {}
        }
        let (pcm, bytes, concealed) = match self.decoder.decode(Some(&f.data)) {
            Ok(pcm) => {
                self.stats.frames_decoded.fetch_add(1, Ordering::Relaxed);
                (pcm, f.data.len(), false)
            }
            Err(e) => {
                tracing::debug!(track = %f.track, error = %e, "tapped frame not decodable");
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                let Ok(pcm) = self.decoder.conceal(self.packet_samples as usize) else { return };
                self.stats.frames_concealed.fetch_add(1, Ordering::Relaxed);
                (pcm, 0, true)
            }
        };
        if !concealed {
            self.packet_samples = pcm.len() as u64;
        }
        self.push(f, f.rtp_time, &pcm, bytes, concealed);
    }

    /// Appends audio starting at `rtp_time` and runs the stages on every whole frame.
    fn push(&mut self, f: &TapFrame, rtp_time: u64, pcm: &[f32], bytes: usize, concealed: bool) {
        if self.pending.is_empty() {
            self.pending_time = rtp_time;
        }
        self.pending.extend_from_slice(pcm);
        self.pending_bytes += bytes as f64;
        let end = rtp_time + pcm.len() as u64;
        if concealed {
            self.concealed_until = end;
        }
        self.next_time = Some(end);
        while self.pending.len() >= FRAME_SAMPLES {
            let share = self.pending_bytes * FRAME_SAMPLES as f64 / self.pending.len() as f64;
            self.pending_bytes -= share;
            let frame = PcmFrame {
                room: &f.room,
                track: f.track,
                participant: f.participant,
                identity: &f.identity,
                rtp_time: self.pending_time,
                samples: &self.pending[..FRAME_SAMPLES],
                concealed: self.pending_time < self.concealed_until,
                opus_bytes: share.round() as usize,
            };
            for stage in &mut self.stages {
                stage.process(&frame);
            }
            self.pending.drain(..FRAME_SAMPLES);
            self.pending_time += FRAME_SAMPLES as u64;
        }
    }
}

/// Runs `pipeline` on a thread of its own (not tokio's blocking pool: it lives as long as the
/// track) over the frames that arrive on the returned sender, which is the tap to register;
/// the thread ends when the router drops the tap.
pub fn spawn(mut pipeline: TrackPipeline) -> std::io::Result<mpsc::Sender<TapFrame>> {
    let (tx, mut rx) = mpsc::channel::<TapFrame>(super::QUEUE_FRAMES);
    std::thread::Builder::new().name("track-pipeline".into()).spawn(move || {
        while let Some(f) = rx.blocking_recv() {
            pipeline.handle_frame(&f);
        }
    })?;
    Ok(tx)
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

    #[test]
    fn ten_millisecond_packets_make_whole_twenty_millisecond_frames() {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut out = [0u8; 400];
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut p = TrackPipeline::new(vec![Box::new(Record(seen.clone()))], Arc::default()).unwrap();
        for i in 0..6u64 {
            let n = enc.encode_float(&[0.1; 480], &mut out).unwrap();
            // The fourth packet is lost.
            if i != 3 {
                p.handle_frame(&frame(480 * i, out[..n].to_vec()));
            }
        }
        let seen = seen.lock().unwrap();
        let frames: Vec<(u64, bool)> = seen.iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(frames, [(0, false), (960, true), (1920, false)]);
        assert!(seen.iter().all(|s| s.2 == FRAME_SAMPLES));
    }
}
