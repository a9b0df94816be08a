//! One stream: its publisher claim, the cache a late joiner needs (metadata, sequence
//! headers, the current GOP), and the list of subscriber queues it fans out to.
//!
//! Locking: the stream's mutex guards the cache and the subscriber list, and is held
//! only for in-memory updates, never for a socket write. The list is copy-on-write
//! (`Arc<[Arc<Queue>]>`): a push updates the cache and clones the list's `Arc` under the
//! lock, then fans out from that snapshot without it, so a player joining or leaving
//! waits for a few pointer copies at most, never for a frame's writes. Counters are
//! atomics ([`Counters`]), so a stats read does not wait for fan-out either.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::subscriber::{Queue, Subscriber};
use super::{Hub, HubConfig};
use crate::media::frame::{Frame, MediaKind};

/// How long one frame's direct writes to subscribers may hold up its publisher: about a
/// thousand loopback players' worth, a third of a 30 fps frame interval. The remaining
/// subscribers are woken instead and served by the other workers.
const DIRECT_WRITE_BUDGET: Duration = Duration::from_millis(10);
/// Subscribers written between looks at the clock.
const DIRECT_BUDGET_CHECK_EVERY: usize = 32;

/// A snapshot of a stream's state for logs and the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// A publisher is sending.
    pub live: bool,
    /// Subscribers attached (waiting or playing).
    pub subscribers: usize,
    /// Frames published so far in this publish.
    pub frames: u64,
    /// Frames in the cached GOP.
    pub gop_frames: usize,
    /// Frames subscribers skipped because they fell behind, summed.
    pub skipped: u64,
    /// Largest payload bytes queued for any one subscriber now (bounded by the queue limit
    /// plus one GOP for a late joiner's start).
    pub max_queued_bytes: usize,
    /// The most payload bytes any one subscriber's queue has held since the stream was
    /// created: what `max_queued_bytes` shows only if read at the right moment.
    pub peak_queued_bytes: usize,
    /// Frames the publisher wrote straight to an idle player's socket, summed over
    /// players (the rest went through the players' queues).
    pub direct_writes: u64,
}

#[derive(Debug)]
pub(super) struct Stream {
    session_id: String,
    config: HubConfig,
    state: Mutex<State>,
    counters: Arc<Counters>,
    /// A publisher holds the session ID. Changed only under the hub lock (with `users`).
    claimed: AtomicBool,
    /// Subscribers plus the claimed publisher: the hub removes the entry when this drops
    /// to zero. Changed only under the hub lock, so a join racing a leave cannot pick up
    /// an entry that is being removed; the stream's own lock is not needed for it.
    users: AtomicUsize,
    /// Subscriber count, for whoever must act when it changes (a relay link closing
    /// after its last player left). Sent under the stream lock, so in order.
    watchers: tokio::sync::watch::Sender<usize>,
}

/// A stream's counters, read by stats without any lock and updated where things happen
/// (the queues add their skips here directly).
#[derive(Debug, Default)]
pub(super) struct Counters {
    live: AtomicBool,
    subscribers: AtomicUsize,
    frames: AtomicU64,
    gop_frames: AtomicUsize,
    /// Frames skipped by subscribers, present and gone.
    pub(super) skipped: AtomicU64,
    /// High-water mark of any one subscriber's queued bytes.
    pub(super) peak_queued_bytes: AtomicUsize,
    direct_writes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    live: bool,
    metadata: Option<Frame>,
    /// Sequence headers in arrival order, one per set of E-RTMP tracks (one entry for
    /// all but multitrack streams): a header for track 1 must not evict track 0's.
    video_headers: Vec<Frame>,
    audio_headers: Vec<Frame>,
    /// Frames from the last video keyframe on; empty when the GOP outgrew its bound.
    gop: Vec<Frame>,
    gop_bytes: usize,
    gop_overflowed: bool,
    has_video: bool,
    /// Replaced, never changed in place: a push iterates the copy it cloned.
    subscribers: Snapshot,
}

/// The subscriber list as of one moment.
type Snapshot = Arc<[Arc<Queue>]>;

impl Stream {
    pub(super) fn new(session_id: &str, config: HubConfig) -> Self {
        Self {
            session_id: session_id.to_owned(),
            config,
            state: Mutex::default(),
            counters: Arc::default(),
            claimed: AtomicBool::new(false),
            users: AtomicUsize::new(0),
            watchers: tokio::sync::watch::Sender::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent at each await-free step, so a
        // poisoned lock (a panic elsewhere) still guards valid data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Claims the publisher role; `false` when another publisher has it. Hub lock held.
    pub(super) fn claim_publisher(&self) -> bool {
        let claimed = !self.claimed.swap(true, Ordering::Relaxed);
        if claimed {
            self.users.fetch_add(1, Ordering::Relaxed);
        }
        claimed
    }

    /// Gives the publisher role up; `true` when the stream is now unused. Hub lock held.
    pub(super) fn unclaim_publisher(&self) -> bool {
        self.claimed.store(false, Ordering::Relaxed);
        self.remove_user()
    }

    /// One more subscriber is on its way in. Hub lock held.
    pub(super) fn add_user(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    /// A subscriber or the publisher left; `true` when nobody is left. Hub lock held.
    pub(super) fn remove_user(&self) -> bool {
        self.users.fetch_sub(1, Ordering::Relaxed) == 1
    }

    /// Starts a publish (after [`Stream::claim_publisher`], outside the hub lock):
    /// resets the cache and wakes the players waiting for it.
    pub(super) fn start_publish(&self) {
        let mut st = self.state();
        *st = State { live: true, subscribers: st.subscribers.clone(), ..State::default() };
        self.counters.frames.store(0, Ordering::Relaxed);
        self.counters.gop_frames.store(0, Ordering::Relaxed);
        self.counters.live.store(true, Ordering::Relaxed);
        for q in st.subscribers.iter() {
            q.go_live();
        }
    }

    pub(super) fn subscribe(self: &Arc<Self>, hub: Hub) -> Subscriber {
        let queue = Arc::new(Queue::new(self.config.queue, self.counters.clone()));
        let mut st = self.state();
        if st.live {
            // Metadata goes out at the joiner's start (the cached GOP's first frame), not
            // at the time it was published: seconds or hours before everything else the
            // joiner gets, ffmpeg takes it for a stream of its own (a phantom subtitle).
            let start = st.gop.first().map(Frame::timestamp);
            let metadata = st.metadata.as_ref().map(|m| match start {
                Some(ts) if ts != m.timestamp() => Frame::new(m.kind(), ts, m.payload().clone()),
                _ => m.clone(),
            });
            let snapshot = metadata
                .into_iter()
                .chain(st.video_headers.iter().cloned())
                .chain(st.audio_headers.iter().cloned())
                .chain(st.gop.iter().cloned());
            queue.start_with(snapshot);
        }
        st.subscribers = st.subscribers.iter().cloned().chain(std::iter::once(queue.clone())).collect();
        self.counters.subscribers.store(st.subscribers.len(), Ordering::Relaxed);
        self.watchers.send_replace(st.subscribers.len());
        drop(st);
        Subscriber::new(queue, self.clone(), hub)
    }

    pub(super) fn unsubscribe(&self, queue: &Arc<Queue>) {
        let mut st = self.state();
        if st.subscribers.iter().any(|q| Arc::ptr_eq(q, queue)) {
            st.subscribers = st.subscribers.iter().filter(|q| !Arc::ptr_eq(q, queue)).cloned().collect();
            self.counters.subscribers.store(st.subscribers.len(), Ordering::Relaxed);
            self.watchers.send_replace(st.subscribers.len());
        }
    }

    /// Publishes one frame: updates the cache and pushes it to every subscriber, into its
    /// queue or straight into its idle socket. Never waits on a subscriber: a push is a
    /// short lock and a wake-up, or a write that does not wait. The stream lock is held
    /// only to update the cache and take the subscriber snapshot.
    ///
    /// Called only through `&mut Publisher`, so pushes never overlap: the fan-out order
    /// is the publish order, and the publisher's counters have a single writer.
    pub(super) fn push(&self, frame: Frame) {
        let (subscribers, has_video) = {
            let mut st = self.state();
            match frame.kind() {
                MediaKind::Data => {
                    if crate::rtmp::message::data_name(frame.payload()).as_deref() == Some("onMetaData") {
                        st.metadata = Some(frame.clone());
                    }
                }
                MediaKind::Video if frame.is_sequence_header() => {
                    st.has_video = true;
                    cache_header(&mut st.video_headers, &frame);
                }
                MediaKind::Audio if frame.is_sequence_header() => cache_header(&mut st.audio_headers, &frame),
                MediaKind::Video => {
                    st.has_video = true;
                    if frame.is_keyframe() {
                        st.gop.clear();
                        st.gop_bytes = 0;
                        st.gop_overflowed = false;
                    }
                    self.cache_in_gop(&mut st, &frame);
                }
                MediaKind::Audio => self.cache_in_gop(&mut st, &frame),
            }
            self.counters.gop_frames.store(st.gop.len(), Ordering::Relaxed);
            (st.subscribers.clone(), st.has_video)
        };
        // Single writer (the publisher): a load and a store, no locked instruction.
        let c = &self.counters;
        c.frames.store(c.frames.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Direct writes run on the publisher's task, from the snapshot, with no stream or
        // hub lock held (a player joining or leaving meanwhile does not wait for them; one
        // that joined is in the next frame's snapshot, one that left has closed its
        // queue). Past a time budget per frame the rest of the subscribers are woken
        // instead, so a huge fan-out spreads over the other workers rather than holding
        // up this publisher's reads.
        // (No clock read for a fan-out too small to reach the first check.)
        let start = (subscribers.len() >= DIRECT_BUDGET_CHECK_EVERY).then(Instant::now);
        let mut direct = true;
        let mut direct_writes = 0;
        for (i, q) in subscribers.iter().enumerate() {
            if direct && i % DIRECT_BUDGET_CHECK_EVERY == DIRECT_BUDGET_CHECK_EVERY - 1 {
                direct = start.is_some_and(|t| t.elapsed() < DIRECT_WRITE_BUDGET);
            }
            direct_writes += u64::from(q.push(&frame, has_video, direct));
        }
        if direct_writes > 0 {
            c.direct_writes.store(c.direct_writes.load(Ordering::Relaxed) + direct_writes, Ordering::Relaxed);
        }
    }

    fn cache_in_gop(&self, st: &mut State, frame: &Frame) {
        // A late joiner's first picture must be a keyframe, so the cache starts at one;
        // audio-only streams need no cache (every audio frame is a starting point).
        let starts_gop = frame.kind() == MediaKind::Video && frame.is_keyframe();
        if st.gop_overflowed || !st.has_video || (st.gop.is_empty() && !starts_gop) {
            return;
        }
        st.gop_bytes += frame.payload().len();
        if st.gop_bytes > self.config.max_gop_bytes {
            st.gop.clear();
            st.gop_bytes = 0;
            st.gop_overflowed = true;
        } else {
            st.gop.push(frame.clone());
        }
    }

    pub(super) fn end_publish(&self) {
        let mut st = self.state();
        st.live = false;
        st.metadata = None;
        st.video_headers.clear();
        st.audio_headers.clear();
        st.gop.clear();
        st.gop_bytes = 0;
        self.counters.live.store(false, Ordering::Relaxed);
        self.counters.gop_frames.store(0, Ordering::Relaxed);
        let subscribers = st.subscribers.clone();
        drop(st);
        for q in subscribers.iter() {
            q.end();
        }
    }

    /// Follows the subscriber count.
    pub(super) fn watch_subscribers(&self) -> tokio::sync::watch::Receiver<usize> {
        self.watchers.subscribe()
    }

    /// Whether a publisher is sending; no lock.
    pub(super) fn is_live(&self) -> bool {
        self.counters.live.load(Ordering::Relaxed)
    }

    /// Counters without any lock, but for `max_queued_bytes`, which needs the subscriber
    /// list: the stream lock for one `Arc` clone, then the queues' atomics.
    pub(super) fn stats(&self) -> StreamStats {
        let c = &self.counters;
        let subscribers = self.state().subscribers.clone();
        StreamStats {
            live: c.live.load(Ordering::Relaxed),
            subscribers: c.subscribers.load(Ordering::Relaxed),
            frames: c.frames.load(Ordering::Relaxed),
            gop_frames: c.gop_frames.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            max_queued_bytes: subscribers.iter().map(|q| q.queued_bytes()).max().unwrap_or(0),
            peak_queued_bytes: c.peak_queued_bytes.load(Ordering::Relaxed),
            direct_writes: c.direct_writes.load(Ordering::Relaxed),
        }
    }
}

/// The right to publish one session ID; dropping it ends the stream for every subscriber.
#[derive(Debug)]
pub struct Publisher {
    stream: Arc<Stream>,
    hub: Hub,
}

impl Publisher {
    pub(super) fn new(stream: Arc<Stream>, hub: Hub) -> Self {
        Self { stream, hub }
    }

    /// Fans a frame out to every subscriber and updates the late-joiner cache. `&mut`:
    /// the fan-out runs outside the stream lock, so it is the one `Publisher` that keeps
    /// frames in order (and its counters single-writer).
    pub fn send(&mut self, frame: Frame) {
        self.stream.push(frame);
    }

    /// The session ID published.
    pub fn session_id(&self) -> &str {
        self.stream.session_id()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stream.end_publish();
        self.hub.unpublished(&self.stream);
    }
}

/// Sequence headers kept per kind at most: E-RTMP allows 256 tracks, a publisher that
/// configures more than this many separately gets its oldest forgotten.
const MAX_HEADERS: usize = 16;

/// Caches a sequence header: it replaces those for a subset of its tracks (a newer
/// configuration of the same tracks) and keeps the others.
fn cache_header(headers: &mut Vec<Frame>, frame: &Frame) {
    let tracks = frame.tracks();
    headers.retain(|h| !h.tracks().is_subset_of(&tracks));
    if headers.len() >= MAX_HEADERS {
        headers.remove(0);
    }
    headers.push(frame.clone());
}
