//! FLV file format: a sans-IO tag reader over a byte buffer and a writer. FLV tag bodies
//! are exactly RTMP message payloads, so this is how files enter and leave the relay.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::frame::MediaKind;

/// One FLV tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    /// Audio, video or script data.
    pub kind: MediaKind,
    /// Timestamp in milliseconds (24 bits + 8 extension bits).
    pub timestamp: u32,
    /// Tag body (an RTMP message payload).
    pub payload: Bytes,
}

/// Errors reading FLV.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    /// The first three bytes are not `FLV`.
    #[error("not an FLV file (bad signature)")]
    BadSignature,
    /// A tag type other than 8, 9 or 18.
    #[error("unknown FLV tag type {0}")]
    UnknownTagType(u8),
    /// A tag claims a body larger than the reader accepts.
    #[error("FLV tag of {0} bytes exceeds the limit")]
    TagTooLarge(usize),
    /// The header's DataOffset is smaller than the 9-byte header itself.
    #[error("FLV header size {0} is below 9")]
    BadHeaderSize(u32),
    /// There was no input at all.
    #[error("the file is empty")]
    Empty,
    /// The input ended inside the header or a tag (a file cut short).
    #[error("the file ends in the middle of {0}")]
    Truncated(&'static str),
}

/// `FLV`, version, flags, u32 header size.
const HEADER_LEN: usize = 9;
/// Tag type, u24 size, u24 timestamp + u8 extension, u24 stream id.
const TAG_HEADER_LEN: usize = 11;
/// The u32 PreviousTagSize after the header and after every tag.
const PREVIOUS_TAG_SIZE_LEN: usize = 4;
/// Tag type bit 5: the body is filtered (encrypted), which we cannot relay meaningfully.
const TAG_FILTER: u8 = 0x20;
const FLAG_AUDIO: u8 = 0x04;
const FLAG_VIDEO: u8 = 0x01;
/// Largest body a u24 DataSize can describe.
const MAX_DATA_SIZE: usize = 0xFF_FFFF;

/// Sans-IO FLV reader: feed bytes with [`FlvReader::push`], pull tags with
/// [`FlvReader::next_tag`] until it returns `Ok(None)` (need more bytes).
#[derive(Debug)]
pub struct FlvReader {
    buf: BytesMut,
    header_done: bool,
    /// Bytes still to drop after the header: any extra header bytes a larger DataOffset
    /// announces plus PreviousTagSize0. Counted down as they arrive rather than buffered,
    /// since a hostile DataOffset may claim up to 4 GiB.
    skip: u64,
    max_tag_size: usize,
}

impl FlvReader {
    /// A reader refusing tags larger than `max_tag_size` bytes.
    pub fn new(max_tag_size: usize) -> Self {
        Self { buf: BytesMut::new(), header_done: false, skip: 0, max_tag_size }
    }

    /// Appends input bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Next complete tag, `Ok(None)` when more bytes are needed.
    ///
    /// Errors are final: the offending bytes stay in the buffer, so calling again returns
    /// the same error. PreviousTagSize values are skipped unchecked because several
    /// muxers write them wrong and the tag sizes alone delimit the stream.
    pub fn next_tag(&mut self) -> Result<Option<FlvTag>, FlvError> {
        if !self.header_done {
            // Check the signature as soon as its bytes are in, not only once the whole
            // header has arrived, so a wrong stream fails on its first bytes.
            let seen = self.buf.len().min(3);
            if self.buf.get(..seen) != b"FLV".get(..seen) {
                return Err(FlvError::BadSignature);
            }
            let Some(&[.., a, b, c, d]) = self.buf.get(..HEADER_LEN) else {
                return Ok(None);
            };
            let header_size = u32::from_be_bytes([a, b, c, d]);
            if header_size < HEADER_LEN as u32 {
                return Err(FlvError::BadHeaderSize(header_size));
            }
            self.buf.advance(HEADER_LEN);
            self.skip = u64::from(header_size) - HEADER_LEN as u64 + PREVIOUS_TAG_SIZE_LEN as u64;
            self.header_done = true;
        }
        if self.skip > 0 {
            let n = usize::try_from(self.skip).map_or(self.buf.len(), |s| s.min(self.buf.len()));
            self.buf.advance(n);
            self.skip -= n as u64;
            if self.skip > 0 {
                return Ok(None);
            }
        }

        let Some(&[tag_type, s0, s1, s2, t0, t1, t2, t3, ..]) = self.buf.get(..TAG_HEADER_LEN) else {
            return Ok(None);
        };
        // The top two bits are reserved for FMS and carry nothing for us.
        let kind = match MediaKind::from_type_id(tag_type & 0x1F) {
            Some(kind) if tag_type & TAG_FILTER == 0 => kind,
            _ => return Err(FlvError::UnknownTagType(tag_type)),
        };
        let size = usize::from(s0) << 16 | usize::from(s1) << 8 | usize::from(s2);
        if size > self.max_tag_size {
            return Err(FlvError::TagTooLarge(size));
        }
        // The extension byte holds the timestamp's upper 8 bits.
        let timestamp = u32::from_be_bytes([t3, t0, t1, t2]);
        if self.buf.len() < TAG_HEADER_LEN + size + PREVIOUS_TAG_SIZE_LEN {
            self.buf.reserve(TAG_HEADER_LEN + size + PREVIOUS_TAG_SIZE_LEN - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(TAG_HEADER_LEN);
        let payload = self.buf.split_to(size).freeze();
        self.buf.advance(PREVIOUS_TAG_SIZE_LEN);
        Ok(Some(FlvTag { kind, timestamp, payload }))
    }

    /// Checks that the input ended where a tag did; call once no more bytes will come.
    /// Tags still in the buffer must have been taken with [`FlvReader::next_tag`] first.
    pub fn finish(&self) -> Result<(), FlvError> {
        if !self.header_done && self.buf.is_empty() {
            // A partial header stays in the buffer, so nothing ever arrived.
            Err(FlvError::Empty)
        } else if !self.header_done || self.skip > 0 {
            Err(FlvError::Truncated("the FLV header"))
        } else if !self.buf.is_empty() {
            Err(FlvError::Truncated("a tag"))
        } else {
            Ok(())
        }
    }
}

/// Writes the 9-byte FLV header plus the first PreviousTagSize0.
pub fn write_header(out: &mut BytesMut, has_audio: bool, has_video: bool) {
    let mut flags = 0;
    if has_audio {
        flags |= FLAG_AUDIO;
    }
    if has_video {
        flags |= FLAG_VIDEO;
    }
    out.reserve(HEADER_LEN + PREVIOUS_TAG_SIZE_LEN);
    out.put_slice(b"FLV");
    out.put_u8(1);
    out.put_u8(flags);
    out.put_u32(HEADER_LEN as u32);
    out.put_u32(0);
}

/// Writes one tag plus its trailing PreviousTagSize.
///
/// `payload` must fit FLV's u24 DataSize (under 16 MiB), as every RTMP message does since
/// RTMP's message length is a u24 too; a larger one is truncated to keep the file framed.
pub fn write_tag(out: &mut BytesMut, kind: MediaKind, timestamp: u32, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_DATA_SIZE, "FLV tag body over 16 MiB");
    let body = payload.get(..MAX_DATA_SIZE).unwrap_or(payload);
    let size = body.len() as u32;
    let [ts_ext, ts_hi, ts_mid, ts_lo] = timestamp.to_be_bytes();
    out.reserve(TAG_HEADER_LEN + body.len() + PREVIOUS_TAG_SIZE_LEN);
    out.put_u8(kind.type_id());
    out.put_uint(u64::from(size), 3);
    out.put_slice(&[ts_hi, ts_mid, ts_lo, ts_ext]);
    out.put_uint(0, 3); // stream id, always 0
    out.put_slice(body);
    out.put_u32(size + TAG_HEADER_LEN as u32);
}

#[cfg(test)]
mod tests {
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
}
