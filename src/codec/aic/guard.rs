//! The runtime guard (sans-IO): per frame, whether a track's audio goes through AIC or stays
//! Opus. Frames that take longer than `max_latency` several times in a row, or an estimated
//! quality that stays under `min_quality`, send the track back to Opus and count a fallback.
//! A fallen-back track still tries AIC on one frame a second; a few good tries in a row bring
//! it back.

use std::time::Duration;

/// Consecutive frames over the latency budget that make a track fall back.
const SLOW_FRAMES: u32 = 3;
/// Frames the quality estimate is averaged over (an exponential average), about a second.
const QUALITY_FRAMES: f64 = 50.0;
/// Voiced frames seen before quality may trigger a fallback.
const WARMUP_FRAMES: u32 = 25;
/// A fallen-back track tries AIC on one frame in this many.
const PROBE_EVERY: u32 = 50;
/// Good tries in a row that bring a track back.
const HEALTHY_PROBES: u32 = 3;

/// Where the next frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Aic,
    Opus,
    /// Opus, but run AIC on this frame too, to see whether it is healthy again.
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Latency,
    Quality,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    FellBack(Reason),
    Recovered,
}

#[derive(Debug)]
pub struct Guard {
    max_latency: Duration,
    min_quality: f64,
    fallen_back: Option<Reason>,
    slow: u32,
    quality: Option<f64>,
    voiced: u32,
    since_probe: u32,
    healthy: u32,
    fallbacks: u64,
}

impl Guard {
    pub fn new(max_latency: Duration, min_quality: f64) -> Guard {
        Guard {
            max_latency,
            min_quality,
            fallen_back: None,
            slow: 0,
            quality: None,
            voiced: 0,
            since_probe: 0,
            healthy: 0,
            fallbacks: 0,
        }
    }

    /// New limits (settings changed) apply from the next frame.
    pub fn set_limits(&mut self, max_latency: Duration, min_quality: f64) {
        self.max_latency = max_latency;
        self.min_quality = min_quality;
    }

    pub fn route(&mut self) -> Route {
        if self.fallen_back.is_none() {
            return Route::Aic;
        }
        self.since_probe += 1;
        if self.since_probe >= PROBE_EVERY {
            self.since_probe = 0;
            Route::Probe
        } else {
            Route::Opus
        }
    }

    /// What a frame routed `Aic` or `Probe` cost, and its estimated quality (`None` for a
    /// silent frame, whose quality means nothing).
    pub fn handle_frame(&mut self, latency: Duration, quality: Option<f64>) -> Option<Transition> {
        let slow = latency > self.max_latency;
        if let Some(reason) = self.fallen_back {
            // A silent try says nothing about quality: it must not bring back a track that fell
            // back for it (which would then fall back again, over and over).
            if reason == Reason::Quality && quality.is_none() {
                return None;
            }
            let good = !slow && quality.is_none_or(|q| q >= self.min_quality);
            self.healthy = if good { self.healthy + 1 } else { 0 };
            if self.healthy < HEALTHY_PROBES {
                return None;
            }
            *self = Guard { fallbacks: self.fallbacks, ..Guard::new(self.max_latency, self.min_quality) };
            return Some(Transition::Recovered);
        }
        self.slow = if slow { self.slow + 1 } else { 0 };
        if let Some(q) = quality {
            let avg = self.quality.map_or(q, |avg| avg + (q - avg) / QUALITY_FRAMES);
            self.quality = Some(avg);
            self.voiced += 1;
        }
        let reason = if self.slow >= SLOW_FRAMES {
            Reason::Latency
        } else if self.voiced >= WARMUP_FRAMES && self.quality.is_some_and(|q| q < self.min_quality) {
            Reason::Quality
        } else {
            return None;
        };
        self.fallen_back = Some(reason);
        self.since_probe = 0;
        self.healthy = 0;
        self.fallbacks += 1;
        Some(Transition::FellBack(reason))
    }

    pub fn fallback_count(&self) -> u64 {
        self.fallbacks
    }

    pub fn fallen_back(&self) -> Option<Reason> {
        self.fallen_back
    }

    /// The averaged quality estimate, once there is one.
    pub fn quality(&self) -> Option<f64> {
        self.quality
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(2);
    const SLOW: Duration = Duration::from_millis(30);

    /// Routes frames until one is a probe; returns how many that took.
    fn until_probe(g: &mut Guard) -> usize {
        (1..=PROBE_EVERY as usize).find(|_| g.route() == Route::Probe).expect("a probe within PROBE_EVERY frames")
    }

    #[test]
    fn slow_frames_fall_back_and_good_probes_bring_the_track_back() {
        let mut g = Guard::new(Duration::from_millis(20), 2.0);
        assert_eq!(g.route(), Route::Aic);
        // One or two slow frames are tolerated.
        assert_eq!(g.handle_frame(SLOW, Some(3.0)), None);
        assert_eq!(g.handle_frame(SLOW, Some(3.0)), None);
        assert_eq!(g.handle_frame(FAST, Some(3.0)), None);
        for _ in 0..2 {
            assert_eq!(g.handle_frame(SLOW, Some(3.0)), None);
        }
        assert_eq!(g.handle_frame(SLOW, Some(3.0)), Some(Transition::FellBack(Reason::Latency)));
        assert_eq!((g.fallback_count(), g.fallen_back()), (1, Some(Reason::Latency)));
        assert_eq!(g.route(), Route::Opus);
        // A bad probe resets the count of good ones.
        assert_eq!(until_probe(&mut g), PROBE_EVERY as usize - 1);
        assert_eq!(g.handle_frame(FAST, None), None);
        until_probe(&mut g);
        assert_eq!(g.handle_frame(SLOW, None), None);
        for i in 0..HEALTHY_PROBES {
            assert_eq!(until_probe(&mut g), PROBE_EVERY as usize);
            let t = g.handle_frame(FAST, Some(3.0));
            assert_eq!(t, (i + 1 == HEALTHY_PROBES).then_some(Transition::Recovered));
        }
        assert_eq!(g.route(), Route::Aic);
        assert_eq!(g.fallback_count(), 1, "recovering keeps the count");
    }

    #[test]
    fn poor_quality_falls_back_after_warmup_and_silence_does_not_count() {
        let mut g = Guard::new(Duration::from_millis(20), 2.0);
        for _ in 0..100 {
            assert_eq!(g.handle_frame(FAST, None), None, "silent frames say nothing about quality");
        }
        for _ in 0..WARMUP_FRAMES - 1 {
            assert_eq!(g.handle_frame(FAST, Some(1.2)), None);
        }
        assert_eq!(g.handle_frame(FAST, Some(1.2)), Some(Transition::FellBack(Reason::Quality)));
        // Silent tries do not count either way.
        for _ in 0..5 {
            until_probe(&mut g);
            assert_eq!(g.handle_frame(FAST, None), None);
        }
        assert_eq!(g.fallen_back(), Some(Reason::Quality));
        // Lowering the bar live: voiced tries now meet it.
        g.set_limits(Duration::from_millis(20), 1.0);
        for _ in 0..HEALTHY_PROBES {
            until_probe(&mut g);
            g.handle_frame(FAST, Some(1.2));
        }
        assert_eq!(g.fallen_back(), None);
        assert!(g.quality().is_none(), "a recovered track starts a fresh average");
    }

    #[test]
    fn a_short_dip_in_quality_is_averaged_away() {
        let mut g = Guard::new(Duration::from_millis(20), 2.0);
        for _ in 0..200 {
            assert_eq!(g.handle_frame(FAST, Some(3.5)), None);
        }
        for _ in 0..10 {
            assert_eq!(g.handle_frame(FAST, Some(1.0)), None);
        }
        assert!(g.quality().unwrap() > 2.0);
    }
}
