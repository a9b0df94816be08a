//! Who is behind a publisher or a player, as the control API shows them, and the handle
//! that ends them. A session registers its [`Peer`] with the hub when it publishes or
//! subscribes; the hub keeps it beside the session's queue (players) or in the stream's
//! state (the publisher), so listing streams reads it without asking any session task.
//!
//! Snapshots ([`StreamInfo`], [`PlayerInfo`]) are built from atomics and one short stream
//! lock each: reading them never waits for fan-out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::StreamStats;

/// One session as the hub knows it: an id unique in this relay, its transport and
/// address, when it began, and how to end it.
#[derive(Debug)]
pub struct Peer {
    /// Unique in this relay (never reused while it runs).
    pub id: u64,
    /// `tcp`, `tls`, `quic` (tunnel), `roqr`, or what an internal client calls itself.
    pub transport: &'static str,
    /// The remote address; `None` for the relay's own clients.
    pub addr: Option<SocketAddr>,
    /// When the session started.
    pub since: SystemTime,
    /// Cancelled to end the session: its task selects on it.
    end: CancellationToken,
}

impl Peer {
    /// A peer that `end` ends.
    pub fn new(
        id: u64,
        transport: &'static str,
        addr: Option<SocketAddr>,
        end: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self { id, transport, addr, since: SystemTime::now(), end })
    }

    /// Asks the session to end (its task closes it, counted as ended by the operator).
    pub fn end(&self) {
        self.end.cancel();
    }
}

/// The publisher of a live stream.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    /// The publishing session; `None` for a publisher without one (in-process).
    pub peer: Option<Arc<Peer>>,
    /// When this publish started.
    pub since: SystemTime,
    /// Video codec from the sequence header (`avc1.64001f`, `hvc1`, `av01`...).
    pub video_codec: Option<Arc<str>>,
    /// Audio codec (`mp4a.40.2`, `Opus`, `mp3`...).
    pub audio_codec: Option<Arc<str>>,
}

/// One subscriber of a stream.
#[derive(Debug, Clone)]
pub struct PlayerInfo {
    /// The playing session; `None` for an in-process subscriber.
    pub peer: Option<Arc<Peer>>,
    /// When it subscribed.
    pub since: SystemTime,
    /// Playing (`true`) or waiting for the publisher.
    pub live: bool,
    /// Media payload bytes handed to its transport so far (RTMP headers not counted).
    pub bytes_sent: u64,
    /// Payload bytes queued for it now.
    pub queued_bytes: usize,
    /// Frames it skipped because it fell behind.
    pub skipped: u64,
}

/// A stream as the control API shows it.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// `app/key`.
    pub session_id: String,
    /// The publisher, when live.
    pub publisher: Option<PublisherInfo>,
    /// Every subscriber (playing or waiting).
    pub players: Vec<PlayerInfo>,
    /// Counters of the stream.
    pub stats: StreamStats,
    /// Media payload bytes received from publishers of this stream entry.
    pub bytes_in: u64,
    /// Media payload bytes sent to its subscribers, present and gone.
    pub bytes_out: u64,
    /// Payload bytes in the cached GOP.
    pub gop_bytes: usize,
}
