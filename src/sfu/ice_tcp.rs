//! ICE over TCP (RFC 6544) without the sockets: the RFC 4571 framing (a 16-bit length, then
//! the packet) and the admission of connections against node-wide and per-address limits.
//! The driver owns the sockets and the clock; this is what it asks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// How much ICE-TCP a node accepts and for how long an unproductive connection stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IceTcpLimits {
    /// Open connections on the node; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections from one remote address.
    pub max_per_ip: usize,
    /// Until a session accepts a frame of the connection (its ICE binding request names
    /// the session); a connection that never gets there holds nothing for anybody.
    pub first_stun: Duration,
    /// Without a frame from the client; ICE consent checks (RFC 7675) come every few seconds.
    pub idle: Duration,
    /// Largest frame read; WebRTC packets stay under the path MTU, as on UDP.
    pub max_frame: usize,
}

impl Default for IceTcpLimits {
    fn default() -> Self {
        IceTcpLimits {
            max_connections: 1024,
            max_per_ip: 16,
            first_stun: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            max_frame: 2048,
        }
    }
}

/// Why a connection is refused or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IceTcpError {
    #[error("the node has its maximum of ICE-TCP connections")]
    NodeFull,
    #[error("this address has its maximum of ICE-TCP connections")]
    AddressFull,
    #[error("frame of {0} bytes is larger than allowed")]
    FrameTooLong(usize),
}

/// Incremental RFC 4571 decoding of one connection's byte stream. It never holds more than
/// one partial frame and what was pushed since: a frame longer than `max_frame` is an error
/// as soon as its length is read.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as frames.
    consumed: usize,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { buf: Vec::new(), consumed: 0, max_frame }
    }

    /// Adds bytes read from the stream; take the frames they complete with `next_frame`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if the stream has one.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, IceTcpError> {
        let rest = &self.buf[self.consumed..];
        let Some(header) = rest.first_chunk::<2>() else { return Ok(None) };
        let len = usize::from(u16::from_be_bytes(*header));
        if len > self.max_frame {
            return Err(IceTcpError::FrameTooLong(len));
        }
        if rest.len() < 2 + len {
            return Ok(None);
        }
        let start = self.consumed + 2;
        self.consumed = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Bytes held (a partial frame, or frames not taken yet).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }
}

/// Writes one RFC 4571 frame; None for a packet too long for the 16-bit length.
pub fn encode_frame(packet: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = Vec::with_capacity(2 + packet.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(out)
}

/// Who a connection counts against: its IPv4 address, or its IPv6 /64, which one host
/// typically holds whole (counted per address, one host could take the node's every slot).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections against the limits, and what happened to the others.
#[derive(Debug, Default)]
pub struct TcpGate {
    limits: IceTcpLimits,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    stats: IceTcpStats,
}

/// ICE-TCP counters, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IceTcpStats {
    /// Open connections now.
    pub open: u64,
    /// Connections closed on accept: the node or their address had its maximum.
    pub refused: u64,
    /// Connections closed because no session accepted them in time, or they went idle.
    pub timed_out: u64,
    /// Connections closed for a frame longer than allowed.
    pub frames_too_long: u64,
}

impl TcpGate {
    pub fn new(limits: IceTcpLimits) -> Self {
        TcpGate { limits, ..TcpGate::default() }
    }

    pub fn limits(&self) -> IceTcpLimits {
        self.limits
    }

    /// Counts a new connection from `ip`, or refuses it (and counts that).
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), IceTcpError> {
        let ip = client_of(ip);
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let refused = if self.open >= self.limits.max_connections {
            Some(IceTcpError::NodeFull)
        } else if from_ip >= self.limits.max_per_ip {
            Some(IceTcpError::AddressFull)
        } else {
            None
        };
        if let Some(e) = refused {
            self.stats.refused += 1;
            return Err(e);
        }
        self.open += 1;
        self.per_ip.insert(ip, from_ip + 1);
        Ok(())
    }

    /// A connection admitted from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = client_of(ip);
        let Some(n) = self.per_ip.get_mut(&ip) else { return };
        *n -= 1;
        if *n == 0 {
            self.per_ip.remove(&ip);
        }
        self.open -= 1;
    }

    pub fn timed_out(&mut self) {
        self.stats.timed_out += 1;
    }

    pub fn frame_too_long(&mut self) {
        self.stats.frames_too_long += 1;
    }

    pub fn stats(&self) -> IceTcpStats {
        IceTcpStats { open: self.open as u64, ..self.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let packets: Vec<Vec<u8>> = vec![vec![1; 20], vec![], vec![2; 1500], vec![3; 1]];
        let stream: Vec<u8> = packets.iter().flat_map(|p| encode_frame(p).unwrap()).collect();
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut d = FrameDecoder::new(2048);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
                assert!(d.buffered() < 2 + 1500 + chunk, "holds at most one partial frame and a push");
            }
            assert_eq!(got, packets, "chunks of {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn a_frame_longer_than_allowed_is_refused_by_its_header() {
        let mut d = FrameDecoder::new(2048);
        d.push(&[0x08, 0x01]);
        assert_eq!(d.next_frame(), Err(IceTcpError::FrameTooLong(2049)));
        let mut d = FrameDecoder::new(2048);
        d.push(&[0x08]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(encode_frame(&vec![0; 65_536]), None);
    }

    #[test]
    fn connections_are_capped_per_node_and_per_address() {
        let limits = IceTcpLimits { max_connections: 3, max_per_ip: 2, ..IceTcpLimits::default() };
        let mut g = TcpGate::new(limits);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        g.admit(a).unwrap();
        g.admit(a).unwrap();
        assert_eq!(g.admit(a), Err(IceTcpError::AddressFull));
        g.admit(b).unwrap();
        assert_eq!(g.admit(c), Err(IceTcpError::NodeFull));
        g.release(a);
        g.admit(c).unwrap();
        assert_eq!(g.stats(), IceTcpStats { open: 3, refused: 2, timed_out: 0, frames_too_long: 0 });
        for ip in [a, b, c] {
            g.release(ip);
        }
        assert_eq!(g.stats().open, 0);
        assert!(g.per_ip.is_empty());
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let mut g = TcpGate::new(IceTcpLimits { max_connections: 10, max_per_ip: 2, ..IceTcpLimits::default() });
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        g.admit(one).unwrap();
        g.admit(same_64).unwrap();
        assert_eq!(g.admit("2001:db8:1:2::77".parse().unwrap()), Err(IceTcpError::AddressFull));
        g.admit("2001:db8:1:3::1".parse().unwrap()).unwrap();
        g.release(same_64);
        g.admit(one).unwrap();
    }
}
