//! The QUIC side of the one port: accepts connections on the one endpoint, admits them,
//! and dispatches by ALPN: `roqr` to [`serve_roqr`], `rtmp` (the tunnel: each
//! bidirectional stream one whole RTMP session, several per connection) to the
//! byte-stream session driver, `h3` (a browser's WebTransport session) to
//! [`serve_webtransport`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, VarInt};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use super::connection::{log_end, serve_rtmp, ConnContext};
use super::roqr_conn::serve_roqr;
use super::webtransport::serve_webtransport;
use crate::control::ConnKind;
use crate::reason::Reason;
use crate::transport::admission::Admission;
use crate::transport::redundancy::Redundancy;
use crate::transport::tls::{ALPN_H3, ALPN_ROQR, ALPN_RTMP};

/// Accepts QUIC connections until shutdown.
pub async fn accept_loop(
    endpoint: Endpoint,
    redundancy: Redundancy,
    admission: Arc<Admission>,
    ctx: ConnContext,
    tasks: TaskTracker,
) {
    let refusals = super::refusal_log::RefusalLog::default();
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let peer = incoming.remote_address();
        // Make unvalidated peers prove their address with a Retry round trip first under
        // load (so spoofed Initials cannot make us spend handshakes, DESIGN §4), and
        // whenever their address already holds a place: spoofed Initials would otherwise
        // fill a victim address's per-address places (each held until its handshake
        // times out) and lock it out of TCP and QUIC. A Retry costs a real peer one
        // round trip; a spoofer never sees it.
        let unvalidated = !incoming.remote_address_validated();
        if unvalidated
            && (admission.current() >= ctx.config.max_connections / 2
                || admission.current_from(peer.ip()) > 0)
        {
            if let Err(e) = incoming.retry() {
                warn!(%peer, error = %e, "QUIC retry failed");
            }
            continue;
        }
        let permit = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                ctx.counters.count(Reason::of_refusal(reason));
                refusals.refused("quic", peer, &reason);
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        let redundancy = redundancy.clone();
        let span = info_span!("quic", %peer);
        tasks.spawn(
            async move {
                let _permit = permit;
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return warn!(error = %e, "QUIC handshake failed"),
                };
                redundancy.watch(&conn);
                let alpn = conn
                    .handshake_data()
                    .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|h| h.protocol);
                match alpn.as_deref() {
                    Some(ALPN_RTMP) => {
                        let _counted = ctx.conns.open_quic(ConnKind::QuicTunnel, &conn);
                        serve_tunnel(conn, peer, ctx).await
                    }
                    Some(ALPN_ROQR) => {
                        let _counted = ctx.conns.open_quic(ConnKind::Roqr, &conn);
                        serve_roqr(conn, peer, ctx).await
                    }
                    Some(ALPN_H3) => {
                        let _counted = ctx.conns.open_quic(ConnKind::WebTransport, &conn);
                        let span = info_span!("webtransport", session_id = tracing::field::Empty);
                        serve_webtransport(conn, peer, ctx).instrument(span).await
                    }
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
