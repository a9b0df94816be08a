//! The control plane's HTTP/1.1 connections, bounded. Its descriptors are the relay's
//! (the ones RTMP and QUIC players need), so a client that opens connections and never
//! finishes a request must not be able to pile them up: at most [`MAX_CONNECTIONS`] at
//! once (one more is closed as soon as it is accepted), and a request's headers must
//! arrive within the relay's handshake timeout, on a new connection as on a kept-alive
//! one.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Control connections open at once, at most. Far more than a scraper, a dashboard and an
/// operator's scripts use.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `app` on `listener` until `stop` is cancelled, then lets the requests in flight
/// finish. `header_timeout` bounds the wait for each request's headers.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: the next accept may succeed.
                warn!(error = %e, "control API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it; counted, logged once per 100.
            refused += 1;
            if refused % 100 == 1 {
                warn!(%peer, refused, max = MAX_CONNECTIONS, "control API: too many connections, closing new ones");
            }
            continue;
        };
        let service =
            TowerToHyperService::new(app.clone().layer(axum::Extension(super::http::PeerAddr(peer))));
        let stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "control API connection ended");
            }
        });
    }
    while conns.join_next().await.is_some() {}
}
