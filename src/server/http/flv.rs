//! An HTTP-FLV player: the FLV header, then the stream's metadata, sequence headers and
//! cached GOP, then live tags, as SRS and xiu serve it, so mpegts.js, flv.js, ffmpeg,
//! VLC and ffplay play it. Each frame's tag is made once per stream
//! ([`Frame::flv_tag`]) and shared by every such player; the payloads and timestamps
//! are the RTMP players' own.
//!
//! Writing works as for RTMP players (`connection.rs`): this task writes what is
//! queued, with `write_timeout_ms`; while it idles it hands the socket to the publisher,
//! which writes each tag straight in without waking it; a slow player's queue skips to
//! the next keyframe.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::super::connection::{
    drain_until_closed, write_timed, ConnContext, ConnError, SessionWriter, TryWrite, WRITE_BATCH,
};
use super::{answer, CORS};
use crate::gate::{Allowed, Decision, Refusal, Request, Role};
use crate::http::{response_head, RequestHead};
use crate::hub::{DirectSink, Peer, Subscriber};
use crate::media::flv;
use crate::media::frame::{Frame, MediaKind};
use crate::reason::Reason;

/// The response header relating stream timestamps to the relay's clock:
/// `{unix ms};{timestamp ms}`, when the newest frame of the first batch reached the
/// relay and its timestamp. A player measures its latency with it (relay ingest to
/// display; the two clocks must agree, as they do on one machine or under NTP).
pub(super) const CLOCK_HEADER: &str = "X-Qrelay-Clock";

/// The transport name players of this kind go by (control API, gate, hooks).
const TRANSPORT: &str = "http-flv";

/// Plays `app`/`key` over this connection until the stream ends or the client goes.
pub(super) async fn play<R, W>(
    mut reader: R,
    mut writer: W,
    ctx: &ConnContext,
    peer: (SocketAddr, &'static str),
    head: &RequestHead,
    app: String,
    key: String,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: SessionWriter,
{
    let session_id = crate::url::session_id(&app, &key);
    tracing::Span::current().record("session_id", session_id.as_str());
    let request = Request { role: Role::Play, session_id, app, key, peer: peer.0, transport: TRANSPORT };
    if let Decision::Refuse(Refusal { reason, message }) = ctx.decide(&request).await {
        answer(&mut reader, &mut writer, 403, "Forbidden", message.as_bytes(), head.method != "HEAD").await?;
        return Err(ConnError::Refused(reason, message));
    }
    let _allowed = Allowed::new(ctx.gate.clone(), request.clone());
    let end = CancellationToken::new();
    let mut sub = ctx.hub.subscribe(&request.session_id);
    sub.identify(Peer::new(ctx.hub.next_peer_id(), TRANSPORT, Some(peer.0), end.clone()));
    if !ctx.hub.is_live(&request.session_id) {
        ctx.puller.want(&request.session_id, 0);
    }
    let mut scratch = [0u8; 1024];
    let live = tokio::select! {
        live = sub.wait_live(ctx.hub.config().play_wait) => live,
        // The client gave up waiting (or sent something: nothing is expected).
        _ = reader.read(&mut scratch) => return Ok(()),
        _ = ctx.shutdown.cancelled() => false,
        _ = end.cancelled() => return Err(ConnError::Ended(Reason::EndedByApi)),
    };
    if !live {
        let why = "no such stream is being published";
        answer(&mut reader, &mut writer, 404, "Not Found", why.as_bytes(), head.method != "HEAD").await?;
        return Err(ConnError::Refused(Reason::StreamNotFound, why.into()));
    }
    info!("http-flv play started");
    let result = stream(&mut reader, &mut writer, ctx, &mut sub, head, &end).await;
    info!(skipped = sub.skipped(), "http-flv play ended");
    result
}

/// Writes the stream until it ends (`Ok`) or the client goes.
async fn stream<R, W>(
    reader: &mut R,
    writer: &mut W,
    ctx: &ConnContext,
    sub: &mut Subscriber,
    head: &RequestHead,
    end: &CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: SessionWriter,
{
    let write_timeout = Duration::from_millis(ctx.config.write_timeout_ms);
    let direct = writer.direct();
    let head_only = head.method == "HEAD";
    let mut sink: Option<Box<dyn DirectSink>> = None;
    let mut started = false;
    let mut batch: Vec<Frame> = Vec::new();
    let mut wire: Vec<Bytes> = Vec::new();
    let mut scratch = [0u8; 1024];
    let mut shutting_down = false;
    loop {
        let back = sub.take_writer();
        sink = back.sink.or(sink);
        wire.extend(back.unwritten);
        sub.drain_into(&mut batch, WRITE_BATCH);
        if !started && !batch.is_empty() {
            let (response, flv_header) = response_start(&batch);
            wire.push(response);
            started = true;
            if head_only {
                writer.write_batch(&mut wire).await?;
                let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
                return Ok(());
            }
            wire.push(flv_header);
        }
        wire.extend(batch.drain(..).map(|f| f.flv_tag()));
        if !wire.is_empty() {
            write_timed(writer, &mut wire, write_timeout).await?;
            wire.clear();
        }
        if let (true, Some(socket)) = (started, &direct) {
            let s = sink.take().unwrap_or_else(|| Box::new(FlvSink(socket.clone())));
            sink = sub.hand_to_publisher(s).err();
        }
        tokio::select! {
            biased;
            // A player stays through a drain until its stream ends.
            _ = ctx.shutdown.cancelled(), if !shutting_down => shutting_down = true,
            _ = end.cancelled() => {
                // A tag the publisher wrote part of is finished, so the body ends on a
                // tag boundary.
                let mut rest: Vec<Bytes> = sub.take_writer().unwritten.into_iter().collect();
                if !rest.is_empty() {
                    write_timed(writer, &mut rest, write_timeout).await?;
                }
                let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
                return Err(ConnError::Ended(Reason::EndedByApi));
            }
            read = reader.read(&mut scratch) => {
                if read? == 0 {
                    return Ok(());
                }
                // Nothing is expected after the request; what comes is read and dropped.
            }
            more = sub.ready() => if !more {
                // The stream ended: finish what the publisher left half-written, then
                // close, which ends the body.
                let mut rest: Vec<Bytes> = sub.take_writer().unwritten.into_iter().collect();
                if !rest.is_empty() {
                    write_timed(writer, &mut rest, write_timeout).await?;
                }
                let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
                drain_until_closed(reader, &mut scratch).await;
                return Ok(());
            },
        }
    }
}

/// The response head, and the FLV file header, whose flags say which tracks the first
/// batch (the stream's sequence headers, for a late joiner) configures; both when it
/// configures neither yet.
fn response_start(first: &[Frame]) -> (Bytes, Bytes) {
    let configured = |kind| first.iter().any(|f| f.kind() == kind && f.is_sequence_header());
    let (audio, video) = match (configured(MediaKind::Audio), configured(MediaKind::Video)) {
        (false, false) => (true, true),
        known => known,
    };
    // Media only: the hub re-stamps metadata and sequence headers for each late joiner.
    let media = first.iter().filter(|f| f.kind() != MediaKind::Data && !f.is_sequence_header());
    let clock = media.max_by_key(|f| f.received()).map(|newest| {
        let at = SystemTime::now() - newest.received().elapsed();
        let ms = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        format!("{ms};{}", newest.timestamp())
    });
    let mut headers = CORS.to_vec();
    headers.extend([("Content-Type", "video/x-flv"), ("Cache-Control", "no-cache, no-store")]);
    if let Some(clock) = &clock {
        headers.push((CLOCK_HEADER, clock));
    }
    let mut flv_header = BytesMut::new();
    flv::write_header(&mut flv_header, audio, video);
    (Bytes::from(response_head(200, "OK", &headers)), flv_header.freeze())
}

/// The publisher's handle on an idle HTTP-FLV player's socket.
struct FlvSink(Arc<dyn TryWrite>);

impl DirectSink for FlvSink {
    fn encode(&self, frame: &Frame) -> Bytes {
        frame.flv_tag()
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
}
