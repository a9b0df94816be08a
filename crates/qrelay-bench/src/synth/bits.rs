//! An MSB-first bit writer with the Exp-Golomb codes of H.264 (`ue(v)`, `se(v)`), and
//! H.264's emulation prevention (RBSP → NAL unit payload). AAC raw data blocks use the
//! same bit order.

/// Writes bits most significant first into bytes.
#[derive(Debug, Default)]
pub(super) struct BitWriter {
    bytes: Vec<u8>,
    /// Bits of the last byte already used (0..8; 0 means the last byte is full or none).
    used: u32,
}

impl BitWriter {
    /// The low `n` bits of `value` (`n` ≤ 32).
    pub(super) fn bits(&mut self, n: u32, value: u32) {
        for i in (0..n).rev() {
            self.bit(value >> i & 1 == 1);
        }
    }

    /// One bit.
    pub(super) fn bit(&mut self, one: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if one {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 0x80 >> self.used;
            }
        }
        self.used = (self.used + 1) % 8;
    }

    /// Unsigned Exp-Golomb, `ue(v)`.
    pub(super) fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        self.bits(len - 1, 0);
        for i in (0..len).rev() {
            self.bit(x >> i & 1 == 1);
        }
    }

    /// Signed Exp-Golomb, `se(v)`.
    pub(super) fn se(&mut self, v: i32) {
        let mapped = if v > 0 { 2 * v.unsigned_abs() - 1 } else { 2 * v.unsigned_abs() };
        self.ue(mapped);
    }

    /// Bits written so far.
    pub(super) fn len_bits(&self) -> usize {
        match self.used {
            0 => self.bytes.len() * 8,
            used => (self.bytes.len() - 1) * 8 + used as usize,
        }
    }

    /// Zero bits up to the next byte boundary.
    pub(super) fn align_zero(&mut self) {
        while self.used != 0 {
            self.bit(false);
        }
    }

    /// `rbsp_trailing_bits()`: a one, then zeros to the byte boundary.
    pub(super) fn trailing(&mut self) {
        self.bit(true);
        self.align_zero();
    }

    /// The bytes (the last one padded with zeros).
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A NAL unit from its header byte and RBSP, with an emulation prevention byte (0x03)
/// after every two zero bytes that a byte ≤ 3 follows, so no start code appears inside.
pub(super) fn nal_unit(header: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 1);
    out.push(header);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes() {
        let mut w = BitWriter::default();
        // ue: 0 → 1, 1 → 010, 2 → 011, 3 → 00100; se: 1 → 010, -1 → 011, 0 → 1.
        for v in [0, 1, 2, 3] {
            w.ue(v);
        }
        w.se(1);
        w.se(-1);
        w.se(0);
        assert_eq!(w.len_bits(), 1 + 3 + 3 + 5 + 3 + 3 + 1);
        w.trailing();
        // 1 010 011 0 | 0100 010 0 | 11 1 1 0000
        assert_eq!(w.into_bytes(), [0b1010_0110, 0b0100_0100, 0b1111_0000]);
    }

    #[test]
    fn emulation_prevention() {
        assert_eq!(nal_unit(0x67, &[0, 0, 1, 0, 0, 0, 0, 0, 4]), [0x67, 0, 0, 3, 1, 0, 0, 3, 0, 0, 3, 0, 4]);
        assert_eq!(nal_unit(0x68, &[1, 0, 0, 4, 0, 0]), [0x68, 1, 0, 0, 4, 0, 0]);
    }
}
