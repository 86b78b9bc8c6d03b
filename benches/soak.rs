//! Soak: a real server process on loopback under churn and abuse, its resident memory and open
//! file descriptors sampled once the first cycle is done and again after the last one.
//!
//! Each cycle, `--participants` publishers join one room over WHIP (a `auralink::client`
//! str0m client each, on its own UDP socket), connect, send an Opus-sized frame every 20 ms
//! for `--hold` seconds and leave with `DELETE`; while they are in, the abuse mix runs:
//! LiveKit signal sessions that announce the most tracks they may (256-byte names), pile up
//! attributes and then vanish without a leave; WHIP offers whose ICE never starts; and a
//! trickle flood on a live session. After the last cycle the server gets its reaping
//! deadlines (resume window, connect deadline) to clean up, then is sampled again: the
//! baseline is the first sample, and each row prints end/start.
//!
//! `cargo bench --bench soak -- [--seconds S] [--participants N] [--hold H]` (or
//! `SOAK_SECONDS`, `SOAK_PARTICIPANTS`, `SOAK_HOLD`; 1800 s, 50, 8 s by default). Without
//! `--bench` (as `cargo test --all-targets` runs it) this is a smoke test: two short cycles of
//! five participants, failing unless audio flowed and every session was released.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auralink::client::{Client, MediaSpec};
use auralink::config::Config;

#[path = "support/args.rs"]
mod args;
use args::Args;
use auralink::signal::token::{self, Claims};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use str0m::media::{Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use tokio::net::UdpSocket;

const API_KEY: &str = "APIsoak";
const API_SECRET: &str = "soak-secret-0123456789abcdef0123456789abcdef";
const ROOM: &str = "soak";

struct Opts {
    seconds: f64,
    participants: usize,
    hold: Duration,
    smoke: bool,
}

fn opts() -> Opts {
    let args = Args::from_env();
    Opts {
        seconds: args.get("--seconds", "SOAK_SECONDS", 1800.0, 1.0),
        participants: args.get("--participants", "SOAK_PARTICIPANTS", 50, 5),
        hold: Duration::from_secs_f64(args.get("--hold", "SOAK_HOLD", 8.0, 2.0)),
        smoke: !args.bench(),
    }
}

/// The server as a child process, so that its memory and descriptors are its own.
struct ServerProcess {
    child: Child,
    base: String,
    dir: std::path::PathBuf,
}

impl ServerProcess {
    fn start(connect_timeout_secs: u64) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!("auralink-soak-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = Config::loopback(dir.join("data"));
        config.http.port = port;
        config.keys = [(API_KEY.to_string(), API_SECRET.to_string())].into();
        config.secret_key = Some(auralink::secrets::SecretBox::generate_key());
        config.rtc.connect_timeout_secs = connect_timeout_secs;
        // Rooms close soon after the last participant, so that a settled node holds none.
        config.room.empty_timeout_secs = 2;
        let path = dir.join("auralink.toml");
        std::fs::write(&path, toml::to_string(&config).expect("config serializes")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_auralink"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env("AURALINK_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary starts");
        ServerProcess { child, base: format!("http://127.0.0.1:{port}"), dir }
    }

    async fn ready(&self, http: &reqwest::Client) {
        for _ in 0..300 {
            if http.get(format!("{}/readyz", self.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not become ready in 30 s");
    }

    /// Resident memory (KiB) and open descriptors of the process now.
    fn sample(&self) -> (u64, usize) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        (rss, fds)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token_for(identity: &str, grant: impl FnOnce(&mut Claims)) -> String {
    let mut claims = token::join_claims(API_KEY, ROOM, identity, now_secs(), 3600);
    grant(&mut claims);
    token::mint(&claims, API_SECRET)
}

/// A WHIP publisher's whole life: offer, connect, `hold` of audio, DELETE; counts the frames
/// it sent in `sent`, and panics on any step the server refuses.
async fn publisher(http: reqwest::Client, base: String, identity: String, hold: Duration, sent: Arc<AtomicU64>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let start = Instant::now();
    let mut client = Client::new(start, addr);
    let offer = client.offer(&[MediaSpec::send(MediaKind::Audio)], None);
    // DELETE must carry the token that created the session.
    let token = token_for(&identity, |_| {});
    let resp = http
        .post(format!("{base}/whip/{ROOM}"))
        .bearer_auth(&token)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{identity}: {:?}", resp.text().await);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    client.accept_answer(&resp.text().await.unwrap()).unwrap();
    let mid = client.mids[0];
    let mut buf = vec![0u8; 2048];
    let mut next_frame = Instant::now();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10) + hold;
    let mut sending_until = None;
    loop {
        let now = Instant::now();
        for t in client.poll() {
            let _ = sock.send_to(&t.contents, t.destination).await;
        }
        if client.connected && sending_until.is_none() {
            sending_until = Some(now + hold);
        }
        match sending_until {
            Some(until) if now >= until => break,
            None if now >= deadline => panic!("{identity} did not connect"),
            _ => {}
        }
        if client.connected && now >= next_frame {
            let time = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
            if client.write(mid, None, now, time, &[0xa5; 80]).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
            next_frame += Duration::from_millis(20);
            continue;
        }
        let wake = client.poll_timeout().unwrap_or(now + Duration::from_millis(20)).min(next_frame).max(now);
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((len, source)) = r else { continue };
                let Ok(contents) = buf[..len].try_into() else { continue };
                client.handle_receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: addr, contents });
            }
            () = tokio::time::sleep_until(wake.into()) => client.handle_timeout(Instant::now()),
        }
    }
    let gone = http.delete(format!("{base}{location}")).bearer_auth(token).send().await.unwrap();
    assert!(gone.status().is_success(), "{identity}: DELETE answered {}", gone.status());
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn signal(ws: &mut Ws, m: proto::signal_request::Message) {
    let bytes = proto::SignalRequest { message: Some(m) }.encode_to_vec();
    let _ = ws.send(tokio_tungstenite::tungstenite::Message::Binary(bytes.into())).await;
}

/// A LiveKit client that announces every track it may, with the longest names, piles up
/// attributes, and goes without a leave (`leave` in smoke runs, which wait less).
async fn abusive_signal_session(base: &str, identity: &str, leave: bool) {
    use proto::signal_request::Message as Req;
    let url = format!(
        "{}/rtc?access_token={}",
        base.replace("http://", "ws://"),
        token_for(identity, |c| {
            c.video.can_update_own_metadata = true;
        })
    );
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else { panic!("{identity}: no upgrade") };
    for i in 0..auralink::sfu::core::MAX_ANNOUNCED_TRACKS {
        let req = proto::AddTrackRequest {
            cid: format!("c{i}"),
            name: "n".repeat(256),
            r#type: proto::TrackType::Audio as i32,
            ..Default::default()
        };
        signal(&mut ws, Req::AddTrack(req)).await;
    }
    for round in 0..4 {
        let attributes = (0..64).map(|i| (format!("k{round}-{i}"), "v".repeat(200))).collect();
        signal(&mut ws, Req::UpdateMetadata(proto::UpdateParticipantMetadata { attributes, ..Default::default() }))
            .await;
    }
    // Read what the server says for a moment, as a client would.
    let _ = tokio::time::timeout(Duration::from_millis(300), async { while ws.next().await.is_some() {} }).await;
    if leave {
        signal(&mut ws, Req::Leave(proto::LeaveRequest::default())).await;
    }
}

/// A WHIP offer from a client that never sends a packet.
async fn ghost_offer(http: &reqwest::Client, base: &str, identity: &str) {
    let mut client = Client::new(Instant::now(), "127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let offer = client.offer(&[MediaSpec::send(MediaKind::Audio)], None);
    let resp = http
        .post(format!("{base}/whip/{ROOM}"))
        .bearer_auth(token_for(identity, |_| {}))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{identity}");
}

/// `name value` lines of the server's Prometheus text for the gauges that must return to 0.
async fn gauges(http: &reqwest::Client, base: &str) -> Vec<(String, u64)> {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    ["auralink_rooms", "auralink_participants", "auralink_tracks"]
        .iter()
        .map(|g| {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{g} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(u64::MAX);
            (g.to_string(), v)
        })
        .collect()
}

async fn cycle(http: &reqwest::Client, base: &str, o: &Opts, n: usize, sent: &Arc<AtomicU64>) {
    let publishers: Vec<_> = (0..o.participants)
        .map(|i| {
            let (http, base, sent) = (http.clone(), base.to_string(), Arc::clone(sent));
            tokio::spawn(publisher(http, base, format!("p{n}-{i}"), o.hold, sent))
        })
        .collect();
    for i in 0..3 {
        abusive_signal_session(base, &format!("lk{n}-{i}"), o.smoke).await;
    }
    for i in 0..3 {
        ghost_offer(http, base, &format!("ghost{n}-{i}")).await;
    }
    for p in publishers {
        p.await.expect("a publisher finished");
    }
}

fn main() {
    let o = opts();
    // Smoke runs cannot wait half a minute for each ghost.
    let server = ServerProcess::start(if o.smoke { 3 } else { 30 });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // No idle connections kept: the server's descriptors are then what its sessions hold.
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        server.ready(&http).await;
        let sent = Arc::new(AtomicU64::new(0));
        let base = server.base.clone();
        // Both samples are taken once everything abandoned could go: the resume window (20 s),
        // the connect deadline and the room's empty timeout.
        let settle = if o.smoke { Duration::from_secs(5) } else { Duration::from_secs(60) };
        let started = Instant::now();
        cycle(&http, &base, &o, 0, &sent).await;
        tokio::time::sleep(settle).await;
        let start = server.sample();
        let mut cycles = 1;
        // Unsettled samples at the end of each cycle (every publisher gone, the abandoned
        // sessions of the last cycle still there): whether memory levels off or keeps growing.
        let mut trend = Vec::new();
        while started.elapsed().as_secs_f64() < o.seconds || cycles < 2 {
            cycle(&http, &base, &o, cycles, &sent).await;
            trend.push((started.elapsed().as_secs(), server.sample()));
            cycles += 1;
        }
        tokio::time::sleep(settle).await;
        let end = server.sample();
        let left = gauges(&http, &base).await;
        let ratio = |a: f64, b: f64| if a > 0.0 { format!("{:.3}", b / a) } else { "-".into() };
        println!(
            "soak: {cycles} cycles of {} participants ({:.0} s), {} audio frames sent",
            o.participants,
            started.elapsed().as_secs_f64(),
            sent.load(Ordering::Relaxed)
        );
        println!("| | settled after the first cycle | settled at the end | end/start |");
        println!("|---|---|---|---|");
        println!(
            "| RSS (MiB) | {:.1} | {:.1} | {} |",
            start.0 as f64 / 1024.0,
            end.0 as f64 / 1024.0,
            ratio(start.0 as f64, end.0 as f64)
        );
        println!("| open fds | {} | {} | {} |", start.1, end.1, ratio(start.1 as f64, end.1 as f64));
        for (g, v) in &left {
            println!("| {g} | | {v} | |");
        }
        println!("\n| after | RSS (MiB) | open fds |\n|---|---|---|");
        for q in 1..=4 {
            let (secs, (rss, fds)) = trend[(trend.len() * q / 4).saturating_sub(1)];
            println!("| {secs} s | {:.1} | {fds} |", rss as f64 / 1024.0);
        }
        assert!(sent.load(Ordering::Relaxed) > 0, "no audio was sent");
        assert!(left.iter().all(|(_, v)| *v == 0), "sessions left behind: {left:?}");
        assert!(end.1 <= start.1 + 8, "descriptors grew from {} to {}", start.1, end.1);
    });
}
