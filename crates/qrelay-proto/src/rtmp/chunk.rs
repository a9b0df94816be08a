//! The RTMP chunk layer, sans-IO: [`ChunkDecoder`] turns bytes into whole messages,
//! the encoders turn messages into chunk bytes.
//!
//! We own this layer instead of using rml_rtmp's because rml_rtmp 0.8 keeps one payload
//! buffer for all chunk streams, so messages interleaved across chunk stream IDs (legal
//! RTMP) corrupt each other. Here every chunk stream has its own header state and its
//! own partial payload.
//!
//! Timestamp rules the decoder follows (Adobe RTMP 1.0 §5.3.1.2), written down because
//! the spec leaves one case open:
//! - type 0 carries the absolute timestamp; types 1 and 2 carry a delta added (wrapping)
//!   to the previous message's timestamp on the same chunk stream.
//! - a type 3 chunk that starts a new message adds the chunk stream's last timestamp
//!   field again. After a type 1/2 header that field is the delta; after a type 0 header
//!   it is the type 0 timestamp itself (so type 0 at 26 then type 3 gives 52). This is
//!   what ffmpeg's rtmppkt.c reads and writes and what FMLE sends (SRS documents the same
//!   case), so it is the reading that matches real encoders.
//! - the 4-byte extended timestamp follows a type 3 chunk iff the last type 0/1/2 header
//!   on that chunk stream used it (ffmpeg and OBS repeat it on continuation chunks). On a
//!   continuation chunk its value is skipped; on a type 3 chunk starting a new message it
//!   is the delta, as ffmpeg's writer means it.
//!
//! What does not live here: the handshake, protocol control messages (the session reads
//! SetChunkSize and Abort and calls [`ChunkDecoder::set_chunk_size`] and
//! [`ChunkDecoder::abort`]), and AMF.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol maximum chunk size (the top bit of SetChunkSize must be zero).
pub const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// RTMP's initial chunk size in both directions.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Distinct chunk stream IDs the decoder keeps state for. Encoders use a handful (ffmpeg
/// 2..=8, OBS 2..=6); each state costs a map entry and a buffer, so a peer cycling through
/// all 65598 IDs must be stopped.
pub const MAX_CHUNK_STREAMS: usize = 64;
/// Largest payload the 24-bit message length field can describe.
pub const MAX_MESSAGE_LEN: usize = 0xFF_FFFF;

/// The 24-bit timestamp value that says "the real value follows in 4 bytes".
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
/// Lowest and highest chunk stream IDs the basic header can express.
const MIN_CSID: u32 = 2;
const MAX_CSID: u32 = 65_599;

/// One whole RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Chunk stream ID it arrived on (or is to be sent on): 2..=65599.
    pub csid: u32,
    /// Absolute timestamp in ms (deltas already applied, wrapping at 2^32).
    pub timestamp: u32,
    /// Message type id.
    pub type_id: u8,
    /// Message stream ID.
    pub stream_id: u32,
    /// Payload.
    pub payload: Bytes,
}

/// Limits the decoder enforces so a peer cannot make it burn memory or CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest message length accepted.
    pub max_message_size: u32,
    /// Smallest chunk size a peer may set (chunk size 1 costs a header per byte).
    pub min_chunk_size: u32,
    /// Largest chunk size a peer may set.
    pub max_chunk_size: u32,
    /// Total bytes of partially received messages held across all chunk streams.
    pub max_pending_bytes: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_message_size: 16 * 1024 * 1024,
            min_chunk_size: 128,
            max_chunk_size: 16 * 1024 * 1024,
            max_pending_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why decoding stopped; the session ends with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Type 1/2/3 chunk on a chunk stream that never had a type 0 header.
    #[error("chunk stream {0} continues a message it never started")]
    NoPreviousHeader(u32),
    /// Message length over the limit.
    #[error("message length {0} exceeds the limit of {1}")]
    MessageTooLarge(u32, u32),
    /// Set chunk size outside the accepted range.
    #[error("chunk size {0} outside the accepted range {1}..={2}")]
    BadChunkSize(u32, u32, u32),
    /// Partial messages across chunk streams hold more bytes than allowed.
    #[error("partial messages exceed {0} bytes")]
    TooMuchPending(usize),
    /// A new message header arrived while the previous message on that chunk stream was
    /// incomplete.
    #[error("chunk stream {0} started a new message before finishing the previous one")]
    Interrupted(u32),
    /// A type 0 header opened one chunk stream more than [`MAX_CHUNK_STREAMS`].
    #[error("more than {0} chunk streams in use")]
    TooManyChunkStreams(usize),
}

/// Header state of one chunk stream, kept so types 1-3 can omit fields.
#[derive(Debug, Default)]
struct ChunkStream {
    /// Absolute timestamp of the current (or last) message.
    timestamp: u32,
    /// What a type 3 chunk starting a new message adds to `timestamp` (see module docs).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last type 0/1/2 header used the extended timestamp, so type 3 chunks carry it.
    extended: bool,
    /// Payload bytes of the current message not yet received; 0 between messages.
    remaining: u32,
    /// Bytes received so far of a message spanning several chunks. Grown as bytes arrive,
    /// never to the claimed length up front, so a claim costs nothing until it is backed
    /// by data.
    payload: BytesMut,
}

/// Header fields of a chunk that starts a message.
#[derive(Debug, Clone, Copy)]
struct Start {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
}

/// A parsed chunk header, before anything is consumed.
#[derive(Debug)]
struct ChunkHeader {
    csid: u32,
    /// Bytes of basic + message + extended timestamp header.
    len: usize,
    /// `None` for a continuation chunk.
    start: Option<Start>,
    /// Message bytes still to come before this chunk's data.
    remaining: u32,
}

/// Why header parsing stopped: "need more bytes" is kept apart from real errors so it
/// stays cheap.
enum Stop {
    Short,
    Err(ChunkError),
}

impl From<ChunkError> for Stop {
    fn from(e: ChunkError) -> Self {
        Stop::Err(e)
    }
}

/// Reads big/little-endian fields off the front of a slice without panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or(Stop::Short)?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn be24(&mut self) -> Result<u32, Stop> {
        let [a, b, c] = self.array::<3>()?;
        Ok(u32::from_be_bytes([0, a, b, c]))
    }

    fn be32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }

    fn le32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_le_bytes(self.array::<4>()?))
    }
}

/// Sans-IO chunk decoder. Call [`ChunkDecoder::decode`] repeatedly on the receive buffer; it
/// consumes only whole chunks and returns `Ok(None)` when the buffer holds no whole chunk.
#[derive(Debug)]
pub struct ChunkDecoder {
    limits: DecoderLimits,
    chunk_size: u32,
    streams: HashMap<u32, ChunkStream>,
    /// Sum of the capacities of the partial payload buffers: what the peer actually
    /// makes us hold, checked against `limits.max_pending_bytes`.
    pending: usize,
}

impl ChunkDecoder {
    /// A decoder at the default chunk size of 128.
    pub fn new(limits: DecoderLimits) -> Self {
        Self { limits, chunk_size: DEFAULT_CHUNK_SIZE, streams: HashMap::new(), pending: 0 }
    }

    /// Applies a peer's SetChunkSize (checked against the limits).
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        // Chunk size 0 would never finish a message, so 1 is the floor whatever the limits.
        let lo = self.limits.min_chunk_size.max(1);
        let hi = self.limits.max_chunk_size.min(MAX_CHUNK_SIZE);
        if size < lo || size > hi {
            return Err(ChunkError::BadChunkSize(size, lo, hi));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Current inbound chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes currently held for partially received messages (buffer capacity, which is
    /// what the limit counts).
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Drops the partial message on `csid`, as an Abort Message (type 2) asks. The header
    /// state stays, so a type 3 chunk may start the next message.
    pub fn abort(&mut self, csid: u32) {
        if let Some(stream) = self.streams.get_mut(&csid) {
            self.pending = self.pending.saturating_sub(stream.payload.capacity());
            stream.payload = BytesMut::new();
            stream.remaining = 0;
        }
    }

    /// Decodes the next whole message from `buf`, consuming the chunks it used.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            let header = match self.parse_header(buf) {
                Ok(h) => h,
                Err(Stop::Short) => return Ok(None),
                Err(Stop::Err(e)) => return Err(e),
            };
            let data_len = header.remaining.min(self.chunk_size) as usize;
            let available = buf.len().saturating_sub(header.len);
            if available < data_len {
                return Ok(None);
            }
            if let Some(msg) = self.consume(header, data_len, buf)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Parses the chunk header at the front of `input` against the chunk stream state,
    /// without changing anything.
    fn parse_header(&self, input: &[u8]) -> Result<ChunkHeader, Stop> {
        let mut r = Reader { rest: input };
        let b0 = r.u8()?;
        let fmt = b0 >> 6;
        let csid = match b0 & 0x3F {
            0 => 64 + u32::from(r.u8()?),
            1 => 64 + u32::from(u16::from_le_bytes(r.array::<2>()?)),
            n => u32::from(n),
        };
        let prev = self.streams.get(&csid);
        if fmt != 3 && prev.is_some_and(|p| p.remaining > 0) {
            return Err(ChunkError::Interrupted(csid).into());
        }
        let prev_or_err = || prev.ok_or(ChunkError::NoPreviousHeader(csid));
        let start = match fmt {
            0 => {
                if prev.is_none() && self.streams.len() >= MAX_CHUNK_STREAMS {
                    return Err(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS).into());
                }
                let ts = r.be24()?;
                let length = self.check_length(r.be24()?)?;
                let type_id = r.u8()?;
                let stream_id = r.le32()?;
                let extended = ts == EXTENDED_TIMESTAMP;
                let timestamp = if extended { r.be32()? } else { ts };
                Some(Start { timestamp, delta: timestamp, length, type_id, stream_id, extended })
            }
            1 => {
                // librtmp (OBS) may open a chunk stream with a type 1 header (its pings
                // do); like SRS, accept it as starting from timestamp 0 on stream 0.
                if prev.is_none() && self.streams.len() >= MAX_CHUNK_STREAMS {
                    return Err(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS).into());
                }
                let (base_ts, base_stream) = prev.map_or((0, 0), |p| (p.timestamp, p.stream_id));
                let delta = r.be24()?;
                let length = self.check_length(r.be24()?)?;
                let type_id = r.u8()?;
                let extended = delta == EXTENDED_TIMESTAMP;
                let delta = if extended { r.be32()? } else { delta };
                Some(Start {
                    timestamp: base_ts.wrapping_add(delta),
                    delta,
                    length,
                    type_id,
                    stream_id: base_stream,
                    extended,
                })
            }
            2 => {
                let p = prev_or_err()?;
                let delta = r.be24()?;
                let extended = delta == EXTENDED_TIMESTAMP;
                let delta = if extended { r.be32()? } else { delta };
                Some(Start {
                    timestamp: p.timestamp.wrapping_add(delta),
                    delta,
                    length: p.length,
                    type_id: p.type_id,
                    stream_id: p.stream_id,
                    extended,
                })
            }
            _ => {
                let p = prev_or_err()?;
                let ext = if p.extended { Some(r.be32()?) } else { None };
                if p.remaining > 0 {
                    None
                } else {
                    let delta = ext.unwrap_or(p.delta);
                    Some(Start {
                        timestamp: p.timestamp.wrapping_add(delta),
                        delta,
                        length: p.length,
                        type_id: p.type_id,
                        stream_id: p.stream_id,
                        extended: p.extended,
                    })
                }
            }
        };
        let remaining = match (&start, prev) {
            (Some(s), _) => s.length,
            (None, Some(p)) => p.remaining,
            // A continuation always has a previous state; treat the impossible as empty.
            (None, None) => 0,
        };
        Ok(ChunkHeader { csid, len: input.len() - r.rest.len(), start, remaining })
    }

    fn check_length(&self, length: u32) -> Result<u32, ChunkError> {
        if length > self.limits.max_message_size {
            return Err(ChunkError::MessageTooLarge(length, self.limits.max_message_size));
        }
        Ok(length)
    }

    /// Consumes one whole chunk (header and `data_len` bytes, all present in `buf`) and
    /// returns the message it completes, if any.
    fn consume(
        &mut self,
        header: ChunkHeader,
        data_len: usize,
        buf: &mut BytesMut,
    ) -> Result<Option<Message>, ChunkError> {
        let single = header.start.is_some_and(|s| s.length as usize == data_len);
        let stream = self.streams.entry(header.csid).or_default();

        if !single {
            // Check the budget before consuming so a refused chunk leaves `buf` intact.
            let cap = stream.payload.capacity();
            let need = stream.payload.len().saturating_add(data_len);
            let others = self.pending.saturating_sub(cap);
            let budget = self.limits.max_pending_bytes.saturating_sub(others);
            if need > budget {
                return Err(ChunkError::TooMuchPending(self.limits.max_pending_bytes));
            }
            if need > cap {
                let total = header.start.map_or(stream.length, |s| s.length).max(header.remaining) as usize;
                // Double to keep copies amortised, but never past the message length
                // or the budget: capacity is what the limit counts.
                let want = cap.saturating_mul(2).min(total).min(budget).max(need);
                let mut grown = BytesMut::with_capacity(want);
                grown.extend_from_slice(&stream.payload);
                stream.payload = grown;
                self.pending = others.saturating_add(stream.payload.capacity());
            }
        }

        if let Some(s) = header.start {
            stream.timestamp = s.timestamp;
            stream.delta = s.delta;
            stream.length = s.length;
            stream.type_id = s.type_id;
            stream.stream_id = s.stream_id;
            stream.extended = s.extended;
            stream.remaining = s.length;
        }
        buf.advance(header.len);

        let payload = if single {
            stream.remaining = 0;
            if data_len == 0 {
                Bytes::new()
            } else {
                // Whole message in one chunk: hand out the receive buffer's bytes, no copy.
                buf.split_to(data_len).freeze()
            }
        } else {
            // In bounds: decode() checked the whole chunk is in `buf` before calling.
            stream.payload.extend_from_slice(&buf[..data_len]);
            buf.advance(data_len);
            stream.remaining = stream.remaining.saturating_sub(data_len as u32);
            if stream.remaining > 0 {
                return Ok(None);
            }
            self.pending = self.pending.saturating_sub(stream.payload.capacity());
            // Take the buffer rather than split() it: a split leaves an empty BytesMut
            // sharing the allocation, which would pin the message's memory after the
            // caller dropped it.
            std::mem::take(&mut stream.payload).freeze()
        };
        Ok(Some(Message {
            csid: header.csid,
            timestamp: stream.timestamp,
            type_id: stream.type_id,
            stream_id: stream.stream_id,
            payload,
        }))
    }
}

fn basic_header_len(csid: u32) -> usize {
    match csid {
        0..=63 => 1,
        64..=319 => 2,
        _ => 3,
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    match csid {
        // Callers keep csid in MIN_CSID..=MAX_CSID, so the narrowing casts are exact.
        0..=63 => out.put_u8(fmt | csid as u8),
        64..=319 => {
            out.put_u8(fmt);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            out.put_u8(fmt | 1);
            out.put_u16_le((csid - 64) as u16);
        }
    }
}

/// Bytes [`encode_message`] writes for `msg` at `chunk_size` (0 if the payload is too
/// long to encode).
pub fn encoded_len(msg: &Message, chunk_size: u32) -> usize {
    let len = msg.payload.len();
    if len > MAX_MESSAGE_LEN {
        return 0;
    }
    let chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE) as usize;
    let basic = basic_header_len(msg.csid.clamp(MIN_CSID, MAX_CSID));
    let ext = if msg.timestamp >= EXTENDED_TIMESTAMP { 4 } else { 0 };
    let continuations = len.div_ceil(chunk_size).saturating_sub(1);
    // Bounded by MAX_MESSAGE_LEN * 8: no overflow.
    basic + 11 + ext + len + continuations * (basic + ext)
}

/// Stateless encoding: a type 0 header on the first chunk and type 3 continuations, so
/// the bytes depend only on the message and the chunk size and can be shared by every
/// subscriber using that chunk size.
///
/// The extended timestamp is repeated on every continuation chunk, as ffmpeg, OBS and
/// Flash expect. A chunk size of 0 is treated as 1, and a csid outside 2..=65599 is
/// clamped into it. A payload longer than [`MAX_MESSAGE_LEN`] cannot be described by
/// RTMP's 24-bit length field; nothing is written for it, so callers relaying messages
/// from a transport without that limit (RoQR) must check first.
pub fn encode_message(msg: &Message, chunk_size: u32, out: &mut BytesMut) {
    let len = msg.payload.len();
    if len > MAX_MESSAGE_LEN {
        return;
    }
    let chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE) as usize;
    let csid = msg.csid.clamp(MIN_CSID, MAX_CSID);
    let extended = msg.timestamp >= EXTENDED_TIMESTAMP;
    out.reserve(encoded_len(msg, chunk_size as u32));

    put_basic_header(out, 0, csid);
    out.put_uint(u64::from(msg.timestamp.min(EXTENDED_TIMESTAMP)), 3);
    out.put_uint(len as u64, 3);
    out.put_u8(msg.type_id);
    out.put_u32_le(msg.stream_id);
    if extended {
        out.put_u32(msg.timestamp);
    }
    for (i, piece) in msg.payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            put_basic_header(out, 3, csid);
            if extended {
                out.put_u32(msg.timestamp);
            }
        }
        out.put_slice(piece);
    }
}

/// [`encode_message`] into a fresh `Bytes`.
pub fn encode_to_bytes(msg: &Message, chunk_size: u32) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(msg, chunk_size, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests;
