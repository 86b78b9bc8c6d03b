//! The room router against str0m clients over an emulated network, one thread, virtual time:
//! media arrives intact, loss is repaired by NACK, simulcast switches cleanly, sessions come
//! and go. Every run is the same run (seeded loss, injected clock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auralink::client::{Client, MediaSpec};
use auralink::ids::{Identity, ParticipantId, RoomName};
use auralink::sfu::Permissions;
use auralink::sfu::core::MAX_GRANT_ENTRIES;
use auralink::sfu::data::{DataCodec, DataMessage};
use auralink::sfu::quality::Quality;
use auralink::sfu::{
    ClientAnswer, JoinRequest, LeaveReason, Negotiation, Offer, Quality as LayerQuality, Sfu, SfuConfig, SfuError,
    SfuEvent, SubscribeFilter, SubscriptionGrant, TapFrame, TapSink,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::Candidate;
use str0m::bwe::Bitrate;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};

const SFU_ADDR: &str = "10.0.0.1:5000";
const ONE_WAY: Duration = Duration::from_millis(10);

struct Packet {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// The SFU, its clients and the wire between them.
struct World {
    now: Instant,
    sfu: Sfu,
    sfu_addr: SocketAddr,
    clients: Vec<(SocketAddr, Client)>,
    /// In flight, in the order sent; each packet is delivered at its own `at`.
    wire: Vec<Packet>,
    /// Capacity of links towards a client, bits per second, and when each link is free again.
    capacity: Vec<(SocketAddr, u64, Instant)>,
    rng: StdRng,
    /// Share of SRTP/SRTCP packets lost (handshakes are spared so tests stay short).
    loss: f64,
    /// Clients whose traffic is black-holed in both directions.
    cut: Vec<usize>,
    events: Vec<SfuEvent>,
    /// The router's id of each client.
    ids: Vec<auralink::ids::ParticipantId>,
    /// Server offers answered by clients.
    offers_answered: usize,
    /// Answers to client-offering sessions, by client, latest last.
    answers: Vec<(usize, ClientAnswer)>,
    /// While set, clients hold `SectionsNeeded` requests here instead of acting on them.
    held_sections: Option<Vec<SfuEvent>>,
}

fn perms() -> Permissions {
    Permissions { publish: true, subscribe: true, publish_data: true, hidden: false }
}

impl World {
    fn new(seed: u64) -> World {
        Self::with_disconnect_timeout(seed, Duration::from_secs(5))
    }

    fn with_disconnect_timeout(seed: u64, disconnect_timeout: Duration) -> World {
        let now = Instant::now();
        let sfu_addr: SocketAddr = SFU_ADDR.parse().unwrap();
        let sfu = Sfu::new(SfuConfig {
            candidates: vec![Candidate::host(sfu_addr, "udp").unwrap()],
            disconnect_timeout,
            connect_timeout: Duration::from_secs(30),
            empty_room_timeout: Duration::from_secs(10),
            initial_bwe: Bitrate::kbps(3000),
        });
        World {
            now,
            sfu,
            sfu_addr,
            clients: Vec::new(),
            wire: Vec::new(),
            capacity: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            cut: Vec::new(),
            events: Vec::new(),
            ids: Vec::new(),
            offers_answered: 0,
            answers: Vec::new(),
            held_sections: None,
        }
    }

    /// Joins a client offering `media` (and a "chat" channel); returns its index.
    fn join(&mut self, identity: &str, media: &[MediaSpec], subscribe: SubscribeFilter) -> usize {
        self.join_with(identity, media, subscribe, Negotiation::Fixed)
    }

    /// As `join`; with `ServerOffers` the server offers m-lines for what it subscribes the
    /// client to, and the client answers at once.
    fn join_with(
        &mut self,
        identity: &str,
        media: &[MediaSpec],
        subscribe: SubscribeFilter,
        negotiation: Negotiation,
    ) -> usize {
        let addr: SocketAddr = format!("10.0.1.{}:6000", self.clients.len() + 1).parse().unwrap();
        let mut c = Client::new(self.now, addr);
        let offer = c.offer(media, Some("chat"));
        let req = JoinRequest {
            subscribe,
            negotiation,
            ..JoinRequest::new(RoomName::new("room").unwrap(), Identity::new(identity).unwrap(), perms())
        };
        let (id, answer) = self.sfu.join(self.now, req, &offer).expect("offer accepted");
        self.ids.push(id);
        c.accept_answer(&answer.to_sdp_string()).expect("answer accepted");
        self.clients.push((addr, c));
        self.clients.len() - 1
    }

    /// Joins a client that does all the offering (LiveKit's single peer connection), first
    /// with `media`; it offers again whenever the router asks, as the SDK does.
    fn join_client_offers(&mut self, identity: &str, media: &[MediaSpec]) -> usize {
        let addr: SocketAddr = format!("10.0.1.{}:6000", self.clients.len() + 1).parse().unwrap();
        let req = JoinRequest::new(RoomName::new("room").unwrap(), Identity::new(identity).unwrap(), perms());
        let id = self.sfu.join_client_offers(self.now, req).expect("admitted");
        self.ids.push(id);
        self.clients.push((addr, Client::new(self.now, addr)));
        let i = self.clients.len() - 1;
        let offer = self.client(i).offer(media, Some("chat"));
        self.answer_client(i, &offer);
        i
    }

    fn answer_client(&mut self, i: usize, offer: &str) {
        let answer = self.sfu.answer_offer(self.now, self.ids[i], offer).expect("offer accepted");
        self.client(i).accept_answer(&answer.sdp).expect("answer accepted");
        self.answers.push((i, answer));
    }

    fn client(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i].1
    }

    fn is_media(data: &[u8]) -> bool {
        // RFC 7983: 128..=191 is RTP/RTCP; STUN and DTLS sit below.
        matches!(data.first(), Some(128..=191))
    }

    fn collect_output(&mut self) {
        while let Some(t) = self.sfu.poll_transmit() {
            self.send(t.source, t.destination, t.contents.to_vec());
        }
        while let Some(e) = self.sfu.poll_event() {
            if let SfuEvent::Offer { participant, sdp } = &e {
                let i = self.ids.iter().position(|x| x == participant).expect("offer for a known client");
                let answer = self.clients[i].1.accept_offer(sdp).expect("client accepts the server's offer");
                self.sfu.handle_answer(self.now, *participant, &answer).expect("router accepts the answer");
                self.offers_answered += 1;
            }
            if let SfuEvent::SectionsNeeded { .. } = &e {
                match &mut self.held_sections {
                    Some(held) => held.push(e.clone()),
                    None => self.act_on_sections(&e),
                }
            }
            self.events.push(e);
        }
        for i in 0..self.clients.len() {
            for t in self.clients[i].1.poll() {
                self.send(t.source, t.destination, t.contents.to_vec());
            }
        }
    }

    /// What a LiveKit client does with a `SectionsNeeded`: offers again with that many more
    /// receiving lines.
    fn act_on_sections(&mut self, e: &SfuEvent) {
        let SfuEvent::SectionsNeeded { participant, audio, video } = e else { return };
        let i = self.ids.iter().position(|x| x == participant).expect("request to a known client");
        let more: Vec<MediaSpec> = std::iter::repeat_n(MediaSpec::recv(MediaKind::Audio), *audio as usize)
            .chain(std::iter::repeat_n(MediaSpec::recv(MediaKind::Video), *video as usize))
            .collect();
        // Nothing to add: str0m re-offers only with a change, and an ICE restart is one.
        let offer = if more.is_empty() { self.client(i).restart_ice() } else { self.client(i).offer(&more, None) };
        self.answer_client(i, &offer);
    }

    /// Clients act on the requests they held, and on new ones at once again.
    fn release_sections(&mut self) {
        for e in self.held_sections.take().unwrap_or_default() {
            self.act_on_sections(&e);
        }
        self.collect_output();
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let cut = self.cut.iter().any(|&i| self.clients[i].0 == from || self.clients[i].0 == to);
        if cut || (Self::is_media(&data) && self.rng.gen_bool(self.loss)) {
            return;
        }
        let mut at = self.now + ONE_WAY;
        if let Some(link) = self.capacity.iter_mut().find(|l| l.0 == to) {
            // A bottleneck: packets queue behind each other; a queue over 300 ms overflows.
            let start = link.2.max(self.now);
            if start > self.now + Duration::from_millis(300) {
                return;
            }
            link.2 = start + Duration::from_secs_f64(data.len() as f64 * 8.0 / link.1 as f64);
            at = link.2 + ONE_WAY;
        }
        self.wire.push(Packet { at, from, to, data });
    }

    /// Runs the network and every timer until `until`.
    fn advance(&mut self, until: Instant) {
        loop {
            self.collect_output();
            let next = [self.wire.iter().map(|p| p.at).min(), self.sfu.poll_timeout()]
                .into_iter()
                .chain(self.clients.iter().map(|c| c.1.poll_timeout()))
                .flatten()
                .min()
                .unwrap_or(until)
                .max(self.now)
                .min(until);
            self.now = next;
            let (due, later): (Vec<Packet>, Vec<Packet>) =
                std::mem::take(&mut self.wire).into_iter().partition(|p| p.at <= self.now);
            self.wire = later;
            for p in due {
                if p.to == self.sfu_addr {
                    self.sfu.handle_datagram(self.now, Protocol::Udp, p.from, p.to, &p.data);
                } else if let Some((_, c)) = self.clients.iter_mut().find(|c| c.0 == p.to) {
                    let contents = DatagramRecv::try_from(p.data.as_slice()).unwrap();
                    c.handle_receive(
                        self.now,
                        Receive { proto: Protocol::Udp, source: p.from, destination: p.to, contents },
                    );
                }
            }
            self.sfu.handle_timeout(self.now);
            for (_, c) in self.clients.iter_mut() {
                c.handle_timeout(self.now);
            }
            if self.now >= until {
                self.collect_output();
                return;
            }
        }
    }

    fn advance_by(&mut self, d: Duration) {
        let until = self.now + d;
        self.advance(until);
    }

    fn connect_all(&mut self) {
        for _ in 0..100 {
            if self.clients.iter().all(|c| c.1.connected) {
                // Let SCTP and the first RTCP settle.
                self.advance_by(Duration::from_millis(300));
                return;
            }
            self.advance_by(Duration::from_millis(50));
        }
        panic!("clients did not connect within 5 s of virtual time");
    }

    fn sending_mids(&self, i: usize) -> Vec<Mid> {
        self.clients[i].1.mids.clone()
    }
}

fn opus_frame(n: u32) -> Vec<u8> {
    let mut v = vec![0xA0u8; 80];
    v[..4].copy_from_slice(&n.to_be_bytes());
    v
}

/// A VP8-looking frame: bit 0 of the first byte clear marks a keyframe. `tag` names the layer.
fn vp8_frame(n: u32, key: bool, tag: u8, len: usize) -> Vec<u8> {
    let mut v = vec![tag; len];
    v[0] = if key { 0x10 } else { 0x11 };
    v[1..5].copy_from_slice(&n.to_be_bytes());
    if key {
        v[5..8].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    }
    v
}

fn payloads(c: &Client, kind_audio: bool) -> Vec<Vec<u8>> {
    c.received.iter().filter(|d| (d.data.len() == 80) == kind_audio).map(|d| d.data.to_vec()).collect()
}

/// Publishes audio and video from alice for `frames` 20 ms ticks (video every other tick,
/// a keyframe every 30 video frames), returning what was sent.
fn publish(w: &mut World, alice: usize, frames: u32) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mids = w.sending_mids(alice);
    let (mut audio, mut video) = (Vec::new(), Vec::new());
    for n in 0..frames {
        let now = w.now;
        let a = opus_frame(n);
        w.client(alice)
            .write(mids[0], None, now, MediaTime::new(n as u64 * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ), &a)
            .unwrap();
        audio.push(a);
        if n % 2 == 0 {
            let v = vp8_frame(n, (n / 2) % 30 == 0, 0x55, 2500);
            w.client(alice).write(mids[1], None, now, MediaTime::from_90khz(n as u64 * 1800), &v).unwrap();
            video.push(v);
        }
        w.advance_by(Duration::from_millis(20));
    }
    w.advance_by(Duration::from_millis(500));
    (audio, video)
}

fn assert_suffix_intact(sent: &[Vec<u8>], got: &[Vec<u8>], min_share: f64, what: &str) {
    assert!(!got.is_empty(), "no {what} received");
    let start = sent.iter().position(|s| s == &got[0]).unwrap_or_else(|| panic!("first {what} frame was never sent"));
    let expected = &sent[start..];
    assert_eq!(got, &expected[..got.len().min(expected.len())], "{what} frames differ from what was sent, in order");
    let share = got.len() as f64 / sent.len() as f64;
    assert!(share >= min_share, "only {:.0}% of {what} frames arrived", share * 100.0);
}

#[test]
fn media_and_data_flow_between_participants() {
    let mut w = World::new(1);
    let alice =
        w.join("alice", &[MediaSpec::send(MediaKind::Audio), MediaSpec::send(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    // Alice is mid-stream (her next keyframe is far off) when Bob arrives.
    publish(&mut w, alice, 10);
    let bob =
        w.join("bob", &[MediaSpec::recv(MediaKind::Audio), MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();

    let (audio, video) = publish(&mut w, alice, 150);
    let b = &w.clients[bob].1;
    assert_suffix_intact(&audio, &payloads(b, true), 0.9, "audio");
    assert_suffix_intact(&video, &payloads(b, false), 0.9, "video");
    assert!(
        !w.clients[alice].1.keyframe_requests.is_empty(),
        "a new video subscriber asks the publisher for a keyframe"
    );
    assert!(
        w.events.iter().any(|e| matches!(e, SfuEvent::TrackPublished { track, .. } if track.kind == MediaKind::Video))
    );

    // Data both ways, each delivered on a channel naming its sender.
    w.client(alice).send_data("chat", b"hello from alice").unwrap();
    w.client(bob).send_data("chat", b"hi alice").unwrap();
    w.advance_by(Duration::from_millis(500));
    let b = &w.clients[bob].1;
    let from_alice =
        b.channels.iter().find(|(_, l, p)| l == "chat" && p == "alice").expect("bob has a channel from alice").0;
    assert!(b.channel_data.iter().any(|d| d.id == from_alice && d.data == b"hello from alice"));
    let a = &w.clients[alice].1;
    let from_bob =
        a.channels.iter().find(|(_, l, p)| l == "chat" && p == "bob").expect("alice has a channel from bob").0;
    assert!(a.channel_data.iter().any(|d| d.id == from_bob && d.data == b"hi alice"));
    assert!(w.sfu.stats().data_messages_relayed >= 2);
    // The server's own message (an API call) goes to whom it names, on a channel of no sender.
    let room = RoomName::new("room").unwrap();
    let msg =
        DataMessage::from_server(b"from the server".to_vec(), "ops".into(), true, vec![Identity::new("bob").unwrap()]);
    let now = w.now;
    assert_eq!(w.sfu.send_data(now, &room, &msg), 1);
    w.advance_by(Duration::from_millis(500));
    let b = &w.clients[bob].1;
    let from_server =
        b.channels.iter().find(|(_, l, p)| l == "ops" && p.is_empty()).expect("bob has the server's channel").0;
    assert!(b.channel_data.iter().any(|d| d.id == from_server && d.data == b"from the server"));
    assert!(!w.clients[alice].1.channels.iter().any(|(_, l, _)| l == "ops"), "alice was not addressed");
    // A clean network rates excellent.
    let alice_id = w.ids[alice];
    assert!(w.events.iter().any(|e| matches!(e, SfuEvent::ConnectionQuality { participant, quality: Quality::Excellent, .. } if *participant == alice_id)));
}

#[test]
fn server_offers_add_and_stop_tracks_for_renegotiating_sessions() {
    let mut w = World::new(23);
    // Bob offers nothing but a data channel; the server offers him what he subscribes to.
    let bob = w.join_with("bob", &[], SubscribeFilter::All, Negotiation::ServerOffers);
    w.connect_all();
    let alice =
        w.join("alice", &[MediaSpec::send(MediaKind::Audio), MediaSpec::send(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    assert_eq!(w.offers_answered, 1, "one offer carries both of alice's tracks");
    let (audio, video) = publish(&mut w, alice, 100);
    let b = &w.clients[bob].1;
    assert_suffix_intact(&audio, &payloads(b, true), 0.9, "audio over an offered m-line");
    assert_suffix_intact(&video, &payloads(b, false), 0.8, "video over an offered m-line");
    // The msid names the publisher and the track, as LiveKit clients expect.
    let room = RoomName::new("room").unwrap();
    let alice_info = w.sfu.participants(&room).into_iter().find(|p| p.identity.as_str() == "alice").unwrap();
    let b = &mut w.clients[bob].1;
    let mids: Vec<Mid> = b.media_added.iter().map(|m| m.mid).collect();
    let msids: Vec<(String, String)> = mids
        .iter()
        .map(|m| {
            let media = b.rtc.media(*m).unwrap();
            (media.stream_id().to_string(), media.track_id().to_string())
        })
        .collect();
    for t in &alice_info.tracks {
        assert!(msids.contains(&(format!("{}|{}", alice_info.id, t.id), t.id.to_string())), "{msids:?}");
    }
    // Alice leaves: the server stops bob's two m-lines in a second offer.
    let now = w.now;
    w.sfu.leave(now, alice_info.id, LeaveReason::ClientRequest).unwrap();
    w.advance_by(Duration::from_millis(200));
    assert_eq!(w.offers_answered, 2);
    assert!(w.sfu.subscriptions(w.ids[bob]).is_empty());
}

#[test]
fn client_offering_sessions_are_asked_for_lines_and_told_what_each_carries() {
    let mut w = World::new(29);
    // Bob has one peer connection and only ever offers; one audio line to start with.
    let bob = w.join_client_offers("bob", &[MediaSpec::recv(MediaKind::Audio)]);
    w.connect_all();
    let alice =
        w.join("alice", &[MediaSpec::send(MediaKind::Audio), MediaSpec::send(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    let bob_id = w.ids[bob];
    // Alice's audio fits the line bob has; for her video he is asked for one more.
    assert!(w.events.contains(&SfuEvent::SectionsNeeded { participant: bob_id, audio: 0, video: 1 }));
    let room = RoomName::new("room").unwrap();
    let alice_info = w.sfu.participants(&room).into_iter().find(|p| p.identity.as_str() == "alice").unwrap();
    let answer = w.answers.last().unwrap().1.clone();
    let mut carried: Vec<_> = answer.tracks.iter().map(|t| t.1).collect();
    carried.sort();
    let mut published: Vec<_> = alice_info.tracks.iter().map(|t| t.id).collect();
    published.sort();
    assert_eq!(carried, published, "the answer maps a line to each of alice's tracks");
    for (mid, track) in &answer.tracks {
        let section = answer.sdp.split("m=").find(|s| s.contains(&format!("a=mid:{mid}\r\n"))).unwrap();
        assert!(section.contains("a=sendonly\r\n"), "{section}");
        assert!(section.contains(&format!("a=msid:{}|{track} {track}\r\n", alice_info.id)), "{section}");
    }
    let (audio, video) = publish(&mut w, alice, 100);
    let b = &w.clients[bob].1;
    assert_suffix_intact(&audio, &payloads(b, true), 0.9, "audio on the client's first line");
    assert_suffix_intact(&video, &payloads(b, false), 0.8, "video on the line it added");

    // Alice leaves: bob offers again and hears that both lines are idle.
    let now = w.now;
    w.sfu.leave(now, alice_info.id, LeaveReason::ClientRequest).unwrap();
    w.advance_by(Duration::from_millis(200));
    assert!(w.events.contains(&SfuEvent::SectionsNeeded { participant: bob_id, audio: 0, video: 0 }));
    let answer = w.answers.last().unwrap().1.clone();
    assert!(answer.tracks.is_empty());
    let audio_mid = w.clients[bob].1.mids[0];
    let section = answer.sdp.split("m=").find(|s| s.contains(&format!("a=mid:{audio_mid}\r\n"))).unwrap();
    assert!(section.contains("a=inactive\r\n") && !section.contains("msid"), "{section}");

    // Once the client knows a line is idle, it carries the next track without a new line.
    let before = w.clients[bob].1.mids.len();
    let carol = w.join("carol", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let answer = w.answers.last().unwrap().1.clone();
    assert_eq!(answer.tracks.len(), 1);
    assert_eq!(answer.tracks[0].0, audio_mid);
    assert_eq!(w.clients[bob].1.mids.len(), before, "no new line was needed");
    let sent = publish_audio(&mut w, carol, 1000, 50);
    let got: Vec<_> = payloads(&w.clients[bob].1, true).into_iter().filter(|p| sent.contains(p)).collect();
    assert_suffix_intact(&sent, &got, 0.8, "carol's audio on the reused line");
}

/// A track that comes while a client still owes the answer to a request for no more lines
/// (only redescribed ones) is asked for once that answer is in: it used to wait for good, the
/// client having been asked for "0 more lines" and never for the one it needed.
#[test]
fn a_track_that_comes_while_a_request_is_out_is_asked_for_after_it() {
    let mut w = World::new(37);
    let bob = w.join_client_offers("bob", &[MediaSpec::recv(MediaKind::Audio)]);
    w.connect_all();
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let bob_id = w.ids[bob];
    let requests = |w: &World| {
        w.events
            .iter()
            .filter(|e| matches!(e, SfuEvent::SectionsNeeded { participant, .. } if *participant == bob_id))
            .count()
    };
    // Alice leaves, so bob is asked to hear that his line is idle; he does not act on it yet,
    // and carol's audio comes meanwhile.
    w.held_sections = Some(Vec::new());
    let now = w.now;
    w.sfu.leave(now, w.ids[alice], LeaveReason::ClientRequest).unwrap();
    w.advance_by(Duration::from_millis(100));
    let carol = w.join("carol", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let asked = requests(&w);
    w.release_sections();
    w.advance_by(Duration::from_millis(200));
    assert!(requests(&w) > asked, "bob is asked again once he answered");
    let answer = w.answers.last().unwrap().1.clone();
    assert_eq!(answer.tracks.len(), 1, "the last answer tells bob his line carries carol's audio");
    let sent = publish_audio(&mut w, carol, 2000, 50);
    let got: Vec<_> = payloads(&w.clients[bob].1, true).into_iter().filter(|p| sent.contains(p)).collect();
    assert_suffix_intact(&sent, &got, 0.8, "carol's audio on bob's line");
}

/// A publisher narrows who may subscribe to its tracks: a session it leaves out loses them
/// and is told; allowed again, it is told and gets them back.
#[test]
fn subscription_grants_take_tracks_away_and_give_them_back() {
    let mut w = World::new(41);
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    let carol = w.join("carol", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    // Dave receives only what he asks for.
    let dave = w.join("dave", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::None);
    w.connect_all();
    publish_audio(&mut w, alice, 0, 10);
    let (alice_id, bob_id, carol_id, dave_id) = (w.ids[alice], w.ids[bob], w.ids[carol], w.ids[dave]);
    let bound = |w: &World, id| w.sfu.subscriptions(id).iter().filter(|s| s.1.is_some()).count();
    assert_eq!((bound(&w, bob_id), bound(&w, carol_id)), (1, 1));
    let track = w.sfu.subscriptions(carol_id)[0].1.unwrap();
    let told = |w: &World, id, allowed| {
        w.events.iter().any(|e| {
            matches!(e, SfuEvent::SubscriptionAllowed { participant, owner, track: t, allowed: a }
            if *participant == id && *owner == alice_id && *t == track && *a == allowed)
        })
    };

    let only_bob = SubscriptionGrant { allowed: [(Identity::new("bob").unwrap(), None)].into() };
    let now = w.now;
    w.sfu.set_subscription_grant(now, alice_id, Some(only_bob)).unwrap();
    w.advance_by(Duration::from_millis(100));
    assert_eq!((bound(&w, bob_id), bound(&w, carol_id)), (1, 0));
    assert!(told(&w, carol_id, false) && !told(&w, bob_id, false));
    // Asking for it explicitly does not get around the grant.
    let now = w.now;
    assert!(w.sfu.set_subscribed(now, carol_id, track, true).is_err());
    assert!(w.sfu.set_subscribed(now, dave_id, track, true).is_err());
    let sent = publish_audio(&mut w, alice, 100, 20);
    let got: Vec<_> = payloads(&w.clients[carol].1, true).into_iter().filter(|p| sent.contains(p)).collect();
    assert!(got.is_empty(), "carol got {} frames she may not have", got.len());

    let now = w.now;
    w.sfu.set_subscription_grant(now, alice_id, None).unwrap();
    w.advance_by(Duration::from_millis(100));
    assert_eq!(bound(&w, carol_id), 1);
    assert!(told(&w, carol_id, true));
    assert_eq!(bound(&w, dave_id), 1, "dave asked for it while refused, and gets it once allowed");
    let sent = publish_audio(&mut w, alice, 200, 50);
    let got: Vec<_> = payloads(&w.clients[carol].1, true).into_iter().filter(|p| sent.contains(p)).collect();
    assert_suffix_intact(&sent, &got, 0.8, "alice's audio to carol, allowed again");
    // A grant is the client's to write, and bounded.
    let huge = SubscriptionGrant {
        allowed: (0..=MAX_GRANT_ENTRIES).map(|i| (Identity::new(format!("p{i}")).unwrap(), None)).collect(),
    };
    let now = w.now;
    assert!(matches!(w.sfu.set_subscription_grant(now, alice_id, Some(huge)), Err(SfuError::LimitExceeded(_))));
}

/// Messages as `<number>|<text>` on a "numbered" channel: a stand-in for a protocol whose
/// reliable messages carry the sender's number (LiveKit's data packets).
#[derive(Debug)]
struct Numbered;

impl DataCodec for Numbered {
    fn decode(&self, label: &str, reliable: bool, data: &[u8]) -> Option<DataMessage> {
        let (n, text) = std::str::from_utf8(data).ok()?.split_once('|')?;
        let mut msg = DataMessage::from_server(text.as_bytes().to_vec(), label.to_string(), reliable, Vec::new());
        msg.sequence = n.parse().ok();
        Some(msg)
    }

    fn encode(&self, msg: &DataMessage, _: Option<(&Identity, ParticipantId)>) -> Option<(String, Vec<u8>)> {
        Some((msg.topic.clone(), msg.payload.clone()))
    }
}

/// A client that resends numbered messages (after a resume) gets each relayed once, and the
/// router can say the highest number it relayed.
#[test]
fn numbered_data_is_relayed_once_per_number() {
    let mut w = World::new(47);
    let addr: SocketAddr = "10.0.1.1:6000".parse().unwrap();
    let mut c = Client::new(w.now, addr);
    let offer = c.offer(&[], Some("chat"));
    let req = JoinRequest {
        data_codec: Some(Arc::new(Numbered)),
        ..JoinRequest::new(RoomName::new("room").unwrap(), Identity::new("alice").unwrap(), perms())
    };
    let (alice_id, answer) = w.sfu.join(w.now, req, &offer).unwrap();
    w.ids.push(alice_id);
    c.accept_answer(&answer.to_sdp_string()).unwrap();
    w.clients.push((addr, c));
    let bob = w.join("bob", &[], SubscribeFilter::All);
    w.connect_all();
    for m in ["1|a", "2|b", "1|a", "2|b", "3|c"] {
        w.client(0).send_data("chat", m.as_bytes()).unwrap();
        w.advance_by(Duration::from_millis(50));
    }
    w.advance_by(Duration::from_millis(500));
    let got: Vec<&[u8]> = w.clients[bob].1.channel_data.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(got, [b"a".as_slice(), b"b", b"c"]);
    assert_eq!(w.sfu.data_sequence(alice_id), 3);
    assert_eq!(w.sfu.data_sequence(w.ids[bob]), 0);
}

#[test]
fn permissions_change_live() {
    let mut w = World::new(31);
    let alice =
        w.join("alice", &[MediaSpec::send(MediaKind::Audio), MediaSpec::send(MediaKind::Video)], SubscribeFilter::All);
    let bob =
        w.join("bob", &[MediaSpec::recv(MediaKind::Audio), MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    publish(&mut w, alice, 20);
    let (alice_id, bob_id) = (w.ids[alice], w.ids[bob]);
    let bound = |w: &World| w.sfu.subscriptions(bob_id).iter().filter(|s| s.1.is_some()).count();
    assert_eq!(bound(&w), 2);
    // Bob may no longer subscribe: his slots empty; allowed again, they fill again.
    let now = w.now;
    let no_subscribe = Permissions { subscribe: false, ..perms() };
    w.sfu.set_permissions(now, bob_id, no_subscribe).unwrap();
    assert_eq!(bound(&w), 0);
    assert_eq!(w.sfu.permissions(bob_id), Some(no_subscribe));
    w.sfu.set_permissions(now, bob_id, perms()).unwrap();
    assert_eq!(bound(&w), 2);
    // Alice may no longer publish: her tracks leave the room.
    w.sfu.set_permissions(now, alice_id, Permissions { publish: false, ..perms() }).unwrap();
    let unpublished =
        std::iter::from_fn(|| w.sfu.poll_event()).filter(|e| matches!(e, SfuEvent::TrackUnpublished { .. })).count();
    assert_eq!(unpublished, 2);
    assert_eq!(bound(&w), 0);
    let room = RoomName::new("room").unwrap();
    assert!(w.sfu.participants(&room).iter().all(|p| p.tracks.is_empty()));
}

#[test]
fn nack_repairs_loss_on_both_legs() {
    let mut w = World::new(7);
    let alice =
        w.join("alice", &[MediaSpec::send(MediaKind::Audio), MediaSpec::send(MediaKind::Video)], SubscribeFilter::All);
    let bob =
        w.join("bob", &[MediaSpec::recv(MediaKind::Audio), MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    // Start clean so the subscriber has its first keyframe, then lose 5% of media packets.
    publish(&mut w, alice, 10);
    w.clients[bob].1.received.clear();
    w.loss = 0.05;
    let (_, video) = publish(&mut w, alice, 300);
    w.loss = 0.0;
    w.advance_by(Duration::from_secs(1));
    let got = payloads(&w.clients[bob].1, false);
    // Multi-packet frames lose a packet often at 5%: without retransmission far fewer arrive.
    assert_suffix_intact(&video, &got, 0.95, "video under loss");
    // The loss shows in the publisher's connection quality.
    let alice_id = w.ids[alice];
    let rated: Vec<Quality> = w
        .events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::ConnectionQuality { participant, quality, .. } if *participant == alice_id => Some(*quality),
            _ => None,
        })
        .collect();
    assert!(rated.iter().any(|q| *q < Quality::Excellent), "5% loss never lowered alice's quality: {rated:?}");
}

fn layer_of(data: &[u8]) -> u8 {
    data[data.len() - 1]
}

/// Sends frames `from..to` of a two-layer simulcast track at 30 fps: "l" frames of `low`
/// bytes and "h" frames of `high` bytes, a keyframe on both every 30 frames.
fn send_simulcast(w: &mut World, who: usize, from: u32, to: u32, (low, high): (usize, usize)) {
    let mid = w.sending_mids(who)[0];
    for n in from..to {
        let now = w.now;
        let key = n % 30 == 0;
        let t = MediaTime::from_90khz(n as u64 * 3000);
        w.client(who).write(mid, Some(Rid::from("l")), now, t, &vp8_frame(n, key, b'L', low)).unwrap();
        w.client(who).write(mid, Some(Rid::from("h")), now, t, &vp8_frame(n, key, b'H', high)).unwrap();
        w.advance_by(Duration::from_millis(33));
    }
}

/// Dynacast: the publisher is told which simulcast qualities are watched: none before anyone
/// subscribes, all up to the highest any subscriber asks for, none again once nobody watches.
#[test]
fn publishers_are_told_which_qualities_are_watched() {
    let mut w = World::new(43);
    let video = MediaSpec { kind: MediaKind::Video, direction: Direction::SendOnly, simulcast: vec!["l", "h"] };
    let alice = w.join("alice", &[video], SubscribeFilter::All);
    w.connect_all();
    let alice_id = w.ids[alice];
    let wanted = |w: &World| {
        w.events
            .iter()
            .filter_map(|e| match e {
                SfuEvent::QualitiesWanted { owner, up_to, .. } if *owner == alice_id => Some(*up_to),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(wanted(&w), [None], "nobody watches yet");
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    send_simulcast(&mut w, alice, 0, 30, (300, 3000));
    assert_eq!(wanted(&w), [None, Some(LayerQuality::High)]);
    let bob_id = w.ids[bob];
    let track = w.sfu.subscriptions(bob_id).into_iter().find_map(|(_, t, _)| t).unwrap();
    let now = w.now;
    w.sfu.set_max_quality(now, bob_id, track, LayerQuality::Low).unwrap();
    w.sfu.set_max_quality(now, bob_id, track, LayerQuality::Low).unwrap();
    w.collect_output();
    assert_eq!(wanted(&w), [None, Some(LayerQuality::High), Some(LayerQuality::Low)], "told once per change");
    w.sfu.set_track_enabled(now, bob_id, track, false).unwrap();
    w.collect_output();
    assert_eq!(wanted(&w).last(), Some(&None), "a paused subscriber watches nothing");
    w.sfu.set_track_enabled(now, bob_id, track, true).unwrap();
    w.collect_output();
    assert_eq!(wanted(&w).last(), Some(&Some(LayerQuality::Low)));
    w.sfu.leave(now, bob_id, LeaveReason::ClientRequest).unwrap();
    w.collect_output();
    assert_eq!(wanted(&w).last(), Some(&None), "nobody watches once bob left");
}

#[test]
fn simulcast_switch_waits_for_keyframe_and_keeps_time_continuous() {
    let mut w = World::new(3);
    let video = MediaSpec { kind: MediaKind::Video, direction: Direction::SendOnly, simulcast: vec!["l", "h"] };
    let alice = w.join("alice", &[video], SubscribeFilter::All);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    let l = Rid::from("l");
    send_simulcast(&mut w, alice, 0, 60, (300, 3000));
    let got: Vec<u8> = w.clients[bob].1.received.iter().map(|d| layer_of(&d.data)).collect();
    assert!(
        got.ends_with(&[b'H'; 10]),
        "the high layer flows when bandwidth allows: {:?}",
        String::from_utf8_lossy(&got)
    );

    let track = w.sfu.subscriptions(w.sfu_participant("bob")).into_iter().find_map(|(_, t, _)| t).unwrap();
    w.clients[alice].1.keyframe_requests.clear();
    let before = w.clients[bob].1.received.len();
    let now = w.now;
    w.sfu.set_max_quality(now, w.sfu_participant("bob"), track, LayerQuality::Low).unwrap();
    w.advance_by(Duration::from_millis(50));
    assert!(
        w.clients[alice].1.keyframe_requests.iter().any(|r| r.rid == Some(l)),
        "switching asks the publisher for a keyframe on the new layer: {:?}",
        w.clients[alice].1.keyframe_requests
    );
    // No keyframe until frame 90: the old layer keeps flowing, then the switch happens on it.
    send_simulcast(&mut w, alice, 61, 120, (300, 3000));
    let after = &w.clients[bob].1.received[before..];
    let first_low = after.iter().position(|d| layer_of(&d.data) == b'L').expect("switched to the low layer");
    assert!(first_low > 0, "the high layer kept flowing until the switch");
    assert!(after[first_low].is_keyframe(), "the first low-layer frame is a keyframe");
    assert!(
        after[first_low..].iter().all(|d| layer_of(&d.data) == b'L'),
        "nothing from the old layer after the switch"
    );
    assert!(after[..first_low].iter().all(|d| layer_of(&d.data) == b'H'));
    // RTP time stays monotonic and about one frame apart across the switch.
    let times: Vec<u64> = after.iter().map(|d| d.time.numer()).collect();
    for pair in times.windows(2) {
        let step = pair[1].wrapping_sub(pair[0]);
        assert!((1..=6000).contains(&step), "RTP time jumped by {step} ticks across the switch");
    }
}

impl World {
    fn sfu_participant(&self, identity: &str) -> auralink::ids::ParticipantId {
        self.sfu
            .participants(&RoomName::new("room").unwrap())
            .into_iter()
            .find(|p| p.identity.as_str() == identity)
            .map(|p| p.id)
            .expect("participant present")
    }
}

#[test]
fn congested_subscriber_drops_to_the_low_layer() {
    let mut w = World::new(21);
    let video = MediaSpec { kind: MediaKind::Video, direction: Direction::SendOnly, simulcast: vec!["l", "h"] };
    let alice = w.join("alice", &[video], SubscribeFilter::All);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    // About 100 kbps and 1.2 Mbps.
    send_simulcast(&mut w, alice, 0, 90, (400, 5000));
    let got: Vec<u8> = w.clients[bob].1.received.iter().map(|d| layer_of(&d.data)).collect();
    assert!(got.ends_with(&[b'H'; 10]), "high layer while the path is wide");
    // Bob's path narrows to 600 kbps: the TWCC estimate falls and the router moves him down.
    let bob_addr = w.clients[bob].0;
    let now = w.now;
    w.capacity.push((bob_addr, 600_000, now));
    w.clients[bob].1.received.clear();
    send_simulcast(&mut w, alice, 90, 540, (400, 5000));
    let got: Vec<u8> = w.clients[bob].1.received.iter().map(|d| layer_of(&d.data)).collect();
    assert!(got.ends_with(&[b'L'; 30]), "low layer under congestion: {}", String::from_utf8_lossy(&got));
}

#[test]
fn lifecycle_leave_timeout_and_empty_room() {
    let mut w = World::new(5);
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    let carol = w.join("carol", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let room = RoomName::new("room").unwrap();
    assert_eq!(w.sfu.participants(&room).len(), 3);
    // bob's single audio slot took the first publisher; when alice leaves it moves to carol.
    let bob_id = w.sfu_participant("bob");
    let alice_track = w.sfu.participants(&room).iter().find(|p| p.identity.as_str() == "alice").unwrap().tracks[0].id;
    assert_eq!(w.sfu.subscriptions(bob_id)[0].1, Some(alice_track));
    let now = w.now;
    w.sfu.leave(now, w.sfu_participant("alice"), LeaveReason::ClientRequest).unwrap();
    w.advance_by(Duration::from_millis(100));
    let carol_track = w.sfu.participants(&room).iter().find(|p| p.identity.as_str() == "carol").unwrap().tracks[0].id;
    assert_eq!(w.sfu.subscriptions(bob_id)[0].1, Some(carol_track));
    assert!(w.events.iter().any(|e| matches!(e, SfuEvent::TrackUnpublished { track, .. } if track.id == alice_track)));
    let _ = alice;

    // carol's network vanishes: ICE consent fails, then the disconnect timeout removes her.
    w.cut.push(carol);
    w.advance_by(Duration::from_secs(30));
    assert!(w.events.iter().any(|e| matches!(e, SfuEvent::ParticipantLeft { identity, reason: LeaveReason::Timeout, .. } if identity.as_str() == "carol")));
    assert_eq!(w.sfu.subscriptions(bob_id)[0].1, None);

    let now = w.now;
    w.sfu.leave(now, bob_id, LeaveReason::ClientRequest).unwrap();
    let _ = bob;
    w.advance_by(Duration::from_secs(11));
    assert!(w.events.iter().any(|e| matches!(e, SfuEvent::RoomClosed { room: r } if *r == room)));
    assert_eq!(w.sfu.rooms().count(), 0);
}

#[test]
fn server_played_participants_publish_like_clients_and_leave_with_their_room() {
    let mut w = World::new(8);
    let room = RoomName::new("room").unwrap();
    let identity = Identity::new("aic:alice").unwrap();
    assert!(matches!(w.sfu.join_local(&room, identity.clone()), Err(SfuError::NoRoom)), "no room yet");
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let bob =
        w.join("bob", &[MediaSpec::recv(MediaKind::Audio), MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let local = w.sfu.join_local(&room, identity.clone()).unwrap();
    let now = w.now;
    let track = w.sfu.publish_local_audio(now, local).unwrap();
    w.advance_by(Duration::from_millis(20));
    let listed = w.sfu.participants(&room).into_iter().find(|p| p.id == local).expect("listed in the room");
    assert!(listed.server && listed.identity == identity && listed.tracks.iter().map(|t| t.id).eq([track]));
    assert!(
        w.events
            .iter()
            .any(|e| matches!(e, SfuEvent::TrackPublished { track: t, .. } if t.id == track && t.owner == local))
    );

    // Its frames reach bob (his second audio line) as a client's would, in order.
    let mut sent = Vec::new();
    for n in 0..100u32 {
        let frame = opus_frame(n);
        let now = w.now;
        w.sfu.write_local(now, track, u64::from(n) * 960, frame.clone().into()).unwrap();
        sent.push(frame);
        w.advance_by(Duration::from_millis(20));
    }
    w.advance_by(Duration::from_millis(200));
    assert_suffix_intact(&sent, &payloads(&w.clients[bob].1, true), 0.95, "server-played audio");
    // Only its own tracks take frames from the server.
    let alice_track = w.sfu.participants(&room).iter().find(|p| p.id == w.ids[alice]).unwrap().tracks[0].id;
    let now = w.now;
    assert!(matches!(w.sfu.write_local(now, alice_track, 0, opus_frame(0).into()), Err(SfuError::NoTrack)));

    // Removed: its track goes with it.
    w.sfu.remove_participant(now, local, LeaveReason::Removed);
    w.advance_by(Duration::from_millis(20));
    let now = w.now;
    assert!(w.events.iter().any(|e| matches!(e, SfuEvent::TrackUnpublished { track: t, .. } if t.id == track)));
    assert!(
        w.events.iter().any(|e| matches!(e, SfuEvent::ParticipantLeft { participant, .. } if *participant == local))
    );
    assert!(w.sfu.participants(&room).iter().all(|p| !p.server));
    assert!(matches!(w.sfu.write_local(now, track, 0, opus_frame(0).into()), Err(SfuError::NoTrack)));

    // One that stays does not keep the room open: it leaves when the room closes.
    let local = w.sfu.join_local(&room, identity).unwrap();
    for id in [w.ids[alice], w.ids[bob]] {
        w.sfu.leave(now, id, LeaveReason::ClientRequest).unwrap();
    }
    w.events.clear();
    w.advance_by(Duration::from_secs(11));
    let left = w
        .events
        .iter()
        .position(|e| matches!(e, SfuEvent::ParticipantLeft { participant, .. } if *participant == local));
    let closed = w.events.iter().position(|e| matches!(e, SfuEvent::RoomClosed { .. }));
    assert!(left.is_some() && left < closed, "{:?}", w.events);
}

#[test]
fn ice_restart_resumes_media_without_losing_subscriptions() {
    let mut w = World::with_disconnect_timeout(13, Duration::from_secs(60));
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    publish_audio(&mut w, alice, 0, 20);

    // Muting stops forwarding for everyone; unmuting resumes it.
    let room = RoomName::new("room").unwrap();
    let track = w.sfu.participants(&room).iter().find(|p| p.identity.as_str() == "alice").unwrap().tracks[0].id;
    let now = w.now;
    w.sfu.set_track_muted(now, track, true).unwrap();
    w.clients[bob].1.received.clear();
    publish_audio(&mut w, alice, 20, 20);
    assert!(w.clients[bob].1.received.is_empty(), "muted audio is not forwarded");
    let now = w.now;
    w.sfu.set_track_muted(now, track, false).unwrap();
    let sent = publish_audio(&mut w, alice, 40, 20);
    assert_suffix_intact(&sent, &payloads(&w.clients[bob].1, true), 0.9, "audio after unmute");
    assert!(w.events.iter().any(|e| *e == SfuEvent::TrackMuted { room: room.clone(), track, muted: true }));

    // Bob's network drops long enough for ICE to give up on the path, but not for the
    // disconnect timeout to remove him.
    w.cut.push(bob);
    w.advance_by(Duration::from_secs(25));
    let bob_id = w.sfu_participant("bob");
    assert!(
        w.events
            .iter()
            .any(|e| *e
                == SfuEvent::ParticipantDisconnected { room: RoomName::new("room").unwrap(), participant: bob_id })
    );
    w.cut.clear();
    let offer = w.client(bob).restart_ice();
    let now = w.now;
    let answer = w.sfu.renegotiate(now, bob_id, &offer).expect("restart offer accepted");
    w.client(bob).accept_answer(&answer.to_sdp_string()).unwrap();
    w.advance_by(Duration::from_secs(2));
    w.clients[bob].1.received.clear();
    let audio = publish_audio(&mut w, alice, 1000, 50);
    assert_eq!(w.sfu_participant("bob"), bob_id, "same session after the restart");
    assert!(!w.events.iter().any(|e| matches!(e, SfuEvent::ParticipantLeft { .. })));
    assert_eq!(
        w.events
            .iter()
            .filter(|e| matches!(e, SfuEvent::ParticipantConnected { participant, .. } if *participant == bob_id))
            .count(),
        2,
        "connected, then reconnected"
    );
    assert_suffix_intact(&audio, &payloads(&w.clients[bob].1, true), 0.9, "audio after ICE restart");
}

#[test]
fn server_ice_restart_reconnects_a_subscriber_connection() {
    let mut w = World::with_disconnect_timeout(17, Duration::from_secs(60));
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    // Bob's connection is server-offered, like a LiveKit subscriber connection.
    let bob = w.join_with("bob", &[], SubscribeFilter::All, Negotiation::ServerOffers);
    w.connect_all();
    publish_audio(&mut w, alice, 0, 20);
    let bob_id = w.sfu_participant("bob");
    w.cut.push(bob);
    w.advance_by(Duration::from_secs(25));
    w.cut.clear();
    // What a LiveKit resume does for the subscriber connection: a server offer with new
    // ICE credentials, which the client answers.
    let answered = w.offers_answered;
    let now = w.now;
    w.sfu.restart_ice(now, bob_id).unwrap();
    w.advance_by(Duration::from_secs(2));
    let offers: Vec<&String> = w
        .events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::Offer { participant, sdp } if *participant == bob_id => Some(sdp),
            _ => None,
        })
        .collect();
    assert_eq!(w.offers_answered, answered + 1, "one restart offer");
    let ufrag = |sdp: &str| sdp.lines().find(|l| l.starts_with("a=ice-ufrag:")).map(str::to_string);
    assert_ne!(ufrag(offers[0]), ufrag(offers[offers.len() - 1]), "fresh ICE credentials");
    w.clients[bob].1.received.clear();
    let audio = publish_audio(&mut w, alice, 1000, 50);
    assert_eq!(w.sfu_participant("bob"), bob_id, "same session after the restart");
    assert_suffix_intact(&audio, &payloads(&w.clients[bob].1, true), 0.9, "audio after a server ICE restart");
}

#[test]
fn tracks_of_another_room_cannot_be_subscribed() {
    let mut w = World::new(19);
    w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let room = RoomName::new("room").unwrap();
    let track = w.sfu.participants(&room)[0].tracks[0].id;
    // Track ids are node-wide and guessable; rooms (and so orgs) still do not share them.
    let now = w.now;
    let other = JoinRequest::new(RoomName::new("org_b:room").unwrap(), Identity::new("mallory").unwrap(), perms());
    let mallory = w.sfu.join_server_offered(now, other).expect("admitted");
    assert!(matches!(w.sfu.set_subscribed(now, mallory, track, true), Err(auralink::sfu::core::SfuError::NoTrack)));
    assert!(w.sfu.subscriptions(mallory).is_empty());
}

fn publish_audio(w: &mut World, who: usize, first: u32, frames: u32) -> Vec<Vec<u8>> {
    let mid = w.sending_mids(who)[0];
    let mut sent = Vec::new();
    for n in first..first + frames {
        let now = w.now;
        let a = opus_frame(n);
        w.client(who)
            .write(mid, None, now, MediaTime::new(n as u64 * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ), &a)
            .unwrap();
        sent.push(a);
        w.advance_by(Duration::from_millis(20));
    }
    w.advance_by(Duration::from_millis(200));
    sent
}

#[test]
fn loud_participant_becomes_active_speaker() {
    let mut w = World::new(17);
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let carol = w.join("carol", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let (ma, mc) = (w.sending_mids(alice)[0], w.sending_mids(carol)[0]);
    for n in 0..100u32 {
        let now = w.now;
        let t = MediaTime::new(n as u64 * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ);
        w.client(alice).write_audio(ma, now, t, &opus_frame(n), -20).unwrap();
        w.client(carol).write_audio(mc, now, t, &opus_frame(n), -110).unwrap();
        w.advance_by(Duration::from_millis(20));
    }
    let alice_id = w.sfu_participant("alice");
    let last = w.events.iter().rev().find_map(|e| match e {
        SfuEvent::SpeakersChanged { speakers, .. } => Some(speakers.iter().map(|s| s.participant).collect::<Vec<_>>()),
        _ => None,
    });
    assert_eq!(last, Some(vec![alice_id]), "alice (−20 dBov) speaks, carol (−110 dBov) does not");
}

#[test]
fn garbage_datagrams_do_not_disturb_sessions() {
    let mut w = World::new(9);
    let alice =
        w.join("alice", &[MediaSpec::send(MediaKind::Audio), MediaSpec::send(MediaKind::Video)], SubscribeFilter::All);
    let bob =
        w.join("bob", &[MediaSpec::recv(MediaKind::Audio), MediaSpec::recv(MediaKind::Video)], SubscribeFilter::All);
    w.connect_all();
    let mut rng = StdRng::seed_from_u64(11);
    let stranger: SocketAddr = "10.9.9.9:1".parse().unwrap();
    let alice_addr = w.clients[alice].0;
    for i in 0..2000 {
        let len = rng.gen_range(0..1500);
        let mut data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        // Steer some into each demux branch: STUN, DTLS, RTP/RTCP.
        if let Some(b) = data.first_mut() {
            *b = [0u8, 1, 22, 23, 128, 144, 200, *b][i % 8];
        }
        let from = if i % 2 == 0 { stranger } else { alice_addr };
        let now = w.now;
        w.sfu.handle_datagram(now, Protocol::Udp, from, w.sfu_addr, &data);
    }
    assert!(w.sfu.stats().datagrams_unrouted + w.sfu.stats().datagrams_malformed > 0);
    let (audio, _) = publish(&mut w, alice, 50);
    assert_suffix_intact(&audio, &payloads(&w.clients[bob].1, true), 0.9, "audio after garbage");
}

/// Records what it is offered; `full` turns it into a consumer that is always behind.
struct TestTap {
    got: std::sync::Arc<std::sync::Mutex<Vec<TapFrame>>>,
    answer: Offer,
}

impl TapSink for TestTap {
    fn offer(&mut self, frame: TapFrame) -> Offer {
        self.got.lock().unwrap().push(frame);
        self.answer
    }
}

fn audio_track(w: &World) -> auralink::ids::TrackId {
    w.events
        .iter()
        .find_map(|e| match e {
            SfuEvent::TrackPublished { track, .. } if track.kind == MediaKind::Audio => Some(track.id),
            _ => None,
        })
        .expect("an audio track was published")
}

#[test]
fn audio_taps_get_copies_and_taps_that_fall_behind_lose_frames_not_forwarding() {
    let mut w = World::new(31);
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    publish_audio(&mut w, alice, 0, 5);
    let track = audio_track(&w);
    let tap = |answer| {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (Box::new(TestTap { got: got.clone(), answer }), got)
    };
    let (taken, copies) = tap(Offer::Taken);
    let (behind, offered_behind) = tap(Offer::Full);
    let (gone, offered_gone) = tap(Offer::Closed);
    for sink in [taken, behind, gone] {
        w.sfu.add_tap(track, sink).unwrap();
    }
    assert_eq!(
        w.sfu.add_tap(auralink::ids::TrackId(u64::MAX), tap(Offer::Taken).0).unwrap_err().code(),
        "track_not_found"
    );

    let before = w.clients[bob].1.received.len();
    let sent = publish_audio(&mut w, alice, 5, 100);
    let got: Vec<Vec<u8>> = w.clients[bob].1.received[before..].iter().map(|d| d.data.to_vec()).collect();
    assert_eq!(got, sent, "bob gets every frame while one tap is behind");

    let copies = copies.lock().unwrap();
    assert_eq!(
        copies.iter().map(|f| f.data.to_vec()).collect::<Vec<_>>(),
        sent,
        "the tap sees each frame once, in order"
    );
    assert!(copies.windows(2).all(|p| p[1].rtp_time == p[0].rtp_time + 960), "RTP time advances 20 ms a frame");
    assert!(copies.iter().all(|f| f.track == track && f.identity.as_str() == "alice" && f.room.as_str() == "room"));
    assert_eq!(offered_behind.lock().unwrap().len(), 100);
    assert_eq!(offered_gone.lock().unwrap().len(), 1, "a closed tap is removed after it says so");
    assert_eq!(w.sfu.stats().tap_frames, 100);
    assert_eq!(w.sfu.stats().tap_frames_dropped, 100);
}

#[test]
fn a_stuck_pipeline_stage_does_not_delay_forwarding() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use auralink::codec::opus::{FRAME_SAMPLES, OpusEncoder};
    use auralink::pipeline::{self, PcmFrame, PipelineStats, Stage, TrackPipeline};

    /// Blocks on its first frame until the test lets it go, then counts.
    struct Stuck {
        release: std::sync::mpsc::Receiver<()>,
        seen: Arc<AtomicUsize>,
    }
    impl Stage for Stuck {
        fn process(&mut self, _: &PcmFrame<'_>) {
            if self.seen.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = self.release.recv();
            }
        }
    }

    // Real Opus, so that the pipeline decodes every frame.
    let mut enc = OpusEncoder::new(24_000).unwrap();
    let packets: Vec<Vec<u8>> = (0..150)
        .map(|n| {
            let pcm: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|i| 0.3 * ((n * FRAME_SAMPLES + i) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin())
                .collect();
            enc.encode(&pcm).unwrap()
        })
        .collect();
    // Each frame's latency to bob in virtual time, and the pipeline's counters.
    let run = |stuck: bool| {
        let mut w = World::new(37);
        let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
        let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
        w.connect_all();
        let mid = w.sending_mids(alice)[0];
        let seen = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(PipelineStats::default());
        let (release, rx) = std::sync::mpsc::channel();
        let mut sent_at = Vec::new();
        for (n, p) in packets.iter().enumerate() {
            if n == 1 && stuck {
                let stage = Stuck { release: rx, seen: seen.clone() };
                let pipe = TrackPipeline::new(vec![Box::new(stage)], stats.clone()).unwrap();
                w.sfu.add_tap(audio_track(&w), Box::new(pipeline::spawn(pipe).unwrap())).unwrap();
                break;
            }
            let now = w.now;
            w.client(alice)
                .write(mid, None, now, MediaTime::new(n as u64 * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ), p)
                .unwrap();
            sent_at.push(now);
            w.advance_by(Duration::from_millis(20));
        }
        for (n, p) in packets.iter().enumerate().skip(sent_at.len()) {
            let now = w.now;
            w.client(alice)
                .write(mid, None, now, MediaTime::new(n as u64 * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ), p)
                .unwrap();
            sent_at.push(now);
            w.advance_by(Duration::from_millis(20));
        }
        w.advance_by(Duration::from_millis(500));
        let latencies: Vec<(usize, Duration)> = w.clients[bob]
            .1
            .received
            .iter()
            .map(|d| {
                let n = packets.iter().position(|p| p[..] == d.data[..]).expect("bob gets frames alice sent");
                (n, d.network_time - sent_at[n])
            })
            .collect();
        let tap = (w.sfu.stats().tap_frames, w.sfu.stats().tap_frames_dropped);
        // Let the stage go and end the pipeline (dropping the router drops its tap).
        let _ = release.send(());
        drop(w);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let counts = || {
            let (d, c) = (stats.frames_decoded.load(Ordering::SeqCst), stats.frames_concealed.load(Ordering::SeqCst));
            (seen.load(Ordering::SeqCst) as u64, d, c)
        };
        while std::time::Instant::now() < deadline {
            let (s, d, c) = counts();
            if d >= tap.0 && s >= d + c {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (seen, decoded, concealed) = counts();
        (latencies, tap, seen, decoded, concealed)
    };
    let (plain, no_tap, ..) = run(false);
    let (tapped, (taken, dropped), seen, decoded, concealed) = run(true);
    assert_eq!(no_tap, (0, 0));
    assert_eq!(tapped.len(), packets.len(), "bob got every frame");
    assert_eq!(tapped, plain, "each frame reached bob at the same virtual time as without the pipeline");
    assert_eq!(taken + dropped, 149, "every frame after the tap was offered once");
    // One frame in the stuck stage, a queue's worth waiting, the rest dropped and counted.
    assert!((pipeline::QUEUE_FRAMES as u64..=pipeline::QUEUE_FRAMES as u64 + 1).contains(&taken), "{taken} taken");
    assert_eq!(decoded, taken, "once released, the pipeline decoded every frame it was given");
    // When the pipeline thread takes its first frame late, a later frame fills the freed slot
    // and the pipeline conceals the dropped ones between: the stage runs on those too.
    assert_eq!(seen, decoded + concealed, "the stage ran on every decoded and concealed frame");
}

fn left(w: &World, id: auralink::ids::ParticipantId) -> Option<LeaveReason> {
    w.events.iter().find_map(|e| match e {
        SfuEvent::ParticipantLeft { participant, reason, .. } if *participant == id => Some(*reason),
        _ => None,
    })
}

#[test]
fn sessions_that_never_connect_end_at_the_connect_deadline() {
    let mut w = World::new(23);
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    // Alice's offer arrives, and nothing of her ever does (no STUN reaches the router).
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    w.cut.push(alice);
    // A session the server offers to and nobody answers (a LiveKit subscriber whose client
    // went away before its first answer).
    let now = w.now;
    let req = JoinRequest::new(RoomName::new("room").unwrap(), Identity::new("ghost").unwrap(), perms());
    let ghost = w.sfu.join_server_offered(now, req).expect("admitted");
    w.advance_by(Duration::from_secs(29));
    assert_eq!(left(&w, w.ids[alice]), None, "still within the deadline");
    assert_eq!(left(&w, ghost), None);
    w.advance_by(Duration::from_secs(2));
    assert_eq!(left(&w, w.ids[alice]), Some(LeaveReason::Timeout));
    assert_eq!(left(&w, ghost), Some(LeaveReason::Timeout));
    // A connected session has no such deadline.
    w.advance_by(Duration::from_secs(60));
    assert_eq!(left(&w, w.ids[bob]), None);
    assert_eq!(w.sfu.gauges().1, 1, "only bob's session is left");
}

#[test]
fn room_limits_apply_to_new_participants_only() {
    let mut w = World::new(29);
    let room = RoomName::new("room").unwrap();
    let limits = auralink::sfu::core::RoomLimits { max_participants: 2, empty_timeout: Some(Duration::from_secs(1)) };
    let req =
        |who: &str| JoinRequest { limits, ..JoinRequest::new(room.clone(), Identity::new(who).unwrap(), perms()) };
    let now = w.now;
    let alice = w.sfu.join_client_offers(now, req("alice")).expect("room for alice");
    w.sfu.join_client_offers(now, req("bob")).expect("room for bob");
    assert!(matches!(w.sfu.join_client_offers(now, req("carol")), Err(SfuError::RoomFull)));
    assert!(matches!(w.sfu.join_server_offered(now, req("carol")), Err(SfuError::RoomFull)));
    // Another connection of a participant in the room is not a new participant.
    let second = JoinRequest { participant: Some(alice), ..req("alice") };
    w.sfu.join_server_offered(now, second).expect("alice's second connection");
    assert_eq!(w.sfu.participants(&room).len(), 2);
    w.sfu.remove_participant(now, alice, LeaveReason::ClientRequest);
    w.sfu.join_client_offers(now, req("carol")).expect("alice's place");
    // Empty, the room closes after its own timeout (1 s), not the node's (10 s).
    for p in w.sfu.participants(&room) {
        w.sfu.remove_participant(now, p.id, LeaveReason::ClientRequest);
    }
    w.advance_by(Duration::from_millis(1500));
    assert!(w.events.iter().any(|e| matches!(e, SfuEvent::RoomClosed { room: r } if *r == room)));
}

#[test]
fn candidates_and_announced_tracks_are_limited_per_connection() {
    let mut w = World::new(31);
    let alice = w.join("alice", &[MediaSpec::send(MediaKind::Audio)], SubscribeFilter::All);
    let id = w.ids[alice];
    let now = w.now;
    // The offer's own candidates count, then the trickled ones, up to the limit.
    let max = auralink::sfu::core::MAX_REMOTE_CANDIDATES;
    let mut accepted = 0;
    for n in 0..=max {
        let addr: SocketAddr = format!("10.9.{}.{}:7000", n / 200, n % 200 + 1).parse().unwrap();
        match w.sfu.add_remote_candidate(now, id, Candidate::host(addr, "udp").unwrap()) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(matches!(e, SfuError::LimitExceeded(_)), "{e}");
                break;
            }
        }
    }
    assert!((max - 4..max).contains(&accepted), "{accepted} trickled beside the offer's");
    // An offer that carries more than the limit is refused whole.
    let extra: String =
        (0..=max).map(|n| format!("a=candidate:{n} 1 udp 2113937151 10.8.0.{} 9 typ host\r\n", n % 250 + 1)).collect();
    let crowded = format!("{}{extra}", w.client(alice).restart_ice());
    assert!(matches!(w.sfu.renegotiate(now, id, &crowded), Err(SfuError::LimitExceeded(_))));
    for n in 0..auralink::sfu::core::MAX_ANNOUNCED_TRACKS {
        w.sfu.announce_track(id, &format!("track-{n}")).expect("within the limit");
    }
    assert!(matches!(w.sfu.announce_track(id, "track-x"), Err(SfuError::LimitExceeded(_))));
    let again = w.sfu.announce_track(id, "track-0").expect("announcing a track again is no new track");
    assert_eq!(w.sfu.announce_track(id, "track-0").unwrap(), again);
    // The session still works.
    w.connect_all();
    assert!(w.clients[alice].1.connected);
}

#[test]
fn hidden_participants_are_flagged_and_not_subscribed_to_unasked() {
    let mut w = World::new(37);
    let addr: SocketAddr = "10.0.1.1:6000".parse().unwrap();
    let mut c = Client::new(w.now, addr);
    let offer = c.offer(&[MediaSpec::send(MediaKind::Audio)], Some("chat"));
    let hidden = Permissions { hidden: true, ..perms() };
    let req = JoinRequest::new(RoomName::new("room").unwrap(), Identity::new("recorder").unwrap(), hidden);
    let (id, answer) = w.sfu.join(w.now, req, &offer).unwrap();
    c.accept_answer(&answer.to_sdp_string()).unwrap();
    w.ids.push(id);
    w.clients.push((addr, c));
    let bob = w.join("bob", &[MediaSpec::recv(MediaKind::Audio)], SubscribeFilter::All);
    w.connect_all();
    let room = RoomName::new("room").unwrap();
    let all = w.sfu.participants(&room);
    let recorder = all.iter().find(|p| p.identity.as_str() == "recorder").unwrap();
    assert!(recorder.hidden && recorder.tracks.len() == 1);
    assert!(!all.iter().find(|p| p.identity.as_str() == "bob").unwrap().hidden);
    assert_eq!(w.sfu.subscriptions(w.ids[bob])[0].1, None, "bob is not given the hidden participant's track");
}
