//! ICE over TCP (RFC 6544, RFC 4571 framing) through the real server: a publisher that can
//! only reach the SFU's passive TCP candidate is heard by a subscriber on UDP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use auralink::client::{Client, MediaSpec};
use auralink::config::Config;
use auralink::ids::{Identity, RoomName};
use auralink::sfu::Permissions;
use auralink::sfu::driver::{self, SfuHandle};
use auralink::sfu::ice_tcp::{IceTcpLimits, IceTcpStats};
use auralink::sfu::{JoinRequest, Sfu, SfuConfig};
use auralink::signal::token::{join_claims, mint};
use str0m::Candidate;
use str0m::bwe::Bitrate;
use str0m::media::{Frequency, MediaKind, MediaTime};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

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
    config.secret_key = Some(auralink::secrets::SecretBox::generate_key());
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

    let (mut frames_rx, mut wr) = framed(stream);
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

/// The frames the server sends on `stream` (the channel closes when the server closes the
/// connection), and the half to write on.
fn framed(stream: TcpStream) -> (mpsc::Receiver<Vec<u8>>, OwnedWriteHalf) {
    let (mut rd, wr) = stream.into_split();
    let (frames_tx, frames_rx) = mpsc::channel::<Vec<u8>>(256);
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
    (frames_rx, wr)
}

/// A router task over one ICE-TCP listener on 127.0.0.1, without HTTP.
async fn tcp_router(limits: IceTcpLimits) -> (SfuHandle, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let candidate = Candidate::builder().tcp().host(addr).tcptype(TcpType::Passive).build().unwrap();
    let sfu = Sfu::new(SfuConfig {
        candidates: vec![candidate],
        disconnect_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(30),
        empty_room_timeout: Duration::from_secs(10),
        initial_bwe: Bitrate::kbps(1500),
    });
    (driver::spawn(sfu, Vec::new(), vec![listener], limits), addr)
}

async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// True if the server closes `stream` within `wait` (what it sends meanwhile is skipped).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 2048];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    timeout(wait, closed).await.is_ok()
}

async fn stats_until(sfu: &SfuHandle, what: &str, done: impl Fn(&IceTcpStats) -> bool) -> IceTcpStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = sfu.ice_tcp_stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_connections_are_capped_per_address_and_per_node() {
    let limits = IceTcpLimits { max_connections: 3, max_per_ip: 2, ..IceTcpLimits::default() };
    let (sfu, server) = tcp_router(limits).await;
    let short = Duration::from_millis(300);
    let mut a1 = connect_from([127, 0, 0, 1], server).await;
    let mut a2 = connect_from([127, 0, 0, 1], server).await;
    let mut a3 = connect_from([127, 0, 0, 1], server).await;
    assert!(closed_within(&mut a3, Duration::from_secs(2)).await, "a third connection from one address is closed");
    let mut b1 = connect_from([127, 0, 0, 2], server).await;
    let mut b2 = connect_from([127, 0, 0, 2], server).await;
    assert!(closed_within(&mut b2, Duration::from_secs(2)).await, "a fourth connection on the node is closed");
    for (name, c) in [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)] {
        assert!(!closed_within(c, short).await, "{name} is within the limits and stays");
    }
    let stats = stats_until(&sfu, "two refused", |s| s.refused == 2).await;
    assert_eq!(stats.open, 3);
    // A closed connection gives its place back.
    drop(a1);
    stats_until(&sfu, "a1 released", |s| s.open == 2).await;
    let mut a4 = connect_from([127, 0, 0, 1], server).await;
    assert!(!closed_within(&mut a4, short).await, "a1's place is free again");
    assert_eq!(sfu.ice_tcp_stats().refused, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_connections_no_session_accepts_are_closed() {
    let limits = IceTcpLimits { first_stun: Duration::from_millis(300), ..IceTcpLimits::default() };
    let (sfu, server) = tcp_router(limits).await;
    let mut silent = TcpStream::connect(server).await.unwrap();
    // Well framed, but nothing a session accepts, sent more often than the deadline.
    let (mut chatty, mut chatty_writer) = framed(TcpStream::connect(server).await.unwrap());
    let chatter = tokio::spawn(async move {
        let frame = [0u8, 4, 0x00, 0x01, 0x00, 0x00];
        while chatty_writer.write_all(&frame).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "a silent connection is closed");
    let chatty_closed = timeout(Duration::from_secs(3), async { while chatty.recv().await.is_some() {} }).await;
    assert!(chatty_closed.is_ok(), "frames no session accepts do not keep a connection");
    timeout(Duration::from_secs(3), chatter).await.expect("writes fail once closed").unwrap();
    stats_until(&sfu, "both timed out", |s| s.timed_out == 2).await;

    // A frame longer than any packet ends the connection when its length is read.
    let mut long = TcpStream::connect(server).await.unwrap();
    long.write_all(&[0xff, 0xff, 0, 0]).await.unwrap();
    assert!(closed_within(&mut long, Duration::from_secs(2)).await, "an oversized frame closes the connection");
    let stats = stats_until(&sfu, "all closed", |s| s.open == 0).await;
    assert_eq!(stats.frames_too_long, 1);
}

/// A client of the router over ICE-TCP only, driven until `until` or until the server
/// closes the connection (false).
async fn pump(
    client: &mut Client,
    frames: &mut mpsc::Receiver<Vec<u8>>,
    wr: &mut OwnedWriteHalf,
    until: Instant,
) -> bool {
    let (local, server) = (wr.local_addr().unwrap(), wr.peer_addr().unwrap());
    while Instant::now() < until {
        for t in client.poll() {
            let len = (t.contents.len() as u16).to_be_bytes();
            if wr.write_all(&len).await.is_err() || wr.write_all(&t.contents).await.is_err() {
                return false;
            }
        }
        let wake = client.poll_timeout().unwrap_or(until).min(until).max(Instant::now() + Duration::from_millis(1));
        tokio::select! {
            f = frames.recv() => {
                let Some(data) = f else { return false };
                let contents = DatagramRecv::try_from(data.as_slice()).unwrap();
                client.handle_receive(Instant::now(), Receive { proto: Protocol::Tcp, source: server, destination: local, contents });
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => client.handle_timeout(Instant::now()),
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_tcp_connection_a_session_accepted_stays_until_it_goes_idle() {
    let first_stun = Duration::from_millis(500);
    let idle = Duration::from_millis(1500);
    let (sfu, server) = tcp_router(IceTcpLimits { first_stun, idle, ..IceTcpLimits::default() }).await;
    let stream = TcpStream::connect(server).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let opened = Instant::now();
    let local = stream.local_addr().unwrap();
    let candidate = Candidate::builder().tcp().host(local).tcptype(TcpType::Active).build().unwrap();
    let mut client = Client::with_candidate(Instant::now(), candidate);
    let offer = client.offer(&[MediaSpec::send(MediaKind::Audio)], None);
    let perms = Permissions { publish: true, subscribe: true, publish_data: true, hidden: false };
    let req = JoinRequest::new(RoomName::new("tcproom").unwrap(), Identity::new("pub").unwrap(), perms);
    let (_, answer) = sfu.call(move |sfu, now| sfu.join(now, req, &offer)).await.unwrap().unwrap();
    client.accept_answer(&answer.to_sdp_string()).unwrap();
    let (mut frames, mut wr) = framed(stream);

    // Well past the first-STUN deadline, the connection carries the session.
    let alive = pump(&mut client, &mut frames, &mut wr, opened + 3 * first_stun).await;
    assert!(alive && client.connected, "the session connected over ICE-TCP and kept its connection");
    assert_eq!(sfu.ice_tcp_stats().timed_out, 0);
    // Then the client falls silent.
    let silent = timeout(idle + Duration::from_secs(3), async { while frames.recv().await.is_some() {} }).await;
    assert!(silent.is_ok(), "an idle connection is closed");
    assert!(opened.elapsed() >= 3 * first_stun, "closed for idleness, after the session kept it");
    assert_eq!(sfu.ice_tcp_stats().timed_out, 1);
}
