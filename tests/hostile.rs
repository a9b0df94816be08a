//! Hostile peers against an in-process relay on 127.0.0.1 (issue "Hardening").
//!
//! Every case runs beside a real publisher → player pair on `live/pair` (see
//! [`support_hostile::Pair`]); each test asserts that:
//! - the offending connections are closed by the server (a read returns 0 or an error)
//!   within the stated time, and the relay counted exactly the expected closes or
//!   refusals under the expected [`Reason`] (its log is shown when a case fails);
//! - the pair's player received every frame, in order, and never waited more than
//!   [`MAX_GAP`] between two (the publisher sends one every 20 ms): nothing else slowed;
//! - the process's RSS (the relay runs in this process) grew by less than the case's
//!   stated bound while the case ran;
//! - nothing panicked (a panic hook counts panics, including in the relay's tasks).
//!
//! The cases run one at a time (a process-wide lock): RSS, the panic count and the
//! captured log are per process, and timing assertions should not compete with each
//! other for the two cores. Set `HOSTILE_LOG=qrelay=debug` (an `EnvFilter`) to change
//! what the relay logs, and `HOSTILE_ECHO=1` to copy the log to stderr.

mod support_hostile;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::{BufMut, Bytes, BytesMut};
use qrelay::client::{ClientError, ClientOptions, RtmpClient};
use qrelay::config::Config;
use qrelay::reason::{Counters, Reason};
use qrelay::rtmp::amf0::{self, Amf0Value};
use qrelay::rtmp::chunk::{self, ChunkDecoder, DecoderLimits, Message};
use qrelay::rtmp::message::{Command, RtmpMessage};
use qrelay::rtmp::session::{ClientEvent, ClientMode, SessionError};
use qrelay::server::Shutdown;
use qrelay::transport::quic;
use qrelay::transport::tls::{Trust, ALPN_RTMP};
use qrelay::url::StreamUrl;
use support_hostile::*;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// The handshake timeout most cases configure (the default is 10 s).
const HANDSHAKE_MS: u64 = 1500;
/// How late after its deadline the server may close a connection (scheduling on two
/// busy cores), and how early (the server starts its clock after our connect returns,
/// so "early" only covers timer granularity).
const CLOSE_MARGIN: Duration = Duration::from_millis(1000);
const CLOSE_EARLY: Duration = Duration::from_millis(100);
/// A connection refused for a protocol error must be closed well before any timeout.
const PROMPT: Duration = Duration::from_millis(1000);
/// Longest the pair's player may wait between two frames sent 20 ms apart.
const MAX_GAP: Duration = Duration::from_millis(500);
/// RSS growth allowed for cases that hold no more than a few buffers per connection.
const RSS_BOUND_MIB: u64 = 64;
/// Bound on a case's body, and on the whole test.
const CASE_LIMIT: Duration = Duration::from_secs(20);
const TEST_LIMIT: Duration = Duration::from_secs(40);
/// The pair runs at least this long, so that it overlaps the case even when it is quick.
const MIN_PAIR_RUN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Process-wide harness: one case at a time, panic counting, log capture
// ---------------------------------------------------------------------------------------

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static PANICS: AtomicUsize = AtomicUsize::new(0);
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes tracing output into [`LOGS`] (shown when a case fails; to stderr as well with
/// `HOSTILE_ECHO=1`).
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        if std::env::var_os("HOSTILE_ECHO").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_hooks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        let filter = tracing_subscriber::EnvFilter::try_from_env("HOSTILE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("qrelay=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn clear_logs() {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Waits (briefly: the server counts right after it closes the socket) until the relay
/// counted `reason` `n` times, and checks it counted no more: each offender is closed for
/// the reason the case provokes, once.
async fn expect_counted(counters: &Counters, reason: Reason, n: usize) -> Result {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let found = counters.get(reason) as usize;
        if found >= n {
            ensure!(found == n, "the relay counted {reason} {found} times, expected {n}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the relay counted {reason} {found} times, expected {n}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The relay and the case runner
// ---------------------------------------------------------------------------------------

/// An in-process relay; stopped on drop.
struct Relay {
    env: Env,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.immediate.cancel();
        self.shutdown.graceful.cancel();
        self.task.abort();
    }
}

/// What a case needs to know about the relay.
#[derive(Debug, Clone)]
struct Env {
    addr: SocketAddr,
    /// The relay's closes and refusals by reason.
    counters: std::sync::Arc<Counters>,
    ca: PathBuf,
    config: Config,
}

impl Env {
    fn url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://{}/live/{key}", self.addr)
    }

    fn opts(&self) -> ClientOptions {
        ClientOptions { trust: Trust::CaFile(self.ca.clone()), ..ClientOptions::default() }
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }
}

async fn start_relay(tweak: impl FnOnce(&mut Config)) -> Result<Relay> {
    let dir = tempfile::Builder::new().prefix("qrelay-hostile-").tempdir()?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        cert_dir: dir.path().join("certs"),
        handshake_timeout_ms: HANDSHAKE_MS,
        ..Default::default()
    };
    tweak(&mut config);
    let server = qrelay::Server::bind(config.clone()).await?;
    let addr = server.local_addr();
    let ca = server.dev_ca().cloned().context("no development CA")?;
    let counters = server.counters();
    let shutdown = Shutdown::default();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Ok(Relay { env: Env { addr, counters, ca, config }, shutdown, task, _dir: dir })
}

/// How the pair's player connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlayerOver {
    Tcp,
    Quic,
}

/// Samples this process's RSS every 10 ms until stopped: (baseline, peak) in KiB.
struct RssSampler {
    stop: CancellationToken,
    task: JoinHandle<Result<(u64, u64)>>,
}

impl RssSampler {
    fn start() -> Result<Self> {
        let base = rss_kib("self")?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = base;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => peak = peak.max(rss_kib("self")?),
                }
            }
            Ok((base, peak.max(rss_kib("self")?)))
        });
        Ok(Self { stop, task })
    }

    async fn finish(self) -> Result<(u64, u64)> {
        self.stop.cancel();
        self.task.await?
    }
}

/// Runs one hostile case: relay (configured by `tweak`), pair, RSS sampling, then the
/// checks listed in the module docs.
async fn run_case<F, Fut>(
    name: &str,
    tweak: impl FnOnce(&mut Config),
    player: PlayerOver,
    rss_bound_mib: u64,
    case: F,
) -> Result
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result>,
{
    let _serial = SERIAL.lock().await;
    install_hooks();
    timeout(TEST_LIMIT, async {
        clear_logs();
        let panics = PANICS.load(Ordering::SeqCst);
        let relay = start_relay(tweak).await?;
        let env = relay.env.clone();
        let play_scheme = match player {
            PlayerOver::Tcp => "rtmp",
            PlayerOver::Quic => "rtmp+quic",
        };
        let pair = Pair::start(&env.url("rtmp", "pair"), &env.url(play_scheme, "pair"), &env.opts()).await?;
        let rss = RssSampler::start()?;
        let started = Instant::now();
        let outcome = timeout(CASE_LIMIT, case(env.clone())).await;
        let case_time = started.elapsed();
        tokio::time::sleep_until(started + MIN_PAIR_RUN).await;
        let report = pair.finish().await;
        let (base, peak) = rss.finish().await?;
        outcome
            .map_err(|_| anyhow!("{name}: the case did not finish within {CASE_LIMIT:?}"))?
            .with_context(|| format!("{name}; the relay's log:\n{}", logs()))?;
        let report = report.with_context(|| format!("{name}: the pair"))?;
        let growth = peak.saturating_sub(base);
        println!(
            "{name}: case {case_time:.2?}; pair {} frames sent, {} received, max gap {:.1?} \
             ({player:?} player); RSS {:.1} MiB -> peak {:.1} MiB (+{:.1} MiB, bound {rss_bound_mib} MiB)",
            report.frames_sent,
            report.frames_received,
            report.max_gap,
            mib(base),
            mib(peak),
            mib(growth),
        );
        ensure!(
            report.max_gap < MAX_GAP,
            "{name}: the pair's player waited {:?} for a frame",
            report.max_gap
        );
        ensure!(
            growth < rss_bound_mib * 1024,
            "{name}: RSS grew by {:.1} MiB, over the bound of {rss_bound_mib} MiB",
            mib(growth)
        );
        let panicked = PANICS.load(Ordering::SeqCst) - panics;
        ensure!(panicked == 0, "{name}: {panicked} panics");
        drop(relay);
        Ok(())
    })
    .await
    .map_err(|_| anyhow!("{name}: the test did not finish within {TEST_LIMIT:?}"))?
}

// ---------------------------------------------------------------------------------------
// Raw RTMP peers
// ---------------------------------------------------------------------------------------

/// C0 (version 3) and C1 (1536 zero bytes: time 0, zero field, zero "random" bytes).
fn c0c1() -> Vec<u8> {
    let mut v = vec![3u8];
    v.resize(1 + 1536, 0);
    v
}

/// A chunk-layer message with a type 0 header at `chunk_size`.
fn encode(csid: u32, type_id: u8, stream_id: u32, payload: impl Into<Bytes>, chunk_size: u32) -> Bytes {
    let msg = Message { csid, timestamp: 0, type_id, stream_id, payload: payload.into() };
    chunk::encode_to_bytes(&msg, chunk_size)
}

/// An AMF0 command message (type 20 on chunk stream 3) from its values.
fn command_payload(values: &[Amf0Value]) -> Bytes {
    let mut b = BytesMut::new();
    amf0::encode_all(values, &mut b);
    b.freeze()
}

fn connect_values() -> Vec<Amf0Value> {
    vec![
        Amf0Value::String("connect".into()),
        Amf0Value::Number(1.0),
        amf0::object([
            ("app", Amf0Value::String("live".into())),
            ("tcUrl", Amf0Value::String("rtmp://127.0.0.1/live".into())),
        ]),
    ]
}

/// A raw TCP peer speaking as much RTMP as a case needs.
struct RawPeer {
    stream: TcpStream,
    /// When the TCP connection was established.
    opened: Instant,
    decoder: ChunkDecoder,
    inbuf: BytesMut,
    /// Chunk size we send with.
    chunk_size: u32,
}

impl RawPeer {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::from_stream(stream))
    }

    fn from_stream(stream: TcpStream) -> Self {
        let limits = DecoderLimits { min_chunk_size: 1, ..DecoderLimits::default() };
        Self {
            stream,
            opened: Instant::now(),
            decoder: ChunkDecoder::new(limits),
            inbuf: BytesMut::new(),
            chunk_size: chunk::DEFAULT_CHUNK_SIZE,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// A plain handshake: C0+C1, read S0+S1+S2, C2 = S1.
    async fn handshake(&mut self) -> Result {
        self.send(&c0c1()).await?;
        let mut s = vec![0u8; 1 + 1536 + 1536];
        timeout(Duration::from_secs(5), self.stream.read_exact(&mut s)).await.context("S0S1S2")??;
        ensure!(s[0] == 3, "S0 is {}", s[0]);
        self.send(&s[1..1537]).await?;
        Ok(())
    }

    /// Sends a typed message on its usual chunk stream at our chunk size (and switches
    /// our chunk size after a SetChunkSize).
    async fn send_msg(&mut self, msg: &RtmpMessage, stream_id: u32) -> std::io::Result<()> {
        let bytes = chunk::encode_to_bytes(&msg.to_message(stream_id, 0), self.chunk_size);
        self.send(&bytes).await?;
        if let RtmpMessage::SetChunkSize(n) = msg {
            self.chunk_size = *n & 0x7FFF_FFFF;
        }
        Ok(())
    }

    /// Sends an AMF0 command built from raw bytes.
    async fn send_command_payload(&mut self, payload: Bytes, stream_id: u32) -> std::io::Result<()> {
        let bytes = encode(3, 20, stream_id, payload, self.chunk_size);
        self.send(&bytes).await
    }

    async fn send_command(&mut self, values: &[Amf0Value], stream_id: u32) -> std::io::Result<()> {
        self.send_command_payload(command_payload(values), stream_id).await
    }

    /// The next message from the server; `None` when it closed.
    async fn next_message(&mut self) -> Result<Option<RtmpMessage>> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.inbuf)? {
                let parsed = RtmpMessage::parse(&msg)?;
                if let RtmpMessage::SetChunkSize(n) = parsed {
                    self.decoder.set_chunk_size(n)?;
                }
                return Ok(Some(parsed));
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads until a command named `name` arrives.
    async fn expect_command(&mut self, name: &str) -> Result<Command> {
        timeout(Duration::from_secs(5), async {
            loop {
                match self.next_message().await? {
                    Some(RtmpMessage::Command(c)) if c.name == name => return Ok(c),
                    Some(_) => {}
                    None => bail!("closed while waiting for {name}"),
                }
            }
        })
        .await
        .with_context(|| format!("waiting for {name}"))?
    }

    /// Handshake, then `connect` to app `live`, answered with `_result`.
    async fn connected(addr: SocketAddr) -> Result<Self> {
        let mut peer = Self::connect(addr).await?;
        peer.handshake().await?;
        peer.send_command(&connect_values(), 0).await?;
        peer.expect_command("_result").await?;
        Ok(peer)
    }

    /// Waits until the server closes the connection (a read returns 0 or fails),
    /// discarding what it sends; returns the time since the connection was opened.
    async fn closed_within(&mut self, limit: Duration) -> Result<Duration> {
        closed_within(&mut self.stream, self.opened, limit).await
    }
}

/// Reads from `stream` until the server closes it; the time since `opened`, or an error
/// when it is still open after `limit` (counted from now).
async fn closed_within(stream: &mut TcpStream, opened: Instant, limit: Duration) -> Result<Duration> {
    let mut buf = [0u8; 16 * 1024];
    timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("still open {:?} after it was opened", opened.elapsed()))
}

/// Asserts a connection was closed for its handshake timeout: not before it, and not
/// later than [`CLOSE_MARGIN`] after.
fn assert_closed_at_timeout(what: &str, closed: Duration, env: &Env) -> Result {
    let t = env.handshake_timeout();
    ensure!(
        closed + CLOSE_EARLY >= t && closed <= t + CLOSE_MARGIN,
        "{what}: closed after {closed:?}, expected at the handshake timeout of {t:?}"
    );
    Ok(())
}

/// Sends `bytes` (ignoring a failure: the server may already have closed) and asserts
/// the server closes the connection promptly.
async fn expect_refused(what: &str, mut peer: RawPeer, bytes: &[u8]) -> Result<Duration> {
    let _ = peer.send(bytes).await;
    peer.closed_within(PROMPT).await.with_context(|| format!("{what}: not closed"))
}

/// Runs `cases` concurrently, each a named future; fails with the first failure.
async fn all<Fut>(cases: Vec<(&'static str, Fut)>) -> Result
where
    Fut: Future<Output = Result<Duration>> + Send + 'static,
{
    let tasks: Vec<_> = cases.into_iter().map(|(name, f)| (name, tokio::spawn(f))).collect();
    for (name, task) in tasks {
        let closed = task.await?.with_context(|| name.to_owned())?;
        println!("  {name}: closed after {closed:.2?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_version_handshakes_are_closed() -> Result {
    run_case(
        "garbage handshake",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            let mut rng = Rng::new(1);
            let mut garbage = rng.bytes(1 + 1536);
            garbage[0] = 0x47;
            let mut wrong_version = c0c1();
            wrong_version[0] = 6;
            let mut fake_tls = rng.bytes(1 + 1536);
            fake_tls[0] = 0x16;
            let mut big_garbage = rng.bytes(256 * 1024);
            big_garbage[0] = 0xFF;
            all(vec![
                ("1537 random bytes", Box::pin(refuse_raw(addr, garbage)) as PinFut),
                ("version byte 6", Box::pin(refuse_raw(addr, wrong_version))),
                ("TLS record header then garbage", Box::pin(refuse_raw(addr, fake_tls))),
                ("256 KiB of garbage", Box::pin(refuse_raw(addr, big_garbage))),
            ])
            .await?;
            // An HTTP request, shorter than C0+C1: refused on its first byte all the same.
            let mut http = RawPeer::connect(addr).await?;
            http.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
            let closed = http.closed_within(PROMPT).await.context("HTTP request: not closed")?;
            println!("  HTTP request: closed after {closed:.2?}");
            expect_counted(&env.counters, Reason::BadHandshake, 4).await?;
            expect_counted(&env.counters, Reason::TlsFailed, 1).await?;
            Ok(())
        },
    )
    .await
}

type PinFut = std::pin::Pin<Box<dyn Future<Output = Result<Duration>> + Send>>;

async fn refuse_raw(addr: SocketAddr, bytes: Vec<u8>) -> Result<Duration> {
    let peer = RawPeer::connect(addr).await?;
    expect_refused("garbage", peer, &bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_at_the_timeout() -> Result {
    run_case(
        "stalled handshakes",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let limit = env.handshake_timeout() + CLOSE_MARGIN;
            let silent = RawPeer::connect(env.addr).await?;
            let mut half_c1 = RawPeer::connect(env.addr).await?;
            half_c1.send(&c0c1()[..1 + 700]).await?;
            let mut no_c2 = RawPeer::connect(env.addr).await?;
            no_c2.send(&c0c1()).await?;
            let mut no_connect = RawPeer::connect(env.addr).await?;
            no_connect.handshake().await?;
            let mut peers = vec![
                ("silent", silent),
                ("half of C1", half_c1),
                ("no C2", no_c2),
                ("handshake but no connect", no_connect),
            ];
            for (what, peer) in &mut peers {
                let closed = peer.closed_within(limit).await.with_context(|| what.to_string())?;
                println!("  {what}: closed after {closed:.2?}");
                assert_closed_at_timeout(what, closed, &env)?;
            }
            expect_counted(&env.counters, Reason::HandshakeTimeout, 1).await?;
            expect_counted(&env.counters, Reason::PeerSilent, 3).await?;
            Ok(())
        },
    )
    .await
}

/// Sends `bytes` one byte a second from `start`; stops at the first write error.
async fn trickle(stream: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8], start: Instant) {
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    for b in bytes {
        tick.tick().await;
        if stream.write_all(&[*b]).await.is_err() {
            return;
        }
    }
}

/// A slowloris peer: `prefix` at once, then `rest` one byte a second from `first_byte_at`.
async fn slowloris(addr: SocketAddr, prefix: bool, first_byte_at: Duration) -> Result<Duration> {
    let mut peer = RawPeer::connect(addr).await?;
    let rest = if prefix {
        peer.handshake().await?;
        command_payload(&connect_values()).to_vec()
    } else {
        c0c1()
    };
    let opened = peer.opened;
    let (mut rd, mut wr) = peer.stream.into_split();
    let writer = tokio::spawn(async move { trickle(&mut wr, &rest, opened + first_byte_at).await });
    let mut buf = [0u8; 4096];
    let closed = timeout(Duration::from_millis(HANDSHAKE_MS) * 3, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("slowloris still connected"))?;
    writer.abort();
    Ok(closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "slowloris",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            // 50 peers sending C0+C1 a byte a second, and 10 that completed the handshake and
            // send their connect command a byte a second.
            let mut tasks = Vec::new();
            for i in 0..60 {
                tasks.push(tokio::spawn(slowloris(env.addr, i >= 50, Duration::ZERO)));
            }
            let mut worst = Duration::ZERO;
            for task in tasks {
                let closed = task.await??;
                assert_closed_at_timeout("slowloris", closed, &env)?;
                worst = worst.max(closed);
            }
            println!("  60 slowloris peers: the last was closed after {worst:.2?}");
            expect_counted(&env.counters, Reason::PeerSilent, 60).await?;
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_with_a_late_first_byte_is_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "late slowloris",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let late = env.handshake_timeout() - Duration::from_millis(100);
            let closed = slowloris(env.addr, false, late).await?;
            println!("  first byte after {late:?}: closed after {closed:.2?}");
            assert_closed_at_timeout("late slowloris", closed, &env)
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Chunk layer
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_size_one_is_refused() -> Result {
    run_case(
        "chunk size 1",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let mut peer = RawPeer::connected(env.addr).await?;
            peer.send_msg(&RtmpMessage::SetChunkSize(1), 0).await?;
            // Then a 256 KiB message in 1-byte chunks (2 bytes on the wire per payload byte),
            // which the server must never get to decode.
            let big = encode(6, 9, 1, vec![0x27u8; 256 * 1024], 1);
            let closed = expect_refused("chunk size 1", peer, &big).await?;
            println!("  closed after {closed:.2?}");
            expect_counted(&env.counters, Reason::ChunkSize, 1).await
        },
    )
    .await
}

async fn set_chunk_size_refused(addr: SocketAddr, raw: u32) -> Result<Duration> {
    let mut peer = RawPeer::connect(addr).await?;
    peer.handshake().await?;
    let mut payload = BytesMut::new();
    payload.put_u32(raw);
    let bytes = encode(2, 1, 0, payload.freeze(), chunk::DEFAULT_CHUNK_SIZE);
    // A message after it, as a peer that believed its chunk size would send.
    let mut then = bytes.to_vec();
    then.extend_from_slice(&encode(3, 20, 0, command_payload(&connect_values()), 4096));
    expect_refused("SetChunkSize", peer, &then).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_sizes_above_the_limits_are_refused() -> Result {
    run_case(
        "chunk size too large",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let max = env.config.max_chunk_size;
            all(vec![
                ("max_chunk_size + 1", Box::pin(set_chunk_size_refused(env.addr, max + 1)) as PinFut),
                ("protocol maximum 0x7fffffff", Box::pin(set_chunk_size_refused(env.addr, 0x7FFF_FFFF))),
                // The reserved top bit is masked (as ffmpeg does): 0xffffffff is 0x7fffffff and
                // 0x80000000 is 0.
                ("0xffffffff", Box::pin(set_chunk_size_refused(env.addr, 0xFFFF_FFFF))),
                ("0x80000000", Box::pin(set_chunk_size_refused(env.addr, 0x8000_0000))),
            ])
            .await?;
            expect_counted(&env.counters, Reason::ChunkSize, 4).await
        },
    )
    .await
}

/// Chunk streams the claims use (2 carries our SetChunkSize; the decoder keeps 64).
const CLAIM_STREAMS: std::ops::RangeInclusive<u32> = 3..=60;
/// Chunk size of the claims' data.
const CLAIM_CHUNK: u32 = 64 * 1024;
/// What a claimer sends at most: 2 MiB on each stream, 116 MiB in all.
const CLAIM_MAX_BYTES: usize = 2 * 1024 * 1024 * 58;

/// Claims 16 MiB messages on many chunk streams and backs the claims with data, round
/// robin, until the server closes the connection. Returns the payload bytes it got out.
async fn claim_16mib_messages(addr: SocketAddr) -> Result<usize> {
    let mut peer = RawPeer::connected(addr).await?;
    peer.send_msg(&RtmpMessage::SetChunkSize(CLAIM_CHUNK), 0).await?;
    let data = vec![0x27u8; CLAIM_CHUNK as usize];
    let mut sent = 0usize;
    let (mut rd, mut wr) = peer.stream.into_split();
    // Notice the close even while our writes block on a full socket.
    let closed = CancellationToken::new();
    let reader = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(1..) = rd.read(&mut buf).await {}
            closed.cancel();
        })
    };
    // Paced at 1 MiB per 20 ms (400 Mbit/s): the point is what the relay holds, and an
    // unpaced flood from this process only measures how two shared cores are scheduled.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut first = true;
    'outer: while sent < CLAIM_MAX_BYTES {
        for csid in CLAIM_STREAMS {
            if sent.is_multiple_of(1024 * 1024) {
                pace.tick().await;
            }
            let mut chunk = BytesMut::with_capacity(16 + data.len());
            if first {
                // Type 0: timestamp 0, length 0xffffff, video, message stream 1.
                chunk.put_u8(csid as u8);
                chunk.put_slice(&[0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0]);
            } else {
                chunk.put_u8(0xC0 | csid as u8);
            }
            chunk.put_slice(&data);
            tokio::select! {
                w = wr.write_all(&chunk) => if w.is_err() { break 'outer },
                _ = closed.cancelled() => break 'outer,
            }
            sent += data.len();
        }
        first = false;
    }
    timeout(Duration::from_secs(5), reader)
        .await
        .with_context(|| format!("not closed after {} MiB of claims", sent >> 20))??;
    Ok(sent)
}

/// Runs `n` claimers on a thread of their own (a current-thread runtime), as peers in
/// another process would run, so the flood does not occupy the relay's two workers.
async fn claimers_on_own_thread(addr: SocketAddr, n: usize) -> Result<Vec<usize>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(claim_16mib_messages(addr))).collect();
                let mut sent = Vec::new();
                for t in tasks {
                    sent.push(t.await??);
                }
                Ok(sent)
            })
        });
        let _ = tx.send(result.map_err(anyhow::Error::from).and_then(|r| r));
    });
    rx.await.context("the claimers' thread died")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_length_claims_are_bounded_per_connection() -> Result {
    const CLAIMERS: usize = 4;
    // Messages up to the 24-bit maximum are allowed, so the claims pass the length check
    // and only max_pending_bytes (16 MiB, the default) bounds what a connection holds.
    // Four connections at 16 MiB each (measured: about +62 MiB in all), plus buffer growth
    // copies, socket and read buffers, and allocator slack: the bound is 200 MiB. Without the pending bound the four would
    // make the relay hold 4 x 116 MiB.
    let tweak = |c: &mut Config| c.max_message_size = 16 * 1024 * 1024;
    run_case("16 MiB claims", tweak, PlayerOver::Tcp, 200, |env| async move {
        for sent in claimers_on_own_thread(env.addr, CLAIMERS).await? {
            println!("  claimer closed after sending {:.1} MiB", sent as f64 / 1048576.0);
            ensure!(sent < CLAIM_MAX_BYTES, "a claimer sent everything without being closed");
        }
        expect_counted(&env.counters, Reason::TooMuchPending, CLAIMERS).await
    })
    .await
}

async fn refused_after_handshake(addr: SocketAddr, bytes: Vec<u8>) -> Result<Duration> {
    let mut peer = RawPeer::connect(addr).await?;
    peer.handshake().await?;
    expect_refused("chunks", peer, &bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_stream_abuse_is_refused() -> Result {
    run_case(
        "chunk stream abuse",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            // A 16 MiB claim over the default 8 MiB max_message_size, refused at the header.
            let claim = vec![0x06, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0];
            // Small complete messages of an unknown type on 70 chunk streams.
            let mut many = Vec::new();
            for csid in 3..73 {
                many.extend_from_slice(&encode(csid, 0x42, 0, vec![1u8], 128));
            }
            // A continuation (type 3) on a chunk stream that never had a header.
            let orphan = vec![0xC0 | 7, 1, 2, 3];
            // A new message (type 0) on a chunk stream whose message is half received (cut after
            // its first chunk: a 12-byte header and 128 bytes).
            let mut interrupted = encode(6, 9, 1, vec![0x27u8; 1000], 128)[..12 + 128].to_vec();
            interrupted.extend_from_slice(&encode(6, 9, 1, vec![0x27u8; 10], 128));
            // A SetChunkSize too short to hold its value.
            let short = encode(2, 1, 0, vec![0u8, 1], 128).to_vec();
            all(vec![
                ("16 MiB claim", Box::pin(refused_after_handshake(addr, claim)) as PinFut),
                ("70 chunk streams", Box::pin(refused_after_handshake(addr, many))),
                ("orphan continuation", Box::pin(refused_after_handshake(addr, orphan))),
                ("interrupted message", Box::pin(refused_after_handshake(addr, interrupted))),
                ("short SetChunkSize", Box::pin(refused_after_handshake(addr, short))),
            ])
            .await?;
            expect_counted(&env.counters, Reason::MessageTooLarge, 1).await?;
            expect_counted(&env.counters, Reason::TooManyChunkStreams, 1).await?;
            // An orphan continuation and an interrupted message.
            expect_counted(&env.counters, Reason::ChunkOrder, 2).await?;
            expect_counted(&env.counters, Reason::BadMessage, 1).await
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// AMF0 and commands
// ---------------------------------------------------------------------------------------

/// `connect`, 1, then `tail` (raw AMF0) as the command object.
fn connect_with(tail: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    amf0::encode(&Amf0Value::String("connect".into()), &mut b);
    amf0::encode(&Amf0Value::Number(1.0), &mut b);
    b.put_slice(tail);
    b.freeze()
}

async fn command_refused(addr: SocketAddr, payload: Bytes) -> Result<Duration> {
    let mut peer = RawPeer::connect(addr).await?;
    peer.handshake().await?;
    let bytes = encode(3, 20, 0, payload, chunk::DEFAULT_CHUNK_SIZE);
    expect_refused("command", peer, &bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_amf0_commands_are_refused() -> Result {
    run_case(
        "malformed AMF0",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            // 10,000 nested objects: { a: { a: { ... (40 KB, under the command size cap,
            // so the depth limit is what refuses it).
            let mut deep = BytesMut::new();
            for _ in 0..10_000 {
                deep.put_slice(&[0x03, 0, 1, b'a']);
            }
            // 10,000 nested strict arrays of one element (50 KB).
            let mut deep_arrays = BytesMut::new();
            for _ in 0..10_000 {
                deep_arrays.put_slice(&[0x0A, 0, 0, 0, 1]);
            }
            // 100,000 nested objects (400 KB): over the command size cap, refused unread.
            let mut huge_deep = BytesMut::new();
            for _ in 0..100_000 {
                huge_deep.put_slice(&[0x03, 0, 1, b'a']);
            }
            // { app: "<claims 65535 bytes, has 4>" }
            let huge_string = [0x03, 0, 3, b'a', b'p', b'p', 0x02, 0xFF, 0xFF, b'l', b'i', b'v', b'e'];
            // A long string claiming 4 GiB.
            let huge_long_string = [0x0C, 0xFF, 0xFF, 0xFF, 0xFF, b'x'];
            // A strict array claiming 4 billion entries, holding 3.
            let mut huge_array = vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF];
            for _ in 0..3 {
                huge_array.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            // A number cut after 3 of its 8 bytes.
            let truncated_number = [0x00, 0x40, 0x09, 0x21];
            // { app: <invalid UTF-8> }
            let bad_utf8 = [0x03, 0, 3, b'a', b'p', b'p', 0x02, 0, 2, 0xFF, 0xFE];
            // AMF3 switch and reference markers, refused.
            let amf3 = [0x11, 0x01];
            let reference = [0x07, 0, 1];
            // A command whose name is a number.
            let mut nameless = BytesMut::new();
            amf0::encode(&Amf0Value::Number(1.0), &mut nameless);
            all(vec![
                ("10k nested objects", Box::pin(command_refused(addr, connect_with(&deep))) as PinFut),
                ("10k nested arrays", Box::pin(command_refused(addr, connect_with(&deep_arrays)))),
                ("400 KB command", Box::pin(command_refused(addr, connect_with(&huge_deep)))),
                ("string claiming 64 KiB", Box::pin(command_refused(addr, connect_with(&huge_string)))),
                (
                    "long string claiming 4 GiB",
                    Box::pin(command_refused(addr, connect_with(&huge_long_string))),
                ),
                ("array claiming 4G entries", Box::pin(command_refused(addr, connect_with(&huge_array)))),
                ("truncated number", Box::pin(command_refused(addr, connect_with(&truncated_number)))),
                ("invalid UTF-8", Box::pin(command_refused(addr, connect_with(&bad_utf8)))),
                ("AMF3 marker", Box::pin(command_refused(addr, connect_with(&amf3)))),
                ("reference marker", Box::pin(command_refused(addr, connect_with(&reference)))),
                ("command without a name", Box::pin(command_refused(addr, nameless.freeze()))),
            ])
            .await?;
            // Nesting (2), truncation (4), bad UTF-8 (1), unsupported markers (2).
            expect_counted(&env.counters, Reason::BadAmf0, 9).await?;
            expect_counted(&env.counters, Reason::CommandTooLarge, 1).await?;
            expect_counted(&env.counters, Reason::BadCommand, 1).await
        },
    )
    .await
}

/// A peer after the handshake (and `connect` when `connected`) sends `commands` and must
/// be closed for a protocol violation.
async fn sequence_refused(
    addr: SocketAddr,
    connected: bool,
    commands: Vec<(Vec<Amf0Value>, u32)>,
) -> Result<Duration> {
    let peer = if connected {
        RawPeer::connected(addr).await?
    } else {
        let mut p = RawPeer::connect(addr).await?;
        p.handshake().await?;
        p
    };
    let mut bytes = Vec::new();
    for (values, stream_id) in commands {
        bytes.extend_from_slice(&encode(3, 20, stream_id, command_payload(&values), peer.chunk_size));
    }
    expect_refused("commands", peer, &bytes).await
}

fn cmd(name: &str, txn: f64, args: &[Amf0Value]) -> Vec<Amf0Value> {
    let mut v = vec![Amf0Value::String(name.into()), Amf0Value::Number(txn), Amf0Value::Null];
    v.extend_from_slice(args);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_out_of_order_are_refused() -> Result {
    run_case(
        "commands out of order",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            let key = [Amf0Value::String("pair".into())];
            all(vec![
                (
                    "publish before connect",
                    Box::pin(sequence_refused(addr, false, vec![(cmd("publish", 5.0, &key), 1)])) as PinFut,
                ),
                (
                    "createStream before connect",
                    Box::pin(sequence_refused(addr, false, vec![(cmd("createStream", 2.0, &[]), 0)])),
                ),
                (
                    "play without createStream",
                    Box::pin(sequence_refused(addr, true, vec![(cmd("play", 5.0, &key), 1)])),
                ),
                (
                    "publish on stream 0",
                    Box::pin(sequence_refused(addr, true, vec![(cmd("publish", 5.0, &key), 0)])),
                ),
                ("second connect", Box::pin(sequence_refused(addr, true, vec![(connect_values(), 0)]))),
                (
                    "publish while playing",
                    Box::pin(sequence_refused(
                        addr,
                        true,
                        vec![
                            (cmd("createStream", 2.0, &[]), 0),
                            (cmd("play", 3.0, &key), 1),
                            (cmd("publish", 4.0, &key), 1),
                        ],
                    )),
                ),
                (
                    "nine createStreams",
                    Box::pin(sequence_refused(
                        addr,
                        true,
                        (0..9).map(|i| (cmd("createStream", 2.0 + f64::from(i), &[]), 0)).collect(),
                    )),
                ),
            ])
            .await?;
            expect_counted(&env.counters, Reason::ProtocolViolation, 7).await
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_ignored() -> Result {
    run_case(
        "unknown message types",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let mut rng = Rng::new(7);
            let mut peer = RawPeer::connect(env.addr).await?;
            peer.handshake().await?;
            // Every type id without a meaning for the relay, with random payloads, then a user
            // control event nobody defined: all ignored, and the session still works.
            let mut bytes = Vec::new();
            let known = [1u8, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20];
            for type_id in (0..=255u8).filter(|t| !known.contains(t)) {
                let payload = rng.bytes_in(0, 600);
                bytes.extend_from_slice(&encode(3 + u32::from(type_id % 8), type_id, 0, payload, 128));
            }
            bytes.extend_from_slice(&encode(2, 4, 0, vec![0x12, 0x34, 1, 2, 3], 128));
            peer.send(&bytes).await?;
            peer.send_command(&connect_values(), 0).await?;
            peer.expect_command("_result").await.context("connect after unknown messages")?;
            // Media from a peer that is not publishing is dropped, not relayed to anyone.
            let media = encode(6, 9, 1, frame(0), peer.chunk_size);
            peer.send(&media).await?;
            peer.send_command(&cmd("createStream", 2.0, &[]), 0).await?;
            let created = peer.expect_command("_result").await?;
            ensure!(created.args.first() == Some(&Amf0Value::Number(1.0)), "createStream: {created:?}");
            Ok(())
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Session IDs and admission
// ---------------------------------------------------------------------------------------

fn expect_bad_name(result: std::result::Result<RtmpClient, ClientError>) -> Result {
    match result {
        Err(ClientError::Session(SessionError::Refused { code, .. }))
            if code == "NetStream.Publish.BadName" =>
        {
            Ok(())
        }
        Err(e) => bail!("publish refused with an unexpected error: {e}"),
        Ok(_) => bail!("a second publisher was accepted for live/pair"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_held_session_id_is_refused() -> Result {
    run_case(
        "session ID held",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let opts = env.opts();
            for scheme in ["rtmp", "rtmp+quic", "rtmp"] {
                let url = StreamUrl::parse(&env.url(scheme, "pair"))?;
                expect_bad_name(RtmpClient::connect(&url, ClientMode::Publish, &opts).await)
                    .with_context(|| format!("over {scheme}"))?;
            }
            // With a query on the key, it is still the same session ID.
            let url = StreamUrl::parse(&format!("{}?token=x", env.url("rtmp", "pair")))?;
            expect_bad_name(RtmpClient::connect(&url, ClientMode::Publish, &opts).await)?;
            expect_counted(&env.counters, Reason::PublishTaken, 4).await
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_are_refused() -> Result {
    const IDLE: usize = 2000;
    const PER_IP: usize = 200;
    // The idle connections come from 127.0.0.2, so the pair (127.0.0.1) keeps its own
    // allowance. A longer handshake timeout keeps "refused at once" and "closed at the
    // timeout" far apart.
    let tweak = |c: &mut Config| {
        c.max_connections_per_ip = PER_IP;
        c.handshake_timeout_ms = 3000;
    };
    run_case("2000 idle connections", tweak, PlayerOver::Tcp, RSS_BOUND_MIB, |env| async move {
        let other_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let limit = env.handshake_timeout() + CLOSE_MARGIN;
        let mut watchers = Vec::with_capacity(IDLE);
        let start = Instant::now();
        for _ in 0..IDLE {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(other_ip, 0))?;
            let mut stream = socket.connect(env.addr).await?;
            let opened = Instant::now();
            watchers.push(tokio::spawn(async move { closed_within(&mut stream, opened, limit).await }));
        }
        println!("  {IDLE} connections opened in {:.2?}", start.elapsed());
        let (mut refused, mut accepted) = (0, 0);
        for w in watchers {
            let closed = w.await??;
            if closed < PROMPT {
                refused += 1;
            } else {
                assert_closed_at_timeout("idle connection", closed, &env)?;
                accepted += 1;
            }
        }
        println!("  accepted {accepted} (closed at the handshake timeout), refused {refused} at once");
        ensure!(accepted == PER_IP && refused == IDLE - PER_IP, "accepted {accepted}, refused {refused}");
        expect_counted(&env.counters, Reason::AddressLimit, IDLE - PER_IP).await?;
        // The address has its allowance back once they are gone.
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(other_ip, 0))?;
        let mut peer = RawPeer::from_stream(socket.connect(env.addr).await?);
        peer.handshake().await.context("a new connection from 127.0.0.2")?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// QUIC
// ---------------------------------------------------------------------------------------

async fn quic_connect(env: &Env) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let endpoint =
        quic::client_endpoint(env.addr, &Trust::CaFile(env.ca.clone()), &Default::default(), ALPN_RTMP)?;
    let conn = timeout(Duration::from_secs(5), endpoint.connect(env.addr, "localhost")?)
        .await
        .context("QUIC connect timed out")??;
    Ok((endpoint, conn))
}

/// Sends C0+C1 on a QUIC stream and reads S0+S1+S2: the relay serves this stream.
async fn quic_served(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) -> Result {
    send.write_all(&c0c1()).await?;
    let mut s = vec![0u8; 1 + 1536 + 1536];
    timeout(Duration::from_secs(3), recv.read_exact(&mut s)).await.context("no S0S1S2")??;
    ensure!(s[0] == 3, "S0 is {}", s[0]);
    Ok(())
}

/// Reads a QUIC stream until the server ends it (finish, reset or connection loss).
async fn quic_stream_closed(
    mut recv: quinn::RecvStream,
    opened: Instant,
    limit: Duration,
) -> Result<Duration> {
    let mut buf = [0u8; 4096];
    timeout(limit, async {
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return opened.elapsed(),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("QUIC stream still open after {:?}", opened.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_garbage_datagrams_are_ignored() -> Result {
    run_case(
        "QUIC garbage datagrams",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let mut rng = Rng::new(42);
            let mut sent = 0;
            for burst in 0..40 {
                for i in 0..100 {
                    let datagram = match (burst * 100 + i) % 4 {
                        // Short random datagrams.
                        0 => rng.bytes_in(1, 64),
                        // Long-header QUIC v1 Initial lookalikes, padded to 1200 bytes.
                        1 => {
                            let mut d = rng.bytes(1200);
                            d[0] = 0xC0 | (d[0] & 0x0F);
                            d[1..5].copy_from_slice(&1u32.to_be_bytes());
                            d[5] = 8;
                            d
                        }
                        // Long headers with an unknown version (may get version negotiation).
                        2 => {
                            let mut d = rng.bytes(1200);
                            d[0] |= 0x80;
                            d
                        }
                        // Short-header lookalikes for connections that do not exist.
                        _ => {
                            let mut d = rng.bytes_in(20, 1400);
                            d[0] = 0x40 | (d[0] & 0x3F);
                            d
                        }
                    };
                    socket.send_to(&datagram, env.addr)?;
                    sent += 1;
                }
                // Paced so the flood tests the parser rather than the socket buffer.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!("  {sent} datagrams sent");
            // A new QUIC player still connects and plays.
            let url = StreamUrl::parse(&env.url("rtmp+quic", "pair"))?;
            let mut player = RtmpClient::connect(&url, ClientMode::Play, &env.opts()).await?;
            timeout(Duration::from_secs(5), async {
                loop {
                    match player.read_event().await? {
                        Some(ClientEvent::Media { .. }) => return Ok(()),
                        Some(_) => {}
                        None => bail!("closed"),
                    }
                }
            })
            .await
            .context("no media for a new QUIC player")??;
            player.finish().await?;
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_streams_over_the_limit_wait_for_a_free_one() -> Result {
    let tweak = |c: &mut Config| {
        c.max_quic_streams = 4;
        c.handshake_timeout_ms = 5000;
    };
    run_case("QUIC stream limit", tweak, PlayerOver::Quic, RSS_BOUND_MIB, |env| async move {
        let (_endpoint, conn) = quic_connect(&env).await?;
        let mut streams = Vec::new();
        for i in 0..4 {
            let (mut send, mut recv) = timeout(Duration::from_secs(2), conn.open_bi()).await??;
            quic_served(&mut send, &mut recv).await.with_context(|| format!("stream {i}"))?;
            streams.push((send, recv));
        }
        // The fifth is not even opened while four are in use.
        ensure!(
            timeout(Duration::from_millis(500), conn.open_bi()).await.is_err(),
            "a fifth stream opened beside four live ones"
        );
        // End one session; its stream closes and the fifth gets its place.
        let (mut send, recv) = streams.remove(0);
        let ended = Instant::now();
        send.finish()?;
        quic_stream_closed(recv, ended, Duration::from_secs(2)).await?;
        let (mut send5, mut recv5) =
            timeout(Duration::from_secs(2), conn.open_bi()).await.context("fifth stream not opened")??;
        quic_served(&mut send5, &mut recv5).await.context("fifth stream")?;
        let waited = ended.elapsed();
        println!("  fifth stream served {waited:.2?} after one of four closed");
        ensure!(waited < env.handshake_timeout() / 2, "the fifth stream waited {waited:?}");
        conn.close(0u32.into(), b"done");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_quic_streams_are_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "silent QUIC streams",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let (_endpoint, conn) = quic_connect(&env).await?;
            let mut streams = Vec::new();
            for _ in 0..4 {
                streams.push(conn.open_bi().await?);
            }
            // Streams 0 and 1 never send a byte (writing on 2 opens them at the server), 2 sends
            // one byte, 3 completes the RTMP handshake and then goes silent.
            let opened = Instant::now();
            streams[2].0.write_all(&[3]).await?;
            {
                let (send, recv) = &mut streams[3];
                quic_served(send, recv).await?;
            }
            let limit = env.handshake_timeout() + CLOSE_MARGIN;
            let mut sends = Vec::new();
            let mut watchers = Vec::new();
            for (send, recv) in streams {
                sends.push(send);
                watchers.push(tokio::spawn(quic_stream_closed(recv, opened, limit)));
            }
            for (i, w) in watchers.into_iter().enumerate() {
                let closed = w.await?.with_context(|| format!("stream {i}"))?;
                println!("  stream {i}: closed after {closed:.2?}");
                assert_closed_at_timeout(&format!("stream {i}"), closed, &env)?;
            }
            expect_counted(&env.counters, Reason::PeerSilent, 4).await?;
            conn.close(0u32.into(), b"done");
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connection_without_streams_is_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "idle QUIC connection",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let (_endpoint, conn) = quic_connect(&env).await?;
            let opened = Instant::now();
            let why = timeout(env.handshake_timeout() + CLOSE_MARGIN, conn.closed()).await.map_err(|_| {
                anyhow!("QUIC connection without streams still open after {:?}", opened.elapsed())
            })?;
            let closed = opened.elapsed();
            println!("  closed after {closed:.2?}: {why}");
            // Closed with the stable code of its reason, and counted under it.
            let code = match why {
                quinn::ConnectionError::ApplicationClosed(c) => Reason::from_quic(c.error_code),
                _ => None,
            };
            ensure!(code == Some(Reason::NoSession), "closed with {code:?}");
            expect_counted(&env.counters, Reason::NoSession, 1).await?;
            assert_closed_at_timeout("idle QUIC connection", closed, &env)
        },
    )
    .await
}
