use super::*;
use qrelay_proto::media::frame::{inspect_audio, inspect_video};

#[test]
fn plan_matches_bitrate_and_keyframe_ratio() {
    let p = VideoPlan::new(3_000_000, 30, Duration::from_secs(2));
    assert_eq!(p.gop_frames, 60);
    assert_eq!(p.key_bytes, 5 * p.inter_bytes);
    // 3 Mbit/s × 2 s = 750000 bytes over 64 inter-frame units.
    assert_eq!(p.inter_bytes, 11_719);
    let err = (p.bitrate_bps() - 3e6).abs() / 3e6;
    assert!(err < 0.001, "bitrate off by {err}");
    assert!(p.is_key(0) && !p.is_key(1) && p.is_key(60));
    assert_eq!(p.size(0), p.key_bytes);
    assert_eq!(p.size(59), p.inter_bytes);
    assert_eq!(p.timestamp_ms(30), 1000);
    assert_eq!(p.due(15), Duration::from_millis(500));
}

#[test]
fn plan_edge_cases() {
    // All keyframes.
    let p = VideoPlan::new(1_000_000, 10, Duration::from_millis(50));
    assert_eq!(p.gop_frames, 1);
    assert_eq!(p.key_bytes, 12_500);
    assert!((p.bitrate_bps() - 1e6).abs() < 10.0);
    // Tiny bitrates never go below a whole picture with its marker.
    let p = VideoPlan::new(100, 30, Duration::from_secs(2));
    assert_eq!(p.inter_bytes, min_video_payload(false));
    assert_eq!(p.key_bytes, min_video_payload(true));
    assert_eq!(p.frame(0, 0).len(), min_video_payload(true));
    assert_eq!(p.frame(1, 0).len(), min_video_payload(false));
    // fps 0 is treated as 1.
    assert_eq!(VideoPlan::new(1000, 0, Duration::from_secs(1)).fps, 1);
}

#[test]
fn frames_have_their_planned_size_to_the_byte() {
    let min_key = min_video_payload(true);
    // Below MIN_FILLER past the picture the SEI takes the rest; from there a filler NAL.
    for size in (min_key..min_key + 12).chain([2048, 12_000, 64 * 1024]) {
        let p = VideoPlan::fixed(30, 10, size);
        for n in [0, 1, 9, 10] {
            let f = p.frame(n, 77);
            assert_eq!(f.len(), size.max(p.size(n)), "frame {n} of {size}");
            assert_eq!(p.check(&f).map(|m| m.seq), Some(n));
        }
    }
}

/// Walks the length-prefixed NAL units after the 5-byte tag header.
fn nal_types(payload: &[u8]) -> Vec<u8> {
    let mut rest = &payload[5..];
    let mut types = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let nal = &rest[4..4 + len];
        types.push(nal[0] & 0x1F);
        assert_ne!(nal[0] & 0x80, 0x80, "forbidden bit");
        assert_ne!(*nal.last().unwrap(), 0, "rbsp_trailing_bits end in a one bit");
        rest = &rest[4 + len..];
    }
    types
}

#[test]
fn frames_are_length_prefixed_nal_units() {
    let p = VideoPlan::fixed(30, 30, 4000);
    assert_eq!(nal_types(&p.frame(0, 1)), [6, 5, 12], "SEI, IDR slice, filler");
    assert_eq!(nal_types(&p.frame(1, 1)), [6, 1, 12], "SEI, non-IDR slice, filler");
    let small = VideoPlan::fixed(30, 30, 0);
    assert_eq!(nal_types(&small.frame(0, 1)), [6, 5]);
    assert_eq!(nal_types(&small.frame(3, 1)), [6, 1]);
    // The avcC: version 1, Constrained Baseline 3.0, 4-byte lengths, the SPS and PPS.
    let sh = video_sequence_header();
    assert_eq!(&sh[..11], &[0x17, 0, 0, 0, 0, 1, 66, 0xC0, 30, 0xFF, 0xE1]);
    let sps_len = u16::from_be_bytes([sh[11], sh[12]]) as usize;
    assert_eq!(sh[13] & 0x1F, 7);
    assert_eq!(sh[13 + sps_len], 1);
    assert_eq!(sh[16 + sps_len] & 0x1F, 8);
}

#[test]
fn frames_carry_marker_and_are_recognised() {
    let p = VideoPlan::fixed(30, 5, 1000);
    let f = p.frame(5, 123_456);
    assert_eq!(f.len(), 1000);
    assert_eq!(parse_marker(&f), Some(Marker { seq: 5, send_us: 123_456, keyframe: true }));
    assert!(inspect_video(&f).keyframe);
    let f = p.frame(8, u64::MAX);
    assert_eq!(parse_marker(&f), Some(Marker { seq: 8, send_us: u64::MAX, keyframe: false }));
    assert!(!inspect_video(&f).keyframe);
    let sh = video_sequence_header();
    assert!(inspect_video(&sh).sequence_header);
    assert_eq!(parse_marker(&sh), None);
    assert_eq!(parse_marker(&f[..MARKER_END - 1]), None);
    assert_eq!(parse_marker(b""), None);
    // Another UUID (an encoder's own SEI) is not ours.
    let mut other = f.to_vec();
    other[12] ^= 1;
    assert_eq!(parse_marker(&other), None);
}

#[test]
fn check_wants_every_byte() {
    let p = VideoPlan::fixed(30, 5, 3000);
    let f = p.frame(7, 42);
    assert_eq!(p.check(&f), Some(Marker { seq: 7, send_us: 42, keyframe: false }));
    let mut damaged = f.to_vec();
    damaged[2000] ^= 0x10;
    assert_eq!(p.check(&damaged), None);
    assert_eq!(p.check(&f[..2999]), None);
    // Another plan's frame with the same number.
    assert_eq!(VideoPlan::fixed(30, 5, 3001).check(&f), None);
}

#[test]
fn audio_frames() {
    assert_eq!(audio_frame_bytes(), 372);
    let a = audio_frame();
    assert!(a.len() == 372 || a.len() == 371, "{}", a.len());
    assert_eq!(&a[..2], &[0xAF, 0x01]);
    assert!(!inspect_audio(&a).sequence_header);
    let sh = audio_sequence_header();
    assert_eq!(&sh[..], &[0xAF, 0x00, 0x12, 0x10]);
    assert!(inspect_audio(&sh).sequence_header);
    assert_eq!(audio_timestamp_ms(43), 998);
}

#[test]
fn schedule_interleaves_by_due_time() {
    let plan = VideoPlan::fixed(30, 30, 0);
    let first: Vec<Next> = Schedule::new(plan, true).take(6).map(|(_, n)| n).collect();
    // Video at 0, 33.3, 66.7 ms; audio at 0, 23.2, 46.4 ms.
    use Next::{Audio, Video};
    assert_eq!(first, [Video(0), Audio(0), Audio(1), Video(1), Audio(2), Video(2)]);
    let video_only: Vec<Next> = Schedule::new(plan, false).take(3).map(|(_, n)| n).collect();
    assert_eq!(video_only, [Video(0), Video(1), Video(2)]);
    // One second: 30 video frames and 44 AAC frames (0 to 43, 998 ms), in due order.
    let second: Vec<_> = Schedule::new(plan, true).take_while(|(due, _)| due.as_millis() < 1000).collect();
    assert_eq!(second.iter().filter(|(_, n)| matches!(n, Video(_))).count(), 30);
    assert_eq!(second.iter().filter(|(_, n)| matches!(n, Audio(_))).count(), 44);
    assert!(second.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn parses_bitrates_and_durations() {
    assert_eq!(parse_bitrate("3M"), Ok(3_000_000));
    assert_eq!(parse_bitrate("2500k"), Ok(2_500_000));
    assert_eq!(parse_bitrate("1.5G"), Ok(1_500_000_000));
    assert_eq!(parse_bitrate("800000"), Ok(800_000));
    assert!(parse_bitrate("fast").is_err());
    assert!(parse_bitrate("-1M").is_err());
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert!(parse_duration("0").is_err());
}
