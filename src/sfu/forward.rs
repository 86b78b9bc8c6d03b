//! Pure forwarding decisions for one subscriber slot: which simulcast layer goes out, when a
//! layer switch may happen (only on a keyframe of the new layer) and how RTP time is rebased
//! so the subscriber sees one continuous stream across switches.

use std::time::Instant;

use str0m::media::{MediaKind, MediaTime, Rid};

/// A simulcast layer; `None` is the only stream of a track without simulcast.
pub type Layer = Option<Rid>;

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not for this subscriber (other layer, paused, or waiting for a keyframe).
    Drop,
    /// Drop, and the publisher must send a keyframe on this layer before anything can flow.
    NeedKeyframe(Layer),
    /// Send, with this RTP time.
    Forward(MediaTime),
}

/// Per-slot forwarding state.
#[derive(Debug)]
pub struct Forwarder {
    kind: MediaKind,
    /// Layer being sent; `None` until the first keyframe (video) or frame (audio).
    current: Option<Layer>,
    /// Layer wanted; `None` means send nothing (paused).
    target: Option<Layer>,
    /// Added to incoming RTP time (in ticks of the track clock) to get outgoing time.
    offset: i64,
    last_out: Option<(u64, Instant)>,
}

impl Forwarder {
    pub fn new(kind: MediaKind) -> Self {
        Forwarder { kind, current: None, target: Some(None), offset: 0, last_out: None }
    }

    /// The layer being forwarded, if any.
    pub fn current(&self) -> Option<&Layer> {
        self.current.as_ref()
    }

    /// The layer wanted.
    pub fn target(&self) -> Option<&Layer> {
        self.target.as_ref()
    }

    /// Sets the wanted layer. True when a switch starts, so a keyframe is needed.
    pub fn set_target(&mut self, target: Option<Layer>) -> bool {
        if self.target == target {
            return false;
        }
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
        target.is_some() && self.current != target
    }

    /// Decides for a frame of `layer`.
    pub fn on_frame(&mut self, layer: Layer, is_keyframe: bool, time: MediaTime, at: Instant) -> Decision {
        let Some(target) = self.target else {
            return Decision::Drop;
        };
        if self.kind == MediaKind::Audio {
            // Audio has one layer and every packet decodes on its own.
            return Decision::Forward(self.emit(time, at));
        }
        if self.current == Some(target) && layer == target {
            return Decision::Forward(self.emit(time, at));
        }
        if layer == target {
            if !is_keyframe {
                // Until the new layer's keyframe arrives, the old layer (if any) keeps flowing.
                return Decision::NeedKeyframe(target);
            }
            self.switch(time, at);
            self.current = Some(target);
            return Decision::Forward(self.emit(time, at));
        }
        if self.current == Some(layer) {
            return Decision::Forward(self.emit(time, at));
        }
        Decision::Drop
    }

    /// Rebases so the first frame of the new layer follows the last frame sent by wall-clock.
    fn switch(&mut self, time: MediaTime, at: Instant) {
        let Some((last_ts, last_at)) = self.last_out else {
            return;
        };
        let hz = time.frequency().get() as f64;
        let elapsed = at.saturating_duration_since(last_at).as_secs_f64();
        // At least one tick forward, so the new frame never repeats the last timestamp.
        let expected = last_ts as i64 + ((elapsed * hz) as i64).max(1);
        self.offset = expected - time.numer() as i64;
    }

    fn emit(&mut self, time: MediaTime, at: Instant) -> MediaTime {
        let out = (time.numer() as i64 + self.offset).max(0) as u64;
        self.last_out = Some((out, at));
        MediaTime::new(out, time.frequency())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(ticks: u64) -> MediaTime {
        MediaTime::from_90khz(ticks)
    }

    #[test]
    fn video_waits_for_keyframe_then_flows() {
        let now = Instant::now();
        let mut f = Forwarder::new(MediaKind::Video);
        assert_eq!(f.on_frame(None, false, t(0), now), Decision::NeedKeyframe(None));
        assert_eq!(f.on_frame(None, true, t(3000), now), Decision::Forward(t(3000)));
        assert_eq!(f.on_frame(None, false, t(6000), now), Decision::Forward(t(6000)));
    }

    #[test]
    fn switch_happens_on_keyframe_with_continuous_time() {
        let now = Instant::now();
        let (l, h) = (Some(Rid::from("l")), Some(Rid::from("h")));
        let mut f = Forwarder::new(MediaKind::Video);
        f.set_target(Some(l));
        assert_eq!(f.on_frame(l, true, t(1000), now), Decision::Forward(t(1000)));
        assert_eq!(f.on_frame(h, true, t(500_000), now), Decision::Drop);
        assert!(f.set_target(Some(h)));
        // The old layer keeps flowing; the new one waits for its keyframe.
        let later = now + Duration::from_millis(33);
        assert_eq!(f.on_frame(h, false, t(503_000), later), Decision::NeedKeyframe(h));
        assert_eq!(f.on_frame(l, false, t(3970), later), Decision::Forward(t(3970)));
        let later = later + Duration::from_millis(33);
        // 33 ms after the last frame sent: 2970 ticks of 90 kHz.
        assert_eq!(f.on_frame(h, true, t(506_000), later), Decision::Forward(t(3970 + 2970)));
        assert_eq!(f.on_frame(l, false, t(6940), later), Decision::Drop);
        assert_eq!(f.on_frame(h, false, t(509_000), later), Decision::Forward(t(3970 + 2970 + 3000)));
    }

    #[test]
    fn paused_drops_everything() {
        let now = Instant::now();
        let mut f = Forwarder::new(MediaKind::Audio);
        assert_eq!(
            f.on_frame(None, false, MediaTime::from_millis(20), now),
            Decision::Forward(MediaTime::from_millis(20))
        );
        assert!(!f.set_target(None));
        assert_eq!(f.on_frame(None, false, MediaTime::from_millis(40), now), Decision::Drop);
    }
}
