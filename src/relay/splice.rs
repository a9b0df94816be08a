//! Joining one upstream connection's media onto the previous one's, for a stream whose
//! players stay connected while its relay link reconnects. Sans-IO: frames in, frames
//! (or nothing) out.
//!
//! After a reconnect the upstream starts again with metadata, sequence headers and its
//! cached GOP, which the players have mostly seen, on a timeline that may be the old one
//! (the same origin) or a new one (another origin, a publisher that restarted). So media
//! waits for a keyframe (any audio frame for audio-only streams), preferring one the
//! players have not had yet; timestamps are shifted, when needed, to continue just after
//! the last one sent, so players never see time go backwards.

use crate::media::frame::{Frame, MediaKind};

/// A keyframe this far behind the last timestamp sent is a replay of the cached GOP on
/// the old timeline, skipped for the next one; further behind, it is a new timeline.
const REPLAY_WINDOW_MS: i64 = 10_000;
/// Replayed keyframes skipped at most before splicing anyway (a GOP cache holds one).
const MAX_REPLAYED_KEYFRAMES: u32 = 2;
/// A continuation this far ahead of the last timestamp is a gap in the old timeline
/// rather than fresh frames: it is pulled back to just after the last one.
const MAX_FORWARD_JUMP_MS: i64 = 5_000;

/// The splice state of one relayed stream.
#[derive(Debug, Default)]
pub struct Splice {
    /// Added to upstream timestamps.
    offset: i64,
    /// Last timestamp sent to the hub.
    last_out: Option<i64>,
    /// Waiting for the first frame to splice at.
    resyncing: bool,
    /// Replayed keyframes skipped in this resync.
    skipped_keyframes: u32,
    has_video: bool,
}

impl Splice {
    /// The upstream connection was lost and a new one starts.
    pub fn reconnected(&mut self) {
        self.resyncing = self.last_out.is_some();
        self.skipped_keyframes = 0;
    }

    /// The frame to publish for an upstream frame, if any.
    pub fn map(&mut self, frame: Frame) -> Option<Frame> {
        let ts = i64::from(frame.timestamp());
        let is_config = frame.is_sequence_header() || frame.kind() == MediaKind::Data;
        if frame.kind() == MediaKind::Video {
            self.has_video = true;
        }
        if self.resyncing {
            if is_config {
                // Configuration always goes (new headers replace the old), at the last
                // time sent so it does not step back either.
                return Some(self.at(frame, self.last_out.unwrap_or(0)));
            }
            let starts = match frame.kind() {
                MediaKind::Video => frame.is_keyframe(),
                _ => !self.has_video,
            };
            if !starts {
                return None;
            }
            let last = self.last_out.unwrap_or(0);
            let shifted = ts + self.offset;
            if shifted <= last {
                // Only video is replayed (audio-only streams have no GOP cache).
                let replay = frame.kind() == MediaKind::Video && last - shifted <= REPLAY_WINDOW_MS;
                if replay && self.skipped_keyframes < MAX_REPLAYED_KEYFRAMES {
                    self.skipped_keyframes += 1;
                    return None;
                }
                self.offset = last + 1 - ts;
            } else if shifted - last > MAX_FORWARD_JUMP_MS {
                self.offset = last + 1 - ts;
            }
            self.resyncing = false;
        }
        let out = (ts + self.offset).max(self.last_out.unwrap_or(0)).max(0);
        if !is_config {
            self.last_out = Some(out);
        }
        Some(self.at(frame, out))
    }

    fn at(&self, frame: Frame, ts: i64) -> Frame {
        let ts = u32::try_from(ts.max(0)).unwrap_or(u32::MAX);
        if ts == frame.timestamp() {
            frame
        } else {
            Frame::new(frame.kind(), ts, frame.payload().clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn video(ts: u32, key: bool) -> Frame {
        let b0 = if key { 0x17 } else { 0x27 };
        Frame::new(MediaKind::Video, ts, Bytes::from(vec![b0, 1, 0, 0, 0, 9]))
    }

    fn header(ts: u32) -> Frame {
        Frame::new(MediaKind::Video, ts, Bytes::from(vec![0x17, 0, 0, 0, 0, 1, 2]))
    }

    fn audio(ts: u32) -> Frame {
        Frame::new(MediaKind::Audio, ts, Bytes::from(vec![0xaf, 1, 7]))
    }

    fn run(s: &mut Splice, frames: Vec<Frame>) -> Vec<(u32, bool)> {
        frames.into_iter().filter_map(|f| s.map(f)).map(|f| (f.timestamp(), f.is_keyframe())).collect()
    }

    #[test]
    fn passes_everything_through_before_any_reconnect() {
        let mut s = Splice::default();
        let out = run(&mut s, vec![header(0), video(0, true), video(33, false), video(66, false)]);
        assert_eq!(out, [(0, false), (0, true), (33, false), (66, false)]);
    }

    #[test]
    fn the_same_timeline_skips_the_replayed_gop_and_resumes_at_the_next_keyframe() {
        let mut s = Splice::default();
        run(&mut s, (0..60).map(|i| video(i * 33, i % 30 == 0)).collect());
        s.reconnected();
        // The origin replays its GOP from 990 ms, then goes on live.
        let replay: Vec<Frame> =
            std::iter::once(header(990)).chain((30..100).map(|i| video(i * 33, i % 30 == 0))).collect();
        let out = run(&mut s, replay);
        assert_eq!(out[0].0, 1947, "the header goes first, at the last time sent");
        assert_eq!(out[1], (1980, true), "resumes at the first new keyframe, unshifted");
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "{out:?}");
    }

    #[test]
    fn a_new_timeline_is_shifted_to_continue_after_the_last_frame() {
        let mut s = Splice::default();
        run(&mut s, (0..600).map(|i| video(i * 33, i % 30 == 0)).collect());
        s.reconnected();
        // Another origin whose publisher started again from zero.
        let out = run(&mut s, vec![video(0, false), video(0, true), video(33, false)]);
        assert_eq!(out, [(19768, true), (19801, false)]);
        // Far ahead (a long outage) is pulled back too.
        s.reconnected();
        let out = run(&mut s, vec![video(900_000, true)]);
        assert_eq!(out, [(19802, true)]);
    }

    #[test]
    fn audio_only_streams_resume_at_any_audio_frame() {
        let mut s = Splice::default();
        run(&mut s, (0..50).map(|i| audio(i * 23)).collect());
        s.reconnected();
        let out = run(&mut s, vec![audio(100)]);
        assert_eq!(out[0].0, 1128);
    }
}
