//! `qrelay bench` (the `qrelay-bench` crate) against an in-process relay on 127.0.0.1:
//! players over TCP, the QUIC tunnel and RoQR, churn, and the idle mode.

use std::time::Duration;

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
        audio: true,
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

    // Churn: players joining and leaving beside the steady ones, reported apart.
    let args = BenchArgs {
        players: 3,
        duration: 1.0,
        bitrate: 500_000,
        ramp_ms: Some(0),
        quiet: true,
        churn_rate: 40.0,
        churn_hold_ms: 200,
        ..BenchArgs::new(&format!("rtmp://{addr}/live/churn"))
    };
    let r = run(args).await.unwrap();
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
