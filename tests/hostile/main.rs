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

#[path = "../support_hostile/mod.rs"]
mod support_hostile;

mod admission;
mod chunks;
mod commands;
mod handshake;
mod quic_peers;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::{BufMut, Bytes, BytesMut};
use qrelay::client::{ClientError, RtmpClient};
use qrelay::config::Config;
use qrelay::reason::{Counters, Reason};
use qrelay::rtmp::amf0::{self, Amf0Value};
use qrelay::rtmp::chunk::{self, ChunkDecoder, DecoderLimits, Message};
use qrelay::rtmp::message::{Command, RtmpMessage};
use qrelay::rtmp::session::{ClientEvent, ClientMode, SessionError};
use qrelay::transport::quic;
use qrelay::transport::tls::{Trust, ALPN_RTMP};
use qrelay::url::StreamUrl;
use support_hostile::*;
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

/// A relay with the cases' handshake timeout, then `tweak`.
async fn start_hostile_relay(tweak: impl FnOnce(&mut Config)) -> Result<Relay> {
    start_relay(|c| {
        c.handshake_timeout_ms = HANDSHAKE_MS;
        tweak(c);
    })
    .await
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
        let relay = start_hostile_relay(tweak).await?;
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

/// A case's future, boxed so that cases of different shapes run side by side.
type PinFut = std::pin::Pin<Box<dyn Future<Output = Result<Duration>> + Send>>;
