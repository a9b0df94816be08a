//! Unit tests of `rtmp::chunk`.

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
    assert!(got != vec![a, b], "rml_rtmp handled interleaving; the owned chunk layer may be reconsidered");
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
    let mut dec = ChunkDecoder::new(DecoderLimits { max_pending_bytes: 1000, ..DecoderLimits::default() });
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
