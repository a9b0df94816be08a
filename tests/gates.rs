//! Publish/play gates end to end: tokens (`[auth]`) over TCP, RTMPS, RoQR and the QUIC
//! tunnel, in the stream key and in the app; `qrelay token` output accepted by `qrelay
//! serve` with ffmpeg and the project's client, and no token in any log; tokens signed
//! elsewhere (ES256, EdDSA) checked with public keys from files and from a JWKS URL served
//! on loopback; HTTP hooks
//! (`[hooks]`) against a real HTTP server on loopback that allows, refuses, holds or never
//! answers, and hears of every allowed publish and play ending.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use qrelay::auth::token::{mint, mint_until, unix_now, Secret};
use qrelay::auth::{AuthMode, TokenRole};
use qrelay::client::{ClientError, ClientOptions, RtmpClient};
use qrelay::reason::Reason;
use qrelay::rtmp::session::ClientMode;
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SECRET: &str = "e2e-secret-0123456789abcdef";
const HOUR: Duration = Duration::from_secs(3600);

fn secret() -> Secret {
    Secret::new(SECRET.as_bytes(), "test").expect("a valid test secret")
}

fn client_options(srv: &TestServer) -> ClientOptions {
    ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() }
}

/// Writes the test secret to a file (with the newline an editor leaves) and points the
/// configuration at it.
fn secret_file(dir: &tempfile::TempDir) -> Result<std::path::PathBuf> {
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n"))?;
    Ok(file)
}

/// A URL on the relay: `scheme://addr/app/key`, with `?mode=tunnel` added for the tunnel.
fn url(srv: &TestServer, scheme: &str, app: &str, key: &str) -> Result<StreamUrl> {
    let (scheme, tunnel) = match scheme {
        "tunnel" => ("rtmp+quic", true),
        s => (s, false),
    };
    let mut text = format!("{scheme}://{}/{app}/{key}", srv.addr);
    if tunnel {
        text.push(if key.contains('?') { '&' } else { '?' });
        text.push_str("mode=tunnel");
    }
    Ok(StreamUrl::parse(&text)?)
}

async fn connect(
    srv: &TestServer,
    url: &StreamUrl,
    mode: ClientMode,
) -> std::result::Result<RtmpClient, ClientError> {
    RtmpClient::connect(url, mode, &client_options(srv)).await
}

/// Expects a refusal with the role's status code and `message` in its description.
fn expect_refused(
    result: std::result::Result<RtmpClient, ClientError>,
    mode: ClientMode,
    message: &str,
) -> Result {
    let err = match result {
        Ok(_) => return Err(anyhow!("{mode:?} allowed; expected refused with `{message}`")),
        Err(e) => e.to_string(),
    };
    let code = match mode {
        ClientMode::Publish => "NetStream.Publish.BadName",
        ClientMode::Play => "NetStream.Play.Failed",
    };
    ensure!(
        err.contains(code) && err.contains(message),
        "{mode:?}: `{err}`, expected {code} with `{message}`"
    );
    Ok(())
}

fn count(srv: &TestServer, reason: Reason) -> u64 {
    srv.counters.get(reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_over_every_transport_in_the_key_and_in_the_app() -> Result {
    bounded(async {
        let keep = tempfile::tempdir()?;
        let file = secret_file(&keep)?;
        let srv = start_server_with(|c| {
            c.auth.secret_file = Some(file);
            c.auth.publish = AuthMode::Token;
            c.auth.play = AuthMode::Token;
        })
        .await?;
        let other = Secret::new(b"another secret, long enough", "test")?;
        let transports = ["rtmp", "rtmps", "rtmp+quic", "tunnel"];
        for scheme in transports {
            let k = scheme.replace('+', "-");
            let pattern = format!("live/{k}*");
            let tok = |s: &Secret, role| mint(s, &pattern, role, HOUR);
            let (publish, play) = (tok(&secret(), TokenRole::Publish)?, tok(&secret(), TokenRole::Play)?);
            for (mode, own, wrong_role, role_text) in [
                (ClientMode::Publish, TokenRole::Publish, &play, "not valid for publishing"),
                (ClientMode::Play, TokenRole::Play, &publish, "not valid for playing"),
            ] {
                // Past the default 30 s leeway for clocks that disagree.
                let expired = mint_until(&secret(), &pattern, own, unix_now() - 31)?;
                let cases = [
                    (k.clone(), "a token is required"),
                    (format!("{k}?token={}", tok(&other, own)?), "token signature does not verify"),
                    (format!("{k}?token={expired}"), "token expired"),
                    (format!("{k}?token={wrong_role}"), role_text),
                    (
                        format!("{k}?token={}", mint(&secret(), "live/elsewhere", own, HOUR)?),
                        "not valid for this stream",
                    ),
                    (format!("{k}?token=not.a.token"), "token malformed"),
                ];
                for (key, message) in cases {
                    let refused = connect(&srv, &url(&srv, scheme, "live", &key)?, mode).await;
                    expect_refused(refused, mode, message).with_context(|| format!("{scheme} {key}"))?;
                }
            }
            // Valid: in the key (as typed into OBS's key box) and in the app (its server box).
            let in_key = connect(
                &srv,
                &url(&srv, scheme, "live", &format!("{k}?token={publish}"))?,
                ClientMode::Publish,
            )
            .await
            .with_context(|| format!("{scheme}: publish with the token in the key"))?;
            let app = format!("live?token={publish}");
            let in_app = connect(&srv, &url(&srv, scheme, &app, &format!("{k}-app"))?, ClientMode::Publish)
                .await
                .with_context(|| format!("{scheme}: publish with the token in the app"))?;
            srv.wait_live(&k).await?;
            srv.wait_live(&format!("{k}-app")).await?;
            let app = format!("live?token={play}");
            let player = connect(&srv, &url(&srv, scheme, &app, &k)?, ClientMode::Play)
                .await
                .with_context(|| format!("{scheme}: play with the token in the app"))?;
            let player2 = connect(
                &srv,
                &url(&srv, scheme, "live", &format!("{k}-app?token={play}"))?,
                ClientMode::Play,
            )
            .await
            .with_context(|| format!("{scheme}: play with the token in the key"))?;
            drop((in_key, in_app, player, player2));
        }
        // Each refusal was counted under its own reason: once per role and transport,
        // the malformed one and the one signed with another secret both as invalid.
        let n = 2 * transports.len() as u64;
        let counts = [
            (Reason::TokenMissing, n),
            (Reason::TokenInvalid, 2 * n),
            (Reason::TokenExpired, n),
            (Reason::TokenWrongRole, n),
            (Reason::TokenWrongStream, n),
            (Reason::Refused, 0),
        ];
        for (reason, want) in counts {
            ensure!(
                count(&srv, reason) == want,
                "{reason}: counted {}, expected {want}",
                count(&srv, reason)
            );
        }
        Ok(())
    })
    .await
}

/// Runs `qrelay token ARGS` and returns what it printed.
async fn qrelay_token(args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = qrelay(["token"]);
    for var in ["QRELAY_AUTH_SECRET", "QRELAY_AUTH_SECRET_FILE", "QRELAY_AUTH_AUDIENCE", "QRELAY_AUTH_ISSUER"]
    {
        cmd.env_remove(var);
    }
    cmd.args(args);
    cmd.stdout(std::process::Stdio::piped());
    finish(spawn(&mut cmd)?, "qrelay token", Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qrelay_token_output_is_accepted_by_qrelay_serve_and_no_log_shows_a_token() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let file = secret_file(&dir)?;
        let f = file.to_str().context("path")?;
        let token = |args: &'static [&'static str]| {
            let f = f.to_owned();
            async move {
                // The relay below expects an audience and an issuer.
                let mut all = vec!["--secret-file", &f, "--audience", "edge", "--issuer", "auth"];
                all.extend_from_slice(args);
                let out = qrelay_token(&all).await?;
                expect_success(&out, "qrelay token")?;
                let text = String::from_utf8(out.stdout)?;
                let t = text.trim().to_owned();
                ensure!(text == format!("{t}\n") && t.split('.').count() == 3, "printed `{text}`");
                anyhow::Ok(t)
            }
        };
        let publish = token(&["--publish", "live/cam1", "--ttl", "1h"]).await?;
        let play = token(&["--play", "live/*", "--ttl", "15m"]).await?;
        // Both roles for one pattern, and the mistakes the command refuses.
        token(&["--publish", "live/x", "--play", "live/x", "--ttl", "7d"]).await?;
        for (args, says) in [
            (vec!["--publish", "live/x"], "QRELAY_AUTH_SECRET"),
            (vec!["--secret-file", f, "--publish", "live/x", "--ttl", "0s"], "0 s"),
            (vec!["--secret-file", f, "--publish", "live/x", "--ttl", "1w"], "30s, 15m, 1h, 7d"),
            (vec!["--secret-file", f, "--publish", "a", "--play", "b"], "different patterns"),
            (vec!["--secret-file", f, "--publish", "cam1"], "app/key"),
        ] {
            let out = qrelay_token(&args).await?;
            ensure!(
                !out.status.success() && stderr_text(&out).contains(says),
                "{args:?}: {}",
                stderr_text(&out)
            );
        }

        // Publish needs a token from the command line, play from the file.
        let config = dir.path().join("qrelay.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nsecret_file = {f:?}\nplay = \"token\"\naudience = \"edge\"\nissuer = \"auth\"\n"
            ),
        )?;
        let certs = dir.path().join("certs");
        let mut serve = spawn_serve([
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--cert-dir".as_ref(),
            certs.as_os_str(),
            "--auth-publish".as_ref(),
            "token".as_ref(),
        ])
        .await?;
        let base = format!("rtmp://{}", serve.addr);
        let _publisher =
            spawn(&mut ffmpeg_publisher(&media().flv, &format!("{base}/live/cam1?token={publish}"), true))?;
        let out = dir.path().join("out.flv");
        // The project's client with the token in the app, as OBS's server box holds it.
        let player = spawn(&mut qrelay_play(
            &format!("{base}/live?token={play}/cam1"),
            &certs.join("dev-ca.pem"),
            &out,
            Some(1.0),
        ))?;
        let played = finish(player, "qrelay play", Duration::from_secs(20)).await?;
        expect_success(&played, "qrelay play")?;
        ensure!(read_tags(&out).await?.len() > 10, "the player got almost nothing");
        // A play token does not publish; ffmpeg gives up.
        let refused =
            spawn(&mut ffmpeg_publisher(&media().flv, &format!("{base}/live/cam2?token={play}"), false))?;
        let refused = finish(refused, "refused ffmpeg", Duration::from_secs(20)).await?;
        ensure!(!refused.status.success(), "ffmpeg published with a play token");
        wait_until("the refusal in the relay's log", Duration::from_secs(5), || {
            serve.logs().contains("token_wrong_role").then_some(())
        })
        .await?;
        // Nor does a token without the audience and issuer the relay expects.
        let out = qrelay_token(&["--secret-file", f, "--publish", "live/cam3"]).await?;
        expect_success(&out, "qrelay token")?;
        let plain = String::from_utf8(out.stdout)?.trim().to_owned();
        let refused =
            spawn(&mut ffmpeg_publisher(&media().flv, &format!("{base}/live/cam3?token={plain}"), false))?;
        let refused = finish(refused, "refused ffmpeg", Duration::from_secs(20)).await?;
        ensure!(!refused.status.success(), "ffmpeg published without the audience");
        wait_until("the refusal in the relay's log", Duration::from_secs(5), || {
            serve.logs().contains("token_invalid").then_some(())
        })
        .await?;
        serve.child.start_kill()?;
        serve.wait(Duration::from_secs(5)).await?;

        // Neither the relay nor the client logged a token (nor its signature alone).
        let logs = serve.logs();
        let player_log = stderr_text(&played);
        ensure!(player_log.contains("token=***"), "the client's log: {player_log}");
        for t in [&publish, &play] {
            let signature = t.rsplit('.').next().unwrap_or_default();
            for (what, log) in [("relay", &logs), ("client", &player_log)] {
                ensure!(!log.contains(signature), "a token in the {what}'s log:\n{log}");
            }
        }
        ensure!(logs.contains("live/cam1") && logs.contains("publish started"), "{logs}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_mode_without_a_secret_stops_the_relay_at_start() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut cmd = qrelay(["serve", "--listen", "127.0.0.1:0", "--auth-play", "token", "--cert-dir"]);
        cmd.arg(dir.path()).env_remove("QRELAY_AUTH_SECRET").env_remove("QRELAY_AUTH_SECRET_FILE");
        let out = finish(spawn(&mut cmd)?, "qrelay serve", Duration::from_secs(10)).await?;
        let log = stderr_text(&out);
        ensure!(!out.status.success(), "it started: {log}");
        ensure!(
            log.contains("auth.play = \"token\" needs a token secret") && !log.contains("listening"),
            "{log}"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------

/// A real HTTP server on loopback answering hooks by the stream key: `no…` gets 403,
/// `hang…` never an answer, `hold…` 200 once the test releases it, anything else 200.
/// Every request's path and JSON body is reported as it arrives.
struct HookServer {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    release: Arc<Notify>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct HookState {
    tx: mpsc::UnboundedSender<(String, Value)>,
    release: Arc<Notify>,
}

async fn hook(State(s): State<HookState>, Path(name): Path<String>, Json(body): Json<Value>) -> StatusCode {
    let key = body["key"].as_str().unwrap_or_default().to_owned();
    let _ = s.tx.send((name, body));
    if key.starts_with("no") {
        StatusCode::FORBIDDEN
    } else if key.starts_with("hang") {
        std::future::pending().await
    } else if key.starts_with("hold") {
        s.release.notified().await;
        StatusCode::OK
    } else {
        StatusCode::OK
    }
}

impl HookServer {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, events) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let app =
            Router::new().route("/{name}", post(hook)).with_state(HookState { tx, release: release.clone() });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, events, release, task })
    }

    fn url(&self, name: &str) -> Option<String> {
        Some(format!("http://{}/{name}", self.addr))
    }

    /// The next hook request: (path, body).
    async fn next(&mut self) -> Result<(String, Value)> {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .map_err(|_| anyhow!("no hook request within 10 s"))?
            .context("the hook server stopped")
    }

    /// The next hook request, which must be `action` for `key`; returns its body.
    async fn expect(&mut self, action: &str, key: &str) -> Result<Value> {
        let (path, body) = self.next().await?;
        ensure!(
            path == action && body["action"] == action && body["key"] == key,
            "expected {action} {key}, got /{path} {body}"
        );
        Ok(body)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_decide_after_the_token_and_hear_of_every_end() -> Result {
    bounded(async {
        let mut hooks = HookServer::start().await?;
        let keep = tempfile::tempdir()?;
        let file = secret_file(&keep)?;
        let srv = start_server_with(|c| {
            c.auth.secret_file = Some(file);
            c.auth.publish = AuthMode::Token;
            c.hooks.publish = hooks.url("publish");
            c.hooks.unpublish = hooks.url("unpublish");
            c.hooks.play = hooks.url("play");
            c.hooks.stop = hooks.url("stop");
            c.hooks.timeout_ms = 5_000;
        })
        .await?;
        let token = mint(&secret(), "live/*", TokenRole::Publish, HOUR)?;
        // No token: refused before the hook is asked (its first request is the next one).
        expect_refused(
            connect(&srv, &url(&srv, "rtmp", "live", "ok1")?, ClientMode::Publish).await,
            ClientMode::Publish,
            "a token is required",
        )?;
        // A token and other parameters: the hook gets the parameters, never the token.
        let app = format!("live?region=eu&token={token}");
        let publisher =
            connect(&srv, &url(&srv, "rtmp", &app, "ok1?quality=hd")?, ClientMode::Publish).await?;
        let body = hooks.expect("publish", "ok1").await?;
        let client: SocketAddr = body["client"].as_str().unwrap_or_default().parse()?;
        ensure!(client.ip().is_loopback(), "{body}");
        let want = json!({
            "action": "publish", "session_id": "live/ok1", "app": "live", "key": "ok1",
            "client": client.to_string(), "transport": "tcp",
            "query": {"region": "eu", "quality": "hd"}
        });
        ensure!(body == want, "the publish hook got {body}, expected {want}");
        ensure!(!body.to_string().contains(&token), "a token went to the hook");
        // The hook's 403 refuses, with the reason counted.
        let refused =
            connect(&srv, &url(&srv, "rtmp", "live", &format!("no1?token={token}"))?, ClientMode::Publish)
                .await;
        expect_refused(refused, ClientMode::Publish, "refused by the publish hook (HTTP 403)")?;
        hooks.expect("publish", "no1").await?;
        // Plays are open to tokens here but go through the play hook, over RoQR too.
        let player = connect(&srv, &url(&srv, "rtmp+quic", "live", "ok1")?, ClientMode::Play).await?;
        let body = hooks.expect("play", "ok1").await?;
        ensure!(body["transport"] == "roqr" && body["session_id"] == "live/ok1", "{body}");
        expect_refused(
            connect(&srv, &url(&srv, "tunnel", "live", "no2")?, ClientMode::Play).await,
            ClientMode::Play,
            "refused by the play hook (HTTP 403)",
        )?;
        let body = hooks.expect("play", "no2").await?;
        ensure!(body["transport"] == "quic", "{body}");
        // Ends are told: the player leaving, then the publisher finishing.
        drop(player);
        let body = hooks.expect("stop", "ok1").await?;
        ensure!(body["transport"] == "roqr" && body["query"] == json!({}), "{body}");
        publisher.finish().await?;
        let body = hooks.expect("unpublish", "ok1").await?;
        ensure!(body["query"] == json!({"region": "eu", "quality": "hd"}), "{body}");
        // Both notifications are counted on /metrics once their answers are in.
        let delivered = "qrelay_hook_notifications_total{outcome=\"delivered\"} 2";
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = reqwest::get(srv.api("/metrics")).await?.text().await?;
            if text.contains(delivered)
                && text.contains("qrelay_hook_notifications_total{outcome=\"failed\"} 0")
            {
                break;
            }
            let hooks_lines: Vec<&str> = text.lines().filter(|l| l.contains("hook")).collect();
            ensure!(Instant::now() < deadline, "no `{delivered}` on /metrics: {hooks_lines:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A player whose wait for a publisher runs out was allowed, so its end is told too.
        drop(srv);
        let srv = start_server_with(|c| {
            c.play_wait_ms = 0;
            c.hooks.play = hooks.url("play");
            c.hooks.stop = hooks.url("stop");
        })
        .await?;
        let result = connect(&srv, &url(&srv, "rtmp", "live", "absent")?, ClientMode::Play).await;
        ensure!(
            result.is_err_and(|e| e.to_string().contains("StreamNotFound")),
            "played a stream nobody published"
        );
        hooks.expect("play", "absent").await?;
        hooks.expect("stop", "absent").await?;
        ensure!(hooks.events.try_recv().is_err(), "more hook requests than publishes and plays");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_holds_up_only_its_session_and_a_silent_or_absent_one_refuses() -> Result {
    bounded(async {
        let mut hooks = HookServer::start().await?;
        // The held hook answers only when released, well within the hook timeout.
        let srv = start_server_with(|c| {
            c.hooks.publish = hooks.url("publish");
            c.hooks.timeout_ms = 9_000;
        })
        .await?;
        let held_url = url(&srv, "rtmp+quic", "live", "hold1")?;
        let opts = client_options(&srv);
        let held =
            tokio::spawn(async move { RtmpClient::connect(&held_url, ClientMode::Publish, &opts).await });
        hooks.expect("publish", "hold1").await?;
        // While that hook holds its session, another publish is decided and starts.
        let other = connect(&srv, &url(&srv, "rtmp", "live", "ok2")?, ClientMode::Publish).await?;
        hooks.expect("publish", "ok2").await?;
        ensure!(!held.is_finished(), "the held session was decided before its hook answered");
        srv.wait_live("ok2").await?;
        hooks.release.notify_one();
        let held = held.await??;
        srv.wait_live("hold1").await?;
        drop((held, other));

        // A hook that never answers refuses after hooks.timeout_ms; an unreachable one at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let srv = start_server_with(|c| {
            c.hooks.publish = hooks.url("publish");
            c.hooks.play = Some(format!("http://{closed}/play"));
            c.hooks.timeout_ms = 300;
        })
        .await?;
        let started = Instant::now();
        let refused = connect(&srv, &url(&srv, "rtmps", "live", "hang1")?, ClientMode::Publish).await;
        let took = started.elapsed();
        expect_refused(refused, ClientMode::Publish, "the publish hook did not answer in time")?;
        ensure!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(8),
            "refused after {took:?}"
        );
        hooks.expect("publish", "hang1").await?;
        let refused = connect(&srv, &url(&srv, "rtmp", "live", "x")?, ClientMode::Play).await;
        expect_refused(refused, ClientMode::Play, "the play hook could not be reached")?;
        ensure!(count(&srv, Reason::HookTimeout) == 1 && count(&srv, Reason::HookFailed) == 1);
        Ok(())
    })
    .await
}

/// Issue 22 #10: every anonymous play became an outbound hook request, without bound.
/// Past `[hooks] max_in_flight` decisions waiting, a request is refused at once (fails
/// closed) and counted; the waiting ones go on when the hook answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_decisions_in_flight_are_capped_and_fail_closed() -> Result {
    bounded(async {
        let mut hooks = HookServer::start().await?;
        let srv = start_server_with(|c| {
            c.hooks.publish = hooks.url("publish");
            c.hooks.timeout_ms = 9_000;
            c.hooks.max_in_flight = 2;
        })
        .await?;
        let mut held = Vec::new();
        for key in ["hold1", "hold2"] {
            let url = url(&srv, "rtmp", "live", key)?;
            let opts = client_options(&srv);
            held.push(tokio::spawn(
                async move { RtmpClient::connect(&url, ClientMode::Publish, &opts).await },
            ));
            hooks.expect("publish", key).await?;
        }
        let started = Instant::now();
        let refused = connect(&srv, &url(&srv, "rtmp", "live", "third")?, ClientMode::Publish).await;
        expect_refused(refused, ClientMode::Publish, "the publish hook is overloaded")?;
        ensure!(started.elapsed() < Duration::from_secs(5), "the overloaded refusal waited");
        ensure!(count(&srv, Reason::HookOverloaded) == 1, "not counted");
        // The two waiting go on once the hook answers them.
        hooks.release.notify_one();
        hooks.release.notify_one();
        for h in held {
            h.await??;
        }
        // And with the slots free again, the hook is asked once more.
        let ok = connect(&srv, &url(&srv, "rtmp", "live", "fourth")?, ClientMode::Publish).await?;
        hooks.expect("publish", "fourth").await?;
        drop(ok);
        Ok(())
    })
    .await
}

/// A P-256 or Ed25519 key pair as an auth service holds it: it signs with the private
/// half; the relay is given the public half as PEM (SubjectPublicKeyInfo).
struct SigningKey {
    alg: jsonwebtoken::Algorithm,
    private: jsonwebtoken::EncodingKey,
    public_pem: String,
    /// The public key's bytes: a P-256 point, or 32 Ed25519 bytes.
    raw: Vec<u8>,
}

impl SigningKey {
    fn new(alg: jsonwebtoken::Algorithm) -> Result<Self> {
        use base64::Engine;
        use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let bad = |_| anyhow!("ring could not make a key");
        let (private, spki) = match alg {
            jsonwebtoken::Algorithm::ES256 => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(bad)?;
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .map_err(|_| anyhow!("ring could not read its key"))?;
                let prefix = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
                (
                    jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
                    (prefix, pair.public_key().as_ref().to_vec()),
                )
            }
            _ => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(bad)?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| anyhow!("ring could not read its key"))?;
                (
                    jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
                    ("302a300506032b6570032100", pair.public_key().as_ref().to_vec()),
                )
            }
        };
        let (prefix, raw) = spki;
        let mut der: Vec<u8> = (0..prefix.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&prefix[i..i + 2], 16))
            .collect::<std::result::Result<_, _>>()?;
        der.extend(&raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let public_pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        Ok(Self { alg, private, public_pem, raw })
    }

    fn sign(&self, claims: &Value) -> Result<String> {
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(self.alg), claims, &self.private)?)
    }

    fn sign_with_kid(&self, claims: &Value, kid: &str) -> Result<String> {
        let header =
            jsonwebtoken::Header { kid: Some(kid.to_owned()), ..jsonwebtoken::Header::new(self.alg) };
        Ok(jsonwebtoken::encode(&header, claims, &self.private)?)
    }

    /// The public key as a JWKS entry.
    fn jwk(&self, kid: &str) -> Value {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        match self.alg {
            jsonwebtoken::Algorithm::ES256 => json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64(&self.raw[1..33]), "y": b64(&self.raw[33..]),
            }),
            _ => json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&self.raw)}),
        }
    }
}

/// `[auth] public_keys`: an edge with no secret accepts what an auth service signs with
/// ES256 or EdDSA, and refuses an HS256 token whose HMAC key is a public key's PEM
/// (algorithm confusion) or anything signed by another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_elsewhere_are_checked_with_public_keys() -> Result {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let (ec, ed) = (SigningKey::new(jsonwebtoken::Algorithm::ES256)?, SigningKey::new(jsonwebtoken::Algorithm::EdDSA)?);
        let mut files = Vec::new();
        for (name, key) in [("ec.pem", &ec), ("ed.pem", &ed)] {
            std::fs::write(dir.path().join(name), &key.public_pem)?;
            files.push(dir.path().join(name));
        }
        let srv = start_server_with(|c| {
            c.auth.public_keys = files;
            c.auth.publish = AuthMode::Token;
            c.auth.play = AuthMode::Token;
            c.auth.issuer = Some("https://auth.example".into());
        })
        .await?;
        let claims = |role: &str| json!({"sub": "live/*", "role": role, "exp": unix_now() + 3600, "iss": "https://auth.example"});
        let publish = ec.sign(&claims("publish"))?;
        let play = ed.sign(&claims("play"))?;
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims("publish"),
            &jsonwebtoken::EncodingKey::from_secret(ec.public_pem.as_bytes()),
        )?;
        let stranger = SigningKey::new(jsonwebtoken::Algorithm::ES256)?.sign(&claims("publish"))?;
        let no_iss = ec.sign(&json!({"sub": "live/*", "role": "publish", "exp": unix_now() + 3600}))?;
        for (token, message) in [
            (&confused, "no key for this token"),
            (&stranger, "token signature does not verify"),
            (&no_iss, "token from another issuer"),
        ] {
            let refused = connect(&srv, &url(&srv, "rtmp", "live", &format!("cam?token={token}"))?, ClientMode::Publish).await;
            expect_refused(refused, ClientMode::Publish, message)?;
        }
        let _publisher =
            connect(&srv, &url(&srv, "rtmp+quic", "live", &format!("cam?token={publish}"))?, ClientMode::Publish).await?;
        srv.wait_live("cam").await?;
        let _player = connect(&srv, &url(&srv, "rtmp", "live", &format!("cam?token={play}"))?, ClientMode::Play).await?;
        ensure!(count(&srv, Reason::TokenInvalid) == 3, "counted {}", count(&srv, Reason::TokenInvalid));
        Ok(())
    })
    .await
}

/// `[auth] jwks_url` against a JWKS endpoint on loopback: fetched before the relay
/// listens; a key rotated in later is fetched when a token names its `kid`, and a made-up
/// `kid` soon after is refused without another fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_fetched_at_start_and_on_an_unknown_kid() -> Result {
    bounded(async {
        #[derive(Default)]
        struct Jwks {
            set: std::sync::Mutex<Value>,
            hits: std::sync::atomic::AtomicUsize,
        }
        async fn jwks(State(s): State<Arc<Jwks>>) -> Json<Value> {
            s.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Json(s.set.lock().map(|v| v.clone()).unwrap_or_default())
        }
        let hits = |s: &Jwks| s.hits.load(std::sync::atomic::Ordering::SeqCst);
        let (old, new) = (
            SigningKey::new(jsonwebtoken::Algorithm::EdDSA)?,
            SigningKey::new(jsonwebtoken::Algorithm::ES256)?,
        );
        let served = Arc::new(Jwks::default());
        *served.set.lock().map_err(|_| anyhow!("poisoned"))? = json!({"keys": [old.jwk("2024")]});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let jwks_url = format!("http://{}/.well-known/jwks.json", listener.local_addr()?);
        let app = Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(jwks))
            .with_state(served.clone());
        let http: JoinHandle<()> = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let srv = start_server_with(|c| {
            c.auth.jwks_url = Some(jwks_url);
            c.auth.publish = AuthMode::Token;
        })
        .await?;
        ensure!(hits(&served) == 1, "fetched {} times before listening", hits(&served));
        let claims = json!({"sub": "live/*", "role": "publish", "exp": unix_now() + 3600});
        let srv = &srv;
        let publish = |key: &str, token: String| {
            let url = url(srv, "rtmp", "live", &format!("{key}?token={token}"));
            async move { connect(srv, &url?, ClientMode::Publish).await.map_err(anyhow::Error::from) }
        };
        let _a = publish("a", old.sign_with_kid(&claims, "2024")?).await?;
        // The auth service rotates: the new key's first token brings a fetch.
        *served.set.lock().map_err(|_| anyhow!("poisoned"))? =
            json!({"keys": [old.jwk("2024"), new.jwk("2025")]});
        let _b = publish("b", new.sign_with_kid(&claims, "2025")?).await.context("the rotated key")?;
        ensure!(hits(&served) == 2, "fetched {} times", hits(&served));
        // A made-up kid right after: refused, no fetch.
        let made_up = SigningKey::new(jsonwebtoken::Algorithm::ES256)?.sign_with_kid(&claims, "2026")?;
        let refused =
            connect(srv, &url(srv, "rtmp", "live", &format!("c?token={made_up}"))?, ClientMode::Publish)
                .await;
        expect_refused(refused, ClientMode::Publish, "no key for this token")?;
        ensure!(hits(&served) == 2, "fetched {} times", hits(&served));
        http.abort();
        Ok(())
    })
    .await
}
