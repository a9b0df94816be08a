//! RoQR on quinn, the I/O half shared by the server and the client: readers that turn
//! every stream and datagram of a connection into frames for one session task, and the
//! [`MediaSender`] that maps outgoing media onto streams.
//!
//! The media mapping (ours, on top of the draft; DESIGN §1): commands on the first
//! bidirectional stream; audio frames on a unidirectional stream of their own; video,
//! metadata and codec configuration on a new unidirectional stream per GOP, each GOP
//! stream starting with the current video and audio configuration so that any GOP
//! decodes on its own (receivers drop a repeat identical to the configuration they have). Priorities put commands first,
//! then audio, then the GOPs in their order, so audio never waits behind video and a
//! GOP's tail is not overtaken by the next keyframe (a player draining a backlog writes
//! both in the same instant). A GOP stream still unacknowledged [`STALE_AFTER`] after it
//! ended is stale: it drops below every newer GOP, so a fresh keyframe no longer waits
//! behind it. Still unacknowledged `max_latency` after it ended, it is reset with
//! `FRAME_CANCELLED`: its media is too old to be worth delivering, and the receiver
//! continues from the next keyframe.
//!
//! On a path slower than the stream the current GOP would fall behind too, and a long
//! GOP's tail with it. So the connection's send window (what quinn buffers and has in
//! flight) follows the path's delivery rate, to hold about half the budget's worth of
//! media, and
//! a GOP write that waits for room longer than the other half cancels the rest of its
//! GOP: the GOP's leading frames arrive in time, the rest is never sent, and video
//! resumes at the next keyframe. Audio, on its own higher-priority stream, is not cut.
//! Peers that
//! did not ask for this mapping get everything on the command stream (what every RoQR
//! peer reads).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tracing::debug;

use crate::rtmp::chunk::Message;
use crate::rtmp::roqr::frame::{self, FrameError, RoqrFrame};
use crate::rtmp::roqr::reorder::is_sequence_header;
use crate::rtmp::roqr::{ErrorCode, Via};

/// Stream priorities (higher goes first). GOP streams count down from
/// `PRIORITY_FIRST_GOP`, one per GOP, so that an older GOP goes before a newer one until
/// it is stale.
const PRIORITY_COMMANDS: i32 = 2;
const PRIORITY_AUDIO: i32 = 1;
const PRIORITY_FIRST_GOP: i32 = 0;
const PRIORITY_STALE_GOP: i32 = i32::MIN;
/// How long an ended GOP stream keeps its place ahead of newer ones. On a path that
/// keeps up its tail is out within a few milliseconds; one still unacknowledged this
/// long is behind a congested path, and the next keyframe goes first.
pub const STALE_AFTER: Duration = Duration::from_millis(100);
/// Bytes asked of quinn per read.
const READ_CHUNK: usize = 64 * 1024;
/// Longest a GOP stream's first frame waits for the older streams' readers.
const ORDER_WAIT: Duration = Duration::from_millis(250);
/// The send window holds 1/`BUDGET_SHARE` of the latency budget's worth of media at
/// the path's rate, and a GOP write waits at most that share of the budget for room.
const BUDGET_SHARE: u32 = 2;
/// How often the send window follows the path's rate.
const FIT_WINDOW_EVERY: Duration = Duration::from_millis(100);
/// Bounds of the send window: room for a large keyframe, and the transport's own cap.
const MIN_SEND_WINDOW: u64 = 128 * 1024;
const MAX_SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// The connect property by which a client asks for the per-track mapping.
pub const MAPPING_PROPERTY: &str = "roqrMapping";
/// Its value for the per-track mapping.
pub const MAPPING_TRACKS: &str = "tracks";

/// A way for the session task to stop one stream's reader (an unknown flow over bounds).
#[derive(Debug, Default)]
pub struct StreamStop {
    code: AtomicU64,
    notify: Notify,
}

impl StreamStop {
    /// Asks the reader to stop its stream with `code`.
    pub fn stop(&self, code: ErrorCode) {
        self.code.store(code as u64 + 1, Ordering::Release);
        self.notify.notify_one();
    }
}

/// What the readers hand the session task.
#[derive(Debug)]
pub enum Incoming {
    /// A whole frame, from a stream (with its stop handle) or a datagram.
    Frame {
        /// The frame.
        frame: RoqrFrame,
        /// Where it came from.
        via: Via,
        /// Stops the stream it came from.
        stop: Option<Arc<StreamStop>>,
    },
    /// A stream carried bytes that are not frames, or over the pending limit.
    Malformed(FrameError),
    /// The command stream ended (the peer finished or reset it).
    CommandStreamEnded,
    /// The peer opened a stream other than the command stream (media).
    StreamOpened,
    /// Such a stream ended (finished, reset or stopped); every frame it carried came
    /// before this.
    StreamClosed,
}

/// Limits the readers enforce.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest frame payload.
    pub max_payload: u32,
    /// Bytes of partial frames held across all streams of the connection.
    pub max_pending: usize,
}

/// Starts the readers of a connection: the command stream, every stream the peer opens
/// later (either kind), and datagrams. They stop when `tasks` is dropped.
///
/// The command stream is read by the task that accepts the other streams, which looks
/// for new streams first: a sender finishes its media streams before it sends the
/// command that ends the stream, so a stream it opened is announced
/// ([`Incoming::StreamOpened`]) before that command, and the session waits for it.
/// Read by separate tasks, the command could overtake the announcement of a stream
/// opened just before it, and its last frames would come after the end.
pub fn spawn_readers(
    conn: &Connection,
    command: RecvStream,
    limits: ReadLimits,
    tx: mpsc::Sender<Incoming>,
    tasks: &mut JoinSet<()>,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    let mut command = Some(StreamReader::new(command, limits, pending.clone(), true));
    let (c, t, p) = (conn.clone(), tx.clone(), pending.clone());
    let order = Arc::new(GopOrder::default());
    tasks.spawn(async move {
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                s = c.accept_uni() => match s {
                    Ok(recv) => {
                        let _ = t.send(Incoming::StreamOpened).await;
                        let mut reader = StreamReader::new(recv, limits, p.clone(), false);
                        reader.order = Some(order.admit(reader.recv.id().index()));
                        streams.spawn(reader.run(t.clone()));
                    }
                    Err(_) => return,
                },
                s = c.accept_bi() => match s {
                    // The send half is left unused; dropping it finishes it.
                    Ok((_send, recv)) => {
                        let _ = t.send(Incoming::StreamOpened).await;
                        streams.spawn(StreamReader::new(recv, limits, p.clone(), false).run(t.clone()));
                    }
                    Err(_) => return,
                },
                // Reading is cancel-safe; what was read is handled outside the race.
                read = read_command(&mut command), if command.is_some() => {
                    if let Some(reader) = command.as_mut() {
                        if !reader.handle(read, &t).await {
                            if let Some(reader) = command.take() {
                                reader.finish(&t).await;
                            }
                        }
                    }
                }
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
            }
        }
    });
    let c = conn.clone();
    tasks.spawn(async move {
        while let Ok(data) = c.read_datagram().await {
            // A malformed datagram is dropped, not fatal (draft §"Error Handling").
            match frame::decode_datagram(data, limits.max_payload) {
                Ok(frame) => {
                    let item = Incoming::Frame { frame, via: Via::Datagram, stop: None };
                    // Datagrams are droppable: a full channel drops them rather than
                    // letting them hold up the connection.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(item) {
                        return;
                    }
                }
                Err(e) => debug!(error = %e, "malformed RoQR datagram dropped"),
            }
        }
    });
}

/// Keeps the GOP streams of a connection in the order they were opened. Each stream has
/// its own reader task, and the tail of one GOP can arrive in the same packet as the next
/// GOP's keyframe (a sender draining a backlog writes both at once): the two readers
/// would then race, and the tail could reach the player after the keyframe.
///
/// So a GOP stream's first frame waits until every older stream that may carry pictures
/// has ended, shown itself to be the audio stream, or read all it had received (each is
/// asked, and answers once its reader finds nothing more to read); at most
/// [`ORDER_WAIT`] (a reader held up by a slow session). What an older GOP stream
/// receives after a newer one started is stale (a lost tail, retransmitted): it is
/// dropped, never delivered out of order. A lost FIN therefore costs nothing, and a lost
/// tail only itself.
#[derive(Debug, Default)]
struct GopOrder {
    /// Unidirectional streams that may carry pictures, by index: admitted, and not yet
    /// ended or known to be audio.
    open: Mutex<BTreeMap<u64, Watched>>,
    changed: Notify,
    /// One more than the index of the newest GOP stream whose frames flow (0: none yet);
    /// read for every frame, so not under the lock.
    newest_started: AtomicU64,
}

#[derive(Debug)]
struct Watched {
    /// Asks the stream's reader to say when it has read all it had.
    probe: Arc<Notify>,
    /// How often it said so.
    idle: u64,
}

impl GopOrder {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Watched>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers stream `index` (accepted in order, so before any newer stream).
    fn admit(self: &Arc<Self>, index: u64) -> OrderSlot {
        let probe = Arc::new(Notify::new());
        self.lock().insert(index, Watched { probe: probe.clone(), idle: 0 });
        OrderSlot { order: self.clone(), index, probe, pictures: false }
    }

    fn release(&self, index: u64) {
        self.lock().remove(&index);
        self.changed.notify_waiters();
    }

    fn idle(&self, index: u64) {
        if let Some(w) = self.lock().get_mut(&index) {
            w.idle += 1;
        }
        self.changed.notify_waiters();
    }

    /// Whether a GOP stream newer than `index` has started.
    fn superseded(&self, index: u64) -> bool {
        self.newest_started.load(Ordering::Acquire) > index + 1
    }
}

/// A stream's place in its connection's [`GopOrder`]; released when dropped.
#[derive(Debug)]
struct OrderSlot {
    order: Arc<GopOrder>,
    index: u64,
    probe: Arc<Notify>,
    /// The stream carries pictures (a GOP stream), as its first frame showed.
    pictures: bool,
}

impl OrderSlot {
    /// Called with the stream's first message: the audio stream leaves the order at once
    /// (it never waits and is never waited for); a GOP stream waits for the older ones.
    async fn first_frame(&mut self, first: &Message) {
        self.pictures = matches!(first.type_id, 9 | 18) || is_sequence_header(first);
        if !self.pictures {
            self.order.release(self.index);
            return;
        }
        let asked: Vec<(u64, u64)> = self
            .order
            .lock()
            .range(..self.index)
            .map(|(i, w)| {
                w.probe.notify_one();
                (*i, w.idle)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + ORDER_WAIT;
        loop {
            let changed = self.order.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let waiting = {
                let open = self.order.lock();
                asked.iter().any(|(i, idle)| open.get(i).is_some_and(|w| w.idle == *idle))
            };
            if !waiting {
                break;
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    debug!(stream = self.index, "older media streams still busy; GOP goes on");
                    break;
                }
            }
        }
        self.order.newest_started.fetch_max(self.index + 1, Ordering::AcqRel);
    }

    /// Whether this stream's frames are stale now (a newer GOP started).
    fn stale(&self) -> bool {
        self.pictures && self.order.superseded(self.index)
    }
}

impl Drop for OrderSlot {
    fn drop(&mut self) {
        self.order.release(self.index);
    }
}

/// The command stream's next read (pending for ever once it is gone).
async fn read_command(reader: &mut Option<StreamReader>) -> Read {
    match reader {
        Some(r) => r.read().await,
        None => std::future::pending().await,
    }
}

/// What one read of a stream gave.
enum Read {
    Chunk(Bytes),
    /// The stream ended (finished, reset, stopped by us).
    End,
}

/// Frames from one stream: reads (cancel-safe) and decodes, within the connection's
/// pending limit.
struct StreamReader {
    recv: RecvStream,
    limits: ReadLimits,
    pending: Arc<AtomicUsize>,
    command: bool,
    stop: Arc<StreamStop>,
    buf: BytesMut,
    /// Bytes of partial frames this stream counts against `pending`.
    held: usize,
    /// Past the pending limit: no `CommandStreamEnded` (the session closes for it).
    over_limit: bool,
    frames: u64,
    bytes: u64,
    /// Its place among the unidirectional streams (GOP streams keep their order).
    order: Option<OrderSlot>,
    /// Frames dropped because a newer GOP had started.
    stale: u64,
}

impl StreamReader {
    fn new(recv: RecvStream, limits: ReadLimits, pending: Arc<AtomicUsize>, command: bool) -> Self {
        let stop = Arc::new(StreamStop::default());
        Self {
            recv,
            limits,
            pending,
            command,
            stop,
            buf: BytesMut::new(),
            held: 0,
            over_limit: false,
            frames: 0,
            bytes: 0,
            order: None,
            stale: 0,
        }
    }

    /// Reads and handles until the stream ends.
    async fn run(mut self, tx: mpsc::Sender<Incoming>) {
        let probe = self.order.as_ref().map(|slot| slot.probe.clone());
        // Asked by a newer GOP stream: say so once nothing received is left unread.
        let mut asked = false;
        loop {
            let read = match &probe {
                Some(probe) if !asked => tokio::select! {
                    read = self.read() => read,
                    _ = probe.notified() => {
                        asked = true;
                        continue;
                    }
                },
                _ if asked => tokio::select! {
                    biased;
                    read = self.read() => read,
                    () = std::future::ready(()) => {
                        asked = false;
                        if let Some(slot) = &self.order {
                            slot.order.idle(slot.index);
                        }
                        continue;
                    }
                },
                _ => self.read().await,
            };
            if !self.handle(read, &tx).await {
                break;
            }
        }
        self.finish(&tx).await;
    }

    /// The next chunk, or the end; cancel-safe (nothing read is lost when dropped).
    async fn read(&mut self) -> Read {
        tokio::select! {
            c = self.recv.read_chunk(READ_CHUNK, true) => match c {
                Ok(Some(chunk)) => Read::Chunk(chunk.bytes),
                Ok(None) => Read::End,
                // FRAME_CANCELLED: the sender abandoned stale media; the partial frame goes.
                Err(e) => {
                    debug!(stream = %self.recv.id(), frames = self.frames, bytes = self.bytes, reason = %e, "stream ended early");
                    Read::End
                }
            },
            _ = self.stop.notify.notified() => {
                let code = self.stop.code.load(Ordering::Acquire).saturating_sub(1);
                let _ = self.recv.stop(VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0)));
                Read::End
            }
        }
    }

    /// Decodes and sends the frames `read` completes; `false` once the stream is done.
    async fn handle(&mut self, read: Read, tx: &mpsc::Sender<Incoming>) -> bool {
        let chunk = match read {
            Read::Chunk(c) => c,
            Read::End => return false,
        };
        self.bytes += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        loop {
            match frame::decode(&mut self.buf, self.limits.max_payload) {
                Ok(Some(frame)) => {
                    self.frames += 1;
                    if let Some(slot) = &mut self.order {
                        if self.frames == 1 {
                            slot.first_frame(&frame.message).await;
                        } else if slot.stale() {
                            self.stale += 1;
                            continue;
                        }
                    }
                    let item = Incoming::Frame { frame, via: Via::Stream, stop: Some(self.stop.clone()) };
                    if tx.send(item).await.is_err() {
                        return false;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Incoming::Malformed(e)).await;
                    self.over_limit = true;
                    return false;
                }
            }
        }
        // Partial frames count against the connection's pending limit.
        let now_held = self.buf.len();
        let total = self.pending.fetch_add(now_held, Ordering::Relaxed) + now_held - self.held;
        self.pending.fetch_sub(self.held, Ordering::Relaxed);
        self.held = now_held;
        if total > self.limits.max_pending {
            let max = self.limits.max_pending as u32;
            let _ = tx.send(Incoming::Malformed(FrameError::TooLarge(total as u64, max))).await;
            self.over_limit = true;
            return false;
        }
        true
    }

    /// The stream is done: its partial frame no longer counts, and the session hears.
    async fn finish(self, tx: &mpsc::Sender<Incoming>) {
        self.pending.fetch_sub(self.held, Ordering::Relaxed);
        if self.stale > 0 {
            debug!(stream = %self.recv.id(), frames = self.stale, "stale frames of an older GOP dropped");
        }
        // Before the session hears: a newer GOP waiting for this one may go on.
        drop(self.order);
        if !self.command {
            let _ = tx.send(Incoming::StreamClosed).await;
        } else if !self.over_limit {
            let _ = tx.send(Incoming::CommandStreamEnded).await;
        }
    }
}

/// How media is laid onto the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMapping {
    /// Audio on its own stream, video on a stream per GOP, latency-bounded.
    Tracks,
    /// Everything on the command stream, as every RoQR peer reads it.
    CommandStream,
}

/// Counters of a [`MediaSender`], shared with the watchers of finished GOP streams.
#[derive(Debug, Default)]
pub struct SenderStats {
    /// GOP streams reset with `FRAME_CANCELLED` because their media went stale.
    pub gops_cancelled: AtomicU64,
    /// GOP streams fully acknowledged in time.
    pub gops_delivered: AtomicU64,
    /// GOPs whose rest was cut while they were being sent: the path fell behind by the
    /// latency budget.
    pub gops_cut: AtomicU64,
    /// Video frames not sent because their GOP was cut (up to the next keyframe).
    pub frames_skipped: AtomicU64,
}

/// Sends media frames of one RTMP session (flow 0) over a connection.
#[derive(Debug)]
pub struct MediaSender {
    conn: Connection,
    mapping: MediaMapping,
    max_latency: Duration,
    audio: Option<SendStream>,
    gop: Option<SendStream>,
    /// The priority of the next GOP stream (one below the last one's).
    next_gop_priority: i32,
    /// Whether the current GOP stream has had its keyframe (a keyframe on a stream that
    /// has only configuration so far belongs to it).
    gop_keyed: bool,
    /// The video configuration, repeated at the start of every GOP stream.
    video_config: Option<Bytes>,
    /// The audio configuration, likewise (the audio stream carries only frames, so that
    /// the configuration keeps its place before the first of them).
    audio_config: Option<Bytes>,
    /// The current GOP was cut: video frames are skipped up to the next keyframe.
    skip_video: bool,
    /// When the send window next follows the path's rate.
    window: SendWindow,
    /// When the sender was made: nothing is due before (a player that joins gets the
    /// cached GOP, received up to a GOP ago, as fresh).
    started: tokio::time::Instant,
    stats: Arc<SenderStats>,
}

/// How fast a connection delivers: bytes sent less bytes lost over the last
/// [`DeliveryRate::SPAN`]. Over a span of many round trips, what was sent was either
/// delivered or declared lost (shorter intervals count a retransmission burst before its
/// losses are declared, and overshoot several times). Measured rather than read off the
/// congestion controller, whose estimate lags a capacity drop (quinn's BBR keeps the old
/// rate for ten round trips and does not heed loss).
#[derive(Debug, Default)]
struct DeliveryRate {
    samples: VecDeque<(tokio::time::Instant, u64)>,
}

impl DeliveryRate {
    const SPAN: Duration = Duration::from_secs(1);
    /// Shortest span a rate is given for.
    const MIN_SPAN: Duration = Duration::from_millis(200);

    /// Feeds the connection's delivered-bytes counter; the rate in bytes per second, once
    /// [`Self::MIN_SPAN`] was measured.
    fn on_sample(&mut self, now: tokio::time::Instant, delivered: u64) -> Option<f64> {
        self.samples.push_back((now, delivered));
        while self.samples.len() > 2
            && self.samples.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= Self::SPAN)
        {
            self.samples.pop_front();
        }
        let (first_at, first) = *self.samples.front()?;
        let span = now.duration_since(first_at);
        (span >= Self::MIN_SPAN).then(|| delivered.saturating_sub(first) as f64 / span.as_secs_f64())
    }
}

/// Keeps a connection's send window (bytes in flight) at what the path delivers in
/// 1/[`BUDGET_SHARE`] of the latency budget, so what is queued in QUIC never holds more
/// than that of media: a frame that waits for room waits behind at most that much.
/// Shared by the RoQR sender and the relay's WebTransport players.
#[derive(Debug)]
pub struct SendWindow {
    max_latency: Duration,
    next_at: Option<tokio::time::Instant>,
    delivery: DeliveryRate,
}

impl SendWindow {
    /// A fitter for a latency budget of `max_latency`.
    pub fn new(max_latency: Duration) -> Self {
        Self { max_latency, next_at: None, delivery: DeliveryRate::default() }
    }

    /// Fits `conn`'s send window to its delivery rate (at most every
    /// [`FIT_WINDOW_EVERY`]; cheap to call on every write).
    pub fn fit(&mut self, conn: &Connection) {
        let now = tokio::time::Instant::now();
        if self.next_at.is_some_and(|t| now < t) {
            return;
        }
        self.next_at = Some(now + FIT_WINDOW_EVERY);
        let stats = conn.stats();
        let delivered = stats.udp_tx.bytes.saturating_sub(stats.path.lost_bytes);
        let Some(rate) = self.delivery.on_sample(now, delivered) else { return };
        let share = self.max_latency / BUDGET_SHARE;
        let window = ((rate * share.as_secs_f64()) as u64).clamp(MIN_SEND_WINDOW, MAX_SEND_WINDOW);
        tracing::trace!(rate_kbps = rate * 8e-3, window, "send window fitted to the path");
        conn.set_send_window(window);
    }
}

/// Where a media message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Command,
    Audio,
    Gop,
}

/// What is known of a media message beyond its bytes.
#[derive(Debug, Clone, Copy)]
pub struct MediaInfo {
    /// A video frame decoding can start at.
    pub keyframe: bool,
    /// Codec configuration or metadata: needed whatever else is dropped.
    pub essential: bool,
    /// When the frame was due to be sent (a paced source's clock, or when a relay got
    /// it), if before it is handed over: the latency budget counts from then, or from
    /// when the sender was made if that is later. `None`: from now.
    pub due: Option<tokio::time::Instant>,
}

impl MediaSender {
    /// A sender for `conn` with the given mapping and latency budget.
    pub fn new(conn: Connection, mapping: MediaMapping, max_latency: Duration) -> Self {
        Self {
            conn,
            mapping,
            max_latency,
            audio: None,
            gop: None,
            next_gop_priority: PRIORITY_FIRST_GOP,
            gop_keyed: false,
            video_config: None,
            audio_config: None,
            skip_video: false,
            window: SendWindow::new(max_latency),
            started: tokio::time::Instant::now(),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<SenderStats> {
        self.stats.clone()
    }

    /// Sends one media message; `command` is the session's command stream.
    pub async fn send(
        &mut self,
        command: &mut SendStream,
        msg: &Message,
        info: MediaInfo,
    ) -> Result<(), WriteError> {
        let header = frame::encode_header(0, msg);
        self.send_batch(command, &[(header, msg.clone(), info)]).await
    }

    /// Sends media messages in order, each with its frame header (encoded once and shared
    /// when the same frame goes to many players); consecutive messages for the same
    /// stream go out in one write.
    pub async fn send_batch(
        &mut self,
        command: &mut SendStream,
        items: &[(Bytes, Message, MediaInfo)],
    ) -> Result<(), WriteError> {
        self.fit_send_window();
        let mut run: Vec<Bytes> = Vec::new();
        let mut run_target = Target::Command;
        let mut run_due = None;
        for (header, msg, info) in items {
            let info = *info;
            if self.skip_video && (msg.type_id, info.essential) == (9, false) {
                if !info.keyframe {
                    self.stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.skip_video = false;
            }
            let target = self.target(msg, info);
            if target != run_target || self.starts_gop(msg, info) {
                self.write(command, run_target, &mut run, run_due.take()).await?;
                run_target = target;
            }
            // The run's oldest frame sets how long its write may wait.
            run_due = run_due.or(info.due.map(|due| due.max(self.started)));
            if target == Target::Gop && self.starts_gop(msg, info) {
                self.rotate_gop();
                let s = self.open(self.next_gop_priority).await?;
                // Bottoms out above the stale GOPs after 2^31 GOPs (68 years at one a second).
                self.next_gop_priority = (self.next_gop_priority - 1).max(PRIORITY_STALE_GOP + 1);
                self.gop = Some(s);
                self.gop_keyed = false;
                if (msg.type_id, info.essential) == (9, false) {
                    // Stamped with the keyframe's time: they are that GOP's configuration.
                    let configs = [(9, &self.video_config), (8, &self.audio_config)];
                    for (type_id, config) in configs {
                        if let Some(config) = config {
                            let m = Message { type_id, payload: config.clone(), ..msg.clone() };
                            run.extend([frame::encode_header(0, &m), m.payload]);
                        }
                    }
                }
            }
            match (msg.type_id, info.essential) {
                (9, true) => self.video_config = Some(msg.payload.clone()),
                (8, true) => self.audio_config = Some(msg.payload.clone()),
                (9, false) if info.keyframe => self.gop_keyed = true,
                _ => {}
            }
            run.extend([header.clone(), msg.payload.clone()]);
        }
        self.write(command, run_target, &mut run, run_due).await
    }

    fn target(&self, msg: &Message, info: MediaInfo) -> Target {
        match (self.mapping, msg.type_id) {
            // Metadata and codec configuration travel with the pictures, in the order they
            // were sent: on other streams they could overtake or trail them.
            (MediaMapping::Tracks, 8) if info.essential => Target::Gop,
            (MediaMapping::Tracks, 8) => Target::Audio,
            (MediaMapping::Tracks, 9 | 18) => Target::Gop,
            _ => Target::Command,
        }
    }

    /// A message that needs a new GOP stream: the first video or metadata, or a keyframe
    /// when the current stream already has one (a keyframe after metadata and
    /// configuration alone belongs to that stream).
    fn starts_gop(&self, msg: &Message, info: MediaInfo) -> bool {
        self.mapping == MediaMapping::Tracks
            && match msg.type_id {
                9 => self.gop.is_none() || (info.keyframe && !info.essential && self.gop_keyed),
                18 => self.gop.is_none(),
                8 => info.essential && self.gop.is_none(),
                _ => false,
            }
    }

    async fn write(
        &mut self,
        command: &mut SendStream,
        target: Target,
        bufs: &mut Vec<Bytes>,
        due: Option<tokio::time::Instant>,
    ) -> Result<(), WriteError> {
        if bufs.is_empty() {
            return Ok(());
        }
        let stream = match target {
            Target::Command => command,
            Target::Audio => {
                if self.audio.is_none() {
                    self.audio = Some(self.open(PRIORITY_AUDIO).await?);
                }
                match self.audio.as_mut() {
                    Some(s) => s,
                    None => return Ok(()),
                }
            }
            Target::Gop => return self.write_gop(bufs, due).await,
        };
        let result = stream.write_all_chunks(bufs).await;
        bufs.clear();
        result
    }

    /// Writes to the current GOP's stream, waiting for room in the send window until
    /// its share of the budget (counted from `due`) is spent; after that the rest of the
    /// GOP is cut. A paced source blocked by earlier writes has spent part of it already.
    async fn write_gop(
        &mut self,
        bufs: &mut Vec<Bytes>,
        due: Option<tokio::time::Instant>,
    ) -> Result<(), WriteError> {
        let Some(stream) = self.gop.as_mut() else {
            bufs.clear();
            return Ok(());
        };
        let until = due.unwrap_or_else(tokio::time::Instant::now) + self.max_latency / BUDGET_SHARE;
        let written = tokio::time::timeout_at(until, stream.write_all_chunks(bufs)).await;
        bufs.clear();
        match written {
            Ok(result) => result,
            Err(_) => {
                self.cut_gop();
                Ok(())
            }
        }
    }

    /// Cancels the rest of the current GOP (what it sent so far stays delivered) and
    /// skips video up to the next keyframe.
    fn cut_gop(&mut self) {
        if let Some(mut gop) = self.gop.take() {
            let _ = gop.reset(ErrorCode::FrameCancelled.to_varint());
            self.stats.gops_cut.fetch_add(1, Ordering::Relaxed);
            debug!(stream = %gop.id(), "the path fell behind: rest of the GOP cut");
        }
        self.skip_video = true;
    }

    /// Sizes the connection's send window to the path: about the budget's share of media
    /// at the rate the path delivers, so that what is accepted is sent within that
    /// share, and a write that finds no room tells the sender the path fell behind.
    fn fit_send_window(&mut self) {
        self.window.fit(&self.conn);
    }

    /// Ends the media streams and waits (at most `limit`) until the peer has all of
    /// them: media and commands travel on different streams, so a publisher's
    /// `deleteStream` must not overtake its last frames.
    pub async fn drain(&mut self, limit: Duration) {
        let mut streams: Vec<SendStream> = self.audio.take().into_iter().chain(self.gop.take()).collect();
        for s in &mut streams {
            let _ = s.finish();
        }
        // Each stream's acknowledgement progresses on its own; awaiting them in turn takes
        // as long as the slowest.
        let all = async {
            for s in &streams {
                let _ = s.stopped().await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }

    async fn open(&self, priority: i32) -> Result<SendStream, WriteError> {
        let s = self.conn.open_uni().await.map_err(WriteError::ConnectionLost)?;
        debug!(stream = %s.id(), priority, "media stream opened");
        let _ = s.set_priority(priority);
        Ok(s)
    }

    /// Finishes the current GOP's stream. Unacknowledged after [`STALE_AFTER`], it yields
    /// to newer GOPs; after `max_latency`, what is left of it is cancelled.
    fn rotate_gop(&mut self) {
        let Some(mut old) = self.gop.take() else { return };
        let _ = old.finish();
        let stats = self.stats.clone();
        let budget = self.max_latency;
        let id = old.id();
        tokio::spawn(async move {
            let stale = tokio::time::sleep(STALE_AFTER.min(budget));
            let cancel = tokio::time::sleep(budget);
            tokio::pin!(stale, cancel);
            let mut demoted = false;
            loop {
                tokio::select! {
                    _ = old.stopped() => {
                        stats.gops_delivered.fetch_add(1, Ordering::Relaxed);
                        debug!(stream = %id, "GOP delivered");
                        return;
                    }
                    _ = &mut stale, if !demoted => {
                        demoted = true;
                        let _ = old.set_priority(PRIORITY_STALE_GOP);
                    }
                    _ = &mut cancel => break,
                }
            }
            if old.reset(ErrorCode::FrameCancelled.to_varint()).is_ok() {
                stats.gops_cancelled.fetch_add(1, Ordering::Relaxed);
                debug!(stream = %id, "stale GOP cancelled");
            }
        });
    }
}

/// The command stream's priority, set once it is open.
pub fn prioritise_commands(s: &SendStream) {
    let _ = s.set_priority(PRIORITY_COMMANDS);
}

/// Writes command frames.
pub async fn write_commands(s: &mut SendStream, out: Bytes) -> Result<(), WriteError> {
    s.write_chunk(out).await
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::transport::quic::{client_endpoint, server_endpoint, QuicSettings};
    use crate::transport::tls::{self, Trust, ALPN_ROQR};

    fn video(timestamp: u32, keyframe: bool, len: usize) -> (Bytes, Message, MediaInfo) {
        let mut payload = vec![0u8; len];
        payload[0] = if keyframe { 0x17 } else { 0x27 };
        payload[1] = 1;
        let msg = Message { csid: 6, timestamp, type_id: 9, stream_id: 1, payload: payload.into() };
        (frame::encode_header(0, &msg), msg, MediaInfo { keyframe, essential: false, due: None })
    }

    /// A player that fell behind drains its backlog in one batch, which may span
    /// keyframes. The sender must not let a new GOP's stream overtake the old GOP's tail
    /// written in the same instant (old GOPs yield to new ones only once they are stale),
    /// and the receiver's per-stream readers must not reorder a tail and a keyframe that
    /// arrive in one packet: either way the tail would reach the player after the next
    /// keyframe, out of order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_across_keyframes_arrive_in_order() {
        // Large GOPs (several packets per frame) test the sender's priorities; tiny ones
        // (many frames per packet) the receiver's readers.
        for (gops, frames, key_len, len) in [(3, 10, 60_000, 25_000), (150, 3, 200, 100)] {
            batch_arrives_in_order(gops, frames, key_len, len).await;
        }
    }

    /// A connected pair on loopback: the server's connection and command stream (the
    /// sending side here) and the frames the client's readers hand over.
    struct Pair {
        _endpoints: (quinn::Endpoint, crate::transport::quic::ClientEndpoint, tempfile::TempDir),
        server_conn: Connection,
        command: SendStream,
        rx: mpsc::Receiver<Incoming>,
        _tasks: JoinSet<()>,
    }

    async fn pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = tls::dev_identity(dir.path()).unwrap();
        let q = QuicSettings::default();
        let (server, _) = server_endpoint(UdpSocket::bind("127.0.0.1:0").unwrap(), &id, &q).unwrap();
        let addr = server.local_addr().unwrap();
        let trust = Trust::CaFile(dir.path().join(tls::DEV_CA_FILE));
        let client = client_endpoint(addr, &trust, &q, ALPN_ROQR).unwrap();
        let accepting = async { server.accept().await.unwrap().await };
        let (server_conn, conn) = tokio::join!(accepting, client.connect(addr, "localhost"));
        let (server_conn, conn) = (server_conn.unwrap(), conn.unwrap());
        let (mut up, down) = conn.open_bi().await.unwrap();
        up.write_all(b"x").await.unwrap();
        let (command, _recv) = server_conn.accept_bi().await.unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let mut tasks = JoinSet::new();
        let limits = ReadLimits { max_payload: 1 << 20, max_pending: 16 << 20 };
        spawn_readers(&conn, down, limits, tx, &mut tasks);
        Pair { _endpoints: (server, client, dir), server_conn, command, rx, _tasks: tasks }
    }

    /// The next frame's timestamp.
    #[test]
    fn delivery_rate_is_the_mean_of_the_last_second() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = DeliveryRate::default();
        assert_eq!(r.on_sample(ms(0), 0), None);
        assert_eq!(r.on_sample(ms(100), 100_000), None, "under 200 ms measured");
        // 100 kB in the first 100 ms (a burst), then 10 kB per 100 ms.
        assert_eq!(r.on_sample(ms(200), 110_000), Some(550_000.0));
        let mut total = 110_000;
        let mut last = None;
        for n in 3..=12 {
            total += 10_000;
            last = r.on_sample(ms(n * 100), total);
        }
        // The burst is over a second old: the path delivers 100 kB/s.
        assert_eq!(last, Some(100_000.0));
    }

    async fn next_frame(rx: &mut mpsc::Receiver<Incoming>) -> u32 {
        loop {
            if let Some(Incoming::Frame { frame, .. }) = rx.recv().await {
                return frame.message.timestamp;
            }
        }
    }

    async fn batch_arrives_in_order(gops: u32, frames: u32, key_len: usize, len: usize) {
        let test = async {
            let mut p = pair().await;
            let mut sender =
                MediaSender::new(p.server_conn.clone(), MediaMapping::Tracks, Duration::from_secs(2));
            let batch: Vec<_> = (0..gops * frames)
                .map(|i| video(i * 33, i % frames == 0, if i % frames == 0 { key_len } else { len }))
                .collect();
            sender.send_batch(&mut p.command, &batch).await.unwrap();
            let mut seen = Vec::new();
            while seen.len() < batch.len() {
                seen.push(next_frame(&mut p.rx).await);
            }
            seen
        };
        let seen = tokio::time::timeout(Duration::from_secs(10), test).await.expect("frames did not arrive");
        let expected: Vec<u32> = (0..gops * frames).map(|i| i * 33).collect();
        assert_eq!(seen, expected, "video reached the player out of order");
    }

    /// An older GOP stream that is still open (its FIN lost, or a peer that keeps a
    /// pictures stream open) does not hold a new GOP back once its reader has read what it
    /// had, and what reaches it after the new GOP started is stale: dropped, never
    /// delivered out of order. An open audio stream holds nothing back and loses nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_older_gop_stream_neither_holds_back_nor_reorders_a_new_gop() {
        let test = async {
            let mut p = pair().await;
            let encoded = |(header, msg, _): (Bytes, Message, MediaInfo)| [header, msg.payload].concat();
            let audio_frame = |timestamp| {
                let msg = Message {
                    csid: 4,
                    timestamp,
                    type_id: 8,
                    stream_id: 1,
                    payload: Bytes::from_static(&[0xaf, 1, 9]),
                };
                encoded((
                    frame::encode_header(0, &msg),
                    msg,
                    MediaInfo { keyframe: false, essential: false, due: None },
                ))
            };
            let mut audio = p.server_conn.open_uni().await.unwrap();
            audio.write_all(&audio_frame(0)).await.unwrap();
            let mut old = p.server_conn.open_uni().await.unwrap();
            old.write_all(&encoded(video(0, true, 300))).await.unwrap();
            let mut got = vec![next_frame(&mut p.rx).await, next_frame(&mut p.rx).await];
            got.sort_unstable();
            assert_eq!(got, [0, 0]);

            let started = tokio::time::Instant::now();
            let mut new = p.server_conn.open_uni().await.unwrap();
            new.write_all(&encoded(video(33, true, 300))).await.unwrap();
            assert_eq!(next_frame(&mut p.rx).await, 33);
            let held = started.elapsed();
            assert!(held < ORDER_WAIT / 2, "held {held:?} behind an open stream that had nothing more");

            // A retransmitted tail of the old GOP, after the new one started: dropped.
            old.write_all(&encoded(video(20, false, 300))).await.unwrap();
            old.finish().unwrap();
            audio.write_all(&audio_frame(40)).await.unwrap();
            new.write_all(&encoded(video(66, false, 300))).await.unwrap();
            let mut got = vec![next_frame(&mut p.rx).await, next_frame(&mut p.rx).await];
            got.sort_unstable();
            assert_eq!(got, [40, 66], "the stale frame was delivered, or audio was lost");
        };
        tokio::time::timeout(Duration::from_secs(10), test).await.expect("frames did not arrive");
    }
}
