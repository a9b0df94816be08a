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
mod tests;
