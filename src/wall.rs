//! Wall-clock time at the edges: token checks and record timestamps. The sans-IO cores take
//! their time as a parameter instead, and the control API and the pipeline read a [`Clock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Seconds since the Unix epoch, as JWT claims count time.
pub fn unix_secs() -> u64 {
    (unix_ms() / 1000) as u64
}

/// Wall-clock milliseconds for records and expiry checks; tests put in their own.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(unix_ms))
    }

    /// A clock that reads `ms`, for tests that move time.
    pub fn manual(ms: Arc<AtomicI64>) -> Clock {
        Clock(Arc::new(move || ms.load(Ordering::Relaxed)))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}
