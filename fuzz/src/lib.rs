//! The checks behind every fuzz target, one `pub fn <target>(data: &[u8])` each.
//!
//! They live here, not in the `fuzz_targets/*.rs` files, so that the main crate's
//! `tests/fuzz_regressions.rs` can include this very file (`#[path]`) and replay saved
//! inputs (`fuzz/regressions/<target>/*`, `fuzz/seeds/<target>/*`) through exactly the
//! same invariants under plain `cargo test`, on stable, without libFuzzer.
//!
//! So this file must stay self-contained: no `mod` children, and no dependencies other
//! than `qrelay` and `bytes` (both available to the main crate's integration tests).
//! Structured inputs are therefore decoded by the tiny [`Reader`] below instead of the
//! `arbitrary` crate.
//!
//! Every check panics (assert) when an invariant breaks; libFuzzer reports the panic as
//! a crash and saves the input.

use bytes::{BufMut, Bytes, BytesMut};

use qrelay::media::flv::{self, FlvReader, FlvTag};
use qrelay::media::frame::{inspect_audio, inspect_video, Frame, Inspection, MediaKind, TrackSet};
use qrelay::rtmp::amf0;
use qrelay::rtmp::chunk::{
    self, ChunkDecoder, ChunkError, DecoderLimits, Message, MAX_CHUNK_SIZE, MAX_CHUNK_STREAMS,
};
use qrelay::rtmp::handshake::{Handshake, C0_C1_LEN};
use qrelay::rtmp::message::RtmpMessage;
use qrelay::rtmp::session::{ServerEvent, ServerSession, SessionConfig};
use qrelay::url::StreamUrl;

/// C0 + C1 + C2: everything a client sends before its first chunk.
pub const CLIENT_HANDSHAKE_LEN: usize = C0_C1_LEN + 1536;
/// S0 + S1 + S2: everything a server sends during the handshake.
pub const SERVER_HANDSHAKE_LEN: usize = 1 + 1536 + 1536;

// ---------------------------------------------------------------------------------------
// Input helpers
// ---------------------------------------------------------------------------------------

/// Reads fields off the front of the fuzz input; past the end it yields zeros, so every
/// input is valid.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// Splits `data` into the pieces a socket might deliver: the first byte's low 3 bits give
/// the number of cut points, each a little-endian u16 length; what follows is the
/// stream, cut at those lengths (clamped; empty pieces allowed), the remainder being the
/// last piece. A seed made of `0x00` + raw bytes is the stream in one piece.
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut r = Reader::new(data);
    let n = r.u8() & 7;
    let cuts: Vec<usize> = (0..n).map(|_| usize::from(r.u16())).collect();
    let mut rest = r.rest();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    for cut in cuts {
        let (head, tail) = rest.split_at(cut.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// Limits that let any chunk size from 1 up be set (for re-decoding what we encode).
fn open_limits() -> DecoderLimits {
    DecoderLimits { min_chunk_size: 1, max_chunk_size: MAX_CHUNK_SIZE, ..DecoderLimits::default() }
}

/// Whether `v` equals itself, i.e. holds no NaN (the only values PartialEq finds unequal
/// to themselves here).
#[allow(clippy::eq_op)]
fn nan_free<T: PartialEq>(v: &T) -> bool {
    v == v
}

/// Tight limits, so the fuzzer reaches the limit paths with small inputs.
fn small_limits() -> DecoderLimits {
    DecoderLimits {
        max_message_size: 4096,
        min_chunk_size: 1,
        max_chunk_size: 1 << 20,
        max_pending_bytes: 8192,
    }
}

/// Encodes `msg` at `chunk_size`, decodes it with a fresh decoder and checks it comes back
/// identical (csid clamped into 2..=65599, as the encoder documents).
fn assert_chunk_round_trip(msg: &Message, chunk_size: u32) {
    let mut wire = BytesMut::new();
    chunk::encode_message(msg, chunk_size, &mut wire);
    assert_eq!(wire.len(), chunk::encoded_len(msg, chunk_size), "encoded_len disagrees with encode_message");
    let mut dec = ChunkDecoder::new(open_limits());
    dec.set_chunk_size(chunk_size.clamp(1, MAX_CHUNK_SIZE)).expect("open limits accept any chunk size");
    let got = dec.decode(&mut wire).expect("re-decoding our own encoding failed");
    let want = Message { csid: msg.csid.clamp(2, 65_599), ..msg.clone() };
    assert_eq!(got.as_ref(), Some(&want), "chunk round trip at chunk size {chunk_size}");
    assert!(wire.is_empty(), "{} bytes left after re-decoding one message", wire.len());
    assert_eq!(dec.pending_bytes(), 0);
}

// ---------------------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------------------

/// Arbitrary bytes, split arbitrarily, into the server handshake.
///
/// Invariants: never panics; only a C0 other than 3 is refused (the server accepts any
/// C1/C2, digest or plain); the response is S0+S1 (1537 bytes) at once and S2 as soon as
/// C1 is complete, never more than 3073 bytes in all; completion happens exactly when
/// 3073 bytes have arrived and hands back precisely the bytes after them; after
/// completion, more input is an error, not a panic.
pub fn handshake(data: &[u8]) {
    let pieces = pieces(data);
    let all: Vec<u8> = pieces.concat();
    let mut hs = Handshake::server();
    let mut out = BytesMut::new();
    let mut fed = 0usize;
    let mut done = false;
    for piece in pieces {
        if done {
            assert!(hs.process(piece, &mut out).is_err(), "input after completion must be refused");
            break;
        }
        fed += piece.len();
        match hs.process(piece, &mut out) {
            Ok(None) => {
                assert!(fed < CLIENT_HANDSHAKE_LEN, "{fed} bytes fed and still in progress");
                let want = if fed >= C0_C1_LEN { SERVER_HANDSHAKE_LEN } else { C0_C1_LEN };
                assert_eq!(out.len(), want, "response size after {fed} bytes");
            }
            Ok(Some(rest)) => {
                assert!(fed >= CLIENT_HANDSHAKE_LEN, "completed after only {fed} bytes");
                assert_eq!(&rest[..], &all[CLIENT_HANDSHAKE_LEN..fed], "bytes after the handshake");
                assert_eq!(out.len(), SERVER_HANDSHAKE_LEN);
                done = true;
            }
            Err(_) => {
                assert_ne!(all.first(), Some(&3), "version 3 handshake refused");
                break;
            }
        }
        assert!(out.len() <= SERVER_HANDSHAKE_LEN, "handshake output {} bytes", out.len());
        if let Some(&s0) = out.first() {
            assert_eq!(s0, 3, "S0");
        }
    }
}

// ---------------------------------------------------------------------------------------
// chunk_decoder
// ---------------------------------------------------------------------------------------

/// What one decoding run produced.
#[derive(Debug, PartialEq)]
struct DecodeRun {
    messages: Vec<Message>,
    error: Option<ChunkError>,
}

/// Decodes `pieces` fed one after the other, acting on SetChunkSize and Abort the way the
/// session core does, checking the limits after every call.
fn decode_pieces(limits: DecoderLimits, initial_chunk_size: Option<u32>, pieces: &[&[u8]]) -> DecodeRun {
    let mut dec = ChunkDecoder::new(limits);
    if let Some(size) = initial_chunk_size {
        let _ = dec.set_chunk_size(size);
    }
    let mut buf = BytesMut::new();
    let mut run = DecodeRun { messages: Vec::new(), error: None };
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let res = dec.decode(&mut buf);
            assert!(
                dec.pending_bytes() <= limits.max_pending_bytes,
                "pending {} over the limit {}",
                dec.pending_bytes(),
                limits.max_pending_bytes
            );
            match res {
                Ok(None) => break,
                Ok(Some(m)) => {
                    assert!(buf.len() < before || m.payload.is_empty(), "a message from no bytes");
                    assert!((2..=65_599).contains(&m.csid), "csid {}", m.csid);
                    assert!(
                        m.payload.len() <= limits.max_message_size as usize,
                        "message over the size limit"
                    );
                    let control = RtmpMessage::parse(&m);
                    run.messages.push(m);
                    match control {
                        Ok(RtmpMessage::SetChunkSize(n)) => {
                            if let Err(e) = dec.set_chunk_size(n) {
                                run.error = Some(e);
                                return run;
                            }
                        }
                        Ok(RtmpMessage::Abort(csid)) => dec.abort(csid),
                        _ => {}
                    }
                }
                Err(e) => {
                    run.error = Some(e);
                    return run;
                }
            }
        }
    }
    run
}

/// Arbitrary bytes into the chunk decoder, in fuzzer-chosen pieces.
///
/// Input: a config byte (bit 0: tight limits; bit 1: an initial SetChunkSize given by the
/// next byte), a byte choosing the re-encoding chunk size, then [`pieces`].
///
/// Invariants: never panics; pending memory stays within `max_pending_bytes`; messages
/// respect `max_message_size`; the same bytes in one piece decode to the same messages
/// and the same error (split invariance); every decoded message re-encoded with
/// `encode_message` at chunk size N decodes to itself with a fresh decoder.
pub fn chunk_decoder(data: &[u8]) {
    let mut r = Reader::new(data);
    let cfg = r.u8();
    let limits = if cfg & 1 != 0 { small_limits() } else { DecoderLimits::default() };
    let initial = (cfg & 2 != 0).then(|| 1 + u32::from(r.u8()));
    let reencode = match r.u8() {
        0 => 65_536,
        n => u32::from(n),
    };
    let pieces = pieces(r.rest());
    let split = decode_pieces(limits, initial, &pieces);
    let whole = pieces.concat();
    let joined = decode_pieces(limits, initial, &[&whole]);
    assert_eq!(split, joined, "decoding depends on how the bytes were split");
    for m in &split.messages {
        assert_chunk_round_trip(m, reencode);
    }
}

// ---------------------------------------------------------------------------------------
// chunk_roundtrip
// ---------------------------------------------------------------------------------------

/// Chunk byte ranges of one `encode_message` output, checked against the framing the
/// encoder documents (type 0 header, then type 3 continuations repeating the extended
/// timestamp).
fn split_chunks(msg: &Message, chunk_size: u32, wire: &Bytes) -> Vec<Bytes> {
    let csid = msg.csid.clamp(2, 65_599);
    let basic = match csid {
        0..=63 => 1,
        64..=319 => 2,
        _ => 3,
    };
    let ext = if msg.timestamp >= 0xFF_FFFF { 4 } else { 0 };
    let cs = chunk_size.clamp(1, MAX_CHUNK_SIZE) as usize;
    let len = msg.payload.len();
    let mut chunks = Vec::new();
    let mut at = 0;
    let first = basic + 11 + ext + len.min(cs);
    chunks.push(wire.slice(at..at + first));
    at += first;
    let mut left = len - len.min(cs);
    while left > 0 {
        let n = basic + ext + left.min(cs);
        chunks.push(wire.slice(at..at + n));
        assert_eq!(wire[at] >> 6, 3, "continuation chunk is not type 3");
        at += n;
        left -= left.min(cs);
    }
    assert_eq!(at, wire.len(), "encoder framing");
    chunks
}

/// Structured messages, encoded, their chunks interleaved across chunk streams in a
/// fuzzer-chosen order, then decoded: every chunk stream yields its messages unchanged
/// and in order.
///
/// Input: u16 chunk size selector, message count (1..=16), then per message a u16 csid
/// selector, a u8 timestamp mode and u32 timestamp, u8 type id, u32 stream id, u16
/// length and that many payload bytes; whatever remains schedules the interleaving.
pub fn chunk_roundtrip(data: &[u8]) {
    let mut r = Reader::new(data);
    let raw = r.u16();
    let chunk_size =
        if raw & 0x8000 != 0 { u32::from(raw & 0x7FFF) * 16 + 1 } else { u32::from(raw & 0xFF) + 1 };
    let count = usize::from(r.u8() % 16) + 1;
    let mut msgs = Vec::new();
    let mut csids = Vec::new();
    for _ in 0..count {
        let c = r.u16();
        let csid = match c & 3 {
            0 => 2 + u32::from(c >> 2) % 62,
            1 => 64 + u32::from(c >> 2) % 256,
            2 => 320 + u32::from(c >> 2),
            // Raw, including 0, 1 and over 65599: the encoder clamps.
            _ => u32::from(c) * 2,
        };
        let mode = r.u8();
        let t = r.u32();
        let timestamp = match mode % 4 {
            0 => t,
            1 => (0xFF_FFFF - 1) + t % 3,
            2 => t & 0xFF_FFFF,
            _ => t % 1000,
        };
        let type_id = r.u8();
        let stream_id = r.u32();
        let len = usize::from(r.u16() % 2048);
        let payload = Bytes::copy_from_slice(r.bytes(len));
        let msg = Message { csid: csid.clamp(2, 65_599), timestamp, type_id, stream_id, payload };
        if !csids.contains(&msg.csid) {
            if csids.len() == MAX_CHUNK_STREAMS {
                continue;
            }
            csids.push(msg.csid);
        }
        msgs.push(msg);
    }
    // Per chunk stream, the chunks of its messages in order.
    let mut queues: Vec<std::collections::VecDeque<Bytes>> = csids
        .iter()
        .map(|&c| {
            msgs.iter()
                .filter(|m| m.csid == c)
                .flat_map(|m| split_chunks(m, chunk_size, &chunk::encode_to_bytes(m, chunk_size)))
                .collect()
        })
        .collect();
    let mut wire = BytesMut::new();
    let mut turn = 0usize;
    while queues.iter().any(|q| !q.is_empty()) {
        turn = if r.is_empty() { turn + 1 } else { turn + usize::from(r.u8()) };
        let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
        let pick = live[turn % live.len()];
        let chunk = queues[pick].pop_front().expect("live queue");
        wire.put_slice(&chunk);
    }
    let mut dec = ChunkDecoder::new(open_limits());
    dec.set_chunk_size(chunk_size).expect("open limits");
    let mut got = Vec::new();
    while let Some(m) = dec.decode(&mut wire).expect("decoding interleaved encoder output") {
        got.push(m);
    }
    assert!(wire.is_empty(), "{} bytes left undecoded", wire.len());
    assert_eq!(dec.pending_bytes(), 0, "pending after every message completed");
    assert_eq!(got.len(), msgs.len(), "message count");
    for &c in &csids {
        let want: Vec<&Message> = msgs.iter().filter(|m| m.csid == c).collect();
        let have: Vec<&Message> = got.iter().filter(|m| m.csid == c).collect();
        assert_eq!(have, want, "chunk stream {c} at chunk size {chunk_size}");
    }
}

// ---------------------------------------------------------------------------------------
// server_session
// ---------------------------------------------------------------------------------------

/// Decodes what the server sends, as a client would, following its SetChunkSize.
struct Peer {
    skip: usize,
    dec: ChunkDecoder,
    buf: BytesMut,
}

impl Peer {
    fn absorb(&mut self, bytes: &[u8]) {
        let skip = self.skip.min(bytes.len());
        self.skip -= skip;
        self.buf.extend_from_slice(&bytes[skip..]);
        while let Some(m) = self.dec.decode(&mut self.buf).expect("server output is not a valid chunk stream")
        {
            let parsed = RtmpMessage::parse(&m).expect("server sent a message it cannot parse back");
            if let RtmpMessage::SetChunkSize(n) = parsed {
                self.dec.set_chunk_size(n).expect("server announced a bad chunk size");
            }
        }
    }
}

/// A server session after a real handshake (or, with control bit 0, from raw bytes
/// including the handshake), then arbitrary bytes in pieces; publish/play requests are
/// accepted or rejected as the control byte says.
///
/// Input: control byte (bit 0 raw mode, bit 1 accept publish, bit 2 accept play, bit 3
/// tight decoder limits, bit 4 call `play_ended` after every piece, bits 5-6 outbound
/// chunk size), then [`pieces`].
///
/// Invariants: never panics (errors are fine and end the session); everything the
/// server writes is a valid chunk stream of parseable messages; media it relays
/// re-encodes to the same payload; no video frame is both keyframe and sequence header.
pub fn server_session(data: &[u8]) {
    let mut r = Reader::new(data);
    let ctl = r.u8();
    let raw_mode = ctl & 1 != 0;
    let chunk_size = [4096, 128, 1, 65_536][usize::from(ctl >> 5 & 3)];
    let limits = if ctl & 8 != 0 { small_limits() } else { DecoderLimits::default() };
    let config = SessionConfig { chunk_size, window_ack_size: 2_500_000, limits };
    let pieces = pieces(r.rest());

    let mut s = ServerSession::new(config);
    let mut peer =
        Peer { skip: SERVER_HANDSHAKE_LEN, dec: ChunkDecoder::new(open_limits()), buf: BytesMut::new() };
    if !raw_mode {
        let (mut client, c0c1) = Handshake::client().expect("client handshake");
        s.handle_input(&c0c1).expect("server refused a real C0+C1");
        let s012 = s.take_output().expect("S0+S1+S2");
        assert_eq!(s012.len(), SERVER_HANDSHAKE_LEN);
        peer.absorb(&s012);
        let mut c2 = BytesMut::new();
        let rest = client.process(&s012, &mut c2).expect("client accepts the server handshake");
        assert_eq!(rest.as_deref(), Some(&[][..]));
        s.handle_input(&c2).expect("server refused a real C2");
        assert!(s.handshake_done());
        assert!(s.take_output().is_none());
    }

    for piece in pieces {
        let res = s.handle_input(piece);
        while let Some(ev) = s.poll_event() {
            match ev {
                ServerEvent::PublishRequest { app, key, session_id, .. } => {
                    assert!(!app.is_empty() && !key.is_empty());
                    // The app's query (a token, as OBS sends it) is no part of the
                    // session ID: `live?x=1/2` + `seed` is `live/seed`.
                    let app_name = qrelay::url::without_query(&app).trim_end_matches('/');
                    assert!(
                        session_id.starts_with(&format!("{app_name}/")),
                        "{app:?} + {key:?} = {session_id:?}"
                    );
                    if ctl & 2 != 0 {
                        s.core().accept_publish();
                    } else {
                        s.core().reject_publish("NetStream.Publish.BadName", "fuzz");
                    }
                }
                ServerEvent::PlayRequest { app, key, .. } => {
                    assert!(!app.is_empty() && !key.is_empty());
                    if ctl & 4 != 0 {
                        s.core().accept_play();
                    } else {
                        s.core().reject_play("NetStream.Play.StreamNotFound", "fuzz");
                    }
                }
                ServerEvent::Media(frame) => {
                    if frame.kind() == MediaKind::Video {
                        assert!(!(frame.is_keyframe() && frame.is_sequence_header()));
                    }
                    let wire = s.media_bytes(&frame);
                    let mut dec = ChunkDecoder::new(open_limits());
                    dec.set_chunk_size(chunk_size).expect("open limits");
                    let m = dec
                        .decode(&mut BytesMut::from(&wire[..]))
                        .expect("media_bytes decodes")
                        .expect("media_bytes is one whole message");
                    assert_eq!(&m.payload, frame.payload());
                    assert_eq!(m.timestamp, frame.timestamp());
                    assert_eq!(m.type_id, frame.kind().type_id());
                }
                ServerEvent::Unpublish | ServerEvent::StopPlay => {}
            }
        }
        if ctl & 16 != 0 {
            s.core().play_ended();
        }
        while let Some(out) = s.take_output() {
            peer.absorb(&out);
        }
        if res.is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// amf0
// ---------------------------------------------------------------------------------------

/// `decode_all` on arbitrary bytes; whatever decodes must survive encode → decode.
///
/// Equality is checked on the re-encoded bytes (bitwise, so NaN payloads and -0.0 count)
/// and structurally when the values hold no NaN (`v == v`).
pub fn amf0(data: &[u8]) {
    let Ok(values) = amf0::decode_all(data) else {
        return;
    };
    let mut first = BytesMut::new();
    amf0::encode_all(&values, &mut first);
    let again = amf0::decode_all(&first).unwrap_or_else(|e| panic!("re-decoding our encoding: {e}"));
    assert_eq!(again.len(), values.len(), "value count");
    let mut second = BytesMut::new();
    amf0::encode_all(&again, &mut second);
    assert_eq!(first, second, "encoding is not stable");
    if nan_free(&values) {
        assert_eq!(again, values, "values changed by encode/decode");
    }
    for v in &values {
        let _ = (v.get("app"), v.as_str(), v.as_number());
    }
}

// ---------------------------------------------------------------------------------------
// flv
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct FlvRun {
    tags: Vec<FlvTag>,
    error: Option<flv::FlvError>,
}

fn read_flv(max: usize, pieces: &[&[u8]]) -> FlvRun {
    let mut reader = FlvReader::new(max);
    let mut run = FlvRun { tags: Vec::new(), error: None };
    for piece in pieces {
        reader.push(piece);
        loop {
            match reader.next_tag() {
                Ok(Some(tag)) => {
                    assert!(tag.payload.len() <= max, "tag over max_tag_size");
                    run.tags.push(tag);
                }
                Ok(None) => break,
                Err(e) => {
                    // Errors are final.
                    assert!(reader.next_tag().is_err_and(|again| again == e), "error is not sticky");
                    run.error = Some(e);
                    return run;
                }
            }
        }
    }
    run
}

/// `FlvReader` over arbitrary bytes in arbitrary pieces.
///
/// Input: a byte choosing `max_tag_size` (bit 0: 64 bytes, else 1 MiB), then [`pieces`].
///
/// Invariants: never panics; the pieces read the same as the whole (split invariance);
/// every tag re-written with `write_tag` (after `write_header`) reads back identical.
pub fn flv(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = if r.u8() & 1 != 0 { 64 } else { 1 << 20 };
    let pieces = pieces(r.rest());
    let split = read_flv(max, &pieces);
    let whole = pieces.concat();
    let joined = read_flv(max, &[&whole]);
    assert_eq!(split, joined, "reading depends on how the bytes were split");

    let mut file = BytesMut::new();
    flv::write_header(&mut file, true, true);
    for tag in &split.tags {
        flv::write_tag(&mut file, tag.kind, tag.timestamp, &tag.payload);
    }
    let back = read_flv(max, &[&file]);
    assert_eq!(back.error, None);
    assert_eq!(back.tags, split.tags, "write_tag then read");
}

// ---------------------------------------------------------------------------------------
// url
// ---------------------------------------------------------------------------------------

/// `StreamUrl::parse` on arbitrary text: whatever parses must print (Display) to a URL
/// that parses back to the same value, and printing is then stable.
pub fn url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = StreamUrl::parse(text) else {
        return;
    };
    let shown = parsed.to_string();
    let again = StreamUrl::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parsed to {parsed:?}, printed as {shown:?}, which fails: {e}"));
    assert_eq!(again, parsed, "{text:?} printed as {shown:?}");
    assert_eq!(again.to_string(), shown);
    assert_eq!(again.session_id(), parsed.session_id());
    let _ = parsed.tc_url();
}

// ---------------------------------------------------------------------------------------
// codec_inspect
// ---------------------------------------------------------------------------------------

const NOTHING: Inspection = Inspection { keyframe: false, sequence_header: false, tracks: TrackSet::DEFAULT };

/// `inspect_video` / `inspect_audio` on arbitrary payloads.
///
/// Invariants: never panics; keyframe and sequence header are never both set (video and
/// audio); an empty payload is nothing; once a prefix is classified, appending bytes does
/// not change the classification (inspection reads a header, and of E-RTMP multitrack
/// bodies only whole tracks: more bytes may add tracks to a sequence header, never take
/// any away); `Frame::new` reports the same.
pub fn codec_inspect(data: &[u8]) {
    for (kind, inspect) in [
        (MediaKind::Video, inspect_video as fn(&[u8]) -> Inspection),
        (MediaKind::Audio, inspect_audio as fn(&[u8]) -> Inspection),
    ] {
        let info = inspect(data);
        assert!(
            !(info.keyframe && info.sequence_header),
            "{kind:?} {data:02x?}: both keyframe and sequence header"
        );
        assert_eq!(inspect(&[]), NOTHING);
        for end in 0..data.len().min(64) {
            let prefix = inspect(&data[..end]);
            if prefix != NOTHING {
                assert_eq!(
                    (info.keyframe, info.sequence_header),
                    (prefix.keyframe, prefix.sequence_header),
                    "{kind:?} {data:02x?}: prefix of {end} bytes classified differently"
                );
                assert!(
                    prefix.tracks.is_subset_of(&info.tracks),
                    "{kind:?} {data:02x?}: prefix of {end} bytes has tracks the whole lacks"
                );
            }
        }
        let frame = Frame::new(kind, 0, Bytes::copy_from_slice(data));
        assert_eq!((frame.is_keyframe(), frame.is_sequence_header()), (info.keyframe, info.sequence_header));
    }
}

// ---------------------------------------------------------------------------------------
// message
// ---------------------------------------------------------------------------------------

/// `RtmpMessage::parse` on an arbitrary chunk-layer message: whatever parses must come
/// back from `to_message` equal (structurally when free of NaN, bitwise on the wire
/// always); control messages (types 1-6) re-encode to a prefix of what was parsed
/// (SetChunkSize with its reserved top bit cleared) and always travel on stream 0.
///
/// Input: type id, u16 csid, u32 timestamp, u32 stream id, then the payload.
pub fn message(data: &[u8]) {
    let mut r = Reader::new(data);
    let type_id = r.u8();
    let csid = u32::from(r.u16());
    let timestamp = r.u32();
    let stream_id = r.u32();
    let payload = Bytes::copy_from_slice(r.rest());
    let msg = Message { csid, timestamp, type_id, stream_id, payload };
    let Ok(parsed) = RtmpMessage::parse(&msg) else {
        return;
    };
    let wire = parsed.to_message(stream_id, timestamp);
    assert_eq!(wire.timestamp, timestamp);
    if wire.type_id <= 6 {
        assert_eq!(wire.stream_id, 0, "control message off stream 0");
    }
    let again = RtmpMessage::parse(&wire).unwrap_or_else(|e| panic!("{parsed:?} re-parse: {e}"));
    if nan_free(&parsed) {
        assert_eq!(again, parsed, "parse(to_message(m)) != m");
    }
    assert_eq!(again.to_message(stream_id, timestamp), wire, "to_message not stable");
    if (1..=6).contains(&type_id) {
        assert_eq!(wire.type_id, type_id);
        let mut want = msg.payload.slice(..wire.payload.len().min(msg.payload.len()));
        if type_id == 1 {
            let mut w = want.to_vec();
            w[0] &= 0x7F;
            want = Bytes::from(w);
        }
        assert_eq!(wire.payload, want, "control message re-encoded differently");
    }
    if let RtmpMessage::Media { payload, .. } = &parsed {
        let skip = usize::from(type_id == 15);
        assert_eq!(payload[..], msg.payload[skip..]);
    }
}

// ---------------------------------------------------------------------------------------
// RoQR
// ---------------------------------------------------------------------------------------

/// Payload limit of the RoQR targets: small, so the limit paths are reached.
const ROQR_MAX_PAYLOAD: u32 = 4096;

/// A RoQR stream's bytes, split into [`pieces`], into the frame decoder; the same bytes
/// as one datagram.
///
/// Invariants: never panics; piecewise decoding yields exactly the frames (or the error)
/// of decoding the whole at once; every decoded frame re-encodes to the bytes it came
/// from; a payload is never empty or over the limit; an incomplete frame consumes nothing.
pub fn roqr_frame(data: &[u8]) {
    use qrelay::rtmp::roqr::frame;
    let pieces = pieces(data);
    let whole: Vec<u8> = pieces.concat();

    let mut all = BytesMut::from(&whole[..]);
    let mut want = Vec::new();
    let want_err = loop {
        let before = all.clone();
        match frame::decode(&mut all, ROQR_MAX_PAYLOAD) {
            Ok(Some(f)) => {
                assert!(
                    !f.message.payload.is_empty() && f.message.payload.len() <= ROQR_MAX_PAYLOAD as usize
                );
                let mut re = BytesMut::new();
                frame::encode(f.flow, &f.message, &mut re);
                let used = before.len() - all.len();
                // The encoder uses the shortest varints; the input may not, so compare
                // by decoding the re-encoding instead of by bytes when lengths differ.
                if re.len() == used {
                    assert_eq!(&re[..], &before[..used], "re-encoding differs");
                }
                let again = frame::decode(&mut re, ROQR_MAX_PAYLOAD).expect("re-decoding").expect("whole");
                assert_eq!(again, f);
                want.push(f);
            }
            Ok(None) => {
                assert_eq!(all, before, "an incomplete frame consumed bytes");
                break None;
            }
            Err(e) => break Some(e),
        }
    };

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut got_err = None;
    'outer: for piece in &pieces {
        buf.extend_from_slice(piece);
        loop {
            match frame::decode(&mut buf, ROQR_MAX_PAYLOAD) {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(e) => {
                    got_err = Some(e);
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(got, want, "piecewise decoding differs from whole");
    assert_eq!(got_err, want_err);

    if let Ok(f) = frame::decode_datagram(Bytes::copy_from_slice(&whole), ROQR_MAX_PAYLOAD) {
        let mut re = BytesMut::new();
        frame::encode(f.flow, &f.message, &mut re);
        assert!(re.len() <= whole.len());
    }
}

/// A RoQR server session fed the frames decoded from arbitrary stream bytes, each from a
/// stream or a datagram (alternating by the frame's timestamp's low bit), with time
/// advancing; publish and play are accepted.
///
/// Invariants: never panics (errors end the session); media is held for reordering only
/// within its bound; what the session sends back decodes as RoQR frames of parseable
/// messages.
pub fn roqr_server_session(data: &[u8]) {
    use qrelay::rtmp::roqr::{frame, RoqrLimits, RoqrSession, Via};
    use qrelay::rtmp::session::ServerCore;
    use std::time::{Duration, Instant};

    let limits = RoqrLimits {
        max_payload: ROQR_MAX_PAYLOAD,
        unknown_flow_frames: 8,
        unknown_flow_bytes: 4096,
        ..RoqrLimits::default()
    };
    let mut s = RoqrSession::new(ServerCore::new(), limits);
    let mut buf = BytesMut::from(data);
    let start = Instant::now();
    let mut step = 0u64;
    loop {
        let f = match frame::decode(&mut buf, ROQR_MAX_PAYLOAD) {
            Ok(Some(f)) => f,
            _ => break,
        };
        step += 1;
        let now = start + Duration::from_millis(step * 7);
        let via = if f.message.timestamp & 1 == 0 { Via::Stream } else { Via::Datagram };
        let res = s.handle_frame(f, via, now);
        let res = res.and_then(|_| s.handle_timeout(now + Duration::from_millis(step % 500)));
        while let Some(ev) = s.core().poll_event() {
            match ev {
                ServerEvent::PublishRequest { .. } => s.core().accept_publish(),
                ServerEvent::PlayRequest { .. } => s.core().accept_play(),
                _ => {}
            }
        }
        assert!(s.held() <= 1025, "{} media messages held", s.held());
        if let Some(out) = s.take_output() {
            let mut out = BytesMut::from(&out[..]);
            while let Some(f) = frame::decode(&mut out, u32::MAX).expect("our own frames decode") {
                assert_eq!(f.flow, 0);
                RtmpMessage::parse(&f.message).expect("our own messages parse");
            }
            assert!(out.is_empty(), "a partial frame in the output");
        }
        if res.is_err() {
            break;
        }
    }
}

/// The client session (what relays and `qrelay play` run against other servers) after a
/// real handshake, fed arbitrary server bytes split into [`pieces`]; the first byte picks
/// publish or play.
///
/// Invariants: never panics (errors end the session); what it writes is a valid chunk
/// stream of parseable messages.
pub fn client_session(data: &[u8]) {
    use qrelay::rtmp::session::{ClientMode, ClientSession};
    let mut r = Reader::new(data);
    let mode = if r.u8() & 1 == 0 { ClientMode::Play } else { ClientMode::Publish };
    let pieces = pieces(r.rest());
    let mut c = ClientSession::new(SessionConfig::default(), mode, "live", "fuzz", "rtmp://h/live")
        .expect("client session");
    // Complete the handshake against a real server handshake.
    let mut server = Handshake::server();
    let c0c1 = c.take_output().expect("C0+C1");
    let mut s012 = BytesMut::new();
    server.process(&c0c1, &mut s012).expect("server handshake");
    c.handle_input(&s012).expect("client accepts S0+S1+S2");
    let mut peer =
        Peer { skip: C0_C1_LEN + 1536, dec: ChunkDecoder::new(open_limits()), buf: BytesMut::new() };
    peer.absorb(&c0c1);
    for piece in pieces {
        let res = c.handle_input(piece);
        while c.poll_event().is_some() {}
        if c.is_publishing() {
            c.send_media(MediaKind::Audio, 0, Bytes::from_static(&[0xaf, 1, 0]));
        }
        while let Some(out) = c.take_output() {
            peer.absorb(&out);
        }
        if res.is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// http_request
// ---------------------------------------------------------------------------------------

/// `http::parse_head` on arbitrary bytes: what every peer of the TCP port's HTTP side
/// reaches first.
///
/// Invariants: never panics; a complete head took at most the input and at most
/// `MAX_HEAD_BYTES`, has a path starting with `/` and at most `MAX_HEADERS` headers, and
/// parses the same from exactly its own bytes; every shorter prefix of it is incomplete
/// (never a different head), so reading a head in pieces finds the same one; an input
/// past the cap is never still incomplete.
pub fn http_request(data: &[u8]) {
    use qrelay::http::{parse_head, MAX_HEADERS, MAX_HEAD_BYTES};
    match parse_head(data) {
        Ok(Some((head, len))) => {
            assert!(len <= data.len() && len <= MAX_HEAD_BYTES, "took {len} of {} bytes", data.len());
            assert!(head.path.starts_with('/'), "path {:?}", head.path);
            assert!(head.headers.len() <= MAX_HEADERS);
            assert!(head.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
            // The stream a player's path names (HTTP-FLV, the page, WebTransport).
            let stream = head.path.trim_start_matches('/').trim_end_matches(".flv");
            if let Ok((app, key)) = qrelay::http::split_stream(stream) {
                assert_eq!(format!("{app}/{key}"), stream, "the split loses or adds bytes");
                assert!(!key.is_empty() && !key.contains('/'), "key {key:?}");
                assert!(app.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "app {app:?}");
            }
            let again = parse_head(&data[..len]);
            assert_eq!(again, Ok(Some((head.clone(), len))), "the head's own bytes parse otherwise");
            for cut in [len / 2, len.saturating_sub(1)] {
                if cut < len {
                    assert!(
                        !matches!(parse_head(&data[..cut]), Ok(Some(_))),
                        "a prefix of {cut} bytes of a {len}-byte head is complete"
                    );
                }
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEAD_BYTES, "{} bytes still incomplete", data.len()),
        Err(e) => {
            let (status, _) = e.status();
            assert!(status == 400 || status == 431, "{e}: status {status}");
        }
    }
}
