//! Shared by `tests/hostile/`, `tests/roqr.rs` and `tests/soak.rs`: synthetic numbered video, a checker
//! for what a player receives (every sequence number, in order, from its first keyframe
//! on), publisher and player loops over [`RtmpClient`], the publisher → player [`Pair`]
//! that keeps streaming while a hostile case runs, and `/proc` memory readings.

// Each test binary uses a different subset of these helpers, and `pub` here only means
// "shared between test files".
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::config::Config;
use qrelay::media::frame::MediaKind;
use qrelay::reason::Counters;
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::server::Shutdown;
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use qrelay_bench::synth::{self, VideoPlan};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub type Result<T = ()> = anyhow::Result<T>;

/// Publisher pacing: 50 frames a second.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// A keyframe every this many frames (half a second).
pub const GOP: u32 = 25;
/// Payload bytes of each synthetic frame.
pub const FRAME_BYTES: usize = 2048;

// ---------------------------------------------------------------------------------------
// An in-process relay
// ---------------------------------------------------------------------------------------

/// An in-process relay on 127.0.0.1, port 0; stopped on drop. Derefs to its [`Env`].
pub struct Relay {
    pub env: Env,
    shutdown: Shutdown,
    task: JoinHandle<std::result::Result<(), qrelay::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.immediate.cancel();
        self.shutdown.graceful.cancel();
        self.task.abort();
    }
}

impl std::ops::Deref for Relay {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

/// What a test needs to know about the relay.
#[derive(Debug, Clone)]
pub struct Env {
    pub addr: SocketAddr,
    /// The relay's closes and refusals by reason.
    pub counters: Arc<Counters>,
    pub ca: PathBuf,
    pub config: Config,
}

impl Env {
    /// `scheme://127.0.0.1:PORT/live/key`.
    pub fn url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://{}/live/{key}", self.addr)
    }

    /// Client options trusting the relay's development CA.
    pub fn opts(&self) -> ClientOptions {
        ClientOptions { trust: Trust::CaFile(self.ca.clone()), ..ClientOptions::default() }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }
}

/// Starts a relay with the default configuration as `tweak` adjusts it.
pub async fn start_relay(tweak: impl FnOnce(&mut Config)) -> Result<Relay> {
    let dir = tempfile::Builder::new().prefix("qrelay-test-").tempdir()?;
    let mut config =
        Config { listen: "127.0.0.1:0".parse()?, cert_dir: dir.path().join("certs"), ..Default::default() };
    tweak(&mut config);
    let server = qrelay::Server::bind(config.clone()).await?;
    let addr = server.local_addr();
    let ca = server.dev_ca().cloned().context("no development CA")?;
    let counters = server.counters();
    let shutdown = Shutdown::default();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Ok(Relay { env: Env { addr, counters, ca, config }, shutdown, task, _dir: dir })
}

// ---------------------------------------------------------------------------------------
// Synthetic numbered video
// ---------------------------------------------------------------------------------------

/// The numbered stream (`qrelay_bench::synth`, the one synthetic stream generator):
/// 50 frames a second, a keyframe every [`GOP`] frames, every frame [`FRAME_BYTES`].
pub const PLAN: VideoPlan =
    VideoPlan { fps: 50, gop_frames: GOP, key_bytes: FRAME_BYTES, inter_bytes: FRAME_BYTES };

/// The AVC sequence header of the synthetic stream.
pub fn sequence_header() -> Bytes {
    synth::video_sequence_header()
}

/// Frame `seq` of [`PLAN`] (send time 0, so the same number always gives the same bytes).
pub fn frame(seq: u32) -> Bytes {
    PLAN.frame(u64::from(seq), 0)
}

/// What a received video payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    /// The sequence header.
    Header,
    /// Frame `seq`, a keyframe or not.
    Frame { seq: u32, keyframe: bool },
}

/// Reads a payload made by [`sequence_header`] or [`frame`] (every byte checked);
/// `None` for anything else.
pub fn parse_video(payload: &[u8]) -> Option<Video> {
    if payload == &sequence_header()[..] {
        return Some(Video::Header);
    }
    let m = PLAN.check(payload)?;
    Some(Video::Frame { seq: u32::try_from(m.seq).ok()?, keyframe: m.keyframe })
}

// ---------------------------------------------------------------------------------------
// What a player received
// ---------------------------------------------------------------------------------------

/// Checks that a player receives every frame in order from its first keyframe on, and
/// measures the longest wait between two frames.
#[derive(Debug, Default, Clone)]
pub struct SeqChecker {
    /// Sequence number of the first keyframe (where checking starts).
    pub first: Option<u32>,
    /// The next sequence number due.
    pub next: u32,
    /// Frames received from the first keyframe on.
    pub received: u64,
    /// Frames before the first keyframe (a late joiner never sees any: it starts at the
    /// cached GOP's keyframe).
    pub before_keyframe: u64,
    /// Sequence headers received.
    pub headers: u64,
    /// Longest time between two consecutive frames.
    pub max_gap: Duration,
    /// The first problem seen (gap, reordering, foreign payload), if any.
    pub error: Option<String>,
    last_arrival: Option<Instant>,
}

impl SeqChecker {
    /// Accounts one media message.
    pub fn on_media(&mut self, kind: MediaKind, payload: &[u8]) {
        if kind != MediaKind::Video {
            self.fail(format!("unexpected {kind:?} message of {} bytes", payload.len()));
            return;
        }
        match parse_video(payload) {
            Some(Video::Header) => self.headers += 1,
            Some(Video::Frame { seq, keyframe }) => self.on_frame(seq, keyframe),
            None => self.fail(format!("foreign video payload of {} bytes", payload.len())),
        }
    }

    fn on_frame(&mut self, seq: u32, keyframe: bool) {
        let now = Instant::now();
        if self.first.is_none() {
            if !keyframe {
                self.before_keyframe += 1;
                return;
            }
            if self.headers == 0 {
                self.fail(format!("keyframe {seq} before any sequence header"));
            }
            self.first = Some(seq);
            self.next = seq;
        }
        if seq != self.next {
            self.fail(format!("expected frame {}, got {seq}", self.next));
        }
        if let Some(last) = self.last_arrival {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last_arrival = Some(now);
        self.next = seq.wrapping_add(1);
        self.received += 1;
    }

    fn fail(&mut self, what: String) {
        if self.error.is_none() {
            self.error = Some(what);
        }
    }

    /// Last sequence number received, if any.
    pub fn last(&self) -> Option<u32> {
        self.first.map(|_| self.next.wrapping_sub(1))
    }
}

// ---------------------------------------------------------------------------------------
// Publisher and player loops
// ---------------------------------------------------------------------------------------

/// Sends the sequence header, then frame 0, 1, 2... every [`FRAME_INTERVAL`] until `stop`,
/// then ends the publish politely. Returns the number of frames sent. Reads what the
/// server sends meanwhile (cancel-safe, beside the timer) so acks and pings are answered.
pub async fn publish_frames(mut client: RtmpClient, stop: CancellationToken) -> Result<u32> {
    client.send_media(MediaKind::Video, 0, sequence_header()).await?;
    let start = Instant::now();
    let mut tick = tokio::time::interval(FRAME_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let ts = start.elapsed().as_millis() as u32;
                client.send_media(MediaKind::Video, ts, frame(seq)).await.context("sending a frame")?;
                seq += 1;
            }
            open = client.read_input() => {
                ensure!(open.context("publisher input")?, "the server closed the publisher");
                client.flush().await?;
            }
        }
    }
    client.finish().await?;
    Ok(seq)
}

/// How a player session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayEnd {
    /// The stream ended (StreamEOF / UnpublishNotify).
    StreamEnded,
    /// `leave` was cancelled.
    Left,
}

/// Plays until the stream ends or `leave` is cancelled, checking every frame.
pub async fn play_frames(
    client: &mut RtmpClient,
    checker: &mut SeqChecker,
    leave: &CancellationToken,
) -> Result<PlayEnd> {
    loop {
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Media { kind, payload, .. } => checker.on_media(kind, &payload),
                ClientEvent::StreamEnded => return Ok(PlayEnd::StreamEnded),
                ClientEvent::PublishStarted | ClientEvent::PlayStarted => {}
            }
        }
        client.flush().await?;
        tokio::select! {
            biased;
            _ = leave.cancelled() => return Ok(PlayEnd::Left),
            open = client.read_input() => {
                if !open.context("player input")? {
                    bail!("the server closed the player before the stream ended");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The pair that keeps streaming during a hostile case
// ---------------------------------------------------------------------------------------

/// What the pair did.
#[derive(Debug, Clone)]
pub struct PairReport {
    /// Frames the publisher sent.
    pub frames_sent: u32,
    /// Frames the player received, in order, without a gap.
    pub frames_received: u64,
    /// Longest time the player waited between two frames.
    pub max_gap: Duration,
    /// Sequence number of the first frame the player saw.
    pub first: Option<u32>,
}

/// An in-process publisher → player pair on `live/<key>`: the player starts before the
/// first frame is sent, so it must receive every one of them.
pub struct Pair {
    stop: CancellationToken,
    publisher: JoinHandle<Result<u32>>,
    player: JoinHandle<Result<SeqChecker>>,
}

impl Pair {
    /// Starts publishing to `publish_url` and playing from `play_url` (the same session ID
    /// over any transport); returns once both are running.
    pub async fn start(publish_url: &str, play_url: &str, opts: &ClientOptions) -> Result<Pair> {
        let publish_url = StreamUrl::parse(publish_url)?;
        let play_url = StreamUrl::parse(play_url)?;
        let publisher = RtmpClient::connect(&publish_url, ClientMode::Publish, opts)
            .await
            .context("pair publisher connect")?;
        let mut player =
            RtmpClient::connect(&play_url, ClientMode::Play, opts).await.context("pair player connect")?;
        // The player is subscribed (PlayStarted) before the first frame goes out.
        let stop = CancellationToken::new();
        let player = tokio::spawn(async move {
            let mut checker = SeqChecker::default();
            let end = play_frames(&mut player, &mut checker, &CancellationToken::new()).await?;
            ensure!(end == PlayEnd::StreamEnded, "pair player ended with {end:?}");
            Ok(checker)
        });
        let publisher = tokio::spawn(publish_frames(publisher, stop.clone()));
        Ok(Pair { stop, publisher, player })
    }

    /// Stops the publisher, waits for the player to see the end of the stream, and checks
    /// that it received every frame in order.
    pub async fn finish(self) -> Result<PairReport> {
        self.stop.cancel();
        let sent = tokio::time::timeout(Duration::from_secs(10), self.publisher)
            .await
            .context("pair publisher did not finish")???;
        let checker = tokio::time::timeout(Duration::from_secs(10), self.player)
            .await
            .context("pair player did not see the end of the stream")???;
        if let Some(e) = &checker.error {
            bail!("pair player: {e}");
        }
        let report = PairReport {
            frames_sent: sent,
            frames_received: checker.received,
            max_gap: checker.max_gap,
            first: checker.first,
        };
        ensure!(report.first == Some(0), "pair player started at frame {:?}, not 0", report.first);
        ensure!(
            report.frames_received == u64::from(report.frames_sent),
            "pair player received {} of {} frames",
            report.frames_received,
            report.frames_sent
        );
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// VmRSS of process `pid` (`"self"` for this one) in KiB.
pub fn rss_kib(pid: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    Ok(line["VmRSS:".len()..].split_ascii_whitespace().next().context("empty VmRSS")?.parse()?)
}

/// KiB as MiB for reports.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A small deterministic PRNG (xorshift64*) for garbage bytes and random schedules.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// Between `lo` and `hi` (exclusive) random bytes.
    pub fn bytes_in(&mut self, lo: u64, hi: u64) -> Vec<u8> {
        let n = self.range(lo, hi) as usize;
        self.bytes(n)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
