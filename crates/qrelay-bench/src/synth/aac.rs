//! The synthetic stream's AAC: AAC-LC, 44.1 kHz, stereo. Each raw frame is one channel
//! pair element of silence (no scale factor bands coded), fill elements up to the size a
//! bitrate asks for, and the END element: what an encoder sends for a quiet passage, which
//! any decoder decodes without complaint.

use super::bits::BitWriter;

/// AudioSpecificConfig: object type 2 (AAC-LC), frequency index 4 (44.1 kHz), channel
/// configuration 2 (stereo), 1024 samples per frame.
pub(super) const AUDIO_SPECIFIC_CONFIG: [u8; 2] = [0x12, 0x10];

const ID_CPE: u32 = 1;
const ID_FIL: u32 = 6;
const ID_END: u32 = 7;
/// `extension_type` EXT_FILL: payload bytes a decoder skips.
const EXT_FILL: u32 = 0;
/// Payload bytes a fill element carries at most (count 15 + escape 255 − 1).
const MAX_FILL: u32 = 269;

/// A raw AAC frame of `len` bytes, or one byte less when the fill elements cannot meet
/// the size to the bit (at least the 8 bytes of silence and END).
pub(super) fn raw_frame(len: usize) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.bits(3, ID_CPE);
    w.bits(4, 0); // element_instance_tag
    w.bit(false); // common_window: each channel has its own ics_info
    for _ in 0..2 {
        w.bits(8, 100); // global_gain (no spectral data to scale)
        w.bit(false); // ics_reserved_bit
        w.bits(2, 0); // window_sequence: ONLY_LONG_SEQUENCE
        w.bit(false); // window_shape
        w.bits(6, 0); // max_sfb: no scale factor band coded, silence
        w.bit(false); // predictor_data_present
        w.bit(false); // pulse_data_present
        w.bit(false); // tns_data_present
        w.bit(false); // gain_control_data_present
    }
    let target = len * 8;
    loop {
        let budget = target.saturating_sub(w.len_bits() + 3);
        // A fill element: 3 bits of ID, 4 of count (8 more for an escaped count), and
        // `count` bytes of extension payload.
        let count = if budget >= 15 + 8 * 15 {
            ((budget - 15) / 8).min(MAX_FILL as usize) as u32
        } else if budget >= 7 + 8 {
            ((budget - 7) / 8).min(14) as u32
        } else {
            break;
        };
        w.bits(3, ID_FIL);
        if count < 15 {
            w.bits(4, count);
        } else {
            w.bits(4, 15);
            w.bits(8, count - 14);
        }
        w.bits(4, EXT_FILL);
        w.bits(4, 0); // fill_nibble
        for _ in 1..count {
            w.bits(8, 0xA5); // fill_byte
        }
    }
    w.bits(3, ID_END);
    w.align_zero();
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_meet_their_size() {
        for len in [8, 20, 100, 372, 1000, 2000] {
            let f = raw_frame(len);
            assert!(f.len() == len || f.len() + 1 == len, "{len}: {}", f.len());
        }
        // Silence alone: 52 bits of CPE and 3 of END.
        assert_eq!(raw_frame(0).len(), 7);
        assert_eq!(raw_frame(0)[0] >> 5, ID_CPE as u8);
    }
}
