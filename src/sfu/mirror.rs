//! What a consumer of the router's events believes the router holds (rooms, their
//! participants and published tracks), kept from the events it saw. The event broadcast is
//! bounded, so a consumer that falls behind loses events for good; it then catches up by
//! comparing its mirror with the router's state now, as the events that turn one into the
//! other. What happened in between and left no trace (a room that closed and started again, a
//! participant who came and went) stays unknown, and a leave seen only this way has no reason.

use std::collections::BTreeMap;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::ids::{Identity, ParticipantId, RoomName, TrackId};
use crate::sfu::core::{LeaveReason, ParticipantInfo, Sfu, SfuEvent, TrackInfo};
use crate::sfu::driver::SfuHandle;

/// The router's rooms at one moment, each with its participants and their tracks.
pub type Live = Vec<(RoomName, Vec<ParticipantInfo>)>;

/// The state to catch up with, read inside the router (`SfuHandle::call`).
pub fn live(sfu: &Sfu) -> Live {
    sfu.rooms().map(|room| (room.clone(), sfu.participants(room))).collect()
}

#[derive(Debug, Clone)]
struct Member {
    identity: Identity,
    tracks: BTreeMap<TrackId, TrackInfo>,
}

/// Rooms, participants and tracks as the events a consumer saw left them.
#[derive(Debug, Default)]
pub struct Mirror {
    rooms: BTreeMap<RoomName, BTreeMap<ParticipantId, Member>>,
}

impl Mirror {
    /// Follows one event (events it does not keep state for pass).
    pub fn handle_event(&mut self, e: &SfuEvent) {
        match e {
            SfuEvent::RoomStarted { room } => {
                self.rooms.entry(room.clone()).or_default();
            }
            SfuEvent::RoomClosed { room } => {
                self.rooms.remove(room);
            }
            SfuEvent::ParticipantJoined { room, participant, identity } => {
                let member = Member { identity: identity.clone(), tracks: BTreeMap::new() };
                self.rooms.entry(room.clone()).or_default().insert(*participant, member);
            }
            SfuEvent::ParticipantLeft { room, participant, .. } => {
                if let Some(r) = self.rooms.get_mut(room) {
                    r.remove(participant);
                }
            }
            SfuEvent::TrackPublished { room, track } => {
                if let Some(m) = self.rooms.get_mut(room).and_then(|r| r.get_mut(&track.owner)) {
                    m.tracks.insert(track.id, track.clone());
                }
            }
            SfuEvent::TrackUnpublished { room, track } => {
                if let Some(m) = self.rooms.get_mut(room).and_then(|r| r.get_mut(&track.owner)) {
                    m.tracks.remove(&track.id);
                }
            }
            _ => {}
        }
    }

    /// The events that bring this mirror to `live`, in an order a consumer can apply: what
    /// went is taken down inside out (tracks, then participants, then rooms), what came is
    /// put up outside in. The mirror then equals `live`.
    pub fn catch_up(&mut self, live: Live) -> Vec<SfuEvent> {
        let live: BTreeMap<RoomName, BTreeMap<ParticipantId, Member>> = live
            .into_iter()
            .map(|(room, participants)| {
                let members = participants
                    .into_iter()
                    .map(|p| {
                        let tracks = p.tracks.into_iter().map(|t| (t.id, t)).collect();
                        (p.id, Member { identity: p.identity, tracks })
                    })
                    .collect();
                (room, members)
            })
            .collect();
        let empty = BTreeMap::new();
        let mut out = Vec::new();
        for (room, seen) in &self.rooms {
            let now = live.get(room).unwrap_or(&empty);
            for (id, member) in seen {
                let still = now.get(id);
                for (track_id, track) in &member.tracks {
                    if !still.is_some_and(|m| m.tracks.contains_key(track_id)) {
                        out.push(SfuEvent::TrackUnpublished { room: room.clone(), track: track.clone() });
                    }
                }
                if still.is_none() {
                    out.push(SfuEvent::ParticipantLeft {
                        room: room.clone(),
                        participant: *id,
                        identity: member.identity.clone(),
                        reason: LeaveReason::Unknown,
                    });
                }
            }
            if !live.contains_key(room) {
                out.push(SfuEvent::RoomClosed { room: room.clone() });
            }
        }
        for (room, now) in &live {
            let seen = self.rooms.get(room);
            if seen.is_none() {
                out.push(SfuEvent::RoomStarted { room: room.clone() });
            }
            for (id, member) in now {
                let before = seen.and_then(|r| r.get(id));
                if before.is_none() {
                    out.push(SfuEvent::ParticipantJoined {
                        room: room.clone(),
                        participant: *id,
                        identity: member.identity.clone(),
                    });
                }
                for (track_id, track) in &member.tracks {
                    if !before.is_some_and(|m| m.tracks.contains_key(track_id)) {
                        out.push(SfuEvent::TrackPublished { room: room.clone(), track: track.clone() });
                    }
                }
            }
        }
        self.rooms = live;
        out
    }
}

/// A consumer's view of the router's events that loses none: each event as it comes, or,
/// after falling behind, the events that catch its mirror up with the router.
pub struct Follower {
    sfu: SfuHandle,
    events: broadcast::Receiver<SfuEvent>,
    mirror: Mirror,
    /// Names the consumer in logs.
    what: &'static str,
}

impl Follower {
    pub fn new(sfu: SfuHandle, what: &'static str) -> Follower {
        let events = sfu.subscribe();
        Follower { sfu, events, mirror: Mirror::default(), what }
    }

    /// The next events to act on; `None` once the router has stopped.
    pub async fn next(&mut self) -> Option<Vec<SfuEvent>> {
        match self.events.recv().await {
            Ok(e) => {
                self.mirror.handle_event(&e);
                Some(vec![e])
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, consumer = self.what, "fell behind the router; catching up");
                let (now, events) = self.sfu.subscribe_with(live).await.ok()?;
                self.events = events;
                Some(self.mirror.catch_up(now))
            }
            Err(RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use str0m::media::MediaKind;

    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    fn track(id: u64, owner: u64) -> TrackInfo {
        TrackInfo {
            id: TrackId(id),
            owner: ParticipantId(owner),
            kind: MediaKind::Audio,
            muted: false,
            layers: Vec::new(),
            mime: "audio/opus".to_string(),
            server: false,
        }
    }

    fn participant(id: u64, tracks: Vec<TrackInfo>) -> ParticipantInfo {
        ParticipantInfo {
            id: ParticipantId(id),
            identity: Identity::new(format!("p{id}")).unwrap(),
            tracks,
            server: false,
            hidden: false,
        }
    }

    fn names(events: &[SfuEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SfuEvent::RoomStarted { room } => format!("started {room}"),
                SfuEvent::RoomClosed { room } => format!("closed {room}"),
                SfuEvent::ParticipantJoined { room, participant, .. } => format!("joined {room} {participant}"),
                SfuEvent::ParticipantLeft { room, participant, reason, .. } => {
                    format!("left {room} {participant} {reason:?}")
                }
                SfuEvent::TrackPublished { room, track } => format!("published {room} {}", track.id),
                SfuEvent::TrackUnpublished { room, track } => format!("unpublished {room} {}", track.id),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_consumer_that_fell_behind_gets_the_difference_as_events() {
        let mut mirror = Mirror::default();
        for e in [
            SfuEvent::RoomStarted { room: room("a") },
            SfuEvent::ParticipantJoined {
                room: room("a"),
                participant: ParticipantId(1),
                identity: Identity::new("p1").unwrap(),
            },
            SfuEvent::TrackPublished { room: room("a"), track: track(5, 1) },
            SfuEvent::TrackPublished { room: room("a"), track: track(6, 1) },
            SfuEvent::RoomStarted { room: room("gone") },
            SfuEvent::ParticipantJoined {
                room: room("gone"),
                participant: ParticipantId(9),
                identity: Identity::new("p9").unwrap(),
            },
        ] {
            mirror.handle_event(&e);
        }
        // Meanwhile: track 6 went, participant 2 came to a with a track, "gone" closed, "b"
        // started.
        let live = vec![
            (room("a"), vec![participant(1, vec![track(5, 1)]), participant(2, vec![track(7, 2)])]),
            (room("b"), vec![participant(3, vec![])]),
        ];
        let events = mirror.catch_up(live.clone());
        assert_eq!(
            names(&events),
            [
                "unpublished a TR_6",
                "left gone PA_9 Unknown",
                "closed gone",
                "joined a PA_2",
                "published a TR_7",
                "started b",
                "joined b PA_3"
            ]
        );
        // Caught up: the same state again gives nothing, and leaving everything takes it all down.
        assert!(mirror.catch_up(live).is_empty());
        let events = mirror.catch_up(Vec::new());
        assert_eq!(
            names(&events),
            [
                "unpublished a TR_5",
                "left a PA_1 Unknown",
                "unpublished a TR_7",
                "left a PA_2 Unknown",
                "closed a",
                "left b PA_3 Unknown",
                "closed b"
            ]
        );
        assert!(mirror.catch_up(Vec::new()).is_empty());
    }
}
