//! End-to-end: publishers that go away and come back while their players stay connected
//! (`publisher_grace_ms`), and silent publishers replaced by a new one
//! (`publisher_takeover_ms`). Real relay on 127.0.0.1, real ffmpeg publishers and players,
//! and the project's client checking every message a player gets.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use common::*;
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::media::flv::FlvTag;
use qrelay::media::frame::{inspect_audio, inspect_video, MediaKind};
use qrelay::reason::Reason;
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Generous bound for a 4 s file published in real time.
const PUBLISH_LIMIT: Duration = Duration::from_secs(20);
/// How long a player may take to notice the end of its stream.
const END_LIMIT: Duration = Duration::from_secs(5);
/// The relay's step between the last frame before a break and the first after it.
const RESUME_STEP_MS: u32 = 33;

fn client_options(srv: &TestServer) -> ClientOptions {
    ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() }
}

/// The second publisher's media: 4 s like the common test file but at another size, so
/// its sequence headers differ from the first publisher's.
fn other_size() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| generate("resume-240x180.flv", "240x180", 880, 30))
}

/// One message a player got.
#[derive(Debug, Clone)]
struct Msg {
    kind: MediaKind,
    ts: u32,
    payload: Bytes,
}

impl Msg {
    fn is_config(&self) -> bool {
        match self.kind {
            MediaKind::Video => inspect_video(&self.payload).sequence_header,
            MediaKind::Audio => inspect_audio(&self.payload).sequence_header,
            MediaKind::Data => true,
        }
    }
    fn is_keyframe(&self) -> bool {
        self.kind == MediaKind::Video && inspect_video(&self.payload).keyframe && !self.is_config()
    }
}

/// What a player got until its stream ended, and when it ended.
struct Played {
    msgs: Vec<Msg>,
    ended_at: Instant,
}

/// A player that records every message until the end of its stream (which must come:
/// `StreamEOF`/`UnpublishNotify`, not a dropped connection).
fn spawn_recorder(url: String, opts: ClientOptions) -> JoinHandle<anyhow::Result<Played>> {
    tokio::spawn(async move {
        let url = StreamUrl::parse(&url)?;
        let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
        let mut msgs = Vec::new();
        loop {
            match client.read_event().await? {
                Some(ClientEvent::Media { kind, timestamp, payload }) => {
                    msgs.push(Msg { kind, ts: timestamp, payload })
                }
                Some(ClientEvent::StreamEnded) => return Ok(Played { msgs, ended_at: Instant::now() }),
                Some(_) => {}
                None => anyhow::bail!("the connection closed without the end of stream"),
            }
        }
    })
}

/// Timestamps never go backwards within a track.
fn assert_monotonic(msgs: &[Msg], who: &str) -> Result {
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let ts: Vec<u32> = msgs.iter().filter(|m| m.kind == kind).map(|m| m.ts).collect();
        if let Some(w) = ts.windows(2).find(|w| w[1] < w[0]) {
            anyhow::bail!("{who}: {kind:?} timestamp went back from {} to {}", w[0], w[1]);
        }
    }
    Ok(())
}

/// Checks a player that watched publisher 1 (whatever it sent) and then, with no end of
/// stream in between, publisher 2 (`second`, an FLV file published whole): the second
/// publisher's configuration comes first, then its first keyframe exactly
/// [`RESUME_STEP_MS`] after the last frame before the break, then every frame of it,
/// byte for byte, with its timestamps shifted by one offset. Returns the offset.
fn assert_resumed(played: &[Msg], second: &[FlvTag], who: &str, dedupes: bool) -> anyhow::Result<u32> {
    assert_monotonic(played, who)?;
    let is_header = |t: &&FlvTag| match t.kind {
        MediaKind::Video => inspect_video(&t.payload).sequence_header,
        MediaKind::Audio => inspect_audio(&t.payload).sequence_header,
        MediaKind::Data => false,
    };
    let headers: Vec<&FlvTag> = second.iter().filter(is_header).collect();
    let media: Vec<&FlvTag> = second.iter().filter(|t| t.kind != MediaKind::Data && !is_header(t)).collect();
    let first_key = media.iter().find(|t| t.kind == MediaKind::Video).context("no video in the file")?;
    let split = played
        .iter()
        .position(|m| m.kind == MediaKind::Video && m.payload == first_key.payload)
        .with_context(|| format!("{who}: the second publisher's first keyframe never arrived"))?;
    let resumed_at = played[split].ts;
    let before = &played[..split];
    ensure!(before.iter().filter(|m| m.is_keyframe()).count() >= 1, "{who}: nothing of the first publisher");
    let last_before = before
        .iter()
        .filter(|m| !m.is_config())
        .map(|m| m.ts)
        .max()
        .with_context(|| format!("{who}: no media before the resume"))?;
    ensure!(
        resumed_at == last_before + RESUME_STEP_MS,
        "{who}: resumed at {resumed_at} ms, the last frame before the break was at {last_before} ms"
    );
    // The new configuration went out first, stamped at the resume: each header before
    // anything else of its track, the metadata before the keyframe. A RoQR receiver drops
    // a header identical to the one it holds (`dedupes`): there, the header in force when
    // the track resumes must be the new one.
    for header in &headers {
        let first = played.iter().position(|m| m.kind == header.kind && m.ts >= resumed_at);
        let first = first.with_context(|| format!("{who}: no {:?} after the resume", header.kind))?;
        let sent = played[first].payload == header.payload && played[first].ts == resumed_at;
        let in_force = played[..first].iter().rfind(|m| m.kind == header.kind && m.is_config());
        let held = dedupes && in_force.is_some_and(|m| m.payload == header.payload);
        ensure!(
            sent || held,
            "{who}: the second publisher's {:?} header did not come first, at {resumed_at} ms",
            header.kind
        );
    }
    ensure!(
        before.iter().any(|m| m.kind == MediaKind::Data && m.ts == resumed_at),
        "{who}: no metadata at the resume"
    );
    // Then every frame of the second publisher, from its first keyframe, shifted by one
    // offset, per track.
    let offset = resumed_at.wrapping_sub(first_key.timestamp);
    for kind in [MediaKind::Video, MediaKind::Audio] {
        let want: Vec<&&FlvTag> =
            media.iter().filter(|t| t.kind == kind && t.timestamp >= first_key.timestamp).collect();
        let got: Vec<&Msg> = played[split..].iter().filter(|m| m.kind == kind && !m.is_config()).collect();
        ensure!(
            want.len() == got.len(),
            "{who}: {kind:?}: {} frames of the second publisher, {} published",
            got.len(),
            want.len()
        );
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            ensure!(
                w.payload == g.payload && w.timestamp.wrapping_add(offset) == g.ts,
                "{who}: {kind:?} frame {i} after the resume: published @{} ms, played @{} ms (offset {offset})",
                w.timestamp,
                g.ts
            );
        }
    }
    Ok(offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_publisher_is_resumed_by_a_new_one_and_players_stay() -> Result {
    bounded(async {
        // Long enough that a loaded machine still starts the second ffmpeg within it; the
        // resume ends it early.
        let srv = start_server_with(|c| c.publisher_grace_ms = 15_000).await?;
        let second = other_size();
        let opts = client_options(&srv);
        let tcp = spawn_recorder(srv.url("rtmp", "re"), opts.clone());
        let roqr = spawn_recorder(srv.url("rtmp+quic", "re"), opts.clone());
        let ff_out = srv.path("ffmpeg.flv");
        let mut ff_player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "re"), &ff_out))?;
        srv.wait_subscribers("re", 3).await?;

        let mut first = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "re"), true))?;
        srv.wait_stats("re", "1 s of media", |s| s.frames > 80).await?;
        first.start_kill()?; // SIGKILL: no unpublish, the socket just closes
        first.wait().await?;
        let stats = srv.wait_stats("re", "the grace", |s| s.grace).await?;
        ensure!(!stats.live && stats.subscribers == 3, "{stats:?}");
        ensure!(ff_player.try_wait()?.is_none(), "the ffmpeg player left with the publisher");
        ensure!(!tcp.is_finished() && !roqr.is_finished(), "a player left with the publisher");

        let publisher = spawn(&mut ffmpeg_publisher(second, &srv.url("rtmp", "re"), false))?;
        expect_success(&finish(publisher, "second publisher", PUBLISH_LIMIT).await?, "second publisher")?;
        let tags = read_tags(second).await?;
        for (player, who, dedupes) in [(tcp, "tcp player", false), (roqr, "roqr player", true)] {
            let played = tokio::time::timeout(END_LIMIT, player)
                .await
                .with_context(|| format!("{who} did not end"))???;
            assert_resumed(&played.msgs, &tags, who, dedupes)?;
        }
        expect_success(&finish(ff_player, "ffmpeg player", END_LIMIT).await?, "ffmpeg player")?;

        // ffmpeg played across the break in one session: its packets never go back, leave
        // no hole, and after the break are the second file's, packet for packet.
        let played = probe_packets(&ff_out).await?;
        let video: Vec<&Packet> = played.iter().filter(|p| p.stream == "video").collect();
        let gap = video.windows(2).map(|w| w[1].dts - w[0].dts).max().unwrap_or(0);
        ensure!(video.windows(2).all(|w| w[1].dts >= w[0].dts), "ffmpeg's video went back");
        ensure!(gap < 250, "ffmpeg's video has a {gap} ms hole");
        let input = probe_packets(second).await?;
        let first_key = input.iter().find(|p| p.stream == "video" && p.key).context("no keyframe")?;
        let split = played
            .iter()
            .position(|p| p.data_hash == first_key.data_hash)
            .context("ffmpeg never got the second publisher's first keyframe")?;
        ensure!(split > 60, "ffmpeg got only {split} packets of the first publisher");
        let compared = compare_packets(&input, &played[split..], true)?;
        ensure!(compared > 200, "only {compared} packets compared");

        let events = srv.hub.publisher_events();
        ensure!((events.graces, events.resumed, events.expired) == (1, 1, 0), "{events:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_get_the_end_of_stream_when_the_grace_runs_out() -> Result {
    bounded(async {
        let grace = Duration::from_millis(1000);
        let srv = start_server_with(|c| c.publisher_grace_ms = grace.as_millis() as u64).await?;
        let recorder = spawn_recorder(srv.url("rtmp", "gone"), client_options(&srv));
        let out = srv.path("gone.flv");
        let ff_player = spawn(&mut ffmpeg_player(&srv.url("rtmp", "gone"), &out))?;
        srv.wait_subscribers("gone", 2).await?;

        let mut publisher = spawn(&mut ffmpeg_publisher(&media().flv, &srv.url("rtmp", "gone"), true))?;
        srv.wait_stats("gone", "1 s of media", |s| s.frames > 80).await?;
        // Taken before the kill: the relay sees the connection close as the process
        // dies, possibly before this task has reaped it.
        let killed = Instant::now();
        publisher.start_kill()?;
        publisher.wait().await?;

        let (ff, played) = tokio::join!(finish(ff_player, "ffmpeg player", grace + END_LIMIT), async {
            tokio::time::timeout(grace + END_LIMIT, recorder).await
        });
        let played = played.context("the player did not end")???;
        expect_success(&ff?, "ffmpeg player")?;
        let kept = played.ended_at.duration_since(killed);
        ensure!(kept >= grace, "the player was ended {kept:?} after the publisher died, within the grace");
        assert_monotonic(&played.msgs, "player")?;
        ensure!(played.msgs.iter().filter(|m| m.is_keyframe()).count() >= 1, "the player got no picture");
        let n = probe_packets(&out).await?.iter().filter(|p| p.stream == "video").count();
        ensure!(n > 20, "ffmpeg wrote only {n} video packets");

        let events = srv.hub.publisher_events();
        ensure!((events.graces, events.resumed, events.expired) == (1, 0, 1), "{events:?}");
        srv.wait_released("gone").await
    })
    .await
}

/// Synthetic video from encoder `enc`: its sequence header, and frame `i` (a keyframe
/// every 10), each payload unique.
fn synth_header(enc: u8) -> Bytes {
    Bytes::from(vec![0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1e, enc])
}

fn synth_frame(enc: u8, i: u32) -> Bytes {
    let key = if i.is_multiple_of(10) { 0x17 } else { 0x27 };
    Bytes::from(vec![key, 1, 0, 0, 0, enc, (i >> 8) as u8, i as u8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_publisher_is_replaced_after_a_short_silence() -> Result {
    bounded(async {
        let takeover = Duration::from_millis(500);
        let srv = start_server_with(|c| c.publisher_takeover_ms = takeover.as_millis() as u64).await?;
        let opts = client_options(&srv);
        let url = StreamUrl::parse(&srv.url("rtmp", "frozen"))?;
        let recorder = spawn_recorder(srv.url("rtmp", "frozen"), opts.clone());
        srv.wait_subscribers("frozen", 1).await?;

        // The frozen publisher: sends a little, then nothing, and keeps its connection.
        let mut frozen = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
        frozen.send_media(MediaKind::Video, 0, synth_header(1)).await?;
        for i in 0..15 {
            frozen.send_media(MediaKind::Video, i * 33, synth_frame(1, i)).await?;
        }
        srv.wait_stats("frozen", "its 16 frames", |s| s.frames == 16).await?;
        // Silence is time passing: the relay had the last frame before this instant.
        tokio::time::sleep_until(Instant::now() + takeover).await;

        let mut new = RtmpClient::connect(&url, ClientMode::Publish, &opts)
            .await
            .context("the new publisher was refused")?;
        // The frozen one's session is closed by the relay.
        let closed = tokio::time::timeout(END_LIMIT, async {
            loop {
                match frozen.read_event().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await;
        ensure!(closed.is_ok(), "the replaced publisher's connection stayed open");

        new.send_media(MediaKind::Video, 0, synth_header(2)).await?;
        for i in 0..20 {
            new.send_media(MediaKind::Video, i * 33, synth_frame(2, i)).await?;
        }
        new.finish().await?;
        let played =
            tokio::time::timeout(END_LIMIT, recorder).await.context("the player did not end")???;

        let got: Vec<(u32, Bytes)> = played.msgs.iter().map(|m| (m.ts, m.payload.clone())).collect();
        let mut want = vec![(0, synth_header(1))];
        want.extend((0..15).map(|i| (i * 33, synth_frame(1, i))));
        let resumed = 14 * 33 + RESUME_STEP_MS;
        want.push((resumed, synth_header(2)));
        want.extend((0..20).map(|i| (resumed + i * 33, synth_frame(2, i))));
        ensure!(
            got == want,
            "the player got {:?}",
            got.iter().map(|(ts, p)| (*ts, p.len())).collect::<Vec<_>>()
        );

        // The replaced session counts itself as it ends, in its own task.
        wait_until("the replacement to be counted", Duration::from_secs(10), || {
            (srv.counters.get(Reason::PublisherReplaced) == 1).then_some(())
        })
        .await?;
        let events = srv.hub.publisher_events();
        ensure!((events.taken_over, events.graces) == (1, 0), "{events:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_closed_for_silence_leaves_its_players_a_grace() -> Result {
    bounded(async {
        // No takeover: the idle timeout is what ends the silent publisher.
        let srv = start_server_with(|c| {
            c.idle_timeout_ms = 500;
            c.publisher_takeover_ms = 0;
        })
        .await?;
        let opts = client_options(&srv);
        let url = StreamUrl::parse(&srv.url("rtmp", "idle"))?;
        let recorder = spawn_recorder(srv.url("rtmp", "idle"), opts.clone());
        srv.wait_subscribers("idle", 1).await?;

        let mut silent = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
        silent.send_media(MediaKind::Video, 0, synth_header(1)).await?;
        for i in 0..5 {
            silent.send_media(MediaKind::Video, i * 33, synth_frame(1, i)).await?;
        }
        let stats = srv.wait_stats("idle", "the grace after the idle timeout", |s| s.grace).await?;
        ensure!(stats.subscribers == 1 && !recorder.is_finished(), "the player left: {stats:?}");
        ensure!(srv.counters.get(Reason::PeerSilent) == 1, "the idle close was not counted");

        let mut new = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
        new.send_media(MediaKind::Video, 0, synth_header(2)).await?;
        new.send_media(MediaKind::Video, 0, synth_frame(2, 0)).await?;
        new.finish().await?;
        let played =
            tokio::time::timeout(END_LIMIT, recorder).await.context("the player did not end")???;
        let got: Vec<(u32, Bytes)> = played.msgs.iter().map(|m| (m.ts, m.payload.clone())).collect();
        let resumed = 4 * 33 + RESUME_STEP_MS;
        ensure!(
            got.ends_with(&[(resumed, synth_header(2)), (resumed, synth_frame(2, 0))]) && got.len() == 8,
            "the player got {:?}",
            got.iter().map(|(ts, p)| (*ts, p.len())).collect::<Vec<_>>()
        );
        drop(silent);
        let events = srv.hub.publisher_events();
        ensure!((events.graces, events.resumed) == (1, 1), "{events:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_with_the_same_token_replaces_its_predecessor_at_once() -> Result {
    use qrelay::auth::token::{mint, Secret};
    use qrelay::auth::{AuthMode, TokenRole};
    bounded(async {
        const SECRET: &str = "reconnect-secret-0123456789abcdef";
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("secret");
        std::fs::write(&file, SECRET)?;
        let srv = start_server_with(|c| {
            c.auth.secret_file = Some(file);
            c.auth.publish = AuthMode::Token;
            // No silence makes a takeover here: only the credentials do.
            c.publisher_takeover_ms = 60_000;
        })
        .await?;
        let secret = Secret::new(SECRET.as_bytes(), "test")?;
        let hour = Duration::from_secs(3600);
        let own = mint(&secret, "live/tok", TokenRole::Publish, hour)?;
        let other = mint(&secret, "live/*", TokenRole::Publish, hour)?;
        let opts = client_options(&srv);
        let with = |token: &str| StreamUrl::parse(&srv.url("rtmp", &format!("tok?token={token}")));
        let recorder = spawn_recorder(srv.url("rtmp", "tok"), opts.clone());
        srv.wait_subscribers("tok", 1).await?;

        let mut first = RtmpClient::connect(&with(&own)?, ClientMode::Publish, &opts).await?;
        first.send_media(MediaKind::Video, 0, synth_header(1)).await?;
        for i in 0..5 {
            first.send_media(MediaKind::Video, i * 33, synth_frame(1, i)).await?;
        }
        srv.wait_stats("tok", "its 6 frames", |s| s.frames == 6).await?;

        // Another valid token does not take the stream from an active publisher...
        let refused = RtmpClient::connect(&with(&other)?, ClientMode::Publish, &opts).await;
        ensure!(refused.is_err(), "a publisher with another token took the stream over");
        // ...the same token does, at once: an encoder reconnecting before its old
        // connection is known to be dead.
        let mut second = RtmpClient::connect(&with(&own)?, ClientMode::Publish, &opts)
            .await
            .context("the same token was refused")?;
        let closed =
            tokio::time::timeout(END_LIMIT, async { while let Ok(Some(_)) = first.read_event().await {} })
                .await;
        ensure!(closed.is_ok(), "the replaced publisher's connection stayed open");
        second.send_media(MediaKind::Video, 0, synth_header(2)).await?;
        second.send_media(MediaKind::Video, 0, synth_frame(2, 0)).await?;
        second.finish().await?;

        let played =
            tokio::time::timeout(END_LIMIT, recorder).await.context("the player did not end")???;
        let got: Vec<(u32, Bytes)> = played.msgs.iter().map(|m| (m.ts, m.payload.clone())).collect();
        let resumed = 4 * 33 + RESUME_STEP_MS;
        ensure!(
            got.len() == 8 && got.ends_with(&[(resumed, synth_header(2)), (resumed, synth_frame(2, 0))]),
            "the player got {:?}",
            got.iter().map(|(ts, p)| (*ts, p.len())).collect::<Vec<_>>()
        );
        // The replaced session counts itself as it ends, in its own task.
        wait_until("the replacement to be counted", Duration::from_secs(10), || {
            (srv.counters.get(Reason::PublisherReplaced) == 1).then_some(())
        })
        .await?;
        ensure!(srv.hub.publisher_events().taken_over == 1);
        Ok(())
    })
    .await
}
