//! When a stream's fan-out writes to its players: at once, or with the next write.
//!
//! Every write to a player socket costs a system call and, on the wire, a segment (on
//! loopback, the receiver's TCP processing too, charged to the writer). A 3 Mbit/s
//! stream with audio is about 75 frames a second, most of them small audio frames, so
//! writing each frame on its own spends most of the relay's CPU per frame, not per byte
//! (bench/RESULTS.md, "Write coalescing"). The players of a stream all get the same
//! frames, so the decision is the stream's, made once per frame for all of them:
//!
//! - a frame that finds the players idle (nothing written for `window`) goes out at once;
//! - otherwise it is held, and goes out with whatever follows it in one write per player,
//!   at most `window` after the previous write;
//! - a video frame goes out at once with the audio held before it, unless `hold_video`
//!   (off by default): pictures are not delayed, audio rides with the next picture;
//! - a batch that reaches `flush_bytes` (4 KiB by default) goes out at once with
//!   whatever it carries: a write that large already amortises much of its cost.
//!
//! `hold_video` with a large `flush_bytes` is SRS's merged write (350 ms by default
//! there): fewer writes still, for up to `window` of added latency on every frame.
//!
//! Sans-IO: time is passed in. The stream owns one [`Coalescer`] under its publishing
//! lock and one timer task that flushes a held batch when it is due.

use std::time::Duration;

use tokio::time::Instant;

use crate::media::frame::Frame;

/// What to do with a frame just offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    /// Write the batch now ([`Coalescer::take`]).
    Flush,
    /// Held until `due`; `armed` when this frame started the batch (the timer must hear
    /// of the new deadline).
    Hold {
        /// When the batch must go out at the latest.
        due: Instant,
        /// The batch was empty before this frame.
        armed: bool,
    },
}

/// A stream's held frames and when its players were last written.
#[derive(Debug, Default)]
pub(super) struct Coalescer {
    /// Longest a frame is held; zero writes every frame at once.
    window: Duration,
    /// A held batch of this many payload bytes is written at once.
    flush_bytes: usize,
    /// Video frames are held like audio (otherwise each flushes the batch).
    hold_video: bool,
    pending: Vec<Frame>,
    pending_bytes: usize,
    /// When the players were last written (the last batch taken).
    last_write: Option<Instant>,
}

impl Coalescer {
    pub(super) fn new(window: Duration, flush_bytes: usize, hold_video: bool) -> Self {
        Self { window, flush_bytes, hold_video, ..Self::default() }
    }

    /// Adds `frame` to the batch and says whether the batch goes out now.
    pub(super) fn offer(&mut self, frame: Frame, now: Instant) -> Offer {
        let armed = self.pending.is_empty();
        let video = frame.kind() == crate::media::frame::MediaKind::Video && !self.hold_video;
        self.pending_bytes += frame.payload().len();
        self.pending.push(frame);
        match self.last_write {
            Some(t) if t + self.window > now && !video && self.pending_bytes < self.flush_bytes => {
                Offer::Hold { due: t + self.window, armed }
            }
            // Idle (or never written), zero window, or a batch large enough.
            _ => Offer::Flush,
        }
    }

    /// When the held batch must go out; `None` when nothing is held.
    pub(super) fn due(&self) -> Option<Instant> {
        // Frames are only held after a first write (see `offer`).
        self.last_write.filter(|_| !self.pending.is_empty()).map(|t| t + self.window)
    }

    /// Moves the batch into `out` (in publish order), as written at `now`.
    pub(super) fn take(&mut self, now: Instant, out: &mut Vec<Frame>) {
        out.append(&mut self.pending);
        self.pending_bytes = 0;
        self.last_write = Some(now);
    }

    /// Whether frames are held.
    pub(super) fn is_holding(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::frame::MediaKind;

    fn audio(ts: u32) -> Frame {
        Frame::new(MediaKind::Audio, ts, Bytes::from(vec![0xaf, 0x01, 0, 0, 0, 0]))
    }

    fn video(ts: u32, len: usize) -> Frame {
        let mut p = vec![0u8; len.max(5)];
        p[0] = 0x27;
        p[1] = 0x01;
        Frame::new(MediaKind::Video, ts, Bytes::from(p))
    }

    const FLUSH_BYTES: usize = 4096;

    #[test]
    fn video_goes_at_once_however_small() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(350), usize::MAX, false);
        let mut out = Vec::new();
        c.offer(audio(0), t0);
        c.take(t0, &mut out);
        assert!(matches!(c.offer(audio(10), t0 + ms(10)), Offer::Hold { .. }));
        assert_eq!(c.offer(video(33, 80), t0 + ms(33)), Offer::Flush);
    }

    #[test]
    fn held_video_waits_for_the_window_or_the_bytes() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), 64 * 1024, true);
        let mut out = Vec::new();
        c.offer(video(0, 12_000), t0);
        c.take(t0, &mut out);
        assert_eq!(c.offer(video(33, 12_000), t0 + ms(33)), Offer::Hold { due: t0 + ms(100), armed: true });
        assert_eq!(c.offer(audio(40), t0 + ms(40)), Offer::Hold { due: t0 + ms(100), armed: false });
        assert!(matches!(c.offer(video(66, 12_000), t0 + ms(66)), Offer::Hold { .. }));
        assert_eq!(c.offer(video(99, 60_000), t0 + ms(99)), Offer::Flush, "64 KiB reached");
        out.clear();
        c.take(t0 + ms(99), &mut out);
        assert_eq!(out.iter().map(Frame::timestamp).collect::<Vec<_>>(), [33, 40, 66, 99]);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_players_get_a_frame_at_once_busy_ones_within_the_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(40), FLUSH_BYTES, false);
        let mut out = Vec::new();
        assert_eq!(c.offer(audio(0), t0), Offer::Flush, "first frame: idle");
        c.take(t0, &mut out);
        assert_eq!(c.offer(audio(10), t0 + ms(10)), Offer::Hold { due: t0 + ms(40), armed: true });
        assert_eq!(c.offer(audio(20), t0 + ms(20)), Offer::Hold { due: t0 + ms(40), armed: false });
        assert_eq!(c.due(), Some(t0 + ms(40)));
        c.take(t0 + ms(40), &mut out);
        assert_eq!(out.iter().map(Frame::timestamp).collect::<Vec<_>>(), [0, 10, 20]);
        assert_eq!(c.due(), None);
        // Idle again (nothing for a window): at once.
        assert_eq!(c.offer(audio(100), t0 + ms(81)), Offer::Flush);
    }

    #[test]
    fn a_large_batch_goes_at_once_with_what_it_carries() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(40), FLUSH_BYTES, false);
        let mut out = Vec::new();
        c.offer(audio(0), t0);
        c.take(t0, &mut out);
        assert!(matches!(c.offer(audio(10), t0 + ms(10)), Offer::Hold { .. }));
        assert_eq!(c.offer(video(33, FLUSH_BYTES), t0 + ms(12)), Offer::Flush);
        out.clear();
        c.take(t0 + ms(12), &mut out);
        assert_eq!(out.len(), 2, "the held audio rides with the video frame");
        assert!(!c.is_holding());
    }

    #[test]
    fn zero_window_writes_every_frame() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO, FLUSH_BYTES, false);
        let mut out = Vec::new();
        for i in 0..5 {
            assert_eq!(c.offer(audio(i), t0), Offer::Flush);
            c.take(t0, &mut out);
        }
        assert_eq!(out.len(), 5);
    }
}
