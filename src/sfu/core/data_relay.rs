//! Data channel messages between the participants of a room, and the server's own.

use super::*;

impl Sfu {
    pub(super) fn handle_channel_open(&mut self, now: Instant, id: ParticipantId, cid: ChannelId) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if let Some(out) = p.channels_out.values_mut().find(|c| c.id == cid) {
            out.open = true;
            let pending: Vec<_> = out.pending.drain(..).collect();
            let flushed = guard("channel write", || {
                if let Some(mut ch) = p.rtc.channel(cid) {
                    for (binary, data) in pending {
                        let _ = ch.write(binary, &data);
                    }
                }
            });
            match flushed {
                Ok(()) => self.mark(id),
                Err(Panicked) => self.remove_peer(now, id, LeaveReason::TransportError),
            }
            return;
        }
        if p.own_channels.contains(&cid) {
            return;
        }
        let config = guard("channel config", || p.rtc.channel(cid).and_then(|c| c.config().cloned()))
            .ok()
            .flatten()
            .unwrap_or_default();
        p.channels_in.insert(cid, config);
    }

    /// Relays a data channel message to the other participants of the room: in their own
    /// envelope for sessions with a codec, else on a per-sender channel of the same label and
    /// reliability whose protocol names the sender.
    pub(super) fn relay_data(&mut self, now: Instant, from: ParticipantId, d: ChannelData) {
        let Some(p) = self.peers.get_mut(&from) else { return };
        if !p.permissions.publish_data {
            return;
        }
        let Some(config) = p.channels_in.get(&d.id) else { return };
        let reliable = data::is_reliable(config);
        let msg = match &p.data_codec {
            Some(codec) => codec.decode(&config.label, reliable, &d.data),
            None => Some(DataMessage {
                reliable,
                binary: d.binary,
                topic: config.label.clone(),
                payload: d.data,
                destinations: Vec::new(),
                native: None,
                sequence: None,
            }),
        };
        let Some(msg) = msg else {
            self.stats.data_messages_dropped += 1;
            return;
        };
        if let Some(seq) = msg.sequence {
            // Resent after a resume, and already relayed.
            if seq <= p.data_sequence {
                self.stats.data_messages_dropped += 1;
                return;
            }
            p.data_sequence = seq;
        }
        let (room, sender, sender_id) = (p.room.clone(), p.identity.clone(), p.participant);
        self.deliver(now, &room, Some((from, &sender, sender_id)), &msg);
    }

    /// The standing word the router gave `participant` through events it will not repeat
    /// (which qualities of its tracks are watched, which tracks it may not have), for a
    /// signaling session that missed events to say again.
    pub fn standing_notices(&self, participant: ParticipantId) -> Vec<SfuEvent> {
        let mut out = self.qualities_told(participant);
        out.extend(self.denials_told(participant));
        out
    }

    /// The highest reliable message number relayed from `participant` (any of its
    /// connections; 0 for none): what a resuming LiveKit client is told arrived.
    pub fn data_sequence(&self, participant: ParticipantId) -> u32 {
        self.peers.values().filter(|p| p.participant == participant).map(|p| p.data_sequence).max().unwrap_or(0)
    }

    /// Sends a message from the server (an API call) to the room's participants, or to those
    /// among them `msg.destinations` names; returns how many it went to.
    pub fn send_data(&mut self, now: Instant, room: &RoomName, msg: &DataMessage) -> usize {
        let n = self.deliver(now, room, None, msg);
        self.drive(now);
        n
    }

    /// Delivers `msg` from `sender` (its session, identity and participant; `None`: the
    /// server) to everyone else in the room it is meant for.
    pub(super) fn deliver(
        &mut self,
        now: Instant,
        room: &RoomName,
        sender: Option<(ParticipantId, &Identity, ParticipantId)>,
        msg: &DataMessage,
    ) -> usize {
        let Some(r) = self.rooms.get(room) else { return 0 };
        // One delivery per identity: a client may hold several connections (LiveKit's
        // publisher and subscriber, a WHIP publisher beside WHEP players). The connection
        // that speaks an envelope wins, then the oldest; only those whose client opened a
        // channel have SCTP up.
        let mut recipients: Vec<(Identity, bool, ParticipantId)> = r
            .participants
            .iter()
            .filter_map(|id| self.peers.get(id))
            .filter(|q| sender.is_none_or(|s| &q.identity != s.1) && !q.channels_in.is_empty())
            .filter(|q| msg.destinations.is_empty() || msg.destinations.contains(&q.identity))
            .map(|q| (q.identity.clone(), q.data_codec.is_none(), q.id))
            .collect();
        recipients.sort();
        recipients.dedup_by(|a, b| a.0 == b.0);
        let delivered = recipients.len();
        let mut broken = Vec::new();
        for (_, _, to) in recipients {
            let Some(q) = self.peers.get_mut(&to) else { continue };
            let written = guard("channel write", || Self::write_message(q, msg, sender, &mut self.stats));
            match written {
                Ok(true) => {
                    self.stats.data_messages_relayed += 1;
                    self.mark(to);
                }
                Ok(false) => {}
                Err(Panicked) => broken.push(to),
            }
        }
        for id in broken {
            self.remove_peer(now, id, LeaveReason::TransportError);
        }
        delivered
    }

    /// Writes `msg` to one recipient's channel for it (opening one for a raw session); false
    /// when there is none to write to.
    pub(super) fn write_message(
        q: &mut Peer,
        msg: &DataMessage,
        sender: Option<(ParticipantId, &Identity, ParticipantId)>,
        stats: &mut SfuStats,
    ) -> bool {
        match q.data_codec.clone() {
            Some(codec) => {
                let Some((label, bytes)) = codec.encode(msg, sender.map(|s| (s.1, s.2))) else { return false };
                let Some(cid) = q.channels_in.iter().find(|(_, c)| c.label == label).map(|(id, _)| *id) else {
                    return false;
                };
                if let Some(mut ch) = q.rtc.channel(cid) {
                    let _ = ch.write(true, &bytes);
                }
            }
            None => {
                let key = (sender.map(|s| s.0), msg.topic.clone());
                if !q.channels_out.contains_key(&key) && q.channels_out.len() >= MAX_OUT_CHANNELS {
                    stats.data_messages_dropped += 1;
                    return false;
                }
                let out = q.channels_out.entry(key).or_insert_with(|| {
                    let id = q.rtc.direct_api().create_data_channel(data::per_sender_channel(msg, sender.map(|s| s.1)));
                    OutChannel { id, open: false, pending: VecDeque::new() }
                });
                if out.open {
                    if let Some(mut ch) = q.rtc.channel(out.id) {
                        let _ = ch.write(msg.binary, &msg.payload);
                    }
                } else {
                    if out.pending.len() == MAX_PENDING_MESSAGES {
                        out.pending.pop_front();
                    }
                    out.pending.push_back((msg.binary, msg.payload.clone()));
                }
            }
        }
        true
    }
}
