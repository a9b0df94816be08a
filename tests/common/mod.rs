//! Shared helpers for the end-to-end tests: a relay on 127.0.0.1 port 0, test media made
//! once per test binary with ffmpeg, ffmpeg/ffprobe/`qrelay` child processes that die with
//! the test, and comparisons of what was published with what players wrote.

// Each test binary uses a different subset of these helpers, and `pub` here only means
// "shared between test files".
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::Bytes;
use qrelay::hub::{Hub, StreamStats};
use qrelay::media::flv::FlvTag;
use qrelay::media::frame::MediaKind;
use qrelay::relay::push::Forwarding;
use qrelay::server::{BoundPort, Shutdown};
use qrelay::Config;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub type Result<T = ()> = anyhow::Result<T>;

/// Hard bound on every test body.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(10);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn bounded<F: Future<Output = Result>>(body: F) -> Result {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .map_err(|_| anyhow!("test did not finish within {TEST_TIMEOUT:?}"))?
}

/// Polls `check` every few milliseconds until it returns `Some`, failing after `limit`.
pub async fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// The relay under test
// ---------------------------------------------------------------------------------------

/// An in-process relay on 127.0.0.1, port 0 (TCP and UDP). Stopped on drop.
pub struct TestServer {
    /// Where TCP and QUIC listen.
    pub addr: SocketAddr,
    /// The development CA the clients trust.
    pub ca: PathBuf,
    /// The relay's stream registry, for assertions.
    pub hub: Hub,
    /// The control API (HTTP on 127.0.0.1, port 0).
    pub http: SocketAddr,
    /// Its bearer token (generated in the certificate directory, or the configured one):
    /// POST and DELETE need it.
    pub api_token: String,
    /// Its open connections (TCP and QUIC), for assertions.
    pub connections: std::sync::Arc<qrelay::transport::admission::Admission>,
    /// Its close and refusal counters.
    pub counters: std::sync::Arc<qrelay::reason::Counters>,
    /// Cancel to stop the relay.
    pub shutdown: Shutdown,
    /// Push forwarding: rules and the status of every forward.
    pub forwarding: Forwarding,
    /// Forward and pull state by session ID (what the control API shows).
    pub relays: qrelay::control::RelayBoard,
    /// Certificates and the tests' output files; removed on drop.
    pub dir: TempDir,
    task: JoinHandle<std::result::Result<(), qrelay::ServerError>>,
}

/// Starts a relay with default settings.
pub async fn start_server() -> Result<TestServer> {
    start_server_with(|_| {}).await
}

/// Starts a relay after `tweak` adjusted its configuration.
pub async fn start_server_with(tweak: impl FnOnce(&mut Config)) -> Result<TestServer> {
    start_server_gated(tweak, None).await
}

/// Starts a relay with a gate deciding publish and play requests.
pub async fn start_server_gated(
    tweak: impl FnOnce(&mut Config),
    gate: Option<std::sync::Arc<dyn qrelay::gate::Gate>>,
) -> Result<TestServer> {
    let dir = tempfile::Builder::new().prefix("qrelay-e2e-").tempdir()?;
    let mut config = test_config(&dir, "127.0.0.1:0".parse()?)?;
    tweak(&mut config);
    // Port 0, or the address a test gives (a relay restarted where an old one was).
    let port = BoundPort::bind(config.listen)?;
    launch(port, config, dir, gate).await
}

/// A loopback port held for a relay that starts later ([`start_server_on`]): until then
/// TCP connections to it are refused, and no other test can take it.
pub fn reserve_port() -> Result<BoundPort> {
    Ok(BoundPort::bind("127.0.0.1:0".parse()?)?)
}

/// Starts a relay on a port reserved beforehand.
pub async fn start_server_on(
    port: BoundPort,
    tweak: impl FnOnce(&mut Config),
    gate: Option<std::sync::Arc<dyn qrelay::gate::Gate>>,
) -> Result<TestServer> {
    let dir = tempfile::Builder::new().prefix("qrelay-e2e-").tempdir()?;
    let mut config = test_config(&dir, port.local_addr())?;
    tweak(&mut config);
    ensure!(config.listen == port.local_addr(), "a relay on a reserved port listens there");
    launch(port, config, dir, gate).await
}

/// The tests' configuration: `listen`, certificates in `dir`, the control API on a port
/// of its own.
fn test_config(dir: &TempDir, listen: SocketAddr) -> Result<Config> {
    Ok(Config {
        listen,
        cert_dir: dir.path().join("certs"),
        http_listen: qrelay::config::HttpListen::Addr("127.0.0.1:0".parse()?),
        ..Default::default()
    })
}

async fn launch(
    port: BoundPort,
    config: Config,
    dir: TempDir,
    gate: Option<std::sync::Arc<dyn qrelay::gate::Gate>>,
) -> Result<TestServer> {
    let mut server = qrelay::Server::bind_on(port, config).await?;
    let http = server.http_addr().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let api_token = server.api_token().unwrap_or_default().to_owned();
    if let Some(gate) = gate {
        server.set_gate(gate);
    }
    let addr = server.local_addr();
    let ca = server.dev_ca().cloned().context("the relay made no development CA")?;
    let hub = server.hub();
    let (connections, counters, forwarding) = (server.connections(), server.counters(), server.forwarding());
    let relays = server.relay_board();
    let shutdown = Shutdown::default();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Ok(TestServer {
        addr,
        ca,
        hub,
        http,
        api_token,
        connections,
        counters,
        shutdown,
        forwarding,
        relays,
        dir,
        task,
    })
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.immediate.cancel();
        self.shutdown.graceful.cancel();
        self.task.abort();
    }
}

impl TestServer {
    /// Stops the relay at once (as a crash would, for its peers) and waits until it has
    /// let go of its port; its directory (certificates) stays.
    pub async fn halt(&mut self) {
        self.shutdown.immediate.cancel();
        self.shutdown.graceful.cancel();
        let _ = (&mut self.task).await;
    }

    /// Waits for the relay to stop on its own (a drain) within `limit`; how long it took.
    pub async fn stopped(&mut self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        tokio::time::timeout(limit, &mut self.task)
            .await
            .map_err(|_| anyhow!("the relay did not stop within {limit:?}"))???;
        Ok(start.elapsed())
    }

    /// `http://127.0.0.1:PORT/path` on the control API.
    pub fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `scheme://127.0.0.1:PORT/live/key` (the session ID is `live/key`).
    pub fn url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://{}/live/{key}", self.addr)
    }

    /// A path for an output file in the server's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Current statistics of `live/key`.
    pub fn stats(&self, key: &str) -> Option<StreamStats> {
        self.hub.stats(&format!("live/{key}"))
    }

    /// Waits until the stream's statistics satisfy `cond`.
    pub async fn wait_stats(
        &self,
        key: &str,
        what: &str,
        cond: impl Fn(&StreamStats) -> bool,
    ) -> Result<StreamStats> {
        wait_until(&format!("live/{key}: {what}"), Duration::from_secs(10), || {
            self.stats(key).filter(|s| cond(s))
        })
        .await
    }

    /// Waits until at least `n` players are attached to `live/key`.
    pub async fn wait_subscribers(&self, key: &str, n: usize) -> Result<StreamStats> {
        self.wait_stats(key, &format!("{n} subscribers"), |s| s.subscribers >= n).await
    }

    /// Waits until `live/key` has a publisher.
    pub async fn wait_live(&self, key: &str) -> Result<StreamStats> {
        self.wait_stats(key, "live", |s| s.live).await
    }

    /// Waits until the hub forgot `live/key` (no publisher, no players).
    pub async fn wait_released(&self, key: &str) -> Result {
        wait_until(&format!("live/{key} to be released"), Duration::from_secs(5), || {
            self.stats(key).is_none().then_some(())
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Test media
// ---------------------------------------------------------------------------------------

/// FLV files made once per test binary.
#[derive(Debug)]
pub struct Media {
    /// 4 s, 320x240 30 fps H.264 with B-frames (composition offsets), GOP 1 s, AAC 44.1 kHz.
    pub flv: PathBuf,
    /// The same with a 2 s GOP, for late-joiner tests.
    pub gop2: PathBuf,
}

/// The test media, generated on first use.
pub fn media() -> &'static Media {
    static MEDIA: OnceLock<Media> = OnceLock::new();
    MEDIA.get_or_init(|| Media {
        flv: generate("in.flv", "320x240", 440, 30),
        gop2: generate("gop2.flv", "320x240", 440, 60),
    })
}

/// Encodes a 4 s test file (`size` pictures at 30 fps with GOP `gop` frames, a `tone_hz`
/// sine) into the test media directory as `name`, through a temporary name and a rename,
/// so concurrent test binaries never see half a file.
pub fn generate(name: &str, size: &str, tone_hz: u32, gop: u32) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-media");
    std::fs::create_dir_all(&dir).expect("creating the media directory");
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let output = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", &format!("testsrc=size={size}:rate=30")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency={tone_hz}:sample_rate=44100"), "-t", "4"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", &gop.to_string()])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(&tmp)
        .output()
        .expect("running ffmpeg (install it with scripts/install-test-deps.sh)");
    assert!(output.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::rename(&tmp, &path).expect("renaming the generated media");
    path
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// `ffmpeg -loglevel error` with the given arguments; killed when dropped.
pub fn ffmpeg<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]).args(args);
    quiet(&mut cmd);
    cmd
}

/// An ffmpeg player remuxing `url` into the FLV file `out`.
pub fn ffmpeg_player(url: &str, out: &Path) -> Command {
    let mut cmd = ffmpeg(["-i", url, "-c", "copy", "-f", "flv"]);
    cmd.arg(out);
    cmd
}

/// An ffmpeg publisher sending `input` at its real time (forever when `looped`).
pub fn ffmpeg_publisher(input: &Path, url: &str, looped: bool) -> Command {
    let mut cmd = ffmpeg(["-re"]);
    if looped {
        cmd.args(["-stream_loop", "-1"]);
    }
    cmd.arg("-i").arg(input).args(["-c", "copy", "-f", "flv", url]);
    cmd
}

/// The project's own binary with plain (uncoloured) logs; killed when dropped. A relay
/// it runs puts its control API on a free loopback port (tests run side by side; the
/// default port is fixed), unless the test says otherwise with `--http`.
pub fn qrelay<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qrelay"));
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info").env("QRELAY_HTTP_LISTEN", "127.0.0.1:0").args(args);
    quiet(&mut cmd);
    cmd
}

/// `qrelay play URL --ca CA -o OUT [--duration SECS]`.
pub fn qrelay_play(url: &str, ca: &Path, out: &Path, duration: Option<f64>) -> Command {
    let mut cmd = qrelay(["play", url, "--ca"]);
    cmd.arg(ca).arg("-o").arg(out);
    if let Some(d) = duration {
        cmd.args(["--duration", &d.to_string()]);
    }
    cmd
}

/// `qrelay publish FILE URL --ca CA [--loop]`.
pub fn qrelay_publish(file: &Path, url: &str, ca: &Path, looped: bool) -> Command {
    let mut cmd = qrelay(["publish"]);
    cmd.arg(file).arg(url).arg("--ca").arg(ca);
    if looped {
        cmd.arg("--loop");
    }
    cmd
}

fn quiet(cmd: &mut Command) {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
}

/// Starts a command.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().with_context(|| format!("spawning {:?}", cmd.as_std()))
}

/// Waits for a child to exit on its own within `limit` (it is killed otherwise).
pub async fn finish(child: Child, what: &str, limit: Duration) -> Result<Output> {
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{what} did not exit within {limit:?}"))?
        .with_context(|| format!("waiting for {what}"))
}

/// Fails unless the process exited successfully, showing its stderr.
pub fn expect_success(output: &Output, what: &str) -> Result {
    ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A process's stderr as text.
pub fn stderr_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sends a signal (`TERM`, `INT`, ...) to a process with kill(1).
pub async fn send_signal(child: &Child, signal: &str) -> Result {
    let pid = child.id().context("the process already exited")?;
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().await?;
    ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Size of a file, 0 while it does not exist.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `qrelay serve` as a child process, its address learned from its "listening" log line.
pub struct ServeProcess {
    /// The relay process.
    pub child: Child,
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    /// Where its control API listens, if it logged one.
    pub http: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    _reader: JoinHandle<()>,
}

/// Runs `qrelay serve ARGS` and waits until it listens.
pub async fn spawn_serve<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<ServeProcess> {
    let mut cmd = qrelay(["serve"]);
    cmd.args(args);
    spawn_serve_cmd(cmd).await
}

/// Runs a prepared `qrelay serve` command and waits until it listens.
pub async fn spawn_serve_cmd(mut cmd: Command) -> Result<ServeProcess> {
    let mut child = spawn(&mut cmd)?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = log.clone();
    // Keeps reading so the relay never blocks on a full pipe.
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(strip_ansi(&line));
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = rx.recv().await {
            if line.contains("listening") {
                return parse_addr(&line);
            }
        }
        Err(anyhow!("qrelay serve exited before listening"))
    })
    .await
    .map_err(|_| anyhow!("qrelay serve did not log `listening` within 10 s"))?
    .with_context(|| format!("log: {}", strip_ansi(&log.lock().unwrap().join("\n"))))?;
    // The control API logs its address before the accept loops start.
    let http = log.lock().unwrap().iter().find_map(|l| parse_field(&strip_ansi(l), "http="));
    Ok(ServeProcess { child, addr, http, log, _reader: reader })
}

impl ServeProcess {
    /// Everything the relay logged so far.
    pub fn logs(&self) -> String {
        strip_ansi(&self.raw_logs())
    }

    /// Everything the relay logged so far, escape sequences included.
    pub fn raw_logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `scheme://ADDR/live/key`.
    pub fn url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://{}/live/{key}", self.addr)
    }

    /// Waits for the relay to exit within `limit`.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("qrelay serve did not exit within {limit:?}; log:\n{}", self.logs()))??;
        Ok(status)
    }
}

/// `name=ADDRESS` from a log line.
fn parse_field(line: &str, name: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse().ok())
}

/// `addr=127.0.0.1:PORT` from a log line.
fn parse_addr(line: &str) -> Result<SocketAddr> {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .with_context(|| format!("no addr= in `{line}`"))?;
    value.parse().with_context(|| format!("bad address in `{line}`"))
}

/// Removes ANSI escape sequences (in case colours are on despite NO_COLOR).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------

/// One demuxed packet as ffprobe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// `video` or `audio`.
    pub stream: String,
    pub pts: i64,
    pub dts: i64,
    pub size: usize,
    /// Keyframe flag.
    pub key: bool,
    /// MD5 of the packet data.
    pub data_hash: String,
}

/// `ffprobe -show_packets -show_data_hash MD5` of a file. The compact `key=value|...`
/// writer is parsed instead of JSON: the crate has no JSON parser among its dependencies.
pub async fn probe_packets(path: &Path) -> Result<Vec<Packet>> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-show_packets", "-show_data_hash", "MD5", "-of", "compact=p=0"])
        .args(["-show_entries", "packet=codec_type,pts,dts,size,flags,data_hash"])
        .arg(path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running ffprobe")?;
    ensure!(output.status.success(), "ffprobe {}: {}", path.display(), stderr_text(&output));
    let text = String::from_utf8(output.stdout)?;
    // A packet with side data (new extradata, after a publisher change) goes on over the
    // next line, which starts with the separator.
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match lines.last_mut() {
            Some(last) if line.starts_with('|') => last.push_str(line),
            _ => lines.push(line.to_owned()),
        }
    }
    lines.iter().map(|l| parse_packet(l)).collect()
}

fn parse_packet(line: &str) -> Result<Packet> {
    let field = |name: &str| {
        line.split('|')
            .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .with_context(|| format!("no {name} in `{line}`"))
    };
    let int = |name: &str| -> Result<i64> {
        field(name)?.parse().with_context(|| format!("bad {name} in `{line}`"))
    };
    Ok(Packet {
        stream: field("codec_type")?.to_owned(),
        pts: int("pts")?,
        dts: int("dts")?,
        size: int("size")? as usize,
        key: field("flags")?.starts_with('K'),
        data_hash: field("data_hash")?.to_owned(),
    })
}

/// Compares a played file's packets with the published file's, starting at the played
/// file's first video keyframe: per stream, packet for packet, equal size, data hash and
/// keyframe flag, equal composition offset (pts - dts) and equal dts relative to that
/// keyframe (ffmpeg may shift absolute timestamps; A/V sync must not move). With
/// `complete`, the played file must also run to the end of the input. Returns the number
/// of packets compared.
pub fn compare_packets(input: &[Packet], played: &[Packet], complete: bool) -> Result<usize> {
    let first_key = played
        .iter()
        .find(|p| p.stream == "video" && p.key)
        .context("the played file has no video keyframe")?;
    let origin = input
        .iter()
        .find(|p| p.stream == "video" && p.key && p.data_hash == first_key.data_hash)
        .context("the played file's first keyframe is not in the input")?;
    let mut compared = 0;
    for stream in ["video", "audio"] {
        let from = |packets: &[Packet], origin: &Packet| -> Vec<Packet> {
            packets.iter().filter(|p| p.stream == stream && p.dts >= origin.dts).cloned().collect()
        };
        let want = from(input, origin);
        let got = from(played, first_key);
        ensure!(!got.is_empty(), "no {stream} packets played");
        ensure!(
            got.len() <= want.len(),
            "{stream}: {} packets played, only {} published",
            got.len(),
            want.len()
        );
        if complete {
            ensure!(
                got.len() == want.len(),
                "{stream}: played {} packets of {} published after the first keyframe",
                got.len(),
                want.len()
            );
        }
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let same = w.size == g.size
                && w.data_hash == g.data_hash
                && w.key == g.key
                && w.pts - w.dts == g.pts - g.dts
                && w.dts - origin.dts == g.dts - first_key.dts;
            ensure!(same, "{stream} packet {i} differs:\n published {w:?}\n played    {g:?}");
        }
        compared += got.len();
    }
    Ok(compared)
}

/// Every tag of an FLV file.
pub async fn read_tags(path: &Path) -> Result<Vec<FlvTag>> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    Ok(qrelay::client::read_flv_tags(file).await?)
}

/// Audio and video tags only.
pub fn av_tags(tags: &[FlvTag]) -> Vec<&FlvTag> {
    tags.iter().filter(|t| t.kind != MediaKind::Data).collect()
}

/// Video payloads only.
pub fn video_payloads(tags: &[FlvTag]) -> Vec<&Bytes> {
    tags.iter().filter(|t| t.kind == MediaKind::Video).map(|t| &t.payload).collect()
}

/// The played file's audio and video tags equal the published file's, track by track,
/// from the first tag on: same timestamp and payload bytes, in order, nothing missing
/// (data tags may differ). Order across tracks is not compared: RoQR carries audio and
/// video on streams of their own and the receiver orders them by timestamp, so an audio
/// tag the publisher wrote just before a video tag of an earlier timestamp comes after it.
pub fn assert_same_av_tags(published: &[FlvTag], played: &[FlvTag]) -> Result {
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let want: Vec<_> = published.iter().filter(|t| t.kind == kind).collect();
        let got: Vec<_> = played.iter().filter(|t| t.kind == kind).collect();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            ensure!(
                w.timestamp == g.timestamp && w.payload == g.payload,
                "{kind:?} tag {i} differs: published @{} ms ({} bytes), played @{} ms ({} bytes)",
                w.timestamp,
                w.payload.len(),
                g.timestamp,
                g.payload.len()
            );
        }
        ensure!(want.len() == got.len(), "published {} {kind:?} tags, played {}", want.len(), got.len());
    }
    Ok(())
}

/// A loopback port nobody listens on now (bound and released), for a program that can
/// only bind a port itself (nginx); everything else gets a bound socket
/// ([`reserve_port`]), since another test may take this port before it is used.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------
// nginx-rtmp
// ---------------------------------------------------------------------------------------

pub const NGINX_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx with the RTMP module as a child process (one process, no daemon), application
/// `live` on a loopback port of its own; killed when dropped.
pub struct Nginx {
    /// Where it listens.
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx cannot be handed a bound socket, so it binds a port picked just before:
    /// when another process took that port in between, nginx exits at once, and it is
    /// started again on another.
    pub async fn start() -> Result<Self> {
        ensure!(
            Path::new(NGINX_MODULE).exists(),
            "nginx-rtmp missing: run scripts/install-test-deps.sh (nginx-light, libnginx-mod-rtmp)"
        );
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start().await? {
                Ok(nginx) => return Ok(nginx),
                Err(log) => failures.push(log),
            }
        }
        bail!("nginx did not start: {}", failures.join("\n"))
    }

    /// `Ok(Err(log))` when nginx exited before it listened (its error log).
    async fn try_start() -> Result<std::result::Result<Self, String>> {
        let dir = tempfile::Builder::new().prefix("qrelay-nginx-").tempdir()?;
        let port = free_port()?;
        let work = dir.path().display();
        let conf = format!(
            "load_module {NGINX_MODULE};\n\
             daemon off;\n\
             master_process off;\n\
             pid {work}/nginx.pid;\n\
             error_log {work}/error.log error;\n\
             events {{ worker_connections 256; }}\n\
             rtmp {{\n\
               access_log off;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 chunk_size 4096;\n\
                 application live {{ live on; }}\n\
               }}\n\
             }}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = tokio::process::Command::new("nginx");
        cmd.arg("-c").arg(&conf_path).arg("-p").arg(dir.path()).arg("-e").arg(dir.path().join("error.log"));
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = spawn(&mut cmd)?;
        // Its listening socket is the event to wait for: nginx has no readiness signal of
        // its own, and a connection alone could reach whoever else took the port.
        let pid = child.id().context("nginx exited at once")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !process_listens_on(pid, port) {
            if child.try_wait()?.is_some() || bind_failed(&dir) {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                return Ok(Err(format!("port {port}: {log}")));
            }
            ensure!(tokio::time::Instant::now() < deadline, "nginx did not listen on {addr} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Ok(Self { port, _child: child, _dir: dir }))
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }
}

/// nginx logs a failed bind at once, then retries for seconds before it exits.
fn bind_failed(dir: &tempfile::TempDir) -> bool {
    std::fs::read_to_string(dir.path().join("error.log")).is_ok_and(|log| log.contains("bind()"))
}

/// Process `pid` holds the socket listening on 127.0.0.1:`port` (read from /proc).
fn process_listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    // Columns: sl local_address rem_address st ... inode (the 10th).
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str()) && cols.get(3) == Some(&"0A"))
            .then(|| cols.get(9).copied())
            .flatten()
    });
    let Some(inode) = inode else { return false };
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == wanted))
}
