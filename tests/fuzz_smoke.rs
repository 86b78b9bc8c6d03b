//! The fuzz entries (`fuzz/src/lib.rs`, the same functions the cargo-fuzz targets call) over a
//! deterministic corpus: seeded random bytes and mutations of valid tokens, trickle
//! fragments, offers and datagrams. It keeps the parsers exercised in CI without nightly or
//! cargo-fuzz; `fuzz/README.md` says how to fuzz for real.

#[path = "../fuzz/src/lib.rs"]
mod entries;

use entries::Session;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use auralink::signal::token::{self, join_claims};

const CASES: usize = 2_000;

/// Bits, bytes, splices, truncations and repeats: what libFuzzer's default mutators do, more
/// or less, plus values that tend to sit on boundaries.
fn mutate(rng: &mut StdRng, seed: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = v.len();
        match rng.gen_range(0..9) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] = [0x00, 0xff, 0x7f, 0x80, b'.', b'=', b'\n', b'"'][rng.gen_range(0..8)];
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 32));
                v.drain(i..j);
            }
            4 => v.truncate(rng.gen_range(0..=len)),
            5 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                let chunk = v[i..j].to_vec();
                let at = rng.gen_range(0..=v.len());
                v.splice(at..at, chunk);
            }
            6 if !dictionary.is_empty() => {
                let word = dictionary[rng.gen_range(0..dictionary.len())];
                let at = rng.gen_range(0..=len);
                v.splice(at..at, word.iter().copied());
            }
            7 if len >= 2 => {
                // A length or count field set to an extreme.
                let i = rng.gen_range(0..len - 1);
                let x: [u8; 2] = [[0xff, 0xff], [0x00, 0x00], [0x7f, 0xff], [0x80, 0x00]][rng.gen_range(0..4)];
                v[i..i + 2].copy_from_slice(&x);
            }
            _ => {
                let i = rng.gen_range(0..=len);
                v.insert(i, rng.r#gen());
            }
        }
    }
    v
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.r#gen()).collect()
}

/// Random text over an alphabet that hits the parsers' delimiters often.
fn random_text(rng: &mut StdRng, alphabet: &[u8], max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect()
}

fn valid_token(rng: &mut StdRng) -> String {
    let now = entries::TOKEN_NOW - rng.gen_range(0..100);
    let identity = format!("user{}", rng.gen_range(0..1000));
    token::mint(&join_claims(entries::TOKEN_KEY, entries::TOKEN_ROOM, &identity, now, 600), entries::TOKEN_SECRET)
}

#[test]
fn token_entry_survives_mutated_tokens_and_claims() {
    let mut rng = StdRng::seed_from_u64(0x70_4b_e7);
    let dictionary: &[&[u8]] = &[b".", b"eyJ", b"HS256", b"\"alg\"", b"none", b"=", b"{}", b"\"exp\":", b"null"];
    let claims_json =
        serde_json::to_vec(&join_claims(entries::TOKEN_KEY, entries::TOKEN_ROOM, "alice", entries::TOKEN_NOW, 60))
            .unwrap();
    let claims_words: &[&[u8]] = &[
        b"\"exp\":0",
        b"\"nbf\":",
        b"\"video\":{}",
        b"\"iss\":\"APIfuzz\"",
        b"\"roomJoin\":true",
        b"1e3",
        b"-1",
        b"[]",
    ];
    for i in 0..CASES {
        let input = match i % 4 {
            0 => {
                let t = valid_token(&mut rng);
                mutate(&mut rng, t.as_bytes(), dictionary)
            }
            1 => random_text(&mut rng, b"abcXYZ019-_.=+/\"{}:,", 600),
            2 => mutate(&mut rng, &claims_json, claims_words),
            _ => random_bytes(&mut rng, 300),
        };
        entries::token(&input);
    }
    // The unmutated forms are accepted, so the mutations above start from the deep end.
    let verifier = auralink::signal::token::TokenVerifier::new(
        [(entries::TOKEN_KEY.to_string(), entries::TOKEN_SECRET.to_string())].into(),
    );
    assert!(verifier.verify_join(&valid_token(&mut rng), entries::TOKEN_ROOM, entries::TOKEN_NOW).is_ok());
    entries::token(&claims_json);
}

/// A token signed with the right secret whose `exp` is near `u64::MAX` once made
/// `TokenVerifier::verify` overflow `exp + LEEWAY_SECS`.
#[test]
fn token_with_extreme_expiry_does_not_overflow() {
    let mut claims = join_claims(entries::TOKEN_KEY, entries::TOKEN_ROOM, "alice", entries::TOKEN_NOW, 60);
    claims.exp = u64::MAX;
    entries::token(&serde_json::to_vec(&claims).unwrap());
}

#[test]
fn sdpfrag_entry_survives_mutated_fragments() {
    let mut rng = StdRng::seed_from_u64(0x5d_9f);
    let seeds: &[&[u8]] = &[
        b"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=end-of-candidates\r\n",
        b"a=candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host\r\n",
        b"a=ice-ufrag:abcd\na=ice-pwd:0123456789abcdef012345\n",
        b"a=end-of-candidates\r\n",
    ];
    let dictionary: &[&[u8]] = &[
        b"a=ice-ufrag:",
        b"a=ice-pwd:",
        b"a=candidate:",
        b"a=end-of-candidates",
        b"\r\n",
        b"\n",
        b" ",
        b"\xc3\xa9",
        b"+/",
    ];
    for i in 0..CASES {
        let input = match i % 3 {
            0 | 1 => {
                let seed = seeds[rng.gen_range(0..seeds.len())];
                mutate(&mut rng, seed, dictionary)
            }
            _ => random_text(&mut rng, b"a=ice-ufrgpwdcnt:123 \r\n/+", 400),
        };
        entries::sdpfrag(&input);
    }
    entries::sdpfrag("\n".repeat(300).as_bytes());
}

/// Fragments around the candidate cap: copies of real, mutated and random candidate lines.
#[test]
fn sdpfrag_candidates_entry_survives_many_candidates() {
    let mut rng = StdRng::seed_from_u64(0xca_4d);
    let seeds: &[&[u8]] = &[
        b"a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1",
        b"a=candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active",
        b"a=candidate:2 1 udp 1686052607 198.51.100.7 50000 typ srflx raddr 10.0.0.2 rport 50000",
        b"a=end-of-candidates",
    ];
    let dictionary: &[&[u8]] = &[b"a=candidate:", b" typ ", b"host", b"relay", b"\r\n", b"\n", b" raddr ", b"::1"];
    for i in 0..CASES {
        let line = match i % 3 {
            0 | 1 => {
                let seed = seeds[rng.gen_range(0..seeds.len())];
                mutate(&mut rng, seed, dictionary)
            }
            _ => random_text(&mut rng, b"a=cndidtet:0123456789 .udpchosrflxy\r\n", 120),
        };
        // Around the cap most of the time, anywhere otherwise.
        let copies = if i % 2 == 0 { rng.gen_range(60..=70) } else { rng.r#gen::<u8>() };
        let mut input = vec![copies];
        input.extend(line);
        entries::sdpfrag_candidates(&input);
    }
}

/// RFC 4571 streams: well-framed packets, cut into reads of every size, then mutated (lengths
/// set to extremes, bytes spliced in or dropped).
#[test]
fn ice_tcp_framing_entry_survives_mutated_streams() {
    let mut rng = StdRng::seed_from_u64(0x4571);
    let lengths: &[&[u8]] = &[b"\x08\x01", b"\xff\xff", b"\x00\x00"];
    for i in 0..CASES {
        let mut stream = Vec::new();
        for _ in 0..rng.gen_range(0..8) {
            let packet = random_bytes(&mut rng, 1500);
            stream.extend((packet.len() as u16).to_be_bytes());
            stream.extend(packet);
        }
        let mut input = vec![rng.r#gen::<u8>()];
        input.extend(if i % 2 == 0 { stream } else { mutate(&mut rng, &stream, lengths) });
        entries::ice_tcp_framing(&input);
    }
    entries::ice_tcp_framing(&[1, 0xff, 0xff, 0, 0]);
}

/// str0m 0.25.0 asserts in `PayloadParams::update_param` (src/format/payload_params.rs:41,
/// "Pt locked multiple times") on this offer, a mutated client offer whose video m-lines lost
/// their fmtp lines. The router runs SDP through a panic guard, so the offer is refused and
/// the router keeps serving everyone else.
#[test]
fn whip_offer_pt_locked_multiple_times() {
    let offer = include_bytes!("../fuzz/regressions/whip_offer_pt_locked_multiple_times.sdp");
    assert!(!entries::whip_offer(offer));
}

#[test]
fn whip_offer_entry_refuses_garbage_and_survives_mutated_offers() {
    let mut rng = StdRng::seed_from_u64(0x0ff3);
    let offer = entries::valid_offer();
    assert!(entries::whip_offer(offer.as_bytes()), "a client's offer is accepted");
    let dictionary: &[&[u8]] = &[
        b"\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        b"a=rtpmap:",
        b"a=fmtp:",
        b"a=ssrc:",
        b"a=rid:",
        b"a=simulcast:send ",
        b"a=extmap:",
        b"a=group:BUNDLE",
        b"a=mid:",
        b"\r\n",
        b" ",
        b"4294967295",
        b"-1",
        b"0",
    ];
    let lines: Vec<&str> = offer.split("\r\n").collect();
    let mut accepted = 0;
    for i in 0..CASES {
        let input = match i % 4 {
            0 | 1 => mutate(&mut rng, offer.as_bytes(), dictionary),
            2 => {
                // Whole lines dropped, duplicated or swapped: structure-aware mutations.
                let mut l = lines.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let a = rng.gen_range(0..l.len());
                    match rng.gen_range(0..3) {
                        0 => {
                            l.remove(a);
                        }
                        1 => l.insert(a, lines[rng.gen_range(0..lines.len())]),
                        _ => {
                            let b = rng.gen_range(0..l.len());
                            l.swap(a, b);
                        }
                    }
                }
                l.join("\r\n").into_bytes()
            }
            _ => {
                let garbage = random_bytes(&mut rng, 400);
                assert!(!entries::whip_offer(&garbage), "random bytes accepted as an offer");
                continue;
            }
        };
        accepted += entries::whip_offer(&input) as usize;
    }
    // Some mutations still negotiate: the corpus reaches past the SDP parser.
    assert!(accepted > 0);
}

/// Datagrams shaped like each protocol on a router port (RFC 7983 first-byte ranges).
fn shaped_datagram(rng: &mut StdRng) -> Vec<u8> {
    let mut v = random_bytes(rng, 200);
    match rng.gen_range(0..3) {
        0 => {
            // STUN: type, length, magic cookie, transaction id, attributes.
            let mut h = vec![0x00, 0x01, 0x00, (v.len() & 0xfc) as u8, 0x21, 0x12, 0xa4, 0x42];
            h.extend((0..12).map(|_| rng.r#gen::<u8>()));
            h.extend(v);
            h
        }
        1 => {
            // DTLS record: content type 20..=25, DTLS 1.2, epoch, sequence, length.
            let mut h = vec![rng.gen_range(20..=25), 0xfe, 0xfd, 0, rng.gen_range(0..2), 0, 0, 0, 0, 0, rng.r#gen()];
            h.extend_from_slice(&(v.len() as u16).to_be_bytes());
            h.extend(v);
            h
        }
        _ => {
            // RTP/RTCP: version 2, payload type 111 (Opus) or an RTCP type.
            if v.len() < 12 {
                v.resize(12, 0);
            }
            v[0] = 0x80 | (v[0] & 0x3f);
            v[1] = [111, 96, 200, 201, 205, 206][rng.gen_range(0..6)];
            v
        }
    }
}

#[test]
fn datagram_entry_survives_mutated_stun_dtls_and_rtp() {
    let mut rng = StdRng::seed_from_u64(0xda7a);
    // Real datagrams of every kind the client sends: STUN, DTLS handshake, SCTP in DTLS,
    // SRTP audio and video, SRTCP.
    let mut session = Session::connected();
    session.send_media(10);
    let real = std::mem::take(&mut session.sent_by_client);
    assert!(real.iter().any(|d| d.first().is_some_and(|b| (128..=191).contains(b))), "SRTP was captured");
    assert!(real.iter().any(|d| d.first().is_some_and(|b| (20..=63).contains(b))), "DTLS was captured");
    let dictionary: &[&[u8]] =
        &[b"\x21\x12\xa4\x42", b"\xfe\xfd", b"\x00\x06\x00\x10", b"\x80\x6f", b"\x81\xc8", b"\x16\xfe\xfd"];
    for i in 0..CASES {
        let body = match i % 3 {
            0 | 1 => {
                let seed = &real[rng.gen_range(0..real.len())];
                mutate(&mut rng, seed, dictionary)
            }
            _ => shaped_datagram(&mut rng),
        };
        // A fresh session each time is slow (an ICE+DTLS handshake); a tenth of the cases get
        // one, as the fuzz target does, and the rest go to one long-lived connected session,
        // which also covers sequences of bad datagrams.
        if i % 10 == 0 {
            let mut input = vec![(i / 10) as u8 & 1];
            input.extend(&body);
            entries::datagram(&input);
        } else {
            session.feed(&body);
        }
    }
    // The long-lived session still works after all that (or, if the router closed it, it
    // did so deliberately: then a fresh one must).
    let mut after = Session::connected();
    after.send_media(3);
}

/// Writes seed corpora for cargo-fuzz into `fuzz/seeds/<target>/` (see fuzz/README.md).
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/seeds"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let mut rng = StdRng::seed_from_u64(1);
    write("token", "valid", valid_token(&mut rng).as_bytes());
    let claims = join_claims(entries::TOKEN_KEY, entries::TOKEN_ROOM, "alice", entries::TOKEN_NOW, 60);
    write("token", "claims", &serde_json::to_vec(&claims).unwrap());
    write("sdpfrag", "trickle", b"a=candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n");
    write("sdpfrag", "restart", b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n");
    write("sdpfrag_candidates", "host", b"\x41a=candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host");
    write("ice_tcp_framing", "two", b"\x03\x00\x04abcd\x00\x01z");
    write("whip_offer", "client", entries::valid_offer().as_bytes());
    let mut session = Session::connected();
    session.send_media(3);
    for (i, d) in session.sent_by_client.iter().enumerate() {
        let mut input = vec![(d.first().copied().unwrap_or(0) >= 20) as u8];
        input.extend(d);
        write("datagram", &format!("{i:03}"), &input);
    }
}

#[test]
fn livekit_signal_entry_survives_mutated_frames() {
    use livekit_protocol as proto;
    use prost::Message;
    let mut rng = StdRng::seed_from_u64(0x11e5);
    let frames: Vec<Vec<u8>> = vec![
        proto::SignalRequest {
            message: Some(proto::signal_request::Message::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: entries::valid_offer(),
                id: 1,
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        proto::SignalRequest {
            message: Some(proto::signal_request::Message::Trickle(proto::TrickleRequest {
                candidate_init: r#"{"candidate":"candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host","sdpMid":"0"}"#
                    .into(),
                target: 1,
                r#final: false,
            })),
        }
        .encode_to_vec(),
        proto::DataPacket {
            participant_identity: "x".into(),
            destination_identities: vec!["y".into()],
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: b"hello".to_vec(),
                topic: Some("chat".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec(),
    ];
    for i in 0..CASES {
        let input = if i % 4 == 3 {
            random_bytes(&mut rng, 300)
        } else {
            mutate(&mut rng, &frames[i % 3], &[b"\x0a", b"\x12", b"\xff\xff\xff\xff\x0f"])
        };
        entries::livekit_signal(&input);
    }
    assert!(auralink::signal::livekit::decode_request(&frames[0]).is_some());
    assert!(auralink::signal::livekit::decode_request(b"\xff\x00garbage").is_none());
}

#[test]
fn join_request_entry_survives_mutated_wrappers() {
    use livekit_protocol as proto;
    use prost::Message;
    use std::io::Write;
    let join = proto::JoinRequest {
        publisher_offer: Some(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: entries::valid_offer(),
            id: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&join).unwrap();
    let wrappers = [
        proto::WrappedJoinRequest { compression: 1, join_request: gz.finish().unwrap() }.encode_to_vec(),
        proto::WrappedJoinRequest { compression: 0, join_request: join }.encode_to_vec(),
    ];
    let mut rng = StdRng::seed_from_u64(0x701e);
    for i in 0..CASES {
        let input = if i % 4 == 3 {
            random_bytes(&mut rng, 300)
        } else {
            mutate(&mut rng, &wrappers[i % 2], &[b"\x08\x01", b"\x1f\x8b\x08", b"\xff\xff\xff\xff\x0f"])
        };
        entries::livekit_join(&input);
    }
}

#[test]
fn aic_packet_entry_survives_mutated_packets() {
    use auralink::codec::aic::bitstream::{AIC_V1, Frame, OPUS_CORE, Packet, VOCODER_CORE};
    use auralink::codec::modes::Mode;
    let mut rng = StdRng::seed_from_u64(0xa1c);
    let mut seeds: Vec<Vec<u8>> = Mode::ALL
        .into_iter()
        .map(|mode| {
            let frame = Frame::Codes(vec![7u16; AIC_V1.levels(mode)]);
            Packet { mode, model_id: AIC_V1.model_id, sequence: 1, frame }.encode().unwrap()
        })
        .collect();
    let mut opus = vec![0x0b; 31];
    opus[0] = 0x08; // ADAPTIVE's TOC byte
    seeds.push(
        Packet { mode: Mode::Adaptive, model_id: OPUS_CORE, sequence: 1, frame: Frame::Opus(opus) }.encode().unwrap(),
    );
    let vocoder = Frame::Vocoder([0x5a, 0xc3, 0x0f, 0xf0, 0x99]);
    seeds
        .push(Packet { mode: Mode::Aggressive, model_id: VOCODER_CORE, sequence: 2, frame: vocoder }.encode().unwrap());
    for i in 0..CASES {
        let input = if i % 5 == 4 {
            random_bytes(&mut rng, 80)
        } else {
            // Headers of other versions, modes and models.
            mutate(&mut rng, &seeds[i % seeds.len()], &[b"\x84", b"\x98", b"\xa8", b"\x44", b"\xac"])
        };
        entries::aic_packet(&input);
    }
}

#[test]
fn livekit_describe_entry_keeps_limits_over_random_sequences() {
    let mut rng = StdRng::seed_from_u64(0xde5c);
    // Each case joins a few sessions (an Rtc each): fewer cases, longer sequences.
    for i in 0..CASES / 8 {
        // Long runs of one kind of request as well as mixes.
        let len = 2 * rng.gen_range(1..400);
        let input: Vec<u8> = match i % 3 {
            0 => random_bytes(&mut rng, len),
            1 => (0..len).map(|n| if n % 2 == 0 { (rng.r#gen::<u8>() & !3) | 1 } else { rng.r#gen() }).collect(),
            _ => (0..len).map(|n| if n % 2 == 0 { rng.r#gen::<u8>() & !3 } else { rng.r#gen() }).collect(),
        };
        entries::livekit_describe(&input);
    }
}
