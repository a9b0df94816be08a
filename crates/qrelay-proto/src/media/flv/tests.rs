//! Unit tests of `media::flv`.

use super::*;

const LIMIT: usize = 1 << 20;

fn sample_tags() -> Vec<FlvTag> {
    let tag = |kind, timestamp, payload: &'static [u8]| FlvTag {
        kind,
        timestamp,
        payload: Bytes::from_static(payload),
    };
    vec![
        tag(MediaKind::Data, 0, b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00"),
        tag(MediaKind::Video, 0, &[0x17, 0x00, 0, 0, 0, 1, 0x64]),
        tag(MediaKind::Audio, 0, &[0xAF, 0x00, 0x12, 0x10]),
        tag(MediaKind::Video, 33, &[0x17, 0x01, 0, 0, 0, 0x65, 0x88]),
        tag(MediaKind::Audio, 0x00FF_FFFF, &[0xAF, 0x01, 0x21]),
        tag(MediaKind::Video, 0x0100_0000, &[0x27, 0x01, 0, 0, 0]),
        tag(MediaKind::Video, u32::MAX, &[]),
    ]
}

fn write_file(tags: &[FlvTag]) -> BytesMut {
    let mut out = BytesMut::new();
    write_header(&mut out, true, true);
    for tag in tags {
        write_tag(&mut out, tag.kind, tag.timestamp, &tag.payload);
    }
    out
}

fn read_all(reader: &mut FlvReader) -> Result<Vec<FlvTag>, FlvError> {
    let mut tags = Vec::new();
    while let Some(tag) = reader.next_tag()? {
        tags.push(tag);
    }
    Ok(tags)
}

#[test]
fn header_layout() {
    let mut out = BytesMut::new();
    write_header(&mut out, true, true);
    assert_eq!(&out[..], b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
    for (audio, video, flags) in [(true, false, 4), (false, true, 1), (false, false, 0)] {
        let mut out = BytesMut::new();
        write_header(&mut out, audio, video);
        assert_eq!(out.get(4), Some(&flags));
    }
}

#[test]
fn tag_layout() {
    let mut out = BytesMut::new();
    write_tag(&mut out, MediaKind::Video, 0x1234_5678, &[0xAA, 0xBB]);
    let want = [
        9, 0, 0, 2, // type, size
        0x34, 0x56, 0x78, 0x12, // timestamp, extension = upper 8 bits
        0, 0, 0, // stream id
        0xAA, 0xBB, // body
        0, 0, 0, 13, // previous tag size = 11 + 2
    ];
    assert_eq!(&out[..], &want[..]);
}

#[test]
fn round_trip() {
    let tags = sample_tags();
    let mut reader = FlvReader::new(LIMIT);
    reader.push(&write_file(&tags));
    assert_eq!(read_all(&mut reader), Ok(tags));
    assert_eq!(reader.next_tag(), Ok(None));
}

#[test]
fn one_byte_at_a_time() {
    let tags = sample_tags();
    let file = write_file(&tags);
    let mut reader = FlvReader::new(LIMIT);
    let mut got = Vec::new();
    for byte in file.iter() {
        reader.push(&[*byte]);
        got.extend(read_all(&mut reader).ok().into_iter().flatten());
    }
    assert_eq!(got, tags);
}

#[test]
fn extended_timestamps() {
    for timestamp in [0x00FF_FFFF, 0x0100_0000, 0x7FFF_FFFF, 0xDEAD_BEEF, u32::MAX] {
        let mut out = BytesMut::new();
        write_header(&mut out, false, true);
        write_tag(&mut out, MediaKind::Video, timestamp, &[0x17, 0x01]);
        let mut reader = FlvReader::new(LIMIT);
        reader.push(&out);
        let got = reader.next_tag().ok().flatten().map(|t| t.timestamp);
        assert_eq!(got, Some(timestamp));
    }
}

#[test]
fn payload_is_not_copied_out_of_the_buffer() {
    let mut reader = FlvReader::new(LIMIT);
    reader.push(&write_file(&sample_tags()));
    let mut tags = read_all(&mut reader).unwrap_or_default().into_iter();
    let (first, second) = (tags.next(), tags.next());
    let (Some(first), Some(second)) = (first, second) else {
        panic!("expected two tags");
    };
    // Payloads are views into the one input buffer: consecutive tags sit exactly one
    // tag trailer plus one tag header apart.
    let gap = second.payload.as_ptr() as usize - (first.payload.as_ptr() as usize + first.payload.len());
    assert_eq!(gap, PREVIOUS_TAG_SIZE_LEN + TAG_HEADER_LEN);
}

#[test]
fn oversize_tag_rejected_before_its_body_arrives() {
    let mut out = BytesMut::new();
    write_header(&mut out, false, true);
    write_tag(&mut out, MediaKind::Video, 0, &[0u8; 101]);
    let mut reader = FlvReader::new(100);
    // Header plus the 11-byte tag header only.
    reader.push(&out[..13 + 11]);
    assert_eq!(reader.next_tag(), Err(FlvError::TagTooLarge(101)));
    assert_eq!(reader.next_tag(), Err(FlvError::TagTooLarge(101)), "errors are final");

    let mut reader = FlvReader::new(101);
    reader.push(&out);
    assert_eq!(reader.next_tag().map(|t| t.map(|t| t.payload.len())), Ok(Some(101)));
}

#[test]
fn bad_signature() {
    for input in [&b"FLX\x01\x05\x00\x00\x00\x09"[..], b"GIF89a", b"X", b"FL\x00"] {
        let mut reader = FlvReader::new(LIMIT);
        reader.push(input);
        assert_eq!(reader.next_tag(), Err(FlvError::BadSignature), "{input:?}");
    }
    let mut reader = FlvReader::new(LIMIT);
    reader.push(b"FL");
    assert_eq!(reader.next_tag(), Ok(None), "a correct prefix waits");
}

#[test]
fn header_size_is_honored() {
    let mut file = BytesMut::new();
    file.put_slice(b"FLV\x01\x05\x00\x00\x00\x0C"); // 12: three extra header bytes
    file.put_slice(&[0xEE, 0xEE, 0xEE]);
    file.put_u32(0);
    write_tag(&mut file, MediaKind::Audio, 7, &[0xAF, 0x01, 0x55]);
    let mut reader = FlvReader::new(LIMIT);
    reader.push(&file);
    let tags = read_all(&mut reader);
    assert_eq!(tags.map(|t| t.iter().map(|t| t.timestamp).collect()), Ok(vec![7]));

    // A huge DataOffset is skipped as it streams in, never buffered.
    let mut reader = FlvReader::new(LIMIT);
    reader.push(b"FLV\x01\x05\xFF\xFF\xFF\xFF");
    reader.push(&[0u8; 4096]);
    assert_eq!(reader.next_tag(), Ok(None));
    assert!(reader.buf.is_empty());

    for size in [0u32, 8] {
        let mut reader = FlvReader::new(LIMIT);
        reader.push(b"FLV\x01\x05");
        reader.push(&size.to_be_bytes());
        assert_eq!(reader.next_tag(), Err(FlvError::BadHeaderSize(size)));
    }
}

#[test]
fn bad_tag_types() {
    for tag_type in [0u8, 1, 7, 10, 17, 19, 31, 0x28, 0x29, 0x32] {
        let mut file = BytesMut::new();
        write_header(&mut file, true, true);
        file.put_u8(tag_type);
        file.put_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xAA, 0, 0, 0, 12]);
        let mut reader = FlvReader::new(LIMIT);
        reader.push(&file);
        assert_eq!(reader.next_tag(), Err(FlvError::UnknownTagType(tag_type)));
    }
    // Reserved upper bits are ignored.
    let mut file = BytesMut::new();
    write_header(&mut file, true, true);
    file.put_slice(&[0x48, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xAF, 0, 0, 0, 12]);
    let mut reader = FlvReader::new(LIMIT);
    reader.push(&file);
    assert_eq!(reader.next_tag().map(|t| t.map(|t| t.kind)), Ok(Some(MediaKind::Audio)));
}

#[test]
fn wrong_previous_tag_size_is_tolerated() {
    let tags = sample_tags();
    let mut file = write_file(&tags[..2]);
    let len = file.len();
    if let Some(last) = file.get_mut(len - 4..) {
        last.copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
    }
    write_tag(&mut file, tags[2].kind, tags[2].timestamp, &tags[2].payload);
    let mut reader = FlvReader::new(LIMIT);
    reader.push(&file);
    assert_eq!(read_all(&mut reader), Ok(tags[..3].to_vec()));
}

#[test]
fn empty_and_partial_input_waits() {
    let mut reader = FlvReader::new(LIMIT);
    assert_eq!(reader.next_tag(), Ok(None));
    let file = write_file(&sample_tags()[..1]);
    for cut in 0..file.len() {
        let mut reader = FlvReader::new(LIMIT);
        reader.push(&file[..cut]);
        assert_eq!(reader.next_tag(), Ok(None), "cut at {cut}");
    }
}

#[test]
fn input_must_end_at_a_tag_boundary() {
    let tags = &sample_tags()[..2];
    let file = write_file(tags);
    let after_first = 13 + TAG_HEADER_LEN + tags[0].payload.len() + PREVIOUS_TAG_SIZE_LEN;
    let mut reader = FlvReader::new(LIMIT);
    reader.push(&file);
    assert_eq!(read_all(&mut reader).map(|t| t.len()), Ok(2));
    assert_eq!(reader.finish(), Ok(()));
    for cut in 0..file.len() {
        let mut reader = FlvReader::new(LIMIT);
        reader.push(&file[..cut]);
        assert!(read_all(&mut reader).is_ok(), "cut at {cut}");
        // A header and no tag at all is whole, if empty.
        let want = match cut {
            0 => Err(FlvError::Empty),
            1..13 => Err(FlvError::Truncated("the FLV header")),
            13 => Ok(()),
            _ if cut == after_first => Ok(()),
            _ => Err(FlvError::Truncated("a tag")),
        };
        assert_eq!(reader.finish(), want, "cut at {cut}");
    }
}

#[test]
fn garbage_never_panics() {
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    for _ in 0..2_000 {
        let mut reader = FlvReader::new(4096);
        reader.push(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
        let mut chunk = [0u8; 97];
        for _ in 0..8 {
            for byte in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state.to_le_bytes()[0];
            }
            // Keep the type byte plausible now and then so bodies get parsed.
            chunk[0] = [8, 9, 18, chunk[0]][usize::from(chunk[1] & 3)];
            reader.push(&chunk);
            if reader.next_tag().is_err() {
                break;
            }
        }
    }
}
