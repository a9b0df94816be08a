//! Soak (issue "Hardening"): the release relay as a separate process, one publisher and
//! 200 players (half over TCP, half over the QUIC tunnel) joining and leaving at random
//! for `SOAK_SECS` seconds (default 600). Run by `scripts/soak.sh`; `#[ignore]`d so the
//! normal test run skips it.
//!
//! Every 30 s it prints the relay's RSS (`/proc/PID/status`) as a `SOAK` table row, and it
//! asserts:
//! - memory stays flat: RSS at the end ≤ RSS at the first sample after warm-up (30 s)
//!   × 1.2 + 16 MiB;
//! - every player session received every frame, in order, from its first keyframe for as
//!   long as it stayed; the players that stayed for the whole run received every frame up
//!   to the last one sent;
//! - no connect failed, and the relay never logged a panic.

mod common;
mod support_hostile;

use common::strip_ansi;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context};
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::rtmp::session::ClientMode;
use qrelay::transport::tls::{Trust, DEV_CA_FILE};
use qrelay::url::StreamUrl;
use support_hostile::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PLAYERS: usize = 200;
/// One player in this many stays for the whole run; the others come and go.
const STAYER_EVERY: usize = 4;
/// RSS is sampled (and printed) this often; the first sample is the post-warm-up baseline.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// The flatness bound: end ≤ baseline × GROWTH_FACTOR + GROWTH_SLACK.
const GROWTH_FACTOR: f64 = 1.2;
const GROWTH_SLACK_KIB: u64 = 16 * 1024;
/// A coming-and-going player stays this long (seconds), then pauses before rejoining.
const STAY_SECS: (u64, u64) = (2, 40);
const PAUSE_MS: (u64, u64) = (0, 3000);
/// Churners start no new session this close to the end (the publisher leaves then).
const NO_JOIN_BEFORE_END: Duration = Duration::from_secs(5);

/// The relay process; killed on drop.
struct RelayProcess {
    child: Child,
    pid: String,
    addr: std::net::SocketAddr,
    ca: PathBuf,
    /// Lines of its log with a warning or error, and whether it ever panicked.
    log: Arc<Mutex<LogSummary>>,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Default)]
struct LogSummary {
    warnings: usize,
    errors: usize,
    panicked: bool,
    samples: Vec<String>,
    /// How often each `reason=` of a warning came up.
    reasons: std::collections::BTreeMap<String, usize>,
}

async fn start_relay() -> Result<RelayProcess> {
    let dir = tempfile::Builder::new().prefix("qrelay-soak-").tempdir()?;
    let cert_dir = dir.path().join("certs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrelay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "off", "--cert-dir"])
        .arg(&cert_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting target/release/qrelay (scripts/soak.sh builds it)")?;
    let pid = child.id().context("relay pid")?.to_string();
    let mut lines = BufReader::new(child.stderr.take().context("relay stderr")?).lines();
    // The port is the one the relay reports (it binds port 0 for TCP and UDP together).
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let line = strip_ansi(&line);
            if line.contains("listening") {
                if let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")) {
                    return Ok(addr.parse()?);
                }
            }
        }
        Err(anyhow!("the relay exited before listening"))
    })
    .await
    .context("the relay did not report its address")??;
    let log = Arc::new(Mutex::new(LogSummary::default()));
    let summary = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let line = strip_ansi(&line);
            let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
            s.panicked |= line.contains("panicked");
            let warn = line.contains(" WARN ");
            let error = line.contains(" ERROR ");
            s.warnings += usize::from(warn);
            s.errors += usize::from(error);
            if let Some((_, reason)) = line.split_once("reason=").filter(|_| warn || error) {
                *s.reasons.entry(reason.to_owned()).or_default() += 1;
            } else if (warn || error || line.contains("panicked")) && s.samples.len() < 10 {
                s.samples.push(line);
            }
        }
    });
    Ok(RelayProcess { child, pid, addr, ca: cert_dir.join(DEV_CA_FILE), log, _dir: dir })
}

/// One player session's outcome.
#[derive(Debug)]
struct Session {
    slot: usize,
    quic: bool,
    stayer: bool,
    checker: SeqChecker,
    end: std::result::Result<PlayEnd, String>,
}

/// Counters shared by the players, for the table.
#[derive(Debug, Default)]
struct Live {
    connected: AtomicUsize,
    sessions: AtomicUsize,
    connect_failures: AtomicUsize,
}

struct Slot {
    index: usize,
    quic: bool,
    stayer: bool,
    url: StreamUrl,
    opts: ClientOptions,
    live: Arc<Live>,
    /// When churners stop joining.
    last_join: Instant,
    /// Cancelled when the run is over: everyone leaves (stayers wait for the stream end).
    over: CancellationToken,
}

/// Runs one player slot: a stayer plays once until the stream ends; a churner joins,
/// stays a random while, leaves (politely or by dropping the connection) and rejoins.
async fn run_slot(slot: Slot) -> Vec<Session> {
    let mut rng = Rng::new(slot.index as u64 + 1);
    let mut sessions = Vec::new();
    // Spread the first joins over the first 5 s.
    tokio::time::sleep(Duration::from_millis(25 * slot.index as u64)).await;
    loop {
        if !slot.stayer && (Instant::now() >= slot.last_join || slot.over.is_cancelled()) {
            break;
        }
        let mut client = match RtmpClient::connect(&slot.url, ClientMode::Play, &slot.opts).await {
            Ok(c) => c,
            Err(e) => {
                slot.live.connect_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("SOAK-ERR slot {} connect failed: {e}", slot.index);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        slot.live.connected.fetch_add(1, Ordering::Relaxed);
        let leave = CancellationToken::new();
        if !slot.stayer {
            let stay = Duration::from_secs(rng.range(STAY_SECS.0, STAY_SECS.1));
            let (leave, over) = (leave.clone(), slot.over.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(stay) => leave.cancel(),
                    _ = over.cancelled() => leave.cancel(),
                }
            });
        }
        let mut checker = SeqChecker::default();
        let end = play_frames(&mut client, &mut checker, &leave).await.map_err(|e| format!("{e:#}"));
        slot.live.connected.fetch_sub(1, Ordering::Relaxed);
        slot.live.sessions.fetch_add(1, Ordering::Relaxed);
        if matches!(end, Ok(PlayEnd::Left)) && rng.range(0, 2) == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.finish()).await;
        } else {
            drop(client);
        }
        let ended = !matches!(end, Ok(PlayEnd::Left));
        sessions.push(Session { slot: slot.index, quic: slot.quic, stayer: slot.stayer, checker, end });
        if slot.stayer || ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(PAUSE_MS.0, PAUSE_MS.1))).await;
    }
    sessions
}

fn row(t: Duration, rss: u64, live: &Live, note: &str) -> String {
    format!(
        "SOAK {:>6.0} s  RSS {:>8.1} MiB  players {:>3}  sessions {:>6}  {note}",
        t.as_secs_f64(),
        mib(rss),
        live.connected.load(Ordering::Relaxed),
        live.sessions.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: run by scripts/soak.sh (SOAK_SECS seconds, default 600)"]
async fn soak_one_publisher_200_players() -> Result {
    let secs: u64 = std::env::var("SOAK_SECS").ok().map(|s| s.parse()).transpose()?.unwrap_or(600);
    ensure!(secs >= 60, "SOAK_SECS must be at least 60 (a warm-up sample and an end sample)");
    let run = Duration::from_secs(secs);
    tokio::time::timeout(run + Duration::from_secs(180), soak(run)).await.context("the soak overran")?
}

async fn soak(run: Duration) -> Result {
    let mut relay = start_relay().await?;
    println!(
        "SOAK relay pid {} on {}, {} s, {PLAYERS} players (half QUIC)",
        relay.pid,
        relay.addr,
        run.as_secs()
    );
    let opts = ClientOptions { trust: Trust::CaFile(relay.ca.clone()), ..ClientOptions::default() };
    let tcp_url = StreamUrl::parse(&format!("rtmp://{}/live/soak", relay.addr))?;
    let quic_url = StreamUrl::parse(&format!("rtmp+quic://{}/live/soak", relay.addr))?;

    let start = Instant::now();
    let stop = CancellationToken::new();
    let publisher = RtmpClient::connect(&tcp_url, ClientMode::Publish, &opts).await?;
    let publisher = tokio::spawn(publish_frames(publisher, stop.clone()));

    let live = Arc::new(Live::default());
    let over = CancellationToken::new();
    let slots: Vec<_> = (0..PLAYERS)
        .map(|index| {
            let quic = index % 2 == 1;
            let slot = Slot {
                index,
                quic,
                stayer: index % STAYER_EVERY == 0,
                url: if quic { quic_url.clone() } else { tcp_url.clone() },
                opts: opts.clone(),
                live: live.clone(),
                last_join: start + run - NO_JOIN_BEFORE_END,
                over: over.clone(),
            };
            tokio::spawn(run_slot(slot))
        })
        .collect();

    // The RSS table.
    let rss0 = rss_kib(&relay.pid)?;
    println!("{}", row(Duration::ZERO, rss0, &live, "(start)"));
    let mut samples = Vec::new();
    let mut at = start + SAMPLE_EVERY;
    while at < start + run {
        tokio::time::sleep_until(at).await;
        ensure!(relay.child.try_wait()?.is_none(), "the relay exited");
        let rss = rss_kib(&relay.pid)?;
        let note = if samples.is_empty() { "(baseline after warm-up)" } else { "" };
        println!("{}", row(at - start, rss, &live, note));
        samples.push(rss);
        at += SAMPLE_EVERY;
    }
    tokio::time::sleep_until(start + run).await;
    let end_rss = rss_kib(&relay.pid)?;
    println!("{}", row(start.elapsed(), end_rss, &live, "(end, under load)"));

    // Stop: the publisher leaves, stayers see the end of the stream, churners leave.
    stop.cancel();
    let sent =
        tokio::time::timeout(Duration::from_secs(15), publisher).await.context("publisher stuck")???;
    over.cancel();
    let mut sessions = Vec::new();
    for s in slots {
        sessions
            .extend(tokio::time::timeout(Duration::from_secs(30), s).await.context("a player is stuck")??);
    }
    let drained = rss_kib(&relay.pid)?;
    println!("{}", row(start.elapsed(), drained, &live, "(publisher and players gone)"));
    let hwm = std::fs::read_to_string(format!("/proc/{}/status", relay.pid))?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        .unwrap_or_default();

    // Checks.
    let baseline = *samples.first().context("no sample after warm-up")?;
    let allowed = (baseline as f64 * GROWTH_FACTOR) as u64 + GROWTH_SLACK_KIB;
    let (mut bad, mut stayers_ok, mut total_frames) = (Vec::new(), 0, 0u64);
    for s in &sessions {
        total_frames += s.checker.received;
        let problem = match (&s.end, &s.checker.error) {
            (Err(e), _) => Some(e.clone()),
            (_, Some(e)) => Some(e.clone()),
            _ if s.stayer && s.end != Ok(PlayEnd::StreamEnded) => Some("stayer did not see the end".into()),
            _ if s.stayer && s.checker.last() != sent.checked_sub(1) => Some(format!(
                "stayer's last frame {:?}, publisher's last {}",
                s.checker.last(),
                sent.saturating_sub(1)
            )),
            _ if s.stayer && s.checker.first.is_none() => Some("stayer got no keyframe".into()),
            _ => None,
        };
        match problem {
            Some(p) => bad.push(format!("slot {} ({}): {p}", s.slot, if s.quic { "quic" } else { "tcp" })),
            None if s.stayer => stayers_ok += 1,
            None => {}
        }
    }
    let log = std::mem::take(&mut *relay.log.lock().unwrap_or_else(|e| e.into_inner()));
    println!(
        "SOAK summary: {sent} frames published; {} player sessions, {total_frames} frames checked; \
         {stayers_ok}/{} stayers got every frame; {} connect failures; relay log {} warnings, {} errors",
        sessions.len(),
        PLAYERS / STAYER_EVERY,
        live.connect_failures.load(Ordering::Relaxed),
        log.warnings,
        log.errors,
    );
    println!(
        "SOAK RSS: baseline {:.1} MiB at {} s, end {:.1} MiB, allowed ≤ {:.1} MiB (baseline × {GROWTH_FACTOR} + {} MiB), \
         high-water mark {hwm}",
        mib(baseline),
        SAMPLE_EVERY.as_secs(),
        mib(end_rss),
        mib(allowed),
        GROWTH_SLACK_KIB / 1024,
    );
    for (reason, n) in &log.reasons {
        println!("SOAK closed with {reason}: {n}");
    }
    for line in &log.samples {
        println!("SOAK log sample: {line}");
    }
    for b in bad.iter().take(10) {
        println!("SOAK problem: {b}");
    }
    ensure!(!log.panicked, "the relay panicked");
    ensure!(bad.is_empty(), "{} player sessions had problems, first: {}", bad.len(), bad[0]);
    ensure!(stayers_ok == PLAYERS / STAYER_EVERY, "only {stayers_ok} stayers finished cleanly");
    ensure!(live.connect_failures.load(Ordering::Relaxed) == 0, "players failed to connect");
    ensure!(
        end_rss <= allowed,
        "relay RSS grew from {:.1} MiB to {:.1} MiB (allowed {:.1} MiB)",
        mib(baseline),
        mib(end_rss),
        mib(allowed)
    );
    relay.child.kill().await?;
    Ok(())
}
