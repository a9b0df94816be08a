//! One task per RTMP session: drives a [`ServerSession`] over any byte stream (TCP, TLS,
//! or a QUIC bidirectional stream) and connects it to the hub. The task owns the socket
//! halves and `select!`s over socket input, hub output and shutdown; nothing here is
//! shared with another connection.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::hub::{Hub, Publisher, Subscriber};
use crate::media::frame::Frame;
use crate::rtmp::session::{ServerEvent, ServerSession, SessionError};

/// Read buffer bounds: idle and control-only connections stay small (memory per idle
/// connection matters at tens of thousands of them); a buffer that a read fills grows.
const READ_BUF_MIN: usize = 4 * 1024;
const READ_BUF_MAX: usize = 64 * 1024;
/// Payload bytes of media gathered into one vectored write to a player.
const WRITE_BATCH: usize = 256 * 1024;

/// What every connection task needs from the server.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// The stream registry.
    pub hub: Hub,
    /// Limits and timeouts.
    pub config: Arc<Config>,
    /// Cancelled on SIGTERM: stop publishing, let players drain, then close.
    pub shutdown: CancellationToken,
}

impl ConnContext {
    /// Deadline for a session accepted now to finish its handshake and connect.
    pub fn handshake_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.handshake_timeout_ms)
    }
}

/// Logs how a session ended: a peer that simply went away is not a warning.
pub fn log_end(result: &Result<(), ConnError>) {
    match result {
        Ok(()) => info!("closed"),
        Err(ConnError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::NotConnected
            ) =>
        {
            info!(reason = %e, "closed: peer went away")
        }
        Err(e) => warn!(reason = %e, "closed with error"),
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

struct Player {
    sub: Subscriber,
    live: bool,
    /// Until when a player may wait for the publisher.
    deadline: Instant,
}

/// The write half of a session's byte stream, able to take a batch of shared buffers.
/// TCP and TLS write them with one vectored write; QUIC takes the `Bytes` themselves
/// (quinn queues them without copying), so a frame shared by a thousand players is never
/// copied in user space.
pub trait SessionWriter: AsyncWrite + Unpin + Send {
    /// Writes every buffer in order and flushes.
    fn write_batch(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl std::future::Future<Output = io::Result<()>> + Send {
        async move {
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

impl SessionWriter for tokio::net::tcp::OwnedWriteHalf {}
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
    handshake_deadline: Instant,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: SessionWriter,
{
    let config = &ctx.config;
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);

    let mut session = ServerSession::new(config.session());
    let mut buf = vec![0u8; READ_BUF_MIN];
    let mut publisher: Option<Publisher> = None;
    let mut player: Option<Player> = None;
    let mut close_after_flush = false;
    let mut shutting_down = false;
    let mut batch: Vec<Frame> = Vec::new();
    let mut wire: Vec<Bytes> = Vec::new();

    loop {
        if let Some(out) = session.take_output() {
            write_timed(&mut writer, &mut [out], write_timeout).await?;
        }
        if close_after_flush {
            let _ = writer.shutdown().await;
            return Ok(());
        }

        // Until a role is settled the peer must keep talking; a player may be silent.
        let read_deadline = if publisher.is_none() && player.is_none() && session_pending_connect(&session) {
            Some(handshake_deadline)
        } else if player.is_some() {
            None
        } else {
            Some(Instant::now() + idle)
        };
        let waiting = player.as_ref().map(|p| !p.live).unwrap_or(false);
        let playing = player.as_ref().map(|p| p.live).unwrap_or(false);

        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                // Publishers stop now (their players then drain and end); a live player
                // stays until its stream ends, everyone else goes.
                if !playing {
                    return Ok(());
                }
            }
            read = read_until(&mut reader, &mut buf, read_deadline) => {
                let n = read?;
                if n == 0 {
                    debug!("peer closed");
                    return Ok(());
                }
                session.handle_input(&buf[..n])?;
                if n == buf.len() && buf.len() < READ_BUF_MAX {
                    buf.resize(buf.len() * 2, 0);
                }
                while let Some(event) = session.poll_event() {
                    match event {
                        ServerEvent::PublishRequest { session_id, key, .. } => {
                            tracing::Span::current().record("session_id", session_id.as_str());
                            match ctx.hub.publish(&session_id) {
                                Ok(p) => {
                                    info!(key = %redact(&key), "publish started");
                                    session.accept_publish();
                                    publisher = Some(p);
                                }
                                Err(e) => {
                                    warn!(reason = %e, "publish refused");
                                    session.reject_publish("NetStream.Publish.BadName", &e.to_string());
                                    close_after_flush = true;
                                }
                            }
                        }
                        ServerEvent::PlayRequest { session_id, .. } => {
                            tracing::Span::current().record("session_id", session_id.as_str());
                            info!("play requested");
                            let sub = ctx.hub.subscribe(&session_id);
                            let deadline = Instant::now() + ctx.hub.config().play_wait;
                            player = Some(Player { sub, live: false, deadline });
                        }
                        ServerEvent::Media(frame) => {
                            if let Some(p) = &publisher {
                                p.send(frame);
                            }
                        }
                        ServerEvent::Unpublish => {
                            if publisher.take().is_some() {
                                info!("publish ended by the publisher");
                            }
                        }
                        ServerEvent::StopPlay => {
                            if let Some(p) = player.take() {
                                info!(skipped = p.sub.skipped(), "play stopped by the player");
                            }
                        }
                    }
                }
            }
            event = player_event(player.as_mut()), if waiting || playing => {
                match event {
                    PlayerEvent::Live(live) => {
                        if let Some(p) = player.as_mut() {
                            if live {
                                info!("play started");
                                p.live = true;
                                session.accept_play();
                            } else {
                                info!("no publisher within the play wait");
                                session.reject_play("NetStream.Play.StreamNotFound", "no such stream is being published");
                                player = None;
                                close_after_flush = true;
                            }
                        }
                    }
                    PlayerEvent::Frame(frame) => match frame {
                    Some(frame) => {
                        batch.push(frame);
                        if let Some(p) = player.as_mut() {
                            p.sub.drain_into(&mut batch, WRITE_BATCH);
                        }
                        // Control output (acks, pings) goes before the media it precedes.
                        if let Some(out) = session.take_output() {
                            wire.push(out);
                        }
                        wire.extend(batch.drain(..).map(|f| session.media_bytes(&f)));
                        write_timed(&mut writer, &mut wire, write_timeout).await?;
                        wire.clear();
                    }
                    None => {
                        if let Some(p) = player.take() {
                            info!(skipped = p.sub.skipped(), "stream ended; closing player");
                        }
                        session.play_ended();
                        close_after_flush = true;
                    }
                    },
                }
            }
        }
    }
}

/// Connect has not happened yet (handshake or the first commands still pending).
fn session_pending_connect(session: &ServerSession) -> bool {
    !session.handshake_done() || !session.is_connected()
}

async fn read_until<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<usize, ConnError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, reader.read(buf))
            .await
            .map_err(|_| ConnError::Timeout("peer silent too long"))?
            .map_err(ConnError::Io),
        None => reader.read(buf).await.map_err(ConnError::Io),
    }
}

enum PlayerEvent {
    /// Waiting ended: live (`true`) or the wait timed out.
    Live(bool),
    /// The next frame, `None` at the end of the stream.
    Frame(Option<Frame>),
}

/// What a player waits for next: its stream to go live, or the next frame.
async fn player_event(player: Option<&mut Player>) -> PlayerEvent {
    match player {
        Some(p) if !p.live => {
            let remaining = p.deadline.saturating_duration_since(Instant::now());
            PlayerEvent::Live(p.sub.wait_live(remaining).await)
        }
        Some(p) => PlayerEvent::Frame(p.sub.recv().await),
        None => std::future::pending().await,
    }
}

/// Writes a batch, failing when it does not complete within `timeout`.
async fn write_timed<W: SessionWriter>(
    writer: &mut W,
    bufs: &mut [Bytes],
    timeout: Duration,
) -> Result<(), ConnError> {
    tokio::time::timeout(timeout, writer.write_batch(bufs))
        .await
        .map_err(|_| ConnError::Timeout("write made no progress"))??;
    Ok(())
}

/// A stream key for logs: the name without its query (tokens stay out of logs).
fn redact(key: &str) -> &str {
    key.split('?').next().unwrap_or_default()
}
