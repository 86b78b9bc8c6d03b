//! The WHIP/WHEP resources a node holds, with the limits that keep a client from making it
//! hold more: concurrent sessions per (room, identity) and per token, and remote ICE
//! candidates per session. Plain data under one lock; the routes and the router-event
//! follower in `whip.rs` are its only users.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::ids::{Identity, ParticipantId, RoomName};

/// How much one client may make the node hold through WHIP/WHEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhipLimits {
    /// Concurrent sessions of one identity in one room (a publisher and its players).
    pub sessions_per_identity: usize,
    /// Concurrent sessions created with one token (its `jti`, or the token itself without one).
    pub sessions_per_token: usize,
    /// Remote ICE candidates per session: those in the offer and every PATCH together.
    pub candidates_per_session: usize,
}

impl Default for WhipLimits {
    fn default() -> Self {
        WhipLimits { sessions_per_identity: 8, sessions_per_token: 8, candidates_per_session: 64 }
    }
}

/// A limit was reached; the codes are stable, clients see them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("this identity already has {0} WHIP/WHEP sessions in the room; end one first")]
    SessionsPerIdentity(usize),
    #[error("this token already has {0} WHIP/WHEP sessions; end one first")]
    SessionsPerToken(usize),
    #[error("a session may have at most {0} remote ICE candidates")]
    Candidates(usize),
}

impl LimitError {
    pub fn code(&self) -> &'static str {
        match self {
            LimitError::SessionsPerIdentity(_) | LimitError::SessionsPerToken(_) => "too_many_sessions",
            LimitError::Candidates(_) => "too_many_candidates",
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        let status = match e {
            LimitError::SessionsPerIdentity(_) | LimitError::SessionsPerToken(_) => StatusCode::TOO_MANY_REQUESTS,
            LimitError::Candidates(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Whom a session counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub room: RoomName,
    pub identity: Identity,
    /// The token's `jti`, or a digest of the token when it has none.
    pub token: String,
}

/// A live WHIP/WHEP resource.
#[derive(Debug, Clone)]
pub struct Session {
    /// The router connection this resource is (what DELETE ends and PATCH feeds).
    pub connection: ParticipantId,
    /// The participant the connection belongs to: several resources of one identity share
    /// it, and the router's `ParticipantLeft` names it.
    pub participant: ParticipantId,
    pub owner: Owner,
    /// SHA-256 of the Bearer token that created the session; PATCH and DELETE must present it.
    pub token_digest: [u8; 32],
    /// The client's last full offer: an ICE restart by PATCH is applied as this offer with
    /// new credentials, so the router sees one negotiation path.
    pub offer: String,
    /// Remote candidates accepted so far, the offer's included.
    pub candidates: usize,
}

/// Sessions by resource id, and how many each owner holds (reserved ones included).
#[derive(Debug, Default)]
pub struct SessionTable {
    limits: WhipLimits,
    sessions: HashMap<String, Session>,
    by_identity: HashMap<(RoomName, Identity), usize>,
    by_token: HashMap<String, usize>,
}

impl SessionTable {
    pub fn new(limits: WhipLimits) -> Self {
        SessionTable { limits, ..SessionTable::default() }
    }

    pub fn limits(&self) -> WhipLimits {
        self.limits
    }

    /// Counts a session that is being created against its owner, or refuses it. Undo with
    /// [`SessionTable::unreserve`] if it is not [`SessionTable::insert`]ed after all.
    pub fn reserve(&mut self, owner: &Owner) -> Result<(), LimitError> {
        let key = (owner.room.clone(), owner.identity.clone());
        let by_identity = self.by_identity.get(&key).copied().unwrap_or(0);
        if by_identity >= self.limits.sessions_per_identity {
            return Err(LimitError::SessionsPerIdentity(self.limits.sessions_per_identity));
        }
        let by_token = self.by_token.get(&owner.token).copied().unwrap_or(0);
        if by_token >= self.limits.sessions_per_token {
            return Err(LimitError::SessionsPerToken(self.limits.sessions_per_token));
        }
        self.by_identity.insert(key, by_identity + 1);
        self.by_token.insert(owner.token.clone(), by_token + 1);
        Ok(())
    }

    /// Gives back a reservation that did not become a session.
    pub fn unreserve(&mut self, owner: &Owner) {
        decrement(&mut self.by_identity, (owner.room.clone(), owner.identity.clone()));
        decrement(&mut self.by_token, owner.token.clone());
    }

    /// Adds a session whose owner was reserved.
    pub fn insert(&mut self, resource: String, session: Session) {
        self.sessions.insert(resource, session);
    }

    pub fn get(&self, resource: &str) -> Option<&Session> {
        self.sessions.get(resource)
    }

    /// Records `n` more remote candidates for a session, or refuses them all.
    pub fn add_candidates(&mut self, resource: &str, n: usize) -> Result<(), LimitError> {
        let max = self.limits.candidates_per_session;
        let Some(s) = self.sessions.get_mut(resource) else { return Ok(()) };
        if s.candidates + n > max {
            return Err(LimitError::Candidates(max));
        }
        s.candidates += n;
        Ok(())
    }

    /// Replaces the offer an ICE restart is built from.
    pub fn set_offer(&mut self, resource: &str, offer: String) {
        if let Some(s) = self.sessions.get_mut(resource) {
            s.offer = offer;
        }
    }

    pub fn remove(&mut self, resource: &str) -> Option<Session> {
        let s = self.sessions.remove(resource)?;
        self.unreserve(&s.owner);
        Some(s)
    }

    /// Removes every session of these participants.
    pub fn remove_participants(&mut self, gone: &HashSet<ParticipantId>) {
        self.remove_matching(|s| gone.contains(&s.participant));
    }

    /// Removes the session of one connection the router closed (a participant may have more).
    pub fn remove_connection(&mut self, connection: ParticipantId) {
        self.remove_matching(|s| s.connection == connection);
    }

    fn remove_matching(&mut self, f: impl Fn(&Session) -> bool) {
        let resources: Vec<String> = self.sessions.iter().filter(|(_, s)| f(s)).map(|(r, _)| r.clone()).collect();
        for r in resources {
            self.remove(&r);
        }
    }

    /// Each participant with a session, with its room.
    pub fn participants(&self) -> Vec<(RoomName, ParticipantId)> {
        let mut out: Vec<_> = self.sessions.values().map(|s| (s.owner.room.clone(), s.participant)).collect();
        out.sort();
        out.dedup();
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions.len()
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(identity: &str, token: &str) -> Owner {
        Owner {
            room: RoomName::in_org("org", &RoomName::new("r").unwrap()),
            identity: Identity::new(identity).unwrap(),
            token: token.into(),
        }
    }

    fn session(owner: Owner, connection: u64, participant: u64) -> Session {
        Session {
            connection: ParticipantId(connection),
            participant: ParticipantId(participant),
            owner,
            token_digest: [0; 32],
            offer: String::new(),
            candidates: 0,
        }
    }

    #[test]
    fn sessions_are_capped_per_identity_and_per_token_and_released() {
        let limits = WhipLimits { sessions_per_identity: 2, sessions_per_token: 3, candidates_per_session: 4 };
        let mut t = SessionTable::new(limits);
        let (a1, a2, b) = (owner("alice", "j1"), owner("alice", "j2"), owner("bob", "j1"));
        t.reserve(&a1).unwrap();
        t.insert("x".into(), session(a1.clone(), 1, 1));
        t.reserve(&a2).unwrap();
        assert_eq!(t.reserve(&a1), Err(LimitError::SessionsPerIdentity(2)), "a reservation counts");
        t.unreserve(&a2);
        t.reserve(&a1).unwrap();
        t.insert("y".into(), session(a1.clone(), 2, 1));
        // bob's own count is free, but j1 already made two of alice's.
        t.reserve(&b).unwrap();
        assert_eq!(t.reserve(&b), Err(LimitError::SessionsPerToken(3)));
        t.unreserve(&b);
        assert!(t.remove("x").is_some());
        assert!(t.remove("x").is_none(), "a removed session is not released twice");
        t.reserve(&a1).unwrap();
        t.unreserve(&a1);
        t.remove_participants(&HashSet::from([ParticipantId(1)]));
        assert_eq!(t.len(), 0);
        assert!(t.by_identity.is_empty() && t.by_token.is_empty(), "every count is released");
    }

    #[test]
    fn candidates_are_capped_per_session() {
        let limits = WhipLimits { candidates_per_session: 4, ..WhipLimits::default() };
        let mut t = SessionTable::new(limits);
        let a = owner("alice", "j");
        t.reserve(&a).unwrap();
        t.insert("x".into(), Session { candidates: 1, ..session(a, 1, 1) });
        t.add_candidates("x", 2).unwrap();
        assert_eq!(t.add_candidates("x", 2), Err(LimitError::Candidates(4)), "refused whole");
        t.add_candidates("x", 1).unwrap();
        assert_eq!(t.add_candidates("x", 1), Err(LimitError::Candidates(4)));
        assert_eq!(t.get("x").unwrap().candidates, 4);
    }
}
