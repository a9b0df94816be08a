//! The load itself: publishers (synthetic or FLV, real-time pace), players (one task
//! each, a [`ClientSession`] straight on the socket) and idle connections, over TCP or
//! over QUIC with several sessions sharing one connection; players over HTTP-FLV and
//! over WebTransport (the relay's browser mapping) too.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::QuicRx;
use super::stats::{Histogram, PlayerTracker};
use super::synth::{self, now_us, VideoPlan};
use qrelay_proto::client::{ClientError, ClientOptions, Lease, QuicPool, RtmpClient};
use qrelay_proto::media::flv::FlvTag;
use qrelay_proto::media::frame::MediaKind;
use qrelay_proto::rtmp::amf0::{self, Amf0Value};
use qrelay_proto::rtmp::chunk::{self, ChunkDecoder};
use qrelay_proto::rtmp::handshake::Handshake;
use qrelay_proto::rtmp::message::{Command, RtmpMessage};
use qrelay_proto::rtmp::session::{ClientEvent, ClientMode, ClientSession, SessionConfig};
use qrelay_proto::transport::{quic, tls};
use qrelay_proto::url::{StreamUrl, Transport};

/// Bytes a player reads from its socket at a time.
const READ_BUF: usize = 32 * 1024;
/// Latency samples a player keeps before merging them into the shared histogram.
const LATENCY_BATCH: usize = 256;
/// Limit on connecting plus handshake, connect and play.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Counters every task updates and the progress line reads.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Players that got `NetStream.Play.Start` (or idle connections that connected).
    pub connected: AtomicUsize,
    /// Players that got `NetStream.Play.Start`, never decremented (churning players are
    /// dropped mid-play, so `connected` does not count them down).
    pub started: AtomicUsize,
    /// Players or idle connections that failed before that.
    pub failed: AtomicUsize,
    /// Players that failed or were closed after starting.
    pub dropped: AtomicUsize,
    /// Bytes players read from their sockets.
    pub bytes: AtomicU64,
    /// Frames players found missing.
    pub skips: AtomicU64,
    /// Latencies are recorded only inside the measurement window.
    pub measuring: AtomicBool,
    /// Relay latency in microseconds, merged from the players' batches.
    pub latency: Mutex<Histogram>,
    /// Ends publishers, players and idle connections.
    pub stop: CancellationToken,
    /// Publishers that sent their first keyframe.
    pub publishers_live: AtomicUsize,
    /// Frames (video + audio) publishers sent.
    pub frames_sent: AtomicU64,
}

impl Shared {
    fn merge_latencies(&self, batch: &mut Vec<u32>) {
        if batch.is_empty() {
            return;
        }
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for &v in batch.iter() {
            h.record(v);
        }
        batch.clear();
    }
}

/// Any byte stream a session can run over.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens byte streams to the server: a TCP connection per session, or a bidirectional
/// stream on a shared QUIC connection.
pub(super) enum Dialer {
    Tcp(SocketAddr),
    /// The tunnel: sessions share QUIC connections, `per_conn` each (the client's pool).
    Quic {
        addr: SocketAddr,
        host: String,
        pool: Box<QuicPool>,
    },
    /// RoQR: one QUIC connection per session (RoQR carries one session per connection),
    /// made by the client library itself.
    Roqr(Box<ClientOptions>),
    /// HTTP-FLV over TCP: `GET /{app}/{key}.flv` on the relay's TCP port.
    HttpFlv(SocketAddr),
    /// WebTransport (ALPN `h3`) on the relay's UDP port: one QUIC connection per player,
    /// as a browser tab has, trusting what `opts.trust` says.
    WebTransport {
        addr: SocketAddr,
        opts: Box<ClientOptions>,
    },
}

impl Dialer {
    pub(super) async fn new(url: &StreamUrl, opts: &ClientOptions, per_conn: usize) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", url.host))?;
        Ok(match url.transport {
            Transport::Tcp => Dialer::Tcp(addr),
            Transport::Quic(qrelay_proto::url::QuicMapping::Tunnel) => Dialer::Quic {
                addr,
                host: url.host.clone(),
                pool: Box::new(QuicPool::new(opts.clone(), per_conn)),
            },
            Transport::Quic(qrelay_proto::url::QuicMapping::Roqr) => Dialer::Roqr(Box::new(opts.clone())),
            Transport::Tls => anyhow::bail!("the bench speaks rtmp:// and rtmp+quic:// only"),
        })
    }

    /// The same address, played over HTTP-FLV (only where players would use TCP).
    pub(super) fn into_http_flv(self) -> anyhow::Result<Self> {
        match self {
            Dialer::Tcp(addr) => Ok(Dialer::HttpFlv(addr)),
            _ => anyhow::bail!("--http-flv needs an rtmp:// play URL (HTTP is on the relay's TCP port)"),
        }
    }

    /// WebTransport players of the play URL's host and port (its scheme does not matter:
    /// the relay's UDP port has the number of its TCP one). With `opts.trust` as given
    /// unless the relay lists certificate hashes at `/webtransport.json` on that port
    /// (its short-lived `h3` certificate, which no CA signed): then those are pinned,
    /// as a page pins them with `serverCertificateHashes`. `--insecure` skips the
    /// lookup; with `--ca` a failed lookup falls back to the CA.
    pub(super) async fn webtransport(url: &StreamUrl, opts: &ClientOptions) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", url.host))?;
        let mut opts = opts.clone();
        if !matches!(opts.trust, tls::Trust::Insecure) {
            match webtransport_hashes(addr, &url.host).await {
                Ok(hashes) if !hashes.is_empty() => opts.trust = tls::Trust::CertHashes(hashes),
                // A configured certificate: ordinary verification (`--ca` or web PKI).
                Ok(_) => {}
                Err(e) if matches!(opts.trust, tls::Trust::CaFile(_)) => {
                    eprintln!("GET /webtransport.json on {addr} failed ({e:#}); trusting --ca instead");
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "GET /webtransport.json on {addr} (pass --ca or --insecure for a relay without it)"
                    )))
                }
            }
        }
        Ok(Dialer::WebTransport { addr, opts: Box::new(opts) })
    }

    /// A byte stream for a session, with its place on a shared connection (kept as long
    /// as the stream).
    async fn open(&self) -> Result<(Box<dyn Io>, Option<Lease>), String> {
        match self {
            Dialer::Tcp(addr) | Dialer::HttpFlv(addr) => {
                let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                Ok((Box::new(s), None))
            }
            Dialer::Roqr(_) => Err("RoQR sessions are not byte streams".to_owned()),
            Dialer::WebTransport { .. } => Err("WebTransport sessions are not byte streams".to_owned()),
            Dialer::Quic { addr, host, pool } => {
                let (conn, lease) = pool
                    .connection(*addr, host, qrelay_proto::transport::tls::ALPN_RTMP)
                    .await
                    .map_err(|e| e.to_string())?;
                let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                Ok((Box::new(tokio::io::join(recv, send)), Some(lease)))
            }
        }
    }

    /// QUIC connections opened (0 for TCP).
    pub(super) fn quic_connections(&self) -> usize {
        match self {
            Dialer::Tcp(_) | Dialer::Roqr(_) | Dialer::HttpFlv(_) | Dialer::WebTransport { .. } => 0,
            Dialer::Quic { pool, .. } => pool.connections(),
        }
    }

    /// What the tunnel players' connections received (`None` for TCP and RoQR, whose
    /// connections the client library keeps).
    pub(super) fn quic_rx(&self) -> Option<QuicRx> {
        match self {
            Dialer::Quic { pool, .. } => {
                let s = pool.rx_stats();
                Some(QuicRx {
                    datagrams: s.datagrams,
                    bytes: s.bytes,
                    ios: s.ios,
                    max_path_mtu: s.max_path_mtu,
                })
            }
            _ => None,
        }
    }

    /// Closes shared connections.
    pub(super) fn close(&self) {
        if let Dialer::Quic { pool, .. } = self {
            pool.close();
        }
    }
}

/// What a player saw.
#[derive(Debug, Default)]
pub(super) struct PlayerOutcome {
    pub tracker: PlayerTracker,
    /// Reached `NetStream.Play.Start`.
    pub started: bool,
    /// Why it failed or ended before the bench stopped it.
    pub error: Option<String>,
}

impl PlayerOutcome {
    /// Every frame from the first keyframe on, no gap over a second, no early end.
    pub(super) fn ok(&self) -> bool {
        self.started && self.error.is_none() && self.tracker.ok()
    }
}

/// Runs a player until the bench stops it.
pub(super) async fn player(
    url: Arc<StreamUrl>,
    dialer: Arc<Dialer>,
    session: SessionConfig,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) -> PlayerOutcome {
    let mut out = PlayerOutcome::default();
    let result = async {
        if let Dialer::Roqr(opts) = &*dialer {
            return play_roqr(&url, opts, &shared, permit, &mut out).await;
        }
        if let Dialer::WebTransport { addr, opts } = &*dialer {
            return play_webtransport(&url, *addr, opts, &shared, permit, &mut out).await;
        }
        let (io, _lease) = tokio::time::timeout(CONNECT_TIMEOUT, dialer.open())
            .await
            .map_err(|_| "timed out connecting".to_owned())??;
        if let Dialer::HttpFlv(_) = &*dialer {
            return play_http_flv(io, &url, &shared, permit, &mut out).await;
        }
        play(io, &url, session, &shared, permit, &mut out).await
    }
    .await;
    if let Err(e) = result {
        if out.started {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        out.error = Some(e);
    }
    out.tracker.finish(now_us());
    out
}

async fn play(
    mut io: Box<dyn Io>,
    url: &StreamUrl,
    config: SessionConfig,
    shared: &Shared,
    permit: OwnedSemaphorePermit,
    out: &mut PlayerOutcome,
) -> Result<(), String> {
    let mut session = ClientSession::new(config, ClientMode::Play, &url.app, &url.key, &url.tc_url())
        .map_err(|e| e.to_string())?;
    let mut permit = Some(permit);
    let mut buf = vec![0u8; READ_BUF];
    let mut latencies: Vec<u32> = Vec::with_capacity(LATENCY_BATCH);
    out.tracker = PlayerTracker::new(now_us());
    let setup_deadline = Instant::now() + CONNECT_TIMEOUT;
    let result = loop {
        if let Some(bytes) = session.take_output() {
            if let Err(e) = write_all(&mut io, &bytes).await {
                break Err(e);
            }
            if !out.started {
                // The last write before Play.Start is the play request.
                out.tracker.play_sent_us = now_us();
            }
        }
        let deadline = (!out.started).then_some(setup_deadline);
        let n = match read_some(&mut io, &mut buf, shared, deadline, "NetStream.Play.Start").await {
            Ok(Some(n)) => n,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let now = now_us();
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = session.handle_input(&buf[..n]) {
            break Err(e.to_string());
        }
        let mut ended = false;
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::PlayStarted => {
                    out.started = true;
                    permit = None;
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    shared.started.fetch_add(1, Ordering::Relaxed);
                }
                ClientEvent::Media { kind: MediaKind::Video, payload, .. } => {
                    on_video(out, shared, &mut latencies, &payload, now);
                }
                ClientEvent::StreamEnded => ended = true,
                _ => {}
            }
        }
        if ended {
            break Err("stream ended".to_owned());
        }
    };
    drop(permit);
    shared.merge_latencies(&mut latencies);
    if out.started {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

/// A RoQR player: the client library's session (per-track streams, reordering), the
/// same accounting as [`play`]; bytes are counted as payload plus a frame header.
async fn play_roqr(
    url: &StreamUrl,
    opts: &ClientOptions,
    shared: &Shared,
    permit: OwnedSemaphorePermit,
    out: &mut PlayerOutcome,
) -> Result<(), String> {
    out.tracker = PlayerTracker::new(now_us());
    out.tracker.play_sent_us = now_us();
    let mut client = tokio::time::timeout(CONNECT_TIMEOUT, RtmpClient::connect(url, ClientMode::Play, opts))
        .await
        .map_err(|_| "timed out waiting for NetStream.Play.Start".to_owned())?
        .map_err(|e| e.to_string())?;
    out.started = true;
    drop(permit);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    shared.started.fetch_add(1, Ordering::Relaxed);
    let mut latencies: Vec<u32> = Vec::with_capacity(LATENCY_BATCH);
    let result = loop {
        let mut ended = false;
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Media { kind, payload, .. } => {
                    shared.bytes.fetch_add(payload.len() as u64 + 8, Ordering::Relaxed);
                    if kind == MediaKind::Video {
                        on_video(out, shared, &mut latencies, &payload, now_us());
                    }
                }
                ClientEvent::StreamEnded => ended = true,
                _ => {}
            }
        }
        if ended {
            break Err("stream ended".to_owned());
        }
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break Ok(()),
            r = client.read_input() => match r {
                Ok(true) => {}
                Ok(false) => break Err("server closed the connection".to_owned()),
                Err(e) => break Err(e.to_string()),
            },
        }
    };
    shared.merge_latencies(&mut latencies);
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

/// The next bytes a byte-stream player reads: `Ok(None)` once the bench stops; an error
/// when the server closes, the socket fails, or `deadline` (set until the play started)
/// passes before `waiting_for` arrived.
async fn read_some(
    io: &mut Box<dyn Io>,
    buf: &mut [u8],
    shared: &Shared,
    deadline: Option<Instant>,
    waiting_for: &str,
) -> Result<Option<usize>, String> {
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = shared.stop.cancelled() => Ok(None),
        _ = timeout => Err(format!("timed out waiting for {waiting_for}")),
        r = io.read(buf) => match r {
            Ok(0) => Err("server closed the connection".to_owned()),
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// An HTTP-FLV player: the request, the response head, then FLV tags, with the same
/// accounting as [`play`] (bytes are the socket's).
async fn play_http_flv(
    mut io: Box<dyn Io>,
    url: &StreamUrl,
    shared: &Shared,
    permit: OwnedSemaphorePermit,
    out: &mut PlayerOutcome,
) -> Result<(), String> {
    out.tracker = PlayerTracker::new(now_us());
    let request = format!("GET /{}/{}.flv HTTP/1.1\r\nHost: {}\r\n\r\n", url.app, url.key, url.host);
    write_all(&mut io, request.as_bytes()).await?;
    out.tracker.play_sent_us = now_us();
    let mut permit = Some(permit);
    let mut buf = vec![0u8; READ_BUF];
    let mut head = Vec::new();
    let mut reader = qrelay_proto::media::flv::FlvReader::new(16 * 1024 * 1024);
    let mut latencies: Vec<u32> = Vec::with_capacity(LATENCY_BATCH);
    let setup_deadline = Instant::now() + CONNECT_TIMEOUT;
    let result = loop {
        let deadline = (!out.started).then_some(setup_deadline);
        let n = match read_some(&mut io, &mut buf, shared, deadline, "the response").await {
            Ok(Some(n)) => n,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let now = now_us();
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut body = &buf[..n];
        if !out.started {
            head.extend_from_slice(body);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 16 * 1024 {
                    break Err("response head too long".to_owned());
                }
                continue;
            };
            if !head.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned();
                break Err(format!("refused: {}", line.lines().next().unwrap_or_default()));
            }
            reader.push(&head[end + 4..]);
            body = &[];
            out.started = true;
            permit = None;
            shared.connected.fetch_add(1, Ordering::Relaxed);
            shared.started.fetch_add(1, Ordering::Relaxed);
        }
        reader.push(body);
        let mut failed = None;
        loop {
            match reader.next_tag() {
                Ok(Some(tag)) if tag.kind == MediaKind::Video => {
                    on_video(out, shared, &mut latencies, &tag.payload, now)
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    drop(permit);
    shared.merge_latencies(&mut latencies);
    if out.started {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

/// The session URL of `url`'s stream at `addr`: `https://HOST:PORT/{app}/{key}`, the
/// key's `?token=` as the query.
fn webtransport_url(url: &StreamUrl, addr: SocketAddr) -> Result<url::Url, String> {
    let host = match url.host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{}]", url.host),
        Err(_) => url.host.clone(),
    };
    let text = format!("https://{host}:{}/{}/{}", addr.port(), url.app, url.key);
    url::Url::parse(&text).map_err(|e| format!("bad session URL {text}: {e}"))
}

/// Largest frame a WebTransport player accepts (the relay's own message limit).
const WT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// One relay-opened stream of a WebTransport session and its bytes not yet parsed.
struct WtStream {
    recv: web_transport_quinn::RecvStream,
    pending: BytesMut,
}

/// A WebTransport player: the session (CONNECT on `h3`), then every unidirectional
/// stream the relay opens (config, audio, one per GOP), each parsed as 17-byte headers
/// and payloads, video going to the same accounting as [`play`]. Started, as a RoQR
/// player, once the relay accepted (it answers when the stream is live) and opened the
/// first stream. Bytes are those read from the streams (headers and payloads).
async fn play_webtransport(
    url: &StreamUrl,
    addr: SocketAddr,
    opts: &ClientOptions,
    shared: &Shared,
    permit: OwnedSemaphorePermit,
    out: &mut PlayerOutcome,
) -> Result<(), String> {
    out.tracker = PlayerTracker::new(now_us());
    out.tracker.play_sent_us = now_us();
    let setup = async {
        let endpoint =
            quic::client_endpoint(addr, &opts.trust, &opts.quic, tls::ALPN_H3).map_err(|e| e.to_string())?;
        let conn = endpoint.connect(addr, &url.host).await.map_err(|e| e.to_string())?;
        let request = web_transport_quinn::proto::ConnectRequest::new(webtransport_url(url, addr)?);
        let session = web_transport_quinn::Session::connect(conn, request)
            .await
            .map_err(|e| format!("session: {e}"))?;
        let first = session.accept_uni().await.map_err(|e| format!("first stream: {e}"))?;
        Ok::<_, String>((endpoint, session, first))
    };
    let (_endpoint, session, first) = tokio::time::timeout(CONNECT_TIMEOUT, setup)
        .await
        .map_err(|_| "timed out waiting for the session and its first stream".to_owned())??;
    out.started = true;
    drop(permit);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    shared.started.fetch_add(1, Ordering::Relaxed);
    // In the order the relay opened them: when several have bytes, the oldest is read
    // first, so a GOP's tail is accounted before the next GOP's keyframe.
    let mut streams = vec![WtStream { recv: first, pending: BytesMut::new() }];
    let mut buf = vec![0u8; READ_BUF];
    let mut latencies: Vec<u32> = Vec::with_capacity(LATENCY_BATCH);
    let result = loop {
        let (i, read) = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break Ok(()),
            r = session.accept_uni() => match r {
                Ok(recv) => {
                    streams.push(WtStream { recv, pending: BytesMut::new() });
                    continue;
                }
                Err(e) => break Err(format!("session closed: {e}")),
            },
            r = read_any(&mut streams, &mut buf) => r,
        };
        let n = match read {
            Ok(0) => {
                // Finished by the relay: it ends streams between frames.
                if !streams[i].pending.is_empty() {
                    break Err("a stream ended inside a frame".to_owned());
                }
                streams.remove(i);
                continue;
            }
            Ok(n) => n,
            Err(_) => {
                // Reset: a GOP cut for lateness; what was lost shows as skips at the next
                // keyframe. A lost session shows at `accept_uni`.
                streams.remove(i);
                continue;
            }
        };
        let now = now_us();
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let pending = &mut streams[i].pending;
        pending.extend_from_slice(&buf[..n]);
        if let Err(e) = drain_frames(pending, |kind, payload| {
            if kind == MediaKind::Video {
                on_video(out, shared, &mut latencies, payload, now);
            }
        }) {
            break Err(e);
        }
    };
    session.close(0, b"bench done");
    shared.merge_latencies(&mut latencies);
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

/// The next read on any of `streams`, the oldest first: its index and what
/// `poll_read` gave (`Ok(0)` at the stream's end). Pending while there are none.
fn read_any<'a>(
    streams: &'a mut [WtStream],
    buf: &'a mut [u8],
) -> impl std::future::Future<Output = (usize, std::io::Result<usize>)> + 'a {
    std::future::poll_fn(move |cx| {
        for (i, s) in streams.iter_mut().enumerate() {
            let mut rb = ReadBuf::new(&mut *buf);
            match Pin::new(&mut s.recv).poll_read(cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) => return std::task::Poll::Ready((i, Ok(rb.filled().len()))),
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready((i, Err(e))),
                std::task::Poll::Pending => {}
            }
        }
        std::task::Poll::Pending
    })
}

/// Takes every whole `[u8 kind][u32 ts][u64 ingest ms][u32 len][payload]` frame off the
/// front of `pending`, handing each kind and payload to `each`; a partial frame stays.
fn drain_frames(pending: &mut BytesMut, mut each: impl FnMut(MediaKind, &[u8])) -> Result<(), String> {
    const HEADER: usize = 17;
    while let Some(h) = pending.get(..HEADER) {
        let kind = MediaKind::from_type_id(h[0]).ok_or_else(|| format!("unknown frame kind {}", h[0]))?;
        let len = u32::from_be_bytes([h[13], h[14], h[15], h[16]]) as usize;
        if len > WT_MAX_FRAME {
            return Err(format!("a {len}-byte frame"));
        }
        let Some(payload) = pending.get(HEADER..HEADER + len) else { break };
        each(kind, payload);
        pending.advance(HEADER + len);
    }
    Ok(())
}

/// The certificate hashes the relay at `addr` lists at `/webtransport.json` (one plain
/// HTTP/1.1 request on its TCP port).
async fn webtransport_hashes(addr: SocketAddr, host: &str) -> anyhow::Result<Vec<[u8; 32]>> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!("GET /webtransport.json HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(body) = http_body(&answer)? {
                return Ok(body.to_vec());
            }
            anyhow::ensure!(answer.len() < 64 * 1024, "answer too long");
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed before the whole answer");
            answer.extend_from_slice(&chunk[..n]);
        }
    };
    let body =
        tokio::time::timeout(CONNECT_TIMEOUT, fetch).await.map_err(|_| anyhow::anyhow!("timed out"))??;
    parse_hashes(&body)
}

/// The body of a whole `200` answer with a `Content-Length`, `None` while more is due.
fn http_body(answer: &[u8]) -> anyhow::Result<Option<&[u8]>> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&answer[..end])?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    anyhow::ensure!(status.split(' ').nth(1) == Some("200"), "answered `{status}`");
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .ok_or_else(|| anyhow::anyhow!("no Content-Length"))??;
    let body = &answer[end + 4..];
    Ok((body.len() >= len).then(|| &body[..len]))
}

/// `certificate_hashes` of `/webtransport.json`: base64 SHA-256 digests.
fn parse_hashes(body: &[u8]) -> anyhow::Result<Vec<[u8; 32]>> {
    use base64::Engine;
    let json: serde_json::Value = serde_json::from_slice(body)?;
    let list = json
        .get("certificate_hashes")
        .and_then(|v| v.as_array())
        .ok_or_else(|| anyhow::anyhow!("no certificate_hashes list"))?;
    list.iter()
        .map(|v| {
            let text = v.as_str().ok_or_else(|| anyhow::anyhow!("a hash that is not a string"))?;
            let raw = base64::engine::general_purpose::STANDARD.decode(text)?;
            <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| anyhow::anyhow!("a hash of {} bytes", raw.len()))
        })
        .collect()
}

/// Accounts a video frame a player received: its sequence (skips) and, inside the
/// measurement window, its relay latency (batched into the shared histogram).
fn on_video(out: &mut PlayerOutcome, shared: &Shared, latencies: &mut Vec<u32>, payload: &[u8], now: u64) {
    let seen = out.tracker.on_video(payload, now);
    if seen.skipped > 0 {
        shared.skips.fetch_add(seen.skipped, Ordering::Relaxed);
    }
    if let (Some(l), true) = (seen.latency_us, shared.measuring.load(Ordering::Relaxed)) {
        latencies.push(l);
        if latencies.len() == LATENCY_BATCH {
            shared.merge_latencies(latencies);
        }
    }
}

async fn write_all(io: &mut Box<dyn Io>, bytes: &[u8]) -> Result<(), String> {
    io.write_all(bytes).await.map_err(|e| e.to_string())?;
    io.flush().await.map_err(|e| e.to_string())
}

/// An idle session: handshake and `connect`, then nothing until the bench stops.
pub(super) async fn idle(
    url: Arc<StreamUrl>,
    dialer: Arc<Dialer>,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    let result = async {
        let (mut io, _lease) = tokio::time::timeout(CONNECT_TIMEOUT, dialer.open())
            .await
            .map_err(|_| "timed out connecting".to_owned())??;
        tokio::time::timeout(CONNECT_TIMEOUT, connect_only(&mut io, &url))
            .await
            .map_err(|_| "timed out waiting for the connect result".to_owned())??;
        shared.connected.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => return Ok(()),
                r = io.read(&mut buf) => match r {
                    Ok(0) => return Err("server closed the connection".to_owned()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                },
            }
        }
    }
    .await;
    if result.is_err() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// RTMP handshake and `connect`, waiting for its `_result`.
async fn connect_only(io: &mut Box<dyn Io>, url: &StreamUrl) -> Result<(), String> {
    let (mut hs, c0c1) = Handshake::client().map_err(|e| e.to_string())?;
    write_all(io, &c0c1).await?;
    let mut buf = vec![0u8; 8192];
    let mut out = BytesMut::new();
    let mut inbuf = BytesMut::new();
    loop {
        let n = io.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("server closed during the handshake".to_owned());
        }
        let rest = hs.process(&buf[..n], &mut out).map_err(|e| e.to_string())?;
        if let Some(rest) = rest {
            inbuf.extend_from_slice(&rest);
            break;
        }
        if !out.is_empty() {
            write_all(io, &out.split()).await?;
        }
    }
    let obj = amf0::object([
        ("app", Amf0Value::String(url.app.clone())),
        ("type", Amf0Value::String("nonprivate".into())),
        ("flashVer", Amf0Value::String("FMLE/3.0 (compatible; qrelay bench)".into())),
        ("tcUrl", Amf0Value::String(url.tc_url())),
    ]);
    let connect = Command { name: "connect".into(), transaction: 1.0, object: obj, args: vec![] };
    let msg = RtmpMessage::Command(connect).to_message(0, 0);
    chunk::encode_message(&msg, chunk::DEFAULT_CHUNK_SIZE, &mut out);
    write_all(io, &out.split()).await?;

    let mut decoder = ChunkDecoder::new(SessionConfig::default().limits);
    loop {
        while let Some(m) = decoder.decode(&mut inbuf).map_err(|e| e.to_string())? {
            match RtmpMessage::parse(&m).map_err(|e| e.to_string())? {
                RtmpMessage::SetChunkSize(n) => decoder.set_chunk_size(n).map_err(|e| e.to_string())?,
                RtmpMessage::Command(c) if c.name == "_result" && c.transaction == 1.0 => return Ok(()),
                RtmpMessage::Command(c) if c.name == "_error" => {
                    return Err(format!("connect refused: {:?}", c.args));
                }
                _ => {}
            }
        }
        let n = io.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("server closed before answering connect".to_owned());
        }
        inbuf.extend_from_slice(&buf[..n]);
    }
}

/// What a publisher sends.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// Synthetic AVC (and optionally AAC) frames with latency markers.
    Synthetic { plan: VideoPlan, audio: bool },
    /// The tags of an FLV file, looped at real-time pace.
    Flv(Arc<Vec<FlvTag>>),
}

/// Publishes `source` on `url` until the bench stops.
pub(super) async fn publisher(
    url: StreamUrl,
    opts: ClientOptions,
    source: Source,
    shared: Arc<Shared>,
) -> Result<(), ClientError> {
    let mut client = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
    let start = Instant::now();
    let mut live = false;
    let mut mark_live = |shared: &Shared| {
        if !live {
            live = true;
            shared.publishers_live.fetch_add(1, Ordering::Relaxed);
        }
    };
    match source {
        Source::Synthetic { plan, audio } => {
            client.send_media(MediaKind::Video, 0, synth::video_sequence_header()).await?;
            if audio {
                client.send_media(MediaKind::Audio, 0, synth::audio_sequence_header()).await?;
            }
            for (due, next) in synth::Schedule::new(plan, audio) {
                if !wait_until(&mut client, start + due, &shared.stop).await? {
                    break;
                }
                match next {
                    synth::Next::Video(n) => {
                        let payload = plan.frame(n, now_us());
                        client.send_media(MediaKind::Video, plan.timestamp_ms(n), payload).await?;
                        mark_live(&shared);
                    }
                    synth::Next::Audio(n) => {
                        let ts = synth::audio_timestamp_ms(n);
                        client.send_media(MediaKind::Audio, ts, synth::audio_frame()).await?;
                    }
                }
                shared.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Source::Flv(tags) => {
            let (first, last) = match (tags.first(), tags.last()) {
                (Some(f), Some(l)) => (f.timestamp, l.timestamp),
                _ => return Ok(()),
            };
            // Each loop continues the timeline one frame (~33 ms) after the last tag.
            let span = last.wrapping_sub(first).wrapping_add(33);
            let mut offset: u32 = 0;
            'outer: loop {
                for tag in tags.iter() {
                    let ts = tag.timestamp.wrapping_sub(first).wrapping_add(offset);
                    if !wait_until(&mut client, start + Duration::from_millis(u64::from(ts)), &shared.stop)
                        .await?
                    {
                        break 'outer;
                    }
                    client.send_media(tag.kind, ts, tag.payload.clone()).await?;
                    // Audio-only files count too: any tag means the stream is up.
                    mark_live(&shared);
                    shared.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                offset = offset.wrapping_add(span);
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.finish()).await;
    Ok(())
}

/// Waits until `at`, answering the server meanwhile; `false` when the bench stopped.
async fn wait_until(
    client: &mut RtmpClient,
    at: Instant,
    stop: &CancellationToken,
) -> Result<bool, ClientError> {
    loop {
        client.flush().await?;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep_until(at) => return Ok(true),
            open = client.read_input() => {
                if !open? {
                    return Err(ClientError::Closed);
                }
            }
        }
    }
}

/// Options for publisher connections.
pub(super) fn client_options(trust: qrelay_proto::transport::tls::Trust) -> ClientOptions {
    ClientOptions { trust, connect_timeout: CONNECT_TIMEOUT, ..ClientOptions::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_come_off_whole_and_a_partial_one_waits() {
        let mut wire = frame(9, b"video");
        wire.extend(frame(8, b""));
        wire.extend(frame(18, b"meta"));
        let mut seen = Vec::new();
        let mut pending = BytesMut::new();
        // Byte by byte: every split of a header or payload.
        for b in &wire {
            pending.extend_from_slice(&[*b]);
            drain_frames(&mut pending, |k, p| seen.push((k, p.to_vec()))).unwrap();
        }
        assert!(pending.is_empty());
        let want = [
            (MediaKind::Video, b"video".to_vec()),
            (MediaKind::Audio, vec![]),
            (MediaKind::Data, b"meta".to_vec()),
        ];
        assert_eq!(seen, want);
        let mut bad = BytesMut::from(&frame(20, b"x")[..]);
        assert!(drain_frames(&mut bad, |_, _| {}).is_err());
        let mut huge = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(drain_frames(&mut huge, |_, _| {}).is_err(), "no 4 GiB wait");
    }

    #[test]
    fn the_certificate_hashes_of_webtransport_json() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 80\r\n\r\n{\"port\":1,\"certificate_hashes\":[\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]}";
        let body = http_body(answer).unwrap().unwrap();
        assert_eq!(parse_hashes(body).unwrap(), vec![[0u8; 32]]);
        assert!(http_body(&answer[..answer.len() - 1]).unwrap().is_none(), "the body is not all in");
        assert!(http_body(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_err());
        assert_eq!(parse_hashes(br#"{"certificate_hashes":[]}"#).unwrap(), Vec::<[u8; 32]>::new());
        assert!(parse_hashes(br#"{"certificate_hashes":["AAAA"]}"#).is_err(), "3 bytes");
        assert!(parse_hashes(b"{").is_err());
    }

    #[test]
    fn session_urls() {
        let addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let url = StreamUrl::parse("rtmp://example.com:1935/live/b?token=x").unwrap();
        assert_eq!(webtransport_url(&url, addr).unwrap().as_str(), "https://example.com:4433/live/b?token=x");
        let url = StreamUrl::parse("rtmp://[::1]:1935/live/b").unwrap();
        assert_eq!(webtransport_url(&url, addr).unwrap().as_str(), "https://[::1]:4433/live/b");
    }
}
