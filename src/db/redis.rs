//! Redis, when configured: state shared by every node (rate-limit budgets, revoked tokens).
//! Every call is bounded by a short timeout so a slow or absent Redis costs a request at
//! most that long; callers decide what a failure means (see docs/api.md).

use std::time::Duration;

use redis::aio::ConnectionManager;

/// How long one Redis call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

/// A self-reconnecting connection (and the client, for subscriptions, which need their own).
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
}

/// GCRA in one atomic step (see `crate::api::ratelimit::gcra` for the same rule in Rust):
/// KEYS[1] holds the theoretical arrival time; ARGV: now, interval, burst (all ms / counts).
/// Returns 0 when allowed, else the milliseconds until the next request would be. The key
/// holds the time as a plain integer.
const GCRA: &str = r#"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local over = new_tat - now - burst * interval
if over > 0 then return over end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return 0
"#;

/// Gives back one GCRA step taken by [`GCRA`]: KEYS[1] as there; ARGV: now, interval. The
/// key goes when the budget is full again.
const GCRA_REFUND: &str = r#"
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local back = tat - tonumber(ARGV[2])
if back > now then
  redis.call('SET', KEYS[1], back, 'PX', back - now + 1000)
else
  redis.call('DEL', KEYS[1])
end
return 0
"#;

impl Redis {
    pub async fn connect(url: &str) -> Result<Redis, RedisError> {
        let client = redis::Client::open(url)?;
        let conn = tokio::time::timeout(Duration::from_secs(3), ConnectionManager::new(client.clone()))
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(Redis { client, conn })
    }

    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        Self::bounded(redis::cmd("PUBLISH").arg(channel).arg(message).query_async::<i64>(&mut c)).await.map(|_| ())
    }

    /// Messages published on `channel` from now on, until the connection breaks (then the
    /// stream ends; subscribe again).
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<impl futures_util::Stream<Item = String> + use<>, RedisError> {
        use futures_util::StreamExt;
        let mut pubsub = tokio::time::timeout(Duration::from_secs(3), self.client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::Timeout)??;
        tokio::time::timeout(Duration::from_secs(3), pubsub.subscribe(channel))
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(pubsub.into_on_message().filter_map(|m| futures_util::future::ready(m.get_payload::<String>().ok())))
    }

    async fn bounded<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, RedisError> {
        Ok(tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| RedisError::Timeout)??)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        Self::bounded(redis::cmd("PING").query_async::<String>(&mut c)).await.map(|_| ())
    }

    /// Sets `key` to `value` for `ttl_ms` (at least 1 ms).
    pub async fn set_until(&self, key: &str, value: &str, ttl_ms: i64) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl_ms.max(1)).to_owned();
        Self::bounded(cmd.query_async::<()>(&mut c)).await
    }

    /// The value of `key`, if it is set.
    pub async fn get(&self, key: &str) -> Result<Option<String>, RedisError> {
        let mut c = self.conn.clone();
        Self::bounded(redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut c)).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, RedisError> {
        let mut c = self.conn.clone();
        Self::bounded(redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut c)).await.map(|n| n > 0)
    }

    /// One GCRA step for `key`; `Ok(0)` allows, `Ok(ms)` refuses for that long.
    pub async fn gcra(&self, key: &str, now_ms: i64, interval_ms: i64, burst: i64) -> Result<i64, RedisError> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(GCRA);
        let mut call = script.key(key);
        call.arg(now_ms).arg(interval_ms).arg(burst);
        Self::bounded(call.invoke_async::<i64>(&mut c)).await
    }

    /// Undoes one allowed [`Redis::gcra`] step for `key`.
    pub async fn gcra_refund(&self, key: &str, now_ms: i64, interval_ms: i64) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(GCRA_REFUND);
        let mut call = script.key(key);
        call.arg(now_ms).arg(interval_ms);
        Self::bounded(call.invoke_async::<i64>(&mut c)).await.map(|_| ())
    }
}
