//! Restores timestamp order across QUIC streams. A RoQR sender may put audio and each
//! GOP of video on streams of their own, so a loss that stalls one stream lets the others
//! run ahead; the hub and players expect one timeline. Audio that ran ahead waits here
//! until video has reached its timestamp, or until it has waited `hold` (video that
//! stopped, a cancelled GOP); video never waits for audio. Pictures are what viewers see
//! stall, so a lost audio packet must not hold them up: audio that arrives after video
//! passed its time goes on at once, slightly out of order (players and muxers order each
//! track on its own, and tolerate that).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::media::frame::MediaKind;
use crate::rtmp::chunk::Message;

/// Frames held at most; beyond this the oldest goes at once (bounds memory whatever the
/// sender does).
const MAX_HELD: usize = 1024;

#[derive(Debug)]
struct Held {
    timestamp: u32,
    /// Data and sequence headers before media of the same timestamp: a decoder needs its
    /// configuration before the first frame.
    class: u8,
    seq: u64,
    arrived: Instant,
    message: Message,
}

impl Held {
    fn key(&self) -> (u32, u8, u64) {
        (self.timestamp, self.class, self.seq)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A timestamp-ordering buffer for media messages, sans-IO (time is passed in).
#[derive(Debug)]
pub struct Reorder {
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    /// Newest timestamp received per track (audio, video), once the track has been seen.
    newest: [Option<u32>; 2],
    /// Audio waited a whole hold without any video showing up: the stream has none, and
    /// audio stops waiting for it (until video appears).
    audio_only: bool,
    hold: Duration,
}

impl Reorder {
    /// A buffer that holds a message at most `hold`.
    pub fn new(hold: Duration) -> Self {
        Self { held: BinaryHeap::new(), seq: 0, newest: [None, None], audio_only: false, hold }
    }

    /// Adds a media message (types 8, 9, 18) received at `now`.
    pub fn push(&mut self, message: Message, now: Instant) {
        let kind = MediaKind::from_type_id(message.type_id);
        let track = match kind {
            Some(MediaKind::Audio) => Some(0),
            Some(MediaKind::Video) => Some(1),
            _ => None,
        };
        if let Some(t) = track {
            let n = &mut self.newest[t];
            *n = Some(n.map_or(message.timestamp, |n| n.max(message.timestamp)));
        }
        let class = match kind {
            Some(MediaKind::Data) => 0,
            _ if is_sequence_header(&message) => 1,
            _ => 2,
        };
        self.seq += 1;
        self.held.push(Reverse(Held {
            timestamp: message.timestamp,
            class,
            seq: self.seq,
            arrived: now,
            message,
        }));
    }

    /// The next message due at `now`, in timestamp order.
    pub fn pop(&mut self, now: Instant) -> Option<Message> {
        let Reverse(first) = self.held.peek()?;
        let is_audio = first.message.type_id == 8;
        // Only audio waits, and only for video: until video reached its time, or, before
        // any video was seen, until the hold shows there is none.
        let caught_up = !is_audio
            || match self.newest[1] {
                Some(v) => v >= first.timestamp,
                None => self.audio_only,
            };
        let expired = now >= first.arrived + self.hold;
        if caught_up || expired || self.held.len() > MAX_HELD {
            if is_audio && expired && self.newest[1].is_none() {
                self.audio_only = true;
            }
            return self.held.pop().map(|Reverse(h)| h.message);
        }
        None
    }

    /// Everything held, in timestamp order (before a command that ends the stream).
    pub fn drain(&mut self) -> impl Iterator<Item = Message> + '_ {
        std::iter::from_fn(|| self.held.pop().map(|Reverse(h)| h.message))
    }

    /// When the oldest held message is due whatever arrives, if any is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.held.iter().map(|Reverse(h)| h.arrived + self.hold).min()
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Codec configuration: audio or video sequence headers.
pub(crate) fn is_sequence_header(m: &Message) -> bool {
    let p = &m.payload;
    match m.type_id {
        // AAC sequence header: sound format 10, packet type 0.
        8 => p.len() >= 2 && p[0] >> 4 == 10 && p[1] == 0,
        // AVC/HEVC legacy packet type 0, or an Enhanced RTMP SequenceStart.
        9 => {
            (p.len() >= 2 && p[0] & 0x80 == 0 && p[1] == 0)
                || (p.first().is_some_and(|b| b & 0x80 != 0 && b & 0x0f == 0))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn m(type_id: u8, ts: u32, first: u8) -> Message {
        Message { csid: 6, timestamp: ts, type_id, stream_id: 1, payload: Bytes::from(vec![first, 1, 2]) }
    }

    fn ts_of(r: &mut Reorder, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| r.pop(now)).map(|m| m.timestamp).collect()
    }

    #[test]
    fn audio_that_ran_ahead_waits_for_video() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_millis(300));
        r.push(m(9, 0, 0x17), t0);
        assert_eq!(ts_of(&mut r, t0), vec![0]);
        // Audio runs ahead while video is held up behind a loss.
        for ts in [0, 23, 46, 69] {
            r.push(m(8, ts, 0xaf), t0);
        }
        assert_eq!(ts_of(&mut r, t0), vec![0], "only what video has reached is due");
        r.push(m(9, 33, 0x27), t0);
        r.push(m(9, 66, 0x27), t0);
        assert_eq!(ts_of(&mut r, t0), vec![23, 33, 46, 66]);
        assert_eq!(r.len(), 1);
        r.push(m(9, 100, 0x27), t0);
        assert_eq!(ts_of(&mut r, t0), vec![69, 100]);
    }

    #[test]
    fn audio_before_any_video_waits_for_it_once() {
        let t0 = Instant::now();
        let hold = Duration::from_millis(300);
        let mut r = Reorder::new(hold);
        // A late joiner: the audio stream's frames arrive before the GOP stream's.
        r.push(m(8, 2017, 0xaf), t0);
        r.push(m(8, 2040, 0xaf), t0);
        assert!(r.pop(t0).is_none(), "audio waits for the pictures it goes with");
        r.push(m(18, 2000, 0x02), t0);
        r.push(m(9, 2000, 0x17), t0);
        r.push(m(9, 2033, 0x27), t0);
        assert_eq!(ts_of(&mut r, t0), vec![2000, 2000, 2017, 2033]);
        // A stream without video: audio waits one hold, then flows.
        let mut a = Reorder::new(hold);
        a.push(m(8, 0, 0xaf), t0);
        assert!(a.pop(t0).is_none());
        assert_eq!(ts_of(&mut a, t0 + hold), vec![0]);
        a.push(m(8, 23, 0xaf), t0 + hold);
        assert_eq!(ts_of(&mut a, t0 + hold), vec![23], "no more waiting once it is known");
    }

    #[test]
    fn video_never_waits_for_audio() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_millis(300));
        r.push(m(8, 0, 0xaf), t0);
        r.push(m(9, 0, 0x17), t0);
        assert_eq!(ts_of(&mut r, t0), vec![0, 0]);
        // Audio is behind a loss; pictures go on.
        r.push(m(9, 33, 0x27), t0);
        r.push(m(9, 66, 0x27), t0);
        assert_eq!(ts_of(&mut r, t0), vec![33, 66]);
        // The late audio goes at once, after the pictures it should have preceded.
        r.push(m(8, 23, 0xaf), t0);
        assert_eq!(ts_of(&mut r, t0), vec![23]);
    }

    #[test]
    fn a_stalled_track_delays_the_others_at_most_the_hold() {
        let t0 = Instant::now();
        let hold = Duration::from_millis(300);
        let mut r = Reorder::new(hold);
        r.push(m(9, 0, 0x17), t0);
        r.push(m(8, 0, 0xaf), t0);
        assert_eq!(ts_of(&mut r, t0).len(), 2);
        r.push(m(8, 23, 0xaf), t0);
        assert!(r.pop(t0).is_none(), "video has not reached 23 yet");
        assert_eq!(r.deadline(), Some(t0 + hold));
        assert_eq!(ts_of(&mut r, t0 + hold), vec![23]);
    }

    #[test]
    fn configuration_goes_before_media_of_the_same_timestamp() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Duration::from_millis(300));
        let with = |type_id, payload: &'static [u8]| Message {
            csid: 6,
            timestamp: 0,
            type_id,
            stream_id: 1,
            payload: Bytes::from_static(payload),
        };
        r.push(with(9, &[0x17, 1, 0, 0, 0]), t0); // keyframe, first on its GOP stream
        r.push(with(9, &[0x17, 0, 0, 0, 0]), t0); // AVC sequence header, on another stream
        r.push(with(18, &[0x02, 0, 1]), t0); // metadata
        let order: Vec<(u8, u8)> = r.drain().map(|m| (m.type_id, m.payload[1])).collect();
        assert_eq!(order, vec![(18, 0), (9, 0), (9, 1)]);
        assert!(r.is_empty());
    }
}
