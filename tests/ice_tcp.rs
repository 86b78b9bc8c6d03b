//! ICE over TCP (RFC 6544, RFC 4571 framing) through the real server: a publisher that can
//! only reach the SFU's passive TCP candidate is heard by a subscriber on UDP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use auralink::client::{Client, MediaSpec};
use auralink::config::Config;
use auralink::sfu::signal::token::{join_claims, mint};
use str0m::Candidate;
use str0m::media::{Frequency, MediaKind, MediaTime};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const SECRET: &str = "ice-tcp-test-secret-0123456789abcdef";

async fn post(http: &reqwest::Client, url: String, token: &str, offer: String) -> String {
    let r =
        http.post(url).bearer_auth(token).header("content-type", "application/sdp").body(offer).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.text().await.unwrap()
}

fn token(identity: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    mint(&join_claims("APItcp", "tcproom", identity, now, 600), SECRET)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_over_ice_tcp_reaches_udp_subscriber() {
    let mut config = Config::loopback(std::env::temp_dir().join(format!("auralink-icetcp-{}", std::process::id())));
    config.keys = [("APItcp".to_string(), SECRET.to_string())].into_iter().collect();
    config.secret_key = Some(auralink::api::secrets::SecretBox::generate_key());
    let server = auralink::server::start(config).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    let http = reqwest::Client::new();

    // Publisher: TCP only. Connect first so the active candidate carries the real address.
    let stream = TcpStream::connect(server.tcp_addrs[0]).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let tcp_local = stream.local_addr().unwrap();
    let cand = Candidate::builder().tcp().host(tcp_local).tcptype(TcpType::Active).build().unwrap();
    let mut publisher = Client::with_candidate(Instant::now(), cand);
    let offer = publisher.offer(&[MediaSpec::send(MediaKind::Audio)], None);
    assert!(!offer.contains(" udp "), "the publisher offers TCP only");
    let answer = post(&http, format!("{base}/whip/tcproom"), &token("pub"), offer).await;
    publisher.accept_answer(&answer).unwrap();

    // Subscriber: UDP.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_local = udp.local_addr().unwrap();
    let mut subscriber = Client::new(Instant::now(), udp_local);
    let offer = subscriber.offer(&[MediaSpec::recv(MediaKind::Audio)], None);
    let answer = post(&http, format!("{base}/whep/tcproom/pub"), &token("sub"), offer).await;
    subscriber.accept_answer(&answer).unwrap();

    let (mut rd, mut wr) = stream.into_split();
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(async move {
        loop {
            let mut len = [0u8; 2];
            if rd.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            if rd.read_exact(&mut buf).await.is_err() || frames_tx.send(buf).await.is_err() {
                return;
            }
        }
    });
    let server_tcp = server.tcp_addrs[0];
    let mid = publisher.mids[0];
    let mut sent = 0u32;
    let mut next_frame = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline && subscriber.frames_received < 50 {
        // Outgoing: publisher over TCP (framed), subscriber over UDP.
        for t in publisher.poll() {
            assert_eq!(t.proto, Protocol::Tcp);
            let len = (t.contents.len() as u16).to_be_bytes();
            wr.write_all(&len).await.unwrap();
            wr.write_all(&t.contents).await.unwrap();
        }
        for t in subscriber.poll() {
            udp.send_to(&t.contents, t.destination).await.unwrap();
        }
        let now = Instant::now();
        if publisher.connected && now >= next_frame {
            let time = MediaTime::new(sent as u64 * 960, Frequency::FORTY_EIGHT_KHZ);
            publisher.write(mid, None, now, time, &[sent as u8; 60]).unwrap();
            sent += 1;
            next_frame = now + Duration::from_millis(20);
            continue;
        }
        let wake = [publisher.poll_timeout(), subscriber.poll_timeout(), Some(next_frame)]
            .into_iter()
            .flatten()
            .min()
            .unwrap()
            .max(now + Duration::from_millis(1));
        tokio::select! {
            f = frames_rx.recv() => {
                let data = f.expect("the server keeps the TCP connection open");
                let contents = DatagramRecv::try_from(data.as_slice()).unwrap();
                publisher.handle_receive(Instant::now(), Receive { proto: Protocol::Tcp, source: server_tcp, destination: tcp_local, contents });
            }
            r = udp.recv_from(&mut buf) => {
                let (n, src): (usize, SocketAddr) = r.unwrap();
                let contents = DatagramRecv::try_from(&buf[..n]).unwrap();
                subscriber.handle_receive(Instant::now(), Receive { proto: Protocol::Udp, source: src, destination: udp_local, contents });
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let now = Instant::now();
                publisher.handle_timeout(now);
                subscriber.handle_timeout(now);
            }
        }
    }
    assert!(publisher.connected, "ICE-TCP and DTLS came up");
    assert!(subscriber.frames_received >= 50, "subscriber got {} of {sent} frames", subscriber.frames_received);
    let first = subscriber.received[0].data[0] as u32;
    for (i, d) in subscriber.received.iter().enumerate() {
        assert_eq!(&d.data[..], &[(first + i as u32) as u8; 60][..], "frames arrive intact and in order");
    }
    server.shutdown().await;
}
