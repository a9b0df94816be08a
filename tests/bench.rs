//! `qrelay bench` (the `qrelay-bench` crate) against an in-process relay on 127.0.0.1:
//! players over TCP, the QUIC tunnel and RoQR, churn, and the idle mode; and its
//! synthetic stream through the relay to ffprobe, which must decode it as H.264 and AAC.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context};
use common::{bounded, expect_success, start_server, stderr_text, Result};
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::media::frame::MediaKind;
use qrelay::rtmp::session::ClientMode;
use qrelay::url::StreamUrl;
use qrelay_bench::synth::{self, Next, Schedule, VideoPlan};
use qrelay_bench::{run, BenchArgs};

/// Every run below together, with room for a loaded machine.
const LIMIT: Duration = Duration::from_secs(120);

/// The whole bench against an in-process relay, TCP and QUIC, and the idle mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_an_in_process_relay() {
    tokio::time::timeout(LIMIT, whole_bench()).await.expect("the bench runs ended in time");
}

async fn whole_bench() {
    let dir = tempfile::tempdir().unwrap();
    let config = qrelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_dir: dir.path().to_owned(),
        http_listen: qrelay::config::HttpListen::Off,
        ..qrelay::Config::default()
    };
    let server = qrelay::Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let shutdown = qrelay::server::Shutdown::default();
    let running = tokio::spawn(server.run(shutdown.clone()));
    let me = std::process::id();

    let args = BenchArgs {
        players: 6,
        duration: 1.0,
        streams: 2,
        bitrate: 500_000,
        ramp_ms: Some(0),
        quiet: true,
        server_pid: vec![me],
        ..BenchArgs::new(&format!("rtmp://{addr}/live/t"))
    };
    let r = run(args).await.unwrap();
    assert_eq!((r.players_total, r.players_started, r.players_ok), (6, 6, 6), "{}", r.table());
    assert_eq!(r.skips, 0);
    assert!(r.delivered_mbps > 1.0, "{}", r.table());
    assert!(r.relay_latency_ms.unwrap().count > 0);
    assert!(r.first_frame_ms.unwrap().count == 6);
    assert!(r.server.unwrap().cpu_s_per_gbit.is_some());
    assert!(r.to_json().contains("\"players_ok\": 6"));
    // Audio by default: 128 kbit/s of AAC beside the video.
    let source = r.source_mbps.unwrap();
    assert!((source - 0.628).abs() < 0.01, "source {source} Mbit/s");

    // Churn: players joining and leaving beside the steady ones, reported apart.
    let args = BenchArgs {
        players: 3,
        duration: 1.0,
        bitrate: 500_000,
        ramp_ms: Some(0),
        quiet: true,
        churn_rate: 40.0,
        churn_hold_ms: 200,
        no_audio: true,
        ..BenchArgs::new(&format!("rtmp://{addr}/live/churn"))
    };
    let r = run(args).await.unwrap();
    let source = r.source_mbps.unwrap();
    assert!((source - 0.5).abs() < 0.01, "video only: {source} Mbit/s");
    assert_eq!((r.players_total, r.players_started, r.players_ok), (3, 3, 3), "{}", r.table());
    let churn = r.churn.unwrap();
    assert!(churn.joined >= 20 && churn.played > 0, "{churn:?}");
    assert!(r.to_json().contains("\"churn_joined\": "));
    let quic_churn = BenchArgs { churn_rate: 1.0, ..BenchArgs::new("rtmp+quic://h/live/q") };
    assert!(run(quic_churn).await.is_err(), "churn is TCP only");

    let args = BenchArgs {
        players: 4,
        duration: 1.0,
        bitrate: 500_000,
        ramp_ms: Some(0),
        quiet: true,
        insecure: true,
        quic_streams_per_conn: 3,
        ..BenchArgs::new(&format!("rtmp+quic://127.0.0.1:{}/live/q?mode=tunnel", addr.port()))
    };
    let r = run(args).await.unwrap();
    assert_eq!((r.players_started, r.players_ok), (4, 4), "{}", r.table());
    assert_eq!(r.quic_connections, 2);

    // QUIC efficiency, counted rather than timed: one connection per player at 3 Mbit/s,
    // the datagrams the players received per MB. A video frame (about 12.5 KB here) takes
    // nine datagrams once discovery reached the default bound (1452) and eleven at the
    // 1200 it starts from; data split into smaller packets, frames sent in more pieces
    // or discovery that never climbs all push this figure up.
    let args = BenchArgs {
        players: 2,
        duration: 2.0,
        bitrate: 3_000_000,
        ramp_ms: Some(0),
        quiet: true,
        insecure: true,
        quic_streams_per_conn: 1,
        ..BenchArgs::new(&format!("rtmp+quic://127.0.0.1:{}/live/m?mode=tunnel", addr.port()))
    };
    let r = run(args).await.unwrap();
    assert_eq!(r.players_ok, 2, "{}", r.table());
    let rx = r.quic_rx.expect("tunnel players report what they received");
    let per_mb = rx.datagrams_per_mb().unwrap();
    assert!(rx.max_path_mtu >= 1452, "path MTU stayed at {}: {}", rx.max_path_mtu, r.table());
    assert!(per_mb < 920.0, "{per_mb:.0} datagrams per MB: {}", r.table());
    assert!(r.to_json().contains("\"quic_datagrams_per_mb\""));

    // RoQR players: one connection each, through the client library.
    let args = BenchArgs {
        players: 3,
        duration: 1.0,
        bitrate: 500_000,
        ramp_ms: Some(0),
        quiet: true,
        insecure: true,
        ..BenchArgs::new(&format!("rtmp+quic://127.0.0.1:{}/live/r", addr.port()))
    };
    let r = run(args).await.unwrap();
    assert_eq!((r.players_started, r.players_ok), (3, 3), "{}", r.table());
    assert_eq!(r.skips, 0);

    let args = BenchArgs {
        idle: Some(5),
        ramp_ms: Some(0),
        quiet: true,
        server_pid: vec![me],
        ..BenchArgs::new(&format!("rtmp://{addr}/live/idle"))
    };
    let r = run(args).await.unwrap();
    assert_eq!(r.idle.unwrap().connections, 5, "{}", r.table());
    assert!(r.idle.unwrap().rss_per_conn_kib.is_some());

    shutdown.immediate.cancel();
    shutdown.graceful.cancel();
    let _ = running.await;
}

/// The synthetic stream is valid H.264 and AAC, so any RTMP server that looks inside
/// takes it: published through the relay, ffprobe decodes every frame (`-count_frames`)
/// without an error and reports 640×360 H.264 and 44.1 kHz stereo AAC, every frame sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_stream_decodes_as_h264_and_aac() -> Result {
    bounded(async {
        let srv = start_server().await?;
        let url = srv.url("rtmp", "synth");
        let entries = "stream=codec_type,codec_name,width,height,sample_rate,channels,nb_read_frames";
        let probe = tokio::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries", entries, "-of", "compact=p=0"])
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let probe = tokio::spawn(probe);
        srv.wait_subscribers("synth", 1).await?;

        // Three seconds of A/V, sent as fast as the socket takes them.
        let mut publisher =
            RtmpClient::connect(&StreamUrl::parse(&url)?, ClientMode::Publish, &ClientOptions::default())
                .await?;
        publisher.send_media(MediaKind::Video, 0, synth::video_sequence_header()).await?;
        publisher.send_media(MediaKind::Audio, 0, synth::audio_sequence_header()).await?;
        let plan = VideoPlan::new(1_000_000, 30, Duration::from_secs(1));
        let (mut video, mut audio) = (0, 0);
        for (_, next) in Schedule::new(plan, true).take_while(|(due, _)| due.as_secs() < 3) {
            match next {
                Next::Video(n) => {
                    publisher.send_media(MediaKind::Video, plan.timestamp_ms(n), plan.frame(n, n)).await?;
                    video += 1;
                }
                Next::Audio(n) => {
                    let ts = synth::audio_timestamp_ms(n);
                    publisher.send_media(MediaKind::Audio, ts, synth::audio_frame()).await?;
                    audio += 1;
                }
            }
        }
        publisher.finish().await?;

        let output =
            tokio::time::timeout(Duration::from_secs(20), probe).await.context("ffprobe hung")???;
        expect_success(&output, "ffprobe")?;
        let errors = stderr_text(&output);
        ensure!(errors.trim().is_empty(), "ffprobe reported: {errors}");
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        let stream = |kind: &str| {
            report.lines().find(|l| l.contains(&format!("codec_type={kind}"))).map(str::to_owned)
        };
        let v = stream("video").with_context(|| format!("no video stream: {report}"))?;
        let want =
            format!("codec_name=h264|codec_type=video|width={}|height={}", synth::WIDTH, synth::HEIGHT);
        ensure!(v.starts_with(&want), "video: {v}");
        ensure!(v.ends_with(&format!("nb_read_frames={video}")), "{video} frames sent, video: {v}");
        let a = stream("audio").with_context(|| format!("no audio stream: {report}"))?;
        ensure!(a.starts_with("codec_name=aac|codec_type=audio|sample_rate=44100|channels=2"), "audio: {a}");
        ensure!(a.ends_with(&format!("nb_read_frames={audio}")), "{audio} frames sent, audio: {a}");
        Ok(())
    })
    .await
}
