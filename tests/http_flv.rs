//! HTTP on the relay's one TCP port, end to end on loopback: HTTP-FLV players (ffmpeg and
//! a raw socket) against an ffmpeg publisher, byte for byte; the response head; refusals
//! with their status, reason text and counter while a live player keeps receiving; a
//! slowloris closed at the handshake deadline; CORS preflight and the player's files;
//! play tokens in the query; HTTPS on the same port; HTTP-FLV players in the control API.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use common::*;
use qrelay::auth::token::{mint, Secret};
use qrelay::auth::{AuthMode, TokenRole};
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::media::flv::{FlvReader, FlvTag};
use qrelay::media::frame::{inspect_audio, inspect_video, MediaKind};
use qrelay::reason::Reason;
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::tls::{rtmps_client_config, Trust};
use qrelay::url::StreamUrl;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Generous bound for a 4 s file published in real time.
const PUBLISH_LIMIT: Duration = Duration::from_secs(20);
/// How long a player may take to notice the end of its stream.
const END_LIMIT: Duration = Duration::from_secs(5);
/// How long a whole short answer (a refusal, a page) may take.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// Largest tag the test reader accepts.
const MAX_TAG: usize = 16 << 20;
/// The FLV file header and PreviousTagSize0.
const FLV_HEADER_LEN: usize = 13;

/// The files the relay serves, with their content types.
const ASSETS: [(&str, &str); 3] =
    [("/player.js", "text/javascript"), ("/play/live/x", "text/html"), ("/play/live/x?token=t", "text/html")];

const SECRET: &str = "http-flv-secret-0123456789abcdef";
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client over any byte stream (TCP or TLS)
// ---------------------------------------------------------------------------------------

/// A response head as received.
#[derive(Debug, Clone)]
struct Head {
    /// `HTTP/1.1 200 OK`.
    status_line: String,
    status: u16,
    /// In order, as sent.
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of `name`, compared case-insensitively.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Parses the head's text (without its blank line).
    fn parse(text: &str) -> Result<Self> {
        let mut lines = text.split("\r\n");
        let status_line = lines.next().context("empty response head")?.to_owned();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line `{status_line}`"))?;
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(':').with_context(|| format!("bad header line `{l}`"))?;
                Ok((name.to_owned(), value.trim().to_owned()))
            })
            .collect::<Result<_>>()?;
        Ok(Self { status_line, status, headers })
    }
}

/// A whole response: the connection closes after every answer of the relay.
#[derive(Debug)]
struct Reply {
    head: Head,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` with a Host header.
fn get_request(path: &str) -> Vec<u8> {
    request("GET", path, &[])
}

/// `method path` with a Host header and `headers`, no body.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Reads until a whole response head is in; returns it and the body bytes read with it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = Head::parse(std::str::from_utf8(&buf[..end]).context("response head not UTF-8")?)?;
            return Ok((head, buf[end + 4..].to_vec()));
        }
        ensure!(buf.len() < 64 * 1024, "no end of the response head in 64 KiB");
        let n = stream.read(&mut chunk).await.context("reading the response head")?;
        ensure!(n > 0, "connection closed before a whole response head ({} bytes)", buf.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` over `stream` and reads the answer to the end of the connection.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Result<Reply> {
    let read = async {
        stream.write_all(request).await.context("sending the request")?;
        let (head, mut body) = read_head(&mut stream).await?;
        stream.read_to_end(&mut body).await.context("reading the body")?;
        Ok(Reply { head, body })
    };
    tokio::time::timeout(ANSWER_LIMIT, read).await.context("no whole answer in time")?
}

/// Sends raw bytes on a new TCP connection to the relay and reads the whole answer.
async fn send(addr: SocketAddr, request: &[u8]) -> Result<Reply> {
    exchange(TcpStream::connect(addr).await?, request).await
}

/// Fails unless the answer has `status` and a text body containing `reason`.
fn expect_refusal(reply: &Reply, status: u16, reason: &str) -> Result {
    ensure!(
        reply.head.status == status && reply.text().contains(reason),
        "expected {status} with `{reason}`, got `{}` with `{}`",
        reply.head.status_line,
        reply.text()
    );
    ensure!(
        reply.head.header("Content-Type").is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        reply.head
    );
    ensure!(reply.head.header("Connection") == Some("close"), "{:?}", reply.head);
    ensure!(
        reply.head.header("Content-Length") == Some(reply.body.len().to_string().as_str()),
        "Content-Length differs from the body's {} bytes: {:?}",
        reply.body.len(),
        reply.head
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// HTTP-FLV players
// ---------------------------------------------------------------------------------------

/// An HTTP-FLV player over any byte stream.
struct FlvPlayer<S> {
    stream: S,
    head: Head,
    flv: FlvReader,
    /// The body's first bytes (the FLV file header), kept for assertions.
    prefix: Vec<u8>,
    /// Whether the body ended (the relay closed the connection).
    ended: bool,
    /// Whether it ended inside a tag.
    cut: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FlvPlayer<S> {
    /// Asks for `path` and reads the response head (it comes once the stream is live).
    async fn get(mut stream: S, path: &str) -> Result<Self> {
        stream.write_all(&get_request(path)).await?;
        Self::answer(stream).await
    }

    /// Reads the response head to a request already sent.
    async fn answer(mut stream: S) -> Result<Self> {
        let (head, rest) = read_head(&mut stream).await?;
        let mut player =
            Self { stream, head, flv: FlvReader::new(MAX_TAG), prefix: Vec::new(), ended: false, cut: false };
        player.take(&rest);
        Ok(player)
    }

    /// Body bytes in.
    fn take(&mut self, bytes: &[u8]) {
        let want = FLV_HEADER_LEN.saturating_sub(self.prefix.len()).min(bytes.len());
        self.prefix.extend_from_slice(&bytes[..want]);
        self.flv.push(bytes);
    }

    /// The next tag; `None` once the body ended (`cut` tells whether inside a tag).
    async fn next_tag(&mut self) -> Result<Option<FlvTag>> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(tag) = self.flv.next_tag()? {
                return Ok(Some(tag));
            }
            if self.ended {
                return Ok(None);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                self.cut = self.flv.finish().is_err();
                self.ended = true;
            }
            self.take(&chunk[..n]);
        }
    }

    /// Every tag to the end of the body.
    async fn read_to_end(&mut self) -> Result<Vec<FlvTag>> {
        let mut tags = Vec::new();
        while let Some(tag) = self.next_tag().await? {
            tags.push(tag);
        }
        Ok(tags)
    }

    /// Tags up to and including the `n`th video picture (sequence headers not counted).
    async fn read_pictures(&mut self, n: usize) -> Result<Vec<FlvTag>> {
        let mut tags = Vec::new();
        let mut pictures = 0;
        while pictures < n {
            let tag = self
                .next_tag()
                .await?
                .with_context(|| format!("the body ended after {pictures} pictures"))?;
            if tag.kind == MediaKind::Video && !inspect_video(&tag.payload).sequence_header {
                pictures += 1;
            }
            tags.push(tag);
        }
        Ok(tags)
    }
}

/// `/live/{key}.flv`.
fn flv_path(key: &str) -> String {
    format!("/live/{key}.flv")
}

/// `http://127.0.0.1:PORT/live/{key}.flv`.
fn flv_url(srv: &TestServer, key: &str) -> String {
    format!("http://{}{}", srv.addr, flv_path(key))
}

/// An HTTP-FLV player reading in a task of its own, counting the tags it got. Its body
/// may end inside a tag (the control API ends a player wherever its writes are).
struct Watcher {
    tags: Arc<AtomicU64>,
    local: SocketAddr,
    task: JoinHandle<Result<(Head, Vec<FlvTag>)>>,
}

impl Watcher {
    /// Connects and asks for `path`.
    async fn start(addr: SocketAddr, path: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let local = stream.local_addr()?;
        let tags = Arc::new(AtomicU64::new(0));
        let count = tags.clone();
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            let mut player = FlvPlayer::get(stream, &path).await?;
            ensure!(player.head.status == 200, "{:?}", player.head);
            let mut all = Vec::new();
            while let Some(tag) = player.next_tag().await? {
                all.push(tag);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok((player.head, all))
        });
        Ok(Self { tags, local, task })
    }

    /// Waits until the player got `more` tags beyond what it has now.
    async fn wait_more(&self, more: u64, what: &str) -> Result {
        let waited = wait_more(&self.tags, more, what).await;
        ensure!(waited.is_ok() || !self.task.is_finished(), "the HTTP-FLV player's body ended {what}");
        waited
    }

    /// Waits for the player's body to end.
    async fn finish(mut self) -> Result<(Head, Vec<FlvTag>)> {
        tokio::time::timeout(END_LIMIT, &mut self.task).await.context("the HTTP-FLV body did not end")??
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `count` grew by `more`.
async fn wait_more(count: &AtomicU64, more: u64, what: &str) -> Result {
    let target = count.load(Ordering::Relaxed) + more;
    wait_until(&format!("{more} more tags {what}"), Duration::from_secs(10), || {
        (count.load(Ordering::Relaxed) >= target).then_some(())
    })
    .await
}

/// An RTMP player (the project's client) of `live/{key}` in a task of its own, counting
/// the media messages it got; aborted when the handle drops.
async fn rtmp_watcher(srv: &TestServer, key: &str) -> Result<(Arc<AtomicU64>, AbortOnDrop)> {
    let url = StreamUrl::parse(&srv.url("rtmp", key))?;
    let options = ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() };
    let mut client = RtmpClient::connect(&url, ClientMode::Play, &options).await?;
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = client.read_event().await? {
            if matches!(event, ClientEvent::Media { .. }) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
        anyhow::Ok(())
    });
    Ok((count, AbortOnDrop(task)))
}

/// A task aborted when this drops.
struct AbortOnDrop(JoinHandle<Result>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Assertions and the other sides
// ---------------------------------------------------------------------------------------

/// The wall clock in milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// The video starts with its sequence header, then a keyframe; the audio with its
/// sequence header.
fn assert_decodable_start(tags: &[FlvTag]) -> Result {
    let video: Vec<_> = tags.iter().filter(|t| t.kind == MediaKind::Video).collect();
    ensure!(video.len() >= 2, "only {} video tags", video.len());
    ensure!(inspect_video(&video[0].payload).sequence_header, "the first video tag is no sequence header");
    ensure!(inspect_video(&video[1].payload).keyframe, "the first picture is no keyframe");
    let audio = tags.iter().find(|t| t.kind == MediaKind::Audio).context("no audio tag")?;
    ensure!(inspect_audio(&audio.payload).sequence_header, "the first audio tag is no sequence header");
    Ok(())
}

/// One of `tags` is the stream's `onMetaData`.
fn has_metadata(tags: &[FlvTag]) -> bool {
    tags.iter().any(|t| t.kind == MediaKind::Data && t.payload.windows(10).any(|w| w == b"onMetaData"))
}

/// The relay's `/metrics` as (series, value) pairs.
async fn metrics(srv: &TestServer) -> Result<Vec<(String, f64)>> {
    let text = reqwest::get(srv.api("/metrics")).await?.error_for_status()?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, v)| Some((name.to_owned(), v.parse().ok()?)))
        .collect())
}

/// The value of series `name` (with its labels, as printed).
fn metric(all: &[(String, f64)], name: &str) -> Option<f64> {
    all.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Polls `/metrics` until series `name` has value `want` (a connection's gauge drops
/// once its task has ended, just after the client saw the close).
async fn wait_metric(srv: &TestServer, name: &str, want: f64) -> Result {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(&metrics(srv).await?, name);
        if got == Some(want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} = {got:?}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the relay counted `want` under `reason` (it counts once the client has
/// closed its side: the relay reads away what the client still sends before closing).
async fn wait_count(srv: &TestServer, reason: Reason, want: u64) -> Result {
    wait_until(&format!("{reason} counted {want} times"), Duration::from_secs(10), || {
        (srv.counters.get(reason) == want).then_some(())
    })
    .await
    .with_context(|| format!("{reason} counted {}", srv.counters.get(reason)))
}

/// Polls the control API's stream detail at `url` until it lists an `http-flv` player
/// in `state` for which `cond` holds; returns that player.
async fn wait_http_flv_player(url: &str, state: &str, cond: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = reqwest::get(url).await.with_context(|| format!("GET {url}"))?;
        let status = r.status();
        let detail: Value = r.json().await.with_context(|| format!("GET {url}: not JSON"))?;
        let found = detail["players"].as_array().and_then(|players| {
            players.iter().find(|p| p["transport"] == "http-flv" && p["state"] == state && cond(p))
        });
        if let Some(player) = found {
            return Ok(player.clone());
        }
        if Instant::now() >= deadline {
            bail!("no {state} http-flv player listed; last answer {status}: {detail:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A looping ffmpeg publisher of the test media on `live/{key}`, live when this returns.
async fn live_publisher(srv: &TestServer, key: &str) -> Result<tokio::process::Child> {
    let publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", key), true))?;
    srv.wait_live(key).await?;
    Ok(publisher)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Two HTTP-FLV players that ask before the publisher arrives (one ffmpeg, one a raw
/// socket) wait for it and get every packet it sent: ffmpeg's packets equal the source
/// file's one for one, the raw body's audio/video tags byte for byte; the publisher
/// writes to their sockets directly, and the body ends with the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flv_players_get_every_published_packet_byte_for_byte() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let stream = TcpStream::connect(srv.addr).await?;
        let raw = tokio::spawn(async move {
            let mut player = FlvPlayer::get(stream, &flv_path("h1")).await?;
            let tags = player.read_to_end().await?;
            ensure!(!player.cut, "the body ended inside a tag");
            anyhow::Ok((player.head, player.prefix, tags))
        });
        let ff_out = srv.path("http.flv");
        let ff_player = spawn(&mut ffmpeg_player(&flv_url(&srv, "h1"), &ff_out))?;
        srv.wait_subscribers("h1", 2).await?;
        ensure!(!srv.stats("h1").context("live/h1 known")?.live, "live before anyone published");

        let publisher = spawn(&mut ffmpeg_publisher(input, &srv.url("rtmp", "h1"), false))?;
        srv.wait_stats("h1", "direct writes to the HTTP-FLV players", |s| s.direct_writes > 30).await?;
        expect_success(&finish(publisher, "ffmpeg publisher", PUBLISH_LIMIT).await?, "ffmpeg publisher")?;
        expect_success(&finish(ff_player, "ffmpeg HTTP-FLV player", END_LIMIT).await?, "ffmpeg player")?;
        let (head, prefix, tags) =
            tokio::time::timeout(END_LIMIT, raw).await.context("the raw player's body did not end")???;

        ensure!(head.status == 200, "{head:?}");
        ensure!(prefix.starts_with(b"FLV\x01"), "body starts with {prefix:?}");
        ensure!(has_metadata(&tags), "no onMetaData in the body");
        assert_decodable_start(&tags)?;
        assert_same_av_tags(&read_tags(input).await?, &tags)?;
        let compared = compare_packets(&probe_packets(input).await?, &probe_packets(&ff_out).await?, true)?;
        ensure!(compared > 200, "only {compared} packets compared");
        ensure!(srv.stats("h1").is_none_or(|s| s.skipped == 0), "players skipped frames");
        srv.wait_released("h1").await
    })
    .await
}

/// A late joiner's response head: `HTTP/1.1 200`, CORS, `video/x-flv`, the relay's clock
/// as `unix_ms;timestamp` (a time within the test, a timestamp it sent), no length and
/// no keep-alive; the body is an FLV file with both tracks flagged, starting with the
/// metadata and sequence headers, then a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_head_then_an_flv_from_a_keyframe() -> Result {
    bounded(async {
        let started = unix_ms();
        let srv = start_server().await?;
        let _publisher = live_publisher(&srv, "h2").await?;
        srv.wait_stats("h2", "a second of media", |s| s.frames > 60).await?;

        let mut player = FlvPlayer::get(TcpStream::connect(srv.addr).await?, &flv_path("h2")).await?;
        let tags = player.read_pictures(40).await?;
        let head = &player.head;
        ensure!(head.status_line.starts_with("HTTP/1.1 200"), "{head:?}");
        ensure!(head.header("Access-Control-Allow-Origin") == Some("*"), "{head:?}");
        ensure!(
            head.header("Access-Control-Expose-Headers").is_some_and(|h| h.contains("X-Qrelay-Clock")),
            "a page on another origin cannot read the clock: {head:?}"
        );
        ensure!(head.header("Content-Type") == Some("video/x-flv"), "{head:?}");
        ensure!(head.header("Connection") == Some("close"), "{head:?}");
        ensure!(
            head.header("Content-Length").is_none() && head.header("Transfer-Encoding").is_none(),
            "a live body runs until the connection closes: {head:?}"
        );
        let clock = head.header("X-Qrelay-Clock").context("no X-Qrelay-Clock")?;
        let (at, ts) = clock.split_once(';').with_context(|| format!("X-Qrelay-Clock `{clock}`"))?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        ensure!(digits(at) && digits(ts), "X-Qrelay-Clock `{clock}` is not digits;digits");
        let (at, ts): (u128, u32) = (at.parse()?, ts.parse()?);
        ensure!((started..=unix_ms()).contains(&at), "X-Qrelay-Clock {at} is not within the test");
        ensure!(tags.iter().any(|t| t.timestamp == ts), "X-Qrelay-Clock names timestamp {ts}, never sent");

        ensure!(player.prefix.len() == FLV_HEADER_LEN, "short FLV header {:?}", player.prefix);
        ensure!(player.prefix.starts_with(b"FLV\x01"), "body starts with {:?}", player.prefix);
        ensure!(player.prefix[4] == 0x05, "FLV flags {:#04x}, expected audio and video", player.prefix[4]);
        ensure!(player.prefix[5..] == [0, 0, 0, 9, 0, 0, 0, 0], "FLV header {:?}", player.prefix);
        ensure!(
            tags[0].kind == MediaKind::Data && has_metadata(&tags[..1]),
            "the metadata does not come first"
        );
        assert_decodable_start(&tags)?;
        Ok(())
    })
    .await
}

/// Every refusal answers with its status and reason text and is counted (404 for a
/// stream nobody publishes within `play_wait_ms` and for an unknown path, 405, 400, 431
/// for too many headers and for a long one) while an HTTP-FLV player and an RTMP
/// player of a live stream keep receiving. 48 headers are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_answered_and_counted_while_players_keep_receiving() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.play_wait_ms = 300).await?;
        let _publisher = live_publisher(&srv, "busy").await?;
        let watcher = Watcher::start(srv.addr, &flv_path("busy")).await?;
        let (rtmp_count, _rtmp_player) = rtmp_watcher(&srv, "busy").await?;
        srv.wait_subscribers("busy", 2).await?;
        watcher.wait_more(30, "before the refusals").await?;
        wait_more(&rtmp_count, 30, "over RTMP before the refusals").await?;

        let waited = Instant::now();
        let reply = send(srv.addr, &get_request(&flv_path("ghost"))).await?;
        expect_refusal(&reply, 404, "no such stream is being published")?;
        ensure!(waited.elapsed() >= Duration::from_millis(250), "answered before play_wait_ms");
        srv.wait_released("ghost").await?;
        wait_count(&srv, Reason::StreamNotFound, 1).await?;

        let reply = send(srv.addr, &get_request("/nope")).await?;
        expect_refusal(&reply, 404, "no such path")?;
        let post = b"POST /live/busy.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello";
        expect_refusal(&send(srv.addr, post).await?, 405, "only GET, HEAD and OPTIONS")?;
        wait_count(&srv, Reason::HttpNotFound, 2).await?;

        let reply = send(srv.addr, b"GARBAGE\x00\x01\r\n\r\n").await?;
        expect_refusal(&reply, 400, "malformed request")?;
        let flood: Vec<String> = (0..49).map(|i| format!("X-Flood-{i}")).collect();
        let headers: Vec<(&str, &str)> = flood.iter().map(|h| (h.as_str(), "1")).collect();
        // Host plus 48: one too many.
        let reply = send(srv.addr, &request("GET", &flv_path("busy"), &headers[..48])).await?;
        expect_refusal(&reply, 431, "more than 48 headers")?;
        let long = "a".repeat(20 * 1024);
        let reply = send(srv.addr, &request("GET", &flv_path("busy"), &[("X-Long", &long)])).await?;
        expect_refusal(&reply, 431, "request head over 16384 bytes")?;
        wait_count(&srv, Reason::BadHttpRequest, 3).await?;
        // Host plus 47 is within the cap.
        let reply = send(srv.addr, &request("GET", "/player.js", &headers[..47])).await?;
        ensure!(reply.head.status == 200, "47 + Host headers: {:?}", reply.head);

        watcher.wait_more(30, "after the refusals").await?;
        wait_more(&rtmp_count, 30, "over RTMP after the refusals").await?;
        let stats = srv.stats("busy").context("live/busy")?;
        ensure!(stats.live && stats.subscribers == 2 && stats.skipped == 0, "{stats:?}");

        for (name, want) in [
            (r#"qrelay_refusals_total{reason="bad_http_request"}"#, 3.0),
            (r#"qrelay_refusals_total{reason="http_not_found"}"#, 2.0),
            (r#"qrelay_refusals_total{reason="stream_not_found"}"#, 1.0),
            (r#"qrelay_connections_accepted_total{transport="http"}"#, 8.0),
            // The player's; the refused ones are closed.
            (r#"qrelay_connections{transport="http"}"#, 1.0),
        ] {
            wait_metric(&srv, name, want).await?;
        }
        Ok(())
    })
    .await
}

/// A client that sends part of a request head and stays silent, and one that trickles a
/// byte every 50 ms, are both closed at `handshake_timeout_ms`; an HTTP-FLV player that
/// has been playing longer than that keeps playing, and one whose head comes in pieces
/// within the deadline plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_closed_at_the_handshake_deadline() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.handshake_timeout_ms = 500).await?;
        let _publisher = live_publisher(&srv, "sl").await?;
        let watcher = Watcher::start(srv.addr, &flv_path("sl")).await?;
        watcher.wait_more(10, "before the slowloris").await?;

        let opened = Instant::now();
        let mut silent = TcpStream::connect(srv.addr).await?;
        silent.write_all(b"GET /live/sl.flv HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow").await?;
        let mut trickle = TcpStream::connect(srv.addr).await?;
        let trickled = async {
            let (mut rd, mut wr) = trickle.split();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut byte = [0u8; 1];
            let request =
                b"GET /live/sl.flv HTTP/1.1\r\nHost: 127.0.0.1\r\n".iter().chain(std::iter::repeat(&b'a'));
            for b in request {
                tokio::select! {
                    read = rd.read(&mut byte) => {
                        ensure!(!matches!(read, Ok(n) if n > 0), "the relay answered the trickle: {byte:?}");
                        return Ok(opened.elapsed());
                    }
                    _ = tick.tick() => {
                        if wr.write_all(&[*b]).await.is_err() {
                            return Ok(opened.elapsed());
                        }
                    }
                }
            }
            unreachable!("an endless request")
        };
        let silent_closed = async {
            let mut byte = [0u8; 1];
            let read = silent.read(&mut byte).await;
            ensure!(!matches!(read, Ok(n) if n > 0), "the relay answered a partial head: {byte:?}");
            Ok(opened.elapsed())
        };
        let (silent_at, trickle_at) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::try_join!(silent_closed, trickled) })
                .await
                .context("a slowloris was not closed within 5 s")??;
        for (what, at) in [("silent", silent_at), ("trickle", trickle_at)] {
            ensure!(
                (Duration::from_millis(400)..Duration::from_secs(3)).contains(&at),
                "the {what} client was closed after {at:?}, handshake_timeout_ms is 500"
            );
        }
        wait_count(&srv, Reason::HandshakeTimeout, 2).await?;

        // The player's connection is older than the deadline and not cut by it.
        ensure!(opened.elapsed() > Duration::from_millis(500));
        watcher.wait_more(30, "past the handshake deadline").await?;
        ensure!(!watcher.task.is_finished(), "the player ended");

        let mut pieces = TcpStream::connect(srv.addr).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for piece in [&b"GET /live/sl.f"[..], b"lv HTTP/1.1\r\nHost: 127.", b"0.0.1\r\n", b"\r\n"] {
            tick.tick().await;
            pieces.write_all(piece).await?;
        }
        let mut player = FlvPlayer::answer(pieces).await?;
        ensure!(player.head.status == 200, "a head in pieces: {:?}", player.head);
        assert_decodable_start(&player.read_pictures(5).await?)
    })
    .await
}

/// A player that gives up waiting for a publisher, and one that leaves mid-stream, are
/// let go at once: the hub forgets the stream nobody publishes, and the publisher of the
/// other goes on; neither is counted as a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_that_leave_are_let_go() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let mut waiting = TcpStream::connect(srv.addr).await?;
        waiting.write_all(&get_request(&flv_path("later"))).await?;
        srv.wait_subscribers("later", 1).await?;
        drop(waiting);
        srv.wait_released("later").await?;

        let _publisher = live_publisher(&srv, "leave").await?;
        let watcher = Watcher::start(srv.addr, &flv_path("leave")).await?;
        srv.wait_subscribers("leave", 1).await?;
        watcher.wait_more(30, "before leaving").await?;
        drop(watcher);
        srv.wait_stats("leave", "the player gone, the publisher live", |s| s.subscribers == 0 && s.live)
            .await?;
        wait_metric(&srv, r#"qrelay_connections{transport="http"}"#, 0.0).await?;
        for reason in [Reason::BadHttpRequest, Reason::HttpNotFound, Reason::StreamNotFound] {
            ensure!(srv.counters.get(reason) == 0, "{reason} counted");
        }
        Ok(())
    })
    .await
}

/// OPTIONS is a CORS preflight (204, no body); the player script and page are served
/// with their content types and exact lengths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_player_script_and_page() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let preflight = request(
            "OPTIONS",
            &flv_path("x"),
            &[("Origin", "https://example.com"), ("Access-Control-Request-Method", "GET")],
        );
        let reply = send(srv.addr, &preflight).await?;
        let head = &reply.head;
        ensure!(head.status == 204 && reply.body.is_empty(), "{head:?} {:?}", reply.text());
        ensure!(head.header("Access-Control-Allow-Origin") == Some("*"), "{head:?}");
        ensure!(
            head.header("Access-Control-Allow-Methods")
                .is_some_and(|m| m.contains("GET") && m.contains("OPTIONS")),
            "{head:?}"
        );
        ensure!(head.header("Access-Control-Max-Age").is_some(), "{head:?}");

        for (path, content_type) in ASSETS {
            let get = send(srv.addr, &get_request(path)).await?;
            let h = &get.head;
            ensure!(h.status == 200, "GET {path}: {h:?}");
            ensure!(
                h.header("Content-Type").is_some_and(|t| t.starts_with(content_type)),
                "GET {path}: {h:?}"
            );
            ensure!(h.header("Access-Control-Allow-Origin") == Some("*"), "GET {path}: {h:?}");
            let len = get.body.len().to_string();
            ensure!(h.header("Content-Length") == Some(len.as_str()), "GET {path}: {h:?}, {len} bytes");
        }
        ensure!(srv.counters.get(Reason::BadHttpRequest) == 0, "a good request was counted as bad");
        Ok(())
    })
    .await
}

/// HEAD of the player's files answers GET's head without the body: the same
/// Content-Length (RFC 9110 8.6: a HEAD response's Content-Length is the GET body's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_the_player_files_announces_their_length() -> Result {
    bounded(async {
        let srv = start_server().await?;
        for (path, content_type) in ASSETS {
            let get = send(srv.addr, &get_request(path)).await?;
            let head = send(srv.addr, &request("HEAD", path, &[])).await?;
            let h = &head.head;
            ensure!(h.status == 200 && head.body.is_empty(), "HEAD {path}: {head:?}");
            ensure!(
                h.header("Content-Type").is_some_and(|t| t.starts_with(content_type)),
                "HEAD {path}: {h:?}"
            );
            ensure!(
                h.header("Content-Length") == get.head.header("Content-Length"),
                "HEAD {path}: Content-Length {:?}, GET's {:?}",
                h.header("Content-Length"),
                get.head.header("Content-Length")
            );
        }
        Ok(())
    })
    .await
}

/// HEAD of a live stream answers the head a GET gets, without a body (RFC 9110 9.3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_a_live_stream_has_no_body() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let _publisher = live_publisher(&srv, "hd").await?;
        srv.wait_stats("hd", "media", |s| s.frames > 10).await?;
        let reply = send(srv.addr, &request("HEAD", &flv_path("hd"), &[])).await?;
        ensure!(reply.head.status == 200, "{:?}", reply.head);
        ensure!(reply.head.header("Content-Type") == Some("video/x-flv"), "{:?}", reply.head);
        ensure!(reply.body.is_empty(), "HEAD got a {}-byte body: {:?}", reply.body.len(), reply.body);
        Ok(())
    })
    .await
}

/// With play tokens required, an HTTP-FLV player without one, with one for another
/// stream, with a publish token or a malformed one is refused with 403 and the reason
/// (each counted under its own); `?token=` with a valid play token plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_tokens_apply_to_http_flv() -> Result {
    bounded(async {
        let keep = tempfile::tempdir()?;
        let file = keep.path().join("secret");
        std::fs::write(&file, format!("{SECRET}\n"))?;
        let srv = start_server_with(|c| {
            c.auth.secret_file = Some(file);
            c.auth.play = AuthMode::Token;
        })
        .await?;
        let secret = Secret::new(SECRET.as_bytes(), "test")?;
        let _publisher = live_publisher(&srv, "tok").await?;

        let other_stream = mint(&secret, "live/elsewhere", TokenRole::Play, HOUR)?;
        let publish = mint(&secret, "live/tok", TokenRole::Publish, HOUR)?;
        let cases = [
            (flv_path("tok"), "a token is required", Reason::TokenMissing),
            (
                format!("{}?token={other_stream}", flv_path("tok")),
                "not valid for this stream",
                Reason::TokenWrongStream,
            ),
            (format!("{}?token={publish}", flv_path("tok")), "not valid for playing", Reason::TokenWrongRole),
            (format!("{}?token=not.a.token", flv_path("tok")), "token malformed", Reason::TokenInvalid),
        ];
        for (path, message, reason) in cases {
            let reply = send(srv.addr, &get_request(&path)).await?;
            ensure!(
                reply.head.status == 403 && reply.text().contains(message),
                "{path}: expected 403 `{message}`, got `{}` `{}`",
                reply.head.status_line,
                reply.text()
            );
            wait_count(&srv, reason, 1).await?;
        }

        let play = mint(&secret, "live/tok", TokenRole::Play, HOUR)?;
        let path = format!("{}?token={play}&player=test", flv_path("tok"));
        let mut player = FlvPlayer::get(TcpStream::connect(srv.addr).await?, &path).await?;
        ensure!(player.head.status == 200, "{:?}", player.head);
        let tags = player.read_pictures(10).await?;
        assert_decodable_start(&tags)?;
        // The query stays out of the session ID: one stream, one player.
        let stats = srv.stats("tok").context("live/tok")?;
        ensure!(stats.subscribers == 1, "{stats:?}");
        Ok(())
    })
    .await
}

/// HTTPS on the same port: a TLS client trusting the development CA gets the stream,
/// whether it offers ALPN as browsers do or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_on_the_same_port() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let _publisher = live_publisher(&srv, "tls").await?;
        for alpn in [vec![b"h2".to_vec(), b"http/1.1".to_vec()], vec![]] {
            let mut config = rtmps_client_config(&Trust::CaFile(srv.ca.clone()))?;
            config.alpn_protocols = alpn.clone();
            let tcp = TcpStream::connect(srv.addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            let mut player = FlvPlayer::get(tls, &flv_path("tls")).await?;
            let what =
                format!("ALPN {:?}", alpn.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>());
            ensure!(player.head.status == 200, "{what}: {:?}", player.head);
            ensure!(player.head.header("Content-Type") == Some("video/x-flv"), "{what}: {:?}", player.head);
            let tags = player.read_pictures(10).await.context(what.clone())?;
            ensure!(player.prefix.starts_with(b"FLV\x01"), "{what}: body starts with {:?}", player.prefix);
            assert_decodable_start(&tags).context(what)?;
        }
        // A refusal over TLS is answered too.
        let tcp = TcpStream::connect(srv.addr).await?;
        let config = rtmps_client_config(&Trust::CaFile(srv.ca.clone()))?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        expect_refusal(&exchange(tls, &get_request("/nope")).await?, 404, "no such path")?;
        Ok(())
    })
    .await
}

/// The control API lists an HTTP-FLV player with transport `http-flv`, waiting before
/// the publisher comes and playing after, with its address and bytes sent; ending it
/// there ends its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_lists_and_ends_http_flv_players() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let watcher = Watcher::start(srv.addr, &flv_path("api")).await?;
        srv.wait_subscribers("api", 1).await?;
        let url = srv.api("/api/streams/live/api");
        wait_http_flv_player(&url, "waiting", |_| true).await?;

        let _publisher = live_publisher(&srv, "api").await?;
        watcher.wait_more(30, "from the publisher").await?;
        let player = wait_http_flv_player(&url, "playing", |p| p["bytes_sent"].as_u64() > Some(0)).await?;
        ensure!(player["address"] == watcher.local.to_string(), "{player:#}, we are {}", watcher.local);
        let id = player["id"].as_u64().context("a player id")?;
        wait_metric(&srv, r#"qrelay_connections{transport="http"}"#, 1.0).await?;

        let deleted = reqwest::Client::new()
            .delete(srv.api(&format!("/api/players/{id}")))
            .bearer_auth(&srv.api_token)
            .send()
            .await?;
        ensure!(deleted.status().is_success(), "DELETE player {id}: {}", deleted.status());
        let (head, tags) = watcher.finish().await.context("the ended player's body")?;
        ensure!(head.status == 200 && !tags.is_empty(), "{head:?}");
        wait_until("the player to leave", Duration::from_secs(5), || {
            srv.stats("api").is_some_and(|s| s.subscribers == 0).then_some(())
        })
        .await?;
        wait_metric(&srv, r#"qrelay_connections{transport="http"}"#, 0.0).await
    })
    .await
}
