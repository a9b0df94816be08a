//! End-to-end tests: a real relay on 127.0.0.1 (TCP and QUIC on one port), real ffmpeg
//! publishers and players, and the project's own `qrelay publish`/`play` over QUIC, TLS
//! and TCP. Every test is bounded in time and its child processes die with it.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::{Bytes, BytesMut};
use common::*;
use qrelay::client::{ClientError, ClientOptions, RtmpClient};
use qrelay::media::flv::FlvTag;
use qrelay::media::frame::{inspect_video, MediaKind};
use qrelay::rtmp::session::{ClientEvent, ClientMode, SessionError};
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use qrelay_bench::synth::{self, VideoPlan};
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
        // The QUIC tunnel mapping (RTMP bytes on a bidirectional stream) stays served
        // beside RoQR: this test publishes and plays over it.
        let tunnel = |key| format!("{}?mode=tunnel", srv.url("rtmp+quic", key));
        let mut first = spawn(&mut qrelay_publish(input, &tunnel("dup"), &srv.ca, true))?;
        srv.wait_live("dup").await?;

        // A player that is already watching when the second publisher tries.
        let early_out = srv.path("early.flv");
        let early = spawn(&mut qrelay_play(&tunnel("dup"), &srv.ca, &early_out, Some(4.0)))?;
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

/// The numbered synthetic stream (`qrelay_bench::synth`) for the stalled- and slow-player
/// tests: a sequence header, then 64 KiB frames, a keyframe every 30, each payload unique.
const SYNTH_FRAME: usize = 64 * 1024;
const SYNTH_FRAMES: usize = 640; // 40 MiB
const SYNTH: VideoPlan =
    VideoPlan { fps: 30, gop_frames: 30, key_bytes: SYNTH_FRAME, inter_bytes: SYNTH_FRAME };

/// Per-subscriber queue bound in the tests with a stalled or slow player.
const QUEUE: usize = 512 * 1024;
/// Frames the publisher may be ahead of the normal player. Keeps the normal player's
/// queue (≤ 4 × 64 KiB) under [`QUEUE`] however the two cores are scheduled, so its
/// "every frame" assertion is deterministic; stalled or slow players get no such courtesy.
const WINDOW: usize = 4;

fn synth_header() -> Bytes {
    synth::video_sequence_header()
}

/// Frame `i` (send time 0: the same index always gives the same bytes).
fn synth_frame(i: usize) -> Bytes {
    SYNTH.frame(i as u64, 0)
}

/// The audio frame the paced publisher sends after video frame `i`: small, so the relay
/// holds it and writes it with the next video frame in one write (`write_coalesce_ms`);
/// its bytes carry `i`, so its order is checked too.
fn synth_audio(i: usize) -> Bytes {
    let mut b = BytesMut::from(&[0xAF, 0x01][..]);
    b.extend_from_slice(&(i as u32).to_be_bytes());
    b.resize(64, 0x5A);
    b.freeze()
}

/// A player that reads everything, checking each video message against what was sent
/// (and each audio frame's order), publishing its video count to `progress`. Ends with
/// the count when the stream ends.
fn spawn_normal_player(
    url: StreamUrl,
    opts: ClientOptions,
    progress: watch::Sender<usize>,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    tokio::spawn(async move {
        let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
        let (mut n, mut audio) = (0usize, 0usize);
        loop {
            match client.read_event().await? {
                Some(ClientEvent::Media { kind: MediaKind::Audio, payload, .. }) => {
                    ensure!(payload == synth_audio(audio), "audio frame {audio} is not the one sent");
                    audio += 1;
                }
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
                Some(ClientEvent::StreamEnded) | None => {
                    ensure!(audio == SYNTH_FRAMES, "got {audio} of {SYNTH_FRAMES} audio frames");
                    return anyhow::Ok(n);
                }
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
        publisher.send_media(MediaKind::Audio, i as u32 * 33 + 10, synth_audio(i)).await?;
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

        let start = Instant::now();
        let publisher = match publish_synth_paced(&url, &opts, seen).await {
            Ok(p) => p,
            Err(e) => anyhow::bail!("{e:#}; normal player: {:?}", normal.await?),
        };
        let stats = srv.stats("stall").context("stream gone while publishing")?;
        let (skipped, max_queued) = (stats.skipped, stats.peak_queued_bytes);
        publisher.finish().await?;
        let publish_time = start.elapsed();
        let received =
            tokio::time::timeout(END_LIMIT, normal).await.context("normal player did not end")???;
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
                            let i = SYNTH.check(&payload).map_or(usize::MAX, |m| m.seq as usize);
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
        // No grace (`publisher_grace_ms = 0`): players end with their publisher, at once.
        // The grace itself is tested in tests/reconnect.rs.
        let srv = start_server_with(|c| c.publisher_grace_ms = 0).await?;
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
    // The publish ended at a keyframe: the last GOP the player got is whole (the test
    // media has a keyframe every 30 frames, and its loops start with one).
    let video: Vec<bool> = tags
        .iter()
        .filter(|t| t.kind == MediaKind::Video)
        .map(|t| inspect_video(&t.payload))
        .filter(|i| !i.sequence_header)
        .map(|i| i.keyframe)
        .collect();
    let last_gop = video.len() - video.iter().rposition(|k| *k).context("no keyframe")?;
    ensure!(last_gop == 30, "the last GOP played has {last_gop} frames, not 30: cut inside a GOP");
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

/// An in-process `qrelay bridge` towards `upstream` (`rtmp+quic://host:port/live`).
async fn start_bridge(
    upstream: String,
    opts: ClientOptions,
) -> Result<(std::net::SocketAddr, tokio_util::sync::CancellationToken)> {
    let bridge = qrelay::bridge::Bridge::bind(qrelay::bridge::BridgeOptions {
        listen: "127.0.0.1:0".parse()?,
        upstream,
        client: opts,
    })
    .await?;
    let addr = bridge.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(bridge.run(stop.clone()));
    Ok((addr, stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_carries_an_ffmpeg_publish_upstream_over_roqr_byte_exact() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = &media().flv;
        let upstream = format!("rtmp+quic://{}/live", srv.addr);
        let (bridge, stop) = start_bridge(upstream, client_options(&srv)).await?;
        let (ff_out, q_out) = (srv.path("ffmpeg.flv"), srv.path("quic.flv"));
        let ff_player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "br"), &ff_out))?;
        let q_player = spawn(&mut qrelay_play(&srv.url("rtmp+quic", "br"), &srv.ca, &q_out, None))?;
        srv.wait_subscribers("br", 2).await?;
        // The encoder speaks plain RTMP to the bridge; the relay sees a RoQR publisher.
        let publisher = spawn(&mut ffmpeg_publisher(input, &format!("rtmp://{bridge}/live/br"), false))?;
        let players = [(ff_player, ff_out), (q_player, q_out)];
        expect_fan_out(input, (publisher, "ffmpeg publisher via the bridge"), players).await?;
        srv.wait_released("br").await?;
        stop.cancel();
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_reconnects_to_a_restarted_upstream_without_the_encoder_noticing() -> Result {
    bounded(async {
        let mut first = start_server().await?;
        let addr = first.addr;
        let upstream = format!("rtmp+quic://{addr}/live");
        let (bridge, stop) = start_bridge(upstream, client_options(&first)).await?;
        let mut publisher =
            spawn(&mut ffmpeg_publisher(&media().gop2, &format!("rtmp://{bridge}/live/re"), true))?;
        first.wait_live("re").await?;
        // The upstream dies; a new one comes up on the same address (same certificates).
        first.halt().await;
        let certs = first.dir.path().join("certs");
        // quinn's endpoint driver lets go of the UDP port just after the relay stopped,
        // and tells nobody: retry the bind for a bounded time.
        let bind_until = Instant::now() + Duration::from_secs(5);
        let second = loop {
            let certs = certs.clone();
            match start_server_with(|c| {
                c.listen = addr;
                c.cert_dir = certs;
            })
            .await
            {
                Ok(s) => break s,
                Err(_) if Instant::now() < bind_until => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(e.context("a new relay on the old relay's port")),
            }
        };
        // The bridge's reconnect backoff plus a new QUIC handshake: on a loaded CI machine
        // (a flake hunt saw over 10 s) this needs a generous bound.
        wait_until("live/re on the new upstream", Duration::from_secs(30), || {
            second.stats("re").filter(|s| s.live)
        })
        .await
        .context("the bridge did not publish to the new upstream")?;
        // A player of the new upstream gets the stream from a keyframe, with its headers.
        let out = second.path("after.flv");
        // Media resumes at the encoder's next keyframe, at most one GOP (2 s) later.
        let player = spawn(&mut qrelay_play(&second.url("rtmp", "re"), &second.ca, &out, Some(5.0)))?;
        let limit = END_LIMIT + Duration::from_secs(5);
        expect_success(&finish(player, "player after the restart", limit).await?, "player")?;
        let tags = read_tags(&out).await?;
        assert_keyframe_first(&tags)?;
        let frames = tags.iter().filter(|t| t.kind == MediaKind::Video).count();
        ensure!(frames > 60, "only {frames} video frames in 5 s after the restart");
        // The encoder never saw any of it.
        ensure!(publisher.try_wait()?.is_none(), "the encoder's publish ended when the upstream restarted");
        publisher.kill().await?;
        stop.cancel();
        Ok(())
    })
    .await
}

/// Refuses keys starting with `denied`, answers `slow…` after 800 ms, allows the rest;
/// records what it was asked.
#[derive(Debug, Default)]
struct TestGate {
    asked: std::sync::Mutex<Vec<(qrelay::gate::Role, String, &'static str)>>,
}

impl qrelay::gate::Gate for TestGate {
    fn decide(&self, r: &qrelay::gate::Request) -> qrelay::gate::Pending {
        use qrelay::gate::Decision;
        if let Ok(mut asked) = self.asked.lock() {
            asked.push((r.role, r.session_id.clone(), r.transport));
        }
        let key = r.key.clone();
        Box::pin(async move {
            if key.starts_with("denied") {
                Decision::refuse(qrelay::reason::Reason::Refused, "not on the list")
            } else if key.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Decision::Allow
            } else {
                Decision::Allow
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_decides_publish_and_play_without_holding_up_other_sessions() -> Result {
    use qrelay::gate::Role;
    bounded(async {
        let gate = std::sync::Arc::new(TestGate::default());
        let srv = start_server_gated(|_| {}, Some(gate.clone())).await?;
        let opts = client_options(&srv);
        // Refused over every transport, with the gate's reason.
        for scheme in ["rtmp", "rtmp+quic"] {
            let url = StreamUrl::parse(&srv.url(scheme, "denied1"))?;
            let err = RtmpClient::connect(&url, ClientMode::Publish, &opts)
                .await
                .err()
                .context("publish allowed")?;
            ensure!(
                err.to_string().contains("BadName") && err.to_string().contains("not on the list"),
                "{scheme}: {err}"
            );
            let err =
                RtmpClient::connect(&url, ClientMode::Play, &opts).await.err().context("play allowed")?;
            ensure!(err.to_string().contains("Play.Failed"), "{scheme}: {err}");
        }
        // A slow decision for one session while another is decided at once.
        let slow_url = StreamUrl::parse(&srv.url("rtmp+quic", "slow1"))?;
        let slow = tokio::spawn({
            let opts = opts.clone();
            async move {
                let t = Instant::now();
                let c = RtmpClient::connect(&slow_url, ClientMode::Publish, &opts).await?;
                anyhow::Ok((t.elapsed(), c))
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await; // load shaping: let it ask first
        let t = Instant::now();
        let fast =
            RtmpClient::connect(&StreamUrl::parse(&srv.url("rtmp", "fast1"))?, ClientMode::Publish, &opts)
                .await?;
        let fast_took = t.elapsed();
        let (slow_took, slow_client) = slow.await??;
        ensure!(slow_took >= Duration::from_millis(800), "the slow decision took only {slow_took:?}");
        ensure!(
            fast_took < Duration::from_millis(500),
            "a publish waited {fast_took:?} behind another's decision"
        );
        srv.wait_live("slow1").await?;
        srv.wait_live("fast1").await?;
        let asked = gate.asked.lock().map(|a| a.clone()).unwrap_or_default();
        ensure!(asked.contains(&(Role::Publish, "live/slow1".into(), "roqr")), "{asked:?}");
        ensure!(asked.contains(&(Role::Publish, "live/fast1".into(), "tcp")), "{asked:?}");
        ensure!(asked.contains(&(Role::Play, "live/denied1".into(), "roqr")), "{asked:?}");
        drop((fast, slow_client));
        Ok(())
    })
    .await
}

/// A connect timeout far below the play wait, so a play outlasts it.
const SHORT_CONNECT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_waits_for_its_publisher_past_the_connect_timeout() -> Result {
    bounded(async {
        let srv = start_server_with(|c| c.play_wait_ms = 3_000).await?;
        let opts = ClientOptions { connect_timeout: SHORT_CONNECT, ..client_options(&srv) };
        let start = Instant::now();
        // One player whose publisher arrives after the client's connect timeout, one
        // whose publisher never does.
        let waiting = tokio::spawn({
            let (url, opts) = (StreamUrl::parse(&srv.url("rtmp", "later"))?, opts.clone());
            async move {
                let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
                loop {
                    if let ClientEvent::Media { kind: MediaKind::Video, .. } =
                        client.read_event().await?.context("closed before any video")?
                    {
                        return anyhow::Ok(());
                    }
                }
            }
        });
        let never = tokio::spawn({
            let (url, opts) = (StreamUrl::parse(&srv.url("rtmpq", "never"))?, opts.clone());
            async move {
                let result = RtmpClient::connect(&url, ClientMode::Play, &opts).await;
                (result.map(drop), Instant::now())
            }
        });
        srv.wait_subscribers("later", 1).await?;
        // The passing time is the scenario, not synchronisation: the publisher must come
        // after the player's connect timeout is over.
        tokio::time::sleep_until(start + 3 * SHORT_CONNECT).await;
        let _publisher = spawn(&mut qrelay_publish(&media().flv, &srv.url("rtmp", "later"), &srv.ca, true))?;
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .context("the waiting player got no video")?
            .context("the waiting player panicked")?
            .context("the waiting player")?;

        let (result, ended) = never.await?;
        match result {
            Err(ClientError::Session(SessionError::Refused { code, .. }))
                if code == "NetStream.Play.StreamNotFound" => {}
            other => anyhow::bail!("a play of a stream never published ended with {other:?}"),
        }
        let waited = ended - start;
        ensure!(waited >= Duration::from_secs(3), "gave up after {waited:?}, before the server's play wait");
        Ok(())
    })
    .await
}

/// How long a client may take to notice that the relay died: the QUIC client's idle
/// timeout (5 s) plus slack.
const DEAD_SERVER_LIMIT: Duration = Duration::from_secs(9);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_players_and_publishers_within_seconds() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let config = serve_config(dir.path(), 10_000)?;
        let mut serve = spawn_serve([std::ffi::OsStr::new("--config"), config.as_os_str()]).await?;
        let ca = dir.path().join("certs").join("dev-ca.pem");
        let (tcp_out, quic_out) = (dir.path().join("tcp.flv"), dir.path().join("quic.flv"));
        let tcp_player = spawn(&mut qrelay_play(&serve.url("rtmp", "crash"), &ca, &tcp_out, None))?;
        let quic_player = spawn(&mut qrelay_play(&serve.url("rtmpq", "crash"), &ca, &quic_out, None))?;
        let publisher = spawn(&mut qrelay_publish(&media().flv, &serve.url("rtmpq", "crash"), &ca, true))?;
        wait_until("both players to receive media", Duration::from_secs(10), || {
            (file_len(&tcp_out) > 20_000 && file_len(&quic_out) > 20_000).then_some(())
        })
        .await?;

        serve.child.start_kill()?;
        serve.wait(Duration::from_secs(5)).await?;
        let killed = Instant::now();
        let (tcp, quic, publish) = tokio::join!(
            finish(tcp_player, "TCP player", DEAD_SERVER_LIMIT),
            finish(quic_player, "QUIC player", DEAD_SERVER_LIMIT),
            finish(publisher, "QUIC publisher", DEAD_SERVER_LIMIT),
        );
        let took = killed.elapsed();
        for (output, what) in [(tcp?, "TCP player"), (quic?, "QUIC player"), (publish?, "QUIC publisher")] {
            ensure!(
                !output.status.success(),
                "{what} exited 0 although the relay was killed mid-stream: {}",
                stderr_text(&output)
            );
        }
        ensure!(took < DEAD_SERVER_LIMIT, "the clients took {took:?} to notice");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_app_stays_out_of_the_session_id() -> Result {
    bounded(async {
        let srv = start_server().await?;
        // OBS's "Server" box with a token plus its stream key: ffmpeg sends this URL's
        // `live?token=abc` as connect's app (and in tcUrl) and `cam3` as the key.
        let url = format!("rtmp://{}/live?token=abc/cam3", srv.addr);
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &url, true))?;
        srv.wait_live("cam3").await?;
        let out = srv.path("cam3.flv");
        let player = spawn(&mut qrelay_play(&srv.url("rtmp", "cam3"), &srv.ca, &out, Some(1.0)))?;
        expect_success(&finish(player, "qrelay play", Duration::from_secs(10)).await?, "qrelay play")?;
        assert_keyframe_first(&read_tags(&out).await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_plays_without_protocol_warnings() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "probe"), true))?;
        srv.wait_live("probe").await?;
        let probe = tokio::process::Command::new("ffprobe")
            .args(["-v", "warning", "-show_entries", "stream=codec_type", "-of", "csv=p=0"])
            .arg(srv.url("rtmp", "probe"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), probe).await.context("ffprobe hung")??;
        expect_success(&output, "ffprobe")?;
        let streams = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(streams.contains("video") && streams.contains("audio"), "ffprobe found: {streams}");
        let warnings = stderr_text(&output);
        ensure!(!warnings.contains("getStreamLength"), "ffprobe warned: {warnings}");
        Ok(())
    })
    .await
}

/// `openssl s_client` as a TLS 1.2 encoder would connect, with extra arguments.
async fn s_client(srv: &TestServer, args: &[&str]) -> Result<std::process::Output> {
    let run = tokio::process::Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect", &srv.addr.to_string(), "-CAfile"])
        .arg(&srv.ca)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(10), run).await.context("openssl s_client hung")??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_accepts_tls12_with_modern_cipher_suites_only() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let ok = s_client(&srv, &["-tls1_2"]).await?;
        let text = stderr_text(&ok) + &String::from_utf8_lossy(&ok.stdout);
        ensure!(ok.status.success(), "TLS 1.2 refused: {text}");
        ensure!(text.contains("TLSv1.2") && text.contains("ECDHE"), "negotiated otherwise: {text}");
        // Static RSA key exchange and CBC ciphers are what TLS 1.2 must not bring back.
        for cipher in ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-SHA"] {
            let refused = s_client(&srv, &["-tls1_2", "-cipher", cipher]).await?;
            ensure!(!refused.status.success(), "{cipher} accepted: {}", stderr_text(&refused));
        }

        // A whole publish over a TLS 1.2-only client.
        let mut roots = rustls::RootCertStore::empty();
        for cert in qrelay::transport::tls::load_certs(&srv.ca)? {
            roots.add(cert)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(srv.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?;
        ensure!(tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2));
        let (r, w) = tokio::io::split(tls);
        let url = StreamUrl::parse(&srv.url("rtmps", "tls12"))?;
        let mut publisher =
            RtmpClient::over_stream(Box::new(r), Box::new(w), &url, ClientMode::Publish, Default::default())
                .await?;
        publisher.send_media(MediaKind::Video, 0, synth_header()).await?;
        publisher.send_media(MediaKind::Video, 0, synth_frame(0)).await?;
        srv.wait_stats("tls12", "frames over TLS 1.2", |s| s.live && s.frames >= 2).await?;
        publisher.finish().await?;
        Ok(())
    })
    .await
}

/// Runs the `qrelay` binary to completion (it must exit on its own within 10 s).
async fn run_qrelay<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> Result<std::process::Output> {
    let child = spawn(&mut qrelay(args))?;
    finish(child, "qrelay", Duration::from_secs(10)).await
}

/// An address nothing listens on (a port just released).
fn closed_port() -> Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Command-line arguments of mixed string and path types.
fn args(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// Fails unless the process failed; returns its stderr.
fn expect_failure(output: &std::process::Output, what: &str) -> Result<String> {
    ensure!(!output.status.success(), "{what} succeeded: {}", stderr_text(output));
    Ok(stderr_text(output))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_their_cause_once_and_where() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let closed = closed_port()?;
        let url = format!("rtmp://{closed}/live/x");
        let err = expect_failure(&run_qrelay(["play", &url, "-o", "-"]).await?, "play")?;
        ensure!(err.matches("Connection refused").count() == 1, "{err}");
        ensure!(err.contains(&closed.to_string()), "the address is not named: {err}");

        let not_flv = dir.path().join("not.flv");
        std::fs::write(&not_flv, b"GIF89a and so on")?;
        let err = expect_failure(&run_qrelay(args(&[&"publish", &not_flv, &url])).await?, "publish")?;
        ensure!(err.matches("bad signature").count() == 1, "{err}");
        ensure!(!err.contains("refused"), "connected before checking the file: {err}");

        let config = dir.path().join("bad.toml");
        std::fs::write(&config, "lisen = \"127.0.0.1:0\"\n")?;
        let err = expect_failure(&run_qrelay(args(&[&"serve", &"--config", &config])).await?, "serve")?;
        ensure!(err.matches("unknown field").count() == 1, "{err}");

        // The TCP side of the one port is taken.
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = taken.local_addr()?.to_string();
        let certs = dir.path().join("certs");
        let serve = args(&[&"serve", &"--listen", &addr, &"--cert-dir", &certs]);
        let err = expect_failure(&run_qrelay(serve).await?, "serve")?;
        ensure!(err.contains(&addr) && err.contains("in use"), "the address in use is not named: {err}");
        ensure!(err.matches("already in use").count() == 1, "{err}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_point_at_ca_and_insecure() -> Result {
    bounded(async {
        let srv = start_server().await?;
        for scheme in ["rtmps", "rtmpq"] {
            let url = srv.url(scheme, "x");
            let err = expect_failure(&run_qrelay(["play", &url, "-o", "-"]).await?, scheme)?;
            ensure!(err.contains("UnknownIssuer"), "{scheme}: {err}");
            ensure!(err.contains("--ca") && err.contains("--insecure"), "{scheme}: no hint in: {err}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_files_without_media_or_cut_short() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let dir = tempfile::tempdir()?;
        // Nothing listens there: a file refused before connecting fails on the file.
        let nowhere = format!("rtmp://{}/live/x", closed_port()?);
        let header_only = dir.path().join("header.flv");
        std::fs::write(&header_only, b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00")?;
        let cases: [(&dyn AsRef<std::ffi::OsStr>, &str); 2] =
            [(&"/dev/null", "empty"), (&header_only, "no audio or video")];
        for (file, want) in cases {
            let err = expect_failure(&run_qrelay(args(&[&"publish", file, &nowhere])).await?, "publish")?;
            ensure!(err.contains(want), "{want}: {err}");
            ensure!(!err.contains("refused"), "connected before checking the file: {err}");
        }

        // Cut in the middle of a tag about a second in: what precedes is published, then
        // the publish fails instead of reporting success.
        let input = std::fs::read(&media().flv)?;
        let cut = dir.path().join("cut.flv");
        std::fs::write(&cut, &input[..input.len() / 4 + 7])?;
        let publisher = spawn(&mut qrelay_publish(&cut, &srv.url("rtmp", "cut"), &srv.ca, false))?;
        let err =
            expect_failure(&finish(publisher, "publish", PUBLISH_LIMIT).await?, "publish of a cut file")?;
        ensure!(err.contains("ends in the middle of a tag"), "{err}");
        Ok(())
    })
    .await
}

/// A 4 s FLV as some muxers write it: audio (23 ms frames) runs past the last video frame
/// but is written before it, so the file's last tag is not its latest track end.
fn seam_file(path: &std::path::Path) -> Result {
    use qrelay::media::flv;
    let mut tags: Vec<(MediaKind, u32)> = (0..=173).map(|i| (MediaKind::Audio, i * 23)).collect();
    tags.extend((0..=119).map(|i| (MediaKind::Video, i * 3966 / 119)));
    tags.sort_by_key(|&(kind, ts)| (ts, kind == MediaKind::Audio));
    // The last audio frame (3979 ms) goes before the last video frame (3966 ms).
    let last_video = tags.iter().rposition(|t| t.0 == MediaKind::Video).context("no video")?;
    let video = tags.remove(last_video);
    tags.push(video);
    let mut out = BytesMut::new();
    flv::write_header(&mut out, true, true);
    for (i, (kind, ts)) in tags.into_iter().enumerate() {
        // AVC pictures (a keyframe first) and AAC frames, each payload unique.
        let payload = match kind {
            MediaKind::Video => vec![if ts == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0, i as u8, (i >> 8) as u8],
            _ => vec![0xAF, 0x01, i as u8, (i >> 8) as u8],
        };
        flv::write_tag(&mut out, kind, ts, &payload);
    }
    std::fs::write(path, &out)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looped_publish_continues_each_track_without_overlap() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = srv.path("seam.flv");
        seam_file(&input)?;
        let out = srv.path("loop.flv");
        // 4 s file, played for 5 s: one seam.
        let player = spawn(&mut qrelay_play(&srv.url("rtmp", "loop"), &srv.ca, &out, Some(5.0)))?;
        srv.wait_subscribers("loop", 1).await?;
        let _publisher = spawn(&mut qrelay_publish(&input, &srv.url("rtmp", "loop"), &srv.ca, true))?;
        expect_success(&finish(player, "qrelay play", Duration::from_secs(15)).await?, "qrelay play")?;
        let tags = read_tags(&out).await?;
        // Audio keeps its 23 ms step across the seam; video may wait for audio (one
        // offset for both keeps them in sync) but never overlaps itself.
        for (kind, steps) in [(MediaKind::Audio, 23..=23), (MediaKind::Video, 33..=40)] {
            let stamps: Vec<u32> = tags.iter().filter(|t| t.kind == kind).map(|t| t.timestamp).collect();
            ensure!(stamps.last().is_some_and(|l| *l > 4_200), "{kind:?}: did not play past the seam");
            for pair in stamps.windows(2) {
                let step = pair[1].wrapping_sub(pair[0]);
                ensure!(steps.contains(&step), "{kind:?}: {} ms then {} ms", pair[0], pair[1]);
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_to_a_pipe_are_plain_with_one_transport_field() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut cmd = qrelay(["serve", "--listen", "127.0.0.1:0", "--cert-dir"]);
        cmd.arg(dir.path().join("certs"));
        // As an operator runs it: colours not switched off, `RUST_LOG=info` (which must
        // not bring rustls's SNI warning back).
        cmd.env_remove("NO_COLOR").env("RUST_LOG", "info");
        let serve = spawn_serve_cmd(cmd).await?;
        let ca = dir.path().join("certs").join("dev-ca.pem");
        // An encoder connecting by IP address and sending it as SNI, as many do.
        let addr = serve.addr.to_string();
        let hello = tokio::process::Command::new("openssl")
            .args(["s_client", "-brief", "-connect", &addr, "-servername", "127.0.0.1", "-CAfile"])
            .arg(&ca)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let hello = tokio::time::timeout(Duration::from_secs(10), hello).await.context("openssl hung")??;
        expect_success(&hello, "openssl s_client")?;
        let line = wait_until("the RTMPS connection's log line", Duration::from_secs(5), || {
            serve.raw_logs().lines().find(|l| l.contains("connected")).map(str::to_owned)
        })
        .await?;
        let logs = serve.raw_logs();
        ensure!(!logs.contains('\u{1b}'), "colour codes in a piped log:\n{logs}");
        ensure!(line.matches("transport=").count() == 1, "{line}");
        ensure!(line.contains("transport=\"tls\"") || line.contains("transport=tls"), "{line}");
        ensure!(!logs.contains("SNI"), "an IP address as SNI logged:\n{logs}");
        Ok(())
    })
    .await
}

/// E-RTMP v2 multitrack video of `track` (OneTrack, `hvc1`), optionally behind a ModEx
/// block (TimestampOffsetNano), as OBS's multitrack output writes it. `seq` marks the
/// payload unique.
fn multitrack_video(track: u8, key: bool, packet_type: u8, modex: bool, seq: u16) -> Vec<u8> {
    let frame_type: u8 = if key { 1 } else { 2 };
    let mut p = if modex {
        vec![0x80 | frame_type << 4 | 7, 2, 0x00, 0x01, 0x02, 6]
    } else {
        vec![0x80 | frame_type << 4 | 6]
    };
    p.push(packet_type); // OneTrack layout (0) in the high nibble
    p.extend_from_slice(b"hvc1");
    p.push(track);
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// E-RTMP v2 multitrack audio of `track` (OneTrack, `Opus`).
fn multitrack_audio(track: u8, packet_type: u8, seq: u16) -> Vec<u8> {
    let mut p = vec![9 << 4 | 5, packet_type];
    p.extend_from_slice(b"Opus");
    p.push(track);
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// A 3 s two-track E-RTMP stream, built by hand (ffmpeg here cannot write multitrack):
/// per track a video and an audio sequence start, then 30 fps video whose keyframes come
/// every second, track 1's half a second after track 0's, and 20 ms audio.
fn multitrack_file(path: &std::path::Path) -> Result {
    use qrelay::media::flv;
    let mut out = BytesMut::new();
    flv::write_header(&mut out, true, true);
    let mut seq = 0u16;
    let mut next = || {
        seq += 1;
        seq
    };
    for track in 0..2 {
        flv::write_tag(&mut out, MediaKind::Video, 0, &multitrack_video(track, true, 0, false, next()));
        flv::write_tag(&mut out, MediaKind::Audio, 0, &multitrack_audio(track, 0, next()));
    }
    for i in 0..90u32 {
        let ts = i * 100 / 3;
        for track in 0..2u8 {
            let key = i % 30 == u32::from(track) * 15;
            let frame = multitrack_video(track, key, 1, i % 7 == 3, next());
            flv::write_tag(&mut out, MediaKind::Video, ts, &frame);
        }
        for a in 0..2 {
            let ats = ts + a * 17;
            for track in 0..2 {
                flv::write_tag(&mut out, MediaKind::Audio, ats, &multitrack_audio(track, 1, next()));
            }
        }
    }
    std::fs::write(path, &out)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multitrack_late_joiner_gets_every_tracks_headers_and_a_default_track_keyframe() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let input = srv.path("multitrack.flv");
        multitrack_file(&input)?;
        let published = read_tags(&input).await?;
        let _publisher = spawn(&mut qrelay_publish(&input, &srv.url("rtmp", "mt"), &srv.ca, true))?;
        // Well into the stream: both tracks have had keyframes since the headers.
        srv.wait_stats("mt", "1.5 s of media", |s| s.live && s.frames > 300).await?;

        let out = srv.path("mt.flv");
        let player = spawn(&mut qrelay_play(&srv.url("rtmp", "mt"), &srv.ca, &out, Some(1.0)))?;
        expect_success(&finish(player, "qrelay play", Duration::from_secs(10)).await?, "qrelay play")?;
        let played = read_tags(&out).await?;
        // Byte for byte what was published (ModEx included).
        for tag in &played {
            ensure!(
                published.iter().any(|p| p.payload == tag.payload),
                "a payload not published: {:?}",
                tag.payload
            );
        }
        let video: Vec<&FlvTag> = played.iter().filter(|t| t.kind == MediaKind::Video).collect();
        let audio: Vec<&FlvTag> = played.iter().filter(|t| t.kind == MediaKind::Audio).collect();
        let (start, coded) = (0u8, 1u8);
        let track_and_type = |t: &FlvTag| (t.payload[6], t.payload[1] & 0x0F);
        ensure!(video.len() > 10 && audio.len() > 10, "{} video, {} audio tags", video.len(), audio.len());
        ensure!(
            video[..2].iter().map(|t| track_and_type(t)).collect::<Vec<_>>() == [(0, start), (1, start)],
            "the video sequence starts of both tracks do not come first"
        );
        ensure!(
            audio[..2].iter().map(|t| track_and_type(t)).collect::<Vec<_>>() == [(0, start), (1, start)],
            "the audio sequence starts of both tracks do not come first"
        );
        let first = video[2];
        ensure!(
            inspect_video(&first.payload).keyframe && first.payload[1] & 0x0F == coded,
            "the first picture is not a keyframe of the default track: {:?}",
            first.payload
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_share_one_quic_connection_per_upstream() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let opts = client_options(&srv);
        let pool = qrelay::client::QuicPool::new(opts.clone(), 4);
        let url = |key| StreamUrl::parse(&format!("{}?mode=tunnel", srv.url("rtmp+quic", key)));
        // Three publishers and a player on three streams of one upstream.
        let mut sessions = Vec::new();
        for key in ["p1", "p2", "p3"] {
            let c = RtmpClient::connect_pooled(&url(key)?, ClientMode::Publish, &opts, &pool).await?;
            sessions.push(c);
        }
        srv.wait_live("p1").await?;
        srv.wait_live("p3").await?;
        ensure!(pool.connections() == 1, "{} connections for 3 sessions", pool.connections());
        let player = RtmpClient::connect_pooled(&url("p2")?, ClientMode::Play, &opts, &pool).await?;
        ensure!(pool.connections() == 1, "the 4th session opened a connection of its own");
        // The connection is full at 4 sessions: the 5th gets a new one.
        let fifth = RtmpClient::connect_pooled(&url("p5")?, ClientMode::Publish, &opts, &pool).await?;
        ensure!(pool.connections() == 2, "{} connections for 5 sessions (4 each)", pool.connections());
        // A session that ends frees its place.
        drop(player);
        let again = RtmpClient::connect_pooled(&url("p6")?, ClientMode::Publish, &opts, &pool).await?;
        ensure!(pool.connections() == 2, "a freed place was not reused");
        drop((sessions, fifth, again));
        pool.close();
        Ok(())
    })
    .await
}
