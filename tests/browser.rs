//! Browser playback in a real browser: headless Chromium (driven by Node.js over the
//! DevTools pipe, tests/browser/drive.mjs) opens the relay's player page (over
//! WebTransport, and over HTTP-FLV), or a page running mpegts.js (a third-party HTTP-FLV
//! player), for a stream ffmpeg publishes live, and what the page reports is asserted: transport, pictures decoded in a 10 s
//! window, time to the first picture, latency. Screenshots are kept in the test's
//! output directory (target/tmp/browser-*.png).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context};
use common::*;
use serde_json::Value;
use tokio::process::Command;

/// Frames per second of the live test source.
const FPS: f64 = 30.0;
/// The window over which decoded pictures are counted.
const WINDOW_MS: f64 = 10_000.0;

/// A live 320x240 H.264 + AAC source published by ffmpeg (1 s GOP), for as long as it
/// runs: encoded as it goes, so its timestamps follow the wall clock as a camera's do.
fn live_publisher(url: &str) -> tokio::process::Command {
    ffmpeg([
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-f",
        "flv",
        url,
    ])
}

/// One sample of the element's attributes, `t` ms after navigation was asked for.
struct Sample {
    attrs: Value,
}

impl Sample {
    fn get(&self, name: &str) -> &str {
        self.attrs.get(name).and_then(Value::as_str).unwrap_or_default()
    }

    fn num(&self, name: &str) -> Option<f64> {
        self.attrs.get(name).and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_f64()))
    }
}

/// Runs the driver against `url` for `seconds`, sampling `selector`.
async fn drive(url: &str, selector: &str, seconds: u32, screenshot: &Path) -> Result<Vec<Sample>> {
    drive_with(url, selector, seconds, screenshot, None).await
}

/// [`drive`], running `before_load` in the page before its own scripts.
async fn drive_with(
    url: &str,
    selector: &str,
    seconds: u32,
    screenshot: &Path,
    before_load: Option<&str>,
) -> Result<Vec<Sample>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/drive.mjs");
    let mut cmd = Command::new("node");
    cmd.arg(script).args(["--url", url, "--selector", selector, "--seconds", &seconds.to_string()]);
    if let Some(js) = before_load {
        cmd.args(["--before-load", js]);
    }
    if url.starts_with("https://") {
        // What a viewer does once, clicking through the warning for the relay's
        // development certificate (a real one needs nothing).
        cmd.args(["--flag", "--ignore-certificate-errors"]);
    }
    let output = cmd.arg("--screenshot").arg(screenshot).stdin(Stdio::null()).kill_on_drop(true).output();
    let limit = Duration::from_secs(u64::from(seconds) + 40);
    let output = tokio::time::timeout(limit, output).await.context("the browser driver hung")??;
    ensure!(output.status.success(), "browser driver failed: {}", stderr_text(&output));
    let report: Value = serde_json::from_slice(&output.stdout).context("driver output is not JSON")?;
    for line in report["console"].as_array().into_iter().flatten() {
        eprintln!("browser console: {}", line.as_str().unwrap_or_default());
    }
    let samples = report["samples"].as_array().context("no samples")?;
    Ok(samples
        .iter()
        .filter(|s| s["attrs"].is_object())
        .map(|s| Sample { attrs: s["attrs"].clone() })
        .collect())
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{name}.png"))
}

/// Pictures decoded over the 10 s after the first picture, from the samples' page
/// clock (`__now`, ms since the page's time origin).
fn decoded_in_window(samples: &[Sample], counter: &str) -> Result<(f64, f64)> {
    let first = samples
        .iter()
        .find(|s| s.num(counter).is_some_and(|n| n > 0.0))
        .context("no picture was ever decoded")?;
    let t0 = first.num("__now").context("no page clock")?;
    let end = samples
        .iter()
        .find(|s| s.num("__now").is_some_and(|t| t >= t0 + WINDOW_MS))
        .context("the page did not play for 10 s")?;
    let span = end.num("__now").unwrap_or_default() - t0;
    Ok((end.num(counter).unwrap_or_default() - first.num(counter).unwrap_or_default(), span))
}

/// Opens the player page (its transport chosen by itself, `auto`) and checks it plays
/// over `transport`; `before_load` runs in the page first.
async fn the_player_page_plays(transport: &str, key: &str, before_load: Option<&str>) -> Result {
    the_page_plays_from("http", transport, key, before_load).await
}

/// [`the_player_page_plays`], the page loaded over `scheme` (http or https).
async fn the_page_plays_from(scheme: &str, transport: &str, key: &str, before_load: Option<&str>) -> Result {
    let srv = start_server().await?;
    let _publisher = spawn(&mut live_publisher(&srv.url("rtmp", key)))?;
    srv.wait_live(key).await?;
    let page = format!("{scheme}://{}/play/live/{key}", srv.addr);
    let shot = screenshot_path(key);
    let samples = drive_with(&page, "qrelay-player", 13, &shot, before_load).await?;
    let last = samples.last().context("no samples")?;
    eprintln!("last sample: {}", last.attrs);
    ensure!(last.get("data-transport") == transport, "transport: {}", last.attrs);
    ensure!(last.get("data-state") == "playing", "state: {}", last.attrs);
    ensure!(last.get("data-codec").starts_with("avc1."), "codec: {}", last.attrs);
    let first_picture = last.num("data-first-frame-ms").context("no first picture")?;
    // Over HTTPS the page itself costs a TLS handshake before WebTransport's own.
    let first_limit = if scheme == "https" { 2000.0 } else { 1000.0 };
    ensure!(first_picture <= first_limit, "first picture {first_picture} ms after the page load");
    let (decoded, span) = decoded_in_window(&samples, "data-frames-decoded")?;
    let sent = FPS * span / 1000.0;
    ensure!(decoded >= 0.95 * sent, "decoded {decoded} pictures of {sent:.0} sent in {span:.0} ms");
    // The relay's clock and the browser's are this machine's: the latency is real.
    let latency = last.num("data-latency-ms").context("no latency")?;
    ensure!((0.0..1000.0).contains(&latency), "latency {latency} ms");
    eprintln!(
        "{transport}: first picture {first_picture} ms, {decoded} of {sent:.0} pictures decoded, relay-to-display \
         latency p50 {} ms p99 {} ms",
        last.get("data-latency-p50-ms"),
        last.get("data-latency-p99-ms")
    );
    ensure!(std::fs::metadata(&shot)?.len() > 10_000, "screenshot too small to hold a picture");
    Ok(())
}

/// The page finds the relay's WebTransport port and certificate hash at
/// `/webtransport.json` and connects over QUIC, without the development CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_page_plays_webtransport_in_chromium() -> Result {
    bounded(the_player_page_plays("webtransport", "page-wt", None)).await
}

/// The page over HTTPS on the relay's one port, as a viewer on another machine opens it
/// (browsers decode only in secure contexts): it plays over WebTransport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_page_plays_over_https_too() -> Result {
    bounded(the_page_plays_from("https", "webtransport", "page-https", None)).await
}

/// A browser without WebTransport: the same page falls back to HTTP-FLV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_webtransport_the_page_falls_back_to_http_flv() -> Result {
    bounded(the_player_page_plays("http-flv", "page-flv", Some("delete window.WebTransport;"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpegts_js_plays_the_http_flv_url_in_chromium() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let key = "mpegts";
        let _publisher = spawn(&mut live_publisher(&srv.url("rtmp", key)))?;
        srv.wait_live(key).await?;
        let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/mpegts.html");
        ensure!(
            page.with_file_name("node_modules/mpegts.js/dist/mpegts.js").exists(),
            "mpegts.js is not installed (scripts/install-test-deps.sh fetches it)"
        );
        let url = format!("file://{}?src=http://{}/live/{key}.flv", page.display(), srv.addr);
        let samples = drive(&url, "#status", 13, &screenshot_path(key)).await?;
        let last = samples.last().context("no samples")?;
        eprintln!("last sample: {}", last.attrs);
        ensure!(last.get("data-state") == "playing", "mpegts.js: {}", last.attrs);
        ensure!(last.get("data-width") == "320", "video width: {}", last.attrs);
        // Played on, not stuck on the first GOP.
        let (frames, span) = decoded_in_window(&samples, "data-frames")?;
        ensure!(frames >= 0.9 * FPS * span / 1000.0, "mpegts.js showed {frames} frames in {span:.0} ms");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_previews_each_live_stream() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let key = "preview";
        let _publisher = spawn(&mut live_publisher(&srv.url("rtmp", key)))?;
        srv.wait_live(key).await?;
        let samples = drive(&srv.api("/"), "qrelay-player", 5, &screenshot_path("status")).await?;
        let last = samples.last().context("no preview on the status page")?;
        let src = format!("http://127.0.0.1:{}/live/{key}.flv", srv.addr.port());
        ensure!(last.get("src") == src, "preview src: {}", last.attrs);
        ensure!(last.get("data-state") == "playing", "preview: {}", last.attrs);
        ensure!(last.num("data-frames-decoded").is_some_and(|n| n >= 30.0), "preview: {}", last.attrs);
        Ok(())
    })
    .await
}
