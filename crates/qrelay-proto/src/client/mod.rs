//! The outbound side: connects to a stream URL over TCP, TLS or QUIC and drives a
//! [`ClientSession`] to publish or play. `qrelay publish`/`play` are thin loops over
//! [`RtmpClient`]; the bench and relays reuse it.

mod flv_file;
mod live;
mod pool;
mod roqr;

pub use live::LiveSkip;
pub use pool::{Lease, QuicPool, RxStats};

pub use flv_file::{
    play_to_flv, publish_flv, read_flv_tags, ArrivalLog, FileError, PlayOptions, PublishOptions, Transfer,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::media::frame::MediaKind;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::session::{ClientEvent, ClientMode, ClientSession, SessionConfig, SessionError};
use crate::transport::quic::{ClientEndpoint, ConnectFailed, QuicSettings};
use crate::transport::redundancy::RedundancyStats;
use crate::transport::{quic, tls};
use crate::url::{QuicMapping, StreamUrl, Transport};

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Certificate trust for TLS and QUIC.
    pub trust: tls::Trust,
    /// RTMP session settings (outbound chunk size, what the chunk decoder accepts).
    pub session: SessionConfig,
    /// QUIC transport settings (congestion control, MTU, timeouts).
    pub quic: QuicSettings,
    /// RoQR publishing: a GOP still unacknowledged this long after it ended is cancelled
    /// and sending resumes at the next keyframe.
    pub max_latency: Duration,
    /// Limit on connecting plus the RTMP handshake, connect and a publish up to its
    /// answer, or a play up to its request; a play's wait for its publisher is not part
    /// of it.
    pub connect_timeout: Duration,
    /// How long a play may wait for `NetStream.Play.Start` once requested. The server
    /// decides how long a player waits for its publisher (qrelay's `play_wait_ms`, 30 s
    /// by default, then `NetStream.Play.StreamNotFound`), so this only guards against a
    /// server that never answers and is well above any server's own wait.
    pub play_wait: Duration,
    /// Further properties of the `connect` command object (a relay's hop count,
    /// `relay::hops`); servers ignore properties they do not know.
    pub connect_properties: Vec<(String, Amf0Value)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            trust: tls::Trust::WebPki,
            session: SessionConfig::default(),
            quic: QuicSettings::default(),
            max_latency: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            play_wait: Duration::from_secs(120),
            connect_properties: Vec::new(),
        }
    }
}

/// A QUIC session's view of its path ([`RtmpClient::path_estimate`]). Counters run
/// from the start of the session: a reader compares two estimates for a rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathEstimate {
    /// Bits per second the congestion controller allows now (its window per round trip).
    pub allowed_bps: u64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Packets sent, and declared lost (with redundant copies: every copy lost).
    pub sent_packets: u64,
    /// See `sent_packets`.
    pub lost_packets: u64,
    /// Redundant copies are being sent (the path loses packets at random).
    pub redundant: bool,
    /// RoQR: GOPs whose rest was cut because the path fell behind the latency budget.
    pub gops_cut: u64,
    /// RoQR: finished GOPs cancelled still unacknowledged after the budget.
    pub gops_cancelled: u64,
    /// RoQR: video frames not sent because their GOP was cut.
    pub frames_skipped: u64,
}

/// Why a client failed. Each message carries its cause itself (none is also exposed as
/// `source()`), so `{:#}` chains print every cause once.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket errors once connected.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// QUIC setup failed.
    #[error(transparent)]
    Quic(#[from] quic::QuicError),
    /// QUIC connection failed.
    #[error("QUIC: {0}")]
    QuicConnect(String),
    /// The server's certificate did not verify against the trusted CAs.
    #[error(
        "the server's certificate is not trusted ({0}): trust its CA with --ca FILE \
         (qrelay's development CA is certs/dev-ca.pem on the server), or skip verification \
         with --insecure (development only)"
    )]
    Certificate(String),
    /// The RTMP session failed or was refused.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The server closed the connection before publishing or playing started.
    #[error("server closed the connection")]
    Closed,
    /// The connection ended while playing without the stream's end (StreamEOF or
    /// `NetStream.Play.UnpublishNotify`): a server crash or a network failure, not the
    /// end of the stream.
    #[error("the connection ended before the stream did (no StreamEOF or UnpublishNotify)")]
    Interrupted,
    /// A stage of setting up the session did not complete in time.
    #[error("timed out after {after:?} {stage}")]
    Timeout {
        /// What was not done yet.
        stage: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// A mapping this build does not speak yet.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        match untrusted_certificate(&error) {
            Some(reason) => Self::Certificate(reason),
            None => Self::Io(error),
        }
    }
}

/// The certificate error inside a TLS handshake failure, as rustls names it (e.g.
/// `invalid peer certificate: UnknownIssuer`).
fn untrusted_certificate(error: &std::io::Error) -> Option<String> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        e @ rustls::Error::InvalidCertificate(_) => Some(e.to_string()),
        _ => None,
    }
}

/// A QUIC connection error, naming an untrusted certificate as such. quinn reports the
/// rustls error only as the reason text of a crypto transport error.
fn quic_connect_error(error: quinn::ConnectionError) -> ClientError {
    match &error {
        quinn::ConnectionError::TransportError(t) if t.reason.starts_with("invalid peer certificate") => {
            ClientError::Certificate(t.reason.clone())
        }
        _ => ClientError::QuicConnect(error.to_string()),
    }
}

/// [`quic_connect_error`] for a connection that may also have failed to start.
fn quic_connect_failed(error: ConnectFailed) -> ClientError {
    match error {
        ConnectFailed::Start(e) => ClientError::QuicConnect(e.to_string()),
        ConnectFailed::Handshake(e) => quic_connect_error(e),
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// An RTMP session over some transport, publishing or playing.
#[derive(Debug)]
pub struct RtmpClient {
    link: Link,
}

/// The two framings: chunks on a byte stream (TCP, TLS, the QUIC tunnel), or RoQR.
#[derive(Debug)]
enum Link {
    Chunked(Box<ChunkedLink>),
    Roqr(Box<roqr::RoqrLink>),
}

/// An RTMP session on a byte stream.
struct ChunkedLink {
    reader: Reader,
    writer: Writer,
    session: ClientSession,
    buf: Vec<u8>,
    /// Keeps the QUIC endpoint and connection alive as long as the session.
    quic: Option<(ClientEndpoint, quinn::Connection)>,
    /// The session's place on a pooled connection (shared, so never closed by it).
    _lease: Option<Lease>,
}

impl std::fmt::Debug for ChunkedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedLink").field("session", &self.session).finish()
    }
}

impl RtmpClient {
    /// Connects and starts publishing or playing (returns once the server said
    /// `NetStream.Publish.Start` / `NetStream.Play.Start`).
    ///
    /// `connect_timeout` bounds reaching the server and the RTMP exchange up to the
    /// answer to a publish, or up to sending a play. A play is answered only once its
    /// stream is published, so it waits as long as the server holds it (bounded by
    /// `play_wait`), and a refusal arrives as the server's own status code
    /// (`NetStream.Play.StreamNotFound`).
    pub async fn connect(
        url: &StreamUrl,
        mode: ClientMode,
        opts: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let deadline = Instant::now() + opts.connect_timeout;
        let timeout =
            || ClientError::Timeout { stage: "connecting to the server", after: opts.connect_timeout };
        let link =
            tokio::time::timeout_at(deadline, Self::open(url, mode, opts)).await.map_err(|_| timeout())??;
        let limits =
            Limits { connect: Some((deadline, opts.connect_timeout)), play_wait: Some(opts.play_wait) };
        Self::start(link, limits).await
    }

    /// Reaches the server and sets up the framing (the session starts with it).
    async fn open(url: &StreamUrl, mode: ClientMode, opts: &ClientOptions) -> Result<Link, ClientError> {
        let addr = resolve(&url.host, url.port).await?;
        let tcp = |addr| async move {
            let s = TcpStream::connect(addr).await.map_err(|error| ClientError::Connect { addr, error })?;
            s.set_nodelay(true)?;
            Ok::<_, ClientError>(s)
        };
        let (reader, writer, quic): (Reader, Writer, _) = match url.transport {
            Transport::Tcp => {
                let (r, w) = tcp(addr).await?.into_split();
                (Box::new(r), Box::new(w), None)
            }
            Transport::Tls => {
                let s = tcp(addr).await?;
                let config = tls::rtmps_client_config(&opts.trust)?;
                let name = server_name(&url.host)?;
                let s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, s).await?;
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w), None)
            }
            Transport::Quic(QuicMapping::Roqr) => {
                let (endpoint, conn) = quic_connect(addr, url, opts, tls::ALPN_ROQR).await?;
                let link = roqr::RoqrLink::open(endpoint, conn, mode, url, opts).await?;
                return Ok(Link::Roqr(Box::new(link)));
            }
            Transport::Quic(QuicMapping::Tunnel) => {
                let (endpoint, conn) = quic_connect(addr, url, opts, tls::ALPN_RTMP).await?;
                let (send, recv) = conn.open_bi().await.map_err(quic_connect_error)?;
                (Box::new(recv), Box::new(send), Some((endpoint, conn)))
            }
        };
        Self::chunked(reader, writer, quic, url, mode, opts)
    }

    /// Like [`connect`](Self::connect), but a tunnel-mapping session goes on a connection
    /// of `pool`, shared with other sessions to the same upstream (other mappings connect
    /// as `connect` does).
    pub async fn connect_pooled(
        url: &StreamUrl,
        mode: ClientMode,
        opts: &ClientOptions,
        pool: &QuicPool,
    ) -> Result<Self, ClientError> {
        if url.transport != Transport::Quic(QuicMapping::Tunnel) {
            return Self::connect(url, mode, opts).await;
        }
        let deadline = Instant::now() + opts.connect_timeout;
        let timeout =
            || ClientError::Timeout { stage: "connecting to the server", after: opts.connect_timeout };
        let open = async {
            let addr = resolve(&url.host, url.port).await?;
            let (conn, lease) = pool.connection(addr, &url.host, tls::ALPN_RTMP).await?;
            let (send, recv) = conn.open_bi().await.map_err(quic_connect_error)?;
            let mut link = Self::chunked(Box::new(recv), Box::new(send), None, url, mode, opts)?;
            if let Link::Chunked(l) = &mut link {
                l._lease = Some(lease);
            }
            Ok::<_, ClientError>(link)
        };
        let link = tokio::time::timeout_at(deadline, open).await.map_err(|_| timeout())??;
        let limits =
            Limits { connect: Some((deadline, opts.connect_timeout)), play_wait: Some(opts.play_wait) };
        Self::start(link, limits).await
    }

    /// Runs the RTMP session over an already open byte stream (e.g. another stream of a
    /// shared QUIC connection).
    pub async fn over_stream(
        reader: Reader,
        writer: Writer,
        url: &StreamUrl,
        mode: ClientMode,
        session: SessionConfig,
    ) -> Result<Self, ClientError> {
        let opts = ClientOptions { session, ..ClientOptions::default() };
        Self::start(Self::chunked(reader, writer, None, url, mode, &opts)?, Limits::default()).await
    }

    fn chunked(
        reader: Reader,
        writer: Writer,
        quic: Option<(ClientEndpoint, quinn::Connection)>,
        url: &StreamUrl,
        mode: ClientMode,
        opts: &ClientOptions,
    ) -> Result<Link, ClientError> {
        let mut session = ClientSession::new(opts.session, mode, &url.app, &url.key, &url.tc_url())?;
        for (name, value) in &opts.connect_properties {
            session.set_connect_property(name, value.clone());
        }
        let link = ChunkedLink { reader, writer, session, buf: vec![0; 64 * 1024], quic, _lease: None };
        Ok(Link::Chunked(Box::new(link)))
    }

    /// Runs the session until the server started the publish or play.
    async fn start(link: Link, limits: Limits) -> Result<Self, ClientError> {
        let mut client = Self { link };
        let mut play_deadline = None;
        loop {
            match client.poll_event() {
                Some(ClientEvent::PublishStarted | ClientEvent::PlayStarted) => return Ok(client),
                Some(_) => continue,
                None => {}
            }
            // The deadline is chosen per read: the session may have sent its play
            // request since the last one.
            let limit = match (client.awaiting_play(), limits.play_wait) {
                (true, Some(wait)) => {
                    let deadline = *play_deadline.get_or_insert_with(|| Instant::now() + wait);
                    Some((deadline, wait, "waiting for the server to start playing"))
                }
                (true, None) => None,
                (false, _) => limits.connect.map(|(d, after)| (d, after, "connecting to the server")),
            };
            let step = async {
                client.flush().await?;
                client.read_input().await
            };
            let open = match limit {
                Some((deadline, after, stage)) => tokio::time::timeout_at(deadline, step)
                    .await
                    .map_err(|_| ClientError::Timeout { stage, after })??,
                None => step.await?,
            };
            if !open {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Whether a play was requested and not answered yet.
    fn awaiting_play(&mut self) -> bool {
        match &mut self.link {
            Link::Chunked(l) => l.session.awaiting_play(),
            Link::Roqr(l) => l.awaiting_play(),
        }
    }

    /// Writes whatever the session queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Chunked(l) => {
                if let Some(out) = l.session.take_output() {
                    l.writer.write_all(&out).await?;
                    l.writer.flush().await?;
                }
                Ok(())
            }
            Link::Roqr(l) => l.flush().await,
        }
    }

    /// Sends one media message (publish mode).
    pub async fn send_media(
        &mut self,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.send_media_due(kind, timestamp, payload, None).await
    }

    /// Sends one media message that a paced source meant to send at `due` (publish
    /// mode): over RoQR, the latency budget counts from then, so a source that was held
    /// up has less of it left before the rest of a GOP is cut.
    pub async fn send_media_due(
        &mut self,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
        due: Option<Instant>,
    ) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Chunked(l) => l.session.send_media(kind, timestamp, payload),
            Link::Roqr(l) => return l.send_media(kind, timestamp, payload, due).await,
        }
        self.flush().await
    }

    /// Reads once from the server and processes it, without writing; `false` when the
    /// server closed. Cancel-safe, so it can sit in a `select!` beside a timer; answers
    /// it queued (acks, pongs) go out with the next [`RtmpClient::flush`].
    pub async fn read_input(&mut self) -> Result<bool, ClientError> {
        match &mut self.link {
            Link::Chunked(l) => {
                let n = l.reader.read(&mut l.buf).await?;
                if n == 0 {
                    return Ok(false);
                }
                l.session.handle_input(&l.buf[..n])?;
                Ok(true)
            }
            Link::Roqr(l) => l.read_input().await,
        }
    }

    /// Moves a QUIC session to a new local UDP socket, as a network change does; the
    /// connection migrates and the session continues. Returns the new local address.
    pub fn rebind(&self) -> Result<SocketAddr, ClientError> {
        match &self.link {
            Link::Roqr(l) => l.rebind(),
            Link::Chunked(l) => match &l.quic {
                Some((endpoint, _)) => Ok(endpoint.rebind()?),
                None => Err(ClientError::Unsupported("only a QUIC session can move to another socket")),
            },
        }
    }

    /// The QUIC connection's transport statistics and the redundant copies its endpoint
    /// sent; `None` over TCP and on a pooled connection (shared, not this session's).
    pub fn quic_stats(&self) -> Option<(quinn::ConnectionStats, RedundancyStats)> {
        let (endpoint, conn) = match &self.link {
            Link::Roqr(l) => l.quic(),
            Link::Chunked(l) => {
                let (endpoint, conn) = l.quic.as_ref()?;
                (endpoint, conn)
            }
        };
        Some((conn.stats(), endpoint.redundancy.stats()))
    }

    /// What this session knows of its path, for an encoder to fit its bitrate to (as
    /// OBS's dynamic bitrate does from its TCP send buffer); `None` over TCP and on a
    /// pooled connection.
    pub fn path_estimate(&self) -> Option<PathEstimate> {
        let (stats, copies) = self.quic_stats()?;
        let path = stats.path;
        let rtt = path.rtt.max(Duration::from_millis(1));
        let mut estimate = PathEstimate {
            allowed_bps: (path.cwnd as f64 * 8.0 / rtt.as_secs_f64()) as u64,
            rtt: path.rtt,
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
            redundant: copies.redundant_paths > 0,
            ..PathEstimate::default()
        };
        if let Link::Roqr(l) = &self.link {
            let media = l.sender_stats();
            let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            estimate.gops_cut = count(&media.gops_cut);
            estimate.gops_cancelled = count(&media.gops_cancelled);
            estimate.frames_skipped = count(&media.frames_skipped);
        }
        Some(estimate)
    }

    /// Next event already decoded, without reading.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        match &mut self.link {
            Link::Chunked(l) => l.session.poll_event(),
            Link::Roqr(l) => l.poll_event(),
        }
    }

    /// Next event from the server; reads (and flushes answers) as needed. `None` when
    /// the server closed.
    pub async fn read_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        loop {
            if let Some(ev) = self.poll_event() {
                return Ok(Some(ev));
            }
            self.flush().await?;
            if !self.read_input().await? {
                return Ok(None);
            }
        }
    }

    /// Ends the session politely (FCUnpublish/deleteStream) and closes the write side.
    pub async fn finish(self) -> Result<(), ClientError> {
        let mut l = match self.link {
            Link::Chunked(l) => l,
            Link::Roqr(l) => return l.finish().await,
        };
        l.session.finish();
        if let Some(out) = l.session.take_output() {
            l.writer.write_all(&out).await?;
        }
        l.writer.shutdown().await?;
        if let Some((endpoint, conn)) = l.quic.take() {
            // Give the server the stream's end before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), l.reader.read(&mut l.buf)).await;
            conn.close(quinn::VarInt::from_u32(0), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.endpoint.wait_idle()).await;
        }
        Ok(())
    }
}

/// A QUIC connection to `addr` speaking `alpn`.
async fn quic_connect(
    addr: SocketAddr,
    url: &StreamUrl,
    opts: &ClientOptions,
    alpn: &[u8],
) -> Result<(ClientEndpoint, quinn::Connection), ClientError> {
    let endpoint = quic::client_endpoint(addr, &opts.trust, &opts.quic, alpn)?;
    let conn = endpoint.connect(addr, &url.host).await.map_err(quic_connect_failed)?;
    Ok((endpoint, conn))
}

/// Deadlines of [`RtmpClient::start`]; none for sessions over a stream someone else
/// opened (their owner bounds them).
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    /// Until the server answered the publish or play request (and the limit's length).
    connect: Option<(Instant, Duration)>,
    /// From the play request to `NetStream.Play.Start`.
    play_wait: Option<Duration>,
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host((host, port)).await?.next().ok_or_else(|| ClientError::Resolve(host.to_owned()))
}

fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ClientError::Resolve(host.to_owned()))
}
