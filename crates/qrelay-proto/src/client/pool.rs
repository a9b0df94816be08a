//! QUIC connections shared by RTMP sessions: one connection per upstream (address,
//! server name, ALPN) carries up to `per_conn` sessions, each on a bidirectional stream of
//! its own (the tunnel mapping), and a new connection opens when all are full. What an
//! edge pulling many streams from one origin, and the load generator, need.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{quic_connect_failed, ClientError, ClientOptions};
use crate::transport::quic;

/// Which upstream a connection goes to.
type Upstream = (SocketAddr, String, Vec<u8>);

#[derive(Debug)]
struct Shared {
    _endpoint: quic::ClientEndpoint,
    conn: quinn::Connection,
    sessions: AtomicUsize,
}

/// A session's place on a shared connection; dropping it frees the place.
#[derive(Debug)]
pub struct Lease(Arc<Shared>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// UDP receive counters summed over connections (quinn's `udp_rx`), and the largest
/// path MTU any of them reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxStats {
    /// UDP datagrams received (a GRO batch counts each datagram in it).
    pub datagrams: u64,
    /// UDP payload bytes received.
    pub bytes: u64,
    /// Receive system calls that returned datagrams.
    pub ios: u64,
    /// The largest current path MTU (UDP payload) among the connections.
    pub max_path_mtu: u16,
}

/// Shared QUIC connections, by upstream.
#[derive(Debug)]
pub struct QuicPool {
    opts: ClientOptions,
    per_conn: usize,
    conns: Mutex<HashMap<Upstream, Vec<Arc<Shared>>>>,
    /// Opening a connection is serialised per pool, so that sessions starting together
    /// share the connection the first of them opened instead of each opening one.
    opening: tokio::sync::Mutex<()>,
}

impl QuicPool {
    /// A pool putting up to `per_conn` sessions on a connection.
    pub fn new(opts: ClientOptions, per_conn: usize) -> Self {
        Self {
            opts,
            per_conn: per_conn.max(1),
            conns: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// A connection to `addr` (`host` for TLS, speaking `alpn`) with room for one more
    /// session, and the session's lease on it.
    pub async fn connection(
        &self,
        addr: SocketAddr,
        host: &str,
        alpn: &[u8],
    ) -> Result<(quinn::Connection, Lease), ClientError> {
        let key: Upstream = (addr, host.to_owned(), alpn.to_vec());
        if let Some(found) = self.free(&key) {
            return Ok(found);
        }
        let _opening = self.opening.lock().await;
        if let Some(found) = self.free(&key) {
            return Ok(found);
        }
        let endpoint = quic::client_endpoint(addr, &self.opts.trust, &self.opts.quic, alpn)?;
        let conn = endpoint.connect(addr, host).await.map_err(quic_connect_failed)?;
        let shared =
            Arc::new(Shared { _endpoint: endpoint, conn: conn.clone(), sessions: AtomicUsize::new(1) });
        self.lock().entry(key).or_default().push(shared.clone());
        Ok((conn, Lease(shared)))
    }

    /// A live connection to `key` with a free place, taken.
    fn free(&self, key: &Upstream) -> Option<(quinn::Connection, Lease)> {
        let mut conns = self.lock();
        let list = conns.get_mut(key)?;
        // Connections that closed (idle, the upstream went away) leave the pool.
        list.retain(|s| s.conn.close_reason().is_none());
        let shared = list.iter().find(|s| s.sessions.load(Ordering::Relaxed) < self.per_conn)?;
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        Some((shared.conn.clone(), Lease(shared.clone())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Upstream, Vec<Arc<Shared>>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now, over every upstream.
    pub fn connections(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// What the pool's connections received, summed: what a load generator reports to
    /// show how the server packetizes (datagrams per delivered byte, the MTU reached).
    pub fn rx_stats(&self) -> RxStats {
        let mut total = RxStats::default();
        for s in self.lock().values().flatten() {
            let st = s.conn.stats();
            total.datagrams += st.udp_rx.datagrams;
            total.bytes += st.udp_rx.bytes;
            total.ios += st.udp_rx.ios;
            total.max_path_mtu = total.max_path_mtu.max(st.path.current_mtu);
        }
        total
    }

    /// Closes every connection.
    pub fn close(&self) {
        for s in self.lock().values().flatten() {
            s.conn.close(quinn::VarInt::from_u32(0), b"done");
        }
    }
}
