//! The WebTransport media mapping, sans-IO: how a frame is written (its header) and which
//! stream it goes on. Browser players are written against exactly this; it does not
//! change without a new path or ALPN.
//!
//! Every frame on every stream is a 17-byte header and the RTMP message payload, byte for
//! byte:
//!
//! ```text
//! [u8 kind: 8 audio, 9 video, 18 data][u32 BE timestamp ms][u64 BE relay ingest, unix ms]
//! [u32 BE payload length][payload]
//! ```
//!
//! Streams, all opened by the relay, unidirectional:
//! - **config**, opened first, highest priority: every data frame (metadata) and every
//!   sequence header, in order, so a player always has the configuration before the
//!   media that needs it and never loses it to a cancelled stream;
//! - **audio**, one for the session, above video: every other audio frame; never cut;
//! - **a GOP stream per video GOP**, opened at each keyframe, each newer one above the
//!   older ones: the GOP's other video frames. A GOP whose frames run later than the
//!   latency budget is reset and its remaining frames are skipped up to the next keyframe,
//!   which opens a new stream: what a player gets of a GOP is always a decodable prefix.

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::frame::MediaKind;

/// Length of a frame header.
pub const HEADER_LEN: usize = 17;

/// A frame header as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Audio, video or data (RTMP message types 8, 9, 18).
    pub kind: MediaKind,
    /// The RTMP timestamp, in milliseconds.
    pub timestamp: u32,
    /// When the relay got the frame (ingest or arrival from an upstream relay), in
    /// milliseconds since the Unix epoch: a player measures its latency against it.
    pub ingest_unix_ms: u64,
    /// Payload bytes that follow.
    pub len: u32,
}

impl FrameHeader {
    /// The 17 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind.type_id();
        out[1..5].copy_from_slice(&self.timestamp.to_be_bytes());
        out[5..13].copy_from_slice(&self.ingest_unix_ms.to_be_bytes());
        out[13..17].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The header at the start of `buf`: `Ok(None)` while fewer than [`HEADER_LEN`] bytes
    /// are there.
    pub fn decode(buf: &[u8]) -> Result<Option<FrameHeader>, UnknownKind> {
        let Some(h) = buf.get(..HEADER_LEN) else { return Ok(None) };
        let kind = MediaKind::from_type_id(h[0]).ok_or(UnknownKind(h[0]))?;
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut ingest = [0u8; 8];
        ingest.copy_from_slice(&h[5..13]);
        Ok(Some(FrameHeader {
            kind,
            timestamp: u32_at(1),
            ingest_unix_ms: u64::from_be_bytes(ingest),
            len: u32_at(13),
        }))
    }

    /// The header as shared bytes, to write before the payload.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN);
        out.put_slice(&self.encode());
        out.freeze()
    }
}

/// A kind byte that is not 8, 9 or 18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown frame kind {0}")]
pub struct UnknownKind(pub u8);

/// Where one frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The config stream.
    Config,
    /// The audio stream.
    Audio,
    /// A new GOP stream, opened for this keyframe (the previous one ends).
    NewGop,
    /// The current GOP stream.
    Gop,
    /// Nowhere: video with no GOP to belong to (before the first keyframe, or after its
    /// GOP was cut).
    Skip,
}

/// What the mapping needs to know of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFacts {
    /// Audio, video or data.
    pub kind: MediaKind,
    /// A video frame decoding can start at.
    pub keyframe: bool,
    /// Codec configuration.
    pub sequence_header: bool,
    /// Later than the latency budget allows.
    pub late: bool,
}

/// Which stream each frame goes on, frame after frame; the cuts of late GOPs.
#[derive(Debug, Default)]
pub struct Mapper {
    /// A GOP stream is open for the current GOP.
    in_gop: bool,
}

impl Mapper {
    /// The target of the next frame. A late video frame cuts its GOP: [`Target::Skip`]
    /// and the caller resets the current GOP stream ([`Mapper::in_gop`] says whether
    /// there is one to reset, before the call); the rest of the GOP is skipped.
    pub fn route(&mut self, f: FrameFacts) -> Target {
        match f.kind {
            MediaKind::Data => Target::Config,
            _ if f.sequence_header => Target::Config,
            MediaKind::Audio => Target::Audio,
            MediaKind::Video if f.late => {
                // A late keyframe too: its GOP would only get later behind it.
                self.in_gop = false;
                Target::Skip
            }
            MediaKind::Video if f.keyframe => {
                self.in_gop = true;
                Target::NewGop
            }
            MediaKind::Video if self.in_gop => Target::Gop,
            MediaKind::Video => Target::Skip,
        }
    }

    /// Whether a GOP stream is current.
    pub fn in_gop(&self) -> bool {
        self.in_gop
    }

    /// The current GOP could not be written in time: skip to the next keyframe.
    pub fn cut(&mut self) {
        self.in_gop = false;
    }
}

/// Stream priorities (higher goes first in quinn): the configuration, then audio, then
/// the GOP streams, each newer one above the older ones.
pub mod priority {
    /// The config stream.
    pub const CONFIG: i32 = i32::MAX;
    /// The audio stream.
    pub const AUDIO: i32 = i32::MAX - 1;
    /// The first GOP stream; each later one is one higher.
    pub const FIRST_GOP: i32 = 0;
    /// Never reached in practice (2^31 GOPs); GOPs stay below audio.
    pub const LAST_GOP: i32 = AUDIO - 1;

    /// The priority of the GOP after one at `current`.
    pub fn next_gop(current: i32) -> i32 {
        current.saturating_add(1).min(LAST_GOP)
    }
}

/// `/{app}/{key}` (and the URL's query) as the app and the key, split at the last `/`
/// as RTMP's URLs are (`/a/b/key` is app `a/b`); the query goes with the key, as RTMP's
/// `key?token=` does, so tokens and hooks see the same request. Paths are compared byte
/// for byte: no percent-decoding. Empty, `.` and `..` segments and control characters
/// are refused.
pub fn stream_of(path: &str, query: Option<&str>) -> Result<(String, String), &'static str> {
    let stream = path.strip_prefix('/').ok_or("the path must start with /")?;
    let (app, key) = crate::http::split_stream(stream)?;
    let key = match query {
        Some(q) if !q.is_empty() => format!("{key}?{q}"),
        _ => key.to_owned(),
    };
    Ok((app.to_owned(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_17_bytes_big_endian_and_decodes_back() {
        let h = FrameHeader {
            kind: MediaKind::Video,
            timestamp: 0x0102_0304,
            ingest_unix_ms: 0x0506_0708_090a_0b0c,
            len: 0x0d0e_0f10,
        };
        let wire = h.encode();
        assert_eq!(wire, [9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(FrameHeader::decode(&wire), Ok(Some(h)));
        assert_eq!(&h.to_bytes()[..], &wire[..]);
        assert_eq!(FrameHeader::decode(&wire[..16]), Ok(None));
        let mut bad = wire;
        bad[0] = 20;
        assert_eq!(FrameHeader::decode(&bad), Err(UnknownKind(20)));
        for (kind, byte) in [(MediaKind::Audio, 8), (MediaKind::Data, 18)] {
            assert_eq!(FrameHeader { kind, ..h }.encode()[0], byte);
        }
    }

    fn facts(kind: MediaKind, keyframe: bool, sequence_header: bool) -> FrameFacts {
        FrameFacts { kind, keyframe, sequence_header, late: false }
    }

    #[test]
    fn configuration_audio_and_gops_go_on_their_streams() {
        use MediaKind::*;
        let mut m = Mapper::default();
        let seq = [
            (facts(Data, false, false), Target::Config),
            (facts(Video, true, true), Target::Config),
            (facts(Audio, false, true), Target::Config),
            (facts(Audio, false, false), Target::Audio),
            // Video before any keyframe has nothing to decode from.
            (facts(Video, false, false), Target::Skip),
            (facts(Video, true, false), Target::NewGop),
            (facts(Video, false, false), Target::Gop),
            (facts(Audio, false, false), Target::Audio),
            (facts(Video, true, false), Target::NewGop),
            (facts(Data, false, false), Target::Config),
            (facts(Video, false, false), Target::Gop),
        ];
        for (i, (f, want)) in seq.into_iter().enumerate() {
            assert_eq!(m.route(f), want, "frame {i}: {f:?}");
        }
    }

    #[test]
    fn a_late_gop_is_skipped_to_the_next_keyframe_and_audio_is_never_cut() {
        use MediaKind::*;
        let mut m = Mapper::default();
        assert_eq!(m.route(facts(Video, true, false)), Target::NewGop);
        assert_eq!(m.route(facts(Video, false, false)), Target::Gop);
        assert!(m.in_gop());
        let late = |kind, keyframe| FrameFacts { late: true, ..facts(kind, keyframe, false) };
        assert_eq!(m.route(late(Video, false)), Target::Skip);
        assert!(!m.in_gop(), "the GOP is cut");
        // The rest of the GOP is skipped even once frames are in time again.
        assert_eq!(m.route(facts(Video, false, false)), Target::Skip);
        assert_eq!(m.route(late(Audio, false)), Target::Audio);
        assert_eq!(m.route(FrameFacts { late: true, ..facts(Video, true, true) }), Target::Config);
        assert_eq!(m.route(late(Video, true)), Target::Skip);
        assert_eq!(m.route(facts(Video, true, false)), Target::NewGop);
        assert_eq!(m.route(facts(Video, false, false)), Target::Gop);
        m.cut();
        assert_eq!(m.route(facts(Video, false, false)), Target::Skip);
    }

    #[test]
    fn gop_priorities_rise_and_stay_below_audio() {
        const { assert!(priority::CONFIG > priority::AUDIO) };
        assert_eq!(priority::next_gop(priority::FIRST_GOP), priority::FIRST_GOP + 1);
        assert_eq!(priority::next_gop(priority::LAST_GOP), priority::LAST_GOP);
        assert!(priority::next_gop(priority::LAST_GOP) < priority::AUDIO);
    }

    #[test]
    fn paths_split_like_rtmp_urls() {
        let ok = |p, q| stream_of(p, q).unwrap();
        assert_eq!(ok("/live/cam1", None), ("live".into(), "cam1".into()));
        assert_eq!(ok("/a/b/cam", Some("token=x&y=1")), ("a/b".into(), "cam?token=x&y=1".into()));
        assert_eq!(ok("/live/cam", Some("")), ("live".into(), "cam".into()));
        for bad in
            ["/", "/cam", "/live/", "//cam", "/live//cam", "/../cam", "/live/..", "live/cam", "/a/\u{7f}"]
        {
            assert!(stream_of(bad, None).is_err(), "{bad}");
        }
    }
}
