//! Bit packing for the AIC frame payloads (the LPC vocoder frames and the header fields).

/// Packs values MSB first.
#[derive(Default)]
pub(super) struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    pub(super) fn put(&mut self, value: u32, bits: u8) {
        self.acc = self.acc << bits | u64::from(value);
        self.n += u32::from(bits);
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push((self.acc << (8 - self.n)) as u8);
        }
        self.out
    }
}

pub(super) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    pub(super) fn new(bytes: &[u8]) -> BitReader<'_> {
        BitReader { bytes, pos: 0 }
    }

    /// The next `bits` bits; the caller checked there are enough.
    pub(super) fn take(&mut self, bits: u8) -> u32 {
        let mut v = 0u32;
        for _ in 0..bits {
            let bit = self.bytes[self.pos / 8] >> (7 - self.pos % 8) & 1;
            v = v << 1 | u32::from(bit);
            self.pos += 1;
        }
        v
    }
}
