//! The synthetic stream's H.264: a Constrained Baseline SPS and PPS for a 640×360 picture,
//! and slices any decoder decodes without complaint: an IDR picture whose every macroblock
//! is Intra 16×16 DC prediction with no residual (a flat grey picture, one byte per
//! macroblock) and P pictures that skip every macroblock (a few bytes). Filler data NAL
//! units bring a frame to the size a bitrate asks for.
//!
//! Picture order count type 2 (output order = decoding order, no B-frames), one
//! reference frame, `frame_num` counting from each IDR, CAVLC, no deblocking control.

use std::sync::OnceLock;

use super::bits::{nal_unit, BitWriter};

/// Picture width in pixels.
pub const WIDTH: u32 = 640;
/// Picture height in pixels (the coded height is 368, cropped by 8 rows).
pub const HEIGHT: u32 = 360;
const MB_COLS: u32 = WIDTH / 16;
const MB_ROWS: u32 = HEIGHT.div_ceil(16);
const MACROBLOCKS: u32 = MB_COLS * MB_ROWS;
/// `log2_max_frame_num`: `frame_num` is 16 bits, so a GOP of up to 65536 frames never
/// wraps it.
const LOG2_MAX_FRAME_NUM: u32 = 16;
/// `profile_idc` 66 (Baseline) with constraint_set0 and constraint_set1: Constrained
/// Baseline, level 3.0.
pub(super) const PROFILE: u8 = 66;
pub(super) const CONSTRAINTS: u8 = 0xC0;
pub(super) const LEVEL: u8 = 30;

/// NAL unit header bytes (forbidden bit, `nal_ref_idc`, `nal_unit_type`).
pub(super) const NAL_SEI: u8 = 0x06;
pub(super) const NAL_FILLER: u8 = 0x0C;
const NAL_SPS: u8 = 0x67;
const NAL_PPS: u8 = 0x68;
const NAL_IDR: u8 = 0x65;
const NAL_NON_IDR: u8 = 0x41;

/// The sequence parameter set NAL unit.
pub(super) fn sps() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.bits(8, u32::from(PROFILE));
    w.bits(8, u32::from(CONSTRAINTS));
    w.bits(8, u32::from(LEVEL));
    w.ue(0); // seq_parameter_set_id
    w.ue(LOG2_MAX_FRAME_NUM - 4);
    w.ue(2); // pic_order_cnt_type
    w.ue(1); // max_num_ref_frames
    w.bit(false); // gaps_in_frame_num_value_allowed_flag
    w.ue(MB_COLS - 1);
    w.ue(MB_ROWS - 1); // pic_height_in_map_units_minus1
    w.bit(true); // frame_mbs_only_flag
    w.bit(true); // direct_8x8_inference_flag
    let crop_rows = MB_ROWS * 16 - HEIGHT;
    w.bit(crop_rows > 0); // frame_cropping_flag
    if crop_rows > 0 {
        // Offsets in units of two rows (4:2:0, frames only).
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(crop_rows / 2);
    }
    w.bit(false); // vui_parameters_present_flag
    w.trailing();
    nal_unit(NAL_SPS, &w.into_bytes())
}

/// The picture parameter set NAL unit.
pub(super) fn pps() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // pic_parameter_set_id
    w.ue(0); // seq_parameter_set_id
    w.bit(false); // entropy_coding_mode_flag: CAVLC
    w.bit(false); // bottom_field_pic_order_in_frame_present_flag
    w.ue(0); // num_slice_groups_minus1
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.bit(false); // weighted_pred_flag
    w.bits(2, 0); // weighted_bipred_idc
    w.se(0); // pic_init_qp_minus26
    w.se(0); // pic_init_qs_minus26
    w.se(0); // chroma_qp_index_offset
    w.bit(false); // deblocking_filter_control_present_flag
    w.bit(false); // constrained_intra_pred_flag
    w.bit(false); // redundant_pic_cnt_present_flag
    w.trailing();
    nal_unit(NAL_PPS, &w.into_bytes())
}

/// The slice NAL unit of picture `index` of its GOP (0 is the IDR picture; `frame_num`
/// is `index` modulo 2^16). Consecutive IDR pictures must differ in `idr_pic_id`, so the
/// caller alternates it with the GOP.
pub(super) fn slice(index: u32, idr_pic_id: u32) -> Vec<u8> {
    if index == 0 {
        static IDR: [OnceLock<Vec<u8>>; 2] = [OnceLock::new(), OnceLock::new()];
        let id = idr_pic_id % 2;
        return IDR[id as usize].get_or_init(|| build_slice(0, id)).clone();
    }
    build_slice(index, 0)
}

fn build_slice(index: u32, idr_pic_id: u32) -> Vec<u8> {
    let idr = index == 0;
    let mut w = BitWriter::default();
    w.ue(0); // first_mb_in_slice
    w.ue(if idr { 7 } else { 5 }); // slice_type: I or P, every slice of the picture
    w.ue(0); // pic_parameter_set_id
    w.bits(LOG2_MAX_FRAME_NUM, index % (1 << LOG2_MAX_FRAME_NUM)); // frame_num
    if idr {
        w.ue(idr_pic_id);
    } else {
        w.bit(false); // num_ref_idx_active_override_flag
        w.bit(false); // ref_pic_list_modification_flag_l0
    }
    // dec_ref_pic_marking()
    if idr {
        w.bit(false); // no_output_of_prior_pics_flag
        w.bit(false); // long_term_reference_flag
    } else {
        w.bit(false); // adaptive_ref_pic_marking_mode_flag: sliding window
    }
    w.se(0); // slice_qp_delta
    if idr {
        for _ in 0..MACROBLOCKS {
            w.ue(3); // mb_type I_16x16_2_0_0: DC prediction, no coded luma or chroma
            w.ue(0); // intra_chroma_pred_mode: DC
            w.se(0); // mb_qp_delta
            w.bit(true); // Intra16x16DCLevel coeff_token: no coefficients (0 ≤ nC < 2)
        }
    } else {
        w.ue(MACROBLOCKS); // mb_skip_run: every macroblock is P_Skip
    }
    w.trailing();
    nal_unit(if idr { NAL_IDR } else { NAL_NON_IDR }, &w.into_bytes())
}

/// The AVCDecoderConfigurationRecord (`avcC`) with the SPS and PPS, 4-byte NAL lengths.
pub(super) fn decoder_configuration() -> Vec<u8> {
    let (sps, pps) = (sps(), pps());
    let mut b = vec![1, PROFILE, CONSTRAINTS, LEVEL, 0xFF, 0xE1];
    b.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    b.extend_from_slice(&sps);
    b.push(1);
    b.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    b.extend_from_slice(&pps);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads Exp-Golomb and fixed-width fields back, to check the writer's layout.
    struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl Reader<'_> {
        fn bit(&mut self) -> u32 {
            let b = self.bytes[self.pos / 8] >> (7 - self.pos % 8) & 1;
            self.pos += 1;
            u32::from(b)
        }
        fn bits(&mut self, n: u32) -> u32 {
            (0..n).fold(0, |v, _| v << 1 | self.bit())
        }
        fn ue(&mut self) -> u32 {
            let mut zeros = 0;
            while self.bit() == 0 {
                zeros += 1;
            }
            (1 << zeros) - 1 + self.bits(zeros)
        }
    }

    #[test]
    fn sps_fields() {
        let sps = sps();
        assert_eq!(&sps[..4], &[NAL_SPS, PROFILE, CONSTRAINTS, LEVEL]);
        let mut r = Reader { bytes: &sps[4..], pos: 0 };
        assert_eq!(r.ue(), 0);
        assert_eq!(r.ue(), LOG2_MAX_FRAME_NUM - 4);
        assert_eq!(r.ue(), 2);
        assert_eq!(r.ue(), 1);
        assert_eq!(r.bit(), 0);
        assert_eq!((r.ue() + 1) * 16, 640);
        assert_eq!((r.ue() + 1) * 16, 368);
        assert_eq!((r.bit(), r.bit(), r.bit()), (1, 1, 1));
        assert_eq!((r.ue(), r.ue(), r.ue(), r.ue()), (0, 0, 0, 4));
    }

    #[test]
    fn slices() {
        let idr = slice(0, 0);
        assert_eq!(idr[0], NAL_IDR);
        // One byte per macroblock plus a few of header.
        assert!(idr.len() > MACROBLOCKS as usize && idr.len() < MACROBLOCKS as usize + 12, "{}", idr.len());
        assert_ne!(slice(0, 1), idr, "idr_pic_id differs");
        assert_eq!(slice(0, 2), idr);
        let p = slice(7, 0);
        assert_eq!(p[0], NAL_NON_IDR);
        assert!(p.len() < 16, "{}", p.len());
        let mut r = Reader { bytes: &p[1..], pos: 0 };
        assert_eq!((r.ue(), r.ue(), r.ue()), (0, 5, 0));
        assert_eq!(r.bits(LOG2_MAX_FRAME_NUM), 7);
        // frame_num 0 of a P slice never happens; frame_num 0x10000 wraps to 0 but stays P.
        assert_eq!(slice(1 << 16, 0)[0], NAL_NON_IDR);
    }

    #[test]
    fn no_start_code_inside_a_nal_unit() {
        for nal in [sps(), pps(), slice(0, 0), slice(0, 1), slice(1, 0), slice(256, 0), slice(65_536, 0)] {
            for w in nal.windows(3) {
                assert!(!(w[0] == 0 && w[1] == 0 && w[2] <= 2), "{nal:02x?}");
            }
        }
    }
}
