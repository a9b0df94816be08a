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
    /// When this process got the frame: a sender's latency budget counts from then.
    received: tokio::time::Instant,
    /// Wire bytes for the one outbound chunk size most subscribers use, built by the first
    /// subscriber that needs them and shared by all the others (DESIGN §3 "serialize once").
    encoded: OnceLock<((u32, u32), Bytes)>,
    /// The RoQR frame header for one message stream id (players' media goes on 1), shared
    /// by every RoQR player as `encoded` is by chunk players.
    roqr_header: OnceLock<(u32, Bytes)>,
    /// The frame as one FLV tag (with its PreviousTagSize), shared by every HTTP-FLV
    /// player and recorder: the same bytes for all of them.
    flv_tag: OnceLock<Bytes>,
    /// The WebTransport frame header, shared by every WebTransport player (it carries
    /// the ingest time, so every player also gets the same one).
    webtransport_header: OnceLock<Bytes>,
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
            received: tokio::time::Instant::now(),
            encoded: OnceLock::new(),
            roqr_header: OnceLock::new(),
            flv_tag: OnceLock::new(),
            webtransport_header: OnceLock::new(),
        }))
    }

    /// When this process got the frame (ingest, or arrival from an upstream relay).
    pub fn received(&self) -> tokio::time::Instant {
        self.0.received
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
    /// The frame as an FLV tag plus its PreviousTagSize, made once per frame.
    pub fn flv_tag(&self) -> Bytes {
        self.0
            .flv_tag
            .get_or_init(|| {
                let mut out = bytes::BytesMut::new();
                super::flv::write_tag(&mut out, self.kind(), self.timestamp(), self.payload());
                out.freeze()
            })
            .clone()
    }

    /// The WebTransport frame header, made by `encode` at most once per frame.
    pub fn webtransport_header(&self, encode: impl FnOnce() -> Bytes) -> Bytes {
        self.0.webtransport_header.get_or_init(encode).clone()
    }

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

/// A codec's name for people and dashboards, from a sequence header (or, for audio
/// formats without one, any frame): RFC 6381 style where the header says enough
/// (`avc1.64001f`, `mp4a.40.2`), else the E-RTMP FourCC (`hvc1`, `av01`, `Opus`) or the
/// legacy format's name. `None` for payloads that name no codec (cut short, data).
pub fn codec_name(kind: MediaKind, payload: &[u8]) -> Option<String> {
    let (&first, rest) = payload.split_first()?;
    match kind {
        MediaKind::Video if first & VIDEO_EX_HEADER != 0 => {
            ex_fourcc(first & 0x0F, VIDEO_MODEX, VIDEO_MULTITRACK, rest)
        }
        MediaKind::Video => match first & 0x0F {
            // AVCDecoderConfigurationRecord after packet type and composition time:
            // version, profile, compatibility, level.
            CODEC_AVC => match rest {
                [AVC_SEQUENCE_HEADER, _, _, _, 1, profile, compat, level, ..] => {
                    Some(format!("avc1.{profile:02x}{compat:02x}{level:02x}"))
                }
                _ => Some("avc1".into()),
            },
            CODEC_HEVC_LEGACY => Some("hvc1".into()),
            2 => Some("h263".into()),
            3 => Some("screen".into()),
            4 | 5 => Some("vp6".into()),
            6 => Some("screen2".into()),
            _ => None,
        },
        MediaKind::Audio => match first >> 4 {
            SOUND_EX_HEADER => ex_fourcc(first & 0x0F, AUDIO_MODEX, AUDIO_MULTITRACK, rest),
            // AudioSpecificConfig: the audio object type is its first five bits.
            SOUND_AAC => match rest {
                [AAC_SEQUENCE_HEADER, asc, ..] => Some(format!("mp4a.40.{}", asc >> 3)),
                _ => None,
            },
            0 | 3 => Some("pcm".into()),
            1 => Some("adpcm".into()),
            2 | 14 => Some("mp3".into()),
            4..=6 => Some("nellymoser".into()),
            7 => Some("alaw".into()),
            8 => Some("ulaw".into()),
            11 => Some("speex".into()),
            _ => None,
        },
        MediaKind::Data => None,
    }
}

/// The FourCC of an E-RTMP header (the first track's, for multitrack), when printable.
fn ex_fourcc(packet_type: u8, modex: u8, multitrack: u8, rest: &[u8]) -> Option<String> {
    let (packet_type, rest) = skip_modex(packet_type, modex, rest)?;
    let fourcc = if packet_type == multitrack {
        // Multitrack type byte, then the FourCC (in every layout, first or per track).
        split_at(rest.get(1..)?, 4)?.0
    } else {
        split_at(rest, 4)?.0
    };
    let text = std::str::from_utf8(fourcc).ok()?;
    text.chars().all(|c| c.is_ascii_graphic() || c == ' ').then(|| text.trim_end().to_owned())
}

/// `slice.split_at(n)` without the panic.
fn split_at(slice: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (slice.len() >= n).then(|| slice.split_at(n))
}

#[cfg(test)]
mod tests;
