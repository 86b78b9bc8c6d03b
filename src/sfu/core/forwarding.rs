//! Media from publishers to subscribers: tracks on receiving m-lines, simulcast layer
//! choice, keyframe requests, mutes and what each subscriber asked for.

use super::*;

impl Sfu {
    /// Mutes or unmutes a published track for everyone.
    pub fn set_track_muted(&mut self, now: Instant, track: TrackId, muted: bool) -> Result<(), SfuError> {
        let t = self.tracks.get_mut(&track).ok_or(SfuError::NoTrack)?;
        if t.info.muted == muted {
            return Ok(());
        }
        t.info.muted = muted;
        let room = t.room.clone();
        self.events.push_back(SfuEvent::TrackMuted { room, track, muted });
        if !muted {
            self.resume_subscribers(now, track);
        }
        self.drive(now);
        Ok(())
    }

    /// Caps the quality a session receives for the track in slot `mid` (explicit request).
    pub fn set_max_quality(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track: TrackId,
        q: Quality,
    ) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        peer.slot_for(track).ok_or(SfuError::NoTrack)?.max_quality = q;
        self.touch_dynacast(track);
        self.reselect(now, id);
        self.drive(now);
        Ok(())
    }

    /// Subscribes a session to a track (or stops), independent of its filter.
    pub fn set_subscribed(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track: TrackId,
        on: bool,
    ) -> Result<(), SfuError> {
        let t = self.tracks.get(&track).ok_or(SfuError::NoTrack)?;
        let kind = t.info.kind;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        // Track ids are node-wide: one from another room (another org's) is not there to take,
        // and neither is anything for a session without the subscribe permission.
        if t.room != peer.room || (on && !peer.permissions.subscribe) {
            return Err(SfuError::NoTrack);
        }
        if on {
            if peer.has(track) {
                return Ok(());
            }
            if !self.place(now, id, track, kind) {
                return Err(SfuError::NoTrack);
            }
        } else {
            // Nor is it to be given the track should its publisher allow it later.
            self.denied.remove(&(id, track));
            self.drop_subscription(id, track);
        }
        self.drive(now);
        Ok(())
    }

    /// Session `id` no longer gets `track`: waiting for a line or on one.
    pub(super) fn drop_subscription(&mut self, id: ParticipantId, track: TrackId) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        peer.to_add.retain(|t| *t != track);
        if let Some(mid) = peer.slot_for(track).map(|s| s.mid) {
            self.unbind(id, mid);
        }
    }

    /// Pauses (or resumes) forwarding of a subscribed track to a session without
    /// unsubscribing it (LiveKit's "disabled" track setting: the video element is hidden).
    pub fn set_track_enabled(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track: TrackId,
        enabled: bool,
    ) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        let slot = peer.slot_for(track).ok_or(SfuError::NoTrack)?;
        if enabled == slot.fwd.target().is_some() {
            return Ok(());
        }
        self.dynacast_dirty.insert(track);
        if enabled {
            // Back to the single layer; simulcast tracks get theirs from `reselect`.
            slot.fwd.set_target(Some(None));
            let mid = slot.mid;
            self.reselect(now, id);
            self.resume_one(now, id, mid);
        } else {
            slot.fwd.set_target(None);
        }
        self.drive(now);
        Ok(())
    }

    /// Takes a track out of the room: its subscribers' slots are released.
    pub(super) fn unpublish(&mut self, track: TrackId) {
        let Some(t) = self.tracks.remove(&track) else { return };
        self.denied.retain(|(_, d)| *d != track);
        self.by_mid.remove(&(t.session, t.mid));
        for &(sub, mid) in &t.subscribers {
            if let Some(slot) = self.peers.get_mut(&sub).and_then(|p| p.slot_mut(mid)) {
                slot.track = None;
                slot.fwd = Forwarder::new(slot.kind);
            }
            self.release_slot(sub, mid);
        }
        for p in self.peers.values_mut() {
            p.to_add.retain(|x| *x != track);
        }
        if let Some(r) = self.rooms.get_mut(&t.room) {
            r.tracks.retain(|x| *x != track);
        }
        self.events.push_back(SfuEvent::TrackUnpublished { room: t.room, track: t.info });
    }

    /// Puts a published track in its room and tells signaling.
    pub(super) fn add_track(&mut self, t: Track) {
        if let Some(r) = self.rooms.get_mut(&t.room) {
            r.tracks.push(t.info.id);
        }
        self.events.push_back(SfuEvent::TrackPublished { room: t.room.clone(), track: t.info.clone() });
        // Nobody watches it yet: its publisher may hold back what it would encode.
        self.dynacast_dirty.insert(t.info.id);
        self.tracks.insert(t.info.id, t);
    }

    /// Binds free slots of every session in the room to tracks it wants, oldest tracks first.
    pub(super) fn fill_slots(&mut self, now: Instant, room: &RoomName) {
        let Some(r) = self.rooms.get(room) else { return };
        let tracks = r.tracks.clone();
        let participants = r.participants.clone();
        for id in participants {
            // Tracks a client-offering session waits for go first, into the lines it added.
            let waiting = match self.peers.get_mut(&id) {
                Some(p) if p.negotiation == Negotiation::ClientOffers => std::mem::take(&mut p.to_add),
                _ => Vec::new(),
            };
            for &track in waiting.iter().chain(&tracks) {
                let Some(t) = self.tracks.get(&track) else { continue };
                let (kind, owner_identity) = (t.info.kind, t.identity.clone());
                // Nobody is told a hidden participant is there, so nobody gets its tracks unasked.
                let hidden = self.peers.get(&t.session).is_some_and(|o| o.permissions.hidden);
                let Some(p) = self.peers.get_mut(&id) else { break };
                let asked = waiting.contains(&track);
                if !(asked || (p.wants(&owner_identity) && !hidden)) || p.has(track) {
                    continue;
                }
                self.place(now, id, track, kind);
            }
            self.offer_later(id);
        }
    }

    /// Gives session `id` the track: an m-line in the next offer, a free slot, or (a
    /// client-offering session) a wait for one. False when a fixed session has no free slot.
    pub(super) fn place(&mut self, now: Instant, id: ParticipantId, track: TrackId, kind: MediaKind) -> bool {
        if !self.may_subscribe(id, track) {
            self.deny(id, track);
            return false;
        }
        let Some(p) = self.peers.get_mut(&id) else { return false };
        if p.negotiation == Negotiation::ServerOffers {
            p.to_add.push(track);
            self.offer_later(id);
            return true;
        }
        if let Some(mid) = p.free_slot(kind) {
            self.bind(now, id, mid, track);
            return true;
        }
        if p.negotiation == Negotiation::ClientOffers {
            p.to_add.push(track);
            self.needs_sections.insert(id);
            return true;
        }
        false
    }

    pub(super) fn bind(&mut self, now: Instant, id: ParticipantId, mid: Mid, track: TrackId) {
        let (Some(p), Some(t)) = (self.peers.get_mut(&id), self.tracks.get_mut(&track)) else { return };
        let Some(slot) = p.slot_mut(mid) else { return };
        slot.track = Some(track);
        slot.fwd = Forwarder::new(t.info.kind);
        t.subscribers.push((id, mid));
        self.dynacast_dirty.insert(track);
        if p.negotiation == Negotiation::ClientOffers {
            self.needs_sections.insert(id);
        }
        tracing::debug!(subscriber = %id, %track, %mid, "subscribed");
        self.reselect(now, id);
        self.resume_one(now, id, mid);
    }

    pub(super) fn unbind(&mut self, id: ParticipantId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let Some(slot) = p.slot_mut(mid) else { return };
        if let Some(t) = slot.track.take().and_then(|t| self.tracks.get_mut(&t)) {
            t.subscribers.retain(|s| *s != (id, mid));
            self.dynacast_dirty.insert(t.info.id);
        }
        slot.fwd = Forwarder::new(slot.kind);
        self.release_slot(id, mid);
        self.update_bwe_targets(id);
    }

    /// A slot that lost its track: WHEP slots wait for the next track; a server-offering
    /// session stops the m-line, since its msid named the old track; a client-offering one
    /// needs an answer that says the line is inactive before it can carry another track.
    pub(super) fn release_slot(&mut self, id: ParticipantId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        match p.negotiation {
            Negotiation::Fixed => {}
            Negotiation::ServerOffers => {
                p.slots.retain(|s| s.mid != mid);
                p.to_stop.push(mid);
                self.offer_later(id);
            }
            Negotiation::ClientOffers => {
                self.needs_sections.insert(id);
            }
        }
    }

    /// A subscriber starting (or restarting) on a video track needs a keyframe.
    pub(super) fn resume_one(&mut self, now: Instant, id: ParticipantId, mid: Mid) {
        let Some(slot) = self.peers.get_mut(&id).and_then(|p| p.slot_mut(mid)) else { return };
        if slot.kind != MediaKind::Video {
            return;
        }
        let (Some(track), Some(layer)) = (slot.track, slot.fwd.target().cloned()) else { return };
        self.request_keyframe(now, track, layer);
    }

    pub(super) fn resume_subscribers(&mut self, now: Instant, track: TrackId) {
        let subs = self.tracks.get(&track).map(|t| t.subscribers.clone()).unwrap_or_default();
        for (id, mid) in subs {
            self.resume_one(now, id, mid);
        }
    }

    /// Re-evaluates the simulcast layer of each video slot of a session.
    pub(super) fn reselect(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let mut switches = Vec::new();
        for slot in p.slots.iter_mut() {
            let Some(t) = slot.track.and_then(|t| self.tracks.get(&t)) else { continue };
            if t.layers.is_empty() {
                continue;
            }
            let target = layer_select::select(&t.layers, p.estimate_bps, slot.max_quality);
            if slot.fwd.set_target(Some(target)) {
                tracing::debug!(subscriber = %id, track = %t.info.id, ?target, "switching layer");
                switches.push((t.info.id, target));
            }
        }
        for (track, layer) in switches {
            self.request_keyframe(now, track, layer);
        }
        self.update_bwe_targets(id);
    }

    /// Tells the subscriber's bandwidth estimator what it should find room for. Without a
    /// target above its start value it never probes, and its pacer holds media to that start
    /// value: a subscriber of twenty audio tracks then queues for seconds (docs/benchmarks.md).
    pub(super) fn update_bwe_targets(&mut self, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let (mut audio, mut all) = (0u64, 0u64);
        for t in p.slots.iter().filter_map(|s| s.track).filter_map(|t| self.tracks.get(&t)) {
            if t.info.kind == MediaKind::Audio {
                audio += AUDIO_BPS;
                all += AUDIO_BPS;
            } else {
                all += t.layers.last().map(|l| l.bps).filter(|b| *b > 0).unwrap_or(VIDEO_BPS);
            }
        }
        // Audio must always fit; the rest is what probing should aim for, with headroom for
        // headers and retransmissions.
        if guard("bitrate", || p.rtc.bwe().set_bitrate(Bitrate::bps(audio), Bitrate::bps(all + all / 4))).is_err() {
            p.broken = true;
        }
    }

    pub(super) fn request_keyframe(&mut self, now: Instant, track: TrackId, layer: Layer) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.info.kind != MediaKind::Video {
            return;
        }
        if t.last_keyframe_request.get(&layer).is_some_and(|last| now < *last + KEYFRAME_MIN_GAP) {
            return;
        }
        let owner = t.session;
        let Some(p) = self.peers.get_mut(&owner) else { return };
        let mid = t.mid;
        let requested = guard("keyframe request", || {
            let Some(mut w) = p.rtc.writer(mid) else { return Ok(false) };
            if !w.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
                return Ok(false);
            }
            w.request_keyframe(layer, KeyframeRequestKind::Pli).map(|_| true)
        });
        match requested {
            Ok(Ok(true)) => {
                t.last_keyframe_request.insert(layer, now);
                self.stats.keyframe_requests += 1;
                self.mark(owner);
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::debug!(%track, error = %e, "keyframe request failed"),
            Err(Panicked) => self.remove_peer(now, owner, LeaveReason::TransportError),
        }
    }

    pub(super) fn handle_media_data(&mut self, now: Instant, id: ParticipantId, d: MediaData) {
        self.stats.frames_in += 1;
        let Some(&track) = self.by_mid.get(&(id, d.mid)) else { return };
        let Some(t) = self.tracks.get_mut(&track) else { return };
        let rates_changed = t.measure(d.rid, d.data.len(), now);
        if t.info.kind == MediaKind::Audio
            && let (Some(level), Some(r)) = (d.ext_vals.audio_level, self.rooms.get_mut(&t.room))
        {
            r.speakers.handle_level(self.peers.get(&id).map_or(id, |p| p.participant), level);
        }
        let kind = t.info.kind;
        if !d.contiguous && kind == MediaKind::Video {
            // A gap the publisher could not repair: decoders downstream need a fresh keyframe.
            self.request_keyframe(now, track, d.rid);
        }
        let out = Outgoing {
            rid: d.rid,
            keyframe: d.is_keyframe(),
            time: d.time,
            network_time: d.network_time,
            params: Some(d.params),
            audio_level: d.ext_vals.audio_level.map(|l| (l, d.ext_vals.voice_activity.unwrap_or(false))),
            data: Arc::clone(&d.data),
        };
        self.forward(now, track, &out);
        // After forwarding, so that a tap can never hold a subscriber's frame back.
        if kind == MediaKind::Audio && d.params.spec().codec == Codec::Opus {
            self.feed_taps(track, &d);
        }
        if rates_changed {
            tracing::trace!(%track, layers = ?self.tracks[&track].layers, "layer rates");
            let subs: Vec<ParticipantId> = self.tracks[&track].subscribers.iter().map(|s| s.0).collect();
            for sub in subs {
                self.reselect(now, sub);
            }
        }
    }

    /// Sends a frame of `track` to its subscribers (unless the track is muted).
    pub(super) fn forward(&mut self, now: Instant, track: TrackId, f: &Outgoing) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.info.muted {
            return;
        }
        // Borrowed out of the track for the loop (nothing below changes subscriptions), so the
        // list is not copied for every frame; it goes back at the end.
        let subscribers = std::mem::take(&mut t.subscribers);
        let mut need_keyframe = Vec::new();
        let mut broken = Vec::new();
        for &(sub, mid) in &subscribers {
            let Some(p) = self.peers.get_mut(&sub) else { continue };
            let Some(slot) = p.slot_mut(mid) else { continue };
            match slot.fwd.on_frame(f.rid, f.keyframe, f.time, f.network_time) {
                Decision::Forward(time) => {
                    let Some(w) = p.rtc.writer(mid) else { continue };
                    let pt = match f.params {
                        Some(params) => w.match_params(params),
                        None => w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()),
                    };
                    let Some(pt) = pt else {
                        self.stats.frames_dropped += 1;
                        continue;
                    };
                    let w = match f.audio_level {
                        Some((level, active)) => w.audio_level(level, active),
                        None => w,
                    };
                    match guard("write", || w.write(pt, f.network_time, time, Arc::clone(&f.data))) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(subscriber = %sub, error = %e, "write failed");
                            self.stats.frames_dropped += 1;
                            continue;
                        }
                        Err(Panicked) => {
                            broken.push(sub);
                            continue;
                        }
                    }
                    self.stats.frames_forwarded += 1;
                    self.stats.bytes_forwarded += f.data.len() as u64;
                    self.mark(sub);
                }
                Decision::NeedKeyframe(layer) => {
                    self.stats.frames_dropped += 1;
                    need_keyframe.push(layer);
                }
                Decision::Drop => {}
            }
        }
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers = subscribers;
        }
        for layer in need_keyframe {
            self.request_keyframe(now, track, layer);
        }
        for sub in broken {
            self.remove_peer(now, sub, LeaveReason::TransportError);
        }
    }
}
