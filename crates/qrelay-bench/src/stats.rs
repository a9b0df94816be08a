//! Measurements: a log-linear histogram (HDR-like, about 1.5% resolution, fixed memory),
//! percentiles, and the per-player frame tracker that turns received frames into
//! latencies, skips and gaps.

use super::synth;

/// Sub-buckets per power of two: values keep their top 7 significant bits.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for values up to `u32::MAX` (exact below `2·SUB`).
const BUCKETS: usize = ((32 - SUB_BITS) as usize + 1) * SUB as usize;

/// A histogram of `u32` values (microseconds here) with bounded relative error
/// (< 1/64) and fixed memory, mergeable.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u32,
    min: u32,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0, max: 0, min: u32::MAX }
    }
}

fn bucket_of(v: u32) -> usize {
    let v = u64::from(v);
    if v < 2 * SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    ((shift as u64 + 1) * SUB + sub) as usize
}

/// Lowest and highest value of a bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    let lo = (SUB + sub) << shift;
    (lo, lo + (1 << shift) - 1)
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, v: u32) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value counted (exact), 0 when empty.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the middle of the bucket holding the
    /// `ceil(q·n)`-th smallest value, clamped to the exact min and max. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                let mid = (lo + hi) / 2;
                let v = u32::try_from(mid).unwrap_or(u32::MAX);
                return Some(v.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// p50/p90/p99/max in milliseconds (values are microseconds).
    pub fn percentiles_ms(&self) -> Option<Percentiles> {
        let ms = |q| self.quantile(q).map(|v| f64::from(v) / 1000.0);
        Some(Percentiles {
            p50: ms(0.50)?,
            p90: ms(0.90)?,
            p99: ms(0.99)?,
            max: f64::from(self.max) / 1000.0,
            count: self.total,
        })
    }
}

/// Summary of a distribution in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: u64,
}

/// Inter-arrival gap above which a player is not counted as ok.
pub const MAX_OK_GAP_US: u64 = 1_000_000;

/// What one player saw, tracked frame by frame without allocating.
#[derive(Debug, Clone, Default)]
pub struct PlayerTracker {
    /// When the play request went out ([`synth::now_us`]).
    pub play_sent_us: u64,
    /// First video frame of any kind.
    pub first_video_us: Option<u64>,
    /// First video keyframe (the first decodable picture).
    pub first_key_us: Option<u64>,
    /// Sequence number of the last marked video frame since the first keyframe.
    last_seq: Option<u64>,
    /// Arrival of the last video frame since the first keyframe.
    last_video_us: u64,
    /// Longest wait between video frames since the first keyframe (including to the end).
    pub max_gap_us: u64,
    /// Marked frames missing from the sequence (frames the relay dropped for this player).
    pub skips: u64,
    /// Video frames received.
    pub video_frames: u64,
    /// Marked frames that arrived out of order or repeated.
    pub reordered: u64,
}

/// What [`PlayerTracker::on_video`] learnt about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Relay latency in microseconds, when the frame was marked and sent after the play
    /// request (frames from a late joiner's GOP cache are older and not latency).
    pub latency_us: Option<u32>,
    /// Frames found missing just before this one.
    pub skipped: u64,
}

impl PlayerTracker {
    /// A tracker for a player whose play request went out at `play_sent_us`.
    pub fn new(play_sent_us: u64) -> Self {
        Self { play_sent_us, ..Self::default() }
    }

    /// Accounts one video payload received at `now_us`.
    pub fn on_video(&mut self, payload: &[u8], now_us: u64) -> Seen {
        self.video_frames += 1;
        self.first_video_us.get_or_insert(now_us);
        let marker = synth::parse_marker(payload);
        let key = match marker {
            Some(m) => m.keyframe,
            None => qrelay_proto::media::frame::inspect_video(payload).keyframe,
        };
        let mut seen = Seen { latency_us: None, skipped: 0 };
        if self.first_key_us.is_none() {
            if !key {
                return seen;
            }
            self.first_key_us = Some(now_us);
            self.last_video_us = now_us;
        }
        self.max_gap_us = self.max_gap_us.max(now_us.saturating_sub(self.last_video_us));
        self.last_video_us = now_us;
        if let Some(synth::Marker { send_us, seq, .. }) = marker {
            match self.last_seq {
                Some(last) if seq > last => {
                    seen.skipped = seq - last - 1;
                    self.last_seq = Some(seq);
                }
                Some(_) => self.reordered += 1,
                None => self.last_seq = Some(seq),
            }
            self.skips += seen.skipped;
            if send_us >= self.play_sent_us {
                let lat = now_us.saturating_sub(send_us);
                seen.latency_us = Some(u32::try_from(lat).unwrap_or(u32::MAX));
            }
        }
        seen
    }

    /// Closes the books at `end_us`: the wait since the last frame counts as a gap.
    pub fn finish(&mut self, end_us: u64) {
        if self.first_key_us.is_some() {
            self.max_gap_us = self.max_gap_us.max(end_us.saturating_sub(self.last_video_us));
        }
    }

    /// Got every frame from its first keyframe on, with no gap over a second.
    pub fn ok(&self) -> bool {
        self.first_key_us.is_some() && self.skips == 0 && self.max_gap_us <= MAX_OK_GAP_US
    }

    /// Play request to first video frame, in microseconds.
    pub fn first_frame_us(&self) -> Option<u64> {
        self.first_video_us.map(|t| t.saturating_sub(self.play_sent_us))
    }

    /// Play request to first keyframe, in microseconds.
    pub fn first_key_delay_us(&self) -> Option<u64> {
        self.first_key_us.map(|t| t.saturating_sub(self.play_sent_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::VideoPlan;

    /// Frame `seq` sent at `send_us`, from a stream with a keyframe every 5 frames.
    fn video_frame(seq: u64, send_us: u64) -> bytes::Bytes {
        VideoPlan::fixed(30, 5, 100).frame(seq, send_us)
    }

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for v in (0..5000u32).chain([65_535, 1 << 20, u32::MAX - 1, u32::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last || v > 5000, "bucket order at {v}");
            last = b;
            let (lo, hi) = bucket_range(b);
            assert!(lo <= u64::from(v) && u64::from(v) <= hi, "{v} not in {lo}..={hi}");
            assert!((hi - lo) as f64 <= lo as f64 / 64.0 + 1.0);
        }
        assert!(bucket_of(u32::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_uniform_values() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=10_000u32 {
            h.record(v);
        }
        let near = |q: f64, want: f64| {
            let got = f64::from(h.quantile(q).unwrap());
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        };
        near(0.5, 5000.0);
        near(0.9, 9000.0);
        near(0.99, 9900.0);
        assert_eq!(h.quantile(1.0), Some(10_000));
        assert_eq!(h.quantile(0.0), Some(1));
        let p = h.percentiles_ms().unwrap();
        assert_eq!(p.max, 10.0);
        assert_eq!(p.count, 10_000);
    }

    #[test]
    fn small_values_are_exact_and_merge_adds() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for _ in 0..99 {
            a.record(3);
        }
        b.record(100);
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert_eq!(a.quantile(0.5), Some(3));
        assert_eq!(a.quantile(0.99), Some(3));
        assert_eq!(a.quantile(1.0), Some(100));
        assert_eq!(a.max(), 100);
    }

    #[test]
    fn tracker_counts_skips_gaps_and_latency() {
        let mut t = PlayerTracker::new(1_000);
        // Inter frame before any keyframe: counted as first frame, not tracked.
        assert_eq!(t.on_video(&video_frame(4, 900), 1_100).latency_us, None);
        assert_eq!(t.first_frame_us(), Some(100));
        // Keyframe from the GOP cache, sent before the play request: no latency.
        let s = t.on_video(&video_frame(5, 500), 1_200);
        assert_eq!(s, Seen { latency_us: None, skipped: 0 });
        assert_eq!(t.first_key_delay_us(), Some(200));
        let s = t.on_video(&video_frame(6, 1_300), 1_400);
        assert_eq!(s, Seen { latency_us: Some(100), skipped: 0 });
        assert!(t.ok());
        // Two frames lost.
        let s = t.on_video(&video_frame(9, 1_500), 1_600);
        assert_eq!(s.skipped, 2);
        assert_eq!(t.skips, 2);
        assert!(!t.ok());
        // A repeat is reordered, not a skip.
        t.on_video(&video_frame(9, 1_500), 1_700);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.video_frames, 5);
    }

    #[test]
    fn tracker_gap_includes_the_end() {
        let mut t = PlayerTracker::new(0);
        t.on_video(&video_frame(0, 10), 20);
        t.on_video(&video_frame(1, 30), 40);
        t.finish(500_000);
        assert!(t.ok());
        t.finish(2_000_000);
        assert!(t.max_gap_us > MAX_OK_GAP_US);
        assert!(!t.ok());
        // A player that never saw a keyframe is not ok.
        let mut t = PlayerTracker::new(0);
        t.finish(10);
        assert!(!t.ok());
    }
}
