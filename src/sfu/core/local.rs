//! Participants the server plays itself: the AIC loopback publishes a track's audio, after
//! the codec, back into its room so that people can hear what the codec does. They have no
//! connection; their tracks' frames come from `write_local` and are forwarded as a client
//! publisher's are.

use std::sync::Arc;
use std::time::Instant;

use str0m::media::{Frequency, MediaKind, MediaTime, Mid};

use super::{LeaveReason, Outgoing, Sfu, SfuError, SfuEvent, Track, TrackInfo};
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};

pub(super) struct Local {
    pub room: RoomName,
    pub identity: Identity,
    pub published: Vec<TrackId>,
}

impl Sfu {
    /// Adds a participant the server plays to an open room. It does not keep the room open:
    /// it leaves with the room.
    pub fn join_local(&mut self, room: &RoomName, identity: Identity) -> Result<ParticipantId, SfuError> {
        if !self.rooms.contains_key(room) {
            return Err(SfuError::NoRoom);
        }
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        self.locals.insert(id, Local { room: room.clone(), identity: identity.clone(), published: Vec::new() });
        self.events.push_back(SfuEvent::ParticipantJoined { room: room.clone(), participant: id, identity });
        Ok(id)
    }

    /// Publishes an Opus audio track (48 kHz clock) of a participant the server plays; the
    /// room's sessions get it as they would a client's.
    pub fn publish_local_audio(&mut self, now: Instant, participant: ParticipantId) -> Result<TrackId, SfuError> {
        let local = self.locals.get_mut(&participant).ok_or(SfuError::NoParticipant)?;
        let track = TrackId(self.next_id);
        self.next_id += 1;
        local.published.push(track);
        let room = local.room.clone();
        let info = TrackInfo {
            id: track,
            owner: participant,
            kind: MediaKind::Audio,
            muted: false,
            layers: Vec::new(),
            mime: "audio/opus".to_string(),
            server: true,
        };
        // Never looked up by mid: no connection receives it.
        let t =
            Track::new(info, room.clone(), participant, local.identity.clone(), Mid::from("local"), Vec::new(), now);
        self.add_track(t);
        self.fill_slots(now, &room);
        self.drive(now);
        Ok(track)
    }

    /// Sends the next Opus packet of a track the server publishes to its subscribers.
    /// `rtp_time` counts 48 kHz samples.
    pub fn write_local(
        &mut self,
        now: Instant,
        track: TrackId,
        rtp_time: u64,
        data: Arc<[u8]>,
    ) -> Result<(), SfuError> {
        let t = self.tracks.get(&track).ok_or(SfuError::NoTrack)?;
        if !self.locals.contains_key(&t.session) {
            return Err(SfuError::NoTrack);
        }
        let frame = Outgoing {
            rid: None,
            keyframe: true,
            time: MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ),
            network_time: now,
            params: None,
            audio_level: None,
            data,
        };
        self.forward(now, track, &frame);
        self.drive(now);
        Ok(())
    }

    /// Takes a participant the server plays out of its room, with its tracks.
    pub(super) fn remove_local(&mut self, participant: ParticipantId, reason: LeaveReason) {
        let Some(local) = self.locals.remove(&participant) else { return };
        for track in local.published {
            self.unpublish(track);
        }
        self.events.push_back(SfuEvent::ParticipantLeft {
            room: local.room,
            participant,
            identity: local.identity,
            reason,
        });
    }
}
