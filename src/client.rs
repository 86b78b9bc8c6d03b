//! A sans-IO WebRTC client on str0m: builds an offer, applies the answer, sends frames and
//! data, and collects what it receives. The room router's tests, the load generator and
//! in-process participants (agents) drive it over whatever transport they have.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelData, ChannelId};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequest, MediaAdded, MediaData, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Receive, Transmit};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcError};

/// One m-line to offer.
#[derive(Debug, Clone)]
pub struct MediaSpec {
    pub kind: MediaKind,
    pub direction: Direction,
    /// Simulcast layers to send (rids), lowest first; empty for none.
    pub simulcast: Vec<&'static str>,
}

impl MediaSpec {
    pub fn send(kind: MediaKind) -> Self {
        MediaSpec { kind, direction: Direction::SendOnly, simulcast: Vec::new() }
    }

    pub fn recv(kind: MediaKind) -> Self {
        MediaSpec { kind, direction: Direction::RecvOnly, simulcast: Vec::new() }
    }
}

/// Errors from client operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no offer is pending")]
    NoPendingOffer,
    #[error("malformed SDP: {0}")]
    BadAnswer(String),
    #[error("no such media or codec")]
    NoMedia,
    #[error(transparent)]
    Rtc(#[from] RtcError),
}

/// A client session and everything it has seen.
pub struct Client {
    pub rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    /// Mids in offer order.
    pub mids: Vec<Mid>,
    pub connected: bool,
    pub media_added: Vec<MediaAdded>,
    pub received: Vec<MediaData>,
    /// Open channels: id, label, protocol (the sender's identity on channels the SFU opened).
    pub channels: Vec<(ChannelId, String, String)>,
    pub channel_data: Vec<ChannelData>,
    pub keyframe_requests: Vec<KeyframeRequest>,
    next_timeout: Option<Instant>,
    /// When true, received media frames are counted but not kept (load generation).
    pub keep_media: bool,
    pub frames_received: u64,
}

impl Client {
    /// A client whose only candidate is `addr` (UDP host).
    pub fn new(now: Instant, addr: SocketAddr) -> Self {
        Self::with_candidate(now, Candidate::host(addr, "udp").expect("a valid host address"))
    }

    /// A client whose only candidate is `candidate` (e.g. ICE-TCP active).
    pub fn with_candidate(now: Instant, candidate: Candidate) -> Self {
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(candidate);
        Client {
            rtc,
            pending: None,
            mids: Vec::new(),
            connected: false,
            media_added: Vec::new(),
            received: Vec::new(),
            channels: Vec::new(),
            channel_data: Vec::new(),
            keyframe_requests: Vec::new(),
            next_timeout: Some(now),
            keep_media: true,
            frames_received: 0,
        }
    }

    /// Builds the offer for `media` (and a data channel named `channel`, if any).
    pub fn offer(&mut self, media: &[MediaSpec], channel: Option<&str>) -> String {
        let mut api = self.rtc.sdp_api();
        for m in media {
            let simulcast = (!m.simulcast.is_empty()).then(|| {
                let mut s = Simulcast::new();
                for rid in &m.simulcast {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            let mid = api.add_media(m.kind, m.direction, Some("stream".into()), None, simulcast);
            self.mids.push(mid);
        }
        if let Some(label) = channel {
            api.add_channel(label.to_string());
        }
        let (offer, pending) = api.apply().expect("an offer with changes");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    /// Offers an ICE restart (new credentials, same candidates), as after a network change.
    pub fn restart_ice(&mut self) -> String {
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api.apply().expect("an ICE restart is a change");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    /// Answers an offer from the server (renegotiation).
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, ClientError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        Ok(self.rtc.sdp_api().accept_offer(offer)?.to_sdp_string())
    }

    /// Applies the server's answer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), ClientError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let pending = self.pending.take().ok_or(ClientError::NoPendingOffer)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// Feeds a datagram addressed to this client; false if it is not ours.
    pub fn handle_receive(&mut self, now: Instant, r: Receive<'_>) -> bool {
        let input = Input::Receive(now, r);
        if !self.rtc.accepts(&input) {
            return false;
        }
        let _ = self.rtc.handle_input(input);
        true
    }

    /// Moves time forward.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_timeout.is_some_and(|t| t <= now) {
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
    }

    /// Drains output: returns datagrams to send, records events, remembers the next timeout.
    pub fn poll(&mut self) -> Vec<Transmit> {
        let mut out = Vec::new();
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = Some(t);
                    return out;
                }
                Ok(Output::Transmit(t)) => out.push(t),
                Ok(Output::Event(e)) => self.record(e),
                Err(_) => {
                    self.next_timeout = None;
                    return out;
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    fn record(&mut self, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::MediaAdded(m) => self.media_added.push(m),
            Event::MediaData(d) => {
                self.frames_received += 1;
                if self.keep_media {
                    self.received.push(d);
                }
            }
            Event::ChannelOpen(id, label) => {
                let protocol =
                    self.rtc.channel(id).and_then(|c| c.config().map(|c| c.protocol.clone())).unwrap_or_default();
                self.channels.push((id, label, protocol));
            }
            Event::ChannelData(d) => self.channel_data.push(d),
            Event::KeyframeRequest(r) => self.keyframe_requests.push(r),
            _ => {}
        }
    }

    /// Sends one frame on `mid` (layer `rid` when simulcasting) with the first codec of its kind.
    pub fn write(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        now: Instant,
        time: MediaTime,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.write_frame(mid, rid, now, time, data, None)
    }

    /// Sends one audio frame carrying an RFC 6464 level (−dBov, so −127..=0).
    pub fn write_audio(
        &mut self,
        mid: Mid,
        now: Instant,
        time: MediaTime,
        data: &[u8],
        level: i8,
    ) -> Result<(), ClientError> {
        self.write_frame(mid, None, now, time, data, Some(level))
    }

    fn write_frame(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        now: Instant,
        time: MediaTime,
        data: &[u8],
        level: Option<i8>,
    ) -> Result<(), ClientError> {
        let writer = self.rtc.writer(mid).ok_or(ClientError::NoMedia)?;
        // Opus and VP8 carry any bytes; H.264's packetizer would want NAL units.
        let params: Vec<_> = writer.payload_params().collect();
        let pick = params.iter().find(|p| matches!(p.spec().codec, Codec::Opus | Codec::Vp8)).or(params.first());
        let pt = pick.ok_or(ClientError::NoMedia)?.pt();
        let writer = match rid {
            Some(r) => writer.rid(r),
            None => writer,
        };
        let writer = match level {
            Some(l) => writer.audio_level(l, l > -50),
            None => writer,
        };
        writer.write(pt, now, time, data.to_vec())?;
        Ok(())
    }

    /// Sends a message on the channel labeled `label` that this client opened (empty protocol).
    pub fn send_data(&mut self, label: &str, data: &[u8]) -> Result<(), ClientError> {
        let id = self
            .channels
            .iter()
            .find(|(_, l, p)| l == label && p.is_empty())
            .map(|(id, ..)| *id)
            .ok_or(ClientError::NoMedia)?;
        let mut ch = self.rtc.channel(id).ok_or(ClientError::NoMedia)?;
        ch.write(true, data)?;
        Ok(())
    }
}
