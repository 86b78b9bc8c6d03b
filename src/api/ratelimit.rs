//! Per-caller rate limiting with GCRA (a leaky bucket kept as one timestamp per caller):
//! `per_minute` requests a minute on average, `burst` at once. With Redis the budget is
//! shared by every node; without it, or while Redis fails, each node keeps its own (the
//! failure is logged, counted in `/metrics` and fails `/readyz`: degraded, never silently).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::{Caller, Principal};
use crate::db::redis::Redis;
use crate::error::ApiError;

/// One GCRA step: the new theoretical arrival time if allowed, else how long to wait (ms).
pub fn gcra(tat: Option<i64>, now: i64, interval: i64, burst: i64) -> Result<i64, i64> {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    let over = new_tat - now - burst * interval;
    if over > 0 { Err(over) } else { Ok(new_tat) }
}

pub struct RateLimiter {
    interval_ms: i64,
    burst: i64,
    redis: Option<Redis>,
    local: Mutex<HashMap<String, i64>>,
    pub redis_errors: AtomicU64,
    pub limited: AtomicU64,
}

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32, redis: Option<Redis>) -> RateLimiter {
        RateLimiter {
            interval_ms: 60_000 / i64::from(per_minute.max(1)),
            burst: i64::from(burst.max(1)),
            redis,
            local: Mutex::new(HashMap::new()),
            redis_errors: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }

    /// `Ok(())` to go ahead, `Err(ms)` to come back in that long.
    pub async fn check(&self, key: &str, now: i64) -> Result<(), i64> {
        if let Some(r) = &self.redis {
            match r.gcra(&format!("auralink:rl:{key}"), now, self.interval_ms, self.burst).await {
                Ok(0) => return Ok(()),
                Ok(wait) => {
                    self.limited.fetch_add(1, Ordering::Relaxed);
                    return Err(wait);
                }
                Err(e) => {
                    self.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "rate limit falls back to this node's budget");
                }
            }
        }
        let mut local = self.local.lock().expect("not poisoned");
        match gcra(local.get(key).copied(), now, self.interval_ms, self.burst) {
            Ok(tat) => {
                local.insert(key.to_string(), tat);
                // Callers whose budget is back to full carry no information: forget them.
                if local.len() > 100_000 {
                    local.retain(|_, t| *t > now);
                }
                Ok(())
            }
            Err(wait) => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                Err(wait)
            }
        }
    }
}

pub async fn limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().expect("authenticated before rate limiting");
    let key = match &caller.principal {
        Principal::Admin => "admin".to_string(),
        Principal::Key { key_id, .. } => key_id.clone(),
    };
    match s.limiter.check(&key, s.clock.now_ms()).await {
        Ok(()) => next.run(req).await,
        Err(wait_ms) => {
            let secs = (wait_ms + 999) / 1000;
            let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("retry in {secs} s"))
                .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let (interval, burst) = (1000, 3);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0, interval, burst).unwrap());
        }
        assert_eq!(gcra(tat, 0, interval, burst), Err(1000));
        assert_eq!(gcra(tat, 999, interval, burst), Err(1));
        tat = Some(gcra(tat, 1000, interval, burst).unwrap());
        assert!(gcra(tat, 1000, interval, burst).is_err());
        // A long pause refills the bucket, never beyond the burst.
        tat = Some(gcra(tat, 100_000, interval, burst).unwrap());
        tat = Some(gcra(tat, 100_000, interval, burst).unwrap());
        tat = Some(gcra(tat, 100_000, interval, burst).unwrap());
        assert!(gcra(tat, 100_000, interval, burst).is_err());
    }
}
