//! The TCP side of the one port: accepts RTMP, and RTMPS when the first byte is a TLS
//! handshake record (0x16; plain RTMP starts with version byte 0x03), so both share it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use super::connection::{log_end, serve_rtmp, ConnContext, SessionWriter, TryWrite};
use crate::control::ConnKind;
use crate::reason::Reason;
use crate::transport::admission::Admission;

const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accepts until shutdown, spawning one task per connection onto `tasks`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    admission: Arc<Admission>,
    ctx: ConnContext,
    tasks: TaskTracker,
) {
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(1);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                ctx.counters.count(Reason::of_refusal(reason));
                warn!(%peer, %reason, "tcp connection refused");
                continue;
            }
        };
        let ctx = ctx.clone();
        let tls = tls.clone();
        // Recorded once known: a field given twice is logged twice.
        let span =
            info_span!("conn", %peer, transport = tracing::field::Empty, session_id = tracing::field::Empty);
        tasks.spawn(
            async move {
                let _permit = permit;
                handle(stream, peer, tls, &ctx).await;
            }
            .instrument(span),
        );
    }
}

async fn handle(stream: TcpStream, peer: std::net::SocketAddr, tls: Option<TlsAcceptor>, ctx: &ConnContext) {
    // Whole frames are written at once; Nagle would only add latency (unless the
    // operator trades that for CPU).
    if let Err(e) = stream.set_nodelay(ctx.config.tcp_nodelay) {
        warn!(error = %e, "set_nodelay failed");
    }
    let deadline = ctx.handshake_deadline();
    let mut first = [0u8; 1];
    let is_tls = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE_RECORD,
        Ok(Ok(_)) => return,
        Ok(Err(e)) => return info!(error = %e, "closed before the handshake"),
        Err(_) => {
            ctx.counters.count(Reason::HandshakeTimeout);
            return warn!("closed: handshake timed out");
        }
    };
    tracing::Span::current().record("transport", if is_tls { "tls" } else { "tcp" });
    let _counted = ctx.conns.open(if is_tls { ConnKind::Tls } else { ConnKind::Tcp });
    info!("connected");
    let result = match (is_tls, tls) {
        (true, Some(acceptor)) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => {
                let (r, w) = tokio::io::split(tls_stream);
                serve_rtmp(r, w, ctx, (peer, "tls"), deadline).await
            }
            Ok(Err(e)) => {
                ctx.counters.count(Reason::TlsFailed);
                return warn!(error = %e, "TLS handshake failed");
            }
            Err(_) => {
                ctx.counters.count(Reason::HandshakeTimeout);
                return warn!("closed: TLS handshake timed out");
            }
        },
        (true, None) => {
            ctx.counters.count(Reason::TlsFailed);
            return warn!("closed: TLS offered but RTMPS is not configured");
        }
        (false, _) => {
            let (r, w) = stream.into_split();
            serve_rtmp(r, TcpWriter(Arc::new(w)), ctx, (peer, "tcp"), deadline).await
        }
    };
    log_end(ctx, &result);
}

/// The write half of a plain TCP session, shared: the session's task writes through it
/// (waiting for room), and while the task idles the publisher writes to it directly
/// (never waiting). The hub's writer role keeps the two from interleaving.
struct TcpWriter(Arc<OwnedWriteHalf>);

impl TcpWriter {
    fn poll_with<T>(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&OwnedWriteHalf) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            ready!(self.0.as_ref().as_ref().poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for TcpWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |w| w.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |w| w.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(self.0.as_ref().as_ref());
        Poll::Ready(match socket.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            result => result,
        })
    }
}

impl TryWrite for OwnedWriteHalf {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        OwnedWriteHalf::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

impl SessionWriter for TcpWriter {
    fn direct(&self) -> Option<Arc<dyn TryWrite>> {
        Some(self.0.clone())
    }
}
