//! The AIC bitstream: one 20 ms frame per packet behind a 1-byte header: for aic-v1, the codes
//! of the residual quantizer's first `levels` stages packed MSB first; for aic-v2's Opus core,
//! an Opus packet without its first byte; for aic-v2's vocoder core, its parameters. See
//! docs/aic.md.
//!
//! ```text
//! byte 0   vv mm kk ss   version (2), mode (0 CONSERVATIVE, 1 ADAPTIVE, 2 AGGRESSIVE),
//!                        model id (1 = aic-v1, 2 = aic-v2's Opus core, 3 = aic-v2's vocoder
//!                        core), sequence mod 4
//! ...      model 1:      levels × bits_per_code bits, zero-padded to a byte
//!          model 2:      the Opus packet after its TOC byte, which the mode fixes
//!          model 3:      5 bytes: 10 line spectral frequencies, level, voicing, pitch (lpc.rs)
//! ```
//!
//! Each packet is one frame because every transport AIC rides (RTP, QUIC datagrams) sends
//! 20 ms at a time, and at 5 kbit/s each header byte costs 0.4 kbit/s. For the same reason the
//! Opus core is held to one configuration per mode (SILK, 20 ms, mono, one frame; wideband in
//! CONSERVATIVE, narrowband in ADAPTIVE), so its TOC byte says nothing the header does not and
//! the header takes its place: an Opus-core packet is exactly as long as the Opus packet it
//! carries. The 2-bit sequence tells a decoder that up to 3 packets went missing; the
//! transports number packets for longer losses.

use super::bits::{BitReader, BitWriter};
use super::lpc;
use crate::codec::modes::Mode;

/// The version this code writes and the only one it reads.
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 1;

/// How a model's codes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub model_id: u8,
    pub bits_per_code: u8,
    /// Quantizer stages sent per frame in CONSERVATIVE, ADAPTIVE and AGGRESSIVE.
    pub levels: [u8; 3],
}

impl Layout {
    pub fn levels(&self, mode: Mode) -> usize {
        self.levels[mode_bits(mode) as usize] as usize
    }

    /// Payload bits of one 20 ms frame.
    pub fn frame_bits(&self, mode: Mode) -> usize {
        self.levels(mode) * self.bits_per_code as usize
    }
}

/// aic-v1: 4096-entry codebooks; 20, 8 and 4 stages make 12, 4.8 and 2.4 kbit/s of codes.
pub const AIC_V1: Layout = Layout { model_id: 1, bits_per_code: 12, levels: [20, 8, 4] };

/// The code layouts this build can decode.
pub const LAYOUTS: [Layout; 1] = [AIC_V1];

/// aic-v2's Opus-core frames (CONSERVATIVE and ADAPTIVE): 16 kHz Opus packets that the
/// decoder's network enhances.
pub const OPUS_CORE: u8 = 2;

/// aic-v2's vocoder-core frames (AGGRESSIVE): [`lpc::FRAME_BYTES`] of a linear-prediction
/// vocoder's parameters, decoded as they are (no enhancer).
pub const VOCODER_CORE: u8 = 3;

/// The audio bandwidth the Opus core is held to in `mode`; `None` where it has no such mode
/// (Opus cannot go down to AGGRESSIVE's rate in 20 ms frames).
pub fn core_bandwidth(mode: Mode) -> Option<opus::Bandwidth> {
    match mode {
        Mode::Conservative => Some(opus::Bandwidth::Wideband),
        Mode::Adaptive => Some(opus::Bandwidth::Narrowband),
        Mode::Aggressive => None,
    }
}

/// The TOC byte (RFC 6716, 3.1) of the Opus core's packets in `mode`: SILK-only, 20 ms
/// (configurations 1, 5 and 9 for narrow-, medium- and wideband), mono, one frame.
fn core_toc(mode: Mode) -> Option<u8> {
    core_bandwidth(mode).map(|b| {
        let config = match b {
            opus::Bandwidth::Narrowband => 1,
            opus::Bandwidth::Mediumband => 5,
            _ => 9,
        };
        config << 3
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitstreamError {
    #[error("empty AIC packet")]
    Truncated,
    #[error("AIC bitstream version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("AIC mode {0} is not defined")]
    Mode(u8),
    #[error("AIC model {0} is not known to this build")]
    Model(u8),
    #[error("AIC packet carries {got} bytes of codes where {want} were expected")]
    Length { want: usize, got: usize },
    #[error("an AIC frame holds {levels} codes below {limit}")]
    Codes { levels: usize, limit: u32 },
    #[error("AIC {mode:?} frames are Opus packets that begin with TOC byte {want:#04x}")]
    OpusToc { mode: Mode, want: u8 },
    #[error("AIC model {model} has no {mode:?} mode")]
    ModelMode { model: u8, mode: Mode },
    #[error("AIC model {model} does not carry {kind}")]
    Kind { model: u8, kind: &'static str },
}

/// One packet: which mode and model, its sequence number, and its 20 ms frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub mode: Mode,
    pub model_id: u8,
    /// Mod 4: `encode` keeps the low two bits.
    pub sequence: u8,
    pub frame: Frame,
}

/// A packet's 20 ms frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The codes of the quantizer's stages (aic-v1).
    Codes(Vec<u16>),
    /// One whole Opus packet, TOC byte included (aic-v2's Opus core).
    Opus(Vec<u8>),
    /// The vocoder's parameters (aic-v2's vocoder core).
    Vocoder([u8; lpc::FRAME_BYTES]),
}

fn mode_bits(mode: Mode) -> u8 {
    match mode {
        Mode::Conservative => 0,
        Mode::Adaptive => 1,
        Mode::Aggressive => 2,
    }
}

fn layout(model_id: u8) -> Result<&'static Layout, BitstreamError> {
    LAYOUTS.iter().find(|l| l.model_id == model_id).ok_or(BitstreamError::Model(model_id))
}

/// Refuses a mode other than AGGRESSIVE for the vocoder core: the better modes have Opus.
fn vocoder_mode(mode: Mode) -> Result<(), BitstreamError> {
    match mode {
        Mode::Aggressive => Ok(()),
        _ => Err(BitstreamError::ModelMode { model: VOCODER_CORE, mode }),
    }
}

/// The Opus core's TOC byte in `mode`, refusing the mode it does not have.
fn toc(model: u8, mode: Mode) -> Result<u8, BitstreamError> {
    core_toc(mode).ok_or(BitstreamError::ModelMode { model, mode })
}

impl Packet {
    pub fn encode(&self) -> Result<Vec<u8>, BitstreamError> {
        let mut out = vec![VERSION << 6 | mode_bits(self.mode) << 4 | self.model_id << 2 | (self.sequence & 0b11)];
        match &self.frame {
            Frame::Codes(codes) => {
                if self.model_id == OPUS_CORE || self.model_id == VOCODER_CORE {
                    return Err(BitstreamError::Kind { model: self.model_id, kind: "codes" });
                }
                let layout = layout(self.model_id)?;
                let levels = layout.levels(self.mode);
                let limit = 1u32 << layout.bits_per_code;
                if codes.len() != levels || !codes.iter().all(|&c| u32::from(c) < limit) {
                    return Err(BitstreamError::Codes { levels, limit });
                }
                let mut bits = BitWriter::default();
                for code in codes {
                    bits.put(u32::from(*code), layout.bits_per_code);
                }
                out.extend(bits.finish());
            }
            Frame::Opus(packet) => {
                if self.model_id != OPUS_CORE {
                    return Err(BitstreamError::Kind { model: self.model_id, kind: "Opus frames" });
                }
                let want = toc(self.model_id, self.mode)?;
                let [first, rest @ ..] = packet.as_slice() else {
                    return Err(BitstreamError::OpusToc { mode: self.mode, want });
                };
                if *first != want {
                    return Err(BitstreamError::OpusToc { mode: self.mode, want });
                }
                out.extend_from_slice(rest);
            }
            Frame::Vocoder(params) => {
                if self.model_id != VOCODER_CORE {
                    return Err(BitstreamError::Kind { model: self.model_id, kind: "vocoder frames" });
                }
                vocoder_mode(self.mode)?;
                out.extend_from_slice(params);
            }
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Packet, BitstreamError> {
        let [head, payload @ ..] = bytes else { return Err(BitstreamError::Truncated) };
        let version = head >> 6;
        if version != VERSION {
            return Err(BitstreamError::Version(version));
        }
        let mode = match (head >> 4) & 0b11 {
            0 => Mode::Conservative,
            1 => Mode::Adaptive,
            2 => Mode::Aggressive,
            m => return Err(BitstreamError::Mode(m)),
        };
        let model_id = (head >> 2) & 0b11;
        let frame = if model_id == OPUS_CORE {
            let mut packet = Vec::with_capacity(1 + payload.len());
            packet.push(toc(model_id, mode)?);
            packet.extend_from_slice(payload);
            Frame::Opus(packet)
        } else if model_id == VOCODER_CORE {
            vocoder_mode(mode)?;
            let params = payload
                .try_into()
                .map_err(|_| BitstreamError::Length { want: lpc::FRAME_BYTES, got: payload.len() })?;
            Frame::Vocoder(params)
        } else {
            let layout = layout(model_id)?;
            let levels = layout.levels(mode);
            let want = layout.frame_bits(mode).div_ceil(8);
            if payload.len() != want {
                return Err(BitstreamError::Length { want, got: payload.len() });
            }
            let mut bits = BitReader::new(payload);
            Frame::Codes((0..levels).map(|_| bits.take(layout.bits_per_code) as u16).collect())
        };
        Ok(Packet { mode, model_id, sequence: head & 0b11, frame })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(mode: Mode) -> Packet {
        let codes = (0..AIC_V1.levels(mode)).map(|l| ((l * 997 + 131) % 4096) as u16).collect();
        Packet { mode, model_id: 1, sequence: 2, frame: Frame::Codes(codes) }
    }

    #[test]
    fn every_mode_round_trips_at_its_rate() {
        for (mode, frame_bytes) in [(Mode::Conservative, 30), (Mode::Adaptive, 12), (Mode::Aggressive, 6)] {
            let p = packet(mode);
            let bytes = p.encode().unwrap();
            // 20 ms of codes: 12, 4.8 and 2.4 kbit/s.
            assert_eq!(bytes.len(), HEADER_LEN + frame_bytes, "{mode:?}");
            assert_eq!(Packet::decode(&bytes).unwrap(), p);
        }
        // The sequence number is sent mod 4.
        let mut p = packet(Mode::Adaptive);
        p.sequence = 255;
        assert_eq!(Packet::decode(&p.encode().unwrap()).unwrap().sequence, 3);
    }

    #[test]
    fn unknown_versions_modes_and_models_are_refused_with_their_reason() {
        let good = packet(Mode::Adaptive).encode().unwrap();
        let with_head = |v: u8| {
            let mut b = good.clone();
            b[0] = v;
            Packet::decode(&b)
        };
        assert_eq!(with_head(1 << 6 | 1 << 4 | 1 << 2), Err(BitstreamError::Version(1)));
        assert_eq!(with_head(2 << 6 | 3 << 4 | 1 << 2), Err(BitstreamError::Mode(3)));
        // The vocoder core has AGGRESSIVE only.
        let refused = BitstreamError::ModelMode { model: VOCODER_CORE, mode: Mode::Adaptive };
        assert_eq!(with_head(2 << 6 | 1 << 4 | 3 << 2), Err(refused));
        assert_eq!(with_head(2 << 6 | 1 << 4), Err(BitstreamError::Model(0)));
        // ADAPTIVE's 12 bytes read as CONSERVATIVE's 30.
        assert_eq!(with_head(2 << 6 | 1 << 2), Err(BitstreamError::Length { want: 30, got: 12 }));
        assert_eq!(Packet::decode(&[]), Err(BitstreamError::Truncated));
        assert_eq!(Packet::decode(&good[..good.len() - 1]), Err(BitstreamError::Length { want: 12, got: 11 }));
        let with_codes = |change: &dyn Fn(&mut Vec<u16>)| {
            let mut p = packet(Mode::Adaptive);
            let Frame::Codes(f) = &mut p.frame else { unreachable!() };
            change(f);
            p.encode()
        };
        assert!(matches!(with_codes(&|f| f[0] = 4096), Err(BitstreamError::Codes { .. })));
        assert!(matches!(with_codes(&|f| f.push(1)), Err(BitstreamError::Codes { .. })));
        let mut unknown = packet(Mode::Adaptive);
        unknown.model_id = 9;
        assert_eq!(unknown.encode(), Err(BitstreamError::Model(9)));
    }

    #[test]
    fn vocoder_core_packets_carry_its_five_bytes_in_aggressive_only() {
        let params = [0x9c, 0x01, 0xff, 0x42, 0x7e];
        let p = Packet { mode: Mode::Aggressive, model_id: VOCODER_CORE, sequence: 1, frame: Frame::Vocoder(params) };
        let bytes = p.encode().unwrap();
        // 2.4 kbit/s with the header.
        assert_eq!(bytes.len(), HEADER_LEN + lpc::FRAME_BYTES);
        assert_eq!(bytes[0], 2 << 6 | 2 << 4 | VOCODER_CORE << 2 | 1);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
        for len in [0, 4, 6] {
            let mut b = bytes[..1].to_vec();
            b.resize(1 + len, 0);
            assert_eq!(Packet::decode(&b), Err(BitstreamError::Length { want: lpc::FRAME_BYTES, got: len }));
        }
        let adaptive = Packet { mode: Mode::Adaptive, ..p.clone() };
        assert_eq!(adaptive.encode(), Err(BitstreamError::ModelMode { model: VOCODER_CORE, mode: Mode::Adaptive }));
        let as_codes = Packet { frame: Frame::Codes(vec![1; 4]), ..p.clone() };
        assert!(matches!(as_codes.encode(), Err(BitstreamError::Kind { .. })));
        let wrong_model = Packet { model_id: OPUS_CORE, ..p };
        assert!(matches!(wrong_model.encode(), Err(BitstreamError::Kind { .. })));
    }

    fn opus_packet(mode: Mode, len: usize) -> Packet {
        let toc = core_toc(mode).unwrap_or(0x08);
        let frame = std::iter::once(toc).chain((1..len).map(|i| (i * 37 + len) as u8)).collect();
        Packet { mode, model_id: OPUS_CORE, sequence: 3, frame: Frame::Opus(frame) }
    }

    #[test]
    fn opus_core_packets_are_as_long_as_the_opus_packets_they_carry() {
        for (mode, toc) in [(Mode::Conservative, 0x48), (Mode::Adaptive, 0x08)] {
            for len in [1, 13, 29, 300] {
                let p = opus_packet(mode, len);
                let bytes = p.encode().unwrap();
                assert_eq!(bytes.len(), len);
                assert_eq!(bytes[0], 2 << 6 | mode_bits(mode) << 4 | OPUS_CORE << 2 | 3);
                let back = Packet::decode(&bytes).unwrap();
                assert_eq!(back, p);
                let Frame::Opus(f) = back.frame else { unreachable!() };
                assert_eq!(f[0], toc, "{mode:?}: the mode's TOC byte is restored");
            }
        }
    }

    #[test]
    fn bad_opus_core_packets_are_refused_with_their_reason() {
        // An Opus packet in another configuration than the mode's (here wideband in ADAPTIVE),
        // or none at all.
        let refused = Err(BitstreamError::OpusToc { mode: Mode::Adaptive, want: 0x08 });
        for frame in [vec![0x48; 20], vec![]] {
            let p = Packet { frame: Frame::Opus(frame), ..opus_packet(Mode::Adaptive, 20) };
            assert_eq!(p.encode(), refused);
        }
        // The Opus core has no AGGRESSIVE mode, either way.
        let refused = BitstreamError::ModelMode { model: OPUS_CORE, mode: Mode::Aggressive };
        assert_eq!(Packet::decode(&[2 << 6 | 2 << 4 | OPUS_CORE << 2, 7, 7]), Err(refused.clone()));
        assert_eq!(opus_packet(Mode::Aggressive, 5).encode(), Err(refused));
        // Frames of the wrong kind for the model.
        let mut codes_as_opus = packet(Mode::Adaptive);
        codes_as_opus.model_id = OPUS_CORE;
        assert!(matches!(codes_as_opus.encode(), Err(BitstreamError::Kind { .. })));
        let mut opus_as_codes = opus_packet(Mode::Adaptive, 5);
        opus_as_codes.model_id = AIC_V1.model_id;
        assert!(matches!(opus_as_codes.encode(), Err(BitstreamError::Kind { .. })));
    }
}
