//! Per-caller rate limiting with GCRA (a leaky bucket kept as one timestamp per caller):
//! `per_minute` requests a minute on average, `burst` at once. With Redis the budget is
//! shared by every node; without it, or while Redis fails, each node keeps its own (the
//! failure is logged, counted in `/metrics` and fails `/readyz`: degraded, never silently).
//!
//! Two budgets use it: requests per authenticated caller (API key, LiveKit key), and failed
//! authentications per client address: each attempt holds a unit while it runs and only a
//! failure keeps it, so attempts sent in parallel get no more than the budget; once empty, it
//! refuses every attempt from that address before its credential is looked at.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::state::AppState;
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

    /// Gives back one request that `check` let through (the budget never grows past full).
    pub async fn refund(&self, key: &str, now: i64) {
        if let Some(r) = &self.redis {
            match r.gcra_refund(&redis_key(key), now, self.interval_ms).await {
                Ok(()) => return,
                Err(e) => {
                    self.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "rate limit falls back to this node's budget");
                }
            }
        }
        let mut local = self.local.lock().expect("not poisoned");
        if let Some(tat) = local.get(key).copied() {
            match tat - self.interval_ms {
                back if back > now => local.insert(key.to_string(), back),
                _ => local.remove(key),
            };
        }
    }

    /// `Ok(())` to go ahead, `Err(ms)` to come back in that long.
    pub async fn check(&self, key: &str, now: i64) -> Result<(), i64> {
        if let Some(r) = &self.redis {
            match r.gcra(&redis_key(key), now, self.interval_ms, self.burst).await {
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

fn redis_key(key: &str) -> String {
    format!("auralink:rl:{key}")
}

/// Refused for `wait_ms`: how long to tell the client to wait, in whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: i64,
}

impl Limited {
    fn after(wait_ms: i64) -> Limited {
        Limited { retry_after_secs: ((wait_ms + 999) / 1000).max(1) }
    }

    /// The control API's answer: 429 `rate_limited` with `Retry-After`.
    pub fn into_response(self) -> Response {
        let secs = self.retry_after_secs;
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("retry in {secs} s"));
        self.with_retry_after(r.into_response())
    }

    /// `r` with this refusal's `Retry-After`.
    pub fn with_retry_after(self, mut r: Response) -> Response {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_secs));
        r
    }
}

/// Spends one request of an authenticated caller's budget (`caller` names the key).
pub async fn admit(s: &AppState, caller: &str) -> Result<(), Limited> {
    s.limiter.check(caller, s.clock.now_ms()).await.map_err(Limited::after)
}

/// The failed-authentication budget of a client address (`None`: not known, as for requests
/// that reach the router without a socket; they share one budget).
fn failures_key(ip: Option<&str>) -> String {
    format!("authfail:{}", ip.unwrap_or("unknown"))
}

/// Runs an authentication `attempt` from the client at `ip` under that address's budget of
/// failures: refused without running while the budget is empty. Every attempt spends before
/// it runs, so that attempts sent in parallel cannot all pass on one look at a budget with one
/// failure left; an attempt that did not fail (`is_failure` says which errors count) gets its
/// share back. So the budget also bounds the attempts in flight from one address at once.
pub async fn guard_auth<T, E>(
    s: &AppState,
    ip: Option<&str>,
    attempt: impl Future<Output = Result<T, E>>,
    is_failure: impl FnOnce(&E) -> bool,
) -> Result<Result<T, E>, Limited> {
    let key = failures_key(ip);
    s.auth_failures.check(&key, s.clock.now_ms()).await.map_err(Limited::after)?;
    let mut held = Held { s, key: Some(key) };
    let outcome = attempt.await;
    let key = held.key.take().expect("held until settled");
    if !matches!(&outcome, Err(e) if is_failure(e)) {
        s.auth_failures.refund(&key, s.clock.now_ms()).await;
    }
    Ok(outcome)
}

/// A unit of an address's failure budget held by an attempt in flight: an attempt dropped
/// before it settled (the client went away) did not fail, so its unit goes back.
struct Held<'a> {
    s: &'a AppState,
    key: Option<String>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let (Some(key), Ok(runtime)) = (self.key.take(), tokio::runtime::Handle::try_current()) else { return };
        let (limiter, now) = (std::sync::Arc::clone(&self.s.auth_failures), self.s.clock.now_ms());
        runtime.spawn(async move { limiter.refund(&key, now).await });
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

    #[tokio::test]
    async fn a_refund_gives_one_back_never_more_than_the_burst() {
        let limiter = RateLimiter::new(60, 2, None);
        limiter.refund("a", 0).await;
        assert_eq!(limiter.check("a", 0).await, Ok(()));
        assert_eq!(limiter.check("a", 0).await, Ok(()));
        assert_eq!(limiter.check("a", 0).await, Err(1000));
        limiter.refund("a", 0).await;
        assert_eq!(limiter.check("a", 0).await, Ok(()));
        assert_eq!(limiter.check("a", 0).await, Err(1000));
        limiter.refund("a", 0).await;
        limiter.refund("a", 0).await;
        limiter.refund("a", 0).await;
        assert_eq!(limiter.check("a", 0).await, Ok(()));
        assert_eq!(limiter.check("a", 0).await, Ok(()));
        assert_eq!(limiter.check("a", 0).await, Err(1000));
        assert_eq!(Limited::after(1).retry_after_secs, 1);
        assert_eq!(Limited::after(1001).retry_after_secs, 2);
    }

    /// With `AURALINK_TEST_REDIS`: nodes share the budget, refunds included.
    #[tokio::test]
    async fn nodes_share_spending_and_refunds_through_redis() {
        let Some(url) = std::env::var("AURALINK_TEST_REDIS").ok().filter(|s| !s.is_empty()) else {
            eprintln!("AURALINK_TEST_REDIS not set: skipped");
            return;
        };
        let redis = Redis::connect(&url).await.expect("AURALINK_TEST_REDIS is set but Redis is unreachable");
        let (a, b) = (RateLimiter::new(60, 2, Some(redis.clone())), RateLimiter::new(60, 2, Some(redis)));
        let key = crate::ids::record_id("authfail", 0);
        let now = 1_000_000;
        assert_eq!(a.check(&key, now).await, Ok(()));
        assert_eq!(a.check(&key, now).await, Ok(()));
        assert_eq!(b.check(&key, now).await, Err(1000));
        a.refund(&key, now).await;
        assert_eq!(b.check(&key, now).await, Ok(()));
        assert_eq!(b.check(&key, now).await, Err(1000));
        assert_eq!(b.check(&key, now + 1000).await, Ok(()));
        assert_eq!((a.redis_errors.load(Ordering::Relaxed), b.redis_errors.load(Ordering::Relaxed)), (0, 0));
    }
}
