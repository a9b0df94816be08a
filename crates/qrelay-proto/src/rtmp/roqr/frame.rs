//! The RoQR frame (draft-gregoire-rtmp-over-quic §"RoQR Frame Format"): Flow ID,
//! timestamp, message stream ID, chunk stream ID and payload length as QUIC varints around
//! a one-byte message type, then exactly one whole RTMP message payload. The same frame
//! travels on QUIC streams (self-delimiting, several per stream) and alone in a QUIC
//! DATAGRAM.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::rtmp::chunk::Message;

/// Largest value a QUIC varint holds (2^62 - 1).
const VARINT_MAX: u64 = (1 << 62) - 1;
/// Longest frame header: five 8-byte varints and the type byte.
pub const MAX_HEADER_LEN: usize = 5 * 8 + 1;

/// One RoQR frame: a Flow ID and a whole RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoqrFrame {
    /// The flow the message belongs to; 0 is the RTMP session's default flow.
    pub flow: u64,
    /// The message, timestamp in full (no extended-timestamp sentinel).
    pub message: Message,
}

/// Why bytes are not a RoQR frame. Each maps to `FRAME_ENCODING_ERROR` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload length is zero (the draft requires it to be positive).
    #[error("frame with an empty payload")]
    EmptyPayload,
    /// The payload length is over the receiver's limit.
    #[error("frame payload of {0} bytes exceeds the limit of {1}")]
    TooLarge(u64, u32),
    /// A field does not fit RTMP's 32-bit range (timestamp, stream IDs).
    #[error("{0} out of RTMP's range")]
    OutOfRange(&'static str),
    /// A datagram that does not hold exactly one frame.
    #[error("datagram holds {0}")]
    BadDatagram(&'static str),
}

/// Reads a varint from the front of `buf`; `None` when `buf` is too short.
fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    buf.advance(len);
    Some(v)
}

fn put_varint(v: u64, out: &mut BytesMut) {
    debug_assert!(v <= VARINT_MAX);
    if v < 1 << 6 {
        out.put_u8(v as u8);
    } else if v < 1 << 14 {
        out.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        out.put_u32(0x8000_0000 | v as u32);
    } else {
        out.put_u64(0xc000_0000_0000_0000 | v);
    }
}

fn to_u32(v: u64, what: &'static str) -> Result<u32, FrameError> {
    u32::try_from(v).map_err(|_| FrameError::OutOfRange(what))
}

/// Parses the header at the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the frame's fields and its header length.
fn parse_header(buf: &[u8], max_payload: u32) -> Result<Option<(u64, Message, usize, usize)>, FrameError> {
    let mut p = buf;
    let (Some(flow), Some(ts)) = (get_varint(&mut p), get_varint(&mut p)) else { return Ok(None) };
    let Some((&type_id, rest)) = p.split_first() else { return Ok(None) };
    p = rest;
    let (Some(sid), Some(csid), Some(len)) = (get_varint(&mut p), get_varint(&mut p), get_varint(&mut p))
    else {
        return Ok(None);
    };
    if len == 0 {
        return Err(FrameError::EmptyPayload);
    }
    if len > u64::from(max_payload) {
        return Err(FrameError::TooLarge(len, max_payload));
    }
    let message = Message {
        csid: to_u32(csid, "chunk stream ID")?,
        timestamp: to_u32(ts, "timestamp")?,
        type_id,
        stream_id: to_u32(sid, "message stream ID")?,
        payload: Bytes::new(),
    };
    Ok(Some((flow, message, buf.len() - p.len(), len as usize)))
}

/// Decodes the next whole frame from a stream's bytes, consuming it; `Ok(None)` when
/// `buf` holds only part of one (nothing is consumed, nothing allocated). A length claim
/// is checked against `max_payload` before any byte of the payload is awaited.
pub fn decode(buf: &mut BytesMut, max_payload: u32) -> Result<Option<RoqrFrame>, FrameError> {
    let Some((flow, mut message, header, len)) = parse_header(buf, max_payload)? else { return Ok(None) };
    if buf.len() < header + len {
        return Ok(None);
    }
    buf.advance(header);
    message.payload = buf.split_to(len).freeze();
    Ok(Some(RoqrFrame { flow, message }))
}

/// Decodes a DATAGRAM's content: exactly one frame and no trailing bytes.
pub fn decode_datagram(data: Bytes, max_payload: u32) -> Result<RoqrFrame, FrameError> {
    let Some((flow, mut message, header, len)) = parse_header(&data, max_payload)? else {
        return Err(FrameError::BadDatagram("a truncated frame"));
    };
    match data.len().cmp(&(header + len)) {
        std::cmp::Ordering::Less => Err(FrameError::BadDatagram("a truncated frame")),
        std::cmp::Ordering::Greater => Err(FrameError::BadDatagram("trailing bytes")),
        std::cmp::Ordering::Equal => {
            message.payload = data.slice(header..);
            Ok(RoqrFrame { flow, message })
        }
    }
}

/// The header of a frame carrying `msg` on `flow`; the payload follows it unchanged, so a
/// sender can queue `[header, payload]` without copying the payload.
pub fn encode_header(flow: u64, msg: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    put_varint(flow.min(VARINT_MAX), &mut out);
    put_varint(u64::from(msg.timestamp), &mut out);
    out.put_u8(msg.type_id);
    put_varint(u64::from(msg.stream_id), &mut out);
    put_varint(u64::from(msg.csid), &mut out);
    put_varint(msg.payload.len() as u64, &mut out);
    out.freeze()
}

/// A whole frame in one buffer (commands, datagrams).
pub fn encode(flow: u64, msg: &Message, out: &mut BytesMut) {
    out.extend_from_slice(&encode_header(flow, msg));
    out.extend_from_slice(&msg.payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ts: u32, len: usize) -> Message {
        Message { csid: 6, timestamp: ts, type_id: 9, stream_id: 1, payload: Bytes::from(vec![7u8; len]) }
    }

    #[test]
    fn varints_use_the_shortest_form_and_round_trip() {
        for (v, len) in [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), ((1 << 30) - 1, 4), (1 << 30, 8)] {
            let mut b = BytesMut::new();
            put_varint(v, &mut b);
            assert_eq!(b.len(), len, "{v}");
            let mut s = &b[..];
            assert_eq!(get_varint(&mut s), Some(v));
            assert!(s.is_empty());
        }
        // RFC 9000 §A.1's example: 0x7bbd is 15293 in two bytes.
        assert_eq!(get_varint(&mut &[0x7b, 0xbd][..]), Some(15293));
    }

    #[test]
    fn frames_round_trip_with_full_timestamps() {
        for ts in [0, 0xFF_FFFF, 0x0100_0000, u32::MAX] {
            let m = msg(ts, 300);
            let mut b = BytesMut::new();
            encode(0, &m, &mut b);
            encode(5, &m, &mut b);
            let a = decode(&mut b, 1 << 20).unwrap().unwrap();
            let c = decode(&mut b, 1 << 20).unwrap().unwrap();
            assert_eq!((a.flow, c.flow), (0, 5));
            assert_eq!(a.message, m);
            assert_eq!(c.message, m);
            assert!(b.is_empty());
        }
    }

    #[test]
    fn a_frame_fed_byte_by_byte_decodes_once_whole() {
        let m = msg(1234, 100);
        let mut whole = BytesMut::new();
        encode(0, &m, &mut whole);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let got = decode(&mut buf, 1 << 20).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1, "at byte {i}");
        }
    }

    #[test]
    fn malformed_frames_are_refused_before_their_payload_arrives() {
        let mut b = BytesMut::from(&[0u8, 0, 9, 1, 6, 0][..]);
        assert_eq!(decode(&mut b, 100), Err(FrameError::EmptyPayload));
        // A 1 GiB claim with no payload behind it is refused at once.
        let mut b = BytesMut::from(&[0u8, 0, 9, 1, 6, 0xc0, 0, 0, 0, 0x40, 0, 0, 0][..]);
        assert_eq!(decode(&mut b, 1 << 20), Err(FrameError::TooLarge(1 << 30, 1 << 20)));
        // A timestamp beyond 32 bits cannot be an RTMP timestamp.
        let mut b = BytesMut::from(&[0u8, 0xc0, 0, 0, 1, 0, 0, 0, 0, 9, 1, 6, 1, 0][..]);
        assert_eq!(decode(&mut b, 100), Err(FrameError::OutOfRange("timestamp")));
    }

    #[test]
    fn datagrams_hold_exactly_one_frame() {
        let m = msg(40, 10);
        let mut b = BytesMut::new();
        encode(0, &m, &mut b);
        let one = b.clone().freeze();
        assert_eq!(decode_datagram(one.clone(), 100).unwrap().message, m);
        assert!(decode_datagram(one.slice(..one.len() - 1), 100).is_err());
        b.put_u8(0);
        assert_eq!(decode_datagram(b.freeze(), 100), Err(FrameError::BadDatagram("trailing bytes")));
        assert!(decode_datagram(Bytes::new(), 100).is_err());
    }
}
