//! Browser playback over WebTransport (ALPN `h3`) against an in-process relay on
//! 127.0.0.1: a client built on `web-transport-quinn` (what a browser does, minus the
//! page) plays what ffmpeg publishes over RTMP and gets every audio and video frame, byte
//! for byte, in the relay's mapping (config stream, audio stream, a stream per GOP);
//! refusals are HTTP statuses; `/webtransport.json` names the certificate the `h3`
//! handshake presents, a short-lived ECDSA P-256 one.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use common::*;
use qrelay::gate::{Decision, Gate, Pending, Request, Role};
use qrelay::media::flv::FlvTag;
use qrelay::media::frame::{Frame, MediaKind};
use qrelay::reason::Reason;
use qrelay::server::webtransport::{FrameHeader, HEADER_LEN};
use qrelay::transport::quic;
use qrelay::transport::tls::{Trust, ALPN_H3, ALPN_ROQR};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use web_transport_quinn::proto::ConnectError::WrongStatus;
use web_transport_quinn::proto::ConnectRequest;
use web_transport_quinn::{ClientError, ConnectError, Session};

/// A QUIC connection to the relay with ALPN `alpn`, not verifying the certificate: the
/// tests compare its hash themselves.
async fn quic_connect(addr: SocketAddr, alpn: &[u8]) -> Result<(quic::ClientEndpoint, quinn::Connection)> {
    let endpoint = quic::client_endpoint(addr, &Trust::Insecure, &Default::default(), alpn)?;
    let conn = timeout(Duration::from_secs(5), endpoint.connect(addr, "localhost"))
        .await
        .context("QUIC connect timed out")??;
    Ok((endpoint, conn))
}

/// A WebTransport session request for `path` (with its query); the endpoint must live as
/// long as the session.
async fn session(
    addr: SocketAddr,
    path: &str,
) -> Result<(quic::ClientEndpoint, std::result::Result<Session, ClientError>)> {
    let (endpoint, conn) = quic_connect(addr, ALPN_H3).await?;
    let url = url::Url::parse(&format!("https://{addr}{path}"))?;
    Ok((endpoint, Session::connect(conn, ConnectRequest::new(url)).await))
}

/// The HTTP status a refused session request got.
fn refused_with(result: std::result::Result<Session, ClientError>) -> Result<u16> {
    match result {
        Ok(_) => bail!("the session was accepted"),
        // The status arrives as the CONNECT response's, which the proto layer reads.
        Err(ClientError::HttpError(ConnectError::ProtoError(WrongStatus(Some(status)))))
        | Err(ClientError::HttpError(ConnectError::ErrorStatus(status))) => Ok(status.as_u16()),
        Err(e) => bail!("refused without a status: {e}"),
    }
}

/// One stream as the player read it.
#[derive(Debug)]
struct ReadStream {
    /// Its QUIC stream id: the order the relay opened them in.
    id: u64,
    frames: Vec<(FrameHeader, Bytes)>,
    /// Finished by the relay (not reset, not cut off by the session's close).
    complete: bool,
}

/// Every whole frame of a stream's bytes; malformed bytes fail, and so does a partial
/// frame at the end of a `complete` stream.
fn parse_frames(mut buf: &[u8], complete: bool) -> Result<Vec<(FrameHeader, Bytes)>> {
    let mut frames = Vec::new();
    while let Some(header) = FrameHeader::decode(buf)? {
        let end = HEADER_LEN + header.len as usize;
        if buf.len() < end {
            break;
        }
        frames.push((header, Bytes::copy_from_slice(&buf[HEADER_LEN..end])));
        buf = &buf[end..];
    }
    ensure!(!complete || buf.is_empty(), "a finished stream ends in a partial frame ({} bytes)", buf.len());
    Ok(frames)
}

/// What a stream carried until it finished or broke off.
async fn read_stream(mut recv: web_transport_quinn::RecvStream) -> Result<ReadStream> {
    let id = recv.quic_id().index();
    let mut bytes = Vec::new();
    let complete = loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk.bytes),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    Ok(ReadStream { id, frames: parse_frames(&bytes, complete)?, complete })
}

/// Reads every stream the relay opens until it closes the session; the streams in the
/// order they were opened, and the close code.
async fn read_session(session: Session) -> Result<(Vec<ReadStream>, u32)> {
    let mut readers = JoinSet::new();
    let closed = loop {
        match session.accept_uni().await {
            Ok(recv) => {
                readers.spawn(read_stream(recv));
            }
            Err(e) => break e,
        }
    };
    let code = match &closed {
        web_transport_quinn::SessionError::WebTransportError(
            web_transport_quinn::WebTransportError::Closed(code, _),
        ) => *code,
        other => bail!("the session ended without a close code: {other}"),
    };
    let mut streams = Vec::new();
    while let Some(read) = readers.join_next().await {
        streams.push(read??);
    }
    streams.sort_by_key(|s| s.id);
    Ok((streams, code))
}

fn tag(header: &FrameHeader, payload: &Bytes) -> FlvTag {
    FlvTag { kind: header.kind, timestamp: header.timestamp, payload: payload.clone() }
}

/// Checks each stream's role in the mapping and puts the tags back together: the
/// configuration first (the file starts with it), then audio, then the GOPs in order.
fn check_mapping(streams: &[ReadStream]) -> Result<Vec<FlvTag>> {
    let (config, rest) = streams.split_first().context("no stream at all")?;
    let is_config = |(h, p): &(FrameHeader, Bytes)| {
        h.kind == MediaKind::Data || Frame::new(h.kind, h.timestamp, p.clone()).is_sequence_header()
    };
    ensure!(config.frames.iter().all(is_config), "the first stream carries media, not only configuration");
    let kinds = |s: &ReadStream| s.frames.first().map(|(h, _)| h.kind);
    let audio: Vec<_> = rest.iter().filter(|s| kinds(s) == Some(MediaKind::Audio)).collect();
    let gops: Vec<_> = rest.iter().filter(|s| kinds(s) == Some(MediaKind::Video)).collect();
    ensure!(audio.len() == 1, "{} audio streams", audio.len());
    ensure!(gops.len() >= 3, "only {} GOP streams for 4 s with a 1 s GOP", gops.len());
    ensure!(audio.len() + gops.len() == rest.len(), "a stream with neither audio nor video");
    let mut tags: Vec<FlvTag> = config.frames.iter().map(|(h, p)| tag(h, p)).collect();
    for s in audio.iter().chain(&gops) {
        ensure!(!s.frames.iter().any(is_config), "configuration outside the config stream");
        let kind = kinds(s);
        ensure!(s.frames.iter().all(|(h, _)| Some(h.kind) == kind), "mixed kinds on stream {}", s.id);
        tags.extend(s.frames.iter().map(|(h, p)| tag(h, p)));
    }
    for gop in &gops {
        let keyframes: Vec<bool> = gop
            .frames
            .iter()
            .map(|(h, p)| Frame::new(h.kind, h.timestamp, p.clone()).is_keyframe())
            .collect();
        ensure!(keyframes.first() == Some(&true), "GOP stream {} does not start with a keyframe", gop.id);
        ensure!(!keyframes[1..].contains(&true), "GOP stream {} holds two keyframes", gop.id);
    }
    Ok(tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_player_gets_every_frame_in_the_mapping() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let addr = srv.addr;
        // The session request waits for the publisher: accepted once it is live.
        let player = tokio::spawn(async move {
            let (_endpoint, session) = session(addr, "/live/wt1").await?;
            read_session(session?).await
        });
        let stats = srv.wait_subscribers("wt1", 1).await?;
        ensure!(!stats.live, "live before anyone published");
        let info = srv.hub.stream_info("live/wt1").context("no stream info")?;
        let transports: Vec<_> =
            info.players.iter().filter_map(|p| p.peer.as_ref().map(|p| p.transport)).collect();
        ensure!(transports == ["webtransport"], "players listed as {transports:?}");

        let started = Instant::now();
        let publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "wt1"), false))?;
        expect_success(&finish(publisher, "ffmpeg publisher", Duration::from_secs(30)).await?, "ffmpeg")?;
        let (streams, code) =
            timeout(Duration::from_secs(10), player).await.context("the session did not end")???;
        ensure!(code == u32::from(Reason::Normal.code()), "closed with {code:#x}, not the stream's end");

        ensure!(streams.iter().all(|s| s.complete), "a stream was reset or cut off");
        let tags = check_mapping(&streams)?;
        assert_same_av_tags(&read_tags(&media().flv).await?, &tags)?;
        // Headers carry the relay's ingest time: within this test's run.
        let run = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as u64;
        let span = started.elapsed().as_millis() as u64 + 1000;
        for s in &streams {
            for (h, _) in &s.frames {
                ensure!(h.ingest_unix_ms <= run && h.ingest_unix_ms + span >= run, "ingest time {h:?}");
            }
        }
        srv.wait_released("wt1").await?;
        let metrics = reqwest::get(srv.api("/metrics")).await?.text().await?;
        ensure!(
            metrics
                .lines()
                .any(|l| l.contains("\"webtransport\"") && l.ends_with(" 1") && l.contains("accepted")),
            "no accepted WebTransport connection in /metrics"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_published_in_time_is_refused_with_404() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.play_wait_ms = 300).await?;
        let asked = Instant::now();
        let (_endpoint, result) = session(srv.addr, "/live/never").await?;
        let waited = asked.elapsed();
        ensure!(refused_with(result)? == 404, "not refused with 404");
        ensure!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(2300),
            "refused after {waited:?}, play_wait_ms is 300"
        );
        wait_until("the refusal to be counted", Duration::from_secs(5), || {
            (srv.counters.get(Reason::StreamNotFound) == 1).then_some(())
        })
        .await?;
        // A path that names no stream is malformed.
        let (_endpoint, result) = session(srv.addr, "/nokey").await?;
        ensure!(refused_with(result)? == 400, "a path without a key not refused with 400");
        Ok(())
    })
    .await
}

/// Refuses plays without a token, as the token gate does; remembers what it was asked.
#[derive(Debug, Default)]
struct NeedsToken(Mutex<Vec<(Role, &'static str, String)>>);

impl Gate for NeedsToken {
    fn decide(&self, request: &Request) -> Pending {
        self.0.lock().unwrap().push((request.role, request.transport, request.key.clone()));
        let decision = match request.param("token") {
            Some("good") => Decision::Allow,
            _ => Decision::refuse(Reason::TokenMissing, "a play token is required"),
        };
        Box::pin(std::future::ready(decision))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_a_play_without_its_token_with_403() -> Result {
    bounded(async {
        let gate = Arc::new(NeedsToken::default());
        let srv = start_server_gated(|c| c.play_wait_ms = 300, Some(gate.clone())).await?;
        let (_endpoint, result) = session(srv.addr, "/live/gated").await?;
        ensure!(refused_with(result)? == 403, "not refused with 403");
        wait_until("the refusal to be counted", Duration::from_secs(5), || {
            (srv.counters.get(Reason::TokenMissing) == 1).then_some(())
        })
        .await?;
        // With the token the gate lets it through (then nothing is published: 404).
        let (_endpoint, result) = session(srv.addr, "/live/gated?token=good").await?;
        ensure!(refused_with(result)? == 404, "an allowed play of nothing not refused with 404");
        let asked = gate.0.lock().unwrap().clone();
        let want = [
            (Role::Play, "webtransport", "gated".to_owned()),
            (Role::Play, "webtransport", "gated?token=good".to_owned()),
        ];
        ensure!(asked == want, "the gate was asked {asked:?}");
        Ok(())
    })
    .await
}

/// `(not_before, not_after)` of a DER certificate, as UTCTime text (`YYMMDDHHMMSSZ`):
/// the first two UTCTime values in a certificate are its validity.
fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime)> {
    let mut times = Vec::new();
    let mut i = 0;
    while i + 15 <= der.len() && times.len() < 2 {
        if der[i] == 0x17 && der[i + 1] == 13 && der[i + 14] == b'Z' {
            let text = std::str::from_utf8(&der[i + 2..i + 14])?;
            let n = |r: std::ops::Range<usize>| text[r].parse::<u64>();
            let (y, mo, d, h, mi, s) = (2000 + n(0..2)?, n(2..4)?, n(4..6)?, n(6..8)?, n(8..10)?, n(10..12)?);
            times.push(
                SystemTime::UNIX_EPOCH
                    + Duration::from_secs(unix_days(y, mo, d) * 86400 + h * 3600 + mi * 60 + s),
            );
            i += 15;
        } else {
            i += 1;
        }
    }
    ensure!(times.len() == 2, "no validity found");
    Ok((times[0], times[1]))
}

/// Days from 1970-01-01 to a date (proleptic Gregorian).
fn unix_days(y: u64, m: u64, d: u64) -> u64 {
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn presented(conn: &quinn::Connection) -> Result<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()
        .context("no peer identity")?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| anyhow::anyhow!("not a rustls chain"))?;
    chain.first().cloned().context("an empty chain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_json_names_the_short_lived_certificate_h3_presents() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let answer = reqwest::get(format!("http://{}/webtransport.json", srv.addr)).await?;
        ensure!(answer.status() == 200, "status {}", answer.status());
        let cors = answer
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        ensure!(cors.as_deref() == Some("*"), "CORS header {cors:?}");
        let json: serde_json::Value = answer.json().await?;
        ensure!(json["port"] == srv.addr.port(), "port in {json}");
        let hashes: Vec<String> = serde_json::from_value(json["certificate_hashes"].clone())?;
        ensure!(hashes.len() == 1, "hashes {hashes:?}");

        let (_endpoint, conn) = quic_connect(srv.addr, ALPN_H3).await?;
        let cert = presented(&conn)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        ensure!(STANDARD.encode(digest) == hashes[0], "the h3 certificate is not the listed one");
        // ECDSA P-256: id-ecPublicKey with the prime256v1 curve.
        let has = |oid: &[u8]| cert.windows(oid.len()).any(|w| w == oid);
        ensure!(has(&[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]), "not an EC key");
        ensure!(has(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]), "not P-256");
        let (not_before, not_after) = validity(&cert)?;
        let span = not_after.duration_since(not_before)?;
        ensure!(span <= Duration::from_secs(14 * 24 * 3600), "valid for {span:?}");
        let now = SystemTime::now();
        ensure!(not_before <= now && now < not_after, "not valid now");

        // Other ALPNs keep the relay's identity (the development CA's leaf).
        let (_endpoint, roqr) = quic_connect(srv.addr, ALPN_ROQR).await?;
        ensure!(presented(&roqr)? != cert, "RoQR got the short-lived certificate");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_configured_certificate_no_hashes_are_listed() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        qrelay::transport::tls::dev_identity(dir.path())?;
        with_configured(dir.path().join("localhost.pem"), dir.path().join("localhost.key")).await
    })
    .await
}

/// A relay with `--cert/--key` (the test server makes a development identity instead).
async fn with_configured(cert: std::path::PathBuf, key: std::path::PathBuf) -> Result {
    let dir = tempfile::tempdir()?;
    let config = qrelay::Config {
        listen: "127.0.0.1:0".parse()?,
        cert_dir: dir.path().join("certs"),
        http_listen: qrelay::config::HttpListen::Off,
        cert: Some(cert.clone()),
        key: Some(key),
        ..Default::default()
    };
    let server = qrelay::Server::bind(config).await?;
    let addr = server.local_addr();
    let shutdown = qrelay::server::Shutdown::default();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let checked = check_no_hashes(addr, &cert).await;
    shutdown.immediate.cancel();
    shutdown.graceful.cancel();
    let _ = task.await;
    checked
}

async fn check_no_hashes(addr: SocketAddr, cert: &std::path::Path) -> Result {
    let json: serde_json::Value =
        reqwest::get(format!("http://{addr}/webtransport.json")).await?.json().await?;
    ensure!(json["certificate_hashes"] == serde_json::json!([]), "hashes listed: {json}");
    let (_endpoint, conn) = quic_connect(addr, ALPN_H3).await?;
    let configured = qrelay::transport::tls::load_certs(cert)?;
    ensure!(presented(&conn)? == configured[0], "h3 does not present the configured certificate");
    Ok(())
}

/// Waits until `live/key` has a WebTransport player that got media; its peer id.
async fn playing(srv: &TestServer, key: &str) -> Result<u64> {
    wait_until("a WebTransport player getting media", Duration::from_secs(10), || {
        let info = srv.hub.stream_info(&format!("live/{key}"))?;
        info.players
            .iter()
            .find(|p| {
                p.live && p.bytes_sent > 0 && p.peer.as_ref().is_some_and(|p| p.transport == "webtransport")
            })
            .and_then(|p| p.peer.as_ref().map(|p| p.id))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_ends_a_webtransport_player() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "wtend"), true))?;
        srv.wait_live("wtend").await?;
        let addr = srv.addr;
        let player = tokio::spawn(async move {
            let (_endpoint, session) = session(addr, "/live/wtend").await?;
            read_session(session?).await
        });
        let id = playing(&srv, "wtend").await?;
        ensure!(srv.hub.end_player(Some("live/wtend"), id), "no such player to end");
        // The end is abrupt: what was in flight may be lost, so only the code is checked.
        let (_, code) =
            timeout(Duration::from_secs(10), player).await.context("the session did not end")???;
        ensure!(code == u32::from(Reason::EndedByApi.code()), "closed with {code:#x}, not ended_by_api");
        wait_until("the end to be counted", Duration::from_secs(5), || {
            (srv.counters.get(Reason::EndedByApi) == 1).then_some(())
        })
        .await?;
        ensure!(
            srv.stats("wtend").is_some_and(|s| s.live && s.subscribers == 0),
            "the stream lost its publisher"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_webtransport_player_stays_through_a_drain_until_its_stream_ends() -> Result {
    bounded(async {
        let mut srv = start_server().await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "wtdrain"), true))?;
        srv.wait_live("wtdrain").await?;
        let addr = srv.addr;
        let player = tokio::spawn(async move {
            let (_endpoint, session) = session(addr, "/live/wtdrain").await?;
            read_session(session?).await
        });
        playing(&srv, "wtdrain").await?;
        srv.shutdown.graceful.cancel();
        // The publisher is ended at its next keyframe; the player gets the stream to there.
        let (streams, code) =
            timeout(Duration::from_secs(10), player).await.context("the session did not end")???;
        ensure!(code == u32::from(Reason::Normal.code()), "closed with {code:#x}, not the stream's end");
        check_mapping_prefix(&streams)?;
        srv.stopped(Duration::from_secs(10)).await?;
        Ok(())
    })
    .await
}

/// A late joiner's streams: configuration first, then audio and whole-GOP prefixes.
fn check_mapping_prefix(streams: &[ReadStream]) -> Result {
    let (config, rest) = streams.split_first().context("no stream at all")?;
    ensure!(!config.frames.is_empty(), "an empty config stream");
    for s in rest {
        let first = s.frames.first().context("an empty media stream")?;
        if first.0.kind == MediaKind::Video {
            ensure!(
                Frame::new(first.0.kind, first.0.timestamp, first.1.clone()).is_keyframe(),
                "a GOP without its keyframe"
            );
        }
    }
    Ok(())
}
