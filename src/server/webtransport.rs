//! Browser players over WebTransport (ALPN `h3`) on the relay's one UDP port.
//!
//! A connection carries one session: `web-transport-quinn` does the HTTP/3 part (SETTINGS,
//! the extended CONNECT) on the quinn connection the accept loop already has. The
//! request's path names the stream as an HTTP-FLV URL does (`/{app}/{key}?token=...`), the
//! gate decides as for any player (transport `webtransport`), and a refusal is the
//! CONNECT's status: 400 for a path that names no stream, 403 for the gate, 404 when
//! nothing is published within `play_wait_ms`, 503 when the relay is draining.
//!
//! An accepted session gets the stream in the mapping of [`mapping`]: a config stream,
//! an audio stream and a stream per GOP, all opened by the relay. Like every player it
//! reads from its own bounded hub queue (which skips to a keyframe when it falls
//! behind), so a slow browser never holds up the publisher or other players; a stream
//! that takes nothing for `write_timeout_ms` ends the session. GOPs later than
//! `max_latency_ms` are cut; audio never is.
//!
//! The session ends with the stream (after its last media is acknowledged, at most
//! [`DRAIN`]), when the browser closes it, through the control API, or at shutdown for a
//! player still waiting; a live player stays through a drain until its stream ends. The
//! session's close code is the [`Reason`]'s code (`0x100` when the stream ended).

mod cert;
mod mapping;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quinn::Connection;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use web_transport_quinn::http::StatusCode;
use web_transport_quinn::{SendStream, Session};

pub use cert::{WebTransportCerts, RENEW_BEFORE, VALIDITY};
pub use mapping::{priority, stream_of, FrameFacts, FrameHeader, Mapper, Target, UnknownKind, HEADER_LEN};

use super::connection::{log_end, ConnContext, ConnError};
use crate::gate::{Allowed, Decision, Refusal, Request, Role};
use crate::hub::{Peer, Subscriber};
use crate::media::frame::Frame;
use crate::reason::Reason;

/// The transport name these players go by (control API, gate, hooks).
const TRANSPORT: &str = "webtransport";
/// Longest wait for a player's last media to be acknowledged before the session closes,
/// and for a refused browser to read its answer and go.
pub const DRAIN: Duration = Duration::from_secs(2);
/// Payload bytes of queued media taken per pass.
const WRITE_BATCH: usize = 256 * 1024;
/// The code a GOP stream is reset with when its media went stale (RoQR's
/// `FRAME_CANCELLED`): a player tells a cut GOP from a lost session by it.
pub const GOP_CANCELLED: u32 = 0x5;

/// Serves one `h3` connection: its WebTransport session request, then the stream.
pub async fn serve_webtransport(conn: Connection, peer: SocketAddr, ctx: ConnContext) {
    info!("connected (webtransport)");
    let limit = Duration::from_millis(ctx.config.handshake_timeout_ms);
    let request = match tokio::time::timeout(limit, web_transport_quinn::Request::accept(conn.clone())).await
    {
        Ok(Ok(request)) => request,
        Ok(Err(e)) if conn.close_reason().is_some() => {
            ctx.counters.count(Reason::PeerGone);
            return info!(error = %e, "closed before a session request");
        }
        Ok(Err(e)) => {
            // Another HTTP/3 request than a WebTransport CONNECT, or broken framing.
            ctx.counters.count(Reason::BadHttpRequest);
            warn!(error = %e, "closed: no WebTransport session request");
            return conn.close(Reason::BadHttpRequest.to_quic(), b"not a WebTransport session");
        }
        Err(_) => {
            ctx.counters.count(Reason::NoSession);
            warn!("closed: no WebTransport session request within the handshake timeout");
            return conn.close(Reason::NoSession.to_quic(), b"no session");
        }
    };
    let result = play(request, peer, &ctx).await;
    log_end(&ctx, &result);
    let reason = match &result {
        Ok(()) => Reason::Normal,
        Err(e) => e.reason(),
    };
    // Closed by the relay: the browser sees the reason's code (`WebTransportCloseInfo`).
    conn.close(reason.to_quic(), reason.name().as_bytes());
}

/// Decides the request and plays the stream; the session (or the refusal) is answered
/// and over when this returns.
async fn play(
    request: web_transport_quinn::Request,
    peer: SocketAddr,
    ctx: &ConnContext,
) -> Result<(), ConnError> {
    let (app, key) = match stream_of(request.url.path(), request.url.query()) {
        Ok(stream) => stream,
        Err(why) => {
            refuse(request, StatusCode::BAD_REQUEST).await;
            return Err(ConnError::Refused(Reason::BadHttpRequest, why.into()));
        }
    };
    let session_id = crate::url::session_id(&app, &key);
    tracing::Span::current().record("session_id", session_id.as_str());
    let gated = Request { role: Role::Play, session_id, app, key, peer, transport: TRANSPORT };
    if let Decision::Refuse(Refusal { reason, message }) = ctx.decide(&gated).await {
        refuse(request, StatusCode::FORBIDDEN).await;
        return Err(ConnError::Refused(reason, message));
    }
    let _allowed = Allowed::new(ctx.gate.clone(), gated.clone());
    let end = CancellationToken::new();
    let mut sub = ctx.hub.subscribe(&gated.session_id);
    sub.identify(Peer::new(ctx.hub.next_peer_id(), TRANSPORT, Some(peer), end.clone()));
    if !ctx.hub.is_live(&gated.session_id) {
        ctx.puller.want(&gated.session_id, 0);
    }
    let conn = request.conn().clone();
    let live = tokio::select! {
        live = sub.wait_live(ctx.hub.config().play_wait) => live,
        // The browser gave up waiting.
        _ = conn.closed() => return Ok(()),
        _ = ctx.shutdown.cancelled() => {
            refuse(request, StatusCode::SERVICE_UNAVAILABLE).await;
            return Err(ConnError::Ended(Reason::Shutdown));
        }
        _ = end.cancelled() => {
            refuse(request, StatusCode::SERVICE_UNAVAILABLE).await;
            return Err(ConnError::Ended(Reason::EndedByApi));
        }
    };
    if !live {
        refuse(request, StatusCode::NOT_FOUND).await;
        return Err(ConnError::Refused(Reason::StreamNotFound, "no such stream is being published".into()));
    }
    let session = request.ok().await.map_err(gone)?;
    info!("webtransport play started");
    let mut player = Player::new(session, ctx);
    let result = player.stream(&mut sub, ctx, &end).await;
    info!(
        skipped = sub.skipped(),
        gops = player.gops,
        gops_cut = player.gops_cut,
        stale_gops_reset = player.stale_gops.load(std::sync::atomic::Ordering::Relaxed),
        frames_skipped = player.frames_skipped,
        "webtransport play ended"
    );
    let reason = match &result {
        Ok(()) => Reason::Normal,
        Err(e) => e.reason(),
    };
    // The close capsule tells the browser why; then the connection goes (bounded).
    player.session.close(u32::from(reason.code()), reason.name().as_bytes());
    let _ = tokio::time::timeout(DRAIN, conn.closed()).await;
    result
}

/// Answers the session request with `status` and gives the browser a moment to read it
/// and close first (closing at once could discard the answer in flight).
async fn refuse(request: web_transport_quinn::Request, status: StatusCode) {
    let conn = request.conn().clone();
    if request.reject(status).await.is_ok() {
        let _ = tokio::time::timeout(DRAIN, conn.closed()).await;
    }
}

/// A session error as the end it stands for: the browser went away.
fn gone(e: impl std::fmt::Display) -> ConnError {
    ConnError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string()))
}

/// One player's streams and its place in the mapping.
struct Player {
    session: Session,
    mapper: Mapper,
    config: Option<SendStream>,
    audio: Option<SendStream>,
    gop: Option<SendStream>,
    /// The priority of the current GOP stream.
    gop_priority: i32,
    max_latency: Duration,
    write_timeout: Duration,
    /// Nothing is late before the session started: a joining player gets the cached GOP,
    /// received up to a GOP ago, as fresh.
    started: Instant,
    /// Ended GOP streams, each reset if still unacknowledged `max_latency` after it ended.
    watchers: JoinSet<()>,
    gops: u64,
    gops_cut: u64,
    /// Ended GOP streams reset because they were still unacknowledged past the budget.
    stale_gops: std::sync::Arc<std::sync::atomic::AtomicU64>,
    frames_skipped: u64,
    /// The connection's send window, fitted to what the path delivers, as RoQR's
    /// sender does: on a path slower than the stream, media waits in the hub's queue
    /// (where lateness is seen and GOPs are cut) rather than in QUIC's.
    window: crate::transport::roqr::SendWindow,
}

/// Consecutive frames for one stream, written together.
struct Run {
    target: Target,
    bufs: Vec<Bytes>,
    /// When the oldest frame of the run counts from (latency budget).
    due: Option<Instant>,
}

impl Player {
    fn new(session: Session, ctx: &ConnContext) -> Self {
        Self {
            session,
            mapper: Mapper::default(),
            config: None,
            audio: None,
            gop: None,
            gop_priority: priority::FIRST_GOP,
            max_latency: Duration::from_millis(ctx.config.max_latency_ms),
            write_timeout: Duration::from_millis(ctx.config.write_timeout_ms),
            started: Instant::now(),
            watchers: JoinSet::new(),
            gops: 0,
            gops_cut: 0,
            stale_gops: std::sync::Arc::default(),
            frames_skipped: 0,
            window: crate::transport::roqr::SendWindow::new(Duration::from_millis(ctx.config.max_latency_ms)),
        }
    }

    /// Writes the stream until it ends (`Ok`, its media acknowledged or [`DRAIN`] spent),
    /// the browser closes the session, or the control API ends it.
    async fn stream(
        &mut self,
        sub: &mut Subscriber,
        ctx: &ConnContext,
        end: &CancellationToken,
    ) -> Result<(), ConnError> {
        let conn: Connection = (*self.session).clone();
        let closed = conn.closed();
        tokio::pin!(closed);
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        let mut shutting_down = false;
        let mut batch: Vec<Frame> = Vec::new();
        loop {
            tokio::select! {
                biased;
                // A live player stays through a drain until its stream ends.
                _ = &mut shutdown, if !shutting_down => shutting_down = true,
                _ = end.cancelled() => return Err(ConnError::Ended(Reason::EndedByApi)),
                _ = &mut closed => return Ok(()),
                more = sub.ready() => {
                    if !more {
                        self.drain().await;
                        return Ok(());
                    }
                    sub.drain_into(&mut batch, WRITE_BATCH);
                    self.window.fit(&conn);
                    self.send(&mut batch).await?;
                }
            }
        }
    }

    /// Maps and writes a batch of frames, in order; `batch` is left empty.
    async fn send(&mut self, batch: &mut Vec<Frame>) -> Result<(), ConnError> {
        let mut run = Run { target: Target::Config, bufs: Vec::new(), due: None };
        let now = Instant::now();
        for f in batch.drain(..) {
            let due = f.received().max(self.started);
            let facts = FrameFacts {
                kind: f.kind(),
                keyframe: f.is_keyframe(),
                sequence_header: f.is_sequence_header(),
                late: now.saturating_duration_since(due) > self.max_latency,
            };
            let had_gop = self.mapper.in_gop();
            let target = self.mapper.route(facts);
            if target == Target::Skip {
                if had_gop {
                    // Its tail goes first (it was in time), then the GOP is cut.
                    self.flush(&mut run).await?;
                    self.cut_gop();
                }
                self.frames_skipped += 1;
                continue;
            }
            let same = match target {
                Target::Gop => run.target == Target::Gop,
                Target::NewGop => false,
                t => run.target == t,
            };
            if !same {
                self.flush(&mut run).await?;
                run.target = if target == Target::NewGop { Target::Gop } else { target };
            }
            if target == Target::NewGop {
                self.new_gop().await?;
            }
            run.due = run.due.or(Some(due));
            run.bufs.push(f.webtransport_header(|| header_of(&f).to_bytes()));
            run.bufs.push(f.payload().clone());
        }
        self.flush(&mut run).await
    }

    /// Writes what `run` holds to its stream.
    async fn flush(&mut self, run: &mut Run) -> Result<(), ConnError> {
        let due = run.due.take();
        if run.bufs.is_empty() {
            return Ok(());
        }
        let write_timeout = self.write_timeout;
        let (stream, budget) = match run.target {
            Target::Config => {
                (open_once(&self.session, &mut self.config, priority::CONFIG, write_timeout).await?, None)
            }
            Target::Audio => {
                (open_once(&self.session, &mut self.audio, priority::AUDIO, write_timeout).await?, None)
            }
            _ => match self.gop.as_mut() {
                Some(s) => (s, due.map(|d| d + self.max_latency)),
                // Cut while the run was gathered: nothing of it goes.
                None => {
                    run.bufs.clear();
                    return Ok(());
                }
            },
        };
        let stalled = Instant::now() + write_timeout;
        let deadline = budget.map_or(stalled, |b| b.min(stalled));
        let written = tokio::time::timeout_at(deadline, stream.write_all_chunks(&mut run.bufs)).await;
        run.bufs.clear();
        match written {
            Ok(result) => result.map_err(gone),
            // The GOP ran out of its budget before the stream took it: cut, go on.
            Err(_) if budget.is_some_and(|b| b <= stalled) => {
                self.mapper.cut();
                self.cut_gop();
                Ok(())
            }
            Err(_) => {
                Err(ConnError::Timeout("a stream took nothing for write_timeout_ms", Reason::WriteTimeout))
            }
        }
    }

    /// Ends the current GOP's stream and opens the next one, above it.
    async fn new_gop(&mut self) -> Result<(), ConnError> {
        self.end_gop();
        if self.gops > 0 {
            self.gop_priority = priority::next_gop(self.gop_priority);
        }
        let mut slot = None;
        open_once(&self.session, &mut slot, self.gop_priority, self.write_timeout).await?;
        self.gop = slot;
        self.gops += 1;
        Ok(())
    }

    /// Finishes the current GOP stream; one still unacknowledged `max_latency` later is
    /// stale and reset, so it stops taking the path from newer media.
    fn end_gop(&mut self) {
        while self.watchers.try_join_next().is_some() {}
        let Some(mut old) = self.gop.take() else { return };
        let _ = old.finish();
        let budget = self.max_latency;
        let stale = self.stale_gops.clone();
        self.watchers.spawn(async move {
            if tokio::time::timeout(budget, old.stopped()).await.is_err() {
                debug!(stream = %old.quic_id(), "stale GOP stream reset");
                stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = old.reset(GOP_CANCELLED);
            }
        });
    }

    /// Resets the current GOP stream (its rest is late); video resumes at a keyframe.
    fn cut_gop(&mut self) {
        if let Some(mut gop) = self.gop.take() {
            let _ = gop.reset(GOP_CANCELLED);
            self.gops_cut += 1;
            debug!(stream = %gop.quic_id(), "GOP later than the latency budget: cut");
        }
    }

    /// The stream ended: every stream is finished and acknowledged (at most [`DRAIN`])
    /// before the session closes, so the close does not discard the last media.
    async fn drain(&mut self) {
        let mut streams: Vec<SendStream> =
            [self.config.take(), self.audio.take(), self.gop.take()].into_iter().flatten().collect();
        for s in &mut streams {
            let _ = s.finish();
        }
        let all = async {
            for s in &streams {
                let _ = s.stopped().await;
            }
        };
        let _ = tokio::time::timeout(DRAIN, all).await;
    }
}

/// The stream in `slot`, opened (with `priority`) if it is not yet.
async fn open_once<'a>(
    session: &Session,
    slot: &'a mut Option<SendStream>,
    priority: i32,
    limit: Duration,
) -> Result<&'a mut SendStream, ConnError> {
    if slot.is_none() {
        // The browser grants streams as it reads them: one that stops reading stops this.
        let opened = tokio::time::timeout(limit, session.open_uni())
            .await
            .map_err(|_| ConnError::Timeout("no stream credit for write_timeout_ms", Reason::WriteTimeout))?
            .map_err(gone)?;
        let _ = opened.set_priority(priority);
        *slot = Some(opened);
    }
    slot.as_mut().ok_or_else(|| gone("stream slot empty"))
}

/// The header of `f`: its ingest time on the wall clock (the frame only knows it on the
/// monotonic one).
fn header_of(f: &Frame) -> FrameHeader {
    let ingest = SystemTime::now().checked_sub(f.received().elapsed()).unwrap_or(UNIX_EPOCH);
    let ingest_unix_ms = ingest.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    FrameHeader {
        kind: f.kind(),
        timestamp: f.timestamp(),
        ingest_unix_ms,
        len: u32::try_from(f.payload().len()).unwrap_or(u32::MAX),
    }
}
