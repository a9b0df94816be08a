//! Media frames as the hub sees them: an opaque payload plus the few facts the hub must
//! know (kind, timestamp, keyframe, sequence header). Codec inspection for legacy FLV
//! (AVC/AAC) and Enhanced RTMP lives here and nowhere else.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// What an RTMP media message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// RTMP message type 8.
    Audio,
    /// RTMP message type 9.
    Video,
    /// RTMP message type 18 (AMF0 data, e.g. `@setDataFrame`/`onMetaData`).
    Data,
}

impl MediaKind {
    /// RTMP message type id of this kind.
    pub fn type_id(self) -> u8 {
        match self {
            MediaKind::Audio => 8,
            MediaKind::Video => 9,
            MediaKind::Data => 18,
        }
    }

    /// Kind for an RTMP message type id, if it is a media type.
    pub fn from_type_id(type_id: u8) -> Option<Self> {
        match type_id {
            8 => Some(MediaKind::Audio),
            9 => Some(MediaKind::Video),
            18 => Some(MediaKind::Data),
            _ => None,
        }
    }
}

/// One media message, parsed once at ingest and shared by reference with every subscriber.
/// Cloning is a reference-count increment.
#[derive(Debug, Clone)]
pub struct Frame(Arc<FrameInner>);

#[derive(Debug)]
struct FrameInner {
    kind: MediaKind,
    timestamp: u32,
    payload: Bytes,
    info: Inspection,
    /// Wire bytes for the one outbound chunk size most subscribers use, built by the first
    /// subscriber that needs them and shared by all the others (DESIGN §3 "serialize once").
    encoded: OnceLock<((u32, u32), Bytes)>,
    /// The RoQR frame header for one message stream id (players' media goes on 1), shared
    /// by every RoQR player as `encoded` is by chunk players.
    roqr_header: OnceLock<(u32, Bytes)>,
}

impl Frame {
    /// Wraps a payload, inspecting it once.
    pub fn new(kind: MediaKind, timestamp: u32, payload: Bytes) -> Self {
        let info = match kind {
            MediaKind::Video => inspect_video(&payload),
            MediaKind::Audio => inspect_audio(&payload),
            MediaKind::Data => Inspection::default(),
        };
        Frame(Arc::new(FrameInner {
            kind,
            timestamp,
            payload,
            info,
            encoded: OnceLock::new(),
            roqr_header: OnceLock::new(),
        }))
    }

    /// Audio, video or data.
    pub fn kind(&self) -> MediaKind {
        self.0.kind
    }

    /// RTMP timestamp in milliseconds, as the publisher sent it.
    pub fn timestamp(&self) -> u32 {
        self.0.timestamp
    }

    /// The payload, byte for byte as received.
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    /// A video frame decoding can start at.
    pub fn is_keyframe(&self) -> bool {
        self.0.info.keyframe
    }

    /// A codec configuration record.
    pub fn is_sequence_header(&self) -> bool {
        self.0.info.sequence_header
    }

    /// The tracks a sequence header configures (track 0 alone for all but E-RTMP
    /// multitrack messages): a header replaces an earlier one only for these.
    pub fn tracks(&self) -> TrackSet {
        self.0.info.tracks
    }

    /// Wire bytes for one `(chunk size, message stream id)` pair, encoded by `encode` at
    /// most once per frame for the first pair asked for; other pairs are encoded per call.
    pub fn encoded(&self, key: (u32, u32), encode: impl Fn() -> Bytes) -> Bytes {
        let (cached, bytes) = self.0.encoded.get_or_init(|| (key, encode()));
        if *cached == key {
            bytes.clone()
        } else {
            // Rare: a subscriber with a different chunk size. Correct, just not shared.
            encode()
        }
    }
}

impl Frame {
    /// The RoQR frame header for message stream `stream_id`, made by `encode` at most once
    /// per frame for the first stream id asked for.
    pub fn roqr_header(&self, stream_id: u32, encode: impl Fn() -> Bytes) -> Bytes {
        let (cached, bytes) = self.0.roqr_header.get_or_init(|| (stream_id, encode()));
        if *cached == stream_id {
            bytes.clone()
        } else {
            encode()
        }
    }
}

/// What inspection of a payload's tag header found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inspection {
    /// A video frame that decoding can start at (legacy frame type 1, E-RTMP FrameType 1).
    /// For E-RTMP multitrack, only a keyframe of track 0 (the default track, as the spec
    /// recommends) counts: the GOP cache and a lagging player's skip restart there, and a
    /// keyframe of another track alone would leave the default track undecodable.
    pub keyframe: bool,
    /// A codec configuration record (AVC/HEVC/AV1/VP9 decoder config, AAC AudioSpecificConfig,
    /// E-RTMP SequenceStart), which every late joiner needs before media.
    pub sequence_header: bool,
    /// The E-RTMP tracks a sequence header configures; [`TrackSet::DEFAULT`] otherwise.
    pub tracks: TrackSet,
}

/// A set of E-RTMP track ids (0..=255).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackSet([u64; 4]);

impl TrackSet {
    /// Track 0 alone: every message that is not E-RTMP multitrack.
    pub const DEFAULT: TrackSet = TrackSet([1, 0, 0, 0]);
    const EMPTY: TrackSet = TrackSet([0; 4]);

    fn insert(&mut self, id: u8) {
        self.0[usize::from(id / 64)] |= 1 << (id % 64);
    }

    /// Whether track `id` is in the set.
    pub fn contains(&self, id: u8) -> bool {
        self.0[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }

    /// Whether every track of `self` is also in `other`.
    pub fn is_subset_of(&self, other: &TrackSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

impl Default for TrackSet {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// Legacy FLV video tag header (FLV spec v10.1, VIDEODATA).
const FRAME_KEY: u8 = 1;
const FRAME_COMMAND: u8 = 5;
const CODEC_AVC: u8 = 7;
/// Not in the FLV spec: the de-facto HEVC-in-FLV extension of Chinese CDNs and SRS,
/// whose packet header is laid out like AVC's.
const CODEC_HEVC_LEGACY: u8 = 12;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;

// Enhanced RTMP v2 ExVideoTagHeader.
const VIDEO_EX_HEADER: u8 = 0x80;
const VIDEO_SEQUENCE_START: u8 = 0;
const VIDEO_CODED_FRAMES: u8 = 1;
const VIDEO_CODED_FRAMES_X: u8 = 3;
const VIDEO_METADATA: u8 = 4;
const VIDEO_MPEG2TS_SEQUENCE_START: u8 = 5;
const VIDEO_MULTITRACK: u8 = 6;
const VIDEO_MODEX: u8 = 7;

// Legacy FLV audio tag header and Enhanced RTMP v2 ExAudioTagHeader.
const SOUND_EX_HEADER: u8 = 9;
const SOUND_AAC: u8 = 10;
const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;
const AUDIO_SEQUENCE_START: u8 = 0;
const AUDIO_CODED_FRAMES: u8 = 1;
const AUDIO_MULTITRACK: u8 = 5;
/// The spec reserves 6 and uses 7 for audio ModEx, as for video.
const AUDIO_MODEX: u8 = 7;

/// AvMultitrackType whose tracks each carry their own FourCC, so none follows the
/// multitrack byte.
const MANY_TRACKS_MANY_CODECS: u8 = 2;
/// AvMultitrackType of a single track (FourCC, track id, then its data to the end).
const ONE_TRACK: u8 = 0;
/// AvMultitrackType of several tracks of one codec: one FourCC, then per track its id,
/// a UI24 size and that many bytes.
const MANY_TRACKS: u8 = 1;

const NOTHING: Inspection = Inspection { keyframe: false, sequence_header: false, tracks: TrackSet::DEFAULT };
const KEYFRAME: Inspection = Inspection { keyframe: true, sequence_header: false, tracks: TrackSet::DEFAULT };
const SEQUENCE_HEADER: Inspection =
    Inspection { keyframe: false, sequence_header: true, tracks: TrackSet::DEFAULT };

/// Inspects an FLV/RTMP video payload. Never panics; short or unknown payloads are
/// neither keyframes nor sequence headers.
///
/// A sequence header is never also reported as a keyframe even though its tag says
/// frame type 1: the hub keeps headers apart from the GOP, and a GOP must start at a
/// picture.
pub fn inspect_video(payload: &[u8]) -> Inspection {
    let Some((&first, rest)) = payload.split_first() else {
        return NOTHING;
    };
    if first & VIDEO_EX_HEADER != 0 {
        return inspect_ex_video(first, rest);
    }
    let frame_type = first >> 4;
    match first & 0x0F {
        CODEC_AVC | CODEC_HEVC_LEGACY => {
            // A command frame's second byte is a command, not an AVCPacketType.
            if !(FRAME_KEY..FRAME_COMMAND).contains(&frame_type) {
                return NOTHING;
            }
            match rest.first() {
                Some(&AVC_SEQUENCE_HEADER) => SEQUENCE_HEADER,
                Some(&AVC_NALU) if frame_type == FRAME_KEY => KEYFRAME,
                _ => NOTHING,
            }
        }
        // Older codecs (H.263, VP6, screen video) have no configuration record.
        _ if frame_type == FRAME_KEY && !rest.is_empty() => KEYFRAME,
        _ => NOTHING,
    }
}

/// E-RTMP video: `rest` is everything after the first byte.
fn inspect_ex_video(first: u8, rest: &[u8]) -> Inspection {
    let frame_type = (first >> 4) & 0x07;
    let Some((packet_type, rest)) = skip_modex(first & 0x0F, VIDEO_MODEX, rest) else {
        return NOTHING;
    };
    if frame_type == FRAME_COMMAND && packet_type != VIDEO_METADATA {
        return NOTHING;
    }
    let Some((packet_type, tracks)) = codec_packet_type(packet_type, VIDEO_MULTITRACK, rest) else {
        return NOTHING;
    };
    match packet_type {
        VIDEO_SEQUENCE_START | VIDEO_MPEG2TS_SEQUENCE_START => Inspection { tracks, ..SEQUENCE_HEADER },
        VIDEO_CODED_FRAMES | VIDEO_CODED_FRAMES_X if frame_type == FRAME_KEY && tracks.contains(0) => {
            KEYFRAME
        }
        _ => NOTHING,
    }
}

/// Inspects an FLV/RTMP audio payload. Never panics.
///
/// Every coded audio frame counts as a keyframe: audio frames decode independently for
/// the hub's purposes (skipping to one is always safe).
pub fn inspect_audio(payload: &[u8]) -> Inspection {
    let Some((&first, rest)) = payload.split_first() else {
        return NOTHING;
    };
    match first >> 4 {
        SOUND_EX_HEADER => inspect_ex_audio(first, rest),
        SOUND_AAC => match rest.first() {
            Some(&AAC_SEQUENCE_HEADER) => SEQUENCE_HEADER,
            Some(&AAC_RAW) => KEYFRAME,
            _ => NOTHING,
        },
        _ if !rest.is_empty() => KEYFRAME,
        _ => NOTHING,
    }
}

/// E-RTMP audio: `rest` is everything after the first byte.
fn inspect_ex_audio(first: u8, rest: &[u8]) -> Inspection {
    let Some((packet_type, rest)) = skip_modex(first & 0x0F, AUDIO_MODEX, rest) else {
        return NOTHING;
    };
    // Audio frames of any track decode on their own, so all are "keyframes".
    match codec_packet_type(packet_type, AUDIO_MULTITRACK, rest) {
        Some((AUDIO_SEQUENCE_START, tracks)) => Inspection { tracks, ..SEQUENCE_HEADER },
        Some((AUDIO_CODED_FRAMES, _)) => KEYFRAME,
        _ => NOTHING,
    }
}

/// Skips any ModEx blocks (E-RTMP v2): each is a size (UI8 + 1, or UI16 + 1 when the
/// UI8 says 256), that many bytes of modifier data, then a byte whose low nibble is the
/// next packet type. Returns the first packet type that is not ModEx and what follows
/// it, or `None` when the payload ends inside a block.
fn skip_modex(mut packet_type: u8, modex: u8, mut rest: &[u8]) -> Option<(u8, &[u8])> {
    // Terminates: every block consumes at least three bytes.
    while packet_type == modex {
        let (&size, after) = rest.split_first()?;
        let (size, after) = match usize::from(size) + 1 {
            256 => match after {
                [hi, lo, after @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])) + 1, after),
                _ => return None,
            },
            size => (size, after),
        };
        let (_data, after) = split_at(after, size)?;
        let (&next, after) = after.split_first()?;
        packet_type = next & 0x0F;
        rest = after;
    }
    Some((packet_type, rest))
}

/// The packet type that classifies the payload, after checking the FourCC is present,
/// and the tracks the payload carries. For Multitrack, the inner packet type (shared by
/// all tracks) and every track id in it: each track of the message is walked, so a
/// message for tracks 1 and 2 is not taken for one about the default track. A track cut
/// short ends the walk uncounted, so more bytes only ever add tracks (a prefix never
/// claims more than the whole). `None` when the header is cut short or malformed, or a
/// multitrack message carries no whole track.
fn codec_packet_type(packet_type: u8, multitrack: u8, rest: &[u8]) -> Option<(u8, TrackSet)> {
    if packet_type != multitrack {
        split_at(rest, 4)?;
        return Some((packet_type, TrackSet::DEFAULT));
    }
    let (&byte, mut rest) = rest.split_first()?;
    let (layout, inner) = (byte >> 4, byte & 0x0F);
    let mut tracks = TrackSet::EMPTY;
    match layout {
        ONE_TRACK => {
            let (_fourcc, after) = split_at(rest, 4)?;
            tracks.insert(*after.first()?);
        }
        MANY_TRACKS | MANY_TRACKS_MANY_CODECS => {
            if layout == MANY_TRACKS {
                rest = split_at(rest, 4)?.1;
            }
            while let Some((id, after)) = next_track(layout, rest) {
                tracks.insert(id);
                rest = after;
            }
        }
        _ => return None,
    }
    if tracks == TrackSet::EMPTY {
        return None;
    }
    // A nested Multitrack or ModEx (which the spec does not define) classifies as
    // nothing further down.
    Some((inner, tracks))
}

/// One whole track of a ManyTracks (`[id, u24 size, data]`) or ManyTracksManyCodecs
/// (`[FourCC, id, u24 size, data]`) message: its id and what follows it.
fn next_track(layout: u8, rest: &[u8]) -> Option<(u8, &[u8])> {
    let rest = if layout == MANY_TRACKS_MANY_CODECS { split_at(rest, 4)?.1 } else { rest };
    let (&id, after) = rest.split_first()?;
    let (size, after) = split_at(after, 3)?;
    let size = usize::from(size[0]) << 16 | usize::from(size[1]) << 8 | usize::from(size[2]);
    Some((id, split_at(after, size)?.1))
}

/// `slice.split_at(n)` without the panic.
fn split_at(slice: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (slice.len() >= n).then(|| slice.split_at(n))
}

#[cfg(test)]
mod tests {
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
            (
                MANY_TRACKS_MANY_CODECS,
                &[(b"avc1", 3, &[1]), (b"hvc1", 7, &[2])],
                header(set(&[3, 7])),
                NOTHING,
            ),
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
                let cut = inspect_video(
                    &multitrack_video(1, VIDEO_SEQUENCE_START, layout, tracks)[..tag.len() - 1],
                );
                let first = set(&[tracks[0].1]);
                assert_eq!(cut, header(first), "{layout} {tracks:?} cut");
            }
        }
        // Unknown layouts are refused.
        assert_eq!(
            inspect_video(&multitrack_video(1, VIDEO_CODED_FRAMES, 3, &[(b"hvc1", 0, &[1])])),
            NOTHING
        );
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
        let into_multitrack =
            [key_modex, 0, 0, VIDEO_MULTITRACK, VIDEO_CODED_FRAMES, b'h', b'v', b'c', b'1', 0];
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
}
