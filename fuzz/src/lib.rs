//! The fuzz entries, in one place. Each cargo-fuzz target in `fuzz_targets/` is one call to a
//! function here, and `tests/fuzz_smoke.rs` includes this same file (`#[path]`) to run the
//! entries over a deterministic corpus in the normal test suite. Only the public API of
//! `auralink` (and str0m, which both crates depend on) is used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use auralink::client::{Client, MediaSpec};
use auralink::ids::{Identity, RoomName};
use auralink::sfu::Permissions;
use auralink::sfu::ice_tcp::{FrameDecoder, encode_frame};
use auralink::sfu::{JoinRequest, Sfu, SfuConfig, SfuEvent};
use auralink::signal::sdpfrag::{self, SdpFrag};
use auralink::signal::token::{self, Claims, TokenError, TokenVerifier};
use str0m::Candidate;
use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, MediaTime};
use str0m::net::{DatagramRecv, Protocol, Receive};

pub const TOKEN_KEY: &str = "APIfuzz";
pub const TOKEN_SECRET: &str = "fuzz-secret-0123456789abcdef0123456789";
pub const TOKEN_ROOM: &str = "room";
/// The verifier's clock, seconds since the epoch.
pub const TOKEN_NOW: u64 = 1_700_000_000;
pub const SFU_ADDR: &str = "127.0.0.1:3478";
pub const CLIENT_ADDR: &str = "127.0.0.1:50000";

/// `TokenVerifier::verify`/`verify_join` on arbitrary text; and, when the bytes are claims
/// JSON, those claims signed with the verifier's own secret, so the checks after the signature
/// (expiry, not-before, room, identity) are reached too.
pub fn token(data: &[u8]) {
    let verifier = TokenVerifier::new(BTreeMap::from([(TOKEN_KEY.to_string(), TOKEN_SECRET.to_string())]));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier.verify(text, TOKEN_NOW);
        let _ = verifier.verify_join(text, TOKEN_ROOM, TOKEN_NOW);
    }
    if let Ok(claims) = serde_json::from_slice::<Claims>(data) {
        let signed = token::mint(&claims, TOKEN_SECRET);
        let result = verifier.verify(&signed, TOKEN_NOW);
        // What we signed ourselves must never look forged or unreadable.
        if claims.iss == TOKEN_KEY {
            assert!(
                matches!(result, Ok(_) | Err(TokenError::Expired | TokenError::NotYetValid)),
                "a token minted with the right secret was refused: {result:?}"
            );
        }
        let _ = verifier.verify_join(&signed, TOKEN_ROOM, TOKEN_NOW);
    }
}

/// `SdpFrag::parse`, `ice_ufrag`, `replace_ice_credentials` and `answer_fragment` on arbitrary
/// text.
pub fn sdpfrag(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = SdpFrag::parse(text);
    let _ = sdpfrag::ice_ufrag(text);
    let (ufrag, pwd) = match &parsed {
        Ok(SdpFrag { ice: Some((u, p)), .. }) => {
            let ice_char =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
            assert!(ice_char(u) && ice_char(p), "credentials outside ice-char accepted: {u:?} {p:?}");
            (u.clone(), p.clone())
        }
        _ => ("fuzzufrag".to_string(), "fuzzpasswordfuzzpassword".to_string()),
    };
    let replaced = sdpfrag::replace_ice_credentials(text, &ufrag, &pwd);
    let fragment = sdpfrag::answer_fragment(&replaced);
    assert!(fragment.ends_with("a=end-of-candidates\r\n"));
    let _ = SdpFrag::parse(&fragment);
}

/// A WHIP PATCH body of many trickled candidates: byte 0 is how many copies of the rest (a
/// candidate line, or anything) the fragment repeats, so fragments reach the caps in a few
/// mutations. What PATCH does with it: `SdpFrag::parse`, then str0m's candidate parser on
/// each accepted line.
pub fn sdpfrag_candidates(data: &[u8]) {
    let Some((&copies, line)) = data.split_first() else { return };
    let Ok(line) = std::str::from_utf8(line) else { return };
    let text = format!("{line}\r\n").repeat(usize::from(copies));
    let Ok(frag) = SdpFrag::parse(&text) else { return };
    assert!(frag.candidates.len() <= sdpfrag::MAX_CANDIDATES, "{} candidates accepted", frag.candidates.len());
    let distinct = auralink::sfu::core::distinct_candidates(&text);
    assert!(distinct <= frag.candidates.len(), "{distinct} distinct of {} parsed", frag.candidates.len());
    for c in &frag.candidates {
        let _ = Candidate::from_sdp_string(c);
    }
}

/// An ICE-TCP byte stream through the RFC 4571 decoder: byte 0 is the size of the reads the
/// rest arrives in. The frames re-encode to the bytes consumed, and the decoder never holds
/// more than one partial frame and one read.
pub fn ice_tcp_framing(data: &[u8]) {
    const MAX_FRAME: usize = 2048;
    let Some((&read, stream)) = data.split_first() else { return };
    let read = usize::from(read).max(1);
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut reencoded = Vec::new();
    for chunk in stream.chunks(read) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME);
                    reencoded.extend(encode_frame(frame).expect("a frame fits its length field"));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() < 2 + MAX_FRAME + read, "decoder holds {} bytes", decoder.buffered());
    }
    assert_eq!(&stream[..reencoded.len()], &reencoded[..], "frames are the stream, in order");
    assert_eq!(reencoded.len() + decoder.buffered(), stream.len(), "no byte lost or invented");
}

/// A router with one UDP host candidate, as the server builds it.
pub fn sfu() -> Sfu {
    Sfu::new(SfuConfig {
        candidates: vec![Candidate::host(SFU_ADDR.parse().expect("an address"), "udp").expect("a host candidate")],
        disconnect_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(30),
        empty_room_timeout: Duration::from_secs(10),
        initial_bwe: Bitrate::kbps(1500),
    })
}

pub fn join_request(identity: &str) -> JoinRequest {
    JoinRequest::new(
        RoomName::new(TOKEN_ROOM).expect("a room name"),
        Identity::new(identity).expect("an identity"),
        Permissions { publish: true, subscribe: true, publish_data: true, hidden: false },
    )
}

/// `Sfu::join` with arbitrary text as the SDP offer, in a fresh router; true if the router
/// accepted it (then its timers run once, too).
pub fn whip_offer(data: &[u8]) -> bool {
    let Ok(offer) = std::str::from_utf8(data) else { return false };
    let now = Instant::now();
    let mut sfu = sfu();
    let joined = sfu.join(now, join_request("fuzz"), offer).is_ok();
    if joined {
        sfu.handle_timeout(now + Duration::from_millis(100));
        while sfu.poll_transmit().is_some() {}
        while sfu.poll_event().is_some() {}
    }
    joined
}

/// What the client in [`Session`] offers: audio and video both ways and a data channel, so
/// every kind of packet has a session to reach.
pub fn client_media() -> Vec<MediaSpec> {
    vec![
        MediaSpec::send(MediaKind::Audio),
        MediaSpec::send(MediaKind::Video),
        MediaSpec::recv(MediaKind::Audio),
        MediaSpec::recv(MediaKind::Video),
    ]
}

/// A valid offer from `auralink::client::Client`.
pub fn valid_offer() -> String {
    Client::new(Instant::now(), CLIENT_ADDR.parse().expect("an address")).offer(&client_media(), Some("chat"))
}

/// A router with one session joined from a `Client` offer, in virtual time, with the client
/// and an in-memory wire to drive it.
pub struct Session {
    pub sfu: Sfu,
    pub client: Client,
    pub now: Instant,
    pub client_addr: SocketAddr,
    pub sfu_addr: SocketAddr,
    /// Every datagram the client sent the router so far (seeds for mutation).
    pub sent_by_client: Vec<Vec<u8>>,
    pub connected: bool,
}

impl Session {
    /// Joins; the session is not connected yet (no ICE, no DTLS).
    pub fn joined() -> Session {
        let now = Instant::now();
        let client_addr: SocketAddr = CLIENT_ADDR.parse().expect("an address");
        let mut client = Client::new(now, client_addr);
        let offer = client.offer(&client_media(), Some("chat"));
        let mut sfu = sfu();
        let (_, answer) = sfu.join(now, join_request("client"), &offer).expect("a client offer is accepted");
        client.accept_answer(&answer.to_sdp_string()).expect("the router's answer is accepted");
        Session {
            sfu,
            client,
            now,
            client_addr,
            sfu_addr: SFU_ADDR.parse().expect("an address"),
            sent_by_client: Vec::new(),
            connected: false,
        }
    }

    /// Joins and runs ICE, DTLS and SCTP until both sides report the session connected.
    pub fn connected() -> Session {
        let mut s = Session::joined();
        for _ in 0..400 {
            s.step(Duration::from_millis(5));
            if s.client.connected && s.connected {
                return s;
            }
        }
        panic!("the in-memory session did not connect");
    }

    /// Moves both sides' output across the wire (no delay, no loss), then time by `d`.
    pub fn step(&mut self, d: Duration) {
        for _ in 0..16 {
            let mut moved = false;
            for t in self.client.poll() {
                moved = true;
                self.sent_by_client.push(t.contents.to_vec());
                self.sfu.handle_datagram(self.now, Protocol::Udp, t.source, t.destination, &t.contents);
            }
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                if let Ok(contents) = DatagramRecv::try_from(&t.contents[..]) {
                    let r = Receive { proto: Protocol::Udp, source: t.source, destination: t.destination, contents };
                    self.client.handle_receive(self.now, r);
                }
            }
            while let Some(e) = self.sfu.poll_event() {
                if matches!(e, SfuEvent::ParticipantConnected { .. }) {
                    self.connected = true;
                }
            }
            if !moved {
                break;
            }
        }
        self.now += d;
        self.client.handle_timeout(self.now);
        self.sfu.handle_timeout(self.now);
    }

    /// The client sends `frames` audio frames and a video frame; their SRTP packets (and any
    /// RTCP) end up in `sent_by_client`.
    pub fn send_media(&mut self, frames: u32) {
        let (audio, video) = (self.client.mids[0], self.client.mids[1]);
        for n in 0..frames {
            let payload: Vec<u8> = (0..80u8).map(|b| b ^ n as u8).collect();
            let _ = self.client.write(audio, None, self.now, MediaTime::from_90khz(n as u64 * 960 * 90 / 48), &payload);
            let _ = self.client.write(
                video,
                None,
                self.now,
                MediaTime::from_90khz(n as u64 * 3000),
                &[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, n as u8],
            );
            self.step(Duration::from_millis(20));
        }
    }

    /// One datagram from the client's address, then 10 ms of the session (the real client
    /// keeps ICE alive) and the router's timers.
    pub fn feed(&mut self, data: &[u8]) {
        self.sfu.handle_datagram(self.now, Protocol::Udp, self.client_addr, self.sfu_addr, data);
        self.step(Duration::from_millis(10));
        self.sent_by_client.clear();
    }

    /// Whether the router still has the session.
    pub fn alive(&self) -> bool {
        !self.sfu.participants(&RoomName::new(TOKEN_ROOM).expect("a room name")).is_empty()
    }
}

/// Inputs a long-lived session takes before it is replaced by a fresh one.
const SESSION_REUSE: u32 = 1_000;

thread_local! {
    /// (connected?, session, inputs fed): setting a session up costs an ICE and DTLS
    /// handshake, far more than one input, so sessions are reused.
    static SESSIONS: std::cell::RefCell<[Option<(Session, u32)>; 2]> = const { std::cell::RefCell::new([None, None]) };
}

/// Arbitrary bytes as a UDP datagram from the client's address, to a router with the client's
/// session joined, then the router's timers. Byte 0's low bit picks whether the session has
/// connected (ICE, DTLS, SCTP done: the datagram then reaches DTLS/SRTP/SCTP inside the
/// session) or is only joined (it reaches demultiplexing and the ICE agent). Sessions are
/// reused for up to `SESSION_REUSE` inputs, or until the router drops them, so sequences of
/// bad datagrams are exercised too; a crash found this way reproduces on a fresh session in
/// all but state-dependent cases (then run the crash file with the preceding corpus).
pub fn datagram(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let connected = (mode & 1) as usize;
    SESSIONS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let slot = &mut slots[connected];
        if slot.as_ref().is_none_or(|(s, n)| *n >= SESSION_REUSE || !s.alive()) {
            let s = if connected == 1 { Session::connected() } else { Session::joined() };
            *slot = Some((s, 0));
        }
        let (session, fed) = slot.as_mut().expect("set above");
        session.feed(bytes);
        *fed += 1;
    });
}

/// A LiveKit client frame: `decode_request`, then what the server does with the parts it
/// parses without a session: data packets through the LiveKit envelope (decode, then encode
/// for another LiveKit client and for a raw one's message).
/// `join_request::decode` on the bytes as the `/rtc/v1` query parameter, and on their URL-safe
/// base64 (so the wrapper, gzip and JoinRequest layers see arbitrary bytes too).
pub fn livekit_join(data: &[u8]) {
    use auralink::signal::livekit::join_request::decode;
    use base64::Engine;
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode(text);
    }
    let _ = decode(&base64::engine::general_purpose::URL_SAFE.encode(data));
}

/// `aic::bitstream::Packet::decode` on arbitrary bytes; what decodes re-encodes to a packet
/// that decodes to the same thing. And a track's whole decoder (libopus and the enhancer,
/// aic-v1's codes, the vocoder), a new one per input so that a crash reproduces from its
/// input alone, given the packet twice (the second time over the state the first left): each
/// time a frame of finite audio or an error.
pub fn aic_packet(data: &[u8]) {
    use auralink::codec::aic::bitstream::{Frame, Packet};
    use auralink::codec::aic::lpc::LpcDecoder;
    use auralink::codec::aic::track::TrackDecoder;
    let mut dec = TrackDecoder::new(aic_models()).expect("a track decoder");
    for _ in 0..2 {
        if let Ok(out) = dec.decode(data) {
            assert_eq!(out.len(), auralink::codec::aic::mdct::HOP);
            assert!(out.iter().all(|s| s.is_finite()));
        }
    }
    if let Ok(p) = Packet::decode(data) {
        let again = p.encode().expect("a decoded packet encodes");
        assert_eq!(Packet::decode(&again).expect("our own packet decodes"), p);
        // Any five bytes are a vocoder frame whose filter is stable.
        if let Frame::Vocoder(params) = p.frame {
            let mut dec = LpcDecoder::default();
            for _ in 0..5 {
                assert!(dec.decode(&params).iter().all(|s| s.is_finite() && s.abs() < 100.0));
            }
        }
    }
}

/// The committed weights (models/aic/, above this crate's folder: the fuzz crate's or the main
/// crate's, whichever builds this file), loaded once.
fn aic_models() -> &'static auralink::codec::aic::track::AicModels {
    use auralink::codec::aic::track::AicModels;
    static MODELS: std::sync::OnceLock<AicModels> = std::sync::OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("models/aic"))
            .find(|d| d.join("aic-v1.safetensors").exists())
            .expect("models/aic/ above the crate");
        let enhancer = dir.join(auralink::codec::aic::train_enhance::WEIGHTS);
        let cpu = auralink::codec::device::Devices::detect().pick(false);
        AicModels::load(&dir.join("aic-v1.safetensors"), &enhancer, &cpu).expect("the committed weights load")
    })
}

pub fn livekit_signal(data: &[u8]) {
    use auralink::sfu::data::DataCodec;
    use auralink::signal::livekit::{LiveKitData, decode_request};
    let _ = decode_request(data);
    let codec = LiveKitData;
    let sender = Identity::new("fuzz").expect("a valid identity");
    for label in ["_reliable", "_lossy"] {
        if let Some(msg) = codec.decode(label, label == "_reliable", data) {
            let (out_label, bytes) =
                codec.encode(&msg, Some((&sender, auralink::ids::ParticipantId(1)))).expect("re-encodes");
            assert_eq!(out_label, label);
            // What the server sends must read back with the sender stamped on it.
            let again = codec.decode(&out_label, true, &bytes).expect("our own packet decodes");
            assert_eq!(again.payload, msg.payload);
        }
    }
}

/// A sequence of LiveKit `AddTrack` and `UpdateParticipantMetadata` requests (and leaves)
/// from three participants, applied as their signal sessions apply them: announcements to the
/// router, descriptions to the node's registry. Nothing grows past its limit, a refused update
/// changes nothing, and once everyone has left the registry holds nothing.
pub fn livekit_describe(data: &[u8]) {
    use std::collections::HashMap;

    use auralink::sfu::core::MAX_ANNOUNCED_TRACKS;
    use auralink::signal::livekit::{ParticipantMeta, Registry, TrackMeta, registry};

    let reg = Registry::default();
    let mut sfu = sfu();
    let now = Instant::now();
    let room = RoomName::new(TOKEN_ROOM).expect("a valid room");
    let join = |sfu: &mut Sfu, reg: &Registry, who: usize| {
        let id = sfu.join_client_offers(now, join_request(&format!("p{who}"))).expect("no room limit");
        reg.set_participant(id, room.clone(), ParticipantMeta::default());
        id
    };
    let mut ids: Vec<_> = (0..3).map(|who| join(&mut sfu, &reg, who)).collect();
    let mut bytes = data.iter().copied();
    while let (Some(op), Some(arg)) = (bytes.next(), bytes.next()) {
        let who = (op as usize / 4) % ids.len();
        let id = ids[who];
        match op % 4 {
            0 => {
                // AddTrack: a client track id among 40, a name up to 1 KiB.
                let cid = format!("cid-{}", arg % 40);
                let name = "n".repeat(arg as usize * 4);
                if let Ok(track) = sfu.announce_track(id, &cid) {
                    let _ = reg.set_track(track, id, TrackMeta { name, ..Default::default() });
                }
            }
            1 | 2 => {
                // UpdateParticipantMetadata: `arg` attributes, set (op 1) or removed (op 2).
                let value = if op % 4 == 1 { "v".repeat(arg as usize) } else { String::new() };
                let attributes: HashMap<String, String> = (0..arg as usize % 80)
                    .map(|i| (format!("k{}", (i * 7 + arg as usize) % 150), value.clone()))
                    .collect();
                let before = reg.participant(id).expect("joined");
                if reg.describe(id, Some("name"), None, &attributes).is_err() {
                    let after = reg.participant(id).expect("joined");
                    assert_eq!(before.attributes, after.attributes, "a refused update changed attributes");
                }
            }
            _ => {
                // Leaves, and joins again as a new participant.
                sfu.remove_participant(now, id, auralink::sfu::LeaveReason::ClientRequest);
                reg.remove_participant(id);
                ids[who] = join(&mut sfu, &reg, who);
            }
        }
        let meta = reg.participant(id);
        if let Some(m) = meta {
            assert!(m.attributes.len() <= registry::MAX_ATTRIBUTES);
            let size: usize = m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(size <= registry::MAX_ATTRIBUTE_BYTES);
        }
        // No m-line ever binds here, so each participant has only its announcements.
        assert!(reg.len().1 <= ids.len() * MAX_ANNOUNCED_TRACKS);
    }
    for id in ids {
        sfu.remove_participant(now, id, auralink::sfu::LeaveReason::ClientRequest);
        reg.remove_participant(id);
    }
    assert_eq!(reg.len(), (0, 0), "everything described went with its participant");
}
