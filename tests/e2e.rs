//! End-to-end tests: a real relay on 127.0.0.1 (TCP and QUIC on one port), real ffmpeg
//! publishers and players, and the project's own `qrelay publish`/`play` over QUIC, TLS
//! and TCP. Every test is bounded in time and its child processes die with it.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::media::flv::FlvTag;
use qrelay::media::frame::{inspect_video, MediaKind};
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use tokio::sync::watch;
use tokio::time::Instant;

/// Generous bound for a 4 s file published in real time.
const PUBLISH_LIMIT: Duration = Duration::from_secs(20);
/// How long a player may take to notice the end of its stream.
const END_LIMIT: Duration = Duration::from_secs(5);

fn client_options(srv: &TestServer) -> ClientOptions {
    ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() }
}

/// The video tags of a played file start with a sequence header, then a keyframe.
fn assert_keyframe_first(tags: &[FlvTag]) -> Result {
    let video = video_payloads(tags);
    ensure!(video.len() >= 2, "only {} video tags", video.len());
    ensure!(inspect_video(video[0]).sequence_header, "first video tag is not a sequence header");
    ensure!(inspect_video(video[1]).keyframe, "first picture is not a keyframe");
    Ok(())
}

fn has_metadata(tags: &[FlvTag]) -> bool {
    tags.iter().any(|t| t.kind == MediaKind::Data && t.payload.windows(10).any(|w| w == b"onMetaData"))
}

/// Waits for the publisher and both players to finish cleanly, then checks what they
/// wrote against `input`: the ffmpeg player's packets one for one (ffprobe) and the
/// qrelay player's audio/video tags byte for byte.
async fn expect_fan_out(
    input: &std::path::Path,
    (publisher, publisher_name): (tokio::process::Child, &str),
    [(ff_player, ff_out), (q_player, q_out)]: [(tokio::process::Child, std::path::PathBuf); 2],
) -> Result {
    expect_success(&finish(publisher, publisher_name, PUBLISH_LIMIT).await?, publisher_name)?;
    expect_success(&finish(ff_player, "ffmpeg player", END_LIMIT).await?, "ffmpeg player")?;
    expect_success(&finish(q_player, "qrelay play", END_LIMIT).await?, "qrelay play")?;
    let compared = compare_packets(&probe_packets(input).await?, &probe_packets(&ff_out).await?, true)?;
    ensure!(compared > 200, "only {compared} packets compared");
    assert_same_av_tags(&read_tags(input).await?, &read_tags(&q_out).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_publish_fans_out_to_ffmpeg_and_quic_players() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let (ff_out, q_out) = (srv.path("ffmpeg.flv"), srv.path("quic.flv"));

        let ff_player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "t1"), &ff_out))?;
        let q_player = spawn(&mut qrelay_play(&srv.url("rtmp+quic", "t1"), &srv.ca, &q_out, None))?;
        srv.wait_subscribers("t1", 2).await?;
        ensure!(!srv.stats("t1").unwrap().live, "live before anyone published");

        let publisher = spawn(&mut ffmpeg_publisher(input, &srv.url("rtmp", "t1"), false))?;
        // The TCP player keeps up, so the publisher writes to its socket directly (the
        // byte-exact comparison below then covers that path).
        srv.wait_stats("t1", "direct writes to the TCP player", |s| s.direct_writes > 30).await?;
        let players = [(ff_player, ff_out), (q_player, q_out)];
        expect_fan_out(input, (publisher, "ffmpeg publisher"), players).await?;
        srv.wait_released("t1").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_publish_fans_out_to_tcp_and_quic_players() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let (ff_out, q_out) = (srv.path("ffmpeg.flv"), srv.path("quic.flv"));

        let ff_player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "t2"), &ff_out))?;
        let quic_url = format!("{}?quic=1", srv.url("rtmp", "t2"));
        let q_player = spawn(&mut qrelay_play(&quic_url, &srv.ca, &q_out, None))?;
        srv.wait_subscribers("t2", 2).await?;

        let publisher = spawn(&mut qrelay_publish(input, &srv.url("rtmpq", "t2"), &srv.ca, false))?;
        let players = [(ff_player, ff_out), (q_player, q_out)];
        expect_fan_out(input, (publisher, "qrelay publish"), players).await?;
        srv.wait_released("t2").await
    })
    .await
}

/// `qrelay play --arrivals`: one line per video picture the player wrote (sequence
/// headers left out), same timestamps and keyframe flags, on a wall clock that brackets
/// the run and advances with the paced publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_arrivals_log_matches_the_played_video() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let (out, log) = (srv.path("arrivals.flv"), srv.path("arrivals.tsv"));
        let unix_ms = || {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3)
        };
        let started = unix_ms()?;
        let mut play = qrelay_play(&srv.url("rtmp", "arr"), &srv.ca, &out, None);
        play.arg("--arrivals").arg(&log);
        let player = spawn(&mut play)?;
        srv.wait_subscribers("arr", 1).await?;
        let publisher = spawn(&mut qrelay_publish(&media().flv, &srv.url("rtmp", "arr"), &srv.ca, false))?;
        expect_success(&finish(publisher, "qrelay publish", PUBLISH_LIMIT).await?, "qrelay publish")?;
        expect_success(&finish(player, "qrelay play", END_LIMIT).await?, "qrelay play")?;
        let ended = unix_ms()?;

        let text = std::fs::read_to_string(&log)?;
        let mut lines = text.lines();
        ensure!(lines.next() == Some("# media_ms\tarrival_unix_ms\tkey"), "no header line");
        let logged = lines
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                ensure!(f.len() == 3, "bad line `{l}`");
                Ok((f[0].parse::<u32>()?, f[1].parse::<f64>()?, f[2] == "1"))
            })
            .collect::<Result<Vec<_>>>()?;
        let tags = read_tags(&out).await?;
        let pictures: Vec<(u32, bool)> = tags
            .iter()
            .filter(|t| t.kind == MediaKind::Video && !inspect_video(&t.payload).sequence_header)
            .map(|t| (t.timestamp, inspect_video(&t.payload).keyframe))
            .collect();
        ensure!(pictures.len() > 100, "only {} pictures played", pictures.len());
        let from_log: Vec<(u32, bool)> = logged.iter().map(|&(ts, _, key)| (ts, key)).collect();
        ensure!(from_log == pictures, "the log does not list the played pictures");
        ensure!(
            pictures.iter().filter(|p| p.1).count() >= 4,
            "fewer than 4 keyframes in a 4 s, 1 s GOP file"
        );

        let arrivals: Vec<f64> = logged.iter().map(|l| l.1).collect();
        ensure!(arrivals.windows(2).all(|w| w[0] <= w[1]), "arrival times go backwards");
        let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
        ensure!(
            started <= first && last <= ended,
            "arrivals {first}..{last} outside the run {started}..{ended}"
        );
        // Paced at the file's real time: the ~4 s of media arrive over about 4 s.
        ensure!(last - first > 3000.0, "4 s of media arrived within {} ms", last - first);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_is_refused_and_first_continues() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let mut first = spawn(&mut qrelay_publish(input, &srv.url("rtmp+quic", "dup"), &srv.ca, true))?;
        srv.wait_live("dup").await?;

        // A player that is already watching when the second publisher tries.
        let early_out = srv.path("early.flv");
        let early = spawn(&mut qrelay_play(&srv.url("rtmpq", "dup"), &srv.ca, &early_out, Some(4.0)))?;
        srv.wait_subscribers("dup", 1).await?;

        let second = spawn(&mut ffmpeg_publisher(input, &srv.url("rtmp", "dup"), false))?;
        let refused = finish(second, "second publisher", Duration::from_secs(10)).await?;
        ensure!(!refused.status.success(), "the second publisher was not refused");
        let err = stderr_text(&refused);
        ensure!(
            err.contains("already has a publisher") || err.contains("BadName"),
            "ffmpeg did not report the refusal: {err}"
        );

        let frames = srv.wait_live("dup").await?.frames;
        let late_out = srv.path("late.flv");
        let late = spawn(&mut qrelay_play(&srv.url("rtmp", "dup"), &srv.ca, &late_out, Some(3.0)))?;
        expect_success(&finish(late, "late player", Duration::from_secs(10)).await?, "late player")?;
        expect_success(&finish(early, "early player", Duration::from_secs(10)).await?, "early player")?;

        let late_tags = read_tags(&late_out).await?;
        assert_keyframe_first(&late_tags)?;
        let late_video = video_payloads(&late_tags).len();
        ensure!(late_video > 60, "late player got only {late_video} video frames in 3 s");

        // The early player kept receiving across the refusal: ~4 s of video, no gap.
        let early_tags = read_tags(&early_out).await?;
        let stamps: Vec<u32> =
            early_tags.iter().filter(|t| t.kind == MediaKind::Video).map(|t| t.timestamp).collect();
        ensure!(stamps.len() > 90, "early player got only {} video frames in 4 s", stamps.len());
        let gap = stamps.windows(2).map(|w| w[1].wrapping_sub(w[0])).max().unwrap_or(0);
        ensure!(gap < 250, "early player's video has a {gap} ms gap");

        let after = srv.wait_stats("dup", "frames still flowing", |s| s.live && s.frames > frames).await?;
        ensure!(after.live, "first publisher stopped");
        ensure!(first.try_wait()?.is_none(), "the first publisher exited");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_before_publisher_waits_then_plays() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let out = srv.path("play.flv");
        let mut player = spawn(&mut qrelay_play(&srv.url("rtmp", "wait"), &srv.ca, &out, None))?;
        let stats = srv.wait_subscribers("wait", 1).await?;
        ensure!(!stats.live, "live before anyone published");
        ensure!(player.try_wait()?.is_none(), "the player gave up instead of waiting");

        let url = format!("{}?quic=1", srv.url("rtmp", "wait"));
        let publisher = spawn(&mut qrelay_publish(input, &url, &srv.ca, false))?;
        expect_success(&finish(publisher, "qrelay publish", PUBLISH_LIMIT).await?, "qrelay publish")?;
        expect_success(&finish(player, "qrelay play", END_LIMIT).await?, "qrelay play")?;

        let played = read_tags(&out).await?;
        assert_same_av_tags(&read_tags(input).await?, &played)?;
        ensure!(has_metadata(&played), "metadata missing");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_gives_up_after_play_wait() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.play_wait_ms = 300).await?;
        let start = Instant::now();
        let player =
            spawn(&mut qrelay_play(&srv.url("rtmpq", "never"), &srv.ca, &srv.path("never.flv"), None))?;
        let output = finish(player, "qrelay play", Duration::from_secs(5)).await?;
        let elapsed = start.elapsed();
        ensure!(!output.status.success(), "play of a stream never published succeeded");
        let err = stderr_text(&output);
        ensure!(err.contains("StreamNotFound"), "no StreamNotFound in: {err}");
        ensure!(elapsed >= Duration::from_millis(300), "gave up after {elapsed:?}, before the play wait");
        srv.wait_released("never").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_keyframe_first_immediately() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let _publisher = spawn(&mut qrelay_publish(&media().gop2, &srv.url("rtmp", "late"), &srv.ca, true))?;
        // Just over 1 s into a 2 s GOP (30 video + ~43 audio frames a second): without
        // the cache, a player joining now would wait most of a second for the next
        // keyframe. The upper bound leaves ~0.5 s before the GOP rolls over.
        srv.wait_stats("late", "1 s into a GOP", |s| s.live && (76..110).contains(&s.gop_frames)).await?;

        let url = StreamUrl::parse(&srv.url("rtmp", "late"))?;
        let start = Instant::now();
        let mut client = RtmpClient::connect(&url, ClientMode::Play, &client_options(&srv)).await?;
        let burst_end = start + Duration::from_millis(500);
        let mut first_video = None;
        let mut video = Vec::new();
        let mut metadata = false;
        while let Ok(event) = tokio::time::timeout_at(burst_end, client.read_event()).await {
            match event?.context("the relay closed the player")? {
                ClientEvent::Media { kind: MediaKind::Video, payload, .. } => {
                    first_video.get_or_insert_with(|| start.elapsed());
                    video.push(payload);
                }
                ClientEvent::Media { kind: MediaKind::Data, .. } => metadata = true,
                _ => {}
            }
        }
        let first_video = first_video.context("no video within 500 ms")?;
        ensure!(first_video < Duration::from_secs(1), "first video after {first_video:?}");
        ensure!(metadata, "no metadata before the cached GOP");
        ensure!(inspect_video(&video[0]).sequence_header, "first video is not a sequence header");
        ensure!(video.len() > 1 && inspect_video(&video[1]).keyframe, "first picture is not a keyframe");
        // The cached GOP arrives at once; in real time 500 ms hold at most ~15 frames.
        ensure!(video.len() >= 25, "only {} video frames in the first 500 ms", video.len());
        drop(client);

        let out = srv.path("late.flv");
        let player = spawn(&mut qrelay_play(&srv.url("rtmp+quic", "late"), &srv.ca, &out, Some(1.0)))?;
        expect_success(&finish(player, "qrelay play", Duration::from_secs(10)).await?, "qrelay play")?;
        let tags = read_tags(&out).await?;
        assert_keyframe_first(&tags)?;
        ensure!(has_metadata(&tags), "metadata missing");
        ensure!(tags[0].kind == MediaKind::Data, "metadata is not the first tag");
        Ok(())
    })
    .await
}

/// Synthetic legacy-AVC video for the stalled-player test: a sequence header, then 64 KiB
/// frames, a keyframe every 30, each payload unique.
const SYNTH_FRAME: usize = 64 * 1024;
const SYNTH_FRAMES: usize = 640; // 40 MiB

/// Per-subscriber queue bound in the tests with a stalled or slow player.
const QUEUE: usize = 512 * 1024;
/// Frames the publisher may be ahead of the normal player. Keeps the normal player's
/// queue (≤ 4 × 64 KiB) under [`QUEUE`] however the two cores are scheduled, so its
/// "every frame" assertion is deterministic; stalled or slow players get no such courtesy.
const WINDOW: usize = 4;

fn synth_header() -> Bytes {
    Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1e, 0xff])
}

fn synth_frame(i: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(SYNTH_FRAME);
    b.put_slice(&[if i.is_multiple_of(30) { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
    b.put_u64(i as u64);
    b.resize(SYNTH_FRAME, i as u8);
    b.freeze()
}

/// A player that reads everything, checking each video message against what was sent and
/// publishing its count to `progress`. Ends with the count when the stream ends.
fn spawn_normal_player(
    url: StreamUrl,
    opts: ClientOptions,
    progress: watch::Sender<usize>,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    tokio::spawn(async move {
        let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
        let mut n = 0usize;
        loop {
            match client.read_event().await? {
                Some(ClientEvent::Media { kind: MediaKind::Video, timestamp, payload }) => {
                    let (want, want_ts) = match n {
                        0 => (synth_header(), 0),
                        _ => (synth_frame(n - 1), (n as u32 - 1) * 33),
                    };
                    ensure!(
                        payload == want && timestamp == want_ts,
                        "video message {n}: {} bytes @{timestamp} ms, not the frame sent",
                        payload.len()
                    );
                    n += 1;
                    let _ = progress.send(n);
                }
                Some(ClientEvent::StreamEnded) | None => return anyhow::Ok(n),
                Some(_) => {}
            }
        }
    })
}

/// Publishes the synthetic stream at the normal player's pace (never more than
/// [`WINDOW`] frames ahead of what it has `seen`). Returns the publisher, still
/// connected, once every frame was sent.
async fn publish_synth_paced(
    url: &StreamUrl,
    opts: &ClientOptions,
    mut seen: watch::Receiver<usize>,
) -> anyhow::Result<RtmpClient> {
    let mut publisher = RtmpClient::connect(url, ClientMode::Publish, opts).await?;
    publisher.send_media(MediaKind::Video, 0, synth_header()).await?;
    for i in 0..SYNTH_FRAMES {
        // `seen` counts the header too: frame i - WINDOW must have arrived.
        seen.wait_for(|n| *n + WINDOW > i).await.context("the normal player stopped early")?;
        publisher.send_media(MediaKind::Video, i as u32 * 33, synth_frame(i)).await?;
    }
    Ok(publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_does_not_slow_others_or_grow_memory() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.queue_max_bytes = QUEUE).await?;
        let url = StreamUrl::parse(&srv.url("rtmp", "stall"))?;
        let opts = client_options(&srv);

        // Stalled player: plays, then never reads again (held until the end).
        let (release, mut released) = watch::channel(false);
        let stalled = tokio::spawn({
            let (url, opts) = (url.clone(), opts.clone());
            async move {
                let client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
                let _ = released.wait_for(|r| *r).await;
                drop(client);
                anyhow::Ok(())
            }
        });
        let (progress, seen) = watch::channel(0usize);
        let normal = spawn_normal_player(url.clone(), opts.clone(), progress);
        srv.wait_subscribers("stall", 2).await?;

        // Samples the largest subscriber queue while publishing.
        let hub = srv.hub.clone();
        let (stop, stopped) = watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut max = 0;
            while !*stopped.borrow() {
                if let Some(s) = hub.stats("live/stall") {
                    max = max.max(s.max_queued_bytes);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        });

        let start = Instant::now();
        let publisher = match publish_synth_paced(&url, &opts, seen).await {
            Ok(p) => p,
            Err(e) => anyhow::bail!("{e:#}; normal player: {:?}", normal.await?),
        };
        let skipped = srv.stats("stall").context("stream gone while publishing")?.skipped;
        publisher.finish().await?;
        let publish_time = start.elapsed();
        let received =
            tokio::time::timeout(END_LIMIT, normal).await.context("normal player did not end")???;
        let _ = stop.send(true);
        let max_queued = sampler.await?;
        let _ = release.send(true);
        stalled.await??;

        ensure!(
            received == SYNTH_FRAMES + 1,
            "normal player got {received} of {} video messages",
            SYNTH_FRAMES + 1
        );
        ensure!(publish_time < Duration::from_secs(20), "publishing 40 MiB took {publish_time:?}");
        ensure!(skipped > 0, "the stalled player skipped nothing");
        ensure!(max_queued <= QUEUE + SYNTH_FRAME, "a queue held {max_queued} bytes (bound {QUEUE})");
        ensure!(max_queued >= QUEUE / 2, "the stalled queue never filled ({max_queued} bytes)");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_player_gets_an_intact_stream_across_direct_and_queued_writes() -> Result {
    // A player that reads slower than the stream until it has fallen behind, then at full
    // speed: its socket fills, so the publisher's direct writes to it stop part way
    // through a frame and hand over to its task, which finishes the frame, drains the
    // queue, skips when the queue overflows, catches up and hands back. Whatever it
    // receives must be whole frames, in order, resuming only at keyframes.
    bounded(async {
        let srv = start_server_with(|c| c.queue_max_bytes = QUEUE).await?;
        let url = StreamUrl::parse(&srv.url("rtmp", "slow"))?;
        let opts = client_options(&srv);

        let slow = tokio::spawn({
            let (url, opts, hub) = (url.clone(), opts.clone(), srv.hub.clone());
            async move {
                let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
                let (mut got, mut resumed, mut last) = (0usize, 0usize, None::<usize>);
                loop {
                    match client.read_event().await? {
                        Some(ClientEvent::Media { kind: MediaKind::Video, timestamp, payload }) => {
                            if payload == synth_header() {
                                continue;
                            }
                            let i = payload.get(5..13).map_or(usize::MAX, |b| {
                                u64::from_be_bytes(b.try_into().unwrap_or_default()) as usize
                            });
                            ensure!(
                                i < SYNTH_FRAMES && payload == synth_frame(i) && timestamp == i as u32 * 33,
                                "a corrupt frame: {} bytes @{timestamp} ms (index {i})",
                                payload.len()
                            );
                            match last {
                                Some(l) if i == l + 1 => {}
                                Some(l) => {
                                    ensure!(i > l, "frame {i} after frame {l}");
                                    ensure!(i.is_multiple_of(30), "resumed at frame {i}, not a keyframe");
                                    resumed += 1;
                                }
                                None => {}
                            }
                            last = Some(i);
                            got += 1;
                            let behind = hub.stats("live/slow").is_some_and(|s| s.skipped > 0);
                            if !behind {
                                // Load shaping, not synchronisation: slow until it skipped.
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        Some(ClientEvent::StreamEnded) | None => return anyhow::Ok((got, resumed)),
                        Some(_) => {}
                    }
                }
            }
        });
        let (progress, seen) = watch::channel(0usize);
        let normal = spawn_normal_player(url.clone(), opts.clone(), progress);
        srv.wait_subscribers("slow", 2).await?;

        let publisher = match publish_synth_paced(&url, &opts, seen).await {
            Ok(p) => p,
            Err(e) => anyhow::bail!("{e:#}; normal player: {:?}", normal.await?),
        };
        let stats = srv.stats("slow").context("stream gone while publishing")?;
        publisher.finish().await.context("publisher")?;
        let received = tokio::time::timeout(END_LIMIT, normal)
            .await
            .context("normal player did not end")??
            .context("normal player")?;
        let (got, resumed) = tokio::time::timeout(Duration::from_secs(30), slow)
            .await
            .context("slow player did not end")??
            .context("slow player")?;

        ensure!(received == SYNTH_FRAMES + 1, "normal player got {received} of {}", SYNTH_FRAMES + 1);
        ensure!(stats.direct_writes > 0, "no frame was written directly: {stats:?}");
        ensure!(
            stats.skipped > 0 && resumed > 0,
            "the slow player never fell behind ({got} frames, {resumed} resumes): {stats:?}"
        );
        ensure!(got > 30, "the slow player got only {got} frames");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_disconnect_ends_every_player() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let (out_a, out_b, out_q) = (srv.path("a.flv"), srv.path("b.flv"), srv.path("q.flv"));
        let player_a = spawn(&mut ffmpeg_player(&srv.url("rtmp", "kill"), &out_a))?;
        let player_b = spawn(&mut ffmpeg_player(&srv.url("rtmp", "kill"), &out_b))?;
        let player_q = spawn(&mut qrelay_play(&srv.url("rtmp+quic", "kill"), &srv.ca, &out_q, None))?;
        srv.wait_subscribers("kill", 3).await?;

        let mut publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "kill"), true))?;
        srv.wait_stats("kill", "1 s of media", |s| s.frames > 80).await?;
        publisher.start_kill()?;
        publisher.wait().await?;

        let killed = Instant::now();
        let (a, b, q) = tokio::join!(
            finish(player_a, "ffmpeg player a", END_LIMIT),
            finish(player_b, "ffmpeg player b", END_LIMIT),
            finish(player_q, "qrelay play", END_LIMIT),
        );
        let (a, b, q) = (a?, b?, q?);
        expect_success(&q, "qrelay play")?;
        expect_success(&a, "ffmpeg player a")?;
        expect_success(&b, "ffmpeg player b")?;
        ensure!(killed.elapsed() < END_LIMIT, "players took {:?} to end", killed.elapsed());

        let q_video = video_payloads(&read_tags(&out_q).await?).len();
        ensure!(q_video > 20, "qrelay play wrote only {q_video} video frames");
        for out in [&out_a, &out_b] {
            let n = probe_packets(out).await?.iter().filter(|p| p.stream == "video").count();
            ensure!(n > 20, "{} holds only {n} video packets", out.display());
        }
        srv.wait_released("kill").await
    })
    .await
}

/// A configuration file for `qrelay serve` in `dir`.
fn serve_config(dir: &std::path::Path, grace_ms: u64) -> Result<std::path::PathBuf> {
    let path = dir.join("qrelay.toml");
    let certs = dir.join("certs");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ncert_dir = \"{}\"\nshutdown_grace_ms = {grace_ms}\n",
            certs.display()
        ),
    )?;
    Ok(path)
}

/// Starts `qrelay serve` (grace period 10 s) with a looping publisher and a player
/// receiving, over the given schemes.
async fn serve_with_session(
    dir: &std::path::Path,
    player_scheme: &str,
    publisher_scheme: &str,
) -> Result<(ServeProcess, tokio::process::Child, tokio::process::Child, std::path::PathBuf)> {
    let config = serve_config(dir, 10_000)?;
    let serve = spawn_serve([std::ffi::OsStr::new("--config"), config.as_os_str()]).await?;
    let ca = dir.join("certs").join("dev-ca.pem");
    let out = dir.join("play.flv");
    let player = spawn(&mut qrelay_play(&serve.url(player_scheme, "sig"), &ca, &out, None))?;
    let publisher = spawn(&mut qrelay_publish(&media().flv, &serve.url(publisher_scheme, "sig"), &ca, true))?;
    // Media is flowing once the player's file grows past the headers.
    wait_until("the player to receive media", Duration::from_secs(10), || {
        (file_len(&out) > 20_000).then_some(())
    })
    .await?;
    Ok((serve, publisher, player, out))
}

/// SIGTERM with a live session: the relay ends the publish, lets the player drain and
/// end cleanly, and exits 0 well before the grace period.
async fn sigterm_case(player_scheme: &str, publisher_scheme: &str) -> Result {
    let dir = tempfile::tempdir()?;
    let (mut serve, publisher, player, out) =
        serve_with_session(dir.path(), player_scheme, publisher_scheme).await?;

    let start = Instant::now();
    send_signal(&serve.child, "TERM").await?;
    let status = serve.wait(Duration::from_secs(15)).await?;
    let took = start.elapsed();
    ensure!(status.success(), "qrelay serve exited with {status}; log:\n{}", serve.logs());
    // The grace period is 10 s: ending well before it means sessions drained.
    ensure!(took < Duration::from_secs(5), "SIGTERM shutdown took {took:?}");
    ensure!(serve.logs().contains("SIGTERM"), "no SIGTERM log line:\n{}", serve.logs());

    let played = finish(player, "qrelay play", END_LIMIT).await?;
    let tags = read_tags(&out).await?;
    assert_keyframe_first(&tags)?;
    ensure!(video_payloads(&tags).len() > 10, "the player wrote too little");
    expect_success(&played, "qrelay play")?;
    finish(publisher, "qrelay publish", END_LIMIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() -> Result {
    bounded(sigterm_case("rtmp", "rtmp+quic")).await
}

/// Over QUIC a drained end and a dropped connection differ: `qrelay play` fails when the
/// relay closes the connection before the stream's end was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_quic_players_cleanly() -> Result {
    bounded(sigterm_case("rtmp+quic", "rtmp")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let (mut serve, publisher, player, _) = serve_with_session(dir.path(), "rtmp", "rtmpq").await?;

        let start = Instant::now();
        send_signal(&serve.child, "INT").await?;
        let status = serve.wait(Duration::from_secs(10)).await?;
        let took = start.elapsed();
        ensure!(status.success(), "qrelay serve exited with {status}; log:\n{}", serve.logs());
        ensure!(took < Duration::from_secs(3), "SIGINT shutdown took {took:?}");
        // Both clients lose the relay and must not hang.
        finish(player, "qrelay play", END_LIMIT).await?;
        finish(publisher, "qrelay publish", END_LIMIT).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_over_tcp_on_the_same_port() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let out = srv.path("tcp.flv");
        let player = spawn(&mut qrelay_play(&srv.url("rtmp", "s"), &srv.ca, &out, None))?;
        srv.wait_subscribers("s", 1).await?;

        let publisher = spawn(&mut qrelay_publish(input, &srv.url("rtmps", "s"), &srv.ca, false))?;
        expect_success(&finish(publisher, "rtmps publish", PUBLISH_LIMIT).await?, "rtmps publish")?;
        expect_success(&finish(player, "qrelay play", END_LIMIT).await?, "qrelay play")?;
        assert_same_av_tags(&read_tags(input).await?, &read_tags(&out).await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_created_and_reused() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("new").join("certs");
        let ca = certs.join("dev-ca.pem");
        let args = |extra: &[&str]| {
            let mut v: Vec<std::ffi::OsString> =
                ["--listen", "127.0.0.1:0", "--cert-dir"].iter().map(Into::into).collect();
            v.push(certs.clone().into());
            v.extend(extra.iter().map(Into::into));
            v
        };

        let mut first = spawn_serve(args(&[])).await?;
        ensure!(ca.is_file(), "{} not created", ca.display());
        let logs = first.logs();
        ensure!(logs.contains(&ca.display().to_string()), "the CA path is not logged:\n{logs}");
        ensure!(logs.contains("created=true"), "not logged as created:\n{logs}");
        let made = std::fs::read(&ca)?;
        send_signal(&first.child, "INT").await?;
        ensure!(first.wait(Duration::from_secs(5)).await?.success(), "first run failed");

        let mut second = spawn_serve(args(&["--play-wait-ms", "200"])).await?;
        let logs = second.logs();
        ensure!(logs.contains("created=false"), "not logged as reused:\n{logs}");
        ensure!(std::fs::read(&ca)? == made, "the CA changed on restart");
        // The first run's CA still verifies the second run's QUIC certificate: the play
        // gets past TLS and is refused by RTMP itself.
        let saved = dir.path().join("first-ca.pem");
        std::fs::write(&saved, &made)?;
        let play =
            spawn(&mut qrelay_play(&second.url("rtmpq", "none"), &saved, &dir.path().join("x.flv"), None))?;
        let output = finish(play, "qrelay play", Duration::from_secs(10)).await?;
        let err = stderr_text(&output);
        ensure!(err.contains("StreamNotFound"), "play with the saved CA failed otherwise: {err}");
        send_signal(&second.child, "INT").await?;
        ensure!(second.wait(Duration::from_secs(5)).await?.success(), "second run failed");
        Ok(())
    })
    .await
}
