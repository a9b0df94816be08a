//! `qrelay bench`: a load generator for any RTMP server over TCP (nginx-rtmp too) and
//! for qrelay over QUIC (tunnel mapping, RoQR), with qrelay's browser players (HTTP-FLV,
//! WebTransport) too.
//!
//! One process publishes `--streams` streams (synthetic H.264 and AAC whose video frames
//! carry a send time and a sequence number, see [`synth`], or an FLV file) at real-time
//! pace, attaches `--players` players round-robin over them (ramped, with bounded
//! concurrent connects), measures for `--duration` seconds once everyone is connected,
//! and reports delivery, first-frame time, relay latency (receive − send on one
//! in-process monotonic clock), lost frames, and with `--server-pid` the server's CPU
//! and memory. Synthetic streams carry audio unless `--no-audio`.
//!
//! - [`synth`]: the synthetic stream (valid H.264 and AAC) and its marker.
//! - [`stats`]: histogram, percentiles, per-player tracking.
//! - [`proc`]: `/proc` CPU and memory sampling.
//! - `load`: publishers, players, idle connections, QUIC connection sharing.
//! - [`report`]: table and JSON.

mod load;
pub mod proc;
pub mod report;
pub mod stats;
pub mod synth;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use load::{Dialer, PlayerOutcome, Shared, Source};
pub use report::{ChurnUsage, IdleUsage, QuicRx, Report, ServerUsage};
use stats::Histogram;

use qrelay_proto::rtmp::chunk::DecoderLimits;
use qrelay_proto::rtmp::session::SessionConfig;
use qrelay_proto::transport::tls::Trust;
use qrelay_proto::url::{StreamUrl, Transport};

/// Concurrent connection attempts during the ramp.
const MAX_CONNECTING: usize = 64;
/// Pause between "everyone connected" and the measurement window.
const SETTLE: Duration = Duration::from_secs(1);

/// Options of `qrelay bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Stream URL: rtmp://host:port/app/key or rtmp+quic://host:port/app/key (tunnel).
    /// With several streams the keys are KEY, KEY-1, KEY-2, ...
    #[arg(long)]
    pub url: String,
    /// Players play the streams here instead of at `--url` (same app and keys), e.g. an
    /// edge that pulls them from the origin the publishers publish to: the latency then
    /// includes the relay chain.
    #[arg(long)]
    pub play_url: Option<String>,
    /// Players, spread round-robin over the streams.
    #[arg(long, default_value_t = 100)]
    pub players: usize,
    /// Measurement window in seconds (after every player connected).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Publish this FLV file (looped, real-time pace) instead of synthetic frames. Without
    /// the synthetic markers there is no latency or loss measurement.
    #[arg(long, conflicts_with_all = ["bitrate", "fps", "gop", "audio", "no_audio"])]
    pub publish: Option<PathBuf>,
    /// Synthetic video bitrate per stream (e.g. 3M, 2500k).
    #[arg(long, default_value = "3M", value_parser = synth::parse_bitrate)]
    pub bitrate: u64,
    /// Synthetic frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Synthetic GOP length (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = synth::parse_duration)]
    pub gop: Duration,
    /// Synthetic AAC audio beside the video: the default (AAC-LC, 44.1 kHz stereo,
    /// 128 kbit/s, about 43 frames a second); `--no-audio` turns it off.
    #[arg(long, overrides_with = "no_audio")]
    pub audio: bool,
    /// Video only: no synthetic audio.
    #[arg(long, overrides_with = "audio")]
    pub no_audio: bool,
    /// Streams to publish.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Do not publish: play streams someone else publishes.
    #[arg(long, conflicts_with = "publish")]
    pub no_publish: bool,
    /// PID of the server to account CPU and memory for (repeat to sum several, e.g.
    /// nginx's master and worker).
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for QUIC.
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Skip certificate verification (QUIC).
    #[arg(long)]
    pub insecure: bool,
    /// Spread player connects over this many milliseconds (default: 3 ms per player,
    /// at most 3 s).
    #[arg(long)]
    pub ramp_ms: Option<u64>,
    /// QUIC: players sharing one connection (one bidirectional stream each); keep it at
    /// or below the server's `max_quic_streams`.
    #[arg(long, default_value_t = 16)]
    pub quic_streams_per_conn: usize,
    /// Players fetch HTTP-FLV (`GET /{app}/{key}.flv`) from the play URL's host and port
    /// instead of playing RTMP (the play URL must be `rtmp://`: the relay serves HTTP on
    /// its TCP port).
    #[arg(long)]
    pub http_flv: bool,
    /// Players play over WebTransport (ALPN `h3`, one QUIC connection each, what a
    /// browser does) at the play URL's host and port, whatever its scheme. The relay's
    /// `h3` certificate is pinned by the hash `GET /webtransport.json` lists (on that
    /// port over TCP), as a page pins it; a relay with a configured certificate lists
    /// none and is checked against `--ca` (or the web PKI).
    #[arg(long, conflicts_with_all = ["http_flv", "idle"])]
    pub webtransport: bool,
    /// Idle mode: open N connections that handshake and `connect` but never play,
    /// and report the server's RSS per connection (needs --server-pid).
    #[arg(long, conflicts_with_all = ["publish", "no_publish"])]
    pub idle: Option<usize>,
    /// Churn: besides the steady `--players`, this many players per second join (spread
    /// over the streams), play for `--churn-hold-ms` and close, from the end of the ramp
    /// to the end of the window. Every figure in the report but the churn line is about
    /// the steady players only. TCP only.
    #[arg(long, default_value_t = 0.0)]
    pub churn_rate: f64,
    /// How long each churning player stays, ms.
    #[arg(long, default_value_t = 1000)]
    pub churn_hold_ms: u64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Defaults for `url` (as if given on the command line with nothing else).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            play_url: None,
            players: 100,
            duration: 30.0,
            publish: None,
            bitrate: 3_000_000,
            fps: 30,
            gop: Duration::from_secs(2),
            audio: false,
            no_audio: false,
            streams: 1,
            no_publish: false,
            server_pid: Vec::new(),
            json: None,
            ca: None,
            insecure: false,
            ramp_ms: None,
            quic_streams_per_conn: 16,
            http_flv: false,
            webtransport: false,
            idle: None,
            churn_rate: 0.0,
            churn_hold_ms: 1000,
            quiet: false,
        }
    }

    /// Whether synthetic streams carry audio (unless `--no-audio`).
    pub fn with_audio(&self) -> bool {
        !self.no_audio
    }

    fn trust(&self) -> Trust {
        match (&self.ca, self.insecure) {
            (_, true) => Trust::Insecure,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => Trust::WebPki,
        }
    }

    fn ramp(&self, n: usize) -> Duration {
        Duration::from_millis(self.ramp_ms.unwrap_or_else(|| (n as u64 * 3).min(3000)))
    }
}

/// The URL of stream `i`: the key itself for 0, `KEY-i` after (before any `?query`).
pub fn stream_url(base: &StreamUrl, i: usize) -> StreamUrl {
    let mut url = base.clone();
    if i > 0 {
        url.key = match base.key.split_once('?') {
            Some((name, query)) => format!("{name}-{i}?{query}"),
            None => format!("{}-{i}", base.key),
        };
    }
    url
}

/// Players' session settings: the relay's own defaults for its sessions (what
/// `qrelay::Config::default().session()` gives), so a player accepts what qrelay's own
/// sessions accept.
fn player_session() -> SessionConfig {
    SessionConfig {
        chunk_size: 4096,
        window_ack_size: 2_500_000,
        limits: DecoderLimits {
            max_message_size: 8 * 1024 * 1024,
            min_chunk_size: 64,
            max_chunk_size: 1024 * 1024,
            max_pending_bytes: 16 * 1024 * 1024,
        },
    }
}

/// Server and bench accounting between two points in time.
struct Accounting {
    server: Vec<proc::Pid>,
    hz: u64,
    peak_server_kib: Arc<AtomicU64>,
    peak_bench_kib: Arc<AtomicU64>,
}

impl Accounting {
    fn new(pids: &[u32]) -> Self {
        Self {
            server: pids.iter().map(|&p| proc::Pid::Other(p)).collect(),
            hz: proc::clock_ticks(),
            peak_server_kib: Arc::default(),
            peak_bench_kib: Arc::default(),
        }
    }

    fn has_server(&self) -> bool {
        !self.server.is_empty()
    }

    fn server_cpu(&self) -> Option<u64> {
        if self.has_server() {
            proc::cpu_of(&self.server)
        } else {
            None
        }
    }

    fn server_mem(&self) -> Option<proc::Mem> {
        if self.has_server() {
            proc::mem_of(&self.server)
        } else {
            None
        }
    }

    /// Samples memory peaks until `stop`.
    fn spawn_sampler(&self, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let server = self.server.clone();
        let (ps, pb) = (self.peak_server_kib.clone(), self.peak_bench_kib.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(proc::SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !server.is_empty() {
                    if let Some(m) = proc::mem_of(&server) {
                        ps.fetch_max(m.rss_kib, Ordering::Relaxed);
                    }
                }
                if let Some(m) = proc::Pid::Me.mem() {
                    pb.fetch_max(m.rss_kib, Ordering::Relaxed);
                }
            }
        })
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the bench and returns its report (also printed as a progress line each second
/// unless `quiet`). Writing `--json` is the caller's business.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let base = StreamUrl::parse(&args.url)
        .with_context(|| format!("bad URL `{}`", qrelay_proto::url::redact_tokens(&args.url)))?;
    anyhow::ensure!(args.streams >= 1, "--streams must be at least 1");
    anyhow::ensure!(
        args.churn_rate >= 0.0 && args.churn_rate.is_finite() && args.churn_rate <= 10_000.0,
        "--churn-rate must be between 0 and 10000"
    );
    anyhow::ensure!(
        args.churn_rate == 0.0 || base.transport == Transport::Tcp,
        "--churn-rate is for rtmp:// (TCP) only"
    );
    anyhow::ensure!(args.duration > 0.0 && args.duration.is_finite(), "--duration must be positive");
    synth::now_us(); // Start the shared clock.
    let opts = load::client_options(args.trust());
    let play_base = match &args.play_url {
        Some(u) => StreamUrl::parse(u).with_context(|| format!("bad --play-url `{u}`"))?,
        None => base.clone(),
    };
    let dialer = if args.webtransport {
        Dialer::webtransport(&play_base, &opts).await?
    } else {
        Dialer::new(&play_base, &opts, args.quic_streams_per_conn).await?
    };
    let dialer = Arc::new(if args.http_flv { dialer.into_http_flv()? } else { dialer });
    let acct = Accounting::new(&args.server_pid);
    let shared = Arc::new(Shared::default());
    let sampler_stop = tokio_util::sync::CancellationToken::new();
    let sampler = acct.spawn_sampler(sampler_stop.clone());
    let transport = match play_base.transport {
        _ if args.http_flv => "http-flv",
        _ if args.webtransport => "webtransport",
        Transport::Quic(_) => "quic",
        _ => "tcp",
    };
    let mut report = Report { url: args.url.clone(), transport, streams: args.streams, ..Report::default() };
    let result = match args.idle {
        Some(n) => run_idle(&args, n, &base, dialer.clone(), &acct, shared.clone(), &mut report).await,
        None => {
            let bases = (&base, &play_base);
            run_play(&args, bases, &opts, dialer.clone(), &acct, shared.clone(), &mut report).await
        }
    };
    shared.stop.cancel();
    sampler_stop.cancel();
    let _ = sampler.await;
    report.quic_connections = dialer.quic_connections();
    report.quic_rx = dialer.quic_rx();
    dialer.close();
    report.bench_rss_peak_mb = mb(acct.peak_bench_kib.load(Ordering::Relaxed));
    result?;
    Ok(report)
}

/// Starts `n` tasks at an even pace over the ramp, at most [`MAX_CONNECTING`] connecting
/// at once (each holds its permit until it is connected).
fn ramp_spawn<T, F, Fut>(
    set: &mut JoinSet<T>,
    n: usize,
    ramp: Duration,
    stop: &tokio_util::sync::CancellationToken,
    make: F,
) where
    T: Default + Send + 'static,
    F: Fn(usize, OwnedSemaphorePermit) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(MAX_CONNECTING));
    let make = Arc::new(make);
    let t0 = Instant::now();
    for i in 0..n {
        let at = t0 + ramp.mul_f64(i as f64 / n.max(1) as f64);
        let (sem, stop, make) = (sem.clone(), stop.clone(), make.clone());
        set.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return T::default(),
                _ = tokio::time::sleep_until(at) => {}
            }
            let permit = tokio::select! {
                _ = stop.cancelled() => return T::default(),
                p = sem.acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return T::default(),
                },
            };
            make(i, permit).await
        });
    }
}

async fn wait_settled(shared: &Shared, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_progress(shared: Arc<Shared>, total: usize, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last_bytes = shared.bytes.load(Ordering::Relaxed);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let bytes = shared.bytes.load(Ordering::Relaxed);
            let now = Instant::now();
            let mbps = (bytes - last_bytes) as f64 * 8.0 / 1e6 / (now - last).as_secs_f64().max(1e-3);
            (last_bytes, last) = (bytes, now);
            eprintln!(
                "[{:>4.0}s] {} {}/{} playing, {} failed, {} dropped | {:.1} Mbit/s | skips {}",
                start.elapsed().as_secs_f64(),
                if shared.measuring.load(Ordering::Relaxed) { "measure" } else { "ramp   " },
                shared.connected.load(Ordering::Relaxed),
                total,
                shared.failed.load(Ordering::Relaxed),
                shared.dropped.load(Ordering::Relaxed),
                mbps,
                shared.skips.load(Ordering::Relaxed),
            );
        }
    });
}

async fn run_play(
    args: &BenchArgs,
    (base, play_base): (&StreamUrl, &StreamUrl),
    opts: &qrelay_proto::client::ClientOptions,
    dialer: Arc<Dialer>,
    acct: &Accounting,
    shared: Arc<Shared>,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.mode = "play";
    report.players_total = args.players;
    let urls: Vec<Arc<StreamUrl>> = (0..args.streams).map(|i| Arc::new(stream_url(base, i))).collect();

    // Publishers first; players join once every stream has a keyframe out.
    let mut publishers = JoinSet::new();
    if !args.no_publish {
        let source = match &args.publish {
            Some(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?;
                let tags = qrelay_proto::client::read_flv_tags(tokio::io::BufReader::new(file))
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                anyhow::ensure!(!tags.is_empty(), "{} has no tags", path.display());
                Source::Flv(Arc::new(tags))
            }
            None => {
                let plan = synth::VideoPlan::new(args.bitrate, args.fps, args.gop);
                let audio = args.with_audio();
                let audio_mbps = if audio { synth::AUDIO_BITRATE as f64 / 1e6 } else { 0.0 };
                report.source_mbps = Some(plan.bitrate_bps() / 1e6 + audio_mbps);
                Source::Synthetic { plan, audio }
            }
        };
        for url in &urls {
            let (url, opts, source, shared) = ((**url).clone(), opts.clone(), source.clone(), shared.clone());
            publishers.spawn(async move {
                let key = url.key.clone();
                load::publisher(url, opts, source, shared).await.map_err(|e| format!("publisher {key}: {e}"))
            });
        }
        let deadline = Instant::now() + load::CONNECT_TIMEOUT;
        while shared.publishers_live.load(Ordering::Relaxed) < args.streams {
            if let Some(done) = publishers.try_join_next() {
                let err = match done {
                    Ok(Ok(())) => "publisher ended early".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("{err}");
            }
            anyhow::ensure!(Instant::now() < deadline, "publishers did not start in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the keyframe reach the server's cache.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rss_base = acct.server_mem();
    let progress_stop = tokio_util::sync::CancellationToken::new();
    if !args.quiet {
        spawn_progress(shared.clone(), args.players, progress_stop.clone());
    }
    let _progress_guard = progress_stop.clone().drop_guard();

    let mut players: JoinSet<PlayerOutcome> = JoinSet::new();
    let session = player_session();
    let ramp = args.ramp(args.players);
    let player_urls: Vec<Arc<StreamUrl>> =
        (0..args.streams).map(|i| Arc::new(stream_url(play_base, i))).collect();
    let player_shared = shared.clone();
    let churn_dialer = dialer.clone();
    ramp_spawn(&mut players, args.players, ramp, &shared.stop, move |i, permit| {
        let url = player_urls[i % player_urls.len()].clone();
        load::player(url, dialer.clone(), session, player_shared.clone(), permit)
    });
    wait_settled(&shared, args.players, ramp + load::CONNECT_TIMEOUT + Duration::from_secs(2)).await;
    // Churn starts before the settle pause, so the window sees it at its steady rate.
    let churn_shared = Arc::new(Shared::default());
    let churn = (args.churn_rate > 0.0).then(|| {
        let churn_dialer = churn_dialer.clone();
        spawn_churn(args, urls.clone(), churn_dialer, session, churn_shared.clone())
    });
    tokio::time::sleep(SETTLE).await;

    // The measurement window.
    let bench_cpu0 = proc::Pid::Me.cpu().map(|c| c.total()).unwrap_or(0);
    let server_cpu0 = acct.server_cpu();
    let host0 = proc::host_cpu();
    let bytes0 = shared.bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    let window = Duration::from_secs_f64(args.duration);
    let mut publisher_error = None;
    tokio::select! {
        _ = tokio::time::sleep(window) => {}
        Some(done) = publishers.join_next() => {
            publisher_error = Some(match done {
                Ok(Ok(())) => "publisher ended early".to_owned(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            });
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let bytes = shared.bytes.load(Ordering::Relaxed) - bytes0;
    let server_cpu1 = acct.server_cpu();
    let bench_cpu1 = proc::Pid::Me.cpu().map(|c| c.total()).unwrap_or(0);
    let host1 = proc::host_cpu();
    let rss_end = acct.server_mem();
    let playing_at_end = shared.connected.load(Ordering::Relaxed);

    // Stop everyone and collect.
    churn_shared.stop.cancel();
    if let Some(churn) = churn {
        let joined = churn.await.unwrap_or(0);
        report.churn = Some(ChurnUsage {
            rate: args.churn_rate,
            hold_ms: args.churn_hold_ms,
            joined,
            played: churn_shared.started.load(Ordering::Relaxed),
            failed: churn_shared.failed.load(Ordering::Relaxed),
        });
    }
    shared.stop.cancel();
    let mut outcomes = Vec::with_capacity(args.players);
    while let Some(r) = players.join_next().await {
        if let Ok(o) = r {
            outcomes.push(o);
        }
    }
    while publishers.join_next().await.is_some() {}

    report.duration_s = elapsed;
    report.delivered_bytes = bytes;
    report.delivered_mbps = bytes as f64 * 8.0 / 1e6 / elapsed.max(1e-6);
    report.frames_sent = shared.frames_sent.load(Ordering::Relaxed);
    let (mut first, mut first_key) = (Histogram::default(), Histogram::default());
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut max_gap_us = 0;
    for o in &outcomes {
        report.players_started += usize::from(o.started);
        report.players_ok += usize::from(o.ok());
        report.skips += o.tracker.skips;
        max_gap_us = max_gap_us.max(o.tracker.max_gap_us);
        if let Some(us) = o.tracker.first_frame_us() {
            first.record(u32::try_from(us).unwrap_or(u32::MAX));
        }
        if let Some(us) = o.tracker.first_key_delay_us() {
            first_key.record(u32::try_from(us).unwrap_or(u32::MAX));
        }
        if let Some(e) = &o.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    report.players_failed = shared.failed.load(Ordering::Relaxed);
    report.players_dropped = shared.dropped.load(Ordering::Relaxed);
    report.max_gap_ms = max_gap_us as f64 / 1000.0;
    report.first_frame_ms = first.percentiles_ms();
    report.first_keyframe_ms = first_key.percentiles_ms();
    report.relay_latency_ms = shared.latency.lock().unwrap_or_else(|e| e.into_inner()).percentiles_ms();
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    report.errors = errors;
    report.bench_cpu_s = proc::ticks_to_secs(bench_cpu1.saturating_sub(bench_cpu0), acct.hz);
    report.bench_cpu_pct = report.bench_cpu_s / elapsed.max(1e-6) * 100.0;
    report.host_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let (Some(h0), Some(h1)) = (host0, host1) {
        let total = h1.total.saturating_sub(h0.total).max(1) as f64;
        report.host_cpu_pct = Some(h1.busy.saturating_sub(h0.busy) as f64 / total * 100.0);
        report.host_softirq_pct = Some(h1.softirq.saturating_sub(h0.softirq) as f64 / total * 100.0);
    }
    if let (Some(c0), Some(c1)) = (server_cpu0, server_cpu1) {
        let cpu_s = proc::ticks_to_secs(c1.saturating_sub(c0), acct.hz);
        let gbit = bytes as f64 * 8.0 / 1e9;
        let base = rss_base.map_or(0, |m| m.rss_kib);
        let end = rss_end.unwrap_or_default();
        report.server = Some(ServerUsage {
            cpu_s,
            cpu_pct: cpu_s / elapsed.max(1e-6) * 100.0,
            rss_base_mb: mb(base),
            rss_end_mb: mb(end.rss_kib),
            rss_peak_mb: mb(acct.peak_server_kib.load(Ordering::Relaxed).max(end.rss_kib)),
            hwm_mb: mb(end.hwm_kib),
            rss_per_player_kib: (playing_at_end > 0)
                .then(|| (end.rss_kib as f64 - base as f64) / playing_at_end as f64),
            cpu_s_per_gbit: (gbit > 0.0).then(|| cpu_s / gbit),
        });
    }
    if let Some(e) = publisher_error {
        anyhow::bail!("{e}");
    }
    Ok(())
}

/// Players joining at `--churn-rate` per second, each closing its connection after
/// `--churn-hold-ms` (dropped mid-play, as a viewer closing a tab), until `shared.stop`.
/// Their measurements go to `shared`, apart from the steady players'. Returns how many
/// joined.
fn spawn_churn(
    args: &BenchArgs,
    urls: Vec<Arc<StreamUrl>>,
    dialer: Arc<Dialer>,
    session: SessionConfig,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<usize> {
    let every = Duration::from_secs_f64(1.0 / args.churn_rate);
    let hold = Duration::from_millis(args.churn_hold_ms);
    // Player numbers after the steady ones (they only pick the stream over TCP).
    let first = args.players;
    tokio::spawn(async move {
        let sem = Arc::new(Semaphore::new(MAX_CONNECTING));
        let mut set = JoinSet::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut joined = 0;
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Reap the finished ones so the set stays as large as the live churn.
            while set.try_join_next().is_some() {}
            let Ok(permit) = sem.clone().try_acquire_owned() else {
                // MAX_CONNECTING still connecting: the server is behind; count it as a
                // failed join rather than pile up.
                shared.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let i = first + joined;
            joined += 1;
            let url = urls[i % urls.len()].clone();
            let player = load::player(url, dialer.clone(), session, shared.clone(), permit);
            set.spawn(async move {
                let _ = tokio::time::timeout(hold, player).await;
            });
        }
        set.shutdown().await;
        joined
    })
}

async fn run_idle(
    args: &BenchArgs,
    n: usize,
    base: &StreamUrl,
    dialer: Arc<Dialer>,
    acct: &Accounting,
    shared: Arc<Shared>,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.mode = "idle";
    report.players_total = n;
    anyhow::ensure!(
        !matches!(*dialer, Dialer::Roqr(_)),
        "idle connections are measured over rtmp:// or rtmp+quic://...?mode=tunnel"
    );
    let before = acct.server_mem();
    let bench_cpu0 = proc::Pid::Me.cpu().map(|c| c.total()).unwrap_or(0);
    let t0 = Instant::now();
    let url = Arc::new(base.clone());
    let mut conns: JoinSet<IdleResult> = JoinSet::new();
    let ramp = args.ramp(n);
    let idle_shared = shared.clone();
    ramp_spawn(&mut conns, n, ramp, &shared.stop, move |_, permit| {
        let fut = load::idle(url.clone(), dialer.clone(), idle_shared.clone(), permit);
        async move { IdleResult(fut.await.err()) }
    });
    wait_settled(&shared, n, ramp + load::CONNECT_TIMEOUT + Duration::from_secs(2)).await;
    // Let allocations settle (buffers shrink, tasks park).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = acct.server_mem();
    let connected = shared.connected.load(Ordering::Relaxed);
    shared.stop.cancel();
    let mut errors: HashMap<String, usize> = HashMap::new();
    while let Some(r) = conns.join_next().await {
        if let Ok(IdleResult(Some(e))) = r {
            *errors.entry(e).or_default() += 1;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    report.players_started = connected;
    report.players_failed = shared.failed.load(Ordering::Relaxed);
    report.duration_s = elapsed;
    report.bench_cpu_s =
        proc::ticks_to_secs(proc::Pid::Me.cpu().map(|c| c.total()).unwrap_or(0) - bench_cpu0, acct.hz);
    report.bench_cpu_pct = report.bench_cpu_s / elapsed.max(1e-6) * 100.0;
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    report.errors = errors;
    let (b, a) = (before.unwrap_or_default().rss_kib, after.unwrap_or_default().rss_kib);
    report.idle = Some(IdleUsage {
        connections: connected,
        rss_before_mb: mb(b),
        rss_after_mb: mb(a),
        rss_per_conn_kib: (acct.has_server() && connected > 0)
            .then(|| (a as f64 - b as f64) / connected as f64),
    });
    Ok(())
}

#[derive(Debug, Default)]
struct IdleResult(Option<String>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys() {
        let base = StreamUrl::parse("rtmp://h/live/b").unwrap();
        assert_eq!(stream_url(&base, 0).key, "b");
        assert_eq!(stream_url(&base, 2).key, "b-2");
        let base = StreamUrl::parse("rtmp://h/live/b?token=x").unwrap();
        assert_eq!(stream_url(&base, 1).key, "b-1?token=x");
        assert_eq!(stream_url(&base, 1).session_id(), "live/b-1");
    }

    #[test]
    fn audio_is_on_unless_no_audio() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let parse = |extra: &[&str]| {
            let argv = ["bench", "--url", "rtmp://h/live/b"].iter().chain(extra);
            Cli::try_parse_from(argv).map(|c| c.args.with_audio())
        };
        assert_eq!(parse(&[]).ok(), Some(true));
        assert_eq!(parse(&["--audio"]).ok(), Some(true));
        assert_eq!(parse(&["--no-audio"]).ok(), Some(false));
        assert_eq!(parse(&["--no-audio", "--audio"]).ok(), Some(true), "the last one wins");
        assert_eq!(parse(&["--audio", "--no-audio"]).ok(), Some(false));
        assert!(parse(&["--publish", "a.flv", "--no-audio"]).is_err(), "a file has its own tracks");
        assert!(BenchArgs::new("rtmp://h/live/b").with_audio());
    }

    #[test]
    fn default_ramp() {
        let a = BenchArgs::new("rtmp://h/live/b");
        assert_eq!(a.ramp(100), Duration::from_millis(300));
        assert_eq!(a.ramp(5000), Duration::from_secs(3));
        let a = BenchArgs { ramp_ms: Some(10), ..a };
        assert_eq!(a.ramp(5000), Duration::from_millis(10));
    }
}
