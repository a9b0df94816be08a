//! Redundant sending on lossy paths: every QUIC datagram to a lossy peer goes out more
//! than once.
//!
//! On a path that loses packets at random (Wi-Fi, cellular, a congested last mile that
//! is not *our* congestion), a lost packet costs a loss detection plus a retransmission,
//! about 1.5 round trips, and every frame it belonged to arrives that much late. A video
//! frame is 8-10 packets, so at 2 % loss a sixth of the frames is late: that is the p99
//! of every reliable transport, however good its congestion control (bench/RESULTS.md).
//! Sending each datagram `k` times turns a random loss rate `p` into `p^k` (2 % into
//! 0.04 %), so almost no frame waits for a retransmission, at the price of `k` times the
//! bandwidth. The receiver's QUIC stack drops the copies by packet number, so it needs
//! nothing: this works with any QUIC peer.
//!
//! Copies only help when the path has spare capacity and the loss is random. They hurt a
//! path that is full (they add to the queue that causes the loss: a link whose rate fell
//! below the stream's, with a shallow bottleneck queue, lost 85 % with three copies and
//! stalled its players for 18 s), so [`Policy`] tells congestive loss from random loss
//! and copies only the latter. Congestive is loss that comes with a queue (RTT above its
//! floor), loss above what copies can mend, loss in bursts (many packets declared lost
//! at once: a bottleneck queue overflowing, where random loss takes them one by one),
//! and loss that rises with the sending rate (more of it once copies went on). Any of
//! these turns copies off and keeps them off until the path has shown none for a while;
//! otherwise copies go on from the measured loss, and now and then, at growing
//! intervals, a probe sends one datagram in [`PROBE_SHARE`] without copies to see whether
//! the loss has gone: the loss QUIC then sees is almost all theirs, a `1/PROBE_SHARE`
//! of the path's, so the path is measured while most frames keep their copies (a probe
//! without any copies left every frame exposed for as long as it took to find the loss
//! again, and that was the tail of RoQR's p99 at 100 ms / 5 %). [`Policy`] is sans-IO (statistics in, decisions out); [`Redundancy`] is the I/O
//! edge: a UDP socket wrapper that sends the copies, and a watcher per connection that
//! feeds the policy from quinn's statistics.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Connection, Runtime, UdpPoller};

/// Whether QUIC senders may send redundant copies on lossy paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RedundancyMode {
    /// Copies while the measured loss calls for them and the path has room. The default.
    Auto,
    /// Never: every datagram once.
    Off,
}

impl fmt::Display for RedundancyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
        })
    }
}

/// Most copies of a datagram: 3 copies hold 10 % random loss to 0.1 %; more only
/// multiply the bandwidth.
pub const MAX_COPIES: u8 = 3;
/// Loss rate (per packet) the copies aim for: a 10-packet frame is then late in 0.5 %
/// of the cases, inside a p99.
const TARGET_LOSS: f64 = 5e-4;
/// Measured loss at which copies start: below it retransmissions are rare enough.
const ON_LOSS: f64 = 0.002;
/// Loss above this is not what copies mend: [`MAX_COPIES`] bring 10 % random loss to
/// 0.1 %, and a path losing more is one that cannot carry what is sent. Through copies
/// it is the path's own loss behind them that counts: 1 % getting through two copies is
/// 10 % behind them.
const MENDABLE_LOSS: f64 = 0.10;
/// Packets declared lost per loss detection (quinn's congestion events) from which the
/// losses come in bursts. Random loss is found a packet at a time (about 1.1 per event
/// at 5 %); an overflowing queue drops runs of packets, found together.
const BURST_LOSSES: f64 = 2.5;
/// Losses a burst verdict needs (fewer in runs only keep copies from starting).
const BURST_MIN_LOST: u64 = 4;
/// Through copies, the path's own loss (inferred) may be this many times what it was
/// measured at before them; more, and the loss rises with the sending rate.
const RISE_FACTOR: f64 = 3.0;
/// Packets a loss rate needs before it is believed, and losses at the least.
const MIN_SENT: u64 = 150;
const MIN_LOST: u64 = 2;
/// How far back the loss rate looks.
const WINDOW: Duration = Duration::from_secs(3);
/// Copies stay on this long before the first probe without them; each probe that finds
/// the loss still there doubles it, up to [`MAX_HOLD`].
const BASE_HOLD: Duration = Duration::from_secs(30);
const MAX_HOLD: Duration = Duration::from_secs(300);
/// A probe that finds no loss for this long ends copies: the path got better.
const PROBE_FOR: Duration = Duration::from_secs(5);
/// During a probe one datagram in this many goes without copies.
pub const PROBE_SHARE: u64 = 4;
/// After the last sign of congestion, or copies that did not help, no copies for this long.
const BLOCK: Duration = Duration::from_secs(10);
/// After copies start (or rise), losses are counted only after this long (or four round
/// trips, if longer): QUIC declares a packet lost up to about a round trip after it was
/// sent, so the first losses seen then belong to packets sent without copies.
const SETTLE: Duration = Duration::from_secs(1);
/// How often a connection's statistics are read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One reading of a connection's path statistics (quinn's `PathStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathSample {
    /// Packets sent so far.
    pub sent_packets: u64,
    /// Packets declared lost so far (with copies: packets whose every copy was lost).
    pub lost_packets: u64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Lowest round-trip time seen.
    pub min_rtt: Duration,
    /// Loss detections that found packets lost so far (quinn's congestion events).
    pub congestion_events: u64,
}

/// A change of the number of copies, and why (for the log).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Send `copies` copies of each datagram: the measured `loss` calls for it.
    On {
        /// Copies of each datagram (2 or more).
        copies: u8,
        /// Loss rate per packet that was measured (without copies, or inferred through them).
        loss: f64,
    },
    /// One copy again.
    Off(OffReason),
    /// Keep `copies`, but one datagram in [`PROBE_SHARE`] goes alone, to measure the
    /// path's loss behind them.
    Probe {
        /// Copies of the other datagrams.
        copies: u8,
    },
}

/// Why copies stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffReason {
    /// The path is congested: copies would add to the loss they fight.
    Congested(Congestion),
    /// A probe found no loss left: the path got better.
    LossGone,
}

/// A sign that the path's loss is its own congestion, not random loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// The RTT is well above its floor: a bottleneck queue fills.
    Queueing,
    /// More loss than copies can mend (or loss getting through them): the path cannot
    /// carry what is sent.
    HeavyLoss,
    /// Packets are lost in runs, as an overflowing queue drops them.
    Bursts,
    /// The loss rose with the sending rate (once copies went on).
    RisesWithRate,
}

impl fmt::Display for OffReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Congested(c) => write!(f, "the path is congested: {c}"),
            Self::LossGone => f.write_str("a probe found the loss gone"),
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Queueing => "it queues (RTT above its floor)",
            Self::HeavyLoss => "more loss than copies can mend",
            Self::Bursts => "packets lost in bursts",
            Self::RisesWithRate => "the loss rose with the sending rate",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    at: Instant,
    sent: u64,
    lost: u64,
    events: u64,
    copies: u8,
    probing: bool,
}

/// Decides how many copies of each datagram a connection sends, from its statistics.
#[derive(Debug)]
pub struct Policy {
    mode: RedundancyMode,
    copies: u8,
    last: Option<PathSample>,
    window: VecDeque<Interval>,
    /// Until when losses still belong to the previous number of copies: only intervals
    /// after it count for the current one.
    settled_at: Option<Instant>,
    hold: Duration,
    hold_until: Option<Instant>,
    probe_since: Option<Instant>,
    blocked_until: Option<Instant>,
    /// The loss measured without copies when they went on.
    loss_before: f64,
}

impl Policy {
    /// A policy starting at one copy.
    pub fn new(mode: RedundancyMode) -> Self {
        Self {
            mode,
            copies: 1,
            last: None,
            window: VecDeque::new(),
            settled_at: None,
            hold: BASE_HOLD,
            hold_until: None,
            probe_since: None,
            blocked_until: None,
            loss_before: 0.0,
        }
    }

    /// Copies of each datagram now.
    pub fn copies(&self) -> u8 {
        self.copies
    }

    /// Feeds one reading (every [`SAMPLE_EVERY`]); returns a change of copies, if any.
    pub fn on_sample(&mut self, now: Instant, s: PathSample) -> Option<Decision> {
        let prev = self.last.replace(s)?;
        self.window.push_back(Interval {
            at: now,
            sent: s.sent_packets.saturating_sub(prev.sent_packets),
            lost: s.lost_packets.saturating_sub(prev.lost_packets),
            events: s.congestion_events.saturating_sub(prev.congestion_events),
            copies: self.copies,
            probing: self.probe_since.is_some(),
        });
        while self.window.front().is_some_and(|i| now.duration_since(i.at) > WINDOW) {
            self.window.pop_front();
        }
        if self.mode == RedundancyMode::Off {
            return None;
        }
        let (sent, lost, events) = self.current_totals();
        let rate = if sent == 0 { 0.0 } else { lost as f64 / sent as f64 };
        let enough = sent >= MIN_SENT && lost >= MIN_LOST;
        // Through k copies the path's own loss is the k-th root of what gets through;
        // in a probe, nearly all of it is the share sent alone.
        let inferred = match self.probe_since {
            Some(_) => rate * PROBE_SHARE as f64,
            None => rate.powf(1.0 / f64::from(self.copies)),
        };
        if let Some(why) = self.congestion(s, rate, inferred, (sent, lost, events)) {
            // Held off until the path has shown no congestion for a while.
            self.blocked_until = Some(now + BLOCK);
            if self.copies > 1 {
                return Some(self.stop(now, OffReason::Congested(why)));
            }
            return None;
        }
        if let Some(since) = self.probe_since {
            if enough && inferred >= ON_LOSS {
                // The loss is still there: full copies again (more if it grew), and
                // the next probe after twice the hold.
                self.hold = (self.hold * 2).min(MAX_HOLD);
                self.probe_since = None;
                self.copies = self.copies.max(copies_for(inferred));
                self.settled_at = Some(now + SETTLE.max(s.rtt * 4));
                self.hold_until = Some(now + self.hold);
                return Some(Decision::On { copies: self.copies, loss: inferred });
            }
            if now.duration_since(since) >= PROBE_FOR {
                self.probe_since = None;
                self.copies = 1;
                self.hold = BASE_HOLD;
                self.settled_at = Some(now);
                return Some(Decision::Off(OffReason::LossGone));
            }
            return None;
        }
        if self.copies > 1 {
            if enough && copies_for(inferred) > self.copies {
                return Some(self.start(now, s.rtt, inferred));
            }
            if self.hold_until.is_some_and(|t| now >= t) {
                // Counted at once: what QUIC still declares lost of the packets sent with
                // copies is next to nothing.
                self.settled_at = Some(now);
                self.probe_since = Some(now);
                return Some(Decision::Probe { copies: self.copies });
            }
            return None;
        }
        if self.blocked_until.is_some_and(|t| now < t) {
            return None;
        }
        if enough && rate >= ON_LOSS && !bursty(lost, events) {
            self.loss_before = rate;
            return Some(self.start(now, s.rtt, rate));
        }
        None
    }

    /// Whether a probe is on: one datagram in [`PROBE_SHARE`] goes without copies.
    pub fn probing(&self) -> bool {
        self.probe_since.is_some()
    }

    /// Whether the loss now is the path's congestion rather than random loss; `rate` is
    /// what gets through the current copies, `inferred` the path's own loss behind them,
    /// from `totals` (packets sent, lost, loss detections).
    fn congestion(
        &self,
        s: PathSample,
        rate: f64,
        inferred: f64,
        totals: (u64, u64, u64),
    ) -> Option<Congestion> {
        let (sent, lost, events) = totals;
        // A loss rate is judged on enough packets sent alone: in a probe only one in
        // PROBE_SHARE is, and a few losses more, times PROBE_SHARE, would read as heavy.
        let alone = if self.probing() { sent / PROBE_SHARE } else { sent };
        let judged = alone >= MIN_SENT && lost >= MIN_LOST;
        // BBR keeps its queue near empty; an RTT well above the floor means the path is
        // full (a capacity drop with a deep queue).
        if !s.min_rtt.is_zero() && s.rtt > s.min_rtt * 3 / 2 + Duration::from_millis(20) {
            return Some(Congestion::Queueing);
        }
        if judged && rate.max(inferred) > MENDABLE_LOSS {
            return Some(Congestion::HeavyLoss);
        }
        if lost >= BURST_MIN_LOST && bursty(lost, events) {
            return Some(Congestion::Bursts);
        }
        if self.copies > 1 && judged && inferred > self.loss_before * RISE_FACTOR {
            return Some(Congestion::RisesWithRate);
        }
        None
    }

    /// Packets sent and lost, and loss detections, with the current number of copies
    /// and probe state (once settled), in the window.
    fn current_totals(&self) -> (u64, u64, u64) {
        let probing = self.probing();
        self.window
            .iter()
            .filter(|i| i.copies == self.copies && i.probing == probing)
            .filter(|i| self.settled_at.is_none_or(|t| i.at > t))
            .fold((0, 0, 0), |(s, l, e), i| (s + i.sent, l + i.lost, e + i.events))
    }

    fn start(&mut self, now: Instant, rtt: Duration, loss: f64) -> Decision {
        self.copies = copies_for(loss);
        // Losses QUIC declares in the next round trips are mostly of packets sent before.
        self.settled_at = Some(now + SETTLE.max(rtt * 4));
        self.hold_until = Some(now + self.hold);
        Decision::On { copies: self.copies, loss }
    }

    fn stop(&mut self, now: Instant, why: OffReason) -> Decision {
        self.copies = 1;
        self.settled_at = Some(now);
        self.probe_since = None;
        self.hold = BASE_HOLD;
        self.blocked_until = Some(now + BLOCK);
        Decision::Off(why)
    }
}

/// Whether `lost` packets found in `events` loss detections came in runs.
fn bursty(lost: u64, events: u64) -> bool {
    lost as f64 >= BURST_LOSSES * events.max(1) as f64
}

/// The fewest copies that bring random loss `p` down to [`TARGET_LOSS`], at most
/// [`MAX_COPIES`].
fn copies_for(p: f64) -> u8 {
    (2..MAX_COPIES).find(|&k| p.powi(i32::from(k)) <= TARGET_LOSS).unwrap_or(MAX_COPIES)
}

/// Copies per destination and counters, shared by an endpoint's socket (also across a
/// rebind) and the watchers of its connections.
#[derive(Debug, Default)]
struct Shared {
    copies: RwLock<HashMap<SocketAddr, Copies>>,
    /// Datagrams to probed destinations, counted for the share sent alone.
    probe_datagrams: AtomicU64,
    /// Destinations with more than one copy: while 0, sending looks nothing up.
    redundant: AtomicUsize,
    extra_datagrams: AtomicU64,
    extra_bytes: AtomicU64,
    skipped: AtomicU64,
    watched: Mutex<Watched>,
}

/// The connections an endpoint watches. One task samples them all each
/// [`SAMPLE_EVERY`]: a timer per connection would wake the runtime hundreds of times a
/// second with many players (about 8 % of the relay's CPU at 300 QUIC players, measured).
#[derive(Debug, Default)]
struct Watched {
    conns: Vec<WatchedConn>,
    /// The sampling task runs (it ends when no connection is left).
    sampling: bool,
}

#[derive(Debug)]
struct WatchedConn {
    conn: Connection,
    policy: Policy,
    peer: SocketAddr,
}

/// How a destination's datagrams go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Copies {
    /// Copies of each datagram.
    n: u8,
    /// One datagram in [`PROBE_SHARE`] goes alone.
    probe: bool,
}

impl Copies {
    const ONE: Copies = Copies { n: 1, probe: false };

    fn of(policy: &Policy) -> Self {
        Copies { n: policy.copies(), probe: policy.probing() }
    }
}

impl Shared {
    /// Copies of the next datagram to `to`.
    fn copies_to(&self, to: SocketAddr) -> u8 {
        if self.redundant.load(Ordering::Relaxed) == 0 {
            return 1;
        }
        let c =
            self.copies.read().unwrap_or_else(|e| e.into_inner()).get(&to).copied().unwrap_or(Copies::ONE);
        if c.probe && self.probe_datagrams.fetch_add(1, Ordering::Relaxed).is_multiple_of(PROBE_SHARE) {
            return 1;
        }
        c.n
    }

    fn set(&self, to: SocketAddr, copies: Copies) {
        let mut map = self.copies.write().unwrap_or_else(|e| e.into_inner());
        let was = if copies.n > 1 { map.insert(to, copies) } else { map.remove(&to) };
        match (was.is_some(), copies.n > 1) {
            (false, true) => self.redundant.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.redundant.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// Redundant sending for one endpoint: wraps its UDP socket and watches its connections.
#[derive(Debug, Clone)]
pub struct Redundancy {
    mode: RedundancyMode,
    shared: Arc<Shared>,
}

/// Datagrams and bytes sent as redundant copies (beyond the first of each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedundancyStats {
    /// Extra datagrams sent.
    pub extra_datagrams: u64,
    /// Extra bytes sent.
    pub extra_bytes: u64,
    /// Destinations receiving copies now.
    pub redundant_paths: usize,
    /// Copies not sent because the socket's send buffer was full.
    pub skipped: u64,
}

impl Redundancy {
    /// Redundancy in `mode` (with [`RedundancyMode::Off`] the socket wrapper only forwards).
    pub fn new(mode: RedundancyMode) -> Self {
        Self { mode, shared: Arc::default() }
    }

    /// `socket` as quinn's socket, sending copies where the watchers ask for them.
    pub fn wrap(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(RedundantSocket { inner, shared: self.shared.clone() }))
    }

    /// Starts watching `conn`: its statistics feed a [`Policy`] every [`SAMPLE_EVERY`]
    /// until it closes. Does nothing with [`RedundancyMode::Off`].
    pub fn watch(&self, conn: &Connection) {
        if self.mode == RedundancyMode::Off {
            return;
        }
        let mut watched = self.shared.watched.lock().unwrap_or_else(|e| e.into_inner());
        let peer = conn.remote_address();
        watched.conns.push(WatchedConn { conn: conn.clone(), policy: Policy::new(self.mode), peer });
        if !watched.sampling {
            watched.sampling = true;
            tokio::spawn(sample(Arc::downgrade(&self.shared)));
        }
    }

    /// Copies sent so far.
    pub fn stats(&self) -> RedundancyStats {
        RedundancyStats {
            extra_datagrams: self.shared.extra_datagrams.load(Ordering::Relaxed),
            extra_bytes: self.shared.extra_bytes.load(Ordering::Relaxed),
            redundant_paths: self.shared.redundant.load(Ordering::Relaxed),
            skipped: self.shared.skipped.load(Ordering::Relaxed),
        }
    }
}

/// Samples every watched connection of an endpoint each [`SAMPLE_EVERY`], until none is
/// left or the endpoint is gone.
async fn sample(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let mut changes = Vec::new();
        let sampling = {
            let mut watched = shared.watched.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            watched.conns.retain_mut(|w| w.sample(now, &shared, &mut changes));
            // Under the lock: a connection watched from now on starts a new task.
            watched.sampling = !watched.conns.is_empty();
            watched.sampling
        };
        for (peer, copies) in changes {
            shared.set(peer, copies);
        }
        if !sampling {
            return;
        }
    }
}

impl WatchedConn {
    /// Feeds the policy one reading and adds the copies to set, per destination, to
    /// `changes` where they change; `false` once the connection is closed (its copies end).
    fn sample(&mut self, now: Instant, shared: &Shared, changes: &mut Vec<(SocketAddr, Copies)>) -> bool {
        if self.conn.close_reason().is_some() {
            changes.push((self.peer, Copies::ONE));
            return false;
        }
        let now_peer = self.conn.remote_address();
        if now_peer != self.peer {
            // The peer migrated: its copies follow it.
            changes.push((self.peer, Copies::ONE));
            changes.push((now_peer, Copies::of(&self.policy)));
            self.peer = now_peer;
        }
        let p = self.conn.stats().path;
        let sample = PathSample {
            sent_packets: p.sent_packets,
            lost_packets: p.lost_packets,
            rtt: p.rtt,
            min_rtt: p.min_rtt,
            congestion_events: p.congestion_events,
        };
        let peer = self.peer;
        tracing::debug!(
            %peer,
            sent = sample.sent_packets,
            lost = sample.lost_packets,
            loss_events = sample.congestion_events,
            rtt_ms = sample.rtt.as_secs_f64() * 1e3,
            copies = self.policy.copies(),
            copies_sent = shared.extra_datagrams.load(Ordering::Relaxed),
            copies_skipped = shared.skipped.load(Ordering::Relaxed),
            "path sample"
        );
        match self.policy.on_sample(now, sample) {
            Some(Decision::On { copies, loss }) => {
                tracing::info!(%peer, copies, loss_pct = loss * 100.0, "lossy path: sending redundant copies");
            }
            Some(Decision::Off(why)) => tracing::info!(%peer, reason = %why, "redundant copies off"),
            Some(Decision::Probe { copies }) => {
                tracing::debug!(%peer, copies, share = PROBE_SHARE, "probing the path: one datagram in share alone");
            }
            None => return true,
        }
        changes.push((peer, Copies::of(&self.policy)));
        true
    }
}

/// quinn's UDP socket, sending each transmit as often as its destination's copies say.
#[derive(Debug)]
struct RedundantSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
}

impl AsyncUdpSocket for RedundantSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let copies = self.shared.copies_to(transmit.destination);
        if copies <= 1 {
            return self.inner.try_send(transmit);
        }
        // Each packet right before its copies: the receiver must never see a later packet
        // while a copy of an earlier one is still to come, or it acknowledges across the
        // gap at once and the sender declares the packet lost (and resends it) although a
        // copy arrives a moment later. So a GSO batch is split into single datagrams.
        let len = transmit.contents.len();
        let segment = transmit.segment_size.unwrap_or(len).max(1);
        for datagram in transmit.contents.chunks(segment) {
            let one = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: datagram,
                segment_size: None,
                src_ip: transmit.src_ip,
            };
            // On a full socket buffer quinn retries the whole transmit when writable; if
            // part of it went out already, the receiver drops those packets as duplicates.
            self.inner.try_send(&one)?;
            for sent in 1..copies {
                // Best effort: a copy the socket buffer has no room for is not sent.
                if self.inner.try_send(&one).is_err() {
                    self.shared.skipped.fetch_add(u64::from(copies - sent), Ordering::Relaxed);
                    break;
                }
                self.shared.extra_datagrams.fetch_add(1, Ordering::Relaxed);
                self.shared.extra_bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives a policy with 150 packets per sample (300/s, a 3 Mbit/s stream).
    struct Path {
        policy: Policy,
        now: Instant,
        s: PathSample,
    }

    impl Path {
        fn new(mode: RedundancyMode) -> Self {
            let s = PathSample { rtt: 52 * MS, min_rtt: 50 * MS, ..Default::default() };
            let mut p = Self { policy: Policy::new(mode), now: Instant::now(), s };
            assert_eq!(p.policy.on_sample(p.now, p.s), None);
            p
        }

        /// A path whose 2 % random loss turned two copies on.
        fn with_two_copies() -> Self {
            let mut p = Self::new(RedundancyMode::Auto);
            p.step(3);
            assert_eq!(p.policy.copies(), 2);
            p
        }

        /// One sample of 150 packets (300/s, a 3 Mbit/s stream) with `lost` random
        /// losses (each found on its own).
        fn step(&mut self, lost: u64) -> Option<Decision> {
            self.step_with(lost, lost)
        }

        /// One sample of 150 packets with `lost` losses found in `events` detections.
        fn step_with(&mut self, lost: u64, events: u64) -> Option<Decision> {
            self.now += SAMPLE_EVERY;
            self.s.sent_packets += 150;
            self.s.lost_packets += lost;
            self.s.congestion_events += events;
            self.policy.on_sample(self.now, self.s)
        }

        /// Steps for `d`, `lost_per_sample(copies)` losses each; the decisions seen.
        fn run(&mut self, d: Duration, mut lost_per_sample: impl FnMut(u8) -> u64) -> Vec<Decision> {
            self.run_probed(d, |copies, _| lost_per_sample(copies))
        }

        /// As `run`, the losses also depending on whether a probe is on.
        fn run_probed(
            &mut self,
            d: Duration,
            mut lost_per_sample: impl FnMut(u8, bool) -> u64,
        ) -> Vec<Decision> {
            let n = d.as_millis() / SAMPLE_EVERY.as_millis();
            (0..n)
                .filter_map(|_| self.step(lost_per_sample(self.policy.copies(), self.policy.probing())))
                .collect()
        }
    }

    #[test]
    fn clean_path_never_copies() {
        let mut p = Path::new(RedundancyMode::Auto);
        // One loss now and then (0.07 %) is below the threshold.
        let mut i = 0;
        let d = p.run(Duration::from_secs(60), |_| {
            i += 1;
            u64::from(i % 10 == 0)
        });
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(p.policy.copies(), 1);
    }

    #[test]
    fn two_percent_loss_gets_two_copies_five_percent_three() {
        let mut p = Path::new(RedundancyMode::Auto);
        assert_eq!(p.step(1), None, "a single loss is not a loss rate");
        match p.step(5) {
            Some(Decision::On { copies: 2, loss }) => assert!((loss - 0.02).abs() < 0.001),
            other => panic!("{other:?}"),
        }
        let mut p = Path::new(RedundancyMode::Auto);
        assert!(matches!(p.step(8), Some(Decision::On { copies: 3, .. })));
    }

    #[test]
    fn off_mode_never_copies() {
        let mut p = Path::new(RedundancyMode::Off);
        assert!(p.run(Duration::from_secs(10), |_| 10).is_empty());
        assert_eq!(p.policy.copies(), 1);
    }

    /// A 2 % path: 3 of 150 packets lost alone, none through two copies, and during a
    /// probe (one packet in four alone) 0.75 per sample: one every other sample.
    fn two_pct() -> impl FnMut(u8, bool) -> u64 {
        let mut i = 0u64;
        move |copies, probing| {
            i += 1;
            match (copies, probing) {
                (1, _) => 3,
                (_, true) => i % 2,
                _ => 0,
            }
        }
    }

    #[test]
    fn copies_hold_through_quiet_loss_then_probe_with_backoff() {
        let mut p = Path::new(RedundancyMode::Auto);
        let mut path = two_pct();
        let d = p.run_probed(Duration::from_secs(2), &mut path);
        assert!(matches!(d[..], [Decision::On { copies: 2, .. }]), "{d:?}");
        // Held for 30 s, then a probe that keeps the copies on three datagrams in four,
        // finds the loss behind them and sends all copies again...
        let d = p.run_probed(Duration::from_secs(31), &mut path);
        assert!(matches!(d[..], [Decision::Probe { copies: 2 }, Decision::On { copies: 2, .. }]), "{d:?}");
        // ... and the next probe comes after 60 s, not 30.
        let d = p.run_probed(Duration::from_secs(50), &mut path);
        assert!(d.is_empty(), "{d:?}");
        let d = p.run_probed(Duration::from_secs(12), &mut path);
        assert!(matches!(d[..], [Decision::Probe { .. }, Decision::On { .. }]), "{d:?}");
    }

    #[test]
    fn a_probe_on_a_five_percent_path_keeps_the_copies() {
        let mut p = Path::new(RedundancyMode::Auto);
        assert!(matches!(p.step(8), Some(Decision::On { copies: 3, .. })));
        p.run(Duration::from_secs(31), |_| 0);
        assert!(p.policy.probing());
        // 4 of the probe's first 150 packets lost (a noisy 10.7 % on the 37 sent alone):
        // the loss is still there, not a congested path.
        let d = p.step(4);
        assert!(matches!(d, Some(Decision::On { copies: 3, .. })), "{d:?}");
        assert!(!p.policy.probing());
    }

    #[test]
    fn a_probe_that_finds_a_clean_path_ends_the_copies() {
        let mut p = Path::new(RedundancyMode::Auto);
        p.run(Duration::from_secs(2), |c| if c == 1 { 3 } else { 0 });
        assert_eq!(p.policy.copies(), 2);
        // The loss is gone: the probe at 30 s finds nothing in 5 s, and copies end.
        let d = p.run(Duration::from_secs(60), |_| 0);
        assert_eq!(d, vec![Decision::Probe { copies: 2 }, Decision::Off(OffReason::LossGone)]);
        assert_eq!(p.policy.copies(), 1);
        assert!(!p.policy.probing());
    }

    #[test]
    fn queueing_turns_copies_off_and_blocks_them() {
        let mut p = Path::with_two_copies();
        // The link falls below the stream: the RTT climbs, losses from the full queue.
        p.s.rtt = 400 * MS;
        assert_eq!(p.step(0), Some(Decision::Off(OffReason::Congested(Congestion::Queueing))));
        // While the path queues, no loss turns them back on.
        let d = p.run(Duration::from_secs(20), |_| 10);
        assert!(d.is_empty(), "{d:?}");
        // The queue is gone, the loss stays: still none until the block (10 s from the
        // last sign of congestion) is over; then they can come back.
        p.s.rtt = 55 * MS;
        let d = p.run(Duration::from_secs(9), |c| if c == 1 { 3 } else { 0 });
        assert!(d.is_empty(), "{d:?}");
        let d = p.run(Duration::from_secs(3), |c| if c == 1 { 3 } else { 0 });
        assert!(matches!(d[..], [Decision::On { .. }]), "{d:?}");
    }

    #[test]
    fn loss_that_gets_through_the_copies_stops_them() {
        let mut p = Path::with_two_copies();
        // 1.3 % gets through two copies, where 0.04 % would if the 2 % were random: the
        // path loses 11 % behind them. Then blocked for a while even though the loss stays.
        let d = p.run(Duration::from_secs(9), |_| 2);
        assert_eq!(d, vec![Decision::Off(OffReason::Congested(Congestion::HeavyLoss))]);
    }

    #[test]
    fn a_link_slower_than_the_stream_never_gets_copies() {
        // The rate fell below the stream's behind a shallow queue: the RTT barely moves,
        // 40 % of the packets are dropped.
        let mut p = Path::new(RedundancyMode::Auto);
        let d = p.run(Duration::from_secs(20), |_| 60);
        assert!(d.is_empty(), "{d:?}");
        // Copies that were on for random loss stop when the link falls.
        let mut p = Path::with_two_copies();
        let d = p.run(Duration::from_secs(5), |_| 60);
        assert_eq!(d, vec![Decision::Off(OffReason::Congested(Congestion::HeavyLoss))]);
    }

    #[test]
    fn losses_in_bursts_never_get_copies() {
        // 4 % lost, but found six at a time: a queue overflowing, not random loss.
        let mut p = Path::new(RedundancyMode::Auto);
        for _ in 0..40 {
            assert_eq!(p.step_with(6, 1), None);
        }
        assert_eq!(p.policy.copies(), 1);
        // The same loss found one at a time gets copies (once the block is over).
        let d = p.run(Duration::from_secs(12), |c| if c == 1 { 6 } else { 0 });
        assert!(matches!(d[..], [Decision::On { copies: 3, .. }]), "{d:?}");
    }

    #[test]
    fn loss_that_rises_with_the_copies_stops_them() {
        let mut p = Path::with_two_copies();
        // 0.67 % through two copies: behind them the path loses 8 %, four times what it
        // lost without them. The copies feed the loss.
        let d = p.run(Duration::from_secs(3), |c| if c == 2 { 1 } else { 0 });
        assert_eq!(d, vec![Decision::Off(OffReason::Congested(Congestion::RisesWithRate))]);
    }

    #[test]
    fn more_loss_through_copies_raises_them() {
        let mut p = Path::with_two_copies();
        // 0.33 % through two copies: the path loses ~6 %, not 2 % (measured on too few
        // packets), and three copies are needed.
        let mut i = 0;
        let d = p.run(Duration::from_secs(4), |c| {
            i += 1;
            u64::from(c == 2 && i % 2 == 0)
        });
        assert!(matches!(d[..], [Decision::On { copies: 3, .. }]), "{d:?}");
    }

    #[test]
    fn losses_of_packets_sent_before_a_change_do_not_count_after_it() {
        let mut p = Path::new(RedundancyMode::Auto);
        assert!(matches!(p.step(8), Some(Decision::On { copies: 3, .. })));
        // QUIC still declares lost what it sent without copies, up to a round trip late...
        assert_eq!(p.step(8), None);
        assert_eq!(p.step(8), None);
        // ...then the path is quiet through the copies, and they stay.
        assert!(p.run(Duration::from_secs(10), |_| 0).is_empty());
        assert_eq!(p.policy.copies(), 3);
    }

    #[test]
    fn a_probed_destination_gets_one_datagram_in_share_alone() {
        let shared = Shared::default();
        let (probed, other): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        shared.set(probed, Copies { n: 3, probe: true });
        shared.set(other, Copies { n: 2, probe: false });
        let sent: Vec<u8> = (0..8).map(|_| shared.copies_to(probed)).collect();
        assert_eq!(sent, [1, 3, 3, 3, 1, 3, 3, 3]);
        assert!((0..8).all(|_| shared.copies_to(other) == 2));
        shared.set(probed, Copies::ONE);
        shared.set(other, Copies::ONE);
        assert_eq!(shared.redundant.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn copies_for_targets() {
        assert_eq!(copies_for(0.005), 2);
        assert_eq!(copies_for(0.02), 2);
        assert_eq!(copies_for(0.05), 3);
        assert_eq!(copies_for(0.5), MAX_COPIES);
    }
}
