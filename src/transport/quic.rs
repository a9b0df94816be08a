//! The QUIC side of the one port: one quinn endpoint on one UDP socket for every QUIC
//! connection, with the mapping chosen by ALPN. `rtmp` (tunnel): each bidirectional
//! stream carries one whole RTMP session (handshake + chunks), and several sessions may
//! share a connection. `roqr` is reserved for the RoQR mapping and refused for now.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use super::admission::Admission;
use super::tls::{self, Identity, Trust, ALPN_ROQR, ALPN_RTMP};
use crate::config::{Config, Congestion};
use crate::connection::{log_end, serve_rtmp, ConnContext};
use crate::reason::Reason;
use crate::roqr_conn::serve_roqr;

/// Unidirectional streams a peer may have open at once (RoQR media).
const MAX_UNI_STREAMS: u32 = 32;

/// Why the QUIC side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// TLS material was refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// rustls config unusable for QUIC (e.g. no TLS 1.3).
    #[error("QUIC TLS config: {0}")]
    Crypto(String),
    /// A timeout value out of QUIC's range.
    #[error("QUIC idle timeout out of range")]
    IdleTimeout,
    /// Socket setup failed (the message includes the cause, so it is no `source()`).
    #[error("QUIC endpoint: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for QuicError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Transport parameters, set explicitly rather than left to library defaults: the idle
/// timeout and keep-alive decide how fast a dead peer is noticed, and the stream
/// windows how much a single RTMP session can have in flight.
pub fn transport_config(config: &Config) -> Result<TransportConfig, QuicError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(Duration::from_millis(config.quic_idle_timeout_ms))
        .map_err(|_| QuicError::IdleTimeout)?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(Duration::from_millis(config.quic_keep_alive_ms)));
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.max_quic_streams));
    // RoQR media: an audio stream and a stream per GOP, a few of them finishing at once.
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    // A few seconds of a high-bitrate stream per session: enough for loss recovery on
    // long paths without letting one session buffer unbounded data.
    t.stream_receive_window(VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.congestion_controller_factory(congestion_factory(config.quic_congestion));
    t.initial_rtt(Duration::from_millis(config.quic_initial_rtt_ms));
    // Start at the safe 1200 and let discovery find the path's limit: a larger initial
    // MTU is lost as a black hole on tunnels and VPNs before discovery can lower it.
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(config.quic_max_mtu);
    t.mtu_discovery_config(Some(mtu));
    // Pacing is always on in quinn; with BBR it sends at the estimated bottleneck rate
    // instead of in window-sized bursts that overflow shallow router queues.
    Ok(t)
}

/// The congestion controller for `choice`.
pub fn congestion_factory(choice: Congestion) -> Arc<dyn ControllerFactory + Send + Sync> {
    match choice {
        Congestion::Bbr => Arc::new(BbrConfig::default()),
        Congestion::Cubic => Arc::new(CubicConfig::default()),
        Congestion::Newreno => Arc::new(NewRenoConfig::default()),
    }
}

/// The server endpoint on an already bound UDP socket (the same port as TCP).
pub fn server_endpoint(socket: UdpSocket, id: &Identity, config: &Config) -> Result<Endpoint, QuicError> {
    let tls = tls::server_config(id, &[ALPN_ROQR, ALPN_RTMP])?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(config)?));
    socket.set_nonblocking(true)?;
    let endpoint =
        Endpoint::new(EndpointConfig::default(), Some(server), socket, Arc::new(quinn::TokioRuntime))?;
    Ok(endpoint)
}

/// Longest silence from the server a client tolerates, and its keep-alive interval.
/// A publisher or player always expects traffic (media, acknowledgements, keep-alives), so
/// a server that sends nothing for this long is gone (crashed, unplugged): the client
/// must fail within seconds, as a TCP client does on a reset, not after the server's
/// 30 s. QUIC uses the smaller of both sides' idle timeouts, so the server drops a dead
/// client equally fast; the client's keep-alives keep a healthy idle session (a player
/// waiting for its publisher) open.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// [`transport_config`] for a client: idle timeout and keep-alive at most
/// [`CLIENT_IDLE_TIMEOUT`] and [`CLIENT_KEEP_ALIVE`].
pub fn client_transport_config(config: &Config) -> Result<TransportConfig, QuicError> {
    let mut t = transport_config(config)?;
    let idle = Duration::from_millis(config.quic_idle_timeout_ms).min(CLIENT_IDLE_TIMEOUT);
    let keep_alive = Duration::from_millis(config.quic_keep_alive_ms).min(CLIENT_KEEP_ALIVE).min(idle / 2);
    t.max_idle_timeout(Some(IdleTimeout::try_from(idle).map_err(|_| QuicError::IdleTimeout)?));
    t.keep_alive_interval(Some(keep_alive));
    Ok(t)
}

/// A client endpoint with the given trust, bound to an ephemeral port of `peer`'s family.
pub fn client_endpoint(
    peer: SocketAddr,
    trust: &Trust,
    config: &Config,
    alpn: &[u8],
) -> Result<Endpoint, QuicError> {
    let tls = tls::client_config(trust, &[alpn])?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(client_transport_config(config)?));
    let bind: SocketAddr = if peer.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| QuicError::Crypto("bad bind address".into()))?;
    let mut endpoint = Endpoint::client(bind)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Accepts QUIC connections until shutdown.
pub async fn accept_loop(
    endpoint: Endpoint,
    admission: Arc<Admission>,
    ctx: ConnContext,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let peer = incoming.remote_address();
        // Under load, make unvalidated peers prove their address with a Retry round trip
        // first, so spoofed Initials cannot make us spend handshakes (DESIGN §4).
        if !incoming.remote_address_validated() && admission.current() >= ctx.config.max_connections / 2 {
            if let Err(e) = incoming.retry() {
                warn!(%peer, error = %e, "QUIC retry failed");
            }
            continue;
        }
        let permit = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                ctx.counters.count(reason.reason());
                warn!(%peer, %reason, "quic connection refused");
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        let span = info_span!("quic", %peer);
        tasks.spawn(
            async move {
                let _permit = permit;
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return warn!(error = %e, "QUIC handshake failed"),
                };
                let alpn = conn
                    .handshake_data()
                    .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|h| h.protocol);
                match alpn.as_deref() {
                    Some(ALPN_RTMP) => serve_tunnel(conn, peer, ctx).await,
                    Some(ALPN_ROQR) => serve_roqr(conn, peer, ctx).await,
                    other => {
                        ctx.counters.count(Reason::UnsupportedAlpn);
                        warn!(alpn = ?other.map(String::from_utf8_lossy), "unsupported ALPN");
                        conn.close(Reason::UnsupportedAlpn.to_quic(), b"unsupported ALPN");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Tunnel mapping: one RTMP session per bidirectional stream. A connection with no
/// session for a whole handshake timeout is closed: it would otherwise hold its
/// admission place for as long as the peer sends keep-alives.
async fn serve_tunnel(conn: Connection, peer: SocketAddr, ctx: ConnContext) {
    info!("connected (rtmp tunnel)");
    let sessions = TaskTracker::new();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut active = 0usize;
    let mut idle_since = Some(Instant::now());
    let idle_limit = Duration::from_millis(ctx.config.handshake_timeout_ms);
    loop {
        let idle_deadline = idle_since.map(|t| t + idle_limit);
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            Some(()) = ended_rx.recv() => {
                active = active.saturating_sub(1);
                if active == 0 {
                    idle_since = Some(Instant::now());
                }
                continue;
            }
            _ = sleep_until_opt(idle_deadline) => {
                ctx.counters.count(Reason::NoSession);
                warn!("closed: no RTMP session on the QUIC connection within the handshake timeout");
                conn.close(Reason::NoSession.to_quic(), b"no session");
                return;
            }
            a = conn.accept_bi() => a,
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(e) => {
                info!(reason = %e, "connection closed");
                break;
            }
        };
        idle_since = None;
        active += 1;
        let ctx = ctx.clone();
        let ended = ended_tx.clone();
        let deadline = ctx.handshake_deadline();
        let span = info_span!("conn", %peer, transport = "quic", stream = %send.id(), session_id = tracing::field::Empty);
        let task = async move {
            log_end(&ctx, &serve_rtmp(recv, send, &ctx, (peer, "quic"), deadline).await);
            let _ = ended.send(());
        };
        sessions.spawn(task.instrument(span));
    }
    // Sessions already running finish on their own terms (a player drains its stream).
    sessions.close();
    sessions.wait().await;
    // Closing the connection discards stream data the peer has not acknowledged yet (a
    // player's last frames and its StreamEOF): let the client close first, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    conn.close(VarInt::from_u32(0), b"done");
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
