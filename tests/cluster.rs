//! Relays chained into a CDN, with real processes on loopback: edges pulling from origins
//! over QUIC (one upstream per stream, one connection per node), chains of three hops,
//! and a cluster whose registry is a real `redis-server`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use common::*;
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::media::frame::{inspect_video, MediaKind};
use qrelay::reason::Reason;
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use qrelay::Config;
use tokio::process::{Child, Command};

/// Longest a publisher of the 4 s test file takes.
const PUBLISH_LIMIT: Duration = Duration::from_secs(20);
/// Longest a player takes to end after its stream ended, across a chain of relays.
const END_LIMIT: Duration = Duration::from_secs(10);

/// `rtmp+quic://127.0.0.1:PORT`: how another node reaches `srv`.
fn quic_node(srv: &TestServer) -> String {
    format!("rtmp+quic://127.0.0.1:{}", srv.addr.port())
}

/// A relay pulling from `upstream` (trusting its development CA).
async fn edge_of(upstream: &TestServer, tweak: impl FnOnce(&mut Config)) -> Result<TestServer> {
    let (node, ca) = (quic_node(upstream), upstream.ca.clone());
    start_server_with(|c| {
        c.origin = vec![node];
        c.relay_ca = Some(ca);
        tweak(c);
    })
    .await
}

fn client_options(srv: &TestServer) -> ClientOptions {
    ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() }
}

/// An in-process player of `live/key` on `srv`, started (the stream is live).
async fn player(srv: &TestServer, scheme: &str, key: &str) -> Result<RtmpClient> {
    let url = StreamUrl::parse(&srv.url(scheme, key))?;
    Ok(RtmpClient::connect(&url, ClientMode::Play, &client_options(srv)).await?)
}

/// Reads until `n` video pictures arrived; returns their timestamps (sequence headers
/// left out), failing on a timestamp that goes back.
async fn pictures(client: &mut RtmpClient, n: usize, limit: Duration) -> Result<Vec<u32>> {
    let mut seen = Vec::with_capacity(n);
    tokio::time::timeout(limit, async {
        while seen.len() < n {
            match client.read_event().await? {
                Some(ClientEvent::Media { kind: MediaKind::Video, timestamp, payload }) => {
                    if inspect_video(&payload).sequence_header {
                        continue;
                    }
                    if let Some(last) = seen.last() {
                        ensure!(timestamp >= *last, "video time went back: {last} ms, then {timestamp} ms");
                    }
                    seen.push(timestamp);
                }
                Some(ClientEvent::StreamEnded) => bail!("the stream ended after {} pictures", seen.len()),
                Some(_) => {}
                None => bail!("the relay closed after {} pictures", seen.len()),
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("{} of {n} pictures within {limit:?}", seen.len()))??;
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hop_chain_delivers_byte_exact_media() -> Result {
    bounded(async {
        let origin = start_server().await?;
        let mid = edge_of(&origin, |_| {}).await?;
        let edge = edge_of(&mid, |_| {}).await?;
        let input = &media().flv;
        let out = edge.path("edge.flv");

        // The player comes first: its play makes the edge pull from the mid node, whose
        // own pull then waits at the origin for the publisher.
        let ff_player = spawn(&mut ffmpeg_player(&edge.url("rtmp", "c3"), &out))?;
        origin.wait_subscribers("c3", 1).await?;
        ensure!(mid.stats("c3").is_some_and(|s| s.subscribers == 1), "mid: {:?}", mid.stats("c3"));

        let publisher = spawn(&mut ffmpeg_publisher(input, &origin.url("rtmp", "c3"), false))?;
        expect_success(&finish(publisher, "ffmpeg publisher", PUBLISH_LIMIT).await?, "ffmpeg publisher")?;
        // The end of the stream travels down the chain and ends the player.
        expect_success(&finish(ff_player, "ffmpeg player", END_LIMIT).await?, "ffmpeg player")?;
        let compared = compare_packets(&probe_packets(input).await?, &probe_packets(&out).await?, true)?;
        ensure!(compared > 200, "only {compared} packets compared");
        for (name, srv) in [("edge", &edge), ("mid", &mid), ("origin", &origin)] {
            srv.wait_released("c3").await.with_context(|| format!("{name} kept the stream"))?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_each_stream_once_over_one_connection_and_lets_go_when_idle() -> Result {
    bounded(async {
        let origin = start_server().await?;
        let edge = edge_of(&origin, |c| c.pull_idle_ms = 300).await?;
        let keys = ["m1", "m2"];
        let mut publishers = Vec::new();
        for key in keys {
            publishers.push(spawn(&mut ffmpeg_publisher(&media().flv, &origin.url("rtmp", key), true))?);
            origin.wait_live(key).await?;
        }

        // Three players per stream, over TCP and both QUIC mappings.
        let mut players = Vec::new();
        for key in keys {
            for scheme in ["rtmp", "rtmp+quic", "rtmpq"] {
                let url = if scheme == "rtmpq" {
                    format!("{}?mode=tunnel", edge.url("rtmp+quic", key))
                } else {
                    edge.url(scheme, key)
                };
                let url = StreamUrl::parse(&url)?;
                let mut p = RtmpClient::connect(&url, ClientMode::Play, &client_options(&edge)).await?;
                pictures(&mut p, 5, Duration::from_secs(10)).await?;
                players.push(p);
            }
        }
        // Seen from the origin: one subscriber per stream, and one connection for both
        // (the rest are the two publishers).
        for key in keys {
            let s = origin.stats(key).context("stream gone")?;
            ensure!(s.subscribers == 1, "{key}: {} subscribers at the origin", s.subscribers);
        }
        // The edge's control API says where each stream comes from.
        let body = reqwest::get(edge.api("/api/streams/live/m1")).await?.text().await?;
        ensure!(
            body.contains("\"pull\":{")
                && body.contains("\"state\":\"pulling\"")
                && body.contains(&quic_node(&origin)),
            "pull state missing from the API: {body}"
        );
        ensure!(
            origin.connections.current() == keys.len() + 1,
            "{} connections at the origin for 2 publishers and one edge",
            origin.connections.current()
        );

        // Every player gone: the upstreams close once the idle time passed.
        drop(players);
        for key in keys {
            origin.wait_stats(key, "no subscribers", |s| s.subscribers == 0).await?;
            ensure!(edge.stats(key).is_none(), "the edge kept {key}: {:?}", edge.stats(key));
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_over_rtmps_and_roqr_too() -> Result {
    bounded(async {
        let origin = start_server().await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &origin.url("rtmp", "up"), true))?;
        origin.wait_live("up").await?;
        let port = origin.addr.port();
        for node in [format!("rtmps://127.0.0.1:{port}"), format!("rtmp+quic://127.0.0.1:{port}?mode=roqr")] {
            let ca = origin.ca.clone();
            let edge = start_server_with(|c| {
                c.origin = vec![node.clone()];
                c.relay_ca = Some(ca);
            })
            .await?;
            let mut p = player(&edge, "rtmp", "up").await?;
            pictures(&mut p, 30, Duration::from_secs(10))
                .await
                .with_context(|| format!("pulling from {node}"))?;
            let body = reqwest::get(edge.api("/api/streams/live/up")).await?.text().await?;
            ensure!(body.contains(&node), "the API does not name the origin {node}: {body}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_never_pulls_from_itself() -> Result {
    bounded(async {
        // The origin list names the edge itself (a loop): it is skipped, and the player
        // is told there is no such stream when its wait is over.
        let reserved = reserve_port()?;
        let port = reserved.local_addr().port();
        let edge = start_server_on(
            reserved,
            |c| {
                c.origin = vec![format!("rtmp+quic://localhost:{port}"), format!("rtmp://127.0.0.1:{port}")];
                c.play_wait_ms = 500;
            },
            None,
        )
        .await?;
        let err = player(&edge, "rtmp", "self").await.err().context("played a stream nobody publishes")?;
        ensure!(format!("{err:#}").contains("StreamNotFound"), "{err:#}");
        ensure!(edge.counters.get(Reason::UpstreamFailed) == 0, "it tried to pull from itself");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_chain_longer_than_max_hops_is_not_started() -> Result {
    bounded(async {
        let origin = start_server().await?;
        // The mid node allows one relay: the edge's pull is that one, so mid pulls nothing.
        let mid = edge_of(&origin, |c| c.max_hops = 1).await?;
        let edge = edge_of(&mid, |c| c.play_wait_ms = 1_000).await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &origin.url("rtmp", "far"), true))?;
        origin.wait_live("far").await?;
        let err = player(&edge, "rtmp", "far").await.err().context("played across too many relays")?;
        ensure!(format!("{err:#}").contains("StreamNotFound"), "{err:#}");
        ensure!(
            mid.counters.get(Reason::HopLimit) == 1,
            "mid counted {} hop-limit refusals",
            mid.counters.get(Reason::HopLimit)
        );
        ensure!(origin.stats("far").is_some_and(|s| s.subscribers == 0), "the origin was pulled from");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_from_nginx_rtmp() -> Result {
    bounded(async {
        // Any RTMP server can be an origin: here nginx-rtmp, over plain RTMP.
        let nginx = Nginx::start().await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &nginx.url("ng"), true))?;
        let origin = format!("rtmp://127.0.0.1:{}", nginx.port);
        let edge = start_server_with(|c| c.origin = vec![origin]).await?;
        // nginx answers a play at once, live or not: retry until the stream is there.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut watcher = loop {
            let mut p = player(&edge, "rtmp", "ng").await?;
            match pictures(&mut p, 30, Duration::from_secs(5)).await {
                Ok(_) => break p,
                // Before nginx had the stream (its play ended at once): again.
                Err(_) if tokio::time::Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        };
        let second = pictures(&mut watcher, 30, Duration::from_secs(10)).await?;
        ensure!(second.len() == 30, "the edge stopped relaying nginx's stream");
        ensure!(edge.stats("ng").is_some_and(|s| s.live), "the pulled stream is not live on the edge");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_sharing_the_token_secret_pulls_from_an_origin_that_requires_tokens() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a cluster-wide secret of 32 bytes")?;
        let file = secret.clone();
        let origin = start_server_with(|c| {
            c.auth.secret_file = Some(file);
            c.auth.play = qrelay::auth::AuthMode::Token;
        })
        .await?;
        let _publisher = spawn(&mut ffmpeg_publisher(&media().flv, &origin.url("rtmp", "tk"), true))?;
        origin.wait_live("tk").await?;
        // An edge whose own play is open does not mint for anyone who asks (issue 22 #5)...
        let file = secret.clone();
        let open_edge = edge_of(&origin, |c| {
            c.auth.secret_file = Some(file);
            c.play_wait_ms = 1_500;
        })
        .await?;
        ensure!(player(&open_edge, "rtmp", "tk").await.is_err(), "an open edge minted a pull token");
        // ...unless told to: then its players need no token and its pull carries one.
        let file = secret.clone();
        let edge = edge_of(&origin, |c| {
            c.auth.secret_file = Some(file);
            c.auth.mint_pull_tokens = true;
        })
        .await?;
        let mut p = player(&edge, "rtmp", "tk").await?;
        pictures(&mut p, 10, Duration::from_secs(10)).await?;
        // An edge whose players need tokens mints for the ones it let in.
        let file = secret.clone();
        let token_edge = edge_of(&origin, |c| {
            c.auth.secret_file = Some(file);
            c.auth.play = qrelay::auth::AuthMode::Token;
        })
        .await?;
        let auth = qrelay::auth::Auth::from_config(&qrelay::config::AuthConfig {
            secret_file: Some(secret.clone()),
            ..Default::default()
        })?
        .context("an auth from the secret")?;
        let t = auth.mint("live/tk", qrelay::auth::token::TokenRole::Play, Duration::from_secs(60))?;
        let mut p = player(&token_edge, "rtmp", &format!("tk?token={t}")).await?;
        pictures(&mut p, 10, Duration::from_secs(10)).await?;
        // An edge without the secret is refused by the origin.
        let stranger = edge_of(&origin, |c| c.play_wait_ms = 1_500).await?;
        ensure!(player(&stranger, "rtmp", "tk").await.is_err(), "a pull without a token was let in");
        ensure!(stranger.counters.get(Reason::UpstreamFailed) >= 1, "the refused pull was not counted");
        ensure!(
            origin.counters.get(Reason::TokenMissing) >= 1,
            "the origin did not refuse for want of a token"
        );
        Ok(())
    })
    .await
}

/// Issue 22 #11: every distinct session ID a player named started an upstream pull, and
/// each retried its origins for as long as its player waited. Now pulls are capped
/// (`max_pulls`), and an origin's "no such stream" is believed for `pull_not_found_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_pulls_are_capped_and_absent_streams_are_remembered() -> Result {
    bounded(async {
        let origin = start_server_with(|c| c.play_wait_ms = 100).await?;
        let edge = edge_of(&origin, |c| {
            c.max_pulls = 2;
            c.pull_not_found_ms = 30_000;
            c.pull_idle_ms = 100;
            c.play_wait_ms = 1_500;
        })
        .await?;
        // Three players of three streams nobody publishes: two pulls, the third refused.
        let ask = |key: &'static str| {
            let url = StreamUrl::parse(&edge.url("rtmp", key));
            let opts = client_options(&edge);
            async move { RtmpClient::connect(&url?, ClientMode::Play, &opts).await.map_err(anyhow::Error::from) }
        };
        // Two players, two pulls; a third stream while both run is not pulled.
        let (a, b) = (tokio::spawn(ask("ghost1")), tokio::spawn(ask("ghost2")));
        wait_until("two pulls", Duration::from_secs(10), || {
            ["live/ghost1", "live/ghost2"].iter().all(|k| edge.relays.get(k).pull.is_some()).then_some(())
        })
        .await?;
        ensure!(ask("ghost3").await.is_err(), "ghost3 played");
        ensure!(edge.counters.get(Reason::PullLimit) == 1, "the third pull was not refused at max_pulls = 2");
        ensure!(a.await?.is_err() && b.await?.is_err(), "a player of an absent stream played");
        // The origin said "no such stream" for ghost1: once the pulls have ended (and with
        // them every request they had in flight), another player of it starts no pull.
        for key in ["live/ghost1", "live/ghost2"] {
            wait_until("the pulls to end", Duration::from_secs(10), || edge.relays.get(key).pull.is_none().then_some(()))
                .await?;
        }
        let asked = origin.counters.get(Reason::StreamNotFound);
        ensure!(asked >= 1, "the origin was never asked");
        ensure!(ask("ghost1").await.is_err(), "ghost1 played");
        ensure!(
            origin.counters.get(Reason::StreamNotFound) == asked,
            "the origin was asked again for a stream it said it does not have"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// A cluster with a Redis registry
// ---------------------------------------------------------------------------------------

/// A `redis-server` on a Unix socket of its own (no TCP port: nothing to race other tests
/// for), without persistence; killed on drop.
struct RedisServer {
    url: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// A redis-server with these extra arguments (e.g. `--requirepass`).
    async fn start_with(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("qrelay-redis-").tempdir()?;
        let socket = dir.path().join("redis.sock");
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--unixsocket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (scripts/install-test-deps.sh installs it)")?;
        let ready = wait_until("redis-server to accept connections", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).ok()
        })
        .await;
        if let Err(e) = ready {
            let _ = child.kill().await;
            return Err(e);
        }
        Ok(Self { url: format!("redis+unix://{}", socket.display()), _child: child, _dir: dir })
    }
}

/// Issue 22 #12: a publisher replaced on the same node released its successor's lease
/// (the lease's value was the node alone). Leases now name their claim; and Redis AUTH
/// works from the URL, with the password kept out of what is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_publisher_never_releases_its_successors_lease() -> Result {
    use qrelay::registry::{Claim, Redis, Registry};
    bounded(async {
        let redis = RedisServer::start_with(&["--requirepass", "s3cret-pass"]).await?;
        let url = format!("{}?pass=s3cret-pass", redis.url);
        let me = qrelay::relay::node::NodeUrl::parse("rtmp+quic://10.0.0.1:1935")?;
        let other = qrelay::relay::node::NodeUrl::parse("rtmp+quic://10.0.0.2:1935")?;
        let lease = Duration::from_secs(30);
        let registry = Redis::new(&url, &me, lease, Duration::from_secs(2))?;
        let Claim::Held(first) = registry.claim("live/cam").await? else { bail!("first claim not held") };
        // The publisher that replaces it on this node claims anew.
        let Claim::Held(second) = registry.claim("live/cam").await? else { bail!("second claim not held") };
        ensure!(first != second, "two claims with one holder");
        registry.release("live/cam", &first).await?;
        ensure!(!registry.refresh("live/cam", &first).await?, "the replaced publisher refreshed");
        ensure!(registry.refresh("live/cam", &second).await?, "the successor lost its lease");
        ensure!(registry.resolve("live/cam").await? == Some(me.clone()), "resolve after the release");
        // Another node is told who holds it: the node URL, not the claim's nonce.
        let theirs = Redis::new(&url, &other, lease, Duration::from_secs(2))?;
        ensure!(theirs.claim("live/cam").await? == Claim::Taken(me.to_string()), "another node took it");
        registry.release("live/cam", &second).await?;
        ensure!(registry.resolve("live/cam").await?.is_none(), "the successor's release");
        // Without the password, the registry refuses.
        let nopass = Redis::new(&redis.url, &me, lease, Duration::from_secs(2))?;
        ensure!(nopass.claim("live/x").await.is_err(), "claimed without AUTH");
        Ok(())
    })
    .await
}

/// Issue 22 #12: `rediss://` (TLS) registries. redis-server can only serve TLS on a TCP
/// port, and only on one it is told: a free port is picked and, should another process
/// take it first, picked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_over_tls_holds_leases() -> Result {
    use qrelay::registry::{Claim, Redis, Registry};
    bounded(async {
        let dir = tempfile::tempdir()?;
        // The relay's own development certificate serves as the Redis server's.
        qrelay::transport::tls::dev_identity(dir.path())?;
        let (cert, key) = (dir.path().join("localhost.pem"), dir.path().join("localhost.key"));
        let mut server = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--save", "", "--appendonly", "no", "--tls-auth-clients", "no"])
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting redis-server")?;
            let up = wait_until("redis-server over TLS", Duration::from_secs(5), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            })
            .await;
            if up.is_ok() && child.try_wait()?.is_none() {
                server = Some((child, port));
                break;
            }
            let _ = child.kill().await;
        }
        let (_child, port) = server.context("redis-server never served TLS")?;
        // A self-signed test certificate: `#insecure` skips its verification.
        let url = format!("rediss://127.0.0.1:{port}/#insecure");
        let me = qrelay::relay::node::NodeUrl::parse("rtmp+quic://10.0.0.1:1935")?;
        let registry = Redis::new(&url, &me, Duration::from_secs(30), Duration::from_secs(3))?;
        let Claim::Held(holder) = registry.claim("live/tls").await? else { bail!("not held") };
        ensure!(registry.resolve("live/tls").await? == Some(me), "resolved over TLS");
        registry.release("live/tls", &holder).await?;
        // Plain text to the TLS port gets nothing.
        let plain = Redis::new(
            &format!("redis://127.0.0.1:{port}"),
            &qrelay::relay::node::NodeUrl::parse("rtmp+quic://10.0.0.1:1935")?,
            Duration::from_secs(30),
            Duration::from_secs(1),
        )?;
        ensure!(plain.claim("live/plain").await.is_err(), "a plain-text client was served on the TLS port");
        Ok(())
    })
    .await
}

/// A cluster node using `registry`, with the certificates in `certs` (one CA for the
/// whole cluster, so edges trust every origin).
async fn node(registry: &str, certs: &Path, tweak: impl FnOnce(&mut Config)) -> Result<TestServer> {
    let (registry, certs) = (registry.to_owned(), certs.to_owned());
    start_server_with(|c| {
        c.registry = Some(registry);
        c.registry_lease_ms = 1_000;
        c.relay_ca = Some(certs.join("dev-ca.pem"));
        c.cert_dir = certs;
        tweak(c);
    })
    .await
}

/// An in-process publish attempt of `live/key` on `srv`: the error text when refused.
async fn try_publish(srv: &TestServer, key: &str) -> Option<String> {
    let url = StreamUrl::parse(&srv.url("rtmp", key)).ok()?;
    match RtmpClient::connect(&url, ClientMode::Publish, &client_options(srv)).await {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_failover_through_redis_keeps_edge_players_playing() -> Result {
    bounded(async {
        let redis = RedisServer::start().await?;
        let certs = tempfile::tempdir()?;
        // Origin A is a process of its own, so that it can die as a crash does.
        let lease = "1000";
        let cert_dir = certs.path().to_str().context("path")?;
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &redis.url,
            "--registry-lease-ms",
            lease,
            "--cert-dir",
            cert_dir,
        ];
        let mut a = spawn_serve(args).await?;
        let b = node(&redis.url, certs.path(), |_| {}).await?;
        let edge = node(&redis.url, certs.path(), |c| c.pull_idle_ms = 500).await?;

        let first = spawn(&mut ffmpeg_publisher(&media().flv, &a.url("rtmp", "fo"), true))?;
        // The edge finds the stream's origin through the registry (its play is answered
        // once A has the publisher).
        let mut watcher = player(&edge, "rtmp", "fo").await?;
        let before = pictures(&mut watcher, 10, Duration::from_secs(10)).await?;
        // A holds the lease: B refuses a publisher of the same session ID.
        let refused = try_publish(&b, "fo").await.context("B accepted a second publisher of live/fo")?;
        ensure!(refused.contains("BadName"), "{refused}");
        ensure!(b.counters.get(Reason::PublishedElsewhere) == 1, "refusal not counted");

        // A dies; its lease expires; the publisher comes back on B.
        a.child.kill().await?;
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let _second = loop {
            let mut p = spawn(&mut ffmpeg_publisher(&media().flv, &b.url("rtmp", "fo"), true))?;
            let live = wait_until("B to take the publisher", Duration::from_millis(1500), || {
                b.stats("fo").filter(|s| s.live)
            })
            .await;
            if live.is_ok() {
                break p;
            }
            let _ = p.kill().await;
            ensure!(tokio::time::Instant::now() < deadline, "B never took the publisher over");
        };

        // The same player goes on, with time moving forward, from the new origin.
        let after = pictures(&mut watcher, 60, Duration::from_secs(30)).await?;
        let last_before = *before.last().context("no pictures before")?;
        ensure!(
            after[0] >= last_before,
            "time went back across the failover: {last_before} ms, then {} ms",
            after[0]
        );
        ensure!(edge.counters.get(Reason::UpstreamLost) >= 1, "the edge never saw its upstream go");
        b.wait_stats("fo", "the edge pulling from B", |s| s.subscribers == 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_never_stops_local_publish_and_play() -> Result {
    bounded(async {
        // Nothing listens there.
        let certs = tempfile::tempdir()?;
        let registry = format!("redis+unix://{}", certs.path().join("no-redis.sock").display());
        let srv = node(&registry, certs.path(), |_| {}).await?;
        let publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "solo"), true))?;
        srv.wait_live("solo").await?;
        let mut p = player(&srv, "rtmp+quic", "solo").await?;
        pictures(&mut p, 10, Duration::from_secs(10)).await?;
        ensure!(srv.counters.get(Reason::RegistryUnavailable) >= 1, "the outage was not counted");
        drop(publisher);
        Ok(())
    })
    .await
}
