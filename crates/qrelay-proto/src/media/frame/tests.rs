//! Unit tests of `media::frame`.

use super::*;

const VIDEO_FOURCCS: [&[u8; 4]; 4] = [b"avc1", b"hvc1", b"av01", b"vp09"];
const AUDIO_FOURCCS: [&[u8; 4]; 6] = [b"Opus", b"mp4a", b"fLaC", b"ac-3", b"ec-3", b".mp3"];

/// An ExVideoTagHeader without ModEx or Multitrack, followed by `body`.
fn ex_video(frame_type: u8, packet_type: u8, fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut tag = vec![VIDEO_EX_HEADER | frame_type << 4 | packet_type];
    tag.extend_from_slice(fourcc);
    tag.extend_from_slice(body);
    tag
}

fn ex_audio(packet_type: u8, fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut tag = vec![SOUND_EX_HEADER << 4 | packet_type];
    tag.extend_from_slice(fourcc);
    tag.extend_from_slice(body);
    tag
}

#[test]
fn enhanced_video_per_codec() {
    // (frame type, packet type, expected)
    let rows = [
        (1, VIDEO_SEQUENCE_START, SEQUENCE_HEADER),
        (1, VIDEO_CODED_FRAMES, KEYFRAME),
        (2, VIDEO_CODED_FRAMES, NOTHING),
        (3, VIDEO_CODED_FRAMES, NOTHING),
        (1, VIDEO_CODED_FRAMES_X, KEYFRAME),
        (2, VIDEO_CODED_FRAMES_X, NOTHING),
        (1, 2, NOTHING), // SequenceEnd
        (1, VIDEO_METADATA, NOTHING),
        (1, VIDEO_MPEG2TS_SEQUENCE_START, SEQUENCE_HEADER),
        (1, 8, NOTHING),                  // reserved packet type
        (5, VIDEO_CODED_FRAMES, NOTHING), // command frame
        (5, VIDEO_SEQUENCE_START, NOTHING),
    ];
    for fourcc in VIDEO_FOURCCS {
        for (frame_type, packet_type, want) in rows {
            let tag = ex_video(frame_type, packet_type, fourcc, &[0, 0, 0, 0x65, 0x88]);
            assert_eq!(inspect_video(&tag), want, "{fourcc:?} {frame_type} {packet_type}");
        }
    }
}

#[test]
fn enhanced_video_unknown_fourcc_still_classified() {
    assert_eq!(inspect_video(&ex_video(1, VIDEO_CODED_FRAMES, b"vvc1", &[1])), KEYFRAME);
    assert_eq!(inspect_video(&ex_video(1, VIDEO_SEQUENCE_START, b"vvc1", &[1])), SEQUENCE_HEADER);
}

#[test]
fn enhanced_video_needs_whole_fourcc() {
    let tag = ex_video(1, VIDEO_CODED_FRAMES, b"hvc1", &[]);
    assert_eq!(inspect_video(&tag), KEYFRAME, "header with no body is still typed");
    for len in 1..tag.len() {
        assert_eq!(inspect_video(&tag[..len]), NOTHING, "prefix {len}");
    }
}

#[test]
fn enhanced_video_multitrack() {
    let multitrack = |frame_type: u8, tracks: u8, inner: u8, rest: &[u8]| {
        let mut tag = vec![VIDEO_EX_HEADER | frame_type << 4 | VIDEO_MULTITRACK];
        tag.push(tracks << 4 | inner);
        tag.extend_from_slice(rest);
        tag
    };
    // OneTrack: FourCC, track id, data.
    let one = [b'h', b'v', b'c', b'1', 0, 0xAA];
    assert_eq!(inspect_video(&multitrack(1, 0, VIDEO_CODED_FRAMES, &one)), KEYFRAME);
    assert_eq!(inspect_video(&multitrack(1, 0, VIDEO_CODED_FRAMES_X, &one)), KEYFRAME);
    assert_eq!(inspect_video(&multitrack(2, 0, VIDEO_CODED_FRAMES, &one)), NOTHING);
    assert_eq!(inspect_video(&multitrack(1, 0, VIDEO_SEQUENCE_START, &one)), SEQUENCE_HEADER);
    // ManyTracks: one FourCC, then (track id, u24 size, data) per track.
    let many = [b'a', b'v', b'0', b'1', 0, 0, 0, 1, 0xAA, 1, 0, 0, 1, 0xBB];
    assert_eq!(inspect_video(&multitrack(1, 1, VIDEO_CODED_FRAMES, &many)), KEYFRAME);
    // ManyTracksManyCodecs: no FourCC after the multitrack byte.
    let many_codecs = [b'a', b'v', b'c', b'1', 0, 0, 0, 1, 0xAA];
    assert_eq!(inspect_video(&multitrack(1, 2, VIDEO_SEQUENCE_START, &many_codecs)), SEQUENCE_HEADER);
    // No track at all carries nothing.
    assert_eq!(inspect_video(&multitrack(1, 2, VIDEO_CODED_FRAMES, &[])), NOTHING);
    // Cut short: no multitrack byte, or a FourCC that is not all there.
    assert_eq!(inspect_video(&[VIDEO_EX_HEADER | 1 << 4 | VIDEO_MULTITRACK]), NOTHING);
    assert_eq!(inspect_video(&multitrack(1, 0, VIDEO_CODED_FRAMES, b"hvc")), NOTHING);
    // Nested multitrack is not defined by the spec.
    assert_eq!(inspect_video(&multitrack(1, 0, VIDEO_MULTITRACK, &one)), NOTHING);
}

/// One track of a multitrack message: FourCC, track id, data.
type Track<'a> = (&'a [u8; 4], u8, &'a [u8]);

/// A multitrack video message with the given layout and tracks.
fn multitrack_video(frame_type: u8, packet_type: u8, layout: u8, tracks: &[Track<'_>]) -> Vec<u8> {
    let mut tag = vec![VIDEO_EX_HEADER | frame_type << 4 | VIDEO_MULTITRACK, layout << 4 | packet_type];
    if layout == MANY_TRACKS {
        tag.extend_from_slice(tracks[0].0);
    }
    for (fourcc, id, data) in tracks {
        if layout != MANY_TRACKS {
            tag.extend_from_slice(*fourcc);
        }
        tag.push(*id);
        if layout != ONE_TRACK {
            tag.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        }
        tag.extend_from_slice(data);
    }
    tag
}

#[test]
fn multitrack_classifies_every_track() {
    let set = |ids: &[u8]| {
        let mut s = TrackSet::EMPTY;
        ids.iter().for_each(|id| s.insert(*id));
        s
    };
    let header = |tracks| Inspection { tracks, ..SEQUENCE_HEADER };
    // (layout, tracks, expected for SequenceStart, expected for a key CodedFrames)
    let rows: [(u8, &[Track<'_>], Inspection, Inspection); 6] = [
        (ONE_TRACK, &[(b"hvc1", 0, &[1, 2])], header(set(&[0])), KEYFRAME),
        // A keyframe of another track only: not where the default track can start.
        (ONE_TRACK, &[(b"hvc1", 1, &[1, 2])], header(set(&[1])), NOTHING),
        (MANY_TRACKS, &[(b"av01", 1, &[1]), (b"av01", 2, &[2, 2])], header(set(&[1, 2])), NOTHING),
        (MANY_TRACKS, &[(b"av01", 2, &[1]), (b"av01", 0, &[])], header(set(&[0, 2])), KEYFRAME),
        (MANY_TRACKS_MANY_CODECS, &[(b"avc1", 3, &[1]), (b"hvc1", 7, &[2])], header(set(&[3, 7])), NOTHING),
        (
            MANY_TRACKS_MANY_CODECS,
            &[(b"avc1", 9, &[]), (b"vp09", 0, &[5; 300])],
            header(set(&[0, 9])),
            KEYFRAME,
        ),
    ];
    for (layout, tracks, want_header, want_key) in rows {
        let tag = multitrack_video(1, VIDEO_SEQUENCE_START, layout, tracks);
        assert_eq!(inspect_video(&tag), want_header, "{layout} {tracks:?}");
        let tag = multitrack_video(1, VIDEO_CODED_FRAMES, layout, tracks);
        assert_eq!(inspect_video(&tag), want_key, "{layout} {tracks:?}");
        // A track cut short does not count; the tracks before it still do.
        if layout != ONE_TRACK {
            let cut =
                inspect_video(&multitrack_video(1, VIDEO_SEQUENCE_START, layout, tracks)[..tag.len() - 1]);
            let first = set(&[tracks[0].1]);
            assert_eq!(cut, header(first), "{layout} {tracks:?} cut");
        }
    }
    // Unknown layouts are refused.
    assert_eq!(inspect_video(&multitrack_video(1, VIDEO_CODED_FRAMES, 3, &[(b"hvc1", 0, &[1])])), NOTHING);
    assert!(set(&[1]).is_subset_of(&set(&[1, 200])) && !set(&[0, 1]).is_subset_of(&set(&[1])));
}

#[test]
fn enhanced_video_modex() {
    let key_modex = VIDEO_EX_HEADER | 1 << 4 | VIDEO_MODEX;
    // One block: size-1 = 2 (three bytes of TimestampOffsetNano), then
    // (ModExType 0 << 4 | CodedFrames), then the FourCC.
    let tag = [key_modex, 2, 0x01, 0x02, 0x03, VIDEO_CODED_FRAMES, b'h', b'v', b'c', b'1', 9];
    assert_eq!(inspect_video(&tag), KEYFRAME);
    let header = [key_modex, 0, 0xFF, VIDEO_SEQUENCE_START, b'a', b'v', b'0', b'1'];
    assert_eq!(inspect_video(&header), SEQUENCE_HEADER);
    // Two chained blocks.
    let chained = [key_modex, 0, 0xAA, 0x10 | VIDEO_MODEX, 1, 1, 2, VIDEO_CODED_FRAMES_X];
    let mut chained = chained.to_vec();
    chained.extend_from_slice(b"vp09");
    assert_eq!(inspect_video(&chained), KEYFRAME);
    // Wide size: UI8 255 means a UI16 size follows (here 299 + 1 bytes).
    let mut wide = vec![key_modex, 255, 0x01, 0x2B];
    wide.extend_from_slice(&[0xEE; 300]);
    wide.push(VIDEO_CODED_FRAMES);
    wide.extend_from_slice(b"avc1");
    assert_eq!(inspect_video(&wide), KEYFRAME);
    // ModEx leading into Multitrack.
    let into_multitrack = [key_modex, 0, 0, VIDEO_MULTITRACK, VIDEO_CODED_FRAMES, b'h', b'v', b'c', b'1', 0];
    assert_eq!(inspect_video(&into_multitrack), KEYFRAME);
    // Every truncation of these is safe and classifies as nothing.
    // (tag, index of its FourCC)
    let cases = [(&tag[..], 6), (&header[..], 4), (&chained[..], 8), (&wide[..], 305)];
    for (tag, fourcc_start) in cases {
        for len in 0..fourcc_start + 4 {
            assert_eq!(inspect_video(&tag[..len]), NOTHING, "prefix {len} of {tag:?}");
        }
    }
    // Inter frame through ModEx stays inter.
    let inter = [VIDEO_EX_HEADER | 2 << 4 | VIDEO_MODEX, 0, 0, VIDEO_CODED_FRAMES];
    let mut inter = inter.to_vec();
    inter.extend_from_slice(b"hvc1");
    assert_eq!(inspect_video(&inter), NOTHING);
}

#[test]
fn legacy_video() {
    let rows: [(&[u8], Inspection); 14] = [
        (&[0x17, 0x00, 0, 0, 0, 1], SEQUENCE_HEADER),
        (&[0x17, 0x01, 0, 0, 0, 0x65], KEYFRAME),
        (&[0x27, 0x01, 0, 0, 0, 0x41], NOTHING),
        (&[0x27, 0x00, 0, 0, 0], SEQUENCE_HEADER),
        (&[0x17, 0x02, 0, 0, 0], NOTHING),         // end of sequence
        (&[0x1C, 0x00, 0, 0, 0], SEQUENCE_HEADER), // HEVC, codec id 12
        (&[0x1C, 0x01, 0, 0, 0], KEYFRAME),
        (&[0x2C, 0x01, 0, 0, 0], NOTHING),
        (&[0x57, 0x00], NOTHING), // command frame: byte 1 is a command
        (&[0x07, 0x00], NOTHING), // reserved frame type 0
        (&[0x17], NOTHING),
        (&[0x12, 0xAB], KEYFRAME), // Sorenson H.263 keyframe
        (&[0x22, 0xAB], NOTHING),
        (&[0x14], NOTHING), // VP6 keyframe with no data
    ];
    for (tag, want) in rows {
        assert_eq!(inspect_video(tag), want, "{tag:02x?}");
    }
    assert_eq!(inspect_video(&[]), NOTHING);
}

#[test]
fn legacy_audio() {
    let rows: [(&[u8], Inspection); 8] = [
        (&[0xAF, 0x00, 0x12, 0x10], SEQUENCE_HEADER),
        (&[0xAF, 0x01, 0x21, 0x00], KEYFRAME),
        (&[0xAF, 0x02], NOTHING),
        (&[0xAF], NOTHING),
        (&[0x2F, 0xFF, 0xFB], KEYFRAME), // MP3
        (&[0x2F], NOTHING),
        (&[0x72, 0x55], KEYFRAME), // G.711 A-law
        (&[], NOTHING),
    ];
    for (tag, want) in rows {
        assert_eq!(inspect_audio(tag), want, "{tag:02x?}");
    }
}

#[test]
fn enhanced_audio() {
    let rows = [
        (AUDIO_SEQUENCE_START, SEQUENCE_HEADER),
        (AUDIO_CODED_FRAMES, KEYFRAME),
        (2, NOTHING), // SequenceEnd
        (4, NOTHING), // MultichannelConfig
        (6, NOTHING), // reserved
        (15, NOTHING),
    ];
    for fourcc in AUDIO_FOURCCS {
        for (packet_type, want) in rows {
            let tag = ex_audio(packet_type, fourcc, &[1, 2, 3]);
            assert_eq!(inspect_audio(&tag), want, "{fourcc:?} {packet_type}");
        }
        let tag = ex_audio(AUDIO_CODED_FRAMES, fourcc, &[]);
        for len in 0..tag.len() {
            assert_eq!(inspect_audio(&tag[..len]), NOTHING, "prefix {len}");
        }
    }
}

#[test]
fn enhanced_audio_multitrack_and_modex() {
    let multitrack = SOUND_EX_HEADER << 4 | AUDIO_MULTITRACK;
    let one = [multitrack, AUDIO_CODED_FRAMES, b'O', b'p', b'u', b's', 0, 0xFC];
    assert_eq!(inspect_audio(&one), KEYFRAME);
    let many_codecs =
        [multitrack, 2 << 4 | AUDIO_SEQUENCE_START, b'm', b'p', b'4', b'a', 0, 0, 0, 2, 0x12, 0x10];
    assert_eq!(inspect_audio(&many_codecs), SEQUENCE_HEADER);
    assert_eq!(inspect_audio(&[multitrack, AUDIO_CODED_FRAMES, b'O', b'p']), NOTHING);
    assert_eq!(inspect_audio(&[multitrack]), NOTHING);

    let modex = SOUND_EX_HEADER << 4 | AUDIO_MODEX;
    let tag = [modex, 2, 1, 2, 3, AUDIO_CODED_FRAMES, b'f', b'L', b'a', b'C', 0];
    assert_eq!(inspect_audio(&tag), KEYFRAME);
    let header = [modex, 0, 7, AUDIO_SEQUENCE_START, b'O', b'p', b'u', b's'];
    assert_eq!(inspect_audio(&header), SEQUENCE_HEADER);
    for len in 0..6 {
        assert_eq!(inspect_audio(&tag[..len]), NOTHING, "prefix {len}");
    }
}

#[test]
fn garbage_never_panics() {
    for a in 0..=255u8 {
        let _ = (inspect_video(&[a]), inspect_audio(&[a]));
        for b in 0..=255u8 {
            let _ = (inspect_video(&[a, b]), inspect_audio(&[a, b]));
            let _ = (inspect_video(&[a, b, 255, 255]), inspect_audio(&[a, b, 255, 0]));
        }
    }
    // A small xorshift keeps the test deterministic without a dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut buf = [0u8; 64];
    for _ in 0..20_000 {
        for byte in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state.to_le_bytes()[0];
        }
        // Bias the first byte towards the extended paths.
        buf[0] |= 0x80;
        for len in [0, 1, 2, 5, 9, 64] {
            let _ = (inspect_video(&buf[..len]), inspect_audio(&buf[..len]));
        }
    }
}

#[test]
fn frame_uses_inspection() {
    let key = Frame::new(MediaKind::Video, 40, Bytes::from_static(&[0x17, 0x01, 0, 0, 0]));
    assert!(key.is_keyframe() && !key.is_sequence_header());
    let config = Frame::new(MediaKind::Audio, 0, Bytes::from_static(&[0xAF, 0x00, 0x12]));
    assert!(config.is_sequence_header() && !config.is_keyframe());
    let data = Frame::new(MediaKind::Data, 0, Bytes::from_static(&[0x17, 0x01]));
    assert!(!data.is_keyframe() && !data.is_sequence_header());
}
