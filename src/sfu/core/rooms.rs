//! Rooms and who is in them: leaving, removal, room closing, permissions and the views the
//! control API reads.

use super::*;

impl Sfu {
    /// Ends a session.
    pub fn leave(&mut self, now: Instant, id: ParticipantId, reason: LeaveReason) -> Result<(), SfuError> {
        if !self.peers.contains_key(&id) {
            return Err(SfuError::NoParticipant);
        }
        self.remove_peer(now, id, reason);
        self.drive(now);
        Ok(())
    }

    /// Ends every connection of a participant.
    pub fn remove_participant(&mut self, now: Instant, participant: ParticipantId, reason: LeaveReason) {
        let ids: Vec<ParticipantId> =
            self.peers.values().filter(|p| p.participant == participant).map(|p| p.id).collect();
        for id in ids {
            self.remove_peer(now, id, reason);
        }
        self.remove_local(participant, reason);
        self.drive(now);
    }

    /// Removes everyone in `room` (it was deleted); returns how many participants left.
    pub fn close_room(&mut self, now: Instant, room: &RoomName) -> usize {
        let everyone = self.participants(room);
        for p in &everyone {
            self.remove_participant(now, p.id, LeaveReason::RoomDeleted);
        }
        // A deleted room does not wait out its empty timeout: it is gone now, as in LiveKit.
        self.close(room.clone(), LeaveReason::RoomDeleted);
        self.drive(now);
        everyone.len()
    }

    /// Ends a room: the server's own participants there leave, then the room goes.
    pub(super) fn close(&mut self, name: RoomName, reason: LeaveReason) {
        let locals: Vec<ParticipantId> =
            self.locals.iter().filter(|(_, l)| l.room == name).map(|(id, _)| *id).collect();
        for id in locals {
            self.remove_local(id, reason);
        }
        if self.rooms.remove(&name).is_some() {
            self.events.push_back(SfuEvent::RoomClosed { room: name });
        }
    }

    /// How long a room with no participants stays open unless its settings say otherwise.
    pub fn empty_room_timeout(&self) -> Duration {
        self.config.empty_room_timeout
    }

    /// Participants in `room` with this identity.
    pub fn find_identity(&self, room: &RoomName, identity: &Identity) -> Vec<ParticipantId> {
        let mut out: Vec<ParticipantId> =
            self.peers.values().filter(|p| &p.room == room && &p.identity == identity).map(|p| p.participant).collect();
        out.dedup();
        out
    }

    /// Changes what a participant (every connection of it) may do. Without `subscribe` it
    /// loses its subscriptions; without `publish`, its tracks are unpublished (its client
    /// keeps sending, to nobody); granted `subscribe` again, it gets what its filter wants.
    pub fn set_permissions(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        perms: Permissions,
    ) -> Result<(), SfuError> {
        let sessions: Vec<ParticipantId> =
            self.peers.values().filter(|p| p.participant == participant).map(|p| p.id).collect();
        let room = self.peers.get(sessions.first().ok_or(SfuError::NoParticipant)?).map(|p| p.room.clone());
        for &id in &sessions {
            let Some(p) = self.peers.get_mut(&id) else { continue };
            p.permissions = perms;
            if !perms.subscribe {
                p.to_add.clear();
                let bound: Vec<Mid> = p.slots.iter().filter(|s| s.track.is_some()).map(|s| s.mid).collect();
                for mid in bound {
                    self.unbind(id, mid);
                }
            }
            if !perms.publish {
                let published = self.peers.get_mut(&id).map(|p| std::mem::take(&mut p.published)).unwrap_or_default();
                for track in published {
                    self.unpublish(track);
                }
            }
            self.mark(id);
        }
        if let Some(room) = room {
            self.fill_slots(now, &room);
        }
        self.drive(now);
        Ok(())
    }

    /// What a participant may do now.
    pub fn permissions(&self, participant: ParticipantId) -> Option<Permissions> {
        self.peers.values().find(|p| p.participant == participant).map(|p| p.permissions)
    }

    /// Sessions in a room with their tracks.
    pub fn participants(&self, room: &RoomName) -> Vec<ParticipantInfo> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut out: Vec<ParticipantInfo> = Vec::new();
        for p in r.participants.iter().filter_map(|id| self.peers.get(id)) {
            let tracks = p.published.iter().filter_map(|t| self.tracks.get(t)).map(|t| t.info.clone());
            match out.iter_mut().find(|x| x.id == p.participant) {
                Some(x) => x.tracks.extend(tracks),
                None => out.push(ParticipantInfo {
                    id: p.participant,
                    identity: p.identity.clone(),
                    tracks: tracks.collect(),
                    server: false,
                    hidden: p.permissions.hidden,
                }),
            }
        }
        out.extend(self.locals.iter().filter(|(_, l)| &l.room == room).map(|(&id, l)| ParticipantInfo {
            id,
            identity: l.identity.clone(),
            tracks: l.published.iter().filter_map(|t| self.tracks.get(t)).map(|t| t.info.clone()).collect(),
            server: true,
            hidden: false,
        }));
        out
    }

    /// Open rooms.
    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.keys()
    }

    /// The track currently forwarded in each sending slot of a session, by mid.
    pub fn subscriptions(&self, id: ParticipantId) -> Vec<(Mid, Option<TrackId>, Option<Layer>)> {
        let Some(p) = self.peers.get(&id) else {
            return Vec::new();
        };
        p.slots.iter().map(|s| (s.mid, s.track, s.fwd.current().cloned())).collect()
    }

    pub fn stats(&self) -> &SfuStats {
        &self.stats
    }

    /// Open rooms, sessions and published tracks right now.
    pub fn gauges(&self) -> (usize, usize, usize) {
        (self.rooms.len(), self.peers.len(), self.tracks.len())
    }

    pub(super) fn remove_peer(&mut self, now: Instant, id: ParticipantId, reason: LeaveReason) {
        let Some(mut peer) = self.peers.remove(&id) else { return };
        let _ = guard("disconnect", || peer.rtc.disconnect());
        self.by_source.retain(|_, p| *p != id);
        // Its subscriptions.
        for slot in &peer.slots {
            if let Some(t) = slot.track.and_then(|t| self.tracks.get_mut(&t)) {
                t.subscribers.retain(|s| s.0 != id);
                self.dynacast_dirty.insert(t.info.id);
            }
        }
        for &track in &peer.published {
            self.unpublish(track);
        }
        // Channels others had for its messages.
        for other in self.peers.values_mut() {
            let keys: Vec<_> = other.channels_out.keys().filter(|k| k.0 == Some(id)).cloned().collect();
            for k in keys {
                if let Some(c) = other.channels_out.remove(&k)
                    && guard("close channel", || other.rtc.direct_api().close_data_channel(c.id)).is_err()
                {
                    other.broken = true;
                }
            }
        }
        let last_connection = !self.peers.values().any(|p| p.participant == peer.participant);
        self.forget_grants_of(id, last_connection.then_some(peer.participant));
        if let Some(r) = self.rooms.get_mut(&peer.room) {
            r.participants.retain(|p| *p != id);
            if last_connection {
                r.speakers.remove(peer.participant);
            }
            if r.participants.is_empty() {
                r.empty_since = Some(now);
            }
        }
        let room = peer.room.clone();
        self.events.push_back(SfuEvent::ConnectionClosed { room: room.clone(), connection: id, reason });
        if last_connection {
            self.events.push_back(SfuEvent::ParticipantLeft {
                room: room.clone(),
                participant: peer.participant,
                identity: peer.identity,
                reason,
            });
        }
        let others: Vec<ParticipantId> = self.peers.keys().copied().collect();
        for o in others {
            self.mark(o);
        }
        self.fill_slots(now, &room);
    }
}
