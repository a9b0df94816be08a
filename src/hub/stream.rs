//! One stream: its publisher claim, the cache a late joiner needs (metadata, sequence
//! headers, the current GOP), and the list of subscriber queues it fans out to.

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
    /// Frames the publisher wrote straight to an idle player's socket, summed over
    /// players (the rest went through the players' queues).
    pub direct_writes: u64,
}

#[derive(Debug)]
pub(super) struct Stream {
    session_id: String,
    config: HubConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    live: bool,
    frames: u64,
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
    subscribers: Vec<Arc<Queue>>,
    skipped_by_gone: u64,
    direct_writes: u64,
}

impl Stream {
    pub(super) fn new(session_id: &str, config: HubConfig) -> Self {
        Self { session_id: session_id.to_owned(), config, state: Mutex::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent at each await-free step, so a
        // poisoned lock (a panic elsewhere) still guards valid data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn session_id(&self) -> &str {
        &self.session_id
    }

    pub(super) fn claim_publisher(&self) -> bool {
        let mut st = self.state();
        if st.live {
            return false;
        }
        *st = State { live: true, subscribers: std::mem::take(&mut st.subscribers), ..State::default() };
        for q in &st.subscribers {
            q.go_live();
        }
        true
    }

    pub(super) fn is_unused(&self) -> bool {
        let st = self.state();
        !st.live && st.subscribers.is_empty()
    }

    pub(super) fn subscribe(self: &Arc<Self>, hub: Hub) -> Subscriber {
        let mut st = self.state();
        let queue = Arc::new(Queue::new(self.config.queue));
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
        st.subscribers.push(queue.clone());
        Subscriber::new(queue, self.clone(), hub)
    }

    pub(super) fn unsubscribe(&self, queue: &Arc<Queue>) {
        let mut st = self.state();
        if let Some(pos) = st.subscribers.iter().position(|q| Arc::ptr_eq(q, queue)) {
            let q = st.subscribers.swap_remove(pos);
            st.skipped_by_gone += q.skipped();
        }
    }

    /// Publishes one frame: updates the cache and pushes it to every subscriber, into its
    /// queue or straight into its idle socket. Never waits on a subscriber: a push is a
    /// short lock and a wake-up, or a write that does not wait.
    pub(super) fn push(&self, frame: Frame) {
        let mut st = self.state();
        st.frames += 1;
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
        let has_video = st.has_video;
        // Direct writes run on the publisher's task, under the stream lock (a player
        // joining or leaving waits for them). Past a time budget per frame the rest of
        // the subscribers are woken instead, so a huge fan-out spreads over the other
        // workers rather than holding up this publisher's reads.
        // (No clock read for a fan-out too small to reach the first check.)
        let start = (st.subscribers.len() >= DIRECT_BUDGET_CHECK_EVERY).then(Instant::now);
        let mut direct = true;
        let mut direct_writes = 0;
        for (i, q) in st.subscribers.iter().enumerate() {
            if direct && i % DIRECT_BUDGET_CHECK_EVERY == DIRECT_BUDGET_CHECK_EVERY - 1 {
                direct = start.is_some_and(|t| t.elapsed() < DIRECT_WRITE_BUDGET);
            }
            direct_writes += u64::from(q.push(&frame, has_video, direct));
        }
        st.direct_writes += direct_writes;
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
        for q in &st.subscribers {
            q.end();
        }
    }

    pub(super) fn stats(&self) -> StreamStats {
        let st = self.state();
        StreamStats {
            live: st.live,
            subscribers: st.subscribers.len(),
            frames: st.frames,
            gop_frames: st.gop.len(),
            skipped: st.skipped_by_gone + st.subscribers.iter().map(|q| q.skipped()).sum::<u64>(),
            max_queued_bytes: st.subscribers.iter().map(|q| q.queued_bytes()).max().unwrap_or(0),
            direct_writes: st.direct_writes,
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

    /// Fans a frame out to every subscriber and updates the late-joiner cache.
    pub fn send(&self, frame: Frame) {
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
