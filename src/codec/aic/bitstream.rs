//! The AIC bitstream: a 3-byte header, then 1 to 16 frames of 20 ms, each the codes of the
//! residual quantizer's first `levels` stages packed MSB first. See docs/aic.md.
//!
//! ```text
//! byte 0   vv mm nnnn   version (1), mode (0 CONSERVATIVE, 1 ADAPTIVE, 2 AGGRESSIVE),
//!                       frames in the packet minus one
//! byte 1   model id     which trained model made the codes (1 = aic-v1)
//! byte 2   sequence     number of the packet's first frame, mod 256 (loss detection)
//! ...      codes        frames × levels × bits_per_code bits, zero-padded to a byte
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

/// The models this build can decode.
pub const LAYOUTS: [Layout; 1] = [AIC_V1];

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
}

/// One packet: which mode and model, the first frame's sequence number, and per frame the
/// codes of the quantizer's stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub mode: Mode,
    pub model_id: u8,
    pub sequence: u8,
    pub frames: Vec<Vec<u16>>,
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
        let layout = layout(self.model_id)?;
        let levels = layout.levels(self.mode);
        let limit = 1u32 << layout.bits_per_code;
        let ok = (1..=MAX_FRAMES).contains(&self.frames.len())
            && self.frames.iter().all(|f| f.len() == levels && f.iter().all(|&c| u32::from(c) < limit));
        if !ok {
            return Err(BitstreamError::Codes { levels, limit });
        }
        let mut out = vec![
            VERSION << 6 | mode_bits(self.mode) << 4 | (self.frames.len() - 1) as u8,
            self.model_id,
            self.sequence,
        ];
        let mut bits = BitWriter::default();
        for code in self.frames.iter().flatten() {
            bits.put(u32::from(*code), layout.bits_per_code);
        }
        out.extend(bits.finish());
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Packet, BitstreamError> {
        let [head, model_id, sequence, codes @ ..] = bytes else { return Err(BitstreamError::Truncated) };
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
        let layout = layout(*model_id)?;
        let frames = (head & 0x0f) as usize + 1;
        let levels = layout.levels(mode);
        let want = (frames * layout.frame_bits(mode)).div_ceil(8);
        if codes.len() != want {
            return Err(BitstreamError::Length { want, got: codes.len() });
        }
        let mut bits = BitReader { bytes: codes, pos: 0 };
        let frames =
            (0..frames).map(|_| (0..levels).map(|_| bits.take(layout.bits_per_code) as u16).collect()).collect();
        Ok(Packet { mode, model_id: *model_id, sequence: *sequence, frames })
    }
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
        Packet { mode, model_id: 1, sequence: 250, frames }
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
        bad.frames[0][0] = 4096;
        assert!(matches!(bad.encode(), Err(BitstreamError::Codes { .. })));
        assert!(matches!(packet(Mode::Adaptive, 17).encode(), Err(BitstreamError::Codes { .. })));
    }
}
