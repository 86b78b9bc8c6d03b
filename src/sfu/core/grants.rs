//! Who may subscribe to a participant's tracks (LiveKit's subscription permissions): everyone
//! in the room unless the publisher narrows it to some identities, for all or some of its
//! tracks. A session that may no longer have a track loses it; a session is told whenever it
//! may not have a track it would get (automatically or because it asked), and once it may, is
//! told and gets it (`SfuEvent::SubscriptionAllowed`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{Sfu, SfuError, SfuEvent};
use crate::ids::{Identity, ParticipantId, TrackId};

/// Who may subscribe to one participant's tracks, when not everyone may.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionGrant {
    /// Identities allowed, each to all the publisher's tracks (`None`) or to these. Looked up
    /// for every (subscriber, track) the room considers, so hashed.
    pub allowed: HashMap<Identity, Option<HashSet<TrackId>>>,
}

/// Identities one grant may name, and tracks per identity: a grant is the client's to
/// write, and the router holds it for as long as the publisher is in.
pub const MAX_GRANT_ENTRIES: usize = 256;

impl Sfu {
    /// Sets who may subscribe to `publisher`'s tracks (`None`: everyone in the room, the
    /// default). Sessions holding a track they may no longer have lose it; those refused
    /// before that may now are told, and get it.
    pub fn set_subscription_grant(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        grant: Option<SubscriptionGrant>,
    ) -> Result<(), SfuError> {
        if grant.as_ref().is_some_and(|g| {
            g.allowed.len() > MAX_GRANT_ENTRIES
                || g.allowed.iter().any(|(_, t)| t.as_ref().is_some_and(|t| t.len() > MAX_GRANT_ENTRIES))
        }) {
            return Err(SfuError::LimitExceeded("subscription permissions"));
        }
        if self.grants.get(&publisher) == grant.as_ref() {
            return Ok(());
        }
        let room = self
            .peers
            .values()
            .find(|p| p.participant == publisher)
            .map(|p| p.room.clone())
            .ok_or(SfuError::NoParticipant)?;
        match grant {
            Some(g) => self.grants.insert(publisher, g),
            None => self.grants.remove(&publisher),
        };
        let owned: Vec<TrackId> =
            self.tracks.values().filter(|t| t.info.owner == publisher).map(|t| t.info.id).collect();
        let holding: Vec<(ParticipantId, TrackId)> = self
            .peers
            .values()
            .filter(|p| p.room == room)
            .flat_map(|p| owned.iter().filter(|t| p.has(**t)).map(move |t| (p.id, *t)))
            .collect();
        for (id, track) in holding {
            if !self.may_subscribe(id, track) {
                self.drop_subscription(id, track);
                self.deny(id, track);
            }
        }
        let lifted: Vec<(ParticipantId, TrackId)> =
            self.denied.iter().copied().filter(|&(id, track)| self.may_subscribe(id, track)).collect();
        for (id, track) in lifted {
            self.denied.remove(&(id, track));
            self.tell_allowed(id, track, true);
            // Refused means it would have had the track, whether by its filter or by asking.
            let kind = self.tracks.get(&track).map(|t| t.info.kind);
            if let Some(kind) = kind.filter(|_| self.peers.get(&id).is_some_and(|p| !p.has(track))) {
                self.place(now, id, track, kind);
            }
        }
        self.fill_slots(now, &room);
        self.drive(now);
        Ok(())
    }

    /// Whether session `id` may have `track` by its publisher's grant.
    pub(super) fn may_subscribe(&self, id: ParticipantId, track: TrackId) -> bool {
        let Some(t) = self.tracks.get(&track) else { return false };
        let Some(grant) = self.grants.get(&t.info.owner) else { return true };
        let Some(p) = self.peers.get(&id) else { return false };
        grant.allowed.get(&p.identity).is_some_and(|tracks| tracks.as_ref().is_none_or(|t| t.contains(&track)))
    }

    /// Notes that session `id` may not have `track`, telling it the first time.
    pub(super) fn deny(&mut self, id: ParticipantId, track: TrackId) {
        if self.denied.insert((id, track)) {
            self.tell_allowed(id, track, false);
        }
    }

    fn tell_allowed(&mut self, id: ParticipantId, track: TrackId, allowed: bool) {
        let (Some(p), Some(t)) = (self.peers.get(&id), self.tracks.get(&track)) else { return };
        self.events.push_back(SfuEvent::SubscriptionAllowed {
            participant: p.participant,
            owner: t.info.owner,
            track,
            allowed,
        });
    }

    /// The tracks `participant`'s sessions were told they may not have, as the events that
    /// told them.
    pub(super) fn denials_told(&self, participant: ParticipantId) -> Vec<SfuEvent> {
        self.denied
            .iter()
            .filter(|(s, _)| self.peers.get(s).is_some_and(|p| p.participant == participant))
            .filter_map(|&(_, track)| {
                let owner = self.tracks.get(&track)?.info.owner;
                Some(SfuEvent::SubscriptionAllowed { participant, owner, track, allowed: false })
            })
            .collect()
    }

    /// Forgets what the grants held for a session that ended.
    pub(super) fn forget_grants_of(&mut self, id: ParticipantId, participant_left: Option<ParticipantId>) {
        self.denied.retain(|(s, _)| *s != id);
        if let Some(p) = participant_left {
            self.grants.remove(&p);
        }
    }
}
