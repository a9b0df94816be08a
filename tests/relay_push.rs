//! Push forwarding end to end: a relay publishing each matching stream to real targets
//! on loopback (nginx-rtmp run as a child process, other qrelay relays over TCP and
//! QUIC), what the targets' players receive compared with what was published, and the
//! failure cases (a target down then up, a dead target beside a live one, loops, hop
//! limits), asserted from the relays' own status and counters.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use common::*;
use qrelay::client::{ClientError, ClientOptions, RtmpClient};
use qrelay::media::frame::MediaKind;
use qrelay::reason::Reason;
use qrelay::relay::hops::hops_property;
use qrelay::relay::push::{ForwardRule, ForwardState};
use qrelay::rtmp::session::{
    ClientEvent, ClientMode, ServerEvent, ServerSession, SessionConfig, SessionError,
};
use qrelay::url::StreamUrl;
use tokio::process::Child;

/// Generous bound for a 4 s file published in real time.
const PUBLISH_LIMIT: Duration = Duration::from_secs(20);
/// How long a player may take to notice the end of its stream.
const END_LIMIT: Duration = Duration::from_secs(10);

fn rule(streams: &str, to: &[String]) -> ForwardRule {
    ForwardRule { streams: streams.into(), to: to.to_vec() }
}

/// Waits for a child to exit within `limit` and requires success.
async fn expect_exit(child: Child, what: &str, limit: Duration) -> Result {
    expect_success(&finish(child, what, limit).await?, what)
}

/// The played file's packets equal the input's from the played file's first keyframe to
/// the end of the input (byte for byte, same timing); returns how many were compared.
async fn expect_same_packets(input: &Path, played: &Path) -> Result<usize> {
    let compared = compare_packets(&probe_packets(input).await?, &probe_packets(played).await?, true)
        .with_context(|| format!("comparing {}", played.display()))?;
    ensure!(compared > 100, "only {compared} packets compared in {}", played.display());
    Ok(compared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_nginx_rtmp_byte_exact() -> Result {
    bounded(async {
        let nginx = Nginx::start().await?;
        // The target names no key: the stream's own (`cam1`) is appended.
        let to = [format!("rtmp://127.0.0.1:{}/live", nginx.port)];
        let relay = start_server_with(|c| c.forward = vec![rule("live/*", &to)]).await?;
        let input = &media().flv;
        let out = relay.path("nginx.flv");
        // nginx-rtmp holds a player of a stream not yet published until it is. The player
        // is qrelay's own: nginx does not close its players when a stream ends, and an
        // ffmpeg player would wait for more for ever; qrelay's ends on nginx's
        // `NetStream.Play.UnpublishNotify`.
        let player = spawn(qrelay(["play", &nginx.url("cam1"), "-o"]).arg(&out))?;
        let publisher = spawn(&mut ffmpeg_publisher(input, &relay.url("rtmp", "cam1"), false))?;

        let status = wait_until("the forward to nginx to send media", Duration::from_secs(10), || {
            relay
                .forwarding
                .status()
                .into_iter()
                .find(|s| s.state == ForwardState::Connected && s.bytes_sent > 0)
        })
        .await?;
        ensure!(status.session_id == "live/cam1", "{status:?}");
        ensure!(status.target == format!("rtmp://127.0.0.1:{}/live/cam1", nginx.port), "{status:?}");

        expect_exit(publisher, "ffmpeg publisher", PUBLISH_LIMIT).await?;
        // The forward ends its session at nginx (FCUnpublish, deleteStream) with the
        // stream, and nginx tells its player.
        expect_exit(player, "player of nginx", END_LIMIT).await?;
        wait_until("the forward to end with its stream", Duration::from_secs(5), || {
            relay.forwarding.status().is_empty().then_some(())
        })
        .await?;
        assert_same_av_tags(&read_tags(input).await?, &read_tags(&out).await?)?;
        expect_same_packets(input, &out).await?;
        for reason in [Reason::TargetUnreachable, Reason::TargetRefused, Reason::TargetLost] {
            ensure!(relay.counters.get(reason) == 0, "{reason} counted");
        }
        relay.wait_released("cam1").await
    })
    .await
}

// ---------------------------------------------------------------------------------------
// qrelay to qrelay over QUIC
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_another_qrelay_over_quic_with_the_key_appended_or_renamed() -> Result {
    bounded(async {
        let edge = start_server().await?;
        let to = [
            // RoQR, the stream's key appended.
            format!("rtmp+quic://localhost:{}/live", edge.addr.port()),
            // The QUIC tunnel mapping, under another app and key.
            format!("rtmp+quic://localhost:{}/other/renamed?mode=tunnel", edge.addr.port()),
        ];
        let ca = edge.ca.clone();
        let origin = start_server_with(|c| {
            c.forward = vec![rule("live/*", &to)];
            c.relay_ca = Some(ca);
        })
        .await?;
        let input = &media().flv;
        let (appended, renamed) = (edge.path("appended.flv"), edge.path("renamed.flv"));
        let edge_url = |path: &str| format!("rtmp+quic://{}/{path}", edge.addr);
        let players = [
            spawn(&mut qrelay_play(&edge_url("live/cam2"), &edge.ca, &appended, None))?,
            spawn(&mut qrelay_play(&edge_url("other/renamed"), &edge.ca, &renamed, None))?,
        ];
        edge.wait_subscribers("cam2", 1).await?;
        wait_until("the renamed key's player", Duration::from_secs(10), || {
            edge.hub.stats("other/renamed").filter(|s| s.subscribers == 1)
        })
        .await?;
        let publisher =
            spawn(&mut qrelay_publish(input, &origin.url("rtmp+quic", "cam2"), &origin.ca, false))?;

        let forwards = wait_until("both forwards to send media", Duration::from_secs(10), || {
            let list = origin.forwarding.status_of("live/cam2");
            let sending =
                list.iter().filter(|s| s.state == ForwardState::Connected && s.bytes_sent > 0).count();
            (sending == 2).then_some(list)
        })
        .await?;
        let targets: Vec<&str> = forwards.iter().map(|s| s.target.as_str()).collect();
        let port = edge.addr.port();
        let want = [
            format!("rtmp+quic://localhost:{port}/live/cam2"),
            // A key that is not the stream's own may be a credential: not shown.
            format!("rtmp+quic://localhost:{port}/other/***"),
        ];
        ensure!(targets == want, "targets {targets:?}");

        expect_exit(publisher, "qrelay publish", PUBLISH_LIMIT).await?;
        let [p1, p2] = players;
        expect_exit(p1, "player of the appended key", END_LIMIT).await?;
        expect_exit(p2, "player of the renamed key", END_LIMIT).await?;
        let published = read_tags(input).await?;
        assert_same_av_tags(&published, &read_tags(&appended).await?).context("appended key")?;
        assert_same_av_tags(&published, &read_tags(&renamed).await?).context("renamed key")?;
        origin.wait_released("cam2").await?;
        edge.wait_released("cam2").await
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Failing targets
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_comes_up_late_gets_the_stream_and_a_dead_one_harms_nobody() -> Result {
    bounded(async {
        let healthy = start_server().await?;
        // Both ports are held (refusing connections) for the whole test: the dead one is
        // never served, the late one is served later by a relay started on it.
        let (late_reserved, dead_reserved) = (reserve_port()?, reserve_port()?);
        let (late_port, dead_port) = (late_reserved.local_addr().port(), dead_reserved.local_addr().port());
        let to = [
            format!("rtmp://127.0.0.1:{dead_port}/live"),
            format!("rtmp://127.0.0.1:{late_port}/live"),
            format!("rtmp://{}/live", healthy.addr),
        ];
        let origin = start_server_with(|c| {
            c.forward = vec![rule("live/*", &to)];
            c.forward_backoff_min_ms = 50;
            c.forward_backoff_max_ms = 400;
        })
        .await?;
        let input = &media().flv;
        let (direct_out, healthy_out, late_out) =
            (origin.path("direct.flv"), healthy.path("healthy.flv"), origin.path("late.flv"));
        let direct = spawn(&mut ffmpeg_player(&origin.url("rtmp", "cam3"), &direct_out))?;
        let healthy_player = spawn(&mut ffmpeg_player(&healthy.url("rtmp", "cam3"), &healthy_out))?;
        origin.wait_subscribers("cam3", 1).await?;
        healthy.wait_subscribers("cam3", 1).await?;
        let publisher = spawn(&mut ffmpeg_publisher(input, &origin.url("rtmp", "cam3"), false))?;

        // The late target is down: its forward fails and backs off.
        let late_target = format!("rtmp://127.0.0.1:{late_port}/live/cam3");
        wait_until("the late target's forward to back off", Duration::from_secs(10), || {
            origin.forwarding.status().into_iter().find(|s| s.target == late_target && s.reconnects >= 1)
        })
        .await?;
        // Now it comes up, with a player waiting for the stream.
        let late = start_server_on(late_reserved, |_| {}, None).await?;
        let late_player = spawn(&mut ffmpeg_player(&late.url("rtmp", "cam3"), &late_out))?;
        let status =
            wait_until("the late target to get the stream", Duration::from_secs(10), || {
                origin.forwarding.status().into_iter().find(|s| {
                    s.target == late_target && s.state == ForwardState::Connected && s.bytes_sent > 0
                })
            })
            .await?;
        ensure!(status.last_error.as_deref().is_some_and(|e| e.contains("target_unreachable")), "{status:?}");
        let dead = origin.forwarding.status().into_iter().find(|s| s.target.contains(&dead_port.to_string()));
        let dead = dead.context("the dead target's forward is listed")?;
        ensure!(dead.state != ForwardState::Connected && dead.bytes_sent == 0, "{dead:?}");

        expect_exit(publisher, "ffmpeg publisher", PUBLISH_LIMIT).await?;
        expect_exit(direct, "player of the origin", END_LIMIT).await?;
        expect_exit(healthy_player, "player of the healthy target", END_LIMIT).await?;
        expect_exit(late_player, "player of the late target", END_LIMIT).await?;
        // The publisher's own players and the healthy target lost nothing; the late
        // target's player starts at a keyframe (the cached GOP) and misses nothing after.
        expect_same_packets(input, &direct_out).await?;
        expect_same_packets(input, &healthy_out).await?;
        let late_packets = probe_packets(&late_out).await?;
        compare_packets(&probe_packets(input).await?, &late_packets, true).context("late target")?;
        ensure!(!late_packets.is_empty(), "the late target got nothing");
        // Every failed attempt on the dead and late targets was counted, and the dead
        // target's forward stopped with the stream.
        ensure!(origin.counters.get(Reason::TargetUnreachable) >= 3, "failures not counted");
        wait_until("every forward to end with the stream", Duration::from_secs(5), || {
            origin.forwarding.status().is_empty().then_some(())
        })
        .await?;
        Ok(())
    })
    .await
}

/// An RTMP server that accepts every publish and then reads nothing more: the target of
/// a relay that can no longer send to it. Holds every connection until dropped.
async fn black_hole() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            if accept_publish(&mut socket).await.is_some() {
                held.push(socket);
            }
        }
    });
    Ok((addr, task))
}

/// Answers a client up to its accepted publish; `None` if it went away first.
async fn accept_publish(socket: &mut tokio::net::TcpStream) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut session = ServerSession::new(SessionConfig::default());
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = socket.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        session.handle_input(&buf[..n]).ok()?;
        let mut publishing = false;
        while let Some(event) = session.poll_event() {
            if let ServerEvent::PublishRequest { .. } = event {
                session.core().accept_publish();
                publishing = true;
            }
        }
        if let Some(out) = session.take_output() {
            socket.write_all(&out).await.ok()?;
        }
        if publishing {
            return Some(());
        }
    }
}

/// A large synthetic picture: keyframes every 30.
fn big_frame(i: u32) -> Bytes {
    let mut frame = vec![if i.is_multiple_of(30) { 0x17 } else { 0x27 }, 1, 0, 0, 0];
    frame.extend_from_slice(&i.to_be_bytes());
    frame.resize(128 * 1024, i as u8);
    Bytes::from(frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_reading_is_given_up_without_slowing_the_publisher() -> Result {
    bounded(async {
        const FRAMES: u32 = 120;
        let (hole, _hole_task) = black_hole().await?;
        let origin = start_server_with(|c| {
            c.forward = vec![rule("live/*", &[format!("rtmp://{hole}/live")])];
            c.write_timeout_ms = 300;
        })
        .await?;
        let opts = ClientOptions::default();
        let url = StreamUrl::parse(&origin.url("rtmp", "big"))?;
        let (seen_tx, mut seen) = tokio::sync::watch::channel(0u32);
        let play_url = url.clone();
        let player = tokio::spawn(async move {
            let mut client =
                RtmpClient::connect(&play_url, ClientMode::Play, &ClientOptions::default()).await?;
            let mut n = 0u32;
            while let Some(event) = client.read_event().await? {
                match event {
                    ClientEvent::Media { kind: MediaKind::Video, payload, .. } => {
                        ensure!(payload == big_frame(n), "picture {n} is not the one published");
                        n += 1;
                        let _ = seen_tx.send(n);
                    }
                    ClientEvent::StreamEnded => break,
                    _ => {}
                }
            }
            anyhow::Ok(n)
        });
        origin.wait_subscribers("big", 1).await?;

        // 15 MiB, far more than the stalled target's socket buffers take: its forward's
        // writes stop. The publisher is paced by its own player only (a few frames
        // ahead), never by the forward.
        let mut publisher = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
        for i in 0..FRAMES {
            seen.wait_for(|n| n + 4 > i).await.context("the player stopped early")?;
            publisher.send_media(MediaKind::Video, i * 33, big_frame(i)).await?;
        }
        let status = wait_until("the stalled target to be given up", Duration::from_secs(10), || {
            origin.forwarding.status().into_iter().find(|s| s.reconnects >= 1)
        })
        .await?;
        let error = status.last_error.unwrap_or_default();
        ensure!(error.contains("target_stalled"), "{error}");
        ensure!(origin.counters.get(Reason::TargetStalled) >= 1, "the stall was not counted");
        publisher.finish().await?;
        let played = player.await??;
        ensure!(played == FRAMES, "the player got {played} of {FRAMES} pictures");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Loops and hop counts
// ---------------------------------------------------------------------------------------

/// A few frames of a synthetic H.264 stream.
fn synth_frames() -> Vec<(MediaKind, u32, Bytes)> {
    let header = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff]);
    let mut frames = vec![(MediaKind::Video, 0, header)];
    for i in 0..10u32 {
        let key = if i == 0 { 0x17 } else { 0x27 };
        frames.push((MediaKind::Video, i * 33, Bytes::from(vec![key, 1, 0, 0, 0, 0xAB, i as u8])));
    }
    frames
}

/// Publishes a few frames to `url` with the project's client and keeps the session open.
async fn publish_synth(url: &str, opts: &ClientOptions) -> Result<RtmpClient> {
    let url = StreamUrl::parse(url)?;
    let mut client = RtmpClient::connect(&url, ClientMode::Publish, opts).await?;
    for (kind, ts, payload) in synth_frames() {
        client.send_media(kind, ts, payload).await?;
    }
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_to_the_relay_itself_is_refused() -> Result {
    bounded(async {
        let relay = start_server().await?;
        let port = relay.addr.port();
        // By address, by a name that resolves to it, over TCP and QUIC (same port).
        let to = [format!("rtmp://127.0.0.1:{port}/loop/a"), format!("rtmp+quic://localhost:{port}/loop/b")];
        relay.forwarding.set_rules(vec![rule("live/*", &to)]).map_err(anyhow::Error::msg)?;
        let client = publish_synth(&relay.url("rtmp", "self"), &ClientOptions::default()).await?;
        wait_until("both loops to be refused", Duration::from_secs(10), || {
            (relay.counters.get(Reason::RelayLoop) == 2).then_some(())
        })
        .await?;
        ensure!(relay.forwarding.status().is_empty(), "a refused forward is running");
        ensure!(relay.hub.live_streams() == ["live/self"], "streams {:?}", relay.hub.live_streams());
        client.finish().await?;
        relay.wait_released("self").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_counts_bound_a_chain_of_forwards() -> Result {
    bounded(async {
        // origin → mid → last, where `last` takes streams of at most 1 hop, and origin →
        // short, which takes 1 hop but may not pass the stream on (its next would be 2).
        let last = start_server_with(|c| c.max_hops = 1).await?;
        let mid = start_server_with(|c| c.forward = vec![rule("live/*", &[format!("rtmp://{}/live", last.addr)])])
            .await?;
        let short = start_server_with(|c| {
            c.max_hops = 1;
            c.forward = vec![rule("live/*", &[format!("rtmp://{}/short", last.addr)])];
        })
        .await?;
        let to = [format!("rtmp://{}/live", mid.addr), format!("rtmp://{}/live", short.addr)];
        let origin = start_server_with(|c| c.forward = vec![rule("live/*", &to)]).await?;

        let client = publish_synth(&origin.url("rtmp", "hop"), &ClientOptions::default()).await?;
        mid.wait_live("hop").await?;
        short.wait_live("hop").await?;
        // `short` does not forward: the next hop would exceed its max_hops.
        wait_until("short to refuse the next hop", Duration::from_secs(10), || {
            (short.counters.get(Reason::HopLimit) == 1).then_some(())
        })
        .await?;
        ensure!(short.forwarding.status().is_empty(), "short forwards anyway");
        // `last` refuses mid's forward, which announces 2 hops; mid counts the refusal
        // and keeps trying while the stream is live.
        let refused = wait_until("mid's forward to be refused", Duration::from_secs(10), || {
            mid.forwarding.status().into_iter().find(|s| s.last_error.is_some())
        })
        .await?;
        let error = refused.last_error.unwrap_or_default();
        ensure!(error.contains("target_refused") && error.contains("max_hops"), "{error}");
        ensure!(last.counters.get(Reason::HopLimit) >= 1, "last did not count the refusal");
        ensure!(last.hub.live_streams().is_empty(), "last took a stream over its hop limit");

        // The same refusal for any client announcing too many hops.
        let opts = ClientOptions { connect_properties: vec![hops_property(5)], ..ClientOptions::default() };
        let e = publish_synth(&last.url("rtmp", "direct"), &opts).await.unwrap_err();
        let refusal = e.downcast_ref::<ClientError>();
        ensure!(
            matches!(refusal, Some(ClientError::Session(SessionError::Refused { code, .. })) if code == "NetStream.Publish.BadName"),
            "{e:#}"
        );
        // One announcing hops within the limit is taken.
        let opts = ClientOptions { connect_properties: vec![hops_property(1)], ..ClientOptions::default() };
        publish_synth(&last.url("rtmp", "direct"), &opts).await?.finish().await?;

        client.finish().await?;
        origin.wait_released("hop").await?;
        mid.wait_released("hop").await
    })
    .await
}
