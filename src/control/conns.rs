//! Live connections by transport, and the QUIC connections whose transport statistics
//! (RTT, loss, congestion window) `/metrics` reports per connection class. The accept
//! paths register each connection with an RAII guard; a scrape reads atomics and asks
//! quinn for each live QUIC connection's statistics. Nothing here is on the media path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::transport::redundancy::{Redundancy, RedundancyStats};

/// How a connection reached the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKind {
    /// RTMP over TCP.
    Tcp,
    /// RTMPS (TLS over TCP).
    Tls,
    /// QUIC, ALPN `rtmp`: the byte-stream tunnel.
    QuicTunnel,
    /// QUIC, ALPN `roqr`.
    Roqr,
    /// HTTP/1.1 on the TCP port (HTTP-FLV players, the player page), plain text; over
    /// TLS it counts as `Tls`.
    Http,
    /// QUIC, ALPN `h3`: a browser's WebTransport session.
    WebTransport,
}

impl ConnKind {
    /// Every kind, in label order.
    pub const ALL: [ConnKind; 6] = [
        ConnKind::Tcp,
        ConnKind::Tls,
        ConnKind::QuicTunnel,
        ConnKind::Roqr,
        ConnKind::Http,
        ConnKind::WebTransport,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ConnKind::Tcp => "tcp",
            ConnKind::Tls => "tls",
            ConnKind::QuicTunnel => "quic_tunnel",
            ConnKind::Roqr => "roqr",
            ConnKind::Http => "http",
            ConnKind::WebTransport => "webtransport",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// QUIC transport figures summed over connections that have closed, per class, so the
/// totals do not drop when a connection goes.
#[derive(Debug, Default, Clone, Copy)]
struct QuicTotals {
    sent_packets: u64,
    lost_packets: u64,
    congestion_events: u64,
}

impl QuicTotals {
    fn add(&mut self, s: &quinn::ConnectionStats) {
        self.sent_packets += s.path.sent_packets;
        self.lost_packets += s.path.lost_packets;
        self.congestion_events += s.path.congestion_events;
    }
}

/// Connections by transport, and the live QUIC connections. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    open: [AtomicU64; ConnKind::ALL.len()],
    accepted: [AtomicU64; ConnKind::ALL.len()],
    quic: Mutex<QuicConns>,
    next_id: AtomicU64,
    redundancy: OnceLock<Redundancy>,
}

#[derive(Debug, Default)]
struct QuicConns {
    live: HashMap<u64, (ConnKind, quinn::Connection)>,
    closed: HashMap<ConnKind, QuicTotals>,
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct ConnGuard {
    inner: Arc<Inner>,
    kind: ConnKind,
    quic: Option<u64>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.inner.open[self.kind.index()].fetch_sub(1, Ordering::Relaxed);
        if let Some(id) = self.quic {
            let mut quic = lock(&self.inner.quic);
            if let Some((kind, conn)) = quic.live.remove(&id) {
                quic.closed.entry(kind).or_default().add(&conn.stats());
            }
        }
    }
}

/// The QUIC figures of one connection class, live connections and closed ones together.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuicClassStats {
    /// Live connections.
    pub connections: u64,
    /// Mean smoothed RTT of the live connections.
    pub rtt_mean: Duration,
    /// Largest smoothed RTT among them.
    pub rtt_max: Duration,
    /// Mean congestion window, bytes.
    pub cwnd_mean: u64,
    /// Smallest congestion window, bytes.
    pub cwnd_min: u64,
    /// Packets sent, closed connections included.
    pub sent_packets: u64,
    /// Packets declared lost, closed connections included.
    pub lost_packets: u64,
    /// Congestion events, closed connections included.
    pub congestion_events: u64,
}

fn lock(m: &Mutex<QuicConns>) -> MutexGuard<'_, QuicConns> {
    // Every update is a single insert or remove: a poisoned lock still holds valid data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connections {
    /// Counts a TCP or TLS connection (or a QUIC one without statistics) until the guard
    /// drops.
    pub fn open(&self, kind: ConnKind) -> ConnGuard {
        self.inner.open[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.inner.accepted[kind.index()].fetch_add(1, Ordering::Relaxed);
        ConnGuard { inner: self.inner.clone(), kind, quic: None }
    }

    /// Counts a QUIC connection and keeps it for its statistics until the guard drops.
    pub fn open_quic(&self, kind: ConnKind, conn: &quinn::Connection) -> ConnGuard {
        let mut guard = self.open(kind);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.quic).live.insert(id, (kind, conn.clone()));
        guard.quic = Some(id);
        guard
    }

    /// The QUIC endpoint's redundant sending, for its counters (set once, at bind).
    pub fn set_redundancy(&self, r: Redundancy) {
        let _ = self.inner.redundancy.set(r);
    }

    /// Redundant copies the QUIC endpoint sent (zeros before [`Self::set_redundancy`]).
    pub fn redundancy_stats(&self) -> RedundancyStats {
        self.inner.redundancy.get().map(Redundancy::stats).unwrap_or_default()
    }

    /// Connections open now.
    pub fn open_now(&self, kind: ConnKind) -> u64 {
        self.inner.open[kind.index()].load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self, kind: ConnKind) -> u64 {
        self.inner.accepted[kind.index()].load(Ordering::Relaxed)
    }

    /// QUIC figures per class (tunnel, RoQR, WebTransport). Asks quinn for each live connection's
    /// statistics (a short lock on that connection's state); the list is copied first so
    /// the registry lock is not held meanwhile.
    pub fn quic_stats(&self) -> Vec<(ConnKind, QuicClassStats)> {
        let (live, closed): (Vec<(ConnKind, quinn::Connection)>, HashMap<ConnKind, QuicTotals>) = {
            let quic = lock(&self.inner.quic);
            (quic.live.values().cloned().collect(), quic.closed.clone())
        };
        [ConnKind::QuicTunnel, ConnKind::Roqr, ConnKind::WebTransport]
            .into_iter()
            .map(|kind| {
                let stats: Vec<quinn::ConnectionStats> =
                    live.iter().filter(|(k, _)| *k == kind).map(|(_, c)| c.stats()).collect();
                let mut totals = closed.get(&kind).copied().unwrap_or_default();
                for s in &stats {
                    totals.add(s);
                }
                let n = stats.len() as u64;
                let rtt_sum: Duration = stats.iter().map(|s| s.path.rtt).sum();
                let class = QuicClassStats {
                    connections: n,
                    rtt_mean: if n > 0 { rtt_sum / n as u32 } else { Duration::ZERO },
                    rtt_max: stats.iter().map(|s| s.path.rtt).max().unwrap_or_default(),
                    cwnd_mean: stats.iter().map(|s| s.path.cwnd).sum::<u64>().checked_div(n).unwrap_or(0),
                    cwnd_min: stats.iter().map(|s| s.path.cwnd).min().unwrap_or(0),
                    sent_packets: totals.sent_packets,
                    lost_packets: totals.lost_packets,
                    congestion_events: totals.congestion_events,
                };
                (kind, class)
            })
            .collect()
    }
}
