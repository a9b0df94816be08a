//! One task per RTMP session: drives a [`ServerSession`] over any byte stream (TCP, TLS,
//! or a QUIC bidirectional stream) and connects it to the hub. The task owns the socket
//! halves and `select!`s over socket input, hub output and shutdown; nothing here is
//! shared with another connection.

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::hub_link::{Drain, HubLink, Next, PlayerEvent};
use crate::config::Config;
use crate::control::Connections;
use crate::gate::{self, Decision, Gate, Request};
use crate::hub::{DirectSink, Hub};
use crate::media::frame::Frame;
use crate::reason::{Counters, Reason};
use crate::rtmp::session::{MediaEncoder, ServerSession, SessionError};

/// Read buffer bounds: idle and control-only connections stay small (memory per idle
/// connection matters at tens of thousands of them); a buffer that a read fills grows.
const READ_BUF_MIN: usize = 4 * 1024;
const READ_BUF_MAX: usize = 64 * 1024;
/// Payload bytes of media gathered into one vectored write to a player.
pub(super) const WRITE_BATCH: usize = 256 * 1024;
/// After our last byte, how long (and how many bytes) we keep reading what the peer
/// still sends before closing: see [`drain_until_closed`].
const LINGER: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// What every connection task needs from the server.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// The stream registry.
    pub hub: Hub,
    /// Limits and timeouts.
    pub config: Arc<Config>,
    /// Cancelled on SIGTERM or `POST /api/drain`: stop accepting, end publishers at
    /// their next keyframe (or ask them to reconnect), let players drain, then close.
    pub shutdown: CancellationToken,
    /// Decides publish and play requests before the hub sees them.
    pub gate: Arc<dyn Gate>,
    /// Closes and refusals by reason.
    pub counters: Arc<Counters>,
    /// Connections by transport (and QUIC statistics), for `/metrics`.
    pub conns: Connections,
    /// Who publishes what across the cluster (publisher leases).
    pub registry: Arc<dyn crate::registry::Registry>,
    /// Pulls streams that players ask for from origins.
    pub puller: crate::relay::pull::Puller,
    /// Connections and publishers per address.
    pub admission: Arc<crate::transport::admission::Admission>,
    /// The WebTransport certificate hashes, which the HTTP side lists for browsers.
    pub webtransport: super::webtransport::WebTransportCerts,
}

impl ConnContext {
    /// Asks the gate about a request (bounded by the handshake timeout).
    pub async fn decide(&self, request: &Request) -> Decision {
        gate::decide(&*self.gate, request, Duration::from_millis(self.config.handshake_timeout_ms)).await
    }

    /// Deadline for a session accepted now to finish its handshake and connect.
    pub fn handshake_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.handshake_timeout_ms)
    }
}

/// Logs how a session ended (a peer that simply went away is not a warning) and counts
/// it by reason.
pub fn log_end(ctx: &ConnContext, result: &Result<(), ConnError>) {
    let reason = match result {
        Ok(()) => Reason::Normal,
        Err(e) => e.reason(),
    };
    ctx.counters.count(reason);
    match result {
        Ok(()) => info!("closed"),
        Err(e) if reason == Reason::PeerGone => info!(%reason, error = %e, "closed: peer went away"),
        Err(e @ (ConnError::Ended(_) | ConnError::Refused(..))) => info!(%reason, "closed: {e}"),
        Err(e) => warn!(%reason, error = %e, "closed with error"),
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed (the message includes the cause, so it is no `source()`).
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The peer broke the protocol.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(&'static str, Reason),
    /// Ended from outside (the control API), not by anything the peer did.
    #[error("ended ({0})")]
    Ended(Reason),
    /// Refused before a session began (an HTTP request: malformed, unknown path, no
    /// such stream, or a gate's refusal), after the answer was sent.
    #[error("refused: {1}")]
    Refused(Reason, String),
    /// A new publisher took over this session's stream after it was silent.
    #[error("replaced by a new publisher after publisher_takeover_ms without media")]
    Replaced,
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl ConnError {
    /// The reason it stands for.
    pub fn reason(&self) -> Reason {
        match self {
            ConnError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::NotConnected
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Reason::PeerGone
            }
            ConnError::Io(_) => Reason::Io,
            ConnError::Session(e) => Reason::of_session(e),
            ConnError::Timeout(_, reason) | ConnError::Ended(reason) | ConnError::Refused(reason, _) => {
                *reason
            }
            ConnError::Replaced => Reason::PublisherReplaced,
        }
    }
}

/// The write half of a session's byte stream, able to take a batch of shared buffers.
/// TCP and TLS write them with one vectored write; QUIC takes the `Bytes` themselves
/// (quinn queues them without copying), so a frame shared by a thousand players is never
/// copied in user space.
pub trait SessionWriter: AsyncWrite + Unpin + Send {
    /// The socket as the publisher may write it while this session idles. `None` where
    /// that cannot be done without waiting or from another task (TLS, QUIC streams).
    fn direct(&self) -> Option<Arc<dyn TryWrite>> {
        None
    }

    /// Writes every buffer in order and flushes.
    fn write_batch(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl std::future::Future<Output = io::Result<()>> + Send {
        async move {
            if let [one] = bufs {
                // One buffer: plain write(2), cheaper than writev(2) in the kernel.
                self.write_all(one).await?;
                return self.flush().await;
            }
            let mut slices: Vec<IoSlice<'_>> =
                bufs.iter().filter(|b| !b.is_empty()).map(|b| IoSlice::new(b)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = self.write_vectored(rest).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                IoSlice::advance_slices(&mut rest, n);
            }
            self.flush().await
        }
    }
}

/// A socket that can be written from outside its session's task without waiting.
pub trait TryWrite: Send + Sync {
    /// Writes as much of `buf` as fits now; `WouldBlock` when nothing does.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Writes as much of `bufs`, in order, as fits now, in one system call;
    /// `WouldBlock` when nothing does.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> SessionWriter for tokio::io::WriteHalf<S> {}
impl SessionWriter for Box<dyn AsyncWrite + Unpin + Send> {}

impl SessionWriter for quinn::SendStream {
    async fn write_batch(&mut self, bufs: &mut [Bytes]) -> io::Result<()> {
        self.write_all_chunks(bufs).await.map_err(io::Error::from)
    }
}

/// Runs one RTMP session to its end. Returns `Ok` for orderly ends (peer closed,
/// stream ended, refused publish, shutdown) and the reason otherwise.
///
/// `handshake_deadline` is fixed when the connection (or QUIC stream) was accepted, so
/// time spent before the RTMP bytes (a TLS handshake, a late first byte) counts too.
pub async fn serve_rtmp<R, W>(
    mut reader: R,
    mut writer: W,
    ctx: &ConnContext,
    peer: (std::net::SocketAddr, &'static str),
    handshake_deadline: Instant,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: SessionWriter,
{
    let idle = Duration::from_millis(ctx.config.idle_timeout_ms);
    let write_timeout = Duration::from_millis(ctx.config.write_timeout_ms);
    let mut conn = Conn {
        session: ServerSession::new(ctx.config.session()),
        link: HubLink::new(ctx.clone(), peer.0, peer.1),
        close_after_flush: false,
        linger: true,
        ended_by: None,
        batch: Vec::new(),
        unwritten: None,
    };
    let mut buf = vec![0u8; READ_BUF_MIN];
    let mut shutting_down = false;
    let mut wire: Vec<Bytes> = Vec::new();
    // Registered once: re-creating it on every pass would lock the token's waiter list
    // once per frame per player.
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    let end = conn.link.end_token();
    let ended = end.cancelled();
    tokio::pin!(ended);
    let mut ending = false;

    let direct = writer.direct();

    loop {
        // Writing is this task's: first what the publisher left half-written, then the
        // session's own output, then queued media.
        conn.gather_output(&mut wire);
        if !wire.is_empty() {
            write_timed(&mut writer, &mut wire, write_timeout).await?;
            wire.clear();
        }
        if conn.close_after_flush {
            let _ = writer.shutdown().await;
            if conn.linger {
                drain_until_closed(&mut reader, &mut buf).await;
            }
            return conn.ended_by.map_or(Ok(()), |r| Err(ConnError::Ended(r)));
        }
        // Idle: the publisher writes media straight to the socket until something needs
        // this task (a full socket, input, the end of the stream).
        conn.hand_to_publisher(direct.as_ref());
        let read_deadline = conn.read_deadline(handshake_deadline, idle);

        tokio::select! {
            biased;
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                // A live player stays until its stream ends; a publisher until its next
                // keyframe (or, asked to reconnect, until it goes); everyone else goes.
                if conn.link.on_drain(conn.session.core()) == Drain::Close {
                    conn.close_publisher();
                }
            }
            _ = &mut ended, if !ending => {
                ending = true;
                let stopped = conn.link.on_ended_by_api(conn.session.core());
                // A player is told (`NetStream.Play.Stop`), so it lingers for that to
                // arrive; a publisher is simply cut off.
                conn.close_after_flush = true;
                conn.linger = stopped.is_some();
                if let Some(stopped) = stopped {
                    conn.unwritten = stopped.sub.take_writer().unwritten;
                }
                conn.ended_by = Some(Reason::EndedByApi);
            }
            read = read_until(&mut reader, &mut buf, read_deadline) => {
                let n = read?;
                if n == 0 {
                    debug!("peer closed");
                    return Ok(());
                }
                conn.on_input(&buf[..n])?;
                if conn.link.drained() {
                    conn.close_publisher();
                }
                if n == buf.len() && buf.len() < READ_BUF_MAX {
                    buf.resize(buf.len() * 2, 0);
                }
                let next = conn.link.decide_pending(conn.session.core()).await;
                conn.then(next);
            }
            () = conn.link.role_deadline() => {
                return Err(ConnError::Timeout("neither publish nor play in time", Reason::NoRole));
            }
            () = conn.link.publisher_replaced() => {
                conn.link.on_replaced();
                return Err(ConnError::Replaced);
            }
            event = conn.link.player_event() => match event {
                PlayerEvent::Live(live) => {
                    let next = conn.link.on_live(conn.session.core(), live);
                    conn.then(next);
                }
                PlayerEvent::Ready(true) => {}
                PlayerEvent::Ready(false) => {
                    conn.link.on_stream_end(conn.session.core());
                    conn.close_after_flush = true;
                }
            },
        }
    }
}

/// The publisher's handle on an idle player's socket.
struct PlayerSink {
    socket: Arc<dyn TryWrite>,
    encoder: MediaEncoder,
}

impl DirectSink for PlayerSink {
    fn encode(&self, frame: &Frame) -> Bytes {
        self.encoder.encode(frame)
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.try_write(buf)
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.socket.try_write_vectored(bufs)
    }
}

/// A session's state apart from its socket: the protocol machine and its hub handles.
struct Conn {
    session: ServerSession,
    /// The hub side; each player keeps the sink the publisher writes it through.
    link: HubLink<Option<Box<dyn DirectSink>>>,
    /// Write what is pending, then close (refusals and ended streams).
    close_after_flush: bool,
    /// After the last write, read until the peer closes (see [`drain_until_closed`]);
    /// not for a publisher cut off, which has nothing more to receive.
    linger: bool,
    /// Ended from outside, counted under this reason.
    ended_by: Option<Reason>,
    /// Frames drained for one write, kept to reuse its allocation.
    batch: Vec<Frame>,
    /// The rest of a frame the publisher wrote only part of, to a player that has since
    /// stopped playing: it still goes out first.
    unwritten: Option<Bytes>,
}

impl Conn {
    /// Until connect is done the peer must keep talking (handshake deadline); a player
    /// may be silent for ever; anyone else within the idle timeout.
    fn read_deadline(&self, handshake_deadline: Instant, idle: Duration) -> Option<Instant> {
        if self.link.player.is_some() {
            None
        } else if self.link.publisher.is_none()
            && !(self.session.handshake_done() && self.session.is_connected())
        {
            Some(handshake_deadline)
        } else {
            Some(Instant::now() + idle)
        }
    }

    fn on_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.session.handle_input(data)?;
        while let Some(event) = self.session.poll_event() {
            if let Some(stopped) = self.link.on_event(event) {
                self.unwritten = stopped.sub.take_writer().unwritten;
            }
        }
        Ok(())
    }

    /// Closes without lingering unless a player is still attached (a publisher cut off
    /// has nothing left to receive, and would keep sending meanwhile).
    fn close_publisher(&mut self) {
        self.close_after_flush = true;
        self.linger = self.link.player.is_some();
    }

    fn then(&mut self, next: Next) {
        if next == Next::CloseAfterFlush {
            self.close_after_flush = true;
        }
    }

    /// Takes writing back from the publisher and gathers everything due, in wire order:
    /// the rest of a half-written frame, pending control output, then queued media (one
    /// batch, each frame's shared chunk bytes).
    fn gather_output(&mut self, wire: &mut Vec<Bytes>) {
        wire.extend(self.unwritten.take());
        if let Some(p) = self.link.player.as_mut() {
            let back = p.sub.take_writer();
            if back.sink.is_some() {
                p.writer = back.sink;
            }
            wire.extend(back.unwritten);
        }
        wire.extend(self.session.take_output());
        if let Some(p) = self.link.player.as_mut().filter(|p| p.live) {
            p.sub.drain_into(&mut self.batch, WRITE_BATCH);
            wire.extend(self.batch.drain(..).map(|f| self.session.media_bytes(&f)));
        }
    }

    /// Lets the publisher write to a live player's socket while this task waits.
    fn hand_to_publisher(&mut self, socket: Option<&Arc<dyn TryWrite>>) {
        if let (Some(p), Some(socket)) = (self.link.player.as_mut().filter(|p| p.live), socket) {
            let sink = match p.writer.take() {
                Some(sink) => sink,
                None => {
                    Box::new(PlayerSink { socket: socket.clone(), encoder: self.session.media_encoder() })
                }
            };
            // The sink moves to the publisher; refused (and back) when something is
            // queued, and the wait below then returns at once.
            p.writer = p.sub.hand_to_publisher(sink).err();
        }
    }
}

async fn read_until<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<usize, ConnError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, reader.read(buf))
            .await
            .map_err(|_| ConnError::Timeout("peer silent too long", Reason::PeerSilent))?
            .map_err(ConnError::Io),
        None => reader.read(buf).await.map_err(ConnError::Io),
    }
}

/// Reads and discards until the peer closes (bounded by [`LINGER`] and
/// [`LINGER_MAX_BYTES`]). Closing a TCP socket with unread input makes the kernel send a
/// reset, and a reset makes the peer's kernel discard what the peer has not read yet: a
/// player still reading the end of its stream (its acknowledgements arriving meanwhile)
/// would lose that end and `NetStream.Play.UnpublishNotify` with it.
pub(super) async fn drain_until_closed<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) {
    drain_for(reader, buf, LINGER).await
}

/// [`drain_until_closed`] for at most `limit`.
pub(super) async fn drain_for<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8], limit: Duration) {
    let drain = async {
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match reader.read(buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(limit, drain).await;
}

/// Writes a batch, failing when it does not complete within `timeout`. Most writes
/// complete at once into the socket buffer; only those that wait get a timer.
pub(super) async fn write_timed<W: SessionWriter>(
    writer: &mut W,
    bufs: &mut [Bytes],
    timeout: Duration,
) -> Result<(), ConnError> {
    let mut write = std::pin::pin!(writer.write_batch(bufs));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(result) => result?,
        std::task::Poll::Pending => tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| ConnError::Timeout("write made no progress", Reason::WriteTimeout))??,
    }
    Ok(())
}
