//! Active speaker detection from RFC 6464 audio levels, per room.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::ParticipantId;

/// How often the speaker list is re-evaluated.
pub const SPEAKER_INTERVAL: Duration = Duration::from_millis(500);
/// Louder than this (dBov, 0 is full scale) counts as speaking; LiveKit's default is 35.
const ACTIVE_DBOV: f32 = 40.0;

/// A participant speaking, with a level in 0..=1 (linear, smoothed).
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker {
    pub participant: ParticipantId,
    pub level: f32,
}

#[derive(Debug, Default)]
struct Window {
    sum_linear: f32,
    count: u32,
}

/// Collects levels and reports the set of active speakers when it changes.
#[derive(Debug)]
pub struct SpeakerDetector {
    windows: HashMap<ParticipantId, Window>,
    smoothed: HashMap<ParticipantId, f32>,
    active: Vec<ParticipantId>,
    next_eval: Instant,
}

fn linear(dbov: f32) -> f32 {
    10f32.powf(-dbov / 20.0)
}

impl SpeakerDetector {
    pub fn new(now: Instant) -> Self {
        SpeakerDetector {
            windows: HashMap::new(),
            smoothed: HashMap::new(),
            active: Vec::new(),
            next_eval: now + SPEAKER_INTERVAL,
        }
    }

    /// Records one packet's level: `level` as carried by str0m (−dBov, so −127..=0).
    pub fn handle_level(&mut self, participant: ParticipantId, level: i8) {
        let w = self.windows.entry(participant).or_default();
        w.sum_linear += linear(level.unsigned_abs().min(127) as f32);
        w.count += 1;
    }

    /// Forgets a participant that left.
    pub fn remove(&mut self, participant: ParticipantId) {
        self.windows.remove(&participant);
        self.smoothed.remove(&participant);
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next_eval
    }

    /// Evaluates when due; returns the new speaker list (loudest first) if it changed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Vec<Speaker>> {
        if now < self.next_eval {
            return None;
        }
        self.next_eval = now + SPEAKER_INTERVAL;
        for (p, s) in self.smoothed.iter_mut() {
            // Silence (no packets, e.g. DTX) decays the level.
            if !self.windows.contains_key(p) {
                *s *= 0.5;
            }
        }
        for (p, w) in self.windows.drain() {
            let mean = w.sum_linear / w.count.max(1) as f32;
            let s = self.smoothed.entry(p).or_insert(mean);
            *s = 0.6 * *s + 0.4 * mean;
        }
        let threshold = linear(ACTIVE_DBOV);
        let mut speakers: Vec<Speaker> = self
            .smoothed
            .iter()
            .filter(|(_, l)| **l >= threshold)
            .map(|(p, l)| Speaker { participant: *p, level: *l })
            .collect();
        speakers.sort_by(|a, b| b.level.total_cmp(&a.level).then(a.participant.cmp(&b.participant)));
        let ids: Vec<ParticipantId> = speakers.iter().map(|s| s.participant).collect();
        if ids == self.active {
            return None;
        }
        self.active = ids;
        Some(speakers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loud_participant_becomes_and_stops_being_speaker() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(t0);
        let (a, b) = (ParticipantId(1), ParticipantId(2));
        for _ in 0..25 {
            d.handle_level(a, -20);
            d.handle_level(b, -90);
        }
        assert_eq!(d.handle_timeout(t0), None, "not due yet");
        let s = d.handle_timeout(t0 + SPEAKER_INTERVAL).unwrap();
        assert_eq!(s.iter().map(|s| s.participant).collect::<Vec<_>>(), [a]);
        // Nothing heard from a for a while: it decays out.
        let mut t = t0 + SPEAKER_INTERVAL;
        let mut last = None;
        for _ in 0..10 {
            t += SPEAKER_INTERVAL;
            if let Some(s) = d.handle_timeout(t) {
                last = Some(s);
            }
        }
        assert_eq!(last, Some(vec![]));
    }
}
