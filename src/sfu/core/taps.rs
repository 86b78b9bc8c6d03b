//! Server-side consumers of published tracks (the pipeline's stages), fed off the media path.

use super::*;

impl Sfu {
    pub(super) fn feed_taps(&mut self, track: TrackId, d: &MediaData) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.taps.is_empty() {
            return;
        }
        let frame = TapFrame {
            room: t.room.clone(),
            track,
            participant: t.info.owner,
            identity: t.identity.clone(),
            rtp_time: d.time.numer(),
            received: d.network_time,
            data: Arc::clone(&d.data),
        };
        let stats = &mut self.stats;
        t.taps.retain_mut(|sink| match sink.offer(frame.clone()) {
            Offer::Taken => {
                stats.tap_frames += 1;
                true
            }
            Offer::Full => {
                stats.tap_frames_dropped += 1;
                true
            }
            Offer::Closed => false,
        });
    }

    /// Sends copies of an audio track's Opus frames to `sink` until the sink reports it is
    /// closed or the track ends.
    pub fn add_tap(&mut self, track: TrackId, sink: Box<dyn TapSink>) -> Result<(), SfuError> {
        let t = self.tracks.get_mut(&track).ok_or(SfuError::NoTrack)?;
        if t.info.kind != MediaKind::Audio {
            return Err(SfuError::NotAudio);
        }
        t.taps.push(sink);
        Ok(())
    }
}
