//! The control plane over real HTTP on loopback, against a relay with real publishers and
//! players (ffmpeg, `qrelay publish/play`, the project's `RtmpClient`): the JSON API,
//! ending sessions, session allocation, `/metrics`, the bearer token, the drain, and the
//! status page in headless Chromium.

mod common;
mod support_hostile;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use common::*;
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::gate::Role;
use qrelay::media::frame::MediaKind;
use qrelay::reason::Reason;
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long an API condition may take to hold (a stream going live, a bitrate sample).
const API_WAIT: Duration = Duration::from_secs(10);
/// How long a client may take to end after the relay ended it.
const END_LIMIT: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("an HTTP client")
}

/// `GET url` as JSON, with its status.
async fn get(url: &str) -> Result<(StatusCode, Value)> {
    let r = http().get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = r.status();
    Ok((status, r.json().await.with_context(|| format!("GET {url}: not JSON"))?))
}

/// `method url [body]` as JSON, with its status, carrying the API token.
async fn call(
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Value)> {
    let mut req = http().request(method.clone(), url).bearer_auth(token);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_owned());
    }
    let r = req.send().await.with_context(|| format!("{method} {url}"))?;
    let status = r.status();
    Ok((status, r.json().await.with_context(|| format!("{method} {url}: not JSON"))?))
}

/// Polls `GET url` until `cond` holds for its JSON.
async fn wait_json(url: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + API_WAIT;
    loop {
        let (status, json) = get(url).await?;
        if status == StatusCode::OK && cond(&json) {
            return Ok(json);
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}; last answer {status}: {json:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream `session_id` in a `GET /api/streams` answer.
fn stream<'a>(list: &'a Value, session_id: &str) -> Option<&'a Value> {
    list["streams"].as_array()?.iter().find(|s| s["session_id"] == session_id)
}

fn opts(srv: &TestServer) -> ClientOptions {
    ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() }
}

/// An error answer: the status and a JSON body naming it.
fn expect_error(answer: &(StatusCode, Value), status: StatusCode, what: &str) -> Result {
    let (got, body) = answer;
    ensure!(*got == status, "{what}: expected {status}, got {got}: {body}");
    ensure!(body["status"] == status.as_u16() && body["error"].is_string(), "{what}: error body {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_list_publisher_players_codecs_and_bitrates() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let mut publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "api"), true))?;
        let tcp_out = srv.path("tcp.flv");
        let tcp_player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "api"), &tcp_out))?;
        let quic_player =
            spawn(&mut qrelay_play(&srv.url("rtmp+quic", "api"), &srv.ca, &srv.path("q.flv"), None))?;
        srv.wait_live("api").await?;
        srv.wait_subscribers("api", 2).await?;

        let list = wait_json(&srv.api("/api/streams"), "live/api flowing both ways", |j| {
            stream(j, "live/api")
                .is_some_and(|s| s["bitrate_in"].as_u64() > Some(0) && s["bitrate_out"].as_u64() > Some(0))
        })
        .await?;
        let s = stream(&list, "live/api").context("live/api listed")?;
        ensure!(s["live"] == true && s["app"] == "live" && s["key"] == "api", "{s:#}");
        ensure!(s["player_count"] == 2, "{s:#}");
        let p = &s["publisher"];
        ensure!(p["transport"] == "tcp", "{p:#}");
        ensure!(p["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{p:#}");
        ensure!(p["since"].as_str().is_some_and(|t| t.ends_with('Z')), "{p:#}");
        // The test media: H.264 (profile and level from the AVC configuration), AAC LC.
        ensure!(p["codecs"]["video"].as_str().is_some_and(|c| c.starts_with("avc1.")), "{p:#}");
        ensure!(p["codecs"]["audio"] == "mp4a.40.2", "{p:#}");
        ensure!(
            s["bytes_in"].as_u64() > Some(10_000) && s["gop_cache"]["frames"].as_u64() > Some(0),
            "{s:#}"
        );
        ensure!(s.get("players").is_none(), "the list carries counts, not players: {s:#}");

        let (status, d) = get(&srv.api("/api/streams/live/api")).await?;
        ensure!(status == StatusCode::OK, "{status}: {d}");
        let players = d["players"].as_array().context("players in the detail")?;
        let transports: HashSet<&str> = players.iter().filter_map(|p| p["transport"].as_str()).collect();
        ensure!(transports == HashSet::from(["tcp", "roqr"]), "{players:#?}");
        for p in players {
            ensure!(p["state"] == "playing" && p["id"].as_u64().is_some(), "{p:#}");
            ensure!(
                p["bytes_sent"].as_u64() > Some(0) && p["queue_bytes"].is_u64() && p["skipped"] == 0,
                "{p:#}"
            );
        }
        ensure!(
            d["forward"] == serde_json::json!([]) && d["pull"].is_null() && d["allocation"].is_null(),
            "{d:#}"
        );

        // Bad input: JSON errors with their status, never a panic.
        expect_error(
            &get(&srv.api("/api/streams/live/nope")).await?,
            StatusCode::NOT_FOUND,
            "unknown stream",
        )?;
        expect_error(&get(&srv.api("/api/streams/onlyakey")).await?, StatusCode::BAD_REQUEST, "no app")?;
        expect_error(
            &get(&srv.api("/api/streams/live//x")).await?,
            StatusCode::BAD_REQUEST,
            "empty segment",
        )?;
        expect_error(&get(&srv.api("/api/nothing")).await?, StatusCode::NOT_FOUND, "unknown endpoint")?;
        let put = call(&srv.api_token, reqwest::Method::PUT, &srv.api("/api/streams"), None).await?;
        expect_error(&put, StatusCode::METHOD_NOT_ALLOWED, "PUT")?;
        let bad_id =
            call(&srv.api_token, reqwest::Method::DELETE, &srv.api("/api/players/abc"), None).await?;
        expect_error(&bad_id, StatusCode::BAD_REQUEST, "a player id that is no number")?;
        let no_player =
            call(&srv.api_token, reqwest::Method::DELETE, &srv.api("/api/players/999999"), None).await?;
        expect_error(&no_player, StatusCode::NOT_FOUND, "no such player")?;
        let raw = http().get(srv.api("/api/streams/live/%ZZ")).send().await?;
        ensure!(raw.status().is_client_error(), "bad percent-encoding: {}", raw.status());

        publisher.start_kill()?;
        drop((tcp_player, quic_player));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_players_and_then_the_publisher() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let mut publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "del"), true))?;
        // One after the other, so their ids (which grow with sessions) say who is who.
        let stays = spawn(&mut qrelay_play(&srv.url("rtmp", "del"), &srv.ca, &srv.path("stays.flv"), None))?;
        srv.wait_subscribers("del", 1).await?;
        let tcp_goes = spawn(&mut qrelay_play(&srv.url("rtmp", "del"), &srv.ca, &srv.path("t.flv"), None))?;
        srv.wait_subscribers("del", 2).await?;
        let roqr_goes =
            spawn(&mut qrelay_play(&srv.url("rtmp+quic", "del"), &srv.ca, &srv.path("r.flv"), None))?;
        srv.wait_live("del").await?;
        srv.wait_subscribers("del", 3).await?;
        let detail = wait_json(&srv.api("/api/streams/live/del"), "3 playing players", |d| {
            d["players"].as_array().is_some_and(|p| p.iter().filter(|p| p["state"] == "playing").count() == 3)
        })
        .await?;
        // Players in join order: stays, tcp_goes, roqr_goes (ids grow with sessions).
        let mut players: Vec<(u64, String)> = detail["players"]
            .as_array()
            .context("players")?
            .iter()
            .map(|p| (p["id"].as_u64().unwrap_or(0), p["transport"].as_str().unwrap_or("").to_owned()))
            .collect();
        players.sort();
        let (tcp_id, roqr_id) = (players[1].0, players[2].0);
        ensure!(players[1].1 == "tcp" && players[2].1 == "roqr", "{players:?}");

        // A player by its stream's path, another by id alone: each is told and ends
        // cleanly (exit 0), the others go on.
        let (status, body) = call(
            &srv.api_token,
            reqwest::Method::DELETE,
            &srv.api(&format!("/api/streams/live/del/players/{tcp_id}")),
            None,
        )
        .await?;
        ensure!(status == StatusCode::ACCEPTED && body["ended"] == "player", "{status}: {body}");
        expect_success(&finish(tcp_goes, "tcp player", END_LIMIT).await?, "tcp player ended by the API")?;
        let (status, _) =
            call(&srv.api_token, reqwest::Method::DELETE, &srv.api(&format!("/api/players/{roqr_id}")), None)
                .await?;
        ensure!(status == StatusCode::ACCEPTED, "{status}");
        expect_success(&finish(roqr_goes, "roqr player", END_LIMIT).await?, "roqr player ended by the API")?;
        srv.wait_stats("del", "one player left", |s| s.subscribers == 1 && s.live).await?;
        ensure!(
            srv.counters.get(Reason::EndedByApi) == 2,
            "counted: {}",
            srv.counters.get(Reason::EndedByApi)
        );

        // The publisher: its stream ends, the remaining player drains and ends cleanly.
        let (status, body) =
            call(&srv.api_token, reqwest::Method::DELETE, &srv.api("/api/streams/live/del"), None).await?;
        ensure!(status == StatusCode::ACCEPTED && body["ended"] == "publisher", "{status}: {body}");
        expect_success(&finish(stays, "remaining player", END_LIMIT).await?, "the remaining player")?;
        tokio::time::timeout(END_LIMIT, publisher.wait()).await.context("ffmpeg went on publishing")??;
        srv.wait_released("del").await?;
        ensure!(srv.counters.get(Reason::EndedByApi) == 3);
        let again =
            call(&srv.api_token, reqwest::Method::DELETE, &srv.api("/api/streams/live/del"), None).await?;
        expect_error(&again, StatusCode::NOT_FOUND, "no publisher any more")
    })
    .await
}

/// Mints `T-<role>-<session>` tokens, as the auth module will real ones.
#[derive(Debug)]
struct TestMinter;

impl qrelay::control::TokenMinter for TestMinter {
    fn mint(&self, session_id: &str, role: Role, ttl: Duration) -> Option<String> {
        Some(format!("T-{role:?}-{session_id}-{}", ttl.as_secs()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_allocated_with_urls_for_every_transport() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let port = srv.addr.port();
        let url = srv.api("/api/sessions");

        // Nothing asked: a session is made, URLs without tokens (no minter).
        let (status, made) = call(&srv.api_token, reqwest::Method::POST, &url, None).await?;
        ensure!(status == StatusCode::CREATED, "{status}: {made}");
        let sid = made["session"].as_str().context("session")?.to_owned();
        ensure!(sid.starts_with("live/") && sid.len() == 5 + 24, "{sid}");
        ensure!(made["tokens"] == false && made["ttl_s"] == 3600, "{made:#}");
        for (scheme, key) in [("rtmp", "rtmp"), ("rtmps", "rtmps"), ("rtmp+quic", "rtmp+quic")] {
            let want = format!("{scheme}://127.0.0.1:{port}/{sid}");
            ensure!(made["publish"][key] == want.as_str() && made["play"][key] == want.as_str(), "{made:#}");
        }
        // The URLs work: publish to the RoQR one, the stream goes live under that ID.
        let publish_url = made["publish"]["rtmp+quic"].as_str().context("url")?.to_owned();
        let mut publisher = spawn(&mut qrelay_publish(&media().flv, &publish_url, &srv.ca, true))?;
        let key = sid.trim_start_matches("live/").to_owned();
        srv.wait_live(&key).await?;
        publisher.start_kill()?;

        // Everything asked: kept, and shown with the stream.
        let body = r#"{"session": "live/booked", "ttl_s": 120, "forward": ["rtmp://127.0.0.1:1/live/x?key=secret"]}"#;
        let (status, booked) = call(&srv.api_token, reqwest::Method::POST, &url, Some(body)).await?;
        ensure!(status == StatusCode::CREATED && booked["ttl_s"] == 120, "{status}: {booked}");
        // No queries, and a stream key not the session's own (a credential) as ***.
        ensure!(booked["forward"] == serde_json::json!(["rtmp://127.0.0.1:1/live/***"]), "{booked}");
        let player = spawn(&mut qrelay_play(&srv.url("rtmp", "booked"), &srv.ca, &srv.path("b.flv"), None))?;
        srv.wait_subscribers("booked", 1).await?;
        let (_, d) = get(&srv.api("/api/streams/live/booked")).await?;
        ensure!(d["allocation"]["session"] == "live/booked", "{d:#}");
        ensure!(d["allocation"]["forward"] == serde_json::json!(["rtmp://127.0.0.1:1/live/***"]), "{d:#}");
        drop(player);
        let (_, list) = get(&url).await?;
        ensure!(list["sessions"].as_array().is_some_and(|s| s.len() == 2), "{list:#}");

        // Refusals: taken, malformed, unknown fields, bad values.
        let taken = call(&srv.api_token, reqwest::Method::POST, &url, Some(r#"{"session": "live/booked"}"#)).await?;
        expect_error(&taken, StatusCode::CONFLICT, "taken")?;
        for (body, what) in [
            ("{", "truncated JSON"),
            (r#"{"sesion": "live/x"}"#, "unknown field"),
            (r#"{"session": 5}"#, "wrong type"),
            (r#"{"session": "nokey"}"#, "no key"),
            (r#"{"session": "live/x?token=1"}"#, "a query"),
            (r#"{"ttl_s": 0}"#, "zero ttl"),
            (r#"{"ttl_s": -1}"#, "negative ttl"),
            (r#"{"forward": ["http://example.com/x"]}"#, "not an RTMP URL"),
            ("[1,2,3]", "not an object"),
        ] {
            let answer = call(&srv.api_token, reqwest::Method::POST, &url, Some(body)).await?;
            expect_error(&answer, StatusCode::BAD_REQUEST, what)?;
        }
        let huge = format!(r#"{{"session": "live/{}"}}"#, "x".repeat(100_000));
        let answer = http().post(&url).bearer_auth(&srv.api_token).body(huge).send().await?;
        ensure!(answer.status() == StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.status());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocated_urls_carry_the_minted_tokens() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let config = qrelay::Config {
            listen: "127.0.0.1:0".parse()?,
            cert_dir: dir.path().join("certs"),
            http_listen: qrelay::config::HttpListen::Addr("127.0.0.1:0".parse()?),
            ..Default::default()
        };
        let mut server = qrelay::Server::bind(config).await?;
        server.set_token_minter(Arc::new(TestMinter));
        let (port, http_addr) = (server.local_addr().port(), server.http_addr().context("http")?);
        let token = server.api_token().context("no API token")?.to_owned();
        let shutdown = qrelay::server::Shutdown::default();
        let task = tokio::spawn(server.run(shutdown.clone()));
        let url = format!("http://{http_addr}/api/sessions");
        let (status, made) =
            call(&token, reqwest::Method::POST, &url, Some(r#"{"session":"live/tok","ttl_s":60}"#)).await?;
        ensure!(status == StatusCode::CREATED && made["tokens"] == true, "{status}: {made}");
        // Encoded for a URL: '/' in the session ID travels as %2F.
        let want = |scheme: &str, role: &str| {
            format!("{scheme}://127.0.0.1:{port}/live/tok?token=T-{role}-live%2Ftok-60")
        };
        ensure!(made["publish"]["rtmps"] == want("rtmps", "Publish").as_str(), "{made:#}");
        ensure!(made["play"]["rtmp+quic"] == want("rtmp+quic", "Play").as_str(), "{made:#}");
        shutdown.immediate.cancel();
        shutdown.graceful.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        Ok(())
    })
    .await
}

/// `name{labels} value` lines of an OpenMetrics text, as (series, value).
fn series(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(all: &[(String, f64)], name: &str) -> Option<f64> {
    all.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Issue 22 #6: a player asking for `live/x"y\z` broke every scrape while it waited
/// (label values were written unescaped); a flood of session IDs grew every scrape; an
/// allocated session's key (whoever knows it may publish) showed in the labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_are_escaped_capped_and_keep_allocated_keys_out() -> Result {
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let srv = start_server_with(|c| c.metrics_max_streams = 3).await?;
        let (status, made) =
            call(&srv.api_token, reqwest::Method::POST, &srv.api("/api/sessions"), None).await?;
        ensure!(status == StatusCode::CREATED, "allocation: {status}");
        let allocated = made["session"].as_str().context("no session")?.to_owned();
        let secret_key = allocated.rsplit_once('/').context("no key")?.1.to_owned();
        // Players waiting for streams nobody publishes yet (HTTP-FLV: any bytes in the key).
        let mut waiting = Vec::new();
        for path in [r#"live/x"y\z"#, r#"live/x"y\z"#, &allocated, &allocated, "live/a", "live/b"] {
            let mut s = tokio::net::TcpStream::connect(srv.addr).await?;
            s.write_all(format!("GET /{path}.flv HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes()).await?;
            waiting.push(s);
        }
        wait_until("six waiting players", API_WAIT, || {
            (srv.hub.snapshot().iter().map(|s| s.stats.subscribers).sum::<usize>() == 6).then_some(())
        })
        .await?;
        let text = http().get(srv.api("/metrics")).send().await?.text().await?;
        ensure!(text.trim_end().ends_with("# EOF"), "not OpenMetrics:\n{text}");
        let escaped = r#"qrelay_stream_players{stream="live/x\"y\\z"} 2"#;
        ensure!(text.lines().any(|l| l == escaped), "no escaped label `{escaped}` in\n{text}");
        ensure!(!text.contains(&secret_key), "an allocated key shows in /metrics:\n{text}");
        ensure!(text.contains("/allocated-"), "the allocated stream has no series:\n{text}");
        let per_stream = text.lines().filter(|l| l.starts_with("qrelay_stream_players{")).count();
        ensure!(per_stream == 3, "{per_stream} streams with series, the cap is 3:\n{text}");
        ensure!(value(&series(&text), "qrelay_players") == Some(6.0), "players are all counted");
        drop(waiting);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_connections_streams_reasons_quic_and_the_process() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let mut publisher =
            spawn(&mut qrelay_publish(&media().flv, &srv.url("rtmp+quic", "m"), &srv.ca, true))?;
        let player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "m"), &srv.path("m.flv")))?;
        srv.wait_live("m").await?;
        srv.wait_subscribers("m", 1).await?;
        srv.wait_stats("m", "media flowing", |s| s.frames > 30).await?;
        // A second publisher is refused: counted under its reason.
        let url = StreamUrl::parse(&srv.url("rtmp", "m"))?;
        let refused = RtmpClient::connect(&url, ClientMode::Publish, &opts(&srv)).await;
        ensure!(refused.is_err(), "a second publisher was accepted");

        let response = http().get(srv.api("/metrics")).send().await?;
        ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        ensure!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
        let text = response.text().await?;
        ensure!(text.trim_end().ends_with("# EOF"), "not OpenMetrics:\n{text}");
        let all = series(&text);
        let at_least = |name: &str, min: f64| -> Result {
            let v = value(&all, name).with_context(|| format!("no {name} in\n{text}"))?;
            ensure!(v >= min, "{name} = {v}, expected at least {min}");
            Ok(())
        };
        at_least(r#"qrelay_connections{transport="roqr"}"#, 1.0)?;
        at_least(r#"qrelay_connections{transport="tcp"}"#, 1.0)?;
        at_least(r#"qrelay_connections_accepted_total{transport="tcp"}"#, 2.0)?;
        at_least("qrelay_publishers", 1.0)?;
        at_least("qrelay_players", 1.0)?;
        at_least(r#"qrelay_stream_players{stream="live/m"}"#, 1.0)?;
        at_least(r#"qrelay_stream_bytes_in_total{stream="live/m"}"#, 10_000.0)?;
        at_least(r#"qrelay_stream_bytes_out_total{stream="live/m"}"#, 10_000.0)?;
        ensure!(value(&all, r#"qrelay_stream_skipped_frames_total{stream="live/m"}"#) == Some(0.0));
        ensure!(value(&all, r#"qrelay_stream_queue_max_bytes{stream="live/m"}"#).is_some());
        at_least(r#"qrelay_refusals_total{reason="publish_taken"}"#, 1.0)?;
        ensure!(value(&all, r#"qrelay_closes_total{reason="normal"}"#).is_some(), "closes by reason");
        ensure!(
            value(&all, r#"qrelay_closes_total{reason="publish_taken"}"#).is_none(),
            "a refusal is no close"
        );
        // The RoQR publisher's QUIC connection: a measured RTT, a window, packets sent.
        ensure!(
            value(&all, r#"qrelay_quic_rtt_mean_seconds{class="roqr"}"#).is_some_and(|v| v > 0.0),
            "{text}"
        );
        at_least(r#"qrelay_quic_cwnd_mean_bytes{class="roqr"}"#, 1200.0)?;
        at_least(r#"qrelay_quic_sent_packets_total{class="roqr"}"#, 10.0)?;
        ensure!(value(&all, r#"qrelay_quic_lost_packets_total{class="quic_tunnel"}"#).is_some());
        // A clean loopback path: no redundant copies (the lossy case is tests/roqr.rs).
        ensure!(value(&all, "qrelay_quic_redundant_datagrams_total") == Some(0.0), "{text}");
        ensure!(value(&all, "qrelay_quic_redundant_paths") == Some(0.0), "{text}");
        at_least("process_resident_memory_bytes", 1_000_000.0)?;
        at_least("process_open_fds", 3.0)?;
        ensure!(value(&all, "process_cpu_seconds_total").is_some(), "{text}");

        publisher.start_kill()?;
        drop(player);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_is_required_when_set() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.api.token = Some("s3cret-s3cret-s3cret".into())).await?;
        for path in ["/api/streams", "/metrics", "/api/sessions"] {
            let r = http().get(srv.api(path)).send().await?;
            ensure!(r.status() == StatusCode::UNAUTHORIZED, "{path} without a token: {}", r.status());
            ensure!(r.headers().get("www-authenticate").is_some_and(|v| v == "Bearer"), "{path}");
            let r = http().get(srv.api(path)).bearer_auth("wrong").send().await?;
            ensure!(r.status() == StatusCode::UNAUTHORIZED, "{path} with a wrong token: {}", r.status());
            let r = http().get(srv.api(path)).bearer_auth("s3cret-s3cret-s3cret").send().await?;
            ensure!(r.status() == StatusCode::OK, "{path} with the token: {}", r.status());
        }
        let r = http().post(srv.api("/api/drain")).send().await?;
        ensure!(r.status() == StatusCode::UNAUTHORIZED, "a drain without the token: {}", r.status());
        // The page itself is static; it sends the token it is given after `#token=`.
        let r = http().get(srv.api("/")).send().await?;
        ensure!(r.status() == StatusCode::OK && r.text().await?.contains("Authorization"), "status page");
        Ok(())
    })
    .await
}

/// What a web page on the relay's own host could do before (issue 22, finding 1): a
/// `no-cors` POST to /api/drain drained the relay, and DNS rebinding read the API. Now
/// every mutation needs the generated token (kept 0600 beside the development CA), a
/// foreign Host is refused, and loopback reads (the status page) still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_web_page_cannot_drive_the_api() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let file = srv.dir.path().join("certs").join("api-token");
        let kept = std::fs::read_to_string(&file).context("no generated API token file")?;
        ensure!(kept.trim() == srv.api_token && srv.api_token.len() >= 40, "token file: {kept:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "token file mode {mode:o}");
        }
        // The page's simple request: a form-encoded POST, no Authorization header.
        let r = http()
            .post(srv.api("/api/drain"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "http://attacker.example")
            .body("x=1")
            .send()
            .await?;
        ensure!(r.status() == StatusCode::UNAUTHORIZED, "a no-cors drain: {}", r.status());
        for path in ["/api/sessions", "/api/players/1"] {
            let r = http().post(srv.api(path)).send().await?;
            ensure!(r.status() == StatusCode::UNAUTHORIZED, "POST {path} without the token: {}", r.status());
        }
        ensure!(!srv.shutdown.graceful.is_cancelled(), "the relay was drained");
        // DNS rebinding: the page's own name in Host, even with loopback's address.
        let r =
            http().get(srv.api("/api/streams")).header("host", "rebind.attacker.example:8935").send().await?;
        ensure!(r.status() == StatusCode::MISDIRECTED_REQUEST, "a rebound Host: {}", r.status());
        let r = http().get(srv.api("/")).header("host", "rebind.attacker.example").send().await?;
        ensure!(
            r.status() == StatusCode::MISDIRECTED_REQUEST,
            "the page under a rebound Host: {}",
            r.status()
        );
        // The same machine's status page and scrapers still read without a token.
        for path in ["/", "/api/streams", "/metrics"] {
            let r = http().get(srv.api(path)).send().await?;
            ensure!(r.status() == StatusCode::OK, "GET {path} from loopback: {}", r.status());
        }
        let r = http()
            .get(srv.api("/api/streams"))
            .header("host", format!("localhost:{}", srv.http.port()))
            .send()
            .await?;
        ensure!(r.status() == StatusCode::OK, "Host localhost: {}", r.status());
        // With the token a mutation goes through.
        let (status, _) =
            call(&srv.api_token, reqwest::Method::POST, &srv.api("/api/sessions"), None).await?;
        ensure!(status == StatusCode::CREATED, "POST /api/sessions with the token: {status}");
        Ok(())
    })
    .await
}

/// Reads from a control connection until the relay closes it (or resets it) within
/// `limit`; what it sent before.
async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.map_err(|_| anyhow::anyhow!("the relay kept a control connection open past {limit:?}"))?;
    Ok(got)
}

/// A client that opens control connections and never finishes a request (a slowloris)
/// cannot pile them up: beyond the cap a new connection is closed at once, the silent
/// ones are closed after the handshake timeout, and the API answers again then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_control_connections_are_bounded_in_number_and_time() -> Result {
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let srv = start_server_with(|c| c.handshake_timeout_ms = 1500).await?;
        let half_request = b"GET /metrics HTTP/1.1\r\nHost: relay\r\n";
        let mut silent = Vec::new();
        for _ in 0..qrelay::control::MAX_CONNECTIONS {
            let mut s = tokio::net::TcpStream::connect(srv.http).await?;
            s.write_all(half_request).await?;
            silent.push(s);
        }
        let started = Instant::now();
        // Accepted in order: once the one past the cap is closed, all the others hold a slot.
        let mut extra = tokio::net::TcpStream::connect(srv.http).await?;
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n").await;
        let answer = read_to_close(&mut extra, Duration::from_secs(1)).await?;
        ensure!(
            answer.is_empty(),
            "a connection past the cap was served: {}",
            String::from_utf8_lossy(&answer)
        );
        for s in &mut silent {
            read_to_close(s, Duration::from_secs(5)).await?;
        }
        let waited = started.elapsed();
        ensure!(
            waited >= Duration::from_millis(1000),
            "silent connections closed after {waited:?}, before the timeout"
        );
        let (status, _) = get(&srv.api("/api/streams")).await?;
        ensure!(status == StatusCode::OK, "the API after the silent connections: {status}");
        Ok(())
    })
    .await
}

/// Sends the synthetic numbered frames of `support_hostile` until `stop`, noting any
/// reconnect request; returns (frames sent, the request's description, frames sent
/// after it). Ends with the client's error when the relay closes it.
async fn publish_watching(
    mut client: RtmpClient,
    stop: CancellationToken,
) -> Result<(u32, Option<String>, u32)> {
    use support_hostile::{frame, sequence_header, FRAME_INTERVAL};
    client.send_media(MediaKind::Video, 0, sequence_header()).await?;
    let start = Instant::now();
    let mut tick = tokio::time::interval(FRAME_INTERVAL);
    let (mut seq, mut request, mut after) = (0u32, None, 0u32);
    loop {
        while let Some(ev) = client.poll_event() {
            if let ClientEvent::ReconnectRequest { description, tc_url } = ev {
                ensure!(tc_url.is_none(), "reconnect to the same URL, not {tc_url:?}");
                request = Some(description);
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let ts = start.elapsed().as_millis() as u32;
                client.send_media(MediaKind::Video, ts, frame(seq)).await.context("sending a frame")?;
                seq += 1;
                after += u32::from(request.is_some());
            }
            open = client.read_input() => {
                if !open.context("publisher input")? {
                    bail!("the relay closed the publisher after {seq} frames");
                }
                client.flush().await?;
            }
        }
    }
    client.finish().await?;
    Ok((seq, request, after))
}

/// Plays `live/key`, checking every frame, until the stream ends.
async fn play_checked(url: StreamUrl, opts: ClientOptions) -> Result<support_hostile::SeqChecker> {
    let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
    let mut checker = support_hostile::SeqChecker::default();
    let end = support_hostile::play_frames(&mut client, &mut checker, &CancellationToken::new()).await?;
    ensure!(end == support_hostile::PlayEnd::StreamEnded, "player ended with {end:?}");
    if let Some(e) = &checker.error {
        bail!("player: {e}");
    }
    Ok(checker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_publishers_at_a_keyframe_and_players_cleanly_then_exits() -> Result {
    bounded(async {
        let mut srv = start_server_with(|c| c.shutdown_grace_ms = 20_000).await?;
        let opts = opts(&srv);
        let mut players = Vec::new();
        for scheme in ["rtmp", "rtmp+quic"] {
            let url = StreamUrl::parse(&srv.url(scheme, "drain"))?;
            players.push(tokio::spawn(play_checked(url, opts.clone())));
        }
        srv.wait_subscribers("drain", 2).await?;
        let publish = StreamUrl::parse(&srv.url("rtmp", "drain"))?;
        let client = RtmpClient::connect(&publish, ClientMode::Publish, &opts).await?;
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(publish_watching(client, stop.clone()));
        // Past the first GOP, so the next keyframe is a real boundary.
        srv.wait_stats("drain", "40 frames", |s| s.frames > 40).await?;

        let (status, body) =
            call(&srv.api_token, reqwest::Method::POST, &srv.api("/api/drain"), None).await?;
        ensure!(status == StatusCode::ACCEPTED && body["draining"] == true, "{status}: {body}");
        let drained = Instant::now();
        // The relay closed the (legacy) publisher; players got whole GOPs, then the end.
        let published =
            tokio::time::timeout(END_LIMIT, publisher).await.context("publisher still running")??;
        let err = published.err().context("the publisher was not closed by the drain")?;
        let err = format!("{err:#}");
        ensure!(err.contains("closed the publisher") || err.contains("sending a frame"), "{err}");
        for player in players {
            let checker =
                tokio::time::timeout(END_LIMIT, player).await.context("player did not end")???;
            let last = checker.last().context("the player got nothing")?;
            ensure!(
                (last + 1).is_multiple_of(support_hostile::GOP),
                "the stream ended at frame {last}, inside a GOP (a keyframe every {} frames)",
                support_hostile::GOP
            );
        }
        // Nothing left: the relay stops on its own, well before the grace period.
        let took = srv.stopped(Duration::from_secs(15)).await? + drained.elapsed();
        ensure!(took < Duration::from_secs(10), "the drain took {took:?}");
        ensure!(tokio::net::TcpStream::connect(srv.addr).await.is_err(), "still accepting after the drain");
        stop.cancel();
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_asks_reconnect_capable_publishers_to_reconnect() -> Result {
    bounded(async {
        let mut srv = start_server_with(|c| c.shutdown_grace_ms = 20_000).await?;
        // E-RTMP v2 reconnect support declared in `connect` (capsEx, Reconnect bit).
        let caps = ("capsEx".to_owned(), qrelay::rtmp::amf0::Amf0Value::Number(1.0));
        let opts = ClientOptions { connect_properties: vec![caps], ..opts(&srv) };
        let mut publishers = Vec::new();
        let mut players = Vec::new();
        for (scheme, key) in [("rtmp", "rc-tcp"), ("rtmp+quic", "rc-roqr")] {
            let url = StreamUrl::parse(&srv.url("rtmp", key))?;
            players.push(tokio::spawn(play_checked(url, opts.clone())));
            srv.wait_subscribers(key, 1).await?;
            let client =
                RtmpClient::connect(&StreamUrl::parse(&srv.url(scheme, key))?, ClientMode::Publish, &opts)
                    .await?;
            let stop = CancellationToken::new();
            publishers.push((stop.clone(), tokio::spawn(publish_watching(client, stop))));
            srv.wait_stats(key, "10 frames", |s| s.frames > 10).await?;
        }
        let (status, _) = call(&srv.api_token, reqwest::Method::POST, &srv.api("/api/drain"), None).await?;
        ensure!(status == StatusCode::ACCEPTED, "{status}");
        // Still draining while they publish on: they were asked, not cut off.
        for key in ["rc-tcp", "rc-roqr"] {
            let before = srv.stats(key).map_or(0, |s| s.frames);
            srv.wait_stats(key, "publishing on after the request", |s| s.frames > before + 30).await?;
        }
        for (stop, publisher) in publishers {
            // Each leaves (as it would at its next keyframe, reconnecting elsewhere).
            stop.cancel();
            let (sent, request, after) =
                tokio::time::timeout(END_LIMIT, publisher).await??.context("publisher")?;
            let description = request.context("no reconnect request")?;
            ensure!(description.contains("reconnect"), "{description}");
            ensure!(after > 30 && sent > after, "published {sent} frames, {after} after the request");
        }
        for player in players {
            let checker =
                tokio::time::timeout(END_LIMIT, player).await.context("player did not end")???;
            ensure!(checker.received > 40, "the player got {} frames", checker.received);
        }
        srv.stopped(Duration::from_secs(15)).await?;
        Ok(())
    })
    .await
}

/// `chromium --headless --dump-dom URL` with a virtual-time budget (timers run ahead of
/// the wall clock; network answers are awaited).
async fn chromium_dom(url: &str, profile: &std::path::Path) -> Result<String> {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .context("chromium is not installed (scripts/install-test-deps.sh installs it)")?;
    let output = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(40), output).await.context("chromium hung")??;
    ensure!(output.status.success(), "chromium failed: {}", stderr_text(&output));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_streams_in_headless_chromium() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let mut publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "page"), true))?;
        let a = spawn(&mut ffmpeg_player(&srv.url("rtmp", "page"), &srv.path("a.flv")))?;
        let b = spawn(&mut qrelay_play(&srv.url("rtmp+quic", "page"), &srv.ca, &srv.path("b.flv"), None))?;
        srv.wait_subscribers("page", 2).await?;
        wait_json(&srv.api("/api/streams"), "a bitrate sample", |j| {
            stream(j, "live/page").is_some_and(|s| s["bitrate_in"].as_u64() > Some(0))
        })
        .await?;

        let profile = tempfile::tempdir()?;
        // Without the live previews: each is a player that would count among the two.
        let dom = chromium_dom(&srv.api("/#preview=0"), profile.path()).await?;
        let card_at =
            dom.find(r#"data-session="live/page""#).with_context(|| format!("no stream card:\n{dom}"))?;
        let card = &dom[card_at..];
        let field = |class: &str| -> Option<&str> {
            let at = card.find(&format!(r#"class="{class}">"#))? + class.len() + 9;
            card[at..].split('<').next()
        };
        ensure!(field("players") == Some("2"), "players: {:?}\n{card}", field("players"));
        let codecs = field("codecs").unwrap_or_default();
        ensure!(codecs.contains("avc1.") && codecs.contains("mp4a.40.2"), "codecs: {codecs:?}");
        ensure!(field("publisher").is_some_and(|p| p.starts_with("tcp 127.0.0.1:")), "{card}");
        // The plot: one point per poll, several polls within the virtual-time budget.
        let points: usize = card
            .split(r#"data-points=""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no plot:\n{card}"))?;
        ensure!(points >= 2, "the plot has {points} points");
        let line = card.split(r#"<polyline class="in" points=""#).nth(1).and_then(|r| r.split('"').next());
        ensure!(line.is_some_and(|l| l.split(' ').count() == points), "plot line: {line:?}");
        ensure!(dom.contains("1 live stream(s), 2 player(s)"), "summary missing:\n{dom}");

        publisher.start_kill()?;
        drop((a, b));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocated_sessions_carry_tokens_the_relay_accepts() -> Result {
    bounded(async {
        let keep = tempfile::tempdir()?;
        let secret = keep.path().join("secret");
        std::fs::write(&secret, "a test secret that is long enough for HS256 signing")?;
        let srv = start_server_with(|c| {
            c.auth.secret_file = Some(secret.clone());
            c.auth.publish = qrelay::auth::AuthMode::Token;
        })
        .await?;
        let (status, made) = call(
            &srv.api_token,
            reqwest::Method::POST,
            &srv.api("/api/sessions"),
            Some(r#"{"session":"live/tok","ttl_s":600}"#),
        )
        .await?;
        ensure!(status == StatusCode::CREATED && made["tokens"] == true, "{status}: {made}");
        let url = made["publish"]["rtmp+quic"].as_str().context("publish URL")?.to_owned();
        ensure!(url.contains("?token="), "{url}");
        // Playing is open: its URLs carry no token.
        ensure!(made["play"]["rtmp"].as_str().is_some_and(|u| !u.contains("token")), "{made:#}");
        // The relay takes its own token, and only with it.
        let opts = opts(&srv);
        let bare = StreamUrl::parse(&srv.url("rtmp", "tok"))?;
        ensure!(
            RtmpClient::connect(&bare, ClientMode::Publish, &opts).await.is_err(),
            "published without a token"
        );
        let publisher = RtmpClient::connect(&StreamUrl::parse(&url)?, ClientMode::Publish, &opts).await?;
        srv.wait_live("tok").await?;
        // The token stays out of the API.
        let (_, d) = get(&srv.api("/api/streams/live/tok")).await?;
        ensure!(!d.to_string().contains("token="), "{d}");
        drop(publisher);
        Ok(())
    })
    .await
}
