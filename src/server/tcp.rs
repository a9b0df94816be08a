//! The TCP side of the one port: accepts RTMP, RTMPS when the first byte is a TLS
//! handshake record (0x16; plain RTMP starts with version byte 0x03), and HTTP when it
//! is an ASCII capital (a method), so all of them share it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use super::connection::{log_end, serve_rtmp, ConnContext, ConnError, SessionWriter, TryWrite};
use super::http::serve_http;
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
    let refusals = super::refusal_log::RefusalLog::default();
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
                refusals.refused("tcp", peer, &reason);
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
    let protocol = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Protocol::of_first_byte(first[0]),
        Ok(Ok(_)) => return,
        Ok(Err(e)) => return info!(error = %e, "closed before the handshake"),
        Err(_) => {
            ctx.counters.count(Reason::HandshakeTimeout);
            return warn!("closed: handshake timed out");
        }
    };
    // Recorded once (a field recorded twice is logged twice): HTTPS inside TLS shows as
    // `tls`, its requests as HTTP's.
    let kind = match protocol {
        Protocol::Tls => {
            tracing::Span::current().record("transport", "tls");
            ConnKind::Tls
        }
        Protocol::Http => {
            tracing::Span::current().record("transport", "http");
            ConnKind::Http
        }
        Protocol::Rtmp => {
            tracing::Span::current().record("transport", "tcp");
            ConnKind::Tcp
        }
    };
    let _counted = ctx.conns.open(kind);
    info!("connected");
    let result = match (protocol, tls) {
        (Protocol::Tls, Some(acceptor)) => {
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_tls(tls_stream, ctx, peer, deadline).await,
                Ok(Err(e)) => {
                    ctx.counters.count(Reason::TlsFailed);
                    return warn!(error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    ctx.counters.count(Reason::HandshakeTimeout);
                    return warn!("closed: TLS handshake timed out");
                }
            }
        }
        (Protocol::Tls, None) => {
            ctx.counters.count(Reason::TlsFailed);
            return warn!("closed: TLS offered but RTMPS is not configured");
        }
        (Protocol::Http, _) => {
            let (r, w) = stream.into_split();
            serve_http(r, TcpWriter(Arc::new(w)), ctx, (peer, "http"), deadline).await
        }
        (Protocol::Rtmp, _) => {
            let (r, w) = stream.into_split();
            serve_rtmp(r, TcpWriter(Arc::new(w)), ctx, (peer, "tcp"), deadline).await
        }
    };
    log_end(ctx, &result);
}

/// What a TCP connection speaks, told by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// A TLS handshake record: RTMPS, or HTTPS (told apart by the first byte inside).
    Tls,
    /// An ASCII letter: an HTTP/1.1 method.
    Http,
    /// Anything else is RTMP's version byte (0x03), or refused by its handshake.
    Rtmp,
}

impl Protocol {
    fn of_first_byte(b: u8) -> Self {
        match b {
            TLS_HANDSHAKE_RECORD => Protocol::Tls,
            b if b.is_ascii_uppercase() => Protocol::Http,
            _ => Protocol::Rtmp,
        }
    }
}

/// Inside TLS, the first byte tells RTMPS (0x03) from HTTPS (a method's letter), as it
/// does outside: no ALPN is needed, so every RTMPS client works whatever it offers.
async fn serve_tls(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    ctx: &ConnContext,
    peer: std::net::SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<(), ConnError> {
    let (mut r, w) = tokio::io::split(stream);
    let mut first = [0u8; 1];
    let n = tokio::time::timeout_at(deadline, r.read(&mut first))
        .await
        .map_err(|_| ConnError::Timeout("nothing after the TLS handshake", Reason::HandshakeTimeout))??;
    let https = n == 1 && Protocol::of_first_byte(first[0]) == Protocol::Http;
    if n == 0 {
        return Ok(());
    }
    let r = std::io::Cursor::new(first).chain(r);
    if https {
        serve_http(r, w, ctx, (peer, "https"), deadline).await
    } else {
        serve_rtmp(r, w, ctx, (peer, "tls"), deadline).await
    }
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
