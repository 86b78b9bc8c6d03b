//! The AIC bitstream: a 3-byte header, then 1 to 16 frames of 20 ms: for aic-v1, the codes of
//! the residual quantizer's first `levels` stages packed MSB first; for aic-v2's Opus core,
//! Opus packets. See docs/aic.md.
//!
//! ```text
//! byte 0   vv mm nnnn   version (1), mode (0 CONSERVATIVE, 1 ADAPTIVE, 2 AGGRESSIVE),
//!                       frames in the packet minus one
//! byte 1   model id     which trained model made the frames (1 = aic-v1, 2 = aic-v2 Opus core)
//! byte 2   sequence     number of the packet's first frame, mod 256 (loss detection)
//! ...      model 1:     frames × levels × bits_per_code bits, zero-padded to a byte
//!          model 2:     each frame but the last: its length (1 byte, 1-255), its Opus packet;
//!                       the last frame: its Opus packet (1-255 bytes), to the end
//! ```

use crate::codec::modes::Mode;

/// The version this code writes and the only one it reads.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 3;
/// Frames one packet may carry (the 4-bit count).
pub const MAX_FRAMES: usize = 16;

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
/// The longest Opus frame a packet carries (one length byte); the core's rates need under 40.
pub const MAX_OPUS_FRAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitstreamError {
    #[error("AIC packet shorter than its header")]
    Truncated,
    #[error("AIC bitstream version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("AIC mode {0} is not defined")]
    Mode(u8),
    #[error("AIC model {0} is not known to this build")]
    Model(u8),
    #[error("AIC packet carries {got} bytes of codes where {want} were expected")]
    Length { want: usize, got: usize },
    #[error("an AIC packet holds 1 to {MAX_FRAMES} frames of {levels} codes below {limit}")]
    Codes { levels: usize, limit: u32 },
    #[error("an AIC Opus-core packet holds 1 to {MAX_FRAMES} Opus frames of 1 to {MAX_OPUS_FRAME} bytes")]
    OpusFrames,
    #[error("AIC model {model} has no {mode:?} mode")]
    ModelMode { model: u8, mode: Mode },
    #[error("AIC model {model} does not carry {kind}")]
    Kind { model: u8, kind: &'static str },
}

/// One packet: which mode and model, the first frame's sequence number, and its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub mode: Mode,
    pub model_id: u8,
    pub sequence: u8,
    pub frames: Frames,
}

/// A packet's 20 ms frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frames {
    /// Per frame, the codes of the quantizer's stages (aic-v1).
    Codes(Vec<Vec<u16>>),
    /// Per frame, one Opus packet (aic-v2's Opus core).
    Opus(Vec<Vec<u8>>),
}

impl Frames {
    pub fn len(&self) -> usize {
        match self {
            Frames::Codes(f) => f.len(),
            Frames::Opus(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `model`'s frames may be sent in `mode`: the Opus core has no AGGRESSIVE mode
/// (Opus cannot go that low in 20 ms frames).
fn check_mode(model: u8, mode: Mode) -> Result<(), BitstreamError> {
    if model == OPUS_CORE && mode == Mode::Aggressive {
        return Err(BitstreamError::ModelMode { model, mode });
    }
    Ok(())
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

impl Packet {
    pub fn encode(&self) -> Result<Vec<u8>, BitstreamError> {
        check_mode(self.model_id, self.mode)?;
        if !(1..=MAX_FRAMES).contains(&self.frames.len()) {
            return Err(match self.frames {
                Frames::Opus(_) => BitstreamError::OpusFrames,
                Frames::Codes(_) => {
                    let layout = layout(self.model_id)?;
                    BitstreamError::Codes { levels: layout.levels(self.mode), limit: 1 << layout.bits_per_code }
                }
            });
        }
        let mut out = vec![
            VERSION << 6 | mode_bits(self.mode) << 4 | (self.frames.len() - 1) as u8,
            self.model_id,
            self.sequence,
        ];
        match &self.frames {
            Frames::Codes(frames) => {
                if self.model_id == OPUS_CORE {
                    return Err(BitstreamError::Kind { model: self.model_id, kind: "codes" });
                }
                let layout = layout(self.model_id)?;
                let levels = layout.levels(self.mode);
                let limit = 1u32 << layout.bits_per_code;
                if !frames.iter().all(|f| f.len() == levels && f.iter().all(|&c| u32::from(c) < limit)) {
                    return Err(BitstreamError::Codes { levels, limit });
                }
                let mut bits = BitWriter::default();
                for code in frames.iter().flatten() {
                    bits.put(u32::from(*code), layout.bits_per_code);
                }
                out.extend(bits.finish());
            }
            Frames::Opus(frames) => {
                if self.model_id != OPUS_CORE {
                    return Err(BitstreamError::Kind { model: self.model_id, kind: "Opus frames" });
                }
                if !frames.iter().all(|f| (1..=MAX_OPUS_FRAME).contains(&f.len())) {
                    return Err(BitstreamError::OpusFrames);
                }
                let (last, rest) = frames.split_last().expect("at least one frame");
                for f in rest {
                    out.push(f.len() as u8);
                    out.extend_from_slice(f);
                }
                out.extend_from_slice(last);
            }
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Packet, BitstreamError> {
        let [head, model_id, sequence, payload @ ..] = bytes else { return Err(BitstreamError::Truncated) };
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
        let count = (head & 0x0f) as usize + 1;
        let frames = if *model_id == OPUS_CORE {
            check_mode(*model_id, mode)?;
            Frames::Opus(opus_frames(payload, count)?)
        } else {
            let layout = layout(*model_id)?;
            let levels = layout.levels(mode);
            let want = (count * layout.frame_bits(mode)).div_ceil(8);
            if payload.len() != want {
                return Err(BitstreamError::Length { want, got: payload.len() });
            }
            let mut bits = BitReader { bytes: payload, pos: 0 };
            Frames::Codes(
                (0..count).map(|_| (0..levels).map(|_| bits.take(layout.bits_per_code) as u16).collect()).collect(),
            )
        };
        Ok(Packet { mode, model_id: *model_id, sequence: *sequence, frames })
    }
}

/// Splits an Opus-core payload into its `count` frames.
fn opus_frames(mut payload: &[u8], count: usize) -> Result<Vec<Vec<u8>>, BitstreamError> {
    let mut frames = Vec::with_capacity(count);
    for _ in 1..count {
        let [len, rest @ ..] = payload else { return Err(BitstreamError::OpusFrames) };
        let len = usize::from(*len);
        if len == 0 || rest.len() < len {
            return Err(BitstreamError::OpusFrames);
        }
        frames.push(rest[..len].to_vec());
        payload = &rest[len..];
    }
    if !(1..=MAX_OPUS_FRAME).contains(&payload.len()) {
        return Err(BitstreamError::OpusFrames);
    }
    frames.push(payload.to_vec());
    Ok(frames)
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u8) {
        self.acc = self.acc << bits | u64::from(value);
        self.n += u32::from(bits);
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push((self.acc << (8 - self.n)) as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// The next `bits` bits; the caller checked there are enough.
    fn take(&mut self, bits: u8) -> u32 {
        let mut v = 0u32;
        for _ in 0..bits {
            let bit = self.bytes[self.pos / 8] >> (7 - self.pos % 8) & 1;
            v = v << 1 | u32::from(bit);
            self.pos += 1;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(mode: Mode, frames: usize) -> Packet {
        let levels = AIC_V1.levels(mode);
        let frames = (0..frames).map(|f| (0..levels).map(|l| ((f * 997 + l * 131) % 4096) as u16).collect()).collect();
        Packet { mode, model_id: 1, sequence: 250, frames: Frames::Codes(frames) }
    }

    #[test]
    fn every_mode_round_trips_at_its_rate() {
        for (mode, frame_bytes) in [(Mode::Conservative, 30), (Mode::Adaptive, 12), (Mode::Aggressive, 6)] {
            let p = packet(mode, 1);
            let bytes = p.encode().unwrap();
            // 20 ms of codes: 12, 4.8 and 2.4 kbit/s.
            assert_eq!(bytes.len(), HEADER_LEN + frame_bytes, "{mode:?}");
            assert_eq!(Packet::decode(&bytes).unwrap(), p);
            let p = packet(mode, 3);
            assert_eq!(Packet::decode(&p.encode().unwrap()).unwrap(), p);
        }
    }

    #[test]
    fn unknown_versions_modes_and_models_are_refused_with_their_reason() {
        let good = packet(Mode::Adaptive, 1).encode().unwrap();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            Packet::decode(&b)
        };
        assert_eq!(with(0, 2 << 6 | 1 << 4), Err(BitstreamError::Version(2)));
        assert_eq!(with(0, 1 << 6 | 3 << 4), Err(BitstreamError::Mode(3)));
        assert_eq!(with(1, 9), Err(BitstreamError::Model(9)));
        assert_eq!(with(0, 1 << 6 | 1 << 4 | 1), Err(BitstreamError::Length { want: 24, got: 12 }));
        assert_eq!(Packet::decode(&good[..2]), Err(BitstreamError::Truncated));
        assert_eq!(Packet::decode(&good[..good.len() - 1]), Err(BitstreamError::Length { want: 12, got: 11 }));
        let mut bad = packet(Mode::Adaptive, 1);
        let Frames::Codes(f) = &mut bad.frames else { unreachable!() };
        f[0][0] = 4096;
        assert!(matches!(bad.encode(), Err(BitstreamError::Codes { .. })));
        assert!(matches!(packet(Mode::Adaptive, 17).encode(), Err(BitstreamError::Codes { .. })));
    }

    fn opus_packet(mode: Mode, lens: &[usize]) -> Packet {
        let frames = lens.iter().map(|&n| (0..n).map(|i| (i * 37 + n) as u8).collect()).collect();
        Packet { mode, model_id: OPUS_CORE, sequence: 3, frames: Frames::Opus(frames) }
    }

    #[test]
    fn opus_core_frames_round_trip_with_their_lengths() {
        for lens in [&[29][..], &[1, 255], &[30, 12, 41]] {
            let p = opus_packet(Mode::Conservative, lens);
            let bytes = p.encode().unwrap();
            // The header, a length byte for every frame but the last, the frames.
            assert_eq!(bytes.len(), HEADER_LEN + lens.len() - 1 + lens.iter().sum::<usize>());
            assert_eq!(Packet::decode(&bytes).unwrap(), p);
        }
    }

    #[test]
    fn bad_opus_core_packets_are_refused_with_their_reason() {
        let good = opus_packet(Mode::Adaptive, &[20, 10]).encode().unwrap();
        // A length past the end, a zero length, an empty last frame.
        let mut past = good.clone();
        past[HEADER_LEN] = 200;
        assert_eq!(Packet::decode(&past), Err(BitstreamError::OpusFrames));
        let mut zero = good.clone();
        zero[HEADER_LEN] = 0;
        assert_eq!(Packet::decode(&zero), Err(BitstreamError::OpusFrames));
        assert_eq!(Packet::decode(&good[..HEADER_LEN + 21]), Err(BitstreamError::OpusFrames));
        assert_eq!(Packet::decode(&good[..HEADER_LEN]), Err(BitstreamError::OpusFrames));
        // The Opus core has no AGGRESSIVE mode, either way.
        let mut aggressive = good.clone();
        aggressive[0] = 1 << 6 | 2 << 4 | 1;
        let refused = BitstreamError::ModelMode { model: OPUS_CORE, mode: Mode::Aggressive };
        assert_eq!(Packet::decode(&aggressive), Err(refused.clone()));
        assert_eq!(opus_packet(Mode::Aggressive, &[5]).encode(), Err(refused));
        assert_eq!(opus_packet(Mode::Adaptive, &[256]).encode(), Err(BitstreamError::OpusFrames));
        assert_eq!(opus_packet(Mode::Adaptive, &[]).encode(), Err(BitstreamError::OpusFrames));
        // Frames of the wrong kind for the model.
        let mut codes_as_opus = packet(Mode::Adaptive, 1);
        codes_as_opus.model_id = OPUS_CORE;
        assert!(matches!(codes_as_opus.encode(), Err(BitstreamError::Kind { .. })));
        let mut opus_as_codes = opus_packet(Mode::Adaptive, &[5]);
        opus_as_codes.model_id = AIC_V1.model_id;
        assert!(matches!(opus_as_codes.encode(), Err(BitstreamError::Kind { .. })));
    }
}
