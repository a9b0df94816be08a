//! A stream's output timeline across publishers: what players see when a new publisher
//! resumes a stream whose previous publisher went away (or was replaced). Sans-IO: frames
//! in, frames out, no clock.
//!
//! A fresh publish passes frames through untouched (byte-exact, timestamps included).
//! After a resume:
//! - The new publisher's configuration (metadata, sequence headers) is held until its
//!   resume point, then sent first, always (not only when it differs): a new encoder's
//!   configuration belongs with its pictures, an identical repeat costs a few hundred
//!   bytes once per reconnect and decoders take it as a no-op, and a comparison would
//!   have to know which tracks a multitrack header replaces.
//! - The resume point is the new publisher's first video keyframe; media before it is
//!   dropped (pictures that need frames nobody sent, audio ahead of the picture). A
//!   publisher that sends audio before any video resumes at that audio, and its video then
//!   waits for a keyframe.
//! - Timestamps are shifted so that the resume point comes [`RESUME_STEP_MS`] after the
//!   last timestamp sent before the break, not after the wall-clock gap: players then see
//!   one ordinary frame interval instead of a hole. A hole is what recorders and MSE
//!   players handle worst (an audio gap, a stalled buffered range), and a player that
//!   paces by its clock catches up at once from a step as it does after any stall; SRS
//!   corrects timestamp jumps the same way (`time_jitter full`, a 40 ms step).
//! - Media that would land at or before the last timestamp before the break (audio the
//!   new publisher interleaved a little ahead of its keyframe) is dropped, so timestamps
//!   never go backwards for any player; configuration is stamped at the newest time sent.

use crate::media::frame::{Frame, MediaKind};

/// How far after the last timestamp before a break the first frame after it lands: one
/// frame at 30 fps.
pub(super) const RESUME_STEP_MS: u32 = 33;

/// For how long (media time) after a resume frames from before the break point are
/// dropped. Past it, a publisher's own jumps pass through as in a fresh publish (and the
/// wrapping comparison with the break point would stop meaning anything after 24 days).
const FLOOR_WINDOW_MS: u32 = 10_000;

/// Configuration frames held while waiting for the resume point; a publisher that sends
/// only configuration keeps its newest ones.
const MAX_HELD: usize = 32;

/// The mapping from the current publisher's timestamps to the stream's.
#[derive(Debug, Default)]
pub(super) struct Timeline {
    /// Added (wrapping) to the publisher's timestamps; 0 in a fresh publish.
    offset: u32,
    /// The newest timestamp sent out.
    last: Option<u32>,
    /// After a resume: the last timestamp before the break. Media that would go out at or
    /// before it is dropped.
    floor: Option<u32>,
    /// Waiting for the resume point, with the configuration that came meanwhile.
    held: Option<Vec<Frame>>,
    /// The new publisher sent video: its audio waits for the keyframe too.
    saw_video: bool,
    /// Video waits for a keyframe (a resume at audio).
    await_keyframe: bool,
}

fn is_config(frame: &Frame) -> bool {
    frame.is_sequence_header() || frame.kind() == MediaKind::Data
}

/// Whether `a` is later than `b` on the wrapping 32-bit millisecond clock.
fn later(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

impl Timeline {
    /// A fresh publish: the publisher's own timestamps, nothing held.
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }

    /// A new publisher continues the stream: its frames wait for a resume point and are
    /// then shifted to follow what was sent. Without anything sent yet, a fresh start.
    pub(super) fn resume(&mut self) {
        let Some(last) = self.last else { return self.reset() };
        *self = Self {
            offset: 0,
            last: Some(last),
            floor: Some(last),
            held: Some(Vec::new()),
            saw_video: false,
            await_keyframe: true,
        };
    }

    /// Whether frames are being held for the resume point.
    pub(super) fn waiting(&self) -> bool {
        self.held.is_some()
    }

    /// The timestamp offset now applied (0 in a fresh publish).
    pub(super) fn offset(&self) -> u32 {
        self.offset
    }

    /// Takes one frame of the publisher and appends what goes out to `out` (nothing, the
    /// frame, or at a resume point the held configuration and the frame).
    pub(super) fn input(&mut self, frame: Frame, out: &mut Vec<Frame>) {
        let config = is_config(&frame);
        if let Some(held) = &mut self.held {
            self.saw_video |= frame.kind() == MediaKind::Video;
            if config {
                if held.len() >= MAX_HELD {
                    held.remove(0);
                }
                held.push(frame);
                return;
            }
            let starts = match frame.kind() {
                MediaKind::Video => frame.is_keyframe(),
                _ => !self.saw_video,
            };
            if !starts {
                return;
            }
            let start = self.floor.unwrap_or(0).wrapping_add(RESUME_STEP_MS);
            self.offset = start.wrapping_sub(frame.timestamp());
            for c in held.drain(..) {
                out.push(restamp(&c, start));
            }
            self.held = None;
            self.last = Some(start);
        }
        if frame.kind() == MediaKind::Video && !config && self.await_keyframe {
            if !frame.is_keyframe() {
                return;
            }
            self.await_keyframe = false;
        }
        let mut ts = frame.timestamp().wrapping_add(self.offset);
        if let Some(floor) = self.floor {
            if !later(ts, floor) {
                if !config {
                    return;
                }
                ts = self.last.unwrap_or(floor);
            } else if ts.wrapping_sub(floor) > FLOOR_WINDOW_MS {
                self.floor = None;
            }
        }
        if self.last.is_none_or(|l| later(ts, l)) {
            self.last = Some(ts);
        }
        out.push(if ts == frame.timestamp() { frame } else { restamp(&frame, ts) });
    }
}

fn restamp(frame: &Frame, ts: u32) -> Frame {
    if frame.timestamp() == ts {
        frame.clone()
    } else {
        Frame::new(frame.kind(), ts, frame.payload().clone())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn video(ts: u32, key: bool) -> Frame {
        Frame::new(
            MediaKind::Video,
            ts,
            Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, ts as u8]),
        )
    }
    fn video_header(ts: u32, tag: u8) -> Frame {
        Frame::new(MediaKind::Video, ts, Bytes::from(vec![0x17, 0, 0, 0, 0, tag]))
    }
    fn audio(ts: u32) -> Frame {
        Frame::new(MediaKind::Audio, ts, Bytes::from(vec![0xAF, 1, ts as u8]))
    }
    fn audio_header(ts: u32) -> Frame {
        Frame::new(MediaKind::Audio, ts, Bytes::from_static(&[0xAF, 0, 0x12, 0x10]))
    }
    fn metadata(ts: u32) -> Frame {
        Frame::new(MediaKind::Data, ts, Bytes::from_static(b"\x02\x00\x0aonMetaData\x05"))
    }

    /// Feeds `frames`, returning (kind, timestamp, keyframe, config) of what went out.
    fn feed(t: &mut Timeline, frames: Vec<Frame>) -> Vec<(MediaKind, u32, bool, bool)> {
        let mut out = Vec::new();
        for f in frames {
            t.input(f, &mut out);
        }
        out.iter()
            .map(|f| (f.kind(), f.timestamp(), f.kind() == V && f.is_keyframe(), is_config(f)))
            .collect()
    }

    use MediaKind::{Audio as A, Data as D, Video as V};

    #[test]
    fn a_fresh_publish_passes_frames_through_unchanged() {
        let mut t = Timeline::default();
        let f = video(5000, true);
        let mut out = Vec::new();
        t.input(f.clone(), &mut out);
        t.input(video(100, false), &mut out); // a publisher's own jump back is its business
        assert_eq!((out[0].timestamp(), out[0].payload()), (f.timestamp(), f.payload()));
        assert_eq!(out[1].timestamp(), 100);
    }

    #[test]
    fn a_resume_sends_the_new_configuration_then_continues_at_the_keyframe_a_step_later() {
        let mut t = Timeline::default();
        feed(&mut t, vec![video_header(0, 1), video(0, true), audio(20), video(1000, false)]);
        t.resume();
        assert!(t.waiting());
        let got = feed(
            &mut t,
            vec![
                metadata(0),
                video_header(0, 2),
                audio_header(0),
                video(0, false), // no keyframe yet: dropped
                audio(10),       // ahead of the picture: dropped
                video(40, true), // the resume point
                audio(45),
                video(73, false),
            ],
        );
        let start = 1000 + RESUME_STEP_MS;
        assert_eq!(
            got,
            vec![
                (D, start, false, true),
                (V, start, false, true),
                (A, start, false, true),
                (V, start, true, false),
                (A, start + 5, false, false),
                (V, start + 33, false, false),
            ]
        );
        assert!(!t.waiting());
        assert_eq!(t.offset(), start - 40);
    }

    #[test]
    fn media_from_before_the_break_point_is_dropped_and_configuration_restamped() {
        let mut t = Timeline::default();
        feed(&mut t, vec![video(0, true), video(500, false)]);
        t.resume();
        let got = feed(
            &mut t,
            vec![
                video(100, true), // resume: 533
                audio(60),        // 493: before the break point, dropped
                audio(90),        // 523: after it
                audio_header(0),  // a late header: at the newest time sent
                video(133, false),
            ],
        );
        assert_eq!(
            got,
            vec![
                (V, 533, true, false),
                (A, 523, false, false),
                (A, 533, false, true),
                (V, 566, false, false)
            ]
        );
    }

    #[test]
    fn an_audio_first_publisher_resumes_at_its_audio_and_its_video_waits_for_a_keyframe() {
        let mut t = Timeline::default();
        feed(&mut t, vec![audio(0), audio(200)]);
        t.resume();
        let got = feed(
            &mut t,
            vec![audio_header(0), audio(0), video(10, false), video_header(10, 3), video(40, true)],
        );
        let start = 200 + RESUME_STEP_MS;
        assert_eq!(
            got,
            vec![
                (A, start, false, true),
                (A, start, false, false),
                (V, start + 10, false, true),
                (V, start + 40, true, false)
            ]
        );
    }

    #[test]
    fn resumes_compose_and_survive_the_32_bit_wrap() {
        let mut t = Timeline::default();
        let near_wrap = u32::MAX - 10;
        feed(&mut t, vec![video(near_wrap, true)]);
        t.resume();
        let got = feed(&mut t, vec![video(0, true), video(33, false)]);
        let start = near_wrap.wrapping_add(RESUME_STEP_MS);
        assert_eq!(got, vec![(V, start, true, false), (V, start.wrapping_add(33), false, false)]);
        t.resume();
        let got = feed(&mut t, vec![video(7, true)]);
        assert_eq!(got, vec![(V, start.wrapping_add(66), true, false)]);
    }

    #[test]
    fn a_resume_before_anything_was_sent_is_a_fresh_start() {
        let mut t = Timeline::default();
        t.resume();
        assert!(!t.waiting());
        assert_eq!(feed(&mut t, vec![video(77, false)]), vec![(V, 77, false, false)]);
    }

    #[test]
    fn the_break_point_stops_mattering_after_a_while() {
        let mut t = Timeline::default();
        feed(&mut t, vec![video(1000, true)]);
        t.resume();
        feed(&mut t, vec![video(0, true), video(FLOOR_WINDOW_MS + 100, true)]);
        // The publisher jumps back on its own, far behind the old break point: passed.
        let got = feed(&mut t, vec![video(0, true)]);
        assert_eq!(got, vec![(V, 1000 + RESUME_STEP_MS, true, false)]);
    }

    #[test]
    fn held_configuration_is_bounded() {
        let mut t = Timeline::default();
        feed(&mut t, vec![video(0, true)]);
        t.resume();
        for i in 0..1000 {
            feed(&mut t, vec![metadata(i)]);
        }
        assert!(t.held.as_ref().is_some_and(|h| h.len() == MAX_HELD));
        assert_eq!(feed(&mut t, vec![video(5, true)]).len(), MAX_HELD + 1);
    }
}
