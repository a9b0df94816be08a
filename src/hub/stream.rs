//! One stream: its publisher claim (with the grace after a publisher went away), the
//! timeline that keeps timestamps increasing across publishers, the cache a late joiner
//! needs (metadata, sequence headers, the current GOP), and the list of subscriber queues
//! it fans out to.
//!
//! Locking: `publishing` (the claim and the timeline) serialises publishers: it is held
//! over a whole push, cache update and fan-out, so one publisher's frames go out in
//! order, and a new publisher taking over waits for its predecessor's frame in flight
//! instead of interleaving with it. Only publishers (and a publish request or a grace
//! deadline) take it; players never do. Under it, the stream's `state` mutex guards the
//! cache and the subscriber list, and is held only for in-memory updates, never for a
//! socket write. The list is copy-on-write
//! (`Arc<[Arc<Queue>]>`): a push updates the cache and clones the list's `Arc` under the
//! lock, then fans out from that snapshot without it, so a player joining or leaving
//! waits for a few pointer copies at most, never for a frame's writes. Counters are
//! atomics ([`Counters`]), so a stats read does not wait for fan-out either.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::claim::{Claim, Claimed, Lost, Takeover};
use super::coalesce::{Coalescer, Offer};
use super::peer::{Peer, PublisherInfo, StreamInfo};
use super::subscriber::{Pushed, Queue, Subscriber};
use super::timeline::Timeline;
use super::{EventCounters, Hub, HubConfig, HubError};
use crate::media::frame::{self, Frame, MediaKind};

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
    /// Socket writes (system calls) those frames took, summed over players: below
    /// `direct_writes` when frames were coalesced (`write_coalesce_ms`).
    pub direct_sends: u64,
    /// The publisher went away and the stream waits for a new one (`publisher_grace_ms`),
    /// its players kept.
    pub grace: bool,
    /// Times a new publisher continued this stream (after a grace or a takeover).
    pub resumes: u64,
}

#[derive(Debug)]
pub(super) struct Stream {
    session_id: String,
    config: HubConfig,
    /// The claim and the timeline; held over a whole push (see the module docs).
    publishing: Mutex<Publishing>,
    state: Mutex<State>,
    counters: Arc<Counters>,
    /// The hub's publisher events (graces, resumes, expiries, takeovers).
    events: Arc<EventCounters>,
    /// The active publisher's generation, for a replaced publisher to learn it was.
    current: watch::Sender<u64>,
    /// Subscribers plus one for a claim (active or in grace): the hub removes the entry
    /// when this drops to zero. Changed only under the hub lock, so a join racing a leave
    /// cannot pick up an entry that is being removed; the stream's own lock is not needed
    /// for it.
    users: AtomicUsize,
    /// Subscriber count, for whoever must act when it changes (a relay link closing
    /// after its last player left). Sent under the stream lock, so in order.
    watchers: tokio::sync::watch::Sender<usize>,
    /// Wakes the stream's flush timer when a held batch gets a deadline (and when the
    /// stream goes, so the timer ends).
    flush_wake: Arc<Notify>,
    /// Whether the flush timer runs: set at the first held batch; `false` without a
    /// runtime to run it on (then nothing is held).
    flusher: OnceLock<bool>,
}

/// Who publishes, and how their timestamps map to the stream's.
#[derive(Debug, Default)]
struct Publishing {
    claim: Claim,
    timeline: Timeline,
    /// What the timeline let out for one input frame; kept to reuse its allocation.
    out: Vec<Frame>,
    /// Frames held for the players' next write (`coalesce.rs`).
    coalescer: Coalescer,
    /// A batch being fanned out; kept to reuse its allocation.
    batch: Vec<Frame>,
    /// One player's wire buffers for a batch; kept to reuse its allocation.
    scratch: Vec<Bytes>,
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
    direct_sends: AtomicU64,
    grace: AtomicBool,
    resumes: AtomicU64,
    /// Media payload bytes published (single writer: the publisher, under `publishing`).
    bytes_in: AtomicU64,
    /// Payload bytes sent to subscribers that have since left (each queue counts its
    /// own while it lives, so players never share a counter).
    bytes_out_departed: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    live: bool,
    /// Who publishes, and since when (for the control API).
    publisher: Option<Arc<Peer>>,
    publish_since: Option<std::time::SystemTime>,
    /// Codecs seen in this publish (sequence headers, or the first frame of a format
    /// that has none).
    video_codec: Option<Arc<str>>,
    audio_codec: Option<Arc<str>>,
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
    pub(super) fn new(session_id: &str, config: HubConfig, events: Arc<EventCounters>) -> Self {
        Self {
            session_id: session_id.to_owned(),
            config,
            publishing: Mutex::new(Publishing {
                coalescer: Coalescer::new(
                    config.write_coalesce,
                    config.write_coalesce_bytes,
                    config.write_coalesce_video,
                ),
                ..Publishing::default()
            }),
            state: Mutex::default(),
            counters: Arc::default(),
            events,
            current: watch::Sender::new(0),
            users: AtomicUsize::new(0),
            watchers: tokio::sync::watch::Sender::new(0),
            flush_wake: Arc::default(),
            flusher: OnceLock::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent at each await-free step, so a
        // poisoned lock (a panic elsewhere) still guards valid data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publishing(&self) -> MutexGuard<'_, Publishing> {
        // As for `state`: every step leaves the claim and the timeline valid.
        self.publishing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn session_id(&self) -> &str {
        &self.session_id
    }

    /// One more user (a subscriber, or a publish request on its way to a claim). Hub lock
    /// held.
    pub(super) fn add_user(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    /// A subscriber, a refused request or a claim left; `true` when nobody is left. Hub
    /// lock held.
    pub(super) fn remove_user(&self) -> bool {
        self.users.fetch_sub(1, Ordering::Relaxed) == 1
    }

    /// Claims the publisher role (outside the hub lock; the request is counted as a user).
    /// A fresh stream takes a publisher slot from `reserve` (which refuses when the relay
    /// is full); a resume or a takeover continues the stream for the players attached,
    /// with the new publisher's frames held back until its first keyframe and shifted to
    /// follow what they got. Returns the new publisher's generation.
    pub(super) fn claim(
        &self,
        now: Instant,
        takeover: Takeover,
        reserve: impl FnOnce() -> bool,
    ) -> Result<(u64, Claimed), HubError> {
        let mut p = self.publishing();
        let Some(claimed) = p.claim.decide(now, takeover, self.config.publisher_takeover) else {
            return Err(HubError::AlreadyPublishing(self.session_id.clone()));
        };
        if claimed == Claimed::Fresh && !reserve() {
            return Err(HubError::TooManyPublishers(self.config.max_publishers));
        }
        // A predecessor's held frames go out before anything of the new publisher.
        self.flush(&mut p);
        let generation = p.claim.commit(now, takeover);
        match claimed {
            Claimed::Fresh => p.timeline.reset(),
            Claimed::Resumed(after) => {
                p.timeline.resume();
                self.events.resumed.fetch_add(1, Ordering::Relaxed);
                info!(session_id = %self.session_id, after_ms = after.as_millis() as u64,
                    "a new publisher resumes the stream within its grace; players kept");
            }
            Claimed::TookOver(silent) => {
                p.timeline.resume();
                self.events.taken_over.fetch_add(1, Ordering::Relaxed);
                warn!(session_id = %self.session_id, silent_ms = silent.as_millis() as u64,
                    "a new publisher replaces the current one, which sent nothing for this long; players kept");
            }
        }
        if claimed != Claimed::Fresh {
            self.counters.resumes.fetch_add(1, Ordering::Relaxed);
        }
        self.start_publish();
        self.current.send_replace(generation);
        Ok((generation, claimed))
    }

    /// Starts a publish (fresh or continued, claim held): resets the cache and wakes the
    /// players waiting for it.
    fn start_publish(&self) {
        let mut st = self.state();
        *st = State {
            live: true,
            publish_since: Some(std::time::SystemTime::now()),
            subscribers: st.subscribers.clone(),
            ..State::default()
        };
        self.counters.frames.store(0, Ordering::Relaxed);
        self.counters.gop_frames.store(0, Ordering::Relaxed);
        self.counters.grace.store(false, Ordering::Relaxed);
        self.counters.live.store(true, Ordering::Relaxed);
        for q in st.subscribers.iter() {
            q.go_live();
        }
    }

    /// A receiver of the active publisher's generation.
    pub(super) fn watch_current(&self) -> watch::Receiver<u64> {
        self.current.subscribe()
    }

    /// Publisher `generation` went away without ending its stream. With players attached
    /// and a `grace`, they stay and the stream waits for a new publisher until the
    /// returned deadline; otherwise it ends now. `closing` (the relay shutting down)
    /// means no grace: it is read under the claim's lock, so a grace never starts after
    /// [`Stream::end_grace`] looked.
    pub(super) fn lose(&self, generation: u64, now: Instant, grace: Duration, closing: &AtomicBool) -> Lost {
        let mut p = self.publishing();
        self.flush(&mut p);
        let keep =
            !grace.is_zero() && !closing.load(Ordering::SeqCst) && !self.state().subscribers.is_empty();
        let lost = p.claim.lose(generation, now, if keep { grace } else { Duration::ZERO });
        match lost {
            Lost::NotCurrent => {}
            Lost::Ended => self.end_publish(),
            Lost::Grace(_) => {
                self.events.graces.fetch_add(1, Ordering::Relaxed);
                info!(session_id = %self.session_id, grace_ms = grace.as_millis() as u64,
                    "publisher gone; its players wait for a new one");
                self.pause();
            }
        }
        lost
    }

    /// Publisher `generation` ended its stream: `true` when it was the active one.
    pub(super) fn finish(&self, generation: u64) -> bool {
        let mut p = self.publishing();
        self.flush(&mut p);
        let ended = p.claim.finish(generation);
        if ended {
            self.end_publish();
        }
        ended
    }

    /// The grace of `generation` ran out at `now` (unless a publisher resumed): ends the
    /// stream for its players. `true` when it did.
    pub(super) fn expire(&self, generation: u64, now: Instant) -> bool {
        let mut p = self.publishing();
        let ended = p.claim.expire(generation, now);
        if ended {
            self.events.expired.fetch_add(1, Ordering::Relaxed);
            warn!(session_id = %self.session_id, "no publisher returned within the grace; ending its players");
            self.end_publish();
        }
        ended
    }

    /// Ends a grace now (shutdown): `true` when there was one.
    pub(super) fn end_grace(&self) -> bool {
        let mut p = self.publishing();
        let ended = p.claim.end_grace();
        if ended {
            self.end_publish();
        }
        ended
    }

    /// The publisher is gone but its players stay: nothing is live, the cache goes (a new
    /// publisher brings its own), the queues stay as they are.
    fn pause(&self) {
        let mut st = self.state();
        *st = State { subscribers: st.subscribers.clone(), ..State::default() };
        self.counters.live.store(false, Ordering::Relaxed);
        self.counters.gop_frames.store(0, Ordering::Relaxed);
        self.counters.grace.store(true, Ordering::Relaxed);
    }

    pub(super) fn subscribe(self: &Arc<Self>, hub: Hub) -> Subscriber {
        let queue = Arc::new(Queue::new(self.config.queue, self.counters.clone()));
        let mut st = self.state();
        if st.live {
            Self::start_late_joiner(&st, &queue);
        }
        st.subscribers = st.subscribers.iter().cloned().chain(std::iter::once(queue.clone())).collect();
        self.counters.subscribers.store(st.subscribers.len(), Ordering::Relaxed);
        self.watchers.send_replace(st.subscribers.len());
        drop(st);
        Subscriber::new(queue, self.clone(), hub)
    }

    /// Queues what a late joiner starts with: metadata, sequence headers, the cached GOP.
    /// Stream lock held, so no push lands between the cache read and the queue's start.
    fn start_late_joiner(st: &State, queue: &Queue) {
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

    /// Puts a new queue, started as a late joiner's, in the place of `old`, which is
    /// closed; `None` (and nothing changed) when the publish `old` followed is over. In a
    /// grace the stream is not over: the new queue starts empty and gets the resume.
    /// A new queue rather than `old` refilled: a push between its cache update and its
    /// fan-out would otherwise put its frame in `old` twice (from the cache and from its
    /// snapshot of the list, which holds `old` but not the new queue).
    pub(super) fn rejoin(&self, old: &Arc<Queue>) -> Option<Arc<Queue>> {
        let mut st = self.state();
        // `grace` changes only under the stream lock held here.
        let grace = self.counters.grace.load(Ordering::Relaxed);
        if !(st.live || grace) || old.is_ended() || !st.subscribers.iter().any(|q| Arc::ptr_eq(q, old)) {
            return None;
        }
        let queue = Arc::new(Queue::new(self.config.queue, self.counters.clone()));
        queue.inherit(old);
        if st.live {
            Self::start_late_joiner(&st, &queue);
        } else {
            queue.go_live();
        }
        st.subscribers = st
            .subscribers
            .iter()
            .map(|q| if Arc::ptr_eq(q, old) { queue.clone() } else { q.clone() })
            .collect();
        drop(st);
        old.close();
        Some(queue)
    }

    pub(super) fn unsubscribe(&self, queue: &Arc<Queue>) {
        let mut st = self.state();
        if st.subscribers.iter().any(|q| Arc::ptr_eq(q, queue)) {
            st.subscribers = st.subscribers.iter().filter(|q| !Arc::ptr_eq(q, queue)).cloned().collect();
            self.counters.subscribers.store(st.subscribers.len(), Ordering::Relaxed);
            self.watchers.send_replace(st.subscribers.len());
            // Under the stream lock, with the list change: a reader sums the departed
            // and the present either both before or both after.
            self.counters.bytes_out_departed.fetch_add(queue.bytes_sent(), Ordering::Relaxed);
        }
    }

    /// Publishes a batch of frames (one, unless they were held for a coalesced write):
    /// updates the cache and pushes them to every subscriber, into its queue or straight
    /// into its idle socket, a batch in one write. Never waits on a subscriber: a push is
    /// a short lock and a wake-up, or a write that does not wait. The stream lock is held
    /// only to update the cache and take the subscriber snapshot.
    ///
    /// Runs under the `publishing` lock (see [`Stream::send`]), so pushes never overlap:
    /// the fan-out order is the publish order, and the publisher's counters have a single
    /// writer.
    fn push(&self, frames: &[Frame], scratch: &mut Vec<Bytes>) {
        let (subscribers, has_video) = {
            let mut st = self.state();
            for frame in frames {
                match frame.kind() {
                    MediaKind::Data => {
                        if crate::rtmp::message::data_name(frame.payload()).as_deref() == Some("onMetaData") {
                            st.metadata = Some(frame.clone());
                        }
                    }
                    MediaKind::Video if frame.is_sequence_header() => {
                        st.has_video = true;
                        cache_header(&mut st.video_headers, frame);
                        if let Some(name) = frame::codec_name(MediaKind::Video, frame.payload()) {
                            st.video_codec = Some(name.into());
                        }
                    }
                    MediaKind::Audio if frame.is_sequence_header() => {
                        cache_header(&mut st.audio_headers, frame);
                        if let Some(name) = frame::codec_name(MediaKind::Audio, frame.payload()) {
                            st.audio_codec = Some(name.into());
                        }
                    }
                    MediaKind::Audio if st.audio_codec.is_none() => {
                        // Formats without a configuration record (MP3, G.711...) are named by
                        // their first frame.
                        if let Some(name) = frame::codec_name(MediaKind::Audio, frame.payload()) {
                            st.audio_codec = Some(name.into());
                        }
                        self.cache_in_gop(&mut st, frame);
                    }
                    MediaKind::Video => {
                        st.has_video = true;
                        if frame.is_keyframe() {
                            st.gop.clear();
                            st.gop_bytes = 0;
                            st.gop_overflowed = false;
                        }
                        self.cache_in_gop(&mut st, frame);
                    }
                    MediaKind::Audio => self.cache_in_gop(&mut st, frame),
                }
            }
            self.counters.gop_frames.store(st.gop.len(), Ordering::Relaxed);
            (st.subscribers.clone(), st.has_video)
        };
        // Single writer (the publisher): a load and a store, no locked instruction.
        let c = &self.counters;
        c.frames.store(c.frames.load(Ordering::Relaxed) + frames.len() as u64, Ordering::Relaxed);
        let len: u64 = frames.iter().map(|f| f.payload().len() as u64).sum();
        c.bytes_in.store(c.bytes_in.load(Ordering::Relaxed) + len, Ordering::Relaxed);
        // Direct writes run on the publisher's task (or the flush timer's), from the
        // snapshot, with no stream or hub lock held (a player joining or leaving meanwhile
        // does not wait for them; one that joined is in the next frame's snapshot, one
        // that left has closed its queue). Past a time budget per batch the rest of the
        // subscribers are woken instead, so a huge fan-out spreads over the other workers
        // rather than holding up this publisher's reads.
        // (No clock read for a fan-out too small to reach the first check.)
        let start = (subscribers.len() >= DIRECT_BUDGET_CHECK_EVERY).then(Instant::now);
        let mut direct = true;
        let mut total = Pushed::default();
        for (i, q) in subscribers.iter().enumerate() {
            if direct && i % DIRECT_BUDGET_CHECK_EVERY == DIRECT_BUDGET_CHECK_EVERY - 1 {
                direct = start.is_some_and(|t| t.elapsed() < DIRECT_WRITE_BUDGET);
            }
            let pushed = q.push(frames, has_video, direct, scratch);
            total.frames += pushed.frames;
            total.sends += pushed.sends;
        }
        if total.sends > 0 {
            c.direct_writes.store(c.direct_writes.load(Ordering::Relaxed) + total.frames, Ordering::Relaxed);
            c.direct_sends.store(c.direct_sends.load(Ordering::Relaxed) + total.sends, Ordering::Relaxed);
        }
    }

    /// A frame of publisher `generation`: ignored unless it is the active one; otherwise
    /// through the timeline (held, dropped, shifted) and the coalescer (written now or
    /// with the next batch) into the cache and to every subscriber.
    pub(super) fn send(self: &Arc<Self>, generation: u64, frame: Frame) {
        let mut p = self.publishing();
        if !p.claim.media(generation, Instant::now()) {
            return;
        }
        let p = &mut *p;
        let waiting = p.timeline.waiting();
        p.timeline.input(frame, &mut p.out);
        if waiting && !p.timeline.waiting() {
            info!(session_id = %self.session_id, offset_ms = p.timeline.offset(),
                "stream resumed at the new publisher's first keyframe; its timestamps shifted to follow");
        }
        let now = tokio::time::Instant::now();
        let mut out = std::mem::take(&mut p.out);
        for f in out.drain(..) {
            match p.coalescer.offer(f, now) {
                Offer::Hold { armed: false, .. } => {}
                // A new deadline: the timer hears of it (without one, nothing is held).
                Offer::Hold { armed: true, .. } if self.wake_flusher() => {}
                Offer::Hold { .. } | Offer::Flush => self.write_batch(p, now),
            }
        }
        p.out = out;
    }

    /// Fans out the held batch now (taken as written at `now`).
    fn write_batch(&self, p: &mut Publishing, now: tokio::time::Instant) {
        p.coalescer.take(now, &mut p.batch);
        self.push(&p.batch, &mut p.scratch);
        p.batch.clear();
    }

    /// Writes whatever is held (a publish ending or changing hands goes out whole first).
    fn flush(&self, p: &mut Publishing) {
        if p.coalescer.is_holding() {
            self.write_batch(p, tokio::time::Instant::now());
        }
    }

    /// The flush timer's turn: writes the held batch if it is due at `now`. Returns when
    /// the next one is due (`None`: nothing held).
    fn flush_due(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let mut p = self.publishing();
        let p = &mut *p;
        match p.coalescer.due() {
            Some(due) if due <= now => {
                self.write_batch(p, now);
                None
            }
            due => due,
        }
    }

    /// Tells the stream's flush timer of a new deadline, starting it first if need be.
    /// `false` when there is no runtime to run it on.
    fn wake_flusher(self: &Arc<Self>) -> bool {
        let running = *self.flusher.get_or_init(|| match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(flush_when_due(Arc::downgrade(self), self.flush_wake.clone()));
                true
            }
            Err(_) => false,
        });
        if running {
            self.flush_wake.notify_one();
        }
        running
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

    /// The stream ended (claim released by the caller): its players get the end of
    /// stream; players that joined during a grace keep waiting for a publisher.
    fn end_publish(&self) {
        let mut st = self.state();
        st.live = false;
        st.publisher = None;
        st.publish_since = None;
        st.metadata = None;
        st.video_headers.clear();
        st.audio_headers.clear();
        st.gop.clear();
        st.gop_bytes = 0;
        self.counters.live.store(false, Ordering::Relaxed);
        self.counters.grace.store(false, Ordering::Relaxed);
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
            direct_sends: c.direct_sends.load(Ordering::Relaxed),
            grace: c.grace.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
        }
    }

    /// Names the session publishing generation `generation` (if it is still the current
    /// one), for the control API.
    fn identify_publisher(&self, generation: u64, peer: Arc<Peer>) {
        let mut st = self.state();
        if st.live && *self.current.borrow() == generation {
            st.publisher = Some(peer);
        }
    }

    /// The subscriber whose peer has id `id`.
    pub(super) fn player(&self, id: u64) -> Option<Arc<Peer>> {
        let subscribers = self.state().subscribers.clone();
        subscribers.iter().filter_map(|q| q.peer()).find(|p| p.id == id).cloned()
    }

    /// The publisher (if any, and named) of this stream.
    pub(super) fn publisher(&self) -> Option<Arc<Peer>> {
        self.state().publisher.clone()
    }

    /// Everything the control API shows about this stream: one stream lock for a few
    /// clones, then the queues' atomics.
    pub(super) fn info(&self) -> StreamInfo {
        let (subscribers, departed, publisher, gop_bytes) = {
            let st = self.state();
            let publisher = st.publish_since.filter(|_| st.live).map(|since| PublisherInfo {
                peer: st.publisher.clone(),
                since,
                video_codec: st.video_codec.clone(),
                audio_codec: st.audio_codec.clone(),
            });
            // Departed bytes read under the same lock that moves a leaving queue's count.
            let departed = self.counters.bytes_out_departed.load(Ordering::Relaxed);
            (st.subscribers.clone(), departed, publisher, st.gop_bytes)
        };
        let players: Vec<_> = subscribers.iter().map(|q| q.info()).collect();
        let bytes_out = departed + players.iter().map(|p| p.bytes_sent).sum::<u64>();
        let mut stats = self.stats();
        stats.subscribers = subscribers.len();
        StreamInfo {
            session_id: self.session_id.clone(),
            publisher,
            players,
            stats,
            bytes_in: self.counters.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            gop_bytes,
        }
    }
}

/// The right to publish one session ID. Dropping it means the publisher went away: its
/// players stay for `publisher_grace_ms`, waiting for a new publisher to resume the
/// stream, then get the end of stream. [`Publisher::finish`] ends the stream at once.
#[derive(Debug)]
pub struct Publisher {
    stream: Arc<Stream>,
    hub: Hub,
    generation: u64,
    current: watch::Receiver<u64>,
    /// Ended on purpose (unpublish), not lost.
    finished: bool,
    /// The hops to announce to the hub's watcher at the first frame; `None` once done,
    /// or for a publisher that continues a stream (it was announced when it started).
    announce: Option<u32>,
}

impl Publisher {
    pub(super) fn new(stream: Arc<Stream>, hub: Hub, generation: u64, announce: Option<u32>) -> Self {
        let current = stream.watch_current();
        Self { stream, hub, generation, current, finished: false, announce }
    }

    /// Fans a frame out to every subscriber and updates the late-joiner cache. After a
    /// resume the frame may be held, dropped or re-stamped (`timeline.rs`). Frames of a
    /// publisher that was replaced are ignored. The first frame of a fresh publish
    /// announces it to the hub's watcher first ([`super::LiveWatcher`]).
    pub fn send(&mut self, frame: Frame) {
        if let Some(hops) = self.announce.take() {
            self.hub.announce(self.stream.session_id(), hops);
        }
        self.stream.send(self.generation, frame);
    }

    /// The session ID published.
    pub fn session_id(&self) -> &str {
        self.stream.session_id()
    }

    /// Names the session behind this publisher, for the control API (which shows it and
    /// may end it).
    pub fn identify(&self, peer: Arc<Peer>) {
        self.stream.identify_publisher(self.generation, peer);
    }

    /// Ends the stream now (the publisher unpublished): its players get the end of stream
    /// without a grace.
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Resolves once another publisher has taken this one's place (a takeover); its
    /// session should then close. Pending for ever otherwise.
    pub async fn replaced(&self) {
        let mut current = self.current.clone();
        let mine = self.generation;
        if current.wait_for(|g| *g != mine).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let (stream, hub) = (&self.stream, &self.hub);
        if self.finished {
            if stream.finish(self.generation) {
                hub.unpublished(stream);
            }
            return;
        }
        // A grace needs a timer to end it; without a runtime (a synchronous caller) the
        // stream ends now.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let grace = if runtime.is_some() { hub.config().publisher_grace } else { Duration::ZERO };
        match stream.lose(self.generation, Instant::now(), grace, hub.closing()) {
            Lost::NotCurrent => {}
            Lost::Ended => hub.unpublished(stream),
            Lost::Grace(until) => {
                if let Some(rt) = runtime {
                    let (stream, hub, generation) = (stream.clone(), hub.clone(), self.generation);
                    rt.spawn(async move {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                        // The timer fired for `until` (tokio rounds up to its tick): the grace
                        // is over even if the clocks disagree by a fraction of that.
                        if stream.expire(generation, Instant::now().max(until)) {
                            hub.unpublished(&stream);
                        }
                    });
                }
            }
        }
    }
}

/// A stream's flush timer: one task per stream (not per player), asleep until a held
/// batch is due, then writing it to every player. Holds the stream weakly and ends when
/// it goes.
async fn flush_when_due(stream: Weak<Stream>, wake: Arc<Notify>) {
    loop {
        let due = match stream.upgrade() {
            Some(stream) => stream.flush_due(tokio::time::Instant::now()),
            None => return,
        };
        match due {
            Some(due) => {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The flush timer waits on this to notice the stream is gone.
        self.flush_wake.notify_one();
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
