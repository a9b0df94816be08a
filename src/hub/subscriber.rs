//! A subscriber's bounded queue and its drop policy.
//!
//! The publisher pushes into every queue without waiting. A queue over its bound (bytes
//! or media duration) drops its media and skips to the next keyframe, keeping only
//! sequence headers and metadata so the player can decode what comes after the skip.
//! Memory per subscriber is therefore bounded, and the frames themselves are shared.
//!
//! While a subscriber's task is idle (its queue empty, nothing of its own to write), it
//! may hand its socket to the publisher as a [`DirectSink`]: the publisher then writes
//! each frame straight into the socket without waiting, and the task is not woken at
//! all. That is the common case of a player keeping up, and it saves a task wake-up, a
//! queue round trip and a poll per frame per player. The first write that would wait
//! (or goes only part way) hands writing back to the task, through the queue as before.
//!
//! The writer role is an owned value: the [`DirectSink`] is a `Box` the task moves into
//! the queue ([`Subscriber::hand_to_publisher`]) and moves back out
//! ([`Subscriber::take_writer`]). The publisher can only reach it through the queue's
//! own lock while it sits there, so at most one of the two holds it at any time, and the
//! task gets it back (with the rest of a half-written frame) before it writes anything.
//! The one lock held over a `send` is this queue's, which only this subscriber's task and
//! the publisher take; counters are atomics, so a stats read takes no queue lock.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;

use super::peer::{Peer, PlayerInfo};
use super::stream::{Counters, Stream};
use super::Hub;
use crate::media::frame::{Frame, MediaKind};

/// Bounds of one subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Payload bytes queued before the subscriber skips to the next keyframe.
    pub max_bytes: usize,
    /// Media duration queued (newest minus oldest timestamp) before it skips.
    pub max_duration: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self { max_bytes: 8 * 1024 * 1024, max_duration: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Subscribed before the publisher arrived.
    Waiting,
    Live,
    /// The publish this subscriber followed ended.
    Ended,
}

/// A subscriber's socket as the publisher may use it: never waiting, and only while the
/// subscriber's own task has handed it over (it is moved, never shared: whoever holds
/// the box is the one writer).
pub trait DirectSink: Send + Sync {
    /// The wire bytes of `frame` for this subscriber (its chunk size and stream id).
    fn encode(&self, frame: &Frame) -> Bytes;
    /// Writes as much of `buf` as the socket takes now; `WouldBlock` when it takes none.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Writes as much of `bufs`, in order, as the socket takes now, in one system call
    /// where the socket allows (a coalesced batch of frames); `WouldBlock` when it takes
    /// none. By default only the first non-empty buffer (a partial write: the caller
    /// copes).
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.try_write(b),
            None => Ok(0),
        }
    }
}

/// Who writes to the subscriber's socket now.
enum Writer {
    /// The subscriber's task, from the queue; it holds the sink (if it made one).
    Task,
    /// The publisher, as it pushes (the queue is empty meanwhile).
    Publisher(Box<dyn DirectSink>),
    /// The task again: the publisher gave up (a full socket, a push that may not write)
    /// and left the sink here for the task to take back.
    HandedBack(Box<dyn DirectSink>),
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Writer::Task => "Task",
            Writer::Publisher(_) => "Publisher",
            Writer::HandedBack(_) => "HandedBack",
        })
    }
}

/// What [`Subscriber::take_writer`] gives back: the sink, if the publisher had it, and
/// the rest of a frame it wrote only part of, which must go out before anything else.
#[derive(Default)]
pub struct Handback {
    /// The sink handed over earlier; `None` if it was not.
    pub sink: Option<Box<dyn DirectSink>>,
    /// The rest of a half-written frame.
    pub unwritten: Option<Bytes>,
}

impl fmt::Debug for Handback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handback")
            .field("sink", &self.sink.is_some())
            .field("unwritten", &self.unwritten.as_ref().map(Bytes::len))
            .finish()
    }
}

/// What one push did for one subscriber, summed into the stream's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pushed {
    /// Frames written whole straight to the socket.
    pub(super) frames: u64,
    /// Socket writes (system calls) made for them.
    pub(super) sends: u64,
}

/// What a direct write took.
struct Written {
    /// Frames written whole (the first ones of the batch).
    whole: usize,
}

#[derive(Debug)]
struct QueueState {
    phase: Phase,
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Dropping media until the next keyframe.
    skipping: bool,
    writer: Writer,
    /// The rest of a frame the publisher wrote only part of: it goes out before any
    /// other byte, or the chunk stream would be corrupt.
    unwritten: Option<Bytes>,
}

impl QueueState {
    fn has_work(&self) -> bool {
        !self.frames.is_empty() || self.unwritten.is_some()
    }
}

/// The queue between the publisher and one subscriber.
#[derive(Debug)]
pub(super) struct Queue {
    limits: QueueLimits,
    state: Mutex<QueueState>,
    notify: Notify,
    /// Frames this subscriber skipped; read without the lock.
    skipped: AtomicU64,
    /// `state.bytes`, copied on every change (under the lock) so stats read it without.
    queued_bytes: AtomicUsize,
    /// The stream's counters, where skips are summed as they happen.
    counters: Arc<Counters>,
    /// Media payload bytes handed to the transport: changed only under the queue lock
    /// (by the publisher's direct write or the task's drain), read without it.
    sent_bytes: AtomicU64,
    /// `phase == Live`, copied on every change so the control API reads it without the lock.
    live: AtomicBool,
    /// Who plays, for the control API (set once the session identifies itself).
    peer: std::sync::OnceLock<Arc<Peer>>,
    since: SystemTime,
}

impl Queue {
    pub(super) fn new(limits: QueueLimits, counters: Arc<Counters>) -> Self {
        Self {
            sent_bytes: AtomicU64::new(0),
            live: AtomicBool::new(false),
            peer: std::sync::OnceLock::new(),
            since: SystemTime::now(),
            limits,
            state: Mutex::new(QueueState {
                phase: Phase::Waiting,
                frames: VecDeque::new(),
                bytes: 0,
                skipping: false,
                writer: Writer::Task,
                unwritten: None,
            }),
            notify: Notify::new(),
            skipped: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            counters,
        }
    }

    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_bytes(&self, st: &mut QueueState, bytes: usize) {
        st.bytes = bytes;
        self.queued_bytes.store(bytes, Ordering::Relaxed);
        self.counters.peak_queued_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    fn count_skips(&self, n: u64) {
        if n > 0 {
            self.skipped.fetch_add(n, Ordering::Relaxed);
            self.counters.skipped.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn go_live(&self) {
        let mut st = self.state();
        if st.phase == Phase::Waiting {
            st.phase = Phase::Live;
            self.live.store(true, Ordering::Relaxed);
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Live from the start with a late joiner's snapshot (not subject to the bounds: it
    /// is at most one cached GOP, and it is what makes the first frame immediate).
    pub(super) fn start_with(&self, snapshot: impl Iterator<Item = Frame>) {
        let mut st = self.state();
        st.phase = Phase::Live;
        self.live.store(true, Ordering::Relaxed);
        let mut bytes = st.bytes;
        for f in snapshot {
            bytes += f.payload().len();
            st.frames.push_back(f);
        }
        self.set_bytes(&mut st, bytes);
    }

    /// The publish this subscriber followed ended. One still waiting for a publisher
    /// (it joined during a grace) keeps waiting, up to its own play wait.
    pub(super) fn end(&self) {
        let mut st = self.state();
        if st.phase == Phase::Live {
            st.phase = Phase::Ended;
            self.live.store(false, Ordering::Relaxed);
            drop(st);
            self.notify.notify_one();
        }
    }

    pub(super) fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The publish this queue followed is over (or the subscriber left).
    pub(super) fn is_ended(&self) -> bool {
        self.state().phase == Phase::Ended
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn bytes_sent(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// Adds to `sent_bytes`; the caller holds the queue lock (the only writers do), so a
    /// load and a store suffice.
    fn count_sent(&self, n: usize) {
        self.sent_bytes.store(self.sent_bytes.load(Ordering::Relaxed) + n as u64, Ordering::Relaxed);
    }

    pub(super) fn peer(&self) -> Option<&Arc<Peer>> {
        self.peer.get()
    }

    /// Takes over what identifies `old`, which this queue replaces (a rejoin): its
    /// peer and its count of bytes sent.
    pub(super) fn inherit(&self, old: &Queue) {
        if let Some(peer) = old.peer.get() {
            let _ = self.peer.set(peer.clone());
        }
        self.sent_bytes.store(old.bytes_sent(), Ordering::Relaxed);
    }

    /// This subscriber as the control API shows it; reads atomics and the phase.
    pub(super) fn info(&self) -> PlayerInfo {
        PlayerInfo {
            peer: self.peer.get().cloned(),
            since: self.since,
            live: self.live.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent(),
            queued_bytes: self.queued_bytes(),
            skipped: self.skipped(),
        }
    }

    /// The subscriber is gone: nothing more is queued or written (a push that still
    /// holds this queue in its snapshot finds it closed), and the sink is dropped.
    pub(super) fn close(&self) {
        let mut st = self.state();
        st.phase = Phase::Ended;
        self.live.store(false, Ordering::Relaxed);
        st.writer = Writer::Task;
        st.frames.clear();
        self.set_bytes(&mut st, 0);
    }

    /// Queues `frames` (a batch, in publish order), or with `direct` allowed and the
    /// publisher holding the writer role, writes them to the socket at once, all in one
    /// system call. The write is a non-blocking `send` under this queue's lock, which is
    /// what keeps the two writers apart; no stream or hub lock is held. What the socket
    /// does not take goes to the task: the rest of a frame begun first, then the frames
    /// not begun, through the queue and its bounds.
    pub(super) fn push(
        &self,
        frames: &[Frame],
        has_video: bool,
        direct: bool,
        scratch: &mut Vec<Bytes>,
    ) -> Pushed {
        let mut guard = self.state();
        let st = &mut *guard;
        let mut pushed = Pushed::default();
        if st.phase != Phase::Live || frames.is_empty() {
            return pushed;
        }
        let had_work = st.has_work();
        let mut rest = frames;
        if let Writer::Publisher(sink) = &mut st.writer {
            if direct {
                let written = Self::write_direct(sink.as_mut(), frames, &mut st.unwritten, scratch);
                pushed = Pushed { frames: written.whole as u64, sends: 1 };
                let begun = written.whole + usize::from(st.unwritten.is_some());
                // Whole, or begun (the task writes the rest first).
                self.count_sent(frames[..begun].iter().map(|f| f.payload().len()).sum());
                rest = &frames[begun..];
                if rest.is_empty() && st.unwritten.is_none() {
                    return pushed;
                }
            }
            // The socket is full (or failed, which the task's own write will report), or
            // this push may not write: the task takes over from here.
            if let Writer::Publisher(sink) = std::mem::replace(&mut st.writer, Writer::Task) {
                st.writer = Writer::HandedBack(sink);
            }
        }
        for frame in rest {
            self.enqueue(st, frame, has_video);
        }
        let wake = !had_work && st.has_work();
        drop(guard);
        // A queue with work was already signalled, and the subscriber looks at the queue
        // before it waits again: one wake-up per batch, not per frame.
        if wake {
            self.notify.notify_one();
        }
        pushed
    }

    /// Queues one frame under the bounds: over them, queued media is dropped and the
    /// queue skips to the next keyframe.
    fn enqueue(&self, st: &mut QueueState, frame: &Frame, has_video: bool) {
        let is_config = frame.is_sequence_header() || frame.kind() == MediaKind::Data;
        let resumes = if has_video { frame.kind() == MediaKind::Video && frame.is_keyframe() } else { true };
        if st.skipping {
            if resumes {
                st.skipping = false;
            } else if !is_config {
                self.count_skips(1);
                return;
            }
        } else if self.over_limit(st, frame) {
            self.drop_media(st);
            if !resumes {
                st.skipping = true;
                self.count_skips(1);
                return;
            }
        }
        let bytes = st.bytes + frame.payload().len();
        self.set_bytes(st, bytes);
        st.frames.push_back(frame.clone());
    }

    /// Writes `frames` without waiting, in one call. When the socket takes only part, the
    /// rest of the frame it stopped in is left in `unwritten`.
    fn write_direct(
        sink: &mut dyn DirectSink,
        frames: &[Frame],
        unwritten: &mut Option<Bytes>,
        scratch: &mut Vec<Bytes>,
    ) -> Written {
        scratch.clear();
        scratch.extend(frames.iter().map(|f| sink.encode(f)));
        let result = match scratch.as_slice() {
            // One buffer: plain send(2), cheaper than sendmsg(2) with an iovec.
            [one] => sink.try_write(one),
            many => {
                let slices: Vec<IoSlice<'_>> = many.iter().map(|b| IoSlice::new(b)).collect();
                sink.try_write_vectored(&slices)
            }
        };
        let mut left = result.unwrap_or(0);
        let mut whole = 0;
        for bytes in scratch.drain(..) {
            if left >= bytes.len() {
                left -= bytes.len();
                whole += 1;
            } else {
                if left > 0 {
                    *unwritten = Some(bytes.slice(left..));
                }
                break;
            }
        }
        scratch.clear();
        Written { whole }
    }

    fn over_limit(&self, st: &QueueState, frame: &Frame) -> bool {
        if st.bytes + frame.payload().len() > self.limits.max_bytes {
            return true;
        }
        let oldest = st.frames.iter().find(|f| f.kind() != MediaKind::Data);
        oldest.is_some_and(|o| {
            // Timestamps wrap at 2^32 ms; a backwards jump is not lag.
            let span = frame.timestamp().wrapping_sub(o.timestamp());
            span < u32::MAX / 2 && u128::from(span) > self.limits.max_duration.as_millis()
        })
    }

    /// Drops queued media, keeping sequence headers and metadata: they may have changed
    /// inside the dropped span and the frames after the skip need them.
    fn drop_media(&self, st: &mut QueueState) {
        let before = st.frames.len();
        st.frames.retain(|f| f.is_sequence_header() || f.kind() == MediaKind::Data);
        self.count_skips((before - st.frames.len()) as u64);
        let bytes = st.frames.iter().map(|f| f.payload().len()).sum();
        self.set_bytes(st, bytes);
    }
}

/// A player's (or relay's) attachment to a stream. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscriber {
    queue: Arc<Queue>,
    stream: Arc<Stream>,
    hub: Hub,
}

impl Subscriber {
    pub(super) fn new(queue: Arc<Queue>, stream: Arc<Stream>, hub: Hub) -> Self {
        Self { queue, stream, hub }
    }

    /// Names the session behind this subscriber, for the control API (which lists it
    /// and may end it). Once; later calls change nothing.
    pub fn identify(&self, peer: Arc<Peer>) {
        let _ = self.queue.peer.set(peer);
    }

    /// Waits until the stream is live. `false` when `timeout` passed first or the
    /// publish ended.
    pub async fn wait_live(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.queue.notify.notified();
                match self.queue.state().phase {
                    Phase::Live => return true,
                    Phase::Ended => return false,
                    Phase::Waiting => {}
                }
                notified.await;
            }
        };
        let live = tokio::time::timeout(timeout, wait).await.unwrap_or(false);
        if live {
            // The permit consumed by wait may belong to a frame already queued.
            self.queue.notify.notify_one();
        }
        live
    }

    /// The next frame, or `None` once the publish ended and the queue is drained.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if !self.ready().await {
                return None;
            }
            let mut st = self.queue.state();
            if let Some(f) = st.frames.pop_front() {
                let bytes = st.bytes - f.payload().len();
                self.queue.set_bytes(&mut st, bytes);
                self.queue.count_sent(f.payload().len());
                return Some(f);
            }
        }
    }

    /// Waits until there is something to write ([`Subscriber::take_writer`], then
    /// [`Subscriber::drain_into`]): `true`. `false` once the publish ended and everything
    /// was taken.
    pub async fn ready(&self) -> bool {
        loop {
            let notified = self.queue.notify.notified();
            {
                let st = self.queue.state();
                if st.has_work() {
                    return true;
                }
                if st.phase == Phase::Ended {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Lets the publisher write frames straight to `sink` from now on, if nothing is
    /// queued: the sink moves into the queue. When something waits to be written (or
    /// the stream is not live, or a skip is on), nothing changes and the sink comes back
    /// as `Err`.
    ///
    /// The caller must not write to the socket itself until it has the sink back from
    /// [`Subscriber::take_writer`].
    pub fn hand_to_publisher(&self, sink: Box<dyn DirectSink>) -> Result<(), Box<dyn DirectSink>> {
        let mut st = self.queue.state();
        // While skipping, the next frame to write must be a keyframe: the queue decides.
        if st.has_work() || st.skipping || st.phase != Phase::Live || !matches!(st.writer, Writer::Task) {
            return Err(sink);
        }
        st.writer = Writer::Publisher(sink);
        Ok(())
    }

    /// Takes the writer role back from the publisher (the sink, if it was handed over),
    /// with the rest of a frame the publisher wrote only part of: the caller must write
    /// that before anything else. Once this returns, the publisher cannot write to the
    /// socket (it no longer has the sink).
    pub fn take_writer(&self) -> Handback {
        let mut st = self.queue.state();
        let sink = match std::mem::replace(&mut st.writer, Writer::Task) {
            Writer::Publisher(s) | Writer::HandedBack(s) => Some(s),
            Writer::Task => None,
        };
        Handback { sink, unwritten: st.unwritten.take() }
    }

    /// Moves every queued frame into `out` without waiting, up to `max_bytes` of payload
    /// (at least one frame when any is queued). Lets the writer batch many frames into
    /// one socket write.
    pub fn drain_into(&mut self, out: &mut Vec<Frame>, max_bytes: usize) {
        let mut st = self.queue.state();
        let mut taken = 0;
        while let Some(f) = st.frames.front() {
            let len = f.payload().len();
            if taken > 0 && taken + len > max_bytes {
                break;
            }
            taken += len;
            if let Some(f) = st.frames.pop_front() {
                out.push(f);
            }
        }
        let bytes = st.bytes - taken;
        self.queue.set_bytes(&mut st, bytes);
        self.queue.count_sent(taken);
    }

    /// Starts over as a late joiner of the same publish: whatever is queued is dropped
    /// and the queue starts again with the stream's metadata, sequence headers and
    /// cached GOP, then follows the publish as before. `false`, and nothing changed, once
    /// the publish this subscriber followed has ended. What a relay's forward uses after
    /// reconnecting to its target: the target gets a decodable start at once instead of
    /// waiting for the next keyframe, and nothing it already had twice.
    ///
    /// Only for a subscriber whose task writes (it never handed a sink to the publisher):
    /// the old queue is closed with whatever it held.
    pub fn rejoin(&mut self) -> bool {
        match self.stream.rejoin(&self.queue) {
            Some(queue) => {
                self.queue = queue;
                true
            }
            None => false,
        }
    }

    /// Frames this subscriber skipped because it fell behind.
    pub fn skipped(&self) -> u64 {
        self.queue.skipped()
    }

    /// Payload bytes queued for this subscriber now.
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // First close the queue: a push already iterating a snapshot that holds it must
        // not write to a socket whose task has moved on.
        self.queue.close();
        self.stream.unsubscribe(&self.queue);
        self.hub.release(&self.stream);
    }
}
