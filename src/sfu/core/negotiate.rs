//! Sessions in and out of SDP: joins, offers and answers in the three ways sessions negotiate
//! ([`Negotiation`]), trickled candidates, and the m-lines the router asks a client for.

use super::*;

impl Sfu {
    /// Adds a session from the client's SDP offer and returns the answer.
    pub fn join(
        &mut self,
        now: Instant,
        req: JoinRequest,
        offer: &str,
    ) -> Result<(ParticipantId, SdpAnswer), SfuError> {
        let facts = OfferFacts::read(offer)?;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(sdp_error_text(&e.to_string())))?;
        self.admit(&req)?;
        let mut rtc = self.new_rtc(now);
        let answer = negotiate(|| rtc.sdp_api().accept_offer(offer)).map_err(SfuError::from)?;
        let id = self.add_session(now, req, rtc, facts);
        Ok((id, answer))
    }

    /// Adds a session whose first offer comes from the server, once there is something to
    /// send (a LiveKit subscriber connection). Renegotiation is implied.
    pub fn join_server_offered(&mut self, now: Instant, mut req: JoinRequest) -> Result<ParticipantId, SfuError> {
        self.admit(&req)?;
        req.negotiation = Negotiation::ServerOffers;
        let room = req.room.clone();
        let rtc = self.new_rtc(now);
        let id = self.add_session(now, req, rtc, OfferFacts::default());
        // The first offer carries the channels and whatever the room already publishes.
        self.fill_slots(now, &room);
        self.offer_later(id);
        self.drive(now);
        Ok(id)
    }

    /// Adds a session whose m-lines come from the client's offers, all of them answered with
    /// [`Sfu::answer_offer`] (a LiveKit single peer connection). Tracks it should receive wait
    /// for its first offer.
    pub fn join_client_offers(&mut self, now: Instant, mut req: JoinRequest) -> Result<ParticipantId, SfuError> {
        self.admit(&req)?;
        req.negotiation = Negotiation::ClientOffers;
        let room = req.room.clone();
        let rtc = self.new_rtc(now);
        let id = self.add_session(now, req, rtc, OfferFacts::default());
        self.fill_slots(now, &room);
        self.drive(now);
        Ok(id)
    }

    /// Refuses a new participant that the room's `max_participants` has no place for; another
    /// connection of a participant already there always comes in.
    pub(super) fn admit(&self, req: &JoinRequest) -> Result<(), SfuError> {
        let max = req.limits.max_participants as usize;
        let existing = req.participant.is_some_and(|pp| self.peers.values().any(|p| p.participant == pp));
        if max == 0 || existing {
            return Ok(());
        }
        let mut present: Vec<ParticipantId> =
            self.peers.values().filter(|p| p.room == req.room).map(|p| p.participant).collect();
        present.sort();
        present.dedup();
        if present.len() >= max { Err(SfuError::RoomFull) } else { Ok(()) }
    }

    /// Answers an offer of a session: as [`Sfu::renegotiate`], and for a client-offering
    /// session with every receiving m-line described: `sendonly` with the msid of the track it
    /// now carries, or `inactive`. str0m answers those with a random msid, and a browser
    /// announces a track (`ontrack`) only when a transceiver starts receiving, so a line that
    /// has nothing yet must not look like it sends.
    pub fn answer_offer(&mut self, now: Instant, id: ParticipantId, offer: &str) -> Result<ClientAnswer, SfuError> {
        let answer = self.renegotiate(now, id, offer)?.to_sdp_string();
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if peer.negotiation != Negotiation::ClientOffers {
            return Ok(ClientAnswer { sdp: answer, tracks: Vec::new() });
        }
        let lines_before = peer.lines_offered;
        peer.lines_offered = peer.slots.len();
        let grew = peer.lines_offered > lines_before;
        let mut lines = Vec::new();
        let mut starting = Vec::new();
        for slot in &mut peer.slots {
            if let Some(track) = slot.track.filter(|_| slot.announced != slot.track) {
                starting.push((slot.mid, track));
            }
            slot.announced = slot.track;
            let Some(track) = slot.track else { continue };
            let owner = self.tracks.get(&track).map_or(peer.participant, |t| t.info.owner);
            lines.push(describe::Sending { mid: slot.mid, stream: stream_id(owner, track), track });
        }
        peer.offered = true;
        // A client asked for more lines that offered again without them while tracks wait has
        // not yet acted on the request (or cannot: a codec it lacks); it is not asked again
        // until it offers more. Any other offer answers the request, and tracks that came
        // meanwhile are asked for afresh.
        peer.sections_requested =
            peer.sections_requested.filter(|&lines| lines > 0 && !grew && !peer.to_add.is_empty());
        let room = peer.room.clone();
        let sdp = describe::sending_lines(&answer, &lines);
        // The client starts decoding once it has this answer: video needs a keyframe then,
        // even if one was asked for a moment ago when the line was bound.
        for (mid, track) in starting {
            if let Some(t) = self.tracks.get_mut(&track) {
                t.last_keyframe_request.clear();
            }
            self.resume_one(now, id, mid);
        }
        // Lines this answer described as idle can take waiting tracks at once.
        self.fill_slots(now, &room);
        self.needs_sections.insert(id);
        self.drive(now);
        Ok(ClientAnswer { sdp, tracks: lines.into_iter().map(|l| (l.mid, l.track)).collect() })
    }

    pub(super) fn new_rtc(&self, now: Instant) -> Rtc {
        let mut rtc_config = Rtc::builder().enable_bwe(Some(self.config.initial_bwe));
        // str0m's defaults take over half a minute to notice a vanished peer; these notice in
        // about ten seconds, after which `disconnect_timeout` runs.
        rtc_config.set_max_stun_rto(Duration::from_millis(1500));
        rtc_config.set_max_stun_retransmits(6);
        // Peer stats feed connection quality.
        let mut rtc = rtc_config.set_stats_interval(Some(STATS_INTERVAL)).build(now);
        for c in &self.config.candidates {
            rtc.add_local_candidate(c.clone());
        }
        rtc
    }

    pub(super) fn add_session(&mut self, now: Instant, req: JoinRequest, rtc: Rtc, offer: OfferFacts) -> ParticipantId {
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        // Another connection of a participant still in the room joins it; otherwise it is new.
        let participant = req
            .participant
            .filter(|pp| self.peers.values().any(|p| p.participant == *pp && p.room == req.room))
            .unwrap_or(id);
        let room = self.rooms.entry(req.room.clone()).or_insert_with(|| {
            self.events.push_back(SfuEvent::RoomStarted { room: req.room.clone() });
            Room {
                participants: Vec::new(),
                tracks: Vec::new(),
                empty_since: None,
                limits: req.limits,
                speakers: SpeakerDetector::new(now),
            }
        });
        room.participants.push(id);
        room.empty_since = None;
        // Settings come with new participants; another connection of one brings none.
        if participant == id {
            room.limits = req.limits;
        }
        self.peers.insert(
            id,
            Peer {
                id,
                participant,
                room: req.room.clone(),
                identity: req.identity.clone(),
                permissions: req.permissions,
                subscribe: req.subscribe,
                negotiation: req.negotiation,
                offered: false,
                sections_requested: None,
                lines_offered: 0,
                rtc,
                next_timeout: now,
                disconnected_since: None,
                joined_at: now,
                connected: false,
                broken: false,
                data_sequence: 0,
                remote_candidates: offer.candidates,
                remote_ufrag: offer.ufrag,
                client_tracks: offer.tracks,
                estimate_bps: None,
                slots: Vec::new(),
                published: Vec::new(),
                channels_in: HashMap::new(),
                channels_out: HashMap::new(),
                pending: None,
                to_add: Vec::new(),
                to_stop: Vec::new(),
                ice_restart: false,
                announced: HashMap::new(),
                data_codec: req.data_codec,
                channels_to_open: req.server_channels,
                own_channels: Vec::new(),
                quality: None,
            },
        );
        if participant == id {
            self.events.push_back(SfuEvent::ParticipantJoined {
                room: req.room,
                participant: id,
                identity: req.identity,
            });
        }
        self.mark(id);
        self.drive(now);
        id
    }

    /// Applies a new offer from an existing session: added m-lines, or an ICE restart when the
    /// offer carries new ICE credentials.
    pub fn renegotiate(&mut self, now: Instant, id: ParticipantId, offer: &str) -> Result<SdpAnswer, SfuError> {
        let facts = OfferFacts::read(offer)?;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(sdp_error_text(&e.to_string())))?;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        // Offers repeat the candidates gathered so far; new credentials start a new set.
        let known = if facts.ufrag == peer.remote_ufrag { peer.remote_candidates } else { 0 };
        if known.max(facts.candidates) > MAX_REMOTE_CANDIDATES {
            return Err(SfuError::LimitExceeded("ICE candidates"));
        }
        (peer.remote_candidates, peer.remote_ufrag) = (known.max(facts.candidates), facts.ufrag);
        peer.client_tracks = facts.tracks;
        // Glare: the client's offer wins; ours is dropped and its tracks go into the next one.
        peer.drop_pending_offer();
        let answer = match negotiate(|| peer.rtc.sdp_api().accept_offer(offer)) {
            Ok(a) => a,
            Err(e) => return Err(self.failed_negotiation(now, id, e)),
        };
        self.mark(id);
        self.offer_later(id);
        self.drive(now);
        Ok(answer)
    }

    /// Restarts ICE from the server's side with a fresh offer (a LiveKit client resuming a
    /// session, possibly from a new network). An offer still out is dropped: the client lost it
    /// with its signal connection, and the new offer carries its tracks instead.
    pub fn restart_ice(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        peer.drop_pending_offer();
        peer.ice_restart = true;
        // The client answers with new credentials and trickles a new set.
        peer.remote_candidates = 0;
        self.offer_later(id);
        self.drive(now);
        Ok(())
    }

    /// Applies the client's answer to our last offer.
    pub fn handle_answer(&mut self, now: Instant, id: ParticipantId, sdp: &str) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if peer.pending.is_none() {
            return Err(SfuError::NoPendingOffer);
        }
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(sdp_error_text(&e.to_string())))?;
        let (pending, planned) = peer.pending.take().expect("checked above");
        if let Err(e) = negotiate(|| peer.rtc.sdp_api().accept_answer(pending, answer)) {
            return Err(self.failed_negotiation(now, id, e));
        }
        for (mid, track) in planned {
            let allowed = self.may_subscribe(id, track);
            let peer = self.peers.get_mut(&id).expect("checked above");
            let kind = self.tracks.get(&track).map(|t| t.info.kind);
            // Unpublished while the offer was out, or the session may no longer subscribe (to
            // anything, or to this track by its publisher's grant).
            let Some(kind) = kind.filter(|_| peer.permissions.subscribe && allowed) else {
                peer.to_stop.push(mid);
                if kind.is_some() && !allowed {
                    self.deny(id, track);
                }
                continue;
            };
            if peer.slot_mut(mid).is_none() {
                peer.slots.push(Slot::new(mid, kind));
            }
            self.bind(now, id, mid, track);
        }
        self.mark(id);
        self.offer_later(id);
        self.drive(now);
        Ok(())
    }

    /// A negotiation that panicked inside str0m may have left the session half-changed: it
    /// ends. One that was refused leaves it as it was.
    pub(super) fn failed_negotiation(&mut self, now: Instant, id: ParticipantId, e: NegotiationFailure) -> SfuError {
        if let NegotiationFailure::Panicked = e {
            self.remove_peer(now, id, LeaveReason::TransportError);
            self.drive(now);
        }
        e.into()
    }

    /// Registers a track the client announced (LiveKit AddTrack) before its m-line arrives;
    /// the m-line whose msid track id is `client_track_id` will publish as the returned id.
    /// Announcing the same id again gives the same track.
    pub fn announce_track(&mut self, id: ParticipantId, client_track_id: &str) -> Result<TrackId, SfuError> {
        let track = TrackId(self.next_id);
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if let Some(&known) = peer.announced.get(client_track_id) {
            return Ok(known);
        }
        if peer.announced.len() >= MAX_ANNOUNCED_TRACKS {
            return Err(SfuError::LimitExceeded("announced tracks"));
        }
        self.next_id += 1;
        peer.announced.insert(client_track_id.to_string(), track);
        Ok(track)
    }

    /// Adds a trickled remote candidate.
    pub fn add_remote_candidate(&mut self, now: Instant, id: ParticipantId, c: Candidate) -> Result<(), SfuError> {
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoParticipant)?;
        if peer.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return Err(SfuError::LimitExceeded("ICE candidates"));
        }
        peer.remote_candidates += 1;
        if guard("add_remote_candidate", || peer.rtc.add_remote_candidate(c)).is_err() {
            self.remove_peer(now, id, LeaveReason::TransportError);
            self.drive(now);
            return Err(SfuError::Negotiation("the candidate could not be applied".into()));
        }
        self.mark(id);
        self.drive(now);
        Ok(())
    }

    /// Asks a client-offering session to offer again if it lacks lines or has lines whose
    /// description changed; once per answer.
    pub(super) fn request_sections(&mut self, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if p.negotiation != Negotiation::ClientOffers || !p.offered || p.sections_requested.is_some() {
            return;
        }
        let (mut audio, mut video) = (0, 0);
        for t in p.to_add.iter().filter_map(|t| self.tracks.get(t)) {
            match t.info.kind {
                MediaKind::Audio => audio += 1,
                MediaKind::Video => video += 1,
            }
        }
        // However many tracks wait, a client is not asked to grow past this many lines.
        let room_for = MAX_CLIENT_LINES.saturating_sub(p.slots.len()) as u32;
        let audio = audio.min(room_for);
        let video = video.min(room_for - audio);
        let changed = p.slots.iter().any(|s| s.announced != s.track);
        if audio + video == 0 && !changed {
            return;
        }
        p.sections_requested = Some(audio + video);
        self.events.push_back(SfuEvent::SectionsNeeded { participant: id, audio, video });
    }

    /// Batches a renegotiation: offers are made once the current input is fully handled, so
    /// tracks that appear together travel in one offer.
    pub(super) fn offer_later(&mut self, id: ParticipantId) {
        self.needs_offer.insert(id);
    }

    /// Offers the m-lines a renegotiating session is waiting for, unless an offer is out.
    pub(super) fn make_offer(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if p.negotiation != Negotiation::ServerOffers {
            return;
        }
        if !p.permissions.subscribe {
            // Tracks of an offer dropped after the permission went (glare, ICE restart).
            p.to_add.clear();
        }
        let nothing_to_do =
            p.to_add.is_empty() && p.to_stop.is_empty() && p.channels_to_open.is_empty() && !p.ice_restart;
        if p.pending.is_some() || nothing_to_do {
            return;
        }
        let tracks = &self.tracks;
        let made = guard("offer", || {
            let mut api = p.rtc.sdp_api();
            if std::mem::take(&mut p.ice_restart) {
                // The server's host candidates do not change with the credentials.
                api.ice_restart(true);
            }
            for c in p.channels_to_open.drain(..) {
                p.own_channels.push(api.add_channel_with_config(c));
            }
            let mut planned = Vec::new();
            for track in p.to_add.drain(..) {
                let Some(t) = tracks.get(&track) else { continue };
                let stream = stream_id(t.info.owner, track);
                let mid = api.add_media(t.info.kind, Direction::SendOnly, Some(stream), Some(track.to_string()), None);
                planned.push((mid, track));
            }
            for mid in p.to_stop.drain(..) {
                api.stop_media(mid);
            }
            api.apply().map(|applied| (applied, planned))
        });
        let Ok(made) = made else {
            self.remove_peer(now, id, LeaveReason::TransportError);
            return;
        };
        if let Some(((offer, pending), planned)) = made {
            p.pending = Some((pending, planned));
            self.events.push_back(SfuEvent::Offer { participant: id, sdp: offer.to_sdp_string() });
            self.mark(id);
        }
    }

    pub(super) fn handle_media_added(&mut self, now: Instant, id: ParticipantId, m: MediaAdded) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
        let sends = matches!(m.direction, Direction::SendOnly | Direction::SendRecv);
        // m-lines we offered get their slot when the answer arrives (`handle_answer`).
        if sends && p.permissions.subscribe && p.slot_mut(m.mid).is_none() && p.negotiation != Negotiation::ServerOffers
        {
            p.slots.push(Slot::new(m.mid, m.kind));
        }
        if receives && p.permissions.publish && p.published.len() >= MAX_PUBLISHED_TRACKS {
            tracing::info!(participant = %id, mid = %m.mid, "publishes too many tracks; m-line not published");
        } else if receives && p.permissions.publish {
            let rids: Vec<Rid> = m
                .simulcast
                .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
                .unwrap_or_default()
                .into_iter()
                .map(|l| l.rid)
                .collect();
            let mut layers: Vec<LayerRate> = rids.into_iter().map(|rid| LayerRate { rid, bps: 0 }).collect();
            layer_select::order(&mut layers);
            // The client's own id for the track, as its offer wrote it: str0m makes one up
            // where the offer names no stream (`a=msid:- <track>`, as LiveKit's native SDKs write).
            let client_track_id = match p.client_tracks.get(&*m.mid) {
                Some(t) => t.clone(),
                None => p.rtc.media(m.mid).map(|x| x.track_id().to_string()).unwrap_or_default(),
            };
            // The announcement may have gone to another connection of the same participant.
            let participant = p.participant;
            let announced = self
                .peers
                .values_mut()
                .filter(|x| x.participant == participant)
                .find_map(|x| x.announced.remove(&client_track_id));
            let track = announced.unwrap_or_else(|| {
                self.next_id += 1;
                TrackId(self.next_id - 1)
            });
            let p = self.peers.get_mut(&id).expect("event for a live session");
            let info = TrackInfo {
                id: track,
                owner: p.participant,
                kind: m.kind,
                muted: false,
                layers: layers.iter().map(|l| l.rid.to_string()).collect(),
                mime: negotiated_mime(&p.rtc, m.mid, m.kind),
                server: false,
            };
            p.published.push(track);
            self.by_mid.insert((id, m.mid), track);
            let t = Track::new(info, p.room.clone(), id, p.identity.clone(), m.mid, layers, now);
            self.add_track(t);
        }
        if let Some(room) = self.peers.get(&id).map(|p| p.room.clone()) {
            self.fill_slots(now, &room);
        }
    }

    /// A client stopped sending on an m-line it published (how LiveKit's SDKs unpublish: the
    /// transceiver stops sending and they offer again), or sends on one again (a new track on
    /// a reused transceiver, announced as a new one).
    pub(super) fn handle_media_changed(&mut self, now: Instant, id: ParticipantId, m: MediaChanged) {
        let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
        let Some(p) = self.peers.get_mut(&id) else { return };
        match self.by_mid.get(&(id, m.mid)).copied() {
            Some(track) if !receives => {
                p.published.retain(|t| *t != track);
                self.unpublish(track);
                if let Some(room) = self.peers.get(&id).map(|p| p.room.clone()) {
                    self.fill_slots(now, &room);
                }
            }
            // (A line the router sends on is a subscription of the client's, not a publication.)
            None if receives && p.slot_mut(m.mid).is_none() => {
                let Some(kind) = p.rtc.media(m.mid).map(|x| x.kind()) else { return };
                let added = MediaAdded { mid: m.mid, kind, direction: m.direction, simulcast: None };
                self.handle_media_added(now, id, added);
            }
            _ => {}
        }
    }
}

/// How an SDP offer or answer failed to apply.
pub(super) enum NegotiationFailure {
    Refused(RtcError),
    /// str0m asserted (e.g. "Pt locked multiple times" on offers whose fmtp lines are gone).
    Panicked,
}

impl From<NegotiationFailure> for SfuError {
    fn from(e: NegotiationFailure) -> Self {
        match e {
            NegotiationFailure::Refused(e) => SfuError::Negotiation(e.to_string()),
            NegotiationFailure::Panicked => SfuError::Negotiation("the offer could not be negotiated".into()),
        }
    }
}

/// Applies SDP through str0m, which asserts on some inputs a client controls: one client
/// must not be able to take the router, and every room with it, down.
pub(super) fn negotiate<T>(f: impl FnOnce() -> Result<T, RtcError>) -> Result<T, NegotiationFailure> {
    match guard("negotiation", f) {
        Ok(r) => r.map_err(NegotiationFailure::Refused),
        Err(Panicked) => Err(NegotiationFailure::Panicked),
    }
}

/// How many distinct remote candidates an SDP carries: browsers repeat a bundle's candidates
/// in every m-section, and those count once (what [`MAX_REMOTE_CANDIDATES`] limits).
pub fn distinct_candidates(sdp: &str) -> usize {
    sdp.lines().filter_map(|l| l.trim().strip_prefix("a=candidate:")).collect::<HashSet<&str>>().len()
}

/// The codec a client sends on `mid` as a MIME type: its first payload type there (the one it
/// prefers) among those negotiated.
pub(super) fn negotiated_mime(rtc: &Rtc, mid: Mid, kind: MediaKind) -> String {
    let pt = rtc.media(mid).and_then(|m| m.remote_pts().first().copied());
    let codec = pt.and_then(|pt| rtc.codec_config().iter().find(|p| p.pt() == pt).map(|p| p.spec().codec));
    let kind = if kind == MediaKind::Audio { "audio" } else { "video" };
    codec.map(|c| format!("{kind}/{c}")).unwrap_or_default()
}

/// What the router reads from a client's offer itself, before str0m takes it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct OfferFacts {
    /// Distinct remote candidates, at most [`MAX_REMOTE_CANDIDATES`].
    candidates: usize,
    /// The ICE username fragment.
    ufrag: Option<String>,
    /// The client's track id per mid, from `a=msid` (or `a=ssrc:… msid:`).
    tracks: HashMap<String, String>,
}

impl OfferFacts {
    fn read(sdp: &str) -> Result<OfferFacts, SfuError> {
        let candidates = distinct_candidates(sdp);
        if candidates > MAX_REMOTE_CANDIDATES {
            return Err(SfuError::LimitExceeded("ICE candidates"));
        }
        let lines = || sdp.lines().map(str::trim);
        let ufrag = lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).map(str::to_string);
        let mut tracks = HashMap::new();
        let (mut mid, mut track): (Option<&str>, Option<&str>) = (None, None);
        let mut section_done = |mid: Option<&str>, track: Option<&str>| {
            if let (Some(m), Some(t)) = (mid, track) {
                tracks.insert(m.to_string(), t.to_string());
            }
        };
        for l in lines() {
            if l.starts_with("m=") {
                section_done(mid.take(), track.take());
            } else if let Some(m) = l.strip_prefix("a=mid:") {
                mid = Some(m.trim());
            } else if let Some(v) = l.strip_prefix("a=msid:") {
                track = v.split_whitespace().nth(1).or(track);
            } else if let Some(v) = l.strip_prefix("a=ssrc:") {
                // `a=ssrc:<ssrc> msid:<stream> <track>`: only where the m-line has no a=msid.
                let msid = v.split_once(' ').and_then(|(_, a)| a.strip_prefix("msid:"));
                if track.is_none() {
                    track = msid.and_then(|m| m.split_whitespace().nth(1));
                }
            }
        }
        section_done(mid, track);
        Ok(OfferFacts { candidates, ufrag, tracks })
    }
}

/// The parser's message without the memory address it embeds ("at PointerOffset(0x…)"),
/// on one line: clients see it.
pub(super) fn sdp_error_text(raw: &str) -> String {
    let text: Vec<&str> = raw.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let text = text.join("; ");
    match (text.find(" at PointerOffset("), text.find(')')) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &text[..a], &text[b + 1..]),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_offer_counts_each_candidate_once() {
        // Bundled m-sections repeat the same candidates.
        let line = "a=candidate:1 1 udp 2113937151 10.0.0.1 5000 typ host\r\n";
        let sdp = format!("v=0\r\na=ice-ufrag:u1\r\nm=audio 9 x\r\n{line}m=video 9 x\r\n{line}");
        let facts = super::OfferFacts::read(&sdp).unwrap();
        assert_eq!((facts.candidates, facts.ufrag.as_deref()), (1, Some("u1")));
        let many: String = (0..=super::MAX_REMOTE_CANDIDATES)
            .map(|n| format!("a=candidate:{n} 1 udp 1 10.0.0.1 {} typ host\r\n", 5000 + n))
            .collect();
        assert!(matches!(super::OfferFacts::read(&many), Err(super::SfuError::LimitExceeded(_))));
    }

    #[test]
    fn an_offer_names_the_clients_track_per_mid_whatever_its_stream() {
        let sdp = "v=0\r\nm=audio 9 x\r\na=mid:0\r\na=msid:- TR_native\r\n\
                   m=video 9 x\r\na=mid:1\r\na=ssrc:1 cname:c\r\na=ssrc:1 msid:s1 from-ssrc\r\n\
                   m=audio 9 x\r\na=mid:2\r\na=msid:s2 browser\r\na=ssrc:2 msid:s2 ignored\r\n\
                   m=application 9 x\r\na=mid:3\r\n";
        let tracks = super::OfferFacts::read(sdp).unwrap().tracks;
        let expected: std::collections::HashMap<String, String> =
            [("0", "TR_native"), ("1", "from-ssrc"), ("2", "browser")].map(|(m, t)| (m.into(), t.into())).into();
        assert_eq!(tracks, expected);
    }

    #[test]
    fn sdp_errors_hide_addresses() {
        let raw = "SDP parse: Parse error at PointerOffset(0x7f0228001c90)\nUnexpected `g`\nExpected `v`\n";
        assert_eq!(super::sdp_error_text(raw), "SDP parse: Parse error; Unexpected `g`; Expected `v`");
    }
}
