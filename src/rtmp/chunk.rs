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
mod tests {
    use super::*;

    /// Limits that let tests use any chunk size down to 1.
    fn open_limits() -> DecoderLimits {
        DecoderLimits { min_chunk_size: 1, max_chunk_size: MAX_CHUNK_SIZE, ..DecoderLimits::default() }
    }

    fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: Vec<u8>) -> Message {
        Message { csid, timestamp, type_id, stream_id, payload: Bytes::from(payload) }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn decode_all(dec: &mut ChunkDecoder, buf: &mut BytesMut) -> Result<Vec<Message>, ChunkError> {
        let mut out = Vec::new();
        while let Some(m) = dec.decode(buf)? {
            out.push(m);
        }
        Ok(out)
    }

    /// Feeds `bytes` one at a time, collecting every message.
    fn decode_bytewise(dec: &mut ChunkDecoder, bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in bytes {
            buf.put_u8(b);
            while let Some(m) = dec.decode(&mut buf)? {
                out.push(m);
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(out)
    }

    /// Tiny deterministic PRNG (xorshift64*), so the fuzz-style tests need no new crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    // Hand-built header pieces, so tests do not depend on the encoder they check.
    fn fmt0(csid: u8, ts: u32, len: u32, type_id: u8, sid: u32) -> Vec<u8> {
        let mut v = vec![csid];
        v.extend_from_slice(&ts.min(EXTENDED_TIMESTAMP).to_be_bytes()[1..]);
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&sid.to_le_bytes());
        if ts >= EXTENDED_TIMESTAMP {
            v.extend_from_slice(&ts.to_be_bytes());
        }
        v
    }

    fn fmt1(csid: u8, delta: u32, len: u32, type_id: u8) -> Vec<u8> {
        let mut v = vec![0x40 | csid];
        v.extend_from_slice(&delta.to_be_bytes()[1..]);
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v
    }

    fn fmt2(csid: u8, delta: u32) -> Vec<u8> {
        let mut v = vec![0x80 | csid];
        v.extend_from_slice(&delta.to_be_bytes()[1..]);
        v
    }

    #[test]
    fn round_trip_at_many_chunk_sizes() {
        for &cs in &[1u32, 128, 4096, 65536] {
            let cs_len = cs as usize;
            let mut sizes = vec![0, 1, cs_len, cs_len + 1, 100_000];
            sizes.dedup();
            let mut wire = BytesMut::new();
            let mut sent = Vec::new();
            for (i, &size) in sizes.iter().enumerate() {
                for (j, &csid) in [3u32, 4, 6, 100, 4000].iter().enumerate() {
                    let m = msg(
                        csid,
                        (i * 1000 + j) as u32,
                        8 + (j % 3) as u8,
                        j as u32,
                        pattern(size, (i + j) as u8),
                    );
                    encode_message(&m, cs, &mut wire);
                    sent.push(m);
                }
            }
            let expected_len: usize = sent.iter().map(|m| encoded_len(m, cs)).sum();
            assert_eq!(wire.len(), expected_len, "encoded_len at chunk size {cs}");
            let mut dec = ChunkDecoder::new(open_limits());
            dec.set_chunk_size(cs).expect("chunk size within open limits");
            let got = decode_all(&mut dec, &mut wire).expect("valid stream");
            assert!(wire.is_empty());
            assert_eq!(got, sent, "chunk size {cs}");
            assert_eq!(dec.pending_bytes(), 0);
        }
    }

    #[test]
    fn byte_by_byte_matches_whole_buffer() {
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for (i, &size) in [0usize, 1, 127, 128, 129, 300, 1000].iter().enumerate() {
            let ts = if i % 2 == 0 { 0x1234_5678 } else { i as u32 * 40 };
            let m = msg(4 + (i as u32 % 3) * 300, ts, 9, 1, pattern(size, i as u8));
            encode_message(&m, 128, &mut wire);
            sent.push(m);
        }
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_bytewise(&mut dec, &wire).expect("valid stream");
        assert_eq!(got, sent);
    }

    #[test]
    fn short_buffer_consumes_nothing() {
        let m = msg(5, 10, 8, 1, pattern(100, 1));
        let wire = encode_to_bytes(&m, 128);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(dec.decode(&mut buf), Ok(None));
            assert_eq!(buf.len(), cut, "a partial chunk must stay in the buffer");
        }
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Ok(Some(m)));
    }

    #[test]
    fn whole_chunks_of_an_unfinished_message_are_consumed() {
        let m = msg(5, 10, 8, 1, pattern(300, 1));
        let wire = encode_to_bytes(&m, 128);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        // First chunk (12 header + 128) and half of the second.
        let mut buf = BytesMut::from(&wire[..12 + 128 + 50]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), 50);
        assert_eq!(dec.pending_bytes(), 128);
        buf.extend_from_slice(&wire[12 + 128 + 50..]);
        assert_eq!(dec.decode(&mut buf), Ok(Some(m)));
        assert_eq!(dec.pending_bytes(), 0);
    }

    /// Message A (audio, csid 4) and B (video, csid 6), 300 bytes each at chunk size 128,
    /// with their chunks alternating A1 B1 A2 B2 A3 B3, as some hardware encoders send.
    fn interleaved_wire() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let a = pattern(300, 1);
        let b = pattern(300, 2);
        let mut wire = Vec::new();
        wire.extend(fmt0(4, 100, 300, 8, 1));
        wire.extend(&a[..128]);
        wire.extend(fmt0(6, 200, 300, 9, 1));
        wire.extend(&b[..128]);
        wire.push(0xC4);
        wire.extend(&a[128..256]);
        wire.push(0xC6);
        wire.extend(&b[128..256]);
        wire.push(0xC4);
        wire.extend(&a[256..]);
        wire.push(0xC6);
        wire.extend(&b[256..]);
        (wire, a, b)
    }

    #[test]
    fn interleaved_chunk_streams() {
        let (wire, a, b) = interleaved_wire();
        let expected = vec![msg(4, 100, 8, 1, a), msg(6, 200, 9, 1, b)];

        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode_all(&mut dec, &mut buf), Ok(expected.clone()));
        assert!(buf.is_empty());

        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        assert_eq!(decode_bytewise(&mut dec, &wire), Ok(expected));
    }

    /// Why this layer exists: rml_rtmp 0.8 mixes the payloads of interleaved messages.
    #[test]
    fn rml_rtmp_deserializer_fails_interleaving() {
        let (wire, a, b) = interleaved_wire();
        let mut rml = rml_rtmp::chunk_io::ChunkDeserializer::new();
        let mut got = Vec::new();
        let mut input: &[u8] = &wire;
        while let Ok(Some(m)) = rml.get_next_message(input) {
            got.push(m.data.to_vec());
            input = &[];
        }
        assert!(
            got != vec![a, b],
            "rml_rtmp handled interleaving; the owned chunk layer may be reconsidered"
        );
    }

    #[test]
    fn header_types_accumulate_deltas() {
        let mut wire = Vec::new();
        wire.extend(fmt0(4, 1000, 3, 8, 7));
        wire.extend([1, 2, 3]);
        // Type 1: new length and type, delta 20.
        wire.extend(fmt1(4, 20, 2, 9));
        wire.extend([4, 5]);
        // Type 2: delta 30.
        wire.extend(fmt2(4, 30));
        wire.extend([6, 7]);
        // Type 3 starting a new message: delta 30 again.
        wire.push(0xC4);
        wire.extend([8, 9]);
        wire.push(0xC4);
        wire.extend([10, 11]);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_all(&mut dec, &mut BytesMut::from(&wire[..])).expect("valid");
        assert_eq!(
            got,
            vec![
                msg(4, 1000, 8, 7, vec![1, 2, 3]),
                msg(4, 1020, 9, 7, vec![4, 5]),
                msg(4, 1050, 9, 7, vec![6, 7]),
                msg(4, 1080, 9, 7, vec![8, 9]),
                msg(4, 1110, 9, 7, vec![10, 11]),
            ]
        );
    }

    #[test]
    fn type3_after_type0_adds_the_type0_timestamp() {
        // FMLE's audio case from SRS: type 0 at 26, then 0xC4 means 52 (ffmpeg agrees).
        let mut wire = fmt0(4, 26, 2, 8, 1);
        wire.extend([1, 2]);
        wire.push(0xC4);
        wire.extend([3, 4]);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_all(&mut dec, &mut BytesMut::from(&wire[..])).expect("valid");
        assert_eq!(got, vec![msg(4, 26, 8, 1, vec![1, 2]), msg(4, 52, 8, 1, vec![3, 4])]);
    }

    #[test]
    fn type3_new_message_spanning_chunks() {
        let mut wire = fmt0(4, 0, 200, 9, 1);
        wire.extend(pattern(128, 0));
        wire.push(0xC4);
        wire.extend(&pattern(200, 0)[128..]);
        wire.extend(fmt2(4, 33));
        wire.extend(pattern(128, 1));
        wire.push(0xC4);
        wire.extend(&pattern(200, 1)[128..]);
        // New message with type 3 only: delta 33 again.
        wire.push(0xC4);
        wire.extend(pattern(128, 2));
        wire.push(0xC4);
        wire.extend(&pattern(200, 2)[128..]);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_all(&mut dec, &mut BytesMut::from(&wire[..])).expect("valid");
        let ts: Vec<u32> = got.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![0, 33, 66]);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.payload, Bytes::from(pattern(200, i as u8)));
        }
    }

    #[test]
    fn zero_length_messages_complete_immediately() {
        let mut wire = fmt0(3, 5, 0, 20, 0);
        wire.push(0xC3); // type 3 new message, also empty
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_all(&mut dec, &mut BytesMut::from(&wire[..])).expect("valid");
        assert_eq!(got, vec![msg(3, 5, 20, 0, vec![]), msg(3, 10, 20, 0, vec![])]);
    }

    #[test]
    fn timestamps_wrap() {
        let mut wire = fmt0(4, 0xFFFF_FFF0, 1, 8, 1);
        wire.push(1);
        wire.extend(fmt2(4, 0x20));
        wire.push(2);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_all(&mut dec, &mut BytesMut::from(&wire[..])).expect("valid");
        assert_eq!(got[1].timestamp, 0x10);
    }

    #[test]
    fn extended_timestamp_encoding() {
        for &ts in &[EXTENDED_TIMESTAMP, 0x1234_5678] {
            let m = msg(6, ts, 9, 1, pattern(300, 3));
            let wire = encode_to_bytes(&m, 128);
            let mut expected = fmt0(6, ts, 300, 9, 1);
            assert_eq!(&expected[1..4], &[0xFF, 0xFF, 0xFF]);
            expected.extend(&m.payload[..128]);
            expected.push(0xC6);
            expected.extend(ts.to_be_bytes());
            expected.extend(&m.payload[128..256]);
            expected.push(0xC6);
            expected.extend(ts.to_be_bytes());
            expected.extend(&m.payload[256..]);
            assert_eq!(&wire[..], &expected[..], "ts {ts:#x}");

            let mut dec = ChunkDecoder::new(DecoderLimits::default());
            assert_eq!(decode_bytewise(&mut dec, &wire), Ok(vec![m]));
        }
        // Just below the marker: no extended field.
        let m = msg(6, EXTENDED_TIMESTAMP - 1, 9, 1, pattern(10, 3));
        assert_eq!(encode_to_bytes(&m, 128).len(), 12 + 10);
    }

    #[test]
    fn extended_delta_on_type1_and_type3() {
        let mut wire = fmt0(4, 10, 1, 8, 1);
        wire.push(1);
        // Type 1 with an extended delta, spanning two chunks (continuation carries it).
        let mut h = fmt1(4, EXTENDED_TIMESTAMP, 130, 9);
        h.extend(0x0100_0000u32.to_be_bytes());
        wire.extend(h);
        wire.extend(pattern(128, 0));
        wire.push(0xC4);
        wire.extend(0x0100_0000u32.to_be_bytes());
        wire.extend(&pattern(130, 0)[128..]);
        // Type 3 new message: its extended field is the delta.
        wire.push(0xC4);
        wire.extend(0x0200_0000u32.to_be_bytes());
        wire.extend(pattern(128, 1));
        wire.push(0xC4);
        wire.extend(0x0200_0000u32.to_be_bytes());
        wire.extend(&pattern(130, 1)[128..]);
        // A type 2 without extension turns the type 3 extended field off again.
        wire.extend(fmt2(4, 5));
        wire.extend(pattern(128, 2));
        wire.push(0xC4);
        wire.extend(&pattern(130, 2)[128..]);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let got = decode_all(&mut dec, &mut BytesMut::from(&wire[..])).expect("valid");
        let ts: Vec<u32> = got.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![10, 0x0100_000A, 0x0300_000A, 0x0300_000F]);
        assert_eq!(got[3].payload, Bytes::from(pattern(130, 2)));
    }

    #[test]
    fn csid_forms() {
        let cases: [(u32, &[u8]); 7] = [
            (2, &[0x02]),
            (63, &[0x3F]),
            (64, &[0x00, 0x00]),
            (319, &[0x00, 0xFF]),
            (320, &[0x01, 0x00, 0x01]),
            (1000, &[0x01, 0xA8, 0x03]),
            (65599, &[0x01, 0xFF, 0xFF]),
        ];
        for (csid, basic) in cases {
            let m = msg(csid, 7, 8, 1, pattern(200, 9));
            let wire = encode_to_bytes(&m, 128);
            assert_eq!(&wire[..basic.len()], basic, "csid {csid}");
            // The continuation repeats the basic header with fmt 3.
            let cont = 11 + basic.len() + 128;
            assert_eq!(wire[cont], basic[0] | 0xC0, "csid {csid}");
            assert_eq!(&wire[cont + 1..cont + basic.len()], &basic[1..]);
            let mut dec = ChunkDecoder::new(DecoderLimits::default());
            assert_eq!(decode_bytewise(&mut dec, &wire), Ok(vec![m]), "csid {csid}");
        }
    }

    #[test]
    fn encoder_clamps_odd_arguments() {
        // csid 0/1 would collide with the long-form markers.
        let wire = encode_to_bytes(&msg(0, 0, 8, 1, vec![1]), 128);
        assert_eq!(wire[0], 0x02);
        let wire = encode_to_bytes(&msg(70_000, 0, 8, 1, vec![1]), 128);
        assert_eq!(&wire[..3], &[0x01, 0xFF, 0xFF]);
        // Chunk size 0 behaves as 1.
        let m = msg(3, 0, 8, 1, vec![1, 2]);
        assert_eq!(encode_to_bytes(&m, 0), encode_to_bytes(&m, 1));
        // Too long for the 24-bit length field: nothing written.
        let big = msg(3, 0, 9, 1, vec![0; MAX_MESSAGE_LEN + 1]);
        assert!(encode_to_bytes(&big, 4096).is_empty());
        assert_eq!(encoded_len(&big, 4096), 0);
    }

    #[test]
    fn set_chunk_size_limits() {
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        assert_eq!(dec.chunk_size(), DEFAULT_CHUNK_SIZE);
        let max = 16 * 1024 * 1024;
        assert_eq!(dec.set_chunk_size(127), Err(ChunkError::BadChunkSize(127, 128, max)));
        assert_eq!(dec.set_chunk_size(0), Err(ChunkError::BadChunkSize(0, 128, max)));
        assert_eq!(dec.set_chunk_size(max + 1), Err(ChunkError::BadChunkSize(max + 1, 128, max)));
        assert_eq!(dec.set_chunk_size(4096), Ok(()));
        assert_eq!(dec.chunk_size(), 4096);

        let mut open = ChunkDecoder::new(DecoderLimits {
            min_chunk_size: 0,
            max_chunk_size: u32::MAX,
            ..DecoderLimits::default()
        });
        assert_eq!(open.set_chunk_size(0), Err(ChunkError::BadChunkSize(0, 1, MAX_CHUNK_SIZE)));
        assert_eq!(
            open.set_chunk_size(MAX_CHUNK_SIZE + 1),
            Err(ChunkError::BadChunkSize(MAX_CHUNK_SIZE + 1, 1, MAX_CHUNK_SIZE))
        );
        assert_eq!(open.set_chunk_size(MAX_CHUNK_SIZE), Ok(()));
    }

    #[test]
    fn error_no_previous_header() {
        for first in [fmt2(5, 0), vec![0xC5]] {
            let mut dec = ChunkDecoder::new(DecoderLimits::default());
            let mut buf = BytesMut::from(&first[..]);
            assert_eq!(dec.decode(&mut buf), Err(ChunkError::NoPreviousHeader(5)));
        }
        // Reported from the basic header alone, before the rest of the header arrives.
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&[0x85u8][..]);
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::NoPreviousHeader(5)));
    }

    #[test]
    fn type_1_header_may_open_a_chunk_stream() {
        // librtmp's pings: fmt 1 on csid 2 with no earlier header.
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let mut wire = fmt1(2, 7, 6, 4);
        wire.extend_from_slice(&[0, 6, 0, 0, 0, 9]);
        let mut buf = BytesMut::from(&wire[..]);
        let m = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((m.csid, m.timestamp, m.type_id, m.stream_id), (2, 7, 4, 0));
        assert_eq!(&m.payload[..], &[0, 6, 0, 0, 0, 9]);
    }

    #[test]
    fn error_message_too_large() {
        let limits = DecoderLimits { max_message_size: 1000, ..DecoderLimits::default() };
        let mut dec = ChunkDecoder::new(limits);
        let mut buf = BytesMut::from(&fmt0(4, 0, 1001, 9, 1)[..]);
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::MessageTooLarge(1001, 1000)));

        let mut dec = ChunkDecoder::new(limits);
        let mut wire = fmt0(4, 0, 1000, 9, 1);
        wire.extend(pattern(128, 0));
        for i in 1..8 {
            wire.push(0xC4);
            wire.extend(pattern(128.min(1000 - i * 128), 0));
        }
        wire.extend(fmt1(4, 0, 0xFF_FFFF, 9));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf).map(|m| m.map(|m| m.payload.len())), Ok(Some(1000)));
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::MessageTooLarge(0xFF_FFFF, 1000)));
    }

    #[test]
    fn error_interrupted() {
        for next in [fmt0(4, 0, 10, 8, 1), fmt1(4, 0, 10, 8), fmt2(4, 0)] {
            let mut wire = fmt0(4, 0, 300, 9, 1);
            wire.extend(pattern(128, 0));
            wire.extend(next);
            let mut dec = ChunkDecoder::new(DecoderLimits::default());
            let mut buf = BytesMut::from(&wire[..]);
            assert_eq!(dec.decode(&mut buf), Err(ChunkError::Interrupted(4)));
        }
    }

    #[test]
    fn error_too_many_chunk_streams() {
        let mut wire = Vec::new();
        for csid in 0..=MAX_CHUNK_STREAMS as u32 {
            let m = msg(10 + csid, 0, 8, 1, vec![1]);
            wire.extend_from_slice(&encode_to_bytes(&m, 128));
        }
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&wire[..]);
        for _ in 0..MAX_CHUNK_STREAMS {
            assert!(matches!(dec.decode(&mut buf), Ok(Some(_))));
        }
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS)));
        // Known chunk streams keep working.
        let again = encode_to_bytes(&msg(10, 5, 8, 1, vec![2]), 128);
        assert!(matches!(dec.decode(&mut BytesMut::from(&again[..])), Ok(Some(_))));
    }

    #[test]
    fn huge_claims_cost_only_what_arrives() {
        // 64 chunk streams each claim 16 MiB and send one 128-byte chunk.
        let claim = 16 * 1024 * 1024 - 1;
        let mut wire = Vec::new();
        for csid in 0..MAX_CHUNK_STREAMS as u32 {
            let mut h = vec![0x01];
            h.extend_from_slice(&(csid + 1000 - 64).to_le_bytes()[..2]);
            h.extend_from_slice(&fmt0(0, 0, claim, 9, 1)[1..]);
            wire.extend(h);
            wire.extend(pattern(128, csid as u8));
        }
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert_eq!(dec.pending_bytes(), MAX_CHUNK_STREAMS * 128);
        let held: usize = dec.streams.values().map(|s| s.payload.capacity()).sum();
        assert_eq!(held, dec.pending_bytes());

        // With a small budget the same traffic is refused once it is exceeded.
        let mut dec =
            ChunkDecoder::new(DecoderLimits { max_pending_bytes: 1000, ..DecoderLimits::default() });
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::TooMuchPending(1000)));
        assert!(dec.pending_bytes() <= 1000);
    }

    #[test]
    fn pending_limit_counts_bytes_when_tight() {
        // Growth is clamped to the budget, so a message that fits is not refused because
        // doubling overshot.
        let limits = DecoderLimits { max_pending_bytes: 1000, ..DecoderLimits::default() };
        let m = msg(4, 0, 9, 1, pattern(1000 + 128, 1));
        let wire = encode_to_bytes(&m, 128);
        let mut dec = ChunkDecoder::new(limits);
        // Even the completing chunk is buffered, so 1128 bytes would be held: refused.
        assert_eq!(dec.decode(&mut BytesMut::from(&wire[..])), Err(ChunkError::TooMuchPending(1000)));
        let m = msg(4, 0, 9, 1, pattern(1000, 1));
        let wire = encode_to_bytes(&m, 128);
        let mut dec = ChunkDecoder::new(limits);
        assert_eq!(dec.decode(&mut BytesMut::from(&wire[..])), Ok(Some(m)));
        assert_eq!(dec.pending_bytes(), 0);
    }

    #[test]
    fn refused_chunk_stays_in_buffer() {
        let limits = DecoderLimits { max_pending_bytes: 100, ..DecoderLimits::default() };
        let wire = encode_to_bytes(&msg(4, 0, 9, 1, pattern(300, 1)), 128);
        let mut dec = ChunkDecoder::new(limits);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::TooMuchPending(100)));
        assert_eq!(buf.len(), wire.len());
    }

    #[test]
    fn abort_drops_partial_message() {
        let mut wire = fmt0(4, 10, 300, 9, 1);
        wire.extend(pattern(128, 0));
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(dec.pending_bytes(), 128);
        dec.abort(4);
        dec.abort(99);
        assert_eq!(dec.pending_bytes(), 0);
        // After the abort a type 1 header is legal again.
        let mut next = fmt1(4, 5, 2, 8);
        next.extend([1, 2]);
        let got = dec.decode(&mut BytesMut::from(&next[..]));
        assert_eq!(got, Ok(Some(msg(4, 15, 8, 1, vec![1, 2]))));
    }

    #[test]
    fn chunk_size_change_mid_stream() {
        let a = msg(4, 0, 9, 1, pattern(5000, 1));
        let b = msg(4, 40, 9, 1, pattern(5000, 2));
        let mut wire = BytesMut::new();
        encode_message(&a, 128, &mut wire);
        encode_message(&b, 4096, &mut wire);
        let mut dec = ChunkDecoder::new(DecoderLimits::default());
        assert_eq!(dec.decode(&mut wire), Ok(Some(a)));
        dec.set_chunk_size(4096).expect("in range");
        assert_eq!(dec.decode(&mut wire), Ok(Some(b)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let small = DecoderLimits {
            max_message_size: 4096,
            min_chunk_size: 1,
            max_chunk_size: 1 << 20,
            max_pending_bytes: 8192,
        };
        for round in 0..3000 {
            let limits = if round % 2 == 0 { small } else { DecoderLimits::default() };
            let mut dec = ChunkDecoder::new(limits);
            if round % 3 == 0 {
                let _ = dec.set_chunk_size(1 + rng.below(64) as u32);
            }
            let len = rng.below(600) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias towards plausible headers so decoding gets past the first byte.
            if let Some(b) = data.first_mut() {
                *b &= 0x3F;
            }
            let mut buf = BytesMut::new();
            let mut fed = 0;
            while fed < data.len() {
                let step = (1 + rng.below(40) as usize).min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + step]);
                fed += step;
                match decode_all(&mut dec, &mut buf) {
                    Ok(msgs) => {
                        for m in msgs {
                            assert!(m.payload.len() <= limits.max_message_size as usize);
                        }
                    }
                    Err(_) => break,
                }
                assert!(dec.pending_bytes() <= limits.max_pending_bytes);
            }
        }
    }

    #[test]
    fn mutated_streams_never_panic() {
        let mut rng = Rng(42);
        let mut base = BytesMut::new();
        for i in 0..6u32 {
            let m = msg(3 + i, i * 1000 + 0x00FF_FFF0 * (i % 2), 8 + (i % 2) as u8, 1, pattern(200, i as u8));
            encode_message(&m, 64, &mut base);
        }
        for _ in 0..3000 {
            let mut data = base.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len() as u64) as usize;
                if let Some(b) = data.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
            let mut dec = ChunkDecoder::new(open_limits());
            let _ = dec.set_chunk_size(64);
            let mut buf = BytesMut::from(&data[..]);
            let _ = decode_all(&mut dec, &mut buf);
        }
    }
}
