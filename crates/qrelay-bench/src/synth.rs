//! Synthetic media for the load generator: legacy AVC video tags (plus optional AAC audio)
//! sized to a target bitrate, each video payload carrying a marker with its send time and
//! sequence number so players measure relay latency and detect lost frames.
//!
//! Video payload layout (after the 5-byte AVC tag header `[0x17|0x27, 1, 0, 0, 0]`):
//! `b"QRB1"`, send time as u64 big-endian microseconds of [`now_us`], sequence number as
//! u64 big-endian, then filler up to the frame's size.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// Magic bytes that follow the AVC header in a synthetic video payload.
pub const MAGIC: &[u8; 4] = b"QRB1";
/// AVC tag header (5) + magic (4) + send time (8) + sequence (8).
pub const MIN_VIDEO_PAYLOAD: usize = 5 + 4 + 8 + 8;
/// A keyframe is this many times the size of an inter frame.
pub const KEYFRAME_FACTOR: usize = 5;
/// AAC frames per second at 44.1 kHz (1024 samples each).
pub const AUDIO_FPS: f64 = 44_100.0 / 1024.0;
/// Synthetic audio bitrate in bits per second.
pub const AUDIO_BITRATE: u64 = 128_000;

/// Microseconds since the first call in this process, on a monotonic clock. Publishers
/// and players of one bench process share it, so `receive − send` is a latency.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Frame sizes for a bitrate, frame rate and GOP length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoPlan {
    /// Frames per second.
    pub fps: u32,
    /// Frames per GOP (a keyframe every `gop_frames`).
    pub gop_frames: u32,
    /// Payload bytes of a keyframe.
    pub key_bytes: usize,
    /// Payload bytes of an inter frame.
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
        let inter = ((gop_bytes / units).round() as usize).max(MIN_VIDEO_PAYLOAD);
        let key = if gop_frames == 1 {
            // Every frame is a keyframe: it gets the whole GOP.
            (gop_bytes.round() as usize).max(MIN_VIDEO_PAYLOAD)
        } else {
            inter * KEYFRAME_FACTOR
        };
        Self { fps, gop_frames, key_bytes: key, inter_bytes: inter }
    }

    /// Whether frame `n` (from 0) is a keyframe.
    pub fn is_key(&self, n: u64) -> bool {
        n.is_multiple_of(u64::from(self.gop_frames))
    }

    /// Payload size of frame `n`.
    pub fn size(&self, n: u64) -> usize {
        if self.is_key(n) {
            self.key_bytes
        } else {
            self.inter_bytes
        }
    }

    /// RTMP timestamp (ms) of frame `n`.
    pub fn timestamp_ms(&self, n: u64) -> u32 {
        (n * 1000 / u64::from(self.fps)) as u32
    }

    /// When frame `n` is due, from the start of publishing.
    pub fn due(&self, n: u64) -> Duration {
        Duration::from_micros(n * 1_000_000 / u64::from(self.fps))
    }

    /// Average bitrate the plan produces, in bits per second.
    pub fn bitrate_bps(&self) -> f64 {
        let gop = self.key_bytes + (self.gop_frames as usize - 1) * self.inter_bytes;
        gop as f64 * 8.0 * f64::from(self.fps) / f64::from(self.gop_frames)
    }
}

/// An AVC sequence header: `[0x17, 0, 0, 0, 0]` and a plausible avcC (High profile,
/// level 3.1, one SPS and one PPS).
pub fn video_sequence_header() -> Bytes {
    let sps: &[u8] = &[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10];
    let pps: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut b = BytesMut::new();
    b.put_slice(&[0x17, 0, 0, 0, 0]);
    b.put_slice(&[0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1]);
    b.put_u16(sps.len() as u16);
    b.put_slice(sps);
    b.put_u8(1);
    b.put_u16(pps.len() as u16);
    b.put_slice(pps);
    b.freeze()
}

/// A synthetic video frame of `size` bytes (at least [`MIN_VIDEO_PAYLOAD`]).
pub fn video_frame(key: bool, size: usize, send_us: u64, seq: u64) -> Bytes {
    static FILLER: [u8; 4096] = [0xA5; 4096];
    let size = size.max(MIN_VIDEO_PAYLOAD);
    let mut b = BytesMut::with_capacity(size);
    b.put_slice(&[if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
    b.put_slice(MAGIC);
    b.put_u64(send_us);
    b.put_u64(seq);
    while b.len() < size {
        let n = (size - b.len()).min(FILLER.len());
        b.put_slice(&FILLER[..n]);
    }
    b.freeze()
}

/// The marker of a synthetic video payload: `(send_us, seq, keyframe)`.
pub fn parse_marker(payload: &[u8]) -> Option<(u64, u64, bool)> {
    let header = payload.get(..MIN_VIDEO_PAYLOAD)?;
    let key = match header[0] {
        0x17 => true,
        0x27 => false,
        _ => return None,
    };
    if header[1] != 1 || &header[5..9] != MAGIC {
        return None;
    }
    let send = u64::from_be_bytes(header[9..17].try_into().ok()?);
    let seq = u64::from_be_bytes(header[17..25].try_into().ok()?);
    Some((send, seq, key))
}

/// AAC sequence header (AAC-LC, 44.1 kHz, stereo).
pub fn audio_sequence_header() -> Bytes {
    Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10])
}

/// Bytes of one synthetic AAC frame at [`AUDIO_BITRATE`].
pub fn audio_frame_bytes() -> usize {
    (AUDIO_BITRATE as f64 / 8.0 / AUDIO_FPS).round() as usize
}

/// A synthetic raw AAC frame.
pub fn audio_frame() -> Bytes {
    let mut b = BytesMut::with_capacity(audio_frame_bytes());
    b.put_slice(&[0xAF, 0x01]);
    b.resize(audio_frame_bytes().max(2), 0x21);
    b.freeze()
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
mod tests {
    use super::*;
    use qrelay_proto::media::frame::inspect_video;

    #[test]
    fn plan_matches_bitrate_and_keyframe_ratio() {
        let p = VideoPlan::new(3_000_000, 30, Duration::from_secs(2));
        assert_eq!(p.gop_frames, 60);
        assert_eq!(p.key_bytes, 5 * p.inter_bytes);
        // 3 Mbit/s × 2 s = 750000 bytes over 64 inter-frame units.
        assert_eq!(p.inter_bytes, 11_719);
        let err = (p.bitrate_bps() - 3e6).abs() / 3e6;
        assert!(err < 0.001, "bitrate off by {err}");
        assert!(p.is_key(0) && !p.is_key(1) && p.is_key(60));
        assert_eq!(p.size(0), p.key_bytes);
        assert_eq!(p.size(59), p.inter_bytes);
        assert_eq!(p.timestamp_ms(30), 1000);
        assert_eq!(p.due(15), Duration::from_millis(500));
    }

    #[test]
    fn plan_edge_cases() {
        // All keyframes.
        let p = VideoPlan::new(1_000_000, 10, Duration::from_millis(50));
        assert_eq!(p.gop_frames, 1);
        assert_eq!(p.key_bytes, 12_500);
        assert!((p.bitrate_bps() - 1e6).abs() < 10.0);
        // Tiny bitrates never go below the marker size.
        let p = VideoPlan::new(100, 30, Duration::from_secs(2));
        assert_eq!(p.inter_bytes, MIN_VIDEO_PAYLOAD);
        // fps 0 is treated as 1.
        assert_eq!(VideoPlan::new(1000, 0, Duration::from_secs(1)).fps, 1);
    }

    #[test]
    fn frames_carry_marker_and_are_recognised() {
        let f = video_frame(true, 1000, 123_456, 42);
        assert_eq!(f.len(), 1000);
        assert_eq!(parse_marker(&f), Some((123_456, 42, true)));
        assert!(inspect_video(&f).keyframe);
        let f = video_frame(false, 5, 7, 8);
        assert_eq!(f.len(), MIN_VIDEO_PAYLOAD);
        assert_eq!(parse_marker(&f), Some((7, 8, false)));
        assert!(!inspect_video(&f).keyframe);
        let sh = video_sequence_header();
        assert!(inspect_video(&sh).sequence_header);
        assert_eq!(parse_marker(&sh), None);
        assert_eq!(parse_marker(&f[..20]), None);
        assert_eq!(parse_marker(b""), None);
    }

    #[test]
    fn audio_frames() {
        assert_eq!(audio_frame_bytes(), 372);
        let a = audio_frame();
        assert_eq!(a.len(), 372);
        assert_eq!(&a[..2], &[0xAF, 0x01]);
    }

    #[test]
    fn parses_bitrates_and_durations() {
        assert_eq!(parse_bitrate("3M"), Ok(3_000_000));
        assert_eq!(parse_bitrate("2500k"), Ok(2_500_000));
        assert_eq!(parse_bitrate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bitrate("800000"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-1M").is_err());
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0").is_err());
    }
}
