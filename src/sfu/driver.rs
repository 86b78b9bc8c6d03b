//! The tokio shell around the router: owns the UDP sockets and ICE-TCP connections, reads
//! the clock, sleeps until the router's next timeout, and runs commands from signaling on the
//! router's own task (so the router needs no locks).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use str0m::net::{Protocol, Transmit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::core::{Sfu, SfuEvent};
use super::ice_tcp::{FrameDecoder, IceTcpError, IceTcpLimits, IceTcpStats, TcpGate, encode_frame};

/// Datagrams drained per wake-up before timers get a turn.
const RECV_BATCH: usize = 64;
/// Largest datagram read; WebRTC stays under the path MTU.
const MAX_DATAGRAM: usize = 2048;
/// RFC 4571 frames queued per TCP connection before new ones are dropped (UDP semantics).
const TCP_QUEUE: usize = 256;
/// Bytes read from a TCP connection at a time.
const TCP_READ: usize = 4096;

type Command = Box<dyn FnOnce(&mut Sfu, Instant) + Send>;

/// The router's task is gone (shut down or panicked).
#[derive(Debug, thiserror::Error)]
#[error("media router is not running")]
pub struct DriverGone;

/// Cloneable access to the router task.
#[derive(Clone)]
pub struct SfuHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<SfuEvent>,
    tcp: Arc<Mutex<TcpGate>>,
}

impl SfuHandle {
    /// Runs `f` on the router task with the current time, and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Sfu, Instant) -> R + Send + 'static,
    ) -> Result<R, DriverGone> {
        let (reply, rx) = oneshot::channel();
        let cmd: Command = Box::new(move |sfu, now| {
            let _ = reply.send(f(sfu, now));
        });
        self.tx.send(cmd).await.map_err(|_| DriverGone)?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Runs `f` on the router task without waiting for it, for threads that must not block
    /// (a track's pipeline); false when the router's queue is full or the router is gone.
    pub fn try_run(&self, f: impl FnOnce(&mut Sfu, Instant) + Send + 'static) -> bool {
        self.tx.try_send(Box::new(f)).is_ok()
    }

    /// Router events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SfuEvent> {
        self.events.subscribe()
    }

    /// What `f` reads of the router's state, and the router's events from that moment on:
    /// none of them is already in the state, none after it is missing (the router publishes
    /// all its events before it takes a call, and the subscription is made inside it).
    pub async fn subscribe_with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Sfu) -> R + Send + 'static,
    ) -> Result<(R, broadcast::Receiver<SfuEvent>), DriverGone> {
        let events = self.events.clone();
        self.call(move |sfu, _| (f(sfu), events.subscribe())).await
    }

    /// ICE-TCP connections: open now, and those refused or closed by the limits.
    pub fn ice_tcp_stats(&self) -> IceTcpStats {
        self.tcp.lock().expect("not poisoned").stats()
    }
}

enum TcpEvent {
    Open { local: SocketAddr, remote: SocketAddr, conn: TcpConn },
    Frame { local: SocketAddr, remote: SocketAddr, data: Vec<u8> },
    Closed { local: SocketAddr, remote: SocketAddr },
}

/// The driver's side of an ICE-TCP connection.
struct TcpConn {
    /// Frames to write.
    tx: mpsc::Sender<Vec<u8>>,
    /// Set once a session accepted a frame: the connection has a purpose and may stay.
    accepted: Arc<AtomicBool>,
}

/// Spawns the router task over bound sockets; ICE-TCP connections are held to `tcp_limits`.
pub fn spawn(sfu: Sfu, udp: Vec<UdpSocket>, tcp: Vec<TcpListener>, tcp_limits: IceTcpLimits) -> SfuHandle {
    let (tx, rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(1024);
    let (tcp_tx, tcp_rx) = mpsc::channel(4096);
    let gate = Arc::new(Mutex::new(TcpGate::new(tcp_limits)));
    for listener in tcp {
        tokio::spawn(accept_tcp(listener, tcp_tx.clone(), Arc::clone(&gate)));
    }
    let udp_addrs = udp.iter().map(|s| s.local_addr().expect("a bound socket has an address")).collect();
    let driver = Driver { sfu, udp, udp_addrs, tcp_conns: HashMap::new(), events: events.clone(), send_errors: 0 };
    tokio::spawn(driver.run(rx, tcp_rx));
    SfuHandle { tx, events, tcp: gate }
}

struct Driver {
    sfu: Sfu,
    udp: Vec<UdpSocket>,
    udp_addrs: Vec<SocketAddr>,
    tcp_conns: HashMap<(SocketAddr, SocketAddr), TcpConn>,
    events: broadcast::Sender<SfuEvent>,
    /// Datagrams the OS refused (full buffers, vanished TCP connections).
    send_errors: u64,
}

enum Wake {
    Timer,
    Command(Option<Command>),
    Udp(usize, usize, SocketAddr),
    Tcp(Option<TcpEvent>),
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut tcp_rx: mpsc::Receiver<TcpEvent>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            self.flush();
            // Timers first when due: under steady input the select below would always find a
            // datagram ready and starve them (str0m's pacer and retransmissions run on them).
            let mut deadline = self.sfu.poll_timeout();
            if deadline.is_some_and(|d| d <= Instant::now()) {
                self.sfu.handle_timeout(Instant::now());
                self.flush();
                deadline = self.sfu.poll_timeout();
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                c = commands.recv() => Wake::Command(c),
                r = recv_any(&self.udp, &mut buf) => match r {
                    Ok((i, n, src)) => Wake::Udp(i, n, src),
                    Err(e) => {
                        tracing::warn!(error = %e, "udp receive failed");
                        continue;
                    }
                },
                e = tcp_rx.recv() => Wake::Tcp(e),
                () = sleep => Wake::Timer,
            };
            match wake {
                Wake::Timer => self.sfu.handle_timeout(Instant::now()),
                Wake::Command(Some(cmd)) => cmd(&mut self.sfu, Instant::now()),
                Wake::Command(None) => return,
                Wake::Udp(i, n, src) => {
                    self.receive_udp(i, &buf[..n], src);
                    // Drain what else is queued before looking at timers again.
                    for _ in 0..RECV_BATCH {
                        let Some((i, n, src)) = try_recv_any(&self.udp, &mut buf) else { break };
                        self.receive_udp(i, &buf[..n], src);
                        self.flush();
                    }
                }
                Wake::Tcp(Some(ev)) => self.handle_tcp(ev),
                Wake::Tcp(None) => {}
            }
        }
    }

    fn receive_udp(&mut self, socket: usize, data: &[u8], source: SocketAddr) {
        self.receive(Protocol::Udp, source, self.udp_addrs[socket], data);
    }

    fn receive(&mut self, proto: Protocol, source: SocketAddr, destination: SocketAddr, data: &[u8]) -> bool {
        self.sfu.handle_datagram(Instant::now(), proto, source, destination, data)
    }

    fn handle_tcp(&mut self, ev: TcpEvent) {
        match ev {
            TcpEvent::Open { local, remote, conn } => {
                self.tcp_conns.insert((local, remote), conn);
            }
            TcpEvent::Frame { local, remote, data } => {
                if self.receive(Protocol::Tcp, remote, local, &data)
                    && let Some(c) = self.tcp_conns.get(&(local, remote))
                {
                    c.accepted.store(true, Ordering::Relaxed);
                }
            }
            TcpEvent::Closed { local, remote } => {
                self.tcp_conns.remove(&(local, remote));
            }
        }
    }

    /// Sends what the router produced and publishes its events.
    fn flush(&mut self) {
        while let Some(t) = self.sfu.poll_transmit() {
            self.send(t);
        }
        while let Some(e) = self.sfu.poll_event() {
            tracing::info!(event = ?e, "sfu");
            let _ = self.events.send(e);
        }
    }

    fn send(&mut self, t: Transmit) {
        match t.proto {
            Protocol::Udp => {
                // Bound addresses are cached: asking the socket would be a syscall per packet.
                let Some(sock) = self.udp_addrs.iter().position(|a| *a == t.source).map(|i| &self.udp[i]) else {
                    self.send_error();
                    return;
                };
                // A full socket buffer drops the datagram, as the network would.
                if sock.try_send_to(&t.contents, t.destination).is_err() {
                    self.send_error();
                }
            }
            Protocol::Tcp => {
                let sent = self
                    .tcp_conns
                    .get(&(t.source, t.destination))
                    .is_some_and(|c| c.tx.try_send(t.contents.to_vec()).is_ok());
                if !sent {
                    self.send_error();
                }
            }
            _ => self.send_error(),
        }
    }
}

impl Driver {
    fn send_error(&mut self) {
        self.send_errors += 1;
        if self.send_errors.is_power_of_two() {
            tracing::debug!(total = self.send_errors, "datagrams could not be sent");
        }
    }
}

/// Waits until any socket has a datagram.
async fn recv_any(sockets: &[UdpSocket], buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for (i, s) in sockets.iter().enumerate() {
            let mut rb = tokio::io::ReadBuf::new(buf);
            match s.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(src)) => return Poll::Ready(Ok((i, rb.filled().len(), src))),
                Poll::Ready(Err(e)) if is_transient(&e) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

fn try_recv_any(sockets: &[UdpSocket], buf: &mut [u8]) -> Option<(usize, usize, SocketAddr)> {
    sockets.iter().enumerate().find_map(|(i, s)| s.try_recv_from(buf).ok().map(|(n, src)| (i, n, src)))
}

/// ICMP errors surface as receive errors on Linux; they concern one peer, not the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::WouldBlock)
}

async fn accept_tcp(listener: TcpListener, tx: mpsc::Sender<TcpEvent>, gate: Arc<Mutex<TcpGate>>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                // Refused by dropping: the client sees the connection closed at once.
                let Ok(admitted) = Admitted::new(&gate, remote.ip()) else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_tcp(stream, remote, tx.clone(), admitted));
            }
            Err(e) => {
                tracing::warn!(error = %e, "ice-tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection counted against the limits until it is dropped.
struct Admitted {
    gate: Arc<Mutex<TcpGate>>,
    ip: IpAddr,
}

impl Admitted {
    fn new(gate: &Arc<Mutex<TcpGate>>, ip: IpAddr) -> Result<Self, IceTcpError> {
        gate.lock().expect("not poisoned").admit(ip)?;
        Ok(Admitted { gate: Arc::clone(gate), ip })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, TcpGate> {
        self.gate.lock().expect("not poisoned")
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate().release(self.ip);
    }
}

/// One ICE-TCP connection: RFC 4571 framing (16-bit length, then the packet). It ends when
/// the client closes it, sends a frame longer than allowed, has no frame a session accepted
/// within `first_stun`, or sends nothing for `idle`.
async fn serve_tcp(stream: TcpStream, remote: SocketAddr, events: mpsc::Sender<TcpEvent>, admitted: Admitted) {
    let Ok(local) = stream.local_addr() else { return };
    let limits = admitted.gate().limits();
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut out) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    let accepted = Arc::new(AtomicBool::new(false));
    let conn = TcpConn { tx, accepted: Arc::clone(&accepted) };
    if events.send(TcpEvent::Open { local, remote, conn }).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(pkt) = out.recv().await {
            let Some(frame) = encode_frame(&pkt) else { continue };
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let first_stun = tokio::time::Instant::now() + limits.first_stun;
    let mut last_frame = tokio::time::Instant::now();
    let mut decoder = FrameDecoder::new(limits.max_frame);
    let mut buf = vec![0u8; TCP_READ];
    'conn: loop {
        let idle_at = last_frame + limits.idle;
        let deadline = if accepted.load(Ordering::Relaxed) { idle_at } else { idle_at.min(first_stun) };
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
            // Accepted meanwhile and not idle: wait on.
            Err(_) if accepted.load(Ordering::Relaxed) && tokio::time::Instant::now() < idle_at => continue,
            Err(_) => {
                admitted.gate().timed_out();
                break;
            }
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    last_frame = tokio::time::Instant::now();
                    let data = frame.to_vec();
                    if events.send(TcpEvent::Frame { local, remote, data }).await.is_err() {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "ice-tcp connection closed");
                    admitted.gate().frame_too_long();
                    break 'conn;
                }
            }
        }
    }
    writer.abort();
    let _ = events.send(TcpEvent::Closed { local, remote }).await;
}
