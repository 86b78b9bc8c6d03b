//! Revoked tokens (by `jti`): refused at every join, and the participants that joined with
//! one are disconnected when it is revoked. The list lives in this process and, when Redis is
//! configured, in Redis too, so every node refuses a token any node revoked. A join whose
//! token carries a `jti` while Redis cannot be asked is refused (503): a revoked token must
//! not slip through because Redis is down.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::db::redis::{Redis, RedisError};
use crate::ids::ParticipantId;

/// Tracked joins beyond this prune the expired ones.
const PRUNE_AT: usize = 10_000;

#[derive(Default)]
pub struct Revocations {
    redis: OnceLock<Redis>,
    /// jti → until (unix ms): revoked here.
    revoked: Mutex<HashMap<String, i64>>,
    /// jti → (token expiry in unix ms, participants that joined with it on this node).
    joined: Mutex<HashMap<String, (i64, Vec<ParticipantId>)>>,
}

fn key(jti: &str) -> String {
    format!("auralink:revoked:{jti}")
}

/// Where a node says it revoked a token, so the others end their sessions joined with it.
pub const CHANNEL: &str = "auralink:revocations";

impl Revocations {
    /// Shares the list through Redis from now on.
    pub fn use_redis(&self, redis: Redis) {
        let _ = self.redis.set(redis);
    }

    /// Revokes `jti` until the token would have expired anyway.
    pub async fn revoke(&self, jti: &str, until_ms: i64, now_ms: i64) -> Result<(), RedisError> {
        self.revoked.lock().expect("not poisoned").insert(jti.to_string(), until_ms);
        if let Some(r) = self.redis.get() {
            r.set_until(&key(jti), until_ms - now_ms).await?;
        }
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str, now_ms: i64) -> Result<bool, RedisError> {
        if self.revoked.lock().expect("not poisoned").get(jti).is_some_and(|until| *until > now_ms) {
            return Ok(true);
        }
        match self.redis.get() {
            Some(r) => r.exists(&key(jti)).await,
            None => Ok(false),
        }
    }

    /// Remembers that `participant` joined with token `jti` (valid until `exp_ms`).
    pub fn joined(&self, jti: &str, exp_ms: i64, participant: ParticipantId, now_ms: i64) {
        let mut joined = self.joined.lock().expect("not poisoned");
        if joined.len() >= PRUNE_AT {
            joined.retain(|_, (exp, _)| *exp > now_ms);
        }
        joined.entry(jti.to_string()).or_insert_with(|| (exp_ms, Vec::new())).1.push(participant);
    }

    /// Tells the other nodes (through Redis, when configured) that `jti` was revoked.
    pub async fn announce(&self, jti: &str) -> Result<(), RedisError> {
        match self.redis.get() {
            Some(r) => r.publish(CHANNEL, jti).await,
            None => Ok(()),
        }
    }

    /// The participants that joined with `jti` on this node, forgotten here.
    pub fn take_joined(&self, jti: &str) -> Vec<ParticipantId> {
        self.joined.lock().expect("not poisoned").remove(jti).map(|(_, p)| p).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoked_until_expiry_and_joins_are_handed_back_once() {
        let r = Revocations::default();
        r.joined("tok_1", 5_000, ParticipantId(7), 0);
        r.joined("tok_1", 5_000, ParticipantId(8), 0);
        assert!(!r.is_revoked("tok_1", 0).await.unwrap());
        r.revoke("tok_1", 5_000, 0).await.unwrap();
        assert!(r.is_revoked("tok_1", 4_999).await.unwrap());
        assert!(!r.is_revoked("tok_1", 5_000).await.unwrap(), "an expired token needs no entry");
        assert_eq!(r.take_joined("tok_1"), vec![ParticipantId(7), ParticipantId(8)]);
        assert!(r.take_joined("tok_1").is_empty());
    }
}
