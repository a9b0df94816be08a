//! The one synthetic stream generator, shared by the load generator, the end-to-end and
//! hostile tests and the criterion benches: numbered H.264 video (plus AAC audio) that any
//! RTMP server accepts and any decoder decodes, each video frame carrying its number and
//! send time so a player measures relay latency, detects lost frames and checks every
//! byte it got.
//!
//! A video payload is a legacy FLV AVC tag: the 5-byte header (`0x17` keyframe or `0x27`
//! inter frame, AVC NALU, composition time 0), then length-prefixed NAL units (4-byte
//! lengths, as the sequence header's `avcC` says):
//! 1. an SEI NAL unit with one `user_data_unregistered` message: our [`UUID`], then the
//!    send time and the frame number as 16 hex digits each (text, so no run of zero
//!    bytes can look like a start code), padded by up to 5 bytes;
//! 2. the picture: an IDR slice for a keyframe, a P slice otherwise ([`h264`]);
//! 3. a filler data NAL unit up to the frame's size.
//!
//! [`parse_marker`] reads the marker back from fixed offsets; [`VideoPlan::check`] also
//! compares the whole payload with the frame the plan makes for that number.

mod aac;
mod bits;
pub mod h264;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

pub use h264::{HEIGHT, WIDTH};

/// The `uuid_iso_iec_11578` of our SEI messages.
pub const UUID: [u8; 16] = *b"qrelay-synth-mk1";
/// A keyframe is this many times the size of an inter frame.
pub const KEYFRAME_FACTOR: usize = 5;
/// AAC frames per second at 44.1 kHz (1024 samples each).
pub const AUDIO_FPS: f64 = 44_100.0 / 1024.0;
/// Synthetic audio bitrate in bits per second.
pub const AUDIO_BITRATE: u64 = 128_000;

/// FLV AVC tag header (5), first NAL length (4), SEI header (NAL header, payload type,
/// payload size: 3).
const SEI_PAYLOAD_AT: usize = 5 + 4 + 3;
/// SEI payload: UUID, send time and number in hex.
const SEI_PAYLOAD: usize = 16 + 16 + 16;
/// Bytes up to the end of the marker.
const MARKER_END: usize = SEI_PAYLOAD_AT + SEI_PAYLOAD;
/// The smallest filler data NAL unit with its length: length (4), header, trailing byte.
const MIN_FILLER: usize = 4 + 1 + 1;

/// Microseconds since the first call in this process, on a monotonic clock. Publishers
/// and players of one bench process share it, so `receive − send` is a latency.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What a synthetic video frame says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The frame's number in its stream (from 0).
    pub seq: u64,
    /// When it was sent ([`now_us`] of the sending process, or whatever the sender chose).
    pub send_us: u64,
    /// A keyframe (IDR picture).
    pub keyframe: bool,
}

/// The shape of a numbered video stream: frame rate, GOP length and frame sizes. Frame
/// `n` is a keyframe when `n` is a multiple of `gop_frames`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoPlan {
    /// Frames per second.
    pub fps: u32,
    /// Frames per GOP (a keyframe every `gop_frames`).
    pub gop_frames: u32,
    /// Payload bytes of a keyframe (at least [`min_video_payload`]`(true)`).
    pub key_bytes: usize,
    /// Payload bytes of an inter frame (at least [`min_video_payload`]`(false)`).
    pub inter_bytes: usize,
}

impl VideoPlan {
    /// Sizes frames so one GOP carries `bitrate × gop` bits with a keyframe
    /// [`KEYFRAME_FACTOR`] times an inter frame: `(n − 1)·I + 5·I = bitrate·gop/8`.
    pub fn new(bitrate_bps: u64, fps: u32, gop: Duration) -> Self {
        let fps = fps.max(1);
        let gop_frames = ((gop.as_secs_f64() * f64::from(fps)).round() as u32).max(1);
        let gop_bytes = bitrate_bps as f64 / 8.0 * f64::from(gop_frames) / f64::from(fps);
        let units = (gop_frames as usize - 1 + KEYFRAME_FACTOR) as f64;
        let inter = ((gop_bytes / units).round() as usize).max(min_video_payload(false));
        let key = if gop_frames == 1 {
            // Every frame is a keyframe: it gets the whole GOP.
            gop_bytes.round() as usize
        } else {
            inter * KEYFRAME_FACTOR
        };
        Self { fps, gop_frames, key_bytes: key.max(min_video_payload(true)), inter_bytes: inter }
    }

    /// Every frame `bytes` long (or the smallest a keyframe can be, if larger).
    pub fn fixed(fps: u32, gop_frames: u32, bytes: usize) -> Self {
        Self {
            fps: fps.max(1),
            gop_frames: gop_frames.max(1),
            key_bytes: bytes.max(min_video_payload(true)),
            inter_bytes: bytes.max(min_video_payload(false)),
        }
    }

    /// Whether frame `n` (from 0) is a keyframe.
    pub fn is_key(&self, n: u64) -> bool {
        n.is_multiple_of(u64::from(self.gop_frames.max(1)))
    }

    /// Payload size of frame `n`.
    pub fn size(&self, n: u64) -> usize {
        if self.is_key(n) {
            self.key_bytes.max(min_video_payload(true))
        } else {
            self.inter_bytes.max(min_video_payload(false))
        }
    }

    /// RTMP timestamp (ms) of frame `n`.
    pub fn timestamp_ms(&self, n: u64) -> u32 {
        (n * 1000 / u64::from(self.fps.max(1))) as u32
    }

    /// When frame `n` is due, from the start of publishing.
    pub fn due(&self, n: u64) -> Duration {
        Duration::from_micros(n * 1_000_000 / u64::from(self.fps.max(1)))
    }

    /// Average bitrate the plan produces, in bits per second.
    pub fn bitrate_bps(&self) -> f64 {
        let gop = self.size(0) + (self.gop_frames.max(1) as usize - 1) * self.size(1);
        gop as f64 * 8.0 * f64::from(self.fps) / f64::from(self.gop_frames.max(1))
    }

    /// The video payload of frame `n`, stamped with `send_us`.
    pub fn frame(&self, n: u64, send_us: u64) -> Bytes {
        let gop = u64::from(self.gop_frames.max(1));
        let index = (n % gop) as u32;
        let idr_pic_id = (n / gop % 2) as u32;
        let key = index == 0;
        let size = self.size(n);
        let slice = h264::slice(index, idr_pic_id);
        let base = MARKER_END + 1 + 4 + slice.len();
        let rest = size.saturating_sub(base);
        // The SEI takes what a filler NAL unit cannot.
        let sei_pad = if rest < MIN_FILLER { rest } else { 0 };

        let mut b = BytesMut::with_capacity(size.max(base));
        b.put_slice(&[if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
        b.put_u32((3 + SEI_PAYLOAD + sei_pad + 1) as u32);
        b.put_slice(&[h264::NAL_SEI, 5, (SEI_PAYLOAD + sei_pad) as u8]);
        b.put_slice(&UUID);
        put_hex(&mut b, send_us);
        put_hex(&mut b, n);
        b.put_bytes(b'.', sei_pad);
        b.put_u8(0x80); // rbsp_trailing_bits
        b.put_u32(slice.len() as u32);
        b.put_slice(&slice);
        if rest >= MIN_FILLER {
            b.put_u32((rest - 4) as u32);
            b.put_u8(h264::NAL_FILLER);
            b.put_bytes(0xFF, rest - MIN_FILLER);
            b.put_u8(0x80);
        }
        b.freeze()
    }

    /// The marker of a payload that is exactly this plan's frame for its number and send
    /// time; `None` for anything else (another stream's frame, a damaged one, a
    /// sequence header, a real encoder's picture).
    pub fn check(&self, payload: &[u8]) -> Option<Marker> {
        let marker = parse_marker(payload)?;
        (payload.len() == self.size(marker.seq) && payload == &self.frame(marker.seq, marker.send_us)[..])
            .then_some(marker)
    }
}

/// The smallest synthetic video payload: the marker and the picture.
pub fn min_video_payload(key: bool) -> usize {
    static MIN: OnceLock<[usize; 2]> = OnceLock::new();
    let min = MIN.get_or_init(|| {
        let with = |index| MARKER_END + 1 + 4 + h264::slice(index, 0).len();
        [with(1), with(0)]
    });
    min[usize::from(key)]
}

fn put_hex(b: &mut BytesMut, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        b.put_u8(DIGITS[(v >> (i * 4) & 0xF) as usize]);
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |v, &d| {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(v << 4 | u64::from(x))
    })
}

/// The AVC sequence header: `[0x17, 0, 0, 0, 0]` and the `avcC` of the synthetic
/// stream (Constrained Baseline, level 3.0, [`WIDTH`]×[`HEIGHT`]).
pub fn video_sequence_header() -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x17, 0, 0, 0, 0]);
    b.put_slice(&h264::decoder_configuration());
    b.freeze()
}

/// The marker of a synthetic video payload, read from fixed offsets; `None` when the
/// payload is not one (no SEI with our [`UUID`] first).
pub fn parse_marker(payload: &[u8]) -> Option<Marker> {
    let head = payload.get(..MARKER_END)?;
    let keyframe = match head[0] {
        0x17 => true,
        0x27 => false,
        _ => return None,
    };
    if head[1] != 1 || head[9] != h264::NAL_SEI || head[10] != 5 || head[12..28] != UUID {
        return None;
    }
    let send_us = parse_hex(&head[28..44])?;
    let seq = parse_hex(&head[44..60])?;
    Some(Marker { seq, send_us, keyframe })
}

/// The AAC sequence header (FLV audio tag `0xAF 0x00` and the AudioSpecificConfig:
/// AAC-LC, 44.1 kHz, stereo).
pub fn audio_sequence_header() -> Bytes {
    let mut b = BytesMut::with_capacity(4);
    b.put_slice(&[0xAF, 0x00]);
    b.put_slice(&aac::AUDIO_SPECIFIC_CONFIG);
    b.freeze()
}

/// Bytes of one synthetic AAC payload (FLV header included) at [`AUDIO_BITRATE`].
pub fn audio_frame_bytes() -> usize {
    (AUDIO_BITRATE as f64 / 8.0 / AUDIO_FPS).round() as usize
}

/// A synthetic AAC frame (`0xAF 0x01` and a raw frame of silence and fill), about
/// [`audio_frame_bytes`] long; every frame is the same, so it is made once.
pub fn audio_frame() -> Bytes {
    static FRAME: OnceLock<Bytes> = OnceLock::new();
    FRAME
        .get_or_init(|| {
            let mut b = BytesMut::with_capacity(audio_frame_bytes());
            b.put_slice(&[0xAF, 0x01]);
            b.put_slice(&aac::raw_frame(audio_frame_bytes() - 2));
            b.freeze()
        })
        .clone()
}

/// RTMP timestamp (ms) of AAC frame `n`.
pub fn audio_timestamp_ms(n: u64) -> u32 {
    (n * 1024 * 1000 / 44_100) as u32
}

/// When AAC frame `n` is due, from the start of publishing.
pub fn audio_due(n: u64) -> Duration {
    Duration::from_micros(n * 1024 * 1_000_000 / 44_100)
}

/// The next message of a synthetic stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Video frame `n` ([`VideoPlan::frame`]).
    Video(u64),
    /// AAC frame `n` ([`audio_frame`]).
    Audio(u64),
}

/// The order of a synthetic stream's messages after its sequence headers: video frames
/// at the plan's rate and, with audio, AAC frames at 44.1 kHz / 1024, whichever is due
/// first (video on a tie). An endless iterator of `(due from the start, what)`.
#[derive(Debug, Clone)]
pub struct Schedule {
    plan: VideoPlan,
    audio: bool,
    video_n: u64,
    audio_n: u64,
}

impl Schedule {
    /// The schedule of `plan`'s video, with audio or without.
    pub fn new(plan: VideoPlan, audio: bool) -> Self {
        Self { plan, audio, video_n: 0, audio_n: 0 }
    }
}

impl Iterator for Schedule {
    type Item = (Duration, Next);

    fn next(&mut self) -> Option<(Duration, Next)> {
        let video = self.plan.due(self.video_n);
        let audio = audio_due(self.audio_n);
        Some(if !self.audio || video <= audio {
            self.video_n += 1;
            (video, Next::Video(self.video_n - 1))
        } else {
            self.audio_n += 1;
            (audio, Next::Audio(self.audio_n - 1))
        })
    }
}

/// Parses a bitrate like `3M`, `2500k`, `800000`, `1.5G` (bits per second).
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad bitrate `{s}` (e.g. 3M, 2500k)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("bad bitrate `{s}`"));
    }
    Ok((v * mult).round() as u64)
}

/// Parses a duration like `2s`, `500ms`, `2` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration `{s}` (e.g. 2s, 500ms)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("bad duration `{s}`"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests;
