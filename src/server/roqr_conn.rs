//! One task per RoQR connection on the server: one RTMP session (flow 0) whose commands
//! arrive on the client's first bidirectional stream and whose media may arrive on any
//! stream or datagram; a player's media goes out through a [`MediaSender`]. The
//! session↔hub rules are the same as for byte streams (`connection.rs`): one publisher per
//! session ID, players wait for a publisher up to `play_wait_ms`, the end of a stream ends
//! its players.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::hub_link::{Drain, HubLink, Next, PlayerEvent};
use crate::media::frame::Frame;
use crate::reason::Reason;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::message::media_message;
use crate::rtmp::roqr::{frame, ErrorCode, RoqrError, RoqrLimits, RoqrSession, Verdict};
use crate::rtmp::session::ServerCore;
use crate::server::connection::ConnContext;
use crate::transport::roqr::{
    prioritise_commands, spawn_readers, write_commands, Incoming, MediaInfo, MediaMapping, MediaSender,
    ReadLimits, MAPPING_PROPERTY, MAPPING_TRACKS,
};

/// Frames in flight from the readers to the session task.
const INCOMING_QUEUE: usize = 256;
/// Payload bytes of queued media taken per pass.
const WRITE_BATCH: usize = 256 * 1024;

/// How a RoQR connection ended: why (counted), the draft's code it is closed with, and
/// what is logged.
struct End {
    reason: Reason,
    code: ErrorCode,
    text: String,
}

impl End {
    fn ok(text: &str) -> Self {
        Self { reason: Reason::Normal, code: ErrorCode::NoError, text: text.into() }
    }
    fn err(reason: Reason, code: ErrorCode, text: impl Into<String>) -> Self {
        Self { reason, code, text: text.into() }
    }
}

impl From<RoqrError> for End {
    fn from(e: RoqrError) -> Self {
        let reason = match &e {
            RoqrError::Frame(_) => Reason::FrameEncoding,
            RoqrError::Session(s) => Reason::of_session(s),
        };
        Self::err(reason, e.code(), e.to_string())
    }
}

/// Serves one RoQR connection until it ends.
pub async fn serve_roqr(conn: Connection, peer: SocketAddr, ctx: ConnContext) {
    info!("connected (roqr)");
    let handshake = Duration::from_millis(ctx.config.handshake_timeout_ms);
    let (send, recv) = match tokio::time::timeout(handshake, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return info!(reason = %e, "closed before a command stream"),
        Err(_) => {
            ctx.counters.count(Reason::NoSession);
            warn!(%peer, "closed: no RoQR command stream within the handshake timeout");
            return conn.close(ErrorCode::ExpectationUnmet.to_varint(), b"no command stream");
        }
    };
    let end = run(&conn, send, recv, &ctx).await;
    ctx.counters.count(end.reason);
    if end.code == ErrorCode::NoError {
        info!(reason = %end.reason, detail = %end.text, "closed");
    } else {
        warn!(code = end.code as u32, reason = %end.reason, detail = %end.text, "closed with error");
    }
    // A player's last frames are still in flight: give the peer a moment to take them
    // and close first, as the tunnel does.
    if end.code == ErrorCode::NoError {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    conn.close(end.code.to_varint(), end.text.as_bytes());
}

async fn run(conn: &Connection, mut command: SendStream, recv: quinn::RecvStream, ctx: &ConnContext) -> End {
    prioritise_commands(&command);
    let limits = RoqrLimits { max_payload: ctx.config.max_message_size, ..RoqrLimits::default() };
    let mut session = RoqrSession::new(ServerCore::new(), limits);
    let (tx, mut rx) = mpsc::channel(INCOMING_QUEUE);
    let mut readers = JoinSet::new();
    let read_limits =
        ReadLimits { max_payload: limits.max_payload, max_pending: ctx.config.max_pending_bytes };
    spawn_readers(conn, recv, read_limits, tx, &mut readers);

    let handshake_deadline = ctx.handshake_deadline();
    let idle = Duration::from_millis(ctx.config.idle_timeout_ms);
    let max_latency = Duration::from_millis(ctx.config.max_latency_ms);
    // The hub side; each player keeps its media sender.
    let mut link: HubLink<Option<MediaSender>> = HubLink::new(ctx.clone(), conn.remote_address(), "roqr");
    let mut batch: Vec<Frame> = Vec::new();
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    let mut shutting_down = false;
    let end = link.end_token();
    let ended = end.cancelled();
    tokio::pin!(ended);
    let mut ending = false;
    // Set when the session is over once its last answers are written.
    let mut closing: Option<End> = None;
    let mut command_ended = false;

    loop {
        if link.decide_pending(session.core()).await == Next::CloseAfterFlush {
            closing = closing.or(Some(End::ok("refused")));
        }
        if let Some(out) = session.take_output() {
            if let Err(e) = write_commands(&mut command, out).await {
                return End::err(Reason::PeerGone, ErrorCode::NoError, format!("peer went away: {e}"));
            }
        }
        if let Some(end) = closing.take() {
            let _ = command.finish();
            return end;
        }
        if command_ended && !session.has_deferred() {
            return End::ok("command stream ended");
        }
        // Deadlines: connect within the handshake time; a publisher (or anyone with no
        // role) may not be silent beyond the idle timeout; a player may.
        let read_deadline = if link.player.is_some() {
            None
        } else if link.publisher.is_none() && !session.core().is_connected() {
            Some(handshake_deadline)
        } else {
            Some(Instant::now() + idle)
        };
        let reorder_deadline = session.poll_timeout().map(Instant::from_std);

        tokio::select! {
            biased;
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                // A live player stays until its stream ends; a publisher until its next
                // keyframe (or, asked to reconnect, until it goes); everyone else goes.
                if link.on_drain(session.core()) == Drain::Close {
                    closing = Some(End::ok("shutting down"));
                }
            }
            _ = &mut ended, if !ending => {
                ending = true;
                // A player's last media may still be in flight on its own streams: the
                // stop goes after it, as the end of a stream does.
                if let Some(mut s) = link.on_ended_by_api(session.core()).and_then(|p| p.writer) {
                    s.drain(Duration::from_secs(2)).await;
                }
                closing = Some(End::err(Reason::EndedByApi, ErrorCode::NoError, "ended through the control API"));
            }
            incoming = rx.recv() => {
                let Some(incoming) = incoming else { return End::ok("peer closed") };
                match incoming {
                    Incoming::Frame { frame, via, stop } => {
                        match session.handle_frame(frame, via, std::time::Instant::now()) {
                            Ok(Verdict::StopStream(code)) => {
                                ctx.counters.count(Reason::UnknownFlow);
                                if let Some(s) = stop { s.stop(code) }
                            }
                            Ok(_) => {}
                            Err(e) => return e.into(),
                        }
                    }
                    Incoming::Malformed(e) => return End::err(Reason::FrameEncoding, ErrorCode::FrameEncoding, e.to_string()),
                    // The peer's last command may still wait for its media streams.
                    Incoming::CommandStreamEnded => command_ended = true,
                    Incoming::StreamOpened => session.stream_opened(),
                    Incoming::StreamClosed => {
                        if let Err(e) = session.stream_closed() {
                            return e.into();
                        }
                    }
                }
                on_events(&mut session, &mut link);
                if link.drained() {
                    closing = closing.or(Some(End::ok("drained at a keyframe")));
                }
            }
            _ = sleep_until_opt(reorder_deadline) => {
                if let Err(e) = session.handle_timeout(std::time::Instant::now()) {
                    return e.into();
                }
                on_events(&mut session, &mut link);
                if link.drained() {
                    closing = closing.or(Some(End::ok("drained at a keyframe")));
                }
            }
            _ = sleep_until_opt(read_deadline) => {
                return End::err(Reason::PeerSilent, ErrorCode::General, "peer silent too long");
            }
            () = link.role_deadline() => {
                return End::err(Reason::NoRole, ErrorCode::General, "neither publish nor play in time");
            }
            () = link.publisher_replaced() => {
                link.on_replaced();
                return End::err(
                    Reason::PublisherReplaced,
                    ErrorCode::General,
                    "replaced by a new publisher after publisher_takeover_ms without media",
                );
            }
            event = link.player_event() => match event {
                PlayerEvent::Live(live) => {
                    if link.on_live(session.core(), live) == Next::CloseAfterFlush {
                        closing = Some(End::ok("stream not found"));
                    }
                }
                PlayerEvent::Ready(true) => {
                    let mapping = mapping_of(session.core());
                    let Some(p) = link.player.as_mut() else { continue };
                    p.sub.drain_into(&mut batch, WRITE_BATCH);
                    let sid = session.core().play_stream_id();
                    let sender = p.writer.get_or_insert_with(|| MediaSender::new(conn.clone(), mapping, max_latency));
                    let msgs: Vec<_> = batch
                        .drain(..)
                        .map(|f| {
                            let msg = media_message(f.kind(), f.timestamp(), sid, f.payload().clone());
                            // The header is the same for every player on this stream id:
                            // encoded once per frame.
                            let header = f.roqr_header(sid, || frame::encode_header(0, &msg));
                            // The budget counts from ingest: time spent in the player's
                            // queue behind a slow path is part of its lateness.
                            let info = MediaInfo {
                                keyframe: f.is_keyframe(),
                                essential: f.is_sequence_header(),
                                due: Some(f.received()),
                            };
                            (header, msg, info)
                        })
                        .collect();
                    if let Err(e) = sender.send_batch(&mut command, &msgs).await {
                        return End::err(Reason::PeerGone, ErrorCode::NoError, format!("peer went away: {e}"));
                    }
                }
                PlayerEvent::Ready(false) => {
                    // The end of the stream goes on the command stream: the last media, on
                    // streams of its own, must reach the player first.
                    if let Some(mut s) = link.on_stream_end(session.core()).and_then(|p| p.writer) {
                        s.drain(Duration::from_secs(2)).await;
                    }
                    closing = Some(End::ok("stream ended"));
                }
            },
        }
    }
}

/// Hands the session's events to the hub side (requests wait for the gate at the top of
/// the loop).
fn on_events(session: &mut RoqrSession<ServerCore>, link: &mut HubLink<Option<MediaSender>>) {
    while let Some(event) = session.core().poll_event() {
        link.on_event(event);
    }
}

/// The per-track mapping for peers that asked for it in `connect`; everything on the
/// command stream for the rest.
fn mapping_of(core: &ServerCore) -> MediaMapping {
    match core.connect_property(MAPPING_PROPERTY) {
        Some(Amf0Value::String(s)) if s == MAPPING_TRACKS => MediaMapping::Tracks,
        _ => MediaMapping::CommandStream,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
