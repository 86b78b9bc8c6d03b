//! Opus-audio fan-out through the real server on loopback, against a plain UDP relay.
//!
//! `cargo bench --bench sfu_fanout -- [--publishers N] [--subscribers M] [--seconds S]
//! [--frame-bytes B]` (or `SFU_FANOUT_PUBLISHERS`, `SFU_FANOUT_SUBSCRIBERS`,
//! `SFU_FANOUT_SECONDS`, `SFU_FANOUT_FRAME_BYTES`; `SFU_FANOUT_INITIAL_BWE_KBPS` overrides the
//! server's `rtc.initial_bwe_kbps`). The server runs in-process on its own
//! thread (a current-thread tokio runtime: HTTP signaling and the media router share it, so
//! that thread's CPU time is the server's). N publishers join over WHIP with one Opus track
//! each and M subscribers over WHEP (`/whep/{room}`, auto-subscribe) with N audio m-lines;
//! every client is a `auralink::client::Client` on its own UDP socket, all driven by one
//! load-generator thread. Each publisher sends an Opus-sized frame every 20 ms carrying its
//! send time, index and sequence number, so subscribers measure loss and one-way latency (same
//! host, same clock): to the subscriber's socket (the kernel's receive timestamp,
//! `SO_TIMESTAMPNS`, so the load generator's own queueing is left out) and to the application
//! (after the load generator read and decrypted it). The baseline relays the same datagrams with no WebRTC at all: one
//! thread, one socket, `recv_from` and M `send_to`s per packet.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) this is a smoke test: 1 × 1 for
//! 2 s, failing unless audio flowed through the SFU.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auralink::client::{Client, MediaSpec};
use auralink::config::Config;
use auralink::sfu::SfuStats;
use auralink::sfu::driver::SfuHandle;
use auralink::signal::token::{join_claims, mint};
use str0m::media::{MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};

const API_KEY: &str = "APIbench";
const API_SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const ROOM: &str = "bench";
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes of the frame header: send time (ns since the shared epoch), publisher, sequence,
/// send time again as wall-clock ns (to compare with the kernel's receive timestamps).
const HEADER: usize = 22;

#[derive(Debug, Clone)]
struct Opts {
    publishers: usize,
    subscribers: usize,
    seconds: f64,
    frame_bytes: usize,
    warmup: Duration,
    baseline: bool,
    smoke: bool,
}

impl Opts {
    fn parse() -> Opts {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|a| a == "--bench");
        let arg = |name: &str, env: &str| -> Option<String> {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
                .or_else(|| std::env::var(env).ok())
        };
        if !bench {
            return Opts {
                publishers: 1,
                subscribers: 1,
                seconds: 2.0,
                frame_bytes: 80,
                warmup: Duration::from_millis(500),
                baseline: false,
                smoke: true,
            };
        }
        let num = |name: &str, env: &str, default: f64| {
            arg(name, env).map(|v| v.parse::<f64>().expect("a number")).unwrap_or(default)
        };
        Opts {
            publishers: num("--publishers", "SFU_FANOUT_PUBLISHERS", 10.0) as usize,
            subscribers: num("--subscribers", "SFU_FANOUT_SUBSCRIBERS", 20.0) as usize,
            seconds: num("--seconds", "SFU_FANOUT_SECONDS", 10.0),
            frame_bytes: (num("--frame-bytes", "SFU_FANOUT_FRAME_BYTES", 80.0) as usize).max(HEADER),
            warmup: Duration::from_secs(1),
            baseline: !args.iter().any(|a| a == "--no-baseline"),
            smoke: false,
        }
    }
}

/// CPU time a thread of this process has used: the scheduler's nanosecond count, or the
/// tick-granular one from `stat` where schedstat is missing.
fn thread_cpu(tid: i32) -> Duration {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_nanos(ns);
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("thread stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn gettid() -> i32 {
    unsafe { libc::gettid() }
}

// ---------------------------------------------------------------------------------------
// The server, on its own thread.

struct ServerThread {
    http: SocketAddr,
    sfu: SfuHandle,
    tid: i32,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
    data_dir: std::path::PathBuf,
}

fn start_server() -> ServerThread {
    let data_dir = std::env::temp_dir().join(format!("auralink-bench-{}", std::process::id()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dir = data_dir.clone();
    let thread = std::thread::Builder::new()
        .name("auralink-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let mut config = Config::loopback(dir);
                config.keys = [(API_KEY.to_string(), API_SECRET.to_string())].into();
                config.secret_key = Some(auralink::secrets::SecretBox::generate_key());
                if let Some(kbps) = std::env::var("SFU_FANOUT_INITIAL_BWE_KBPS").ok().and_then(|v| v.parse().ok()) {
                    config.rtc.initial_bwe_kbps = kbps;
                }
                let server = auralink::server::start(config).await.expect("the server starts");
                ready_tx.send((server.http_addr, server.sfu.clone(), gettid())).unwrap();
                let _ = stop_rx.await;
                server.shutdown().await;
            });
        })
        .expect("a thread");
    let (http, sfu, tid) = ready_rx.recv().expect("the server started");
    ServerThread { http, sfu, tid, stop, thread, data_dir }
}

async fn signal(http: &reqwest::Client, url: String, identity: &str, offer: String) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = mint(&join_claims(API_KEY, ROOM, identity, now, 3600), API_SECRET);
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .expect("signaling request");
    let status = resp.status();
    let body = resp.text().await.expect("signaling body");
    assert_eq!(status.as_u16(), 201, "{identity}: {body}");
    body
}

// ---------------------------------------------------------------------------------------
// The load generator: publishers and subscribers, WebRTC or raw UDP.

enum Kind {
    /// A str0m client; `mid` is the sending m-line for publishers.
    Rtc { client: Box<Client>, mid: Option<Mid> },
    /// A plain socket: publishers send to `relay`, subscribers take datagrams as frames.
    Raw { relay: SocketAddr },
}

struct Endpoint {
    sock: UdpSocket,
    addr: SocketAddr,
    kind: Kind,
    /// Some(index) for publishers.
    publisher: Option<usize>,
    /// Index among subscribers.
    subscriber: Option<usize>,
}

/// Shared between the orchestrating thread and the load generator.
struct Control {
    epoch: Instant,
    /// All WebRTC sessions are connected.
    connected: AtomicBool,
    /// Publishers send while this is set.
    publishing: AtomicBool,
    /// Measurement window, ns since epoch; frames sent inside it are counted.
    window_start: AtomicU64,
    window_end: AtomicU64,
    stop: AtomicBool,
    tid: AtomicUsize,
}

#[derive(Default, Debug)]
struct LoadResult {
    /// Frames sent inside the window, per publisher.
    sent: Vec<u64>,
    /// Distinct (subscriber, publisher, seq) received whose send time is inside the window.
    received: u64,
    duplicates: u64,
    /// One-way latencies of those, µs: to the subscriber socket (kernel receive timestamp),
    /// and to the application (after the load generator got to it and str0m decrypted it).
    latencies_us: Vec<u32>,
    app_latencies_us: Vec<u32>,
}

fn frame(epoch: Instant, publisher: usize, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    let ns = epoch.elapsed().as_nanos() as u64;
    f[0..8].copy_from_slice(&ns.to_le_bytes());
    f[8..10].copy_from_slice(&(publisher as u16).to_le_bytes());
    f[10..14].copy_from_slice(&seq.to_le_bytes());
    f[14..22].copy_from_slice(&wall_ns().to_le_bytes());
    for (i, b) in f[HEADER..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ seq as u8;
    }
    f
}

struct Receiver {
    publishers: usize,
    seen: HashMap<(usize, usize), Vec<u64>>, // (subscriber, publisher) → bitset of seqs
    result: LoadResult,
}

impl Receiver {
    /// `at`: when the application saw it; `kernel_ns`: the socket's receive timestamp.
    fn on_frame(&mut self, ctl: &Control, subscriber: usize, at: Instant, kernel_ns: Option<u64>, data: &[u8]) {
        if data.len() < HEADER {
            return;
        }
        let sent_ns = u64::from_le_bytes(data[0..8].try_into().unwrap());
        let publisher = u16::from_le_bytes(data[8..10].try_into().unwrap()) as usize;
        let seq = u32::from_le_bytes(data[10..14].try_into().unwrap()) as usize;
        let (start, end) = (ctl.window_start.load(Ordering::Relaxed), ctl.window_end.load(Ordering::Relaxed));
        if publisher >= self.publishers || sent_ns < start || sent_ns >= end {
            return;
        }
        let bits = self.seen.entry((subscriber, publisher)).or_default();
        if bits.len() <= seq / 64 {
            bits.resize(seq / 64 + 1, 0);
        }
        if bits[seq / 64] & (1 << (seq % 64)) != 0 {
            self.result.duplicates += 1;
            return;
        }
        bits[seq / 64] |= 1 << (seq % 64);
        self.result.received += 1;
        let at_ns = at.duration_since(ctl.epoch).as_nanos() as u64;
        self.result.app_latencies_us.push((at_ns.saturating_sub(sent_ns) / 1000) as u32);
        let sent_wall = u64::from_le_bytes(data[14..22].try_into().unwrap());
        if let Some(k) = kernel_ns {
            self.result.latencies_us.push((k.saturating_sub(sent_wall) / 1000) as u32);
        }
    }
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// `recv_from` that also returns the kernel's receive timestamp (`SO_TIMESTAMPNS`, wall clock).
fn recv_timestamped(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<u64>)> {
    let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr =
        SocketAddr::from((std::net::Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)), u16::from_be(name.sin_port)));
    let mut ts = None;
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ts = Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, addr, ts))
}

fn send_all(sock: &UdpSocket, transmits: Vec<str0m::net::Transmit>) {
    for t in transmits {
        let _ = sock.send_to(&t.contents, t.destination);
    }
}

/// Runs every endpoint until `ctl.stop`: receives, runs timers, sends frames on time, and
/// sleeps in `ppoll` until the next socket event or deadline.
fn run_load(mut eps: Vec<Endpoint>, ctl: Arc<Control>, publishers: usize, frame_bytes: usize) -> LoadResult {
    ctl.tid.store(gettid() as usize, Ordering::Relaxed);
    let mut rx = Receiver {
        publishers,
        seen: HashMap::new(),
        result: LoadResult { sent: vec![0; publishers], ..Default::default() },
    };
    let mut buf = vec![0u8; 2048];
    // Publishers are spread over the 20 ms period (set when publishing starts).
    let mut next_frame: Vec<Instant> = vec![Instant::now(); publishers];
    let mut seq = vec![0u32; publishers];
    let mut pollfds: Vec<libc::pollfd> =
        eps.iter().map(|e| libc::pollfd { fd: e.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    while !ctl.stop.load(Ordering::Relaxed) {
        for ep in eps.iter_mut() {
            loop {
                let (n, src, kernel_ns) = match recv_timestamped(&ep.sock, &mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => continue, // ICMP errors from peers gone away
                };
                let at = Instant::now();
                match &mut ep.kind {
                    Kind::Rtc { client, .. } => {
                        if let Ok(r) = Receive::new(Protocol::Udp, src, ep.addr, &buf[..n]) {
                            client.handle_receive(at, r);
                        }
                        send_all(&ep.sock, client.poll());
                        if let Some(s) = ep.subscriber {
                            for d in std::mem::take(&mut client.received) {
                                rx.on_frame(&ctl, s, at, kernel_ns, &d.data);
                            }
                        }
                    }
                    Kind::Raw { .. } => {
                        if let Some(s) = ep.subscriber {
                            rx.on_frame(&ctl, s, at, kernel_ns, &buf[..n]);
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        let publishing = ctl.publishing.load(Ordering::Relaxed);
        let (w_start, w_end) = (ctl.window_start.load(Ordering::Relaxed), ctl.window_end.load(Ordering::Relaxed));
        let mut deadline = now + Duration::from_millis(50);
        let mut all_connected = true;
        for ep in eps.iter_mut() {
            if let Some(p) = ep.publisher {
                if !publishing {
                    // Idle until told to publish; then start on schedule, not with a burst.
                    next_frame[p] = now + FRAME_INTERVAL * p as u32 / publishers.max(1) as u32;
                }
                if publishing && next_frame[p] <= now {
                    // Late wake-ups send at once; the schedule itself does not drift.
                    next_frame[p] += FRAME_INTERVAL;
                    let f = frame(ctl.epoch, p, seq[p], frame_bytes);
                    let ns = u64::from_le_bytes(f[0..8].try_into().unwrap());
                    if ns >= w_start && ns < w_end {
                        rx.result.sent[p] += 1;
                    }
                    match &mut ep.kind {
                        Kind::Rtc { client, mid } => {
                            let time = MediaTime::new(seq[p] as u64 * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ);
                            client.write(mid.expect("a sending mid"), None, now, time, &f).expect("write");
                        }
                        Kind::Raw { relay } => {
                            let _ = ep.sock.send_to(&f, *relay);
                        }
                    }
                    seq[p] += 1;
                }
                if publishing {
                    deadline = deadline.min(next_frame[p]);
                }
            }
            if let Kind::Rtc { client, .. } = &mut ep.kind {
                client.handle_timeout(now);
                send_all(&ep.sock, client.poll());
                if let Some(s) = ep.subscriber {
                    for d in std::mem::take(&mut client.received) {
                        rx.on_frame(&ctl, s, now, None, &d.data);
                    }
                }
                all_connected &= client.connected;
                if let Some(t) = client.poll_timeout() {
                    deadline = deadline.min(t);
                }
            }
        }
        if all_connected {
            ctl.connected.store(true, Ordering::Relaxed);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let ts =
            libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
        unsafe { libc::ppoll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    }
    rx.result
}

/// The baseline: one thread, one socket; each datagram from publisher i goes to every
/// subscriber. Returns the thread, its tid (once it runs) and its counters.
fn start_relay(
    publishers: &[SocketAddr],
    subscribers: Vec<SocketAddr>,
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
) -> (JoinHandle<()>, Arc<AtomicUsize>, Arc<[AtomicU64; 2]>) {
    let known: std::collections::HashSet<SocketAddr> = publishers.iter().copied().collect();
    let tid = Arc::new(AtomicUsize::new(0));
    // Datagrams in, datagrams out.
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (tid2, counts2) = (Arc::clone(&tid), Arc::clone(&counts));
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let h = std::thread::Builder::new()
        .name("udp-relay".into())
        .spawn(move || {
            tid2.store(gettid() as usize, Ordering::Relaxed);
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, src)) = sock.recv_from(&mut buf) else { continue };
                if !known.contains(&src) {
                    continue;
                }
                counts2[0].fetch_add(1, Ordering::Relaxed);
                for s in &subscribers {
                    if sock.send_to(&buf[..n], s).is_ok() {
                        counts2[1].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .unwrap();
    (h, tid, counts)
}

fn udp() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    let on: libc::c_int = 1;
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMPNS");
    let a = s.local_addr().unwrap();
    (s, a)
}

#[derive(Debug)]
struct Measured {
    what: &'static str,
    window: Duration,
    packets_in: u64,
    forwarded: u64,
    sent: u64,
    received: u64,
    expected: u64,
    duplicates: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    app_p50_ms: f64,
    app_p99_ms: f64,
    server_cpu: Duration,
    load_cpu: Duration,
}

impl Measured {
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.window.as_secs_f64()
    }
    fn loss_pct(&self) -> f64 {
        if self.expected == 0 { 100.0 } else { 100.0 * (1.0 - self.received as f64 / self.expected as f64) }
    }
    fn cpu_share(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
    fn per_core(&self) -> f64 {
        self.forwarded as f64 / self.server_cpu.as_secs_f64()
    }
    fn us_per_packet(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.forwarded.max(1) as f64
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Opens the window after the warm-up, closes it after `seconds`, and measures around it.
/// `counters` reads (packets in, packets forwarded) at the edges; `server_tid` is the thread
/// whose CPU is the server's.
fn measure(
    what: &'static str,
    opts: &Opts,
    ctl: &Arc<Control>,
    server_tid: i32,
    mut counters: impl FnMut() -> (u64, u64),
    load: JoinHandle<LoadResult>,
) -> Measured {
    ctl.publishing.store(true, Ordering::Relaxed);
    std::thread::sleep(opts.warmup);
    let load_tid = ctl.tid.load(Ordering::Relaxed) as i32;
    let (in0, fwd0) = counters();
    let (cpu0, lcpu0) = (thread_cpu(server_tid), thread_cpu(load_tid));
    let t0 = Instant::now();
    ctl.window_start.store(t0.duration_since(ctl.epoch).as_nanos() as u64, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(opts.seconds));
    let t1 = Instant::now();
    ctl.window_end.store(t1.duration_since(ctl.epoch).as_nanos() as u64, Ordering::Relaxed);
    let (cpu1, lcpu1) = (thread_cpu(server_tid), thread_cpu(load_tid));
    let (in1, fwd1) = counters();
    // Frames sent near the end of the window are still in flight: let them land.
    std::thread::sleep(Duration::from_millis(100));
    ctl.publishing.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(400));
    ctl.stop.store(true, Ordering::Relaxed);
    let mut r = load.join().expect("the load generator");
    r.latencies_us.sort_unstable();
    r.app_latencies_us.sort_unstable();
    let sent: u64 = r.sent.iter().sum();
    Measured {
        what,
        window: t1 - t0,
        packets_in: in1 - in0,
        forwarded: fwd1 - fwd0,
        sent,
        received: r.received,
        expected: sent * opts.subscribers as u64,
        duplicates: r.duplicates,
        p50_ms: percentile(&r.latencies_us, 0.50),
        p99_ms: percentile(&r.latencies_us, 0.99),
        max_ms: r.latencies_us.last().map_or(f64::NAN, |&v| v as f64 / 1000.0),
        app_p50_ms: percentile(&r.app_latencies_us, 0.50),
        app_p99_ms: percentile(&r.app_latencies_us, 0.99),
        server_cpu: cpu1 - cpu0,
        load_cpu: lcpu1 - lcpu0,
    }
}

fn control() -> Arc<Control> {
    Arc::new(Control {
        epoch: Instant::now(),
        connected: AtomicBool::new(false),
        publishing: AtomicBool::new(false),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
        tid: AtomicUsize::new(0),
    })
}

fn run_sfu(opts: &Opts, rt: &tokio::runtime::Runtime) -> Measured {
    let server = start_server();
    let http = reqwest::Client::new();
    let mut eps = Vec::new();
    // Subscribers first: their slots bind as the publishers' tracks appear.
    for s in 0..opts.subscribers {
        let (sock, addr) = udp();
        let mut client = Client::new(Instant::now(), addr);
        let offer = client.offer(&vec![MediaSpec::recv(MediaKind::Audio); opts.publishers], None);
        let answer =
            rt.block_on(signal(&http, format!("http://{}/whep/{ROOM}", server.http), &format!("sub-{s}"), offer));
        client.accept_answer(&answer).expect("the WHEP answer is accepted");
        eps.push(Endpoint {
            sock,
            addr,
            kind: Kind::Rtc { client: Box::new(client), mid: None },
            publisher: None,
            subscriber: Some(s),
        });
    }
    for p in 0..opts.publishers {
        let (sock, addr) = udp();
        let mut client = Client::new(Instant::now(), addr);
        let offer = client.offer(&[MediaSpec::send(MediaKind::Audio)], None);
        let answer =
            rt.block_on(signal(&http, format!("http://{}/whip/{ROOM}", server.http), &format!("pub-{p}"), offer));
        client.accept_answer(&answer).expect("the WHIP answer is accepted");
        let mid = client.mids[0];
        eps.push(Endpoint {
            sock,
            addr,
            kind: Kind::Rtc { client: Box::new(client), mid: Some(mid) },
            publisher: Some(p),
            subscriber: None,
        });
    }
    let ctl = control();
    let (c2, pubs, fb) = (Arc::clone(&ctl), opts.publishers, opts.frame_bytes);
    let load = std::thread::Builder::new().name("load".into()).spawn(move || run_load(eps, c2, pubs, fb)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl.connected.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "WebRTC sessions did not connect within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sfu = server.sfu.clone();
    let stats = move || -> (u64, u64) {
        let s: SfuStats = rt.block_on(sfu.call(|sfu, _| sfu.stats().clone())).expect("the router runs");
        (s.frames_in, s.frames_forwarded)
    };
    let m = measure("AuraLink SFU", opts, &ctl, server.tid, stats, load);
    let _ = server.stop.send(());
    server.thread.join().expect("the server thread");
    let _ = std::fs::remove_dir_all(&server.data_dir);
    m
}

fn run_baseline(opts: &Opts) -> Measured {
    let (relay_sock, relay) = udp();
    relay_sock.set_nonblocking(false).unwrap();
    let mut eps = Vec::new();
    for s in 0..opts.subscribers {
        let (sock, addr) = udp();
        eps.push(Endpoint { sock, addr, kind: Kind::Raw { relay }, publisher: None, subscriber: Some(s) });
    }
    for p in 0..opts.publishers {
        let (sock, addr) = udp();
        eps.push(Endpoint { sock, addr, kind: Kind::Raw { relay }, publisher: Some(p), subscriber: None });
    }
    let pub_addrs: Vec<SocketAddr> = eps.iter().filter(|e| e.publisher.is_some()).map(|e| e.addr).collect();
    let sub_addrs: Vec<SocketAddr> = eps.iter().filter(|e| e.subscriber.is_some()).map(|e| e.addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (relay_thread, relay_tid, counts) = start_relay(&pub_addrs, sub_addrs, relay_sock, Arc::clone(&stop));
    let ctl = control();
    ctl.connected.store(true, Ordering::Relaxed);
    let (c2, pubs, fb) = (Arc::clone(&ctl), opts.publishers, opts.frame_bytes);
    let load = std::thread::Builder::new().name("load".into()).spawn(move || run_load(eps, c2, pubs, fb)).unwrap();
    while relay_tid.load(Ordering::Relaxed) == 0 || ctl.tid.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let counters = move || (counts[0].load(Ordering::Relaxed), counts[1].load(Ordering::Relaxed));
    let m = measure("plain UDP relay", opts, &ctl, relay_tid.load(Ordering::Relaxed) as i32, counters, load);
    stop.store(true, Ordering::Relaxed);
    relay_thread.join().unwrap();
    m
}

fn row(name: &str, a: String, b: Option<String>, ratio: Option<String>) -> String {
    format!("| {name} | {a} | {} | {} |", b.unwrap_or_else(|| "–".into()), ratio.unwrap_or_else(|| "–".into()))
}

fn table(opts: &Opts, sfu: &Measured, base: Option<&Measured>) -> String {
    let f0 = |v: f64| format!("{v:.0}");
    let f2 = |v: f64| format!("{v:.2}");
    let f3 = |v: f64| format!("{v:.3}");
    let ratio = |a: f64, b: f64| format!("{:.1}×", a / b);
    let b = |f: &dyn Fn(&Measured) -> String| base.map(f);
    let r = |f: &dyn Fn(&Measured) -> f64| base.map(|x| ratio(f(sfu), f(x)));
    let mut out = vec![
        format!(
            "{} publishers × {} subscribers, one {}-byte Opus-sized frame per publisher every 20 ms, {:.0} s window",
            opts.publishers,
            opts.subscribers,
            opts.frame_bytes,
            sfu.window.as_secs_f64()
        ),
        String::new(),
        format!("| | {} | {} | SFU / baseline |", sfu.what, base.map_or("baseline", |b| b.what)),
        "|---|---:|---:|---:|".into(),
        row("frames sent by publishers/s", f0(sfu.per_s(sfu.sent)), b(&|m| f0(m.per_s(m.sent))), None),
        row("packets in/s (at the server)", f0(sfu.per_s(sfu.packets_in)), b(&|m| f0(m.per_s(m.packets_in))), None),
        row("forwarded packets/s", f0(sfu.per_s(sfu.forwarded)), b(&|m| f0(m.per_s(m.forwarded))), None),
        row("received by subscribers/s", f0(sfu.per_s(sfu.received)), b(&|m| f0(m.per_s(m.received))), None),
        row("loss", format!("{}%", f3(sfu.loss_pct())), b(&|m| format!("{}%", f3(m.loss_pct()))), None),
        row("latency to subscriber socket p50 (ms)", f2(sfu.p50_ms), b(&|m| f2(m.p50_ms)), r(&|m| m.p50_ms)),
        row("latency to subscriber socket p99 (ms)", f2(sfu.p99_ms), b(&|m| f2(m.p99_ms)), r(&|m| m.p99_ms)),
        row("latency to subscriber socket max (ms)", f2(sfu.max_ms), b(&|m| f2(m.max_ms)), None),
        row("latency to subscriber app p50 (ms)", f2(sfu.app_p50_ms), b(&|m| f2(m.app_p50_ms)), None),
        row("latency to subscriber app p99 (ms)", f2(sfu.app_p99_ms), b(&|m| f2(m.app_p99_ms)), None),
        row("server CPU (cores)", f3(sfu.cpu_share()), b(&|m| f3(m.cpu_share())), r(&|m| m.cpu_share())),
        row(
            "CPU per forwarded packet (µs)",
            f2(sfu.us_per_packet()),
            b(&|m| f2(m.us_per_packet())),
            r(&|m| m.us_per_packet()),
        ),
        row("forwarded packets/s per server core", f0(sfu.per_core()), b(&|m| f0(m.per_core())), None),
        row(
            "load generator CPU (cores)",
            f3(sfu.load_cpu.as_secs_f64() / sfu.window.as_secs_f64()),
            b(&|m| f3(m.load_cpu.as_secs_f64() / m.window.as_secs_f64())),
            None,
        ),
    ];
    if sfu.duplicates > 0 || base.is_some_and(|b| b.duplicates > 0) {
        out.push(row("duplicates", sfu.duplicates.to_string(), b(&|m| m.duplicates.to_string()), None));
    }
    out.join("\n")
}

fn main() {
    let opts = Opts::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    eprintln!("sfu_fanout: {opts:?}");
    let sfu = run_sfu(&opts, &rt);
    if opts.smoke {
        println!("{}", table(&opts, &sfu, None));
        assert!(sfu.forwarded > 0 && sfu.received > 0, "no audio went through the SFU: {sfu:?}");
        assert!(sfu.loss_pct() < 20.0, "SFU smoke lost {:.1}% of frames: {sfu:?}", sfu.loss_pct());
        return;
    }
    let base = opts.baseline.then(|| run_baseline(&opts));
    println!("{}", table(&opts, &sfu, base.as_ref()));
}
