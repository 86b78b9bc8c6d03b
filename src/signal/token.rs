//! LiveKit-format access tokens: HS256 JWTs whose `iss` is the API key, `sub` the identity
//! and `video` the grants. Parsing and verification are ours, so they are fuzzed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::sfu::Permissions;

/// Longest token accepted; LiveKit tokens are a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Room grants, in LiveKit's JSON layout. Absent publish/subscribe/data flags mean allowed,
/// as in LiveKit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(default, skip_serializing_if = "is_false")]
    pub room_create: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub room_list: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub room_admin: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub room_join: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub hidden: bool,
    /// May change its own name, metadata and attributes (absent means no, as in LiveKit).
    #[serde(default, skip_serializing_if = "is_false")]
    pub can_update_own_metadata: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The claims AuraLink reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// API key that signed the token.
    pub iss: String,
    /// Participant identity.
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// When it was issued, if it says (the signers of most tokens leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default)]
    pub video: VideoGrant,
    /// Webhooks: base64 SHA-256 of the body the token signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Claims {
    /// When the token was issued, as far as it says: `iat`, else a `nbf` that is not zero
    /// (tokens minted here set it to the minting time; LiveKit's server SDK writes `0`).
    pub fn issued_at(&self) -> Option<u64> {
        self.iat.or(self.nbf.filter(|t| *t > 0))
    }
}

impl VideoGrant {
    /// Grants for a participant, with LiveKit's defaults for absent flags.
    pub fn permissions(&self) -> Permissions {
        Permissions {
            publish: self.can_publish.unwrap_or(true),
            subscribe: self.can_subscribe.unwrap_or(true),
            publish_data: self.can_publish_data.unwrap_or(true),
            hidden: self.hidden,
        }
    }
}

/// Why a token was refused. The codes are stable; clients see them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not HS256")]
    Algorithm,
    #[error("token was signed by an unknown API key")]
    UnknownKey,
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token does not grant joining room {0:?}")]
    WrongRoom(String),
    #[error("token has no identity")]
    NoIdentity,
    #[error("token was revoked")]
    Revoked,
    #[error("the revocation list cannot be consulted; retry")]
    RevocationUnavailable,
    #[error("token was revoked: its room was deleted")]
    RoomDeleted,
}

impl TokenError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Algorithm => "token_algorithm",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongRoom(_) => "token_wrong_room",
            TokenError::NoIdentity => "token_no_identity",
            TokenError::Revoked => "token_revoked",
            TokenError::RevocationUnavailable => "revocation_unavailable",
            TokenError::RoomDeleted => "token_room_deleted",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Verifies tokens against the node's configured keys and the orgs' keys, shared by every
/// clone (an org created later is known to all signaling paths at once).
#[derive(Clone)]
pub struct TokenVerifier {
    /// API key → (secret, org that owns it).
    keys: Arc<RwLock<BTreeMap<String, Key>>>,
    pub revocations: Arc<super::revocation::Revocations>,
    /// Where keys this node has not seen are looked up.
    source: Arc<std::sync::OnceLock<Arc<dyn KeySource>>>,
    /// Keys the source did not know, and when it was asked: not asked again for a while, so
    /// tokens with made-up keys cannot make every join a database query.
    missed: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
    /// Lookups in the current second: (its start, how many).
    lookups: Arc<std::sync::Mutex<(std::time::Instant, u32)>>,
    /// How long an org's key is trusted before the source is asked whether it still exists
    /// (revoked through another node).
    recheck: Arc<std::sync::OnceLock<std::time::Duration>>,
}

/// A key this node accepts tokens from.
#[derive(Debug, Clone)]
struct Key {
    secret: String,
    org: String,
    /// When the source last vouched for it; `None` for the node's configured keys, which
    /// are not the source's to revoke.
    checked: Option<std::time::Instant>,
}

/// Keys created after this node started (an org created through another node): `(secret,
/// org)` for a live API key, `None` for one that does not exist (or was revoked), or why the
/// source could not answer.
pub trait KeySource: Send + Sync {
    fn find<'a>(
        &'a self,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<(String, String)>, String>>;
}

/// How long a key the source did not know stays unknown before it is asked again.
const MISS_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Misses remembered at most; beyond, the oldest go first.
const MAX_MISSES: usize = 4096;
/// Source lookups per second at most, whatever names tokens make up; beyond, a token with a
/// key this node has not seen is refused as unknown (its client's retry asks again).
const LOOKUPS_PER_SECOND: u32 = 20;

/// The org that owns rooms reached with the node's configured keys.
pub const NODE_ORG: &str = "org_node";

/// Leeway for clocks that disagree a little, as LiveKit allows.
pub const LEEWAY_SECS: u64 = 10;

/// Lifetime of the tokens a session is refreshed with (LiveKit's `refresh_token`): a client
/// that reconnects after its first token expired still gets in while its session is live.
pub const REFRESHED_TTL_SECS: u64 = 600;

impl TokenVerifier {
    /// A verifier for the node's configured keys, which belong to [`NODE_ORG`].
    pub fn new(keys: BTreeMap<String, String>) -> Self {
        let keys =
            keys.into_iter().map(|(k, secret)| (k, Key { secret, org: NODE_ORG.to_string(), checked: None })).collect();
        TokenVerifier {
            keys: Arc::new(RwLock::new(keys)),
            revocations: Default::default(),
            source: Default::default(),
            missed: Default::default(),
            lookups: Arc::new(std::sync::Mutex::new((std::time::Instant::now(), 0))),
            recheck: Default::default(),
        }
    }

    /// Looks keys this node does not know up in `source` from now on, and asks it again
    /// about an org's key once `recheck` has passed since it last did (set once).
    pub fn set_source(&self, source: Arc<dyn KeySource>, recheck: std::time::Duration) {
        let _ = self.source.set(source);
        let _ = self.recheck.set(recheck);
    }

    /// Makes sure the key that claims to have signed `token` is known here, if it exists at
    /// all: call before verifying. Nothing is trusted from the token but the key's name.
    pub async fn learn_key(&self, token: &str) {
        let Some(iss) = unverified_issuer(token) else { return };
        let Some(source) = self.source.get() else { return };
        let now = std::time::Instant::now();
        let recheck = self.recheck.get().copied().unwrap_or(std::time::Duration::MAX);
        let known = self.keys.read().expect("not poisoned").get(&iss).map(|k| k.checked);
        match known {
            Some(None) => return,
            Some(Some(at)) if now.duration_since(at) < recheck => return,
            Some(Some(_)) => {}
            None => {
                let missed = self.missed.lock().expect("not poisoned");
                if missed.get(&iss).is_some_and(|at| now.duration_since(*at) < MISS_TTL) {
                    return;
                }
            }
        }
        {
            let mut budget = self.lookups.lock().expect("not poisoned");
            if now.duration_since(budget.0) >= std::time::Duration::from_secs(1) {
                *budget = (now, 0);
            }
            if budget.1 >= LOOKUPS_PER_SECOND {
                return;
            }
            budget.1 += 1;
        }
        match source.find(&iss).await {
            Ok(Some((secret, org))) => self.add(iss, secret, org),
            // A source that cannot answer revokes nothing; the next token asks again.
            Err(e) => tracing::warn!(key = iss, error = e, "API key lookup failed"),
            Ok(None) => {
                self.remove(&iss);
                let mut missed = self.missed.lock().expect("not poisoned");
                if missed.len() >= MAX_MISSES {
                    missed.retain(|_, at| now.duration_since(*at) < MISS_TTL);
                    if missed.len() >= MAX_MISSES {
                        missed.clear();
                    }
                }
                missed.insert(iss, now);
            }
        }
    }

    /// Accepts tokens signed with an org's key from now on.
    pub fn add(&self, key: String, secret: String, org: String) {
        let checked = Some(std::time::Instant::now());
        self.keys.write().expect("not poisoned").insert(key, Key { secret, org, checked });
    }

    /// Stops accepting tokens signed with an org's `key` (revoked). The node's configured
    /// keys stay.
    pub fn remove(&self, key: &str) {
        let mut keys = self.keys.write().expect("not poisoned");
        if keys.get(key).is_some_and(|k| k.checked.is_some()) {
            keys.remove(key);
        }
    }

    /// Refuses a revoked token: revoked itself (by `jti`; tokens without one cannot be), or a
    /// join token for a room deleted after it was issued.
    pub async fn check_revoked(&self, claims: &Claims) -> Result<(), TokenError> {
        let now = crate::wall::unix_ms();
        let unavailable = |e: crate::db::redis::RedisError| {
            tracing::warn!(error = %e, "revocation list unavailable; join refused");
            TokenError::RevocationUnavailable
        };
        if let Some(jti) = &claims.jti
            && self.revocations.is_revoked(jti, now).await.map_err(unavailable)?
        {
            return Err(TokenError::Revoked);
        }
        let video = &claims.video;
        if video.room_join
            && !video.room.is_empty()
            && let Some(org) = self.org_of(&claims.iss)
            && self.revocations.room_refuses(&org, &video.room, claims.issued_at(), now).await.map_err(unavailable)?
        {
            return Err(TokenError::RoomDeleted);
        }
        Ok(())
    }

    /// Notes that `participant` joined with this token, so revoking it disconnects them.
    pub fn note_join(&self, claims: &Claims, participant: crate::ids::ParticipantId) {
        if let Some(jti) = &claims.jti {
            self.revocations.joined(jti, claims.exp as i64 * 1000, participant, crate::wall::unix_ms());
        }
    }

    /// `claims` again, valid for `ttl_secs` from `now` and signed with the same key; `None`
    /// if that key is gone. The jti stays, so revoking the first token revokes its refreshes.
    pub fn refresh(&self, claims: &Claims, now: u64, ttl_secs: u64) -> Option<String> {
        let keys = self.keys.read().expect("not poisoned");
        let key = keys.get(&claims.iss)?;
        Some(mint(&Claims { nbf: Some(now), exp: now.saturating_add(ttl_secs), ..claims.clone() }, &key.secret))
    }

    /// The org whose key signed tokens with this `iss`.
    pub fn org_of(&self, key: &str) -> Option<String> {
        self.keys.read().expect("not poisoned").get(key).map(|k| k.org.clone())
    }

    /// Checks signature and time window; `now` is seconds since the Unix epoch.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(h)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let claims: Claims = decode_json(p)?;
        let secret = self.keys.read().expect("not poisoned").get(&claims.iss).map(|k| k.secret.clone());
        let secret = secret.ok_or(TokenError::UnknownKey)?;
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let mut mac = mac(&secret);
        mac.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
        mac.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Verifies and checks the token lets its holder join `room`.
    pub fn verify_join(&self, token: &str, room: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify(token, now)?;
        if !claims.video.room_join || claims.video.room != room {
            return Err(TokenError::WrongRoom(room.to_string()));
        }
        if claims.sub.is_empty() {
            return Err(TokenError::NoIdentity);
        }
        Ok(claims)
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenError> {
    let bytes = B64.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// The `iss` a token claims, unverified.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    // Key names are short and plain (`API` and twelve letters or digits when generated here).
    let plain = |iss: &String| !iss.is_empty() && iss.len() <= 64 && iss.bytes().all(|b| b.is_ascii_alphanumeric());
    decode_json::<Issuer>(payload).ok().map(|i| i.iss).filter(plain)
}

/// Signs claims with `secret` (HS256).
pub fn mint(claims: &Claims, secret: &str) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = mac(secret);
    mac.update(signing_input.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Claims for a participant joining `room` as `identity`, valid for `ttl_secs` from `now`.
pub fn join_claims(api_key: &str, room: &str, identity: &str, now: u64, ttl_secs: u64) -> Claims {
    Claims {
        iss: api_key.to_string(),
        sub: identity.to_string(),
        nbf: Some(now),
        exp: now.saturating_add(ttl_secs),
        video: VideoGrant { room_join: true, room: room.to_string(), ..Default::default() },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(BTreeMap::from([("APIkey".to_string(), SECRET.to_string())]))
    }

    #[test]
    fn round_trip_and_grants() {
        let t = mint(&join_claims("APIkey", "room1", "alice", 1000, 60), SECRET);
        let c = verifier().verify_join(&t, "room1", 1010).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(
            c.video.permissions(),
            Permissions { publish: true, subscribe: true, publish_data: true, hidden: false }
        );
        assert_eq!(verifier().verify_join(&t, "room2", 1010), Err(TokenError::WrongRoom("room2".into())));
        assert_eq!(verifier().verify(&t, 2000), Err(TokenError::Expired));
        assert_eq!(verifier().verify(&t, 900), Err(TokenError::NotYetValid));
    }

    #[test]
    fn a_refreshed_token_outlives_the_first_with_the_same_grants_and_jti() {
        let first = Claims { jti: Some("tok_1".into()), ..join_claims("APIkey", "room1", "alice", 1000, 60) };
        let v = verifier();
        let refreshed = v.refresh(&first, 1050, REFRESHED_TTL_SECS).unwrap();
        let c = v.verify_join(&refreshed, "room1", 1500).unwrap();
        assert_eq!(c, Claims { nbf: Some(1050), exp: 1050 + REFRESHED_TTL_SECS, ..first.clone() });
        assert_eq!(v.refresh(&Claims { iss: "gone".into(), ..first }, 1050, 60), None);
    }

    /// A source holding at most one key, whose answer the test changes.
    struct OneKey(std::sync::Mutex<Result<Option<(String, String)>, String>>);

    impl KeySource for OneKey {
        fn find<'a>(
            &'a self,
            _: &'a str,
        ) -> futures_util::future::BoxFuture<'a, Result<Option<(String, String)>, String>> {
            let answer = self.0.lock().unwrap().clone();
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn org_keys_are_learned_rechecked_and_dropped_when_revoked() {
        let v = verifier();
        let source = Arc::new(OneKey(std::sync::Mutex::new(Ok(Some((SECRET.into(), "org_a".into()))))));
        // Recheck on every use, so the test needs no clock.
        v.set_source(source.clone(), std::time::Duration::ZERO);
        let t = mint(&join_claims("APIorg", "room1", "alice", 1000, 60), SECRET);
        assert_eq!(v.verify(&t, 1010), Err(TokenError::UnknownKey));
        v.learn_key(&t).await;
        assert!(v.verify(&t, 1010).is_ok());
        assert_eq!(v.org_of("APIorg").as_deref(), Some("org_a"));
        // A source that cannot answer revokes nothing.
        *source.0.lock().unwrap() = Err("database down".into());
        v.learn_key(&t).await;
        assert!(v.verify(&t, 1010).is_ok());
        // Revoked at the source: gone here at the next check; the node's own key stays.
        *source.0.lock().unwrap() = Ok(None);
        v.learn_key(&t).await;
        assert_eq!(v.verify(&t, 1010), Err(TokenError::UnknownKey));
        let own = mint(&join_claims("APIkey", "room1", "alice", 1000, 60), SECRET);
        v.learn_key(&own).await;
        v.remove("APIkey");
        assert!(v.verify(&own, 1010).is_ok());
    }

    #[test]
    fn tampering_is_detected() {
        let t = mint(&join_claims("APIkey", "room1", "alice", 1000, 60), SECRET);
        let forged = mint(&join_claims("APIkey", "room1", "mallory", 1000, 60), "another-secret-another-secret-xx");
        let (h, rest) = t.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let payload = forged.split('.').nth(1).unwrap();
        assert_eq!(verifier().verify(&format!("{h}.{payload}.{sig}"), 1000), Err(TokenError::Signature));
        assert_eq!(verifier().verify("a.b", 1000), Err(TokenError::Malformed));
        assert_eq!(verifier().verify("", 1000), Err(TokenError::Malformed));
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none"}"#), t.split('.').nth(1).unwrap());
        assert_eq!(verifier().verify(&none, 1000), Err(TokenError::Algorithm));
        let other = mint(&join_claims("other", "room1", "a", 1000, 60), SECRET);
        assert_eq!(verifier().verify(&other, 1000), Err(TokenError::UnknownKey));
    }

    #[test]
    fn reads_livekit_server_sdk_layout() {
        // Claims as livekit-server-sdk's AccessToken writes them.
        let json = r#"{"video":{"roomJoin":true,"room":"r","canPublish":false},"iss":"APIkey","exp":2000,"nbf":0,"sub":"bob","name":"Bob","metadata":"","jti":"bob"}"#;
        let c: Claims = serde_json::from_str(json).unwrap();
        let t = mint(&c, SECRET);
        let back = verifier().verify_join(&t, "r", 1000).unwrap();
        assert!(!back.video.permissions().publish);
        assert_eq!(back.name, "Bob");
    }
}
