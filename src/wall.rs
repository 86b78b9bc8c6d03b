//! Wall-clock time at the edges: token checks and record timestamps. The sans-IO cores take
//! their time as a parameter instead, and the control API reads [`crate::api::Clock`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Seconds since the Unix epoch, as JWT claims count time.
pub fn unix_secs() -> u64 {
    (unix_ms() / 1000) as u64
}
