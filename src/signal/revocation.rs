//! Revoked tokens (by `jti`): refused at every join, and the participants that joined with
//! one are disconnected when it is revoked. The list lives in this process and, when Redis is
//! configured, in Redis too, so every node refuses a token any node revoked. A join whose
//! token carries a `jti` while Redis cannot be asked is refused (503): a revoked token must
//! not slip through because Redis is down.
//!
//! Deleted rooms revoke their tokens too: a join token for room R of org O issued at or
//! before R's deletion is refused, so a deletion cannot be undone by rejoining. A token that
//! does not say when it was issued (LiveKit's server SDK writes `nbf: 0` and no `iat`) is
//! refused while the room stays deleted, and accepted again once the room is created anew
//! through the API. Tokens issued after the deletion join as usual. With Redis the deleted
//! rooms live there alone (a room created again on another node must count here); joins
//! while it cannot be asked are refused (503), as for `jti`s.
//!
//! Which participants joined with which `jti` is kept while they are in (see
//! [`Revocations::follow_leaves`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast::error::RecvError;

use crate::db::redis::{Redis, RedisError};
use crate::ids::ParticipantId;
use crate::sfu::SfuEvent;
use crate::sfu::driver::SfuHandle;

/// Tracked joins beyond this prune the expired ones.
const PRUNE_AT: usize = 10_000;

#[derive(Default)]
pub struct Revocations {
    redis: OnceLock<Redis>,
    /// jti → until (unix ms): revoked here.
    revoked: Mutex<HashMap<String, i64>>,
    /// jti → (token expiry in unix ms, participants that joined with it on this node).
    joined: Mutex<HashMap<String, (i64, Vec<ParticipantId>)>>,
    /// [`room_key`] → its deletion, without Redis.
    rooms: Mutex<HashMap<String, DeletedRoom>>,
}

fn key(jti: &str) -> String {
    format!("auralink:revoked:{jti}")
}

/// Org ids hold no `:`, so the room name after the second one is unambiguous.
fn room_key(org: &str, room: &str) -> String {
    format!("auralink:revoked-room:{org}:{room}")
}

/// A room's deletion, as far as its tokens are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeletedRoom {
    /// Tokens issued at or before this (unix ms) are refused.
    at: i64,
    /// When the entry lapses (unix ms): the longest-lived token issued before `at` has expired.
    until: i64,
    /// Whether tokens that do not say when they were issued are refused too (until the room
    /// is created again, or `until`).
    undated: bool,
}

impl DeletedRoom {
    fn refuses(&self, issued_secs: Option<u64>, now_ms: i64) -> bool {
        self.until > now_ms
            && match issued_secs {
                Some(t) => (t as i64).saturating_mul(1000) <= self.at,
                None => self.undated,
            }
    }

    /// `at until undated` as Redis holds it.
    fn encode(&self) -> String {
        format!("{} {} {}", self.at, self.until, u8::from(self.undated))
    }

    fn decode(v: &str) -> Option<DeletedRoom> {
        let mut parts = v.split(' ');
        let (at, until, undated) = (parts.next()?, parts.next()?, parts.next()?);
        Some(DeletedRoom { at: at.parse().ok()?, until: until.parse().ok()?, undated: undated == "1" })
    }
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
            r.set_until(&key(jti), "1", until_ms - now_ms).await?;
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

    /// Records that room `room` of `org` was deleted at `at_ms`: its tokens issued until then
    /// are refused until `until_ms`.
    pub async fn revoke_room(&self, org: &str, room: &str, at_ms: i64, until_ms: i64) -> Result<(), RedisError> {
        self.put_room(org, room, DeletedRoom { at: at_ms, until: until_ms, undated: true }, at_ms).await
    }

    /// Records that room `room` of `org` was created (again) at `now_ms`: tokens that do not
    /// say when they were issued join it again; those issued before its deletion still not.
    pub async fn room_created(&self, org: &str, room: &str, now_ms: i64) -> Result<(), RedisError> {
        match self.deleted_room(org, room).await? {
            Some(d) if d.until > now_ms && d.undated => {
                self.put_room(org, room, DeletedRoom { undated: false, ..d }, now_ms).await
            }
            _ => Ok(()),
        }
    }

    /// Whether a join token for `room` of `org`, issued at `issued_secs` (unknown: `None`), is
    /// refused because the room was deleted.
    pub async fn room_refuses(
        &self,
        org: &str,
        room: &str,
        issued_secs: Option<u64>,
        now_ms: i64,
    ) -> Result<bool, RedisError> {
        Ok(self.deleted_room(org, room).await?.is_some_and(|d| d.refuses(issued_secs, now_ms)))
    }

    async fn put_room(&self, org: &str, room: &str, d: DeletedRoom, now_ms: i64) -> Result<(), RedisError> {
        match self.redis.get() {
            Some(r) => r.set_until(&room_key(org, room), &d.encode(), d.until - now_ms).await,
            None => {
                let mut rooms = self.rooms.lock().expect("not poisoned");
                if rooms.len() >= PRUNE_AT {
                    rooms.retain(|_, d| d.until > now_ms);
                }
                rooms.insert(room_key(org, room), d);
                Ok(())
            }
        }
    }

    async fn deleted_room(&self, org: &str, room: &str) -> Result<Option<DeletedRoom>, RedisError> {
        match self.redis.get() {
            Some(r) => Ok(r.get(&room_key(org, room)).await?.as_deref().and_then(DeletedRoom::decode)),
            None => Ok(self.rooms.lock().expect("not poisoned").get(&room_key(org, room)).copied()),
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

    /// Forgets the joins of a participant or connection that left.
    fn left(&self, gone: ParticipantId) {
        let mut joined = self.joined.lock().expect("not poisoned");
        joined.retain(|_, (_, participants)| {
            participants.retain(|p| *p != gone);
            !participants.is_empty()
        });
    }

    /// Follows the router's leaves until it stops, forgetting the joins of connections and
    /// participants that ended (a join is noted under the connection it made, which for
    /// LiveKit is the participant). Leaves missed to lag stay until their token expires and
    /// the size cap prunes them: judging by a snapshot could forget a join noted after it.
    pub fn follow_leaves(self: Arc<Self>, sfu: SfuHandle) {
        let mut events = sfu.subscribe();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SfuEvent::ParticipantLeft { participant: gone, .. })
                    | Ok(SfuEvent::ConnectionClosed { connection: gone, .. }) => self.left(gone),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "revocation list missed leaves; their joins go when their tokens expire"
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
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

    #[test]
    fn joins_are_forgotten_when_their_participants_leave() {
        let r = Revocations::default();
        r.joined("tok_1", 5_000, ParticipantId(7), 0);
        r.joined("tok_1", 5_000, ParticipantId(8), 0);
        r.joined("tok_2", 5_000, ParticipantId(9), 0);
        r.left(ParticipantId(7));
        r.left(ParticipantId(9));
        assert_eq!(r.joined.lock().unwrap().len(), 1);
        assert_eq!(r.take_joined("tok_1"), vec![ParticipantId(8)]);
    }

    /// Deleted at 10 s, until 100 s.
    async fn deleted(r: &Revocations) {
        r.revoke_room("org_a", "stage", 10_000, 100_000).await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_rooms_tokens_are_refused_until_they_expire() {
        let r = Revocations::default();
        deleted(&r).await;
        let refuses = |issued, now| {
            let r = &r;
            async move { r.room_refuses("org_a", "stage", issued, now).await.unwrap() }
        };
        assert!(refuses(Some(9), 20_000).await);
        assert!(refuses(Some(10), 20_000).await, "issued in the second of the deletion");
        assert!(!refuses(Some(11), 20_000).await);
        assert!(refuses(None, 20_000).await);
        assert!(!refuses(Some(9), 100_000).await, "lapsed");
        assert!(!r.room_refuses("org_b", "stage", Some(9), 20_000).await.unwrap(), "another org's room");
        assert!(!r.room_refuses("org_a", "other", Some(9), 20_000).await.unwrap());
        // Created again: undated tokens join; those from before the deletion still do not.
        r.room_created("org_a", "stage", 30_000).await.unwrap();
        assert!(!refuses(None, 30_000).await);
        assert!(refuses(Some(9), 30_000).await);
        // Deleted again: undated tokens are refused again.
        r.revoke_room("org_a", "stage", 40_000, 130_000).await.unwrap();
        assert!(refuses(None, 40_000).await);
        assert!(refuses(Some(39), 40_000).await);
    }

    #[test]
    fn deleted_rooms_read_back_from_their_encoding() {
        let d = DeletedRoom { at: 5, until: 9, undated: false };
        assert_eq!(DeletedRoom::decode(&d.encode()), Some(d));
        assert_eq!(DeletedRoom::decode("5 x 1"), None);
        assert_eq!(DeletedRoom::decode(""), None);
    }

    /// With `AURALINK_TEST_REDIS`: a room deleted through one node is refused by another, and
    /// created again through the other, accepted by the first.
    #[tokio::test]
    async fn deleted_rooms_are_shared_through_redis() {
        let Some(url) = std::env::var("AURALINK_TEST_REDIS").ok().filter(|s| !s.is_empty()) else {
            eprintln!("AURALINK_TEST_REDIS not set: skipped");
            return;
        };
        let (a, b) = (Revocations::default(), Revocations::default());
        a.use_redis(Redis::connect(&url).await.expect("AURALINK_TEST_REDIS is set but Redis is unreachable"));
        b.use_redis(Redis::connect(&url).await.unwrap());
        let org = crate::ids::record_id("org", 0);
        let now = crate::wall::unix_ms();
        a.revoke_room(&org, "stage", now, now + 60_000).await.unwrap();
        assert!(b.room_refuses(&org, "stage", None, now).await.unwrap());
        assert!(b.room_refuses(&org, "stage", Some((now / 1000) as u64), now).await.unwrap());
        b.room_created(&org, "stage", now).await.unwrap();
        assert!(!a.room_refuses(&org, "stage", None, now).await.unwrap());
        assert!(!a.room_refuses(&org, "stage", Some((now / 1000 + 1) as u64), now).await.unwrap());
    }
}
