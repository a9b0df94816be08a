//! The client's RoQR link: one QUIC connection (ALPN `roqr`) carrying one RTMP session on
//! flow 0. Commands go on the first bidirectional stream; as a publisher we send media
//! with the per-track mapping (audio stream, a stream per GOP, stale GOPs cancelled past
//! the latency budget); as a player we ask the server for the same mapping in `connect`
//! and read frames from every stream and datagram, reordered by timestamp.

use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{ClientError, ClientOptions};
use crate::media::frame::{inspect_audio, inspect_video, MediaKind};
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::roqr::{RoqrLimits, RoqrSession, Verdict};
use crate::rtmp::session::{ClientCore, ClientEvent, ClientMode, SessionError};
use crate::transport::quic::ClientEndpoint;
use crate::transport::roqr::{
    prioritise_commands, spawn_readers, write_commands, Incoming, MediaInfo, MediaMapping, MediaSender,
    ReadLimits, MAPPING_PROPERTY, MAPPING_TRACKS,
};
use crate::url::StreamUrl;

/// One RTMP session over RoQR.
#[derive(Debug)]
pub(super) struct RoqrLink {
    endpoint: ClientEndpoint,
    conn: Connection,
    command: SendStream,
    session: RoqrSession<ClientCore>,
    incoming: mpsc::Receiver<Incoming>,
    sender: MediaSender,
    _readers: JoinSet<()>,
    /// The server finished the command stream; what it sent last (the end of the stream)
    /// may still wait for the media streams.
    command_ended: bool,
}

impl RoqrLink {
    /// Opens the command stream on `conn` and sends `connect` for `url`'s app and key.
    pub(super) async fn open(
        endpoint: ClientEndpoint,
        conn: Connection,
        mode: ClientMode,
        url: &StreamUrl,
        opts: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let (command, recv) = conn.open_bi().await.map_err(|e| ClientError::QuicConnect(e.to_string()))?;
        prioritise_commands(&command);
        let mut core = ClientCore::new(mode, &url.app, &url.key, &url.tc_url());
        core.set_connect_property(MAPPING_PROPERTY, Amf0Value::String(MAPPING_TRACKS.into()));
        for (name, value) in &opts.connect_properties {
            core.set_connect_property(name, value.clone());
        }
        core.start();
        let limits = RoqrLimits::default();
        let session = RoqrSession::new(core, limits);
        let (tx, incoming) = mpsc::channel(256);
        let mut readers = JoinSet::new();
        let read_limits = ReadLimits { max_payload: limits.max_payload, max_pending: 32 * 1024 * 1024 };
        spawn_readers(&conn, recv, read_limits, tx, &mut readers);
        let sender = MediaSender::new(conn.clone(), MediaMapping::Tracks, opts.max_latency);
        Ok(Self {
            endpoint,
            conn,
            command,
            session,
            incoming,
            sender,
            _readers: readers,
            command_ended: false,
        })
    }

    /// Writes queued commands.
    pub(super) async fn flush(&mut self) -> Result<(), ClientError> {
        if let Some(out) = self.session.take_output() {
            write_commands(&mut self.command, out)
                .await
                .map_err(|e| ClientError::QuicConnect(e.to_string()))?;
        }
        Ok(())
    }

    /// Sends one media message on its track's stream; `due` is when a paced source
    /// meant to send it (the latency budget counts from then).
    pub(super) async fn send_media(
        &mut self,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
        due: Option<tokio::time::Instant>,
    ) -> Result<(), ClientError> {
        let inspection = match kind {
            MediaKind::Video => inspect_video(&payload),
            MediaKind::Audio => inspect_audio(&payload),
            MediaKind::Data => Default::default(),
        };
        let info = MediaInfo { keyframe: inspection.keyframe, essential: inspection.sequence_header, due };
        self.session.core().send_media(kind, timestamp, payload);
        self.flush().await?;
        while let Some(msg) = self.session.take_media() {
            self.sender
                .send(&mut self.command, &msg, info)
                .await
                .map_err(|e| ClientError::QuicConnect(e.to_string()))?;
        }
        Ok(())
    }

    /// Waits for input and handles it; `false` when the server closed. Cancel-safe.
    pub(super) async fn read_input(&mut self) -> Result<bool, ClientError> {
        if self.command_ended && !self.session.has_deferred() {
            return Ok(false);
        }
        let deadline = self.session.poll_timeout().map(tokio::time::Instant::from_std);
        let incoming = tokio::select! {
            i = self.incoming.recv() => i,
            _ = sleep_until_opt(deadline) => {
                self.session.handle_timeout(std::time::Instant::now()).map_err(roqr_error)?;
                return Ok(true);
            }
        };
        match incoming {
            None => Ok(false),
            Some(Incoming::CommandStreamEnded) => {
                // The server's last word (UnpublishNotify) may wait for its media streams:
                // keep reading them until it is out (bounded by the session).
                self.command_ended = true;
                Ok(true)
            }
            Some(Incoming::StreamOpened) => {
                self.session.stream_opened();
                Ok(true)
            }
            Some(Incoming::StreamClosed) => {
                self.session.stream_closed().map_err(roqr_error)?;
                Ok(true)
            }
            Some(Incoming::Malformed(e)) => Err(ClientError::Session(SessionError::Protocol(e.to_string()))),
            Some(Incoming::Frame { frame, via, stop }) => {
                match self.session.handle_frame(frame, via, std::time::Instant::now()).map_err(roqr_error)? {
                    Verdict::StopStream(code) => {
                        if let Some(s) = stop {
                            s.stop(code)
                        }
                    }
                    Verdict::Continue | Verdict::Dropped => {}
                }
                Ok(true)
            }
        }
    }

    /// Moves the connection to a new local UDP socket (a network change: Wi-Fi to
    /// cellular, a NAT rebinding). QUIC migrates the connection; the session goes on.
    pub(super) fn rebind(&self) -> Result<std::net::SocketAddr, ClientError> {
        Ok(self.endpoint.rebind()?)
    }

    /// The media sender's counters.
    pub(super) fn sender_stats(&self) -> std::sync::Arc<crate::transport::roqr::SenderStats> {
        self.sender.stats()
    }

    /// The QUIC endpoint and connection.
    pub(super) fn quic(&self) -> (&ClientEndpoint, &Connection) {
        (&self.endpoint, &self.conn)
    }

    /// Whether a play was requested and not started yet.
    pub(super) fn awaiting_play(&mut self) -> bool {
        self.session.core().awaiting_play()
    }

    /// Next event already decoded.
    pub(super) fn poll_event(&mut self) -> Option<ClientEvent> {
        self.session.core().poll_event()
    }

    /// Ends the session politely and closes the connection once the server has it.
    pub(super) async fn finish(mut self) -> Result<(), ClientError> {
        self.sender.drain(Duration::from_secs(2)).await;
        self.session.core().finish();
        self.flush().await?;
        let _ = self.command.finish();
        let stats = self.sender.stats();
        let path = self.conn.stats().path;
        let copies = self.endpoint.redundancy.stats();
        tracing::info!(
            gops_cancelled = stats.gops_cancelled.load(std::sync::atomic::Ordering::Relaxed),
            gops_cut = stats.gops_cut.load(std::sync::atomic::Ordering::Relaxed),
            frames_skipped = stats.frames_skipped.load(std::sync::atomic::Ordering::Relaxed),
            sent_packets = path.sent_packets,
            lost_packets = path.lost_packets,
            copies_sent = copies.extra_datagrams,
            copies_skipped = copies.skipped,
            "RoQR media sent"
        );
        // The server closes once it has read our deleteStream; wait for that, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.closed()).await;
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.endpoint.wait_idle()).await;
        Ok(())
    }
}

fn roqr_error(e: crate::rtmp::roqr::RoqrError) -> ClientError {
    match e {
        crate::rtmp::roqr::RoqrError::Session(s) => ClientError::Session(s),
        other => ClientError::Session(SessionError::Protocol(other.to_string())),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
