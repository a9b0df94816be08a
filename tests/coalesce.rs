//! Write coalescing over real sockets (`write_coalesce_ms`): many TCP players of one
//! stream get every frame, audio and video, byte for byte and in publish order, while the
//! relay writes each of them fewer times than it sent frames; with 0 every frame is a
//! write of its own. Counted by the relay's own statistics, never timed.

mod common;

use anyhow::{ensure, Context};
use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use qrelay::client::{ClientOptions, RtmpClient};
use qrelay::hub::StreamStats;
use qrelay::media::frame::MediaKind;
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use qrelay_bench::synth::{self, VideoPlan};

const PLAYERS: usize = 12;
/// Video frames published; two audio frames follow each.
const FRAMES: usize = 240;
/// Small pictures, so that several frames fit under the size that is written at once.
const PLAN: VideoPlan = VideoPlan { fps: 30, gop_frames: 30, key_bytes: 3000, inter_bytes: 900 };

type Sent = Vec<(MediaKind, u32, Bytes)>;

/// Audio frame `n`: an AAC raw frame whose bytes carry `n`, so order is checked too.
fn audio(n: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(96);
    b.put_slice(&[0xAF, 0x01]);
    b.put_u32(n as u32);
    b.resize(96, 0x5A);
    b.freeze()
}

/// What the publisher sends, in order.
fn publish_order() -> Sent {
    let mut sent = vec![
        (MediaKind::Video, 0, synth::video_sequence_header()),
        (MediaKind::Audio, 0, synth::audio_sequence_header()),
    ];
    for i in 0..FRAMES {
        let ts = PLAN.timestamp_ms(i as u64);
        sent.push((MediaKind::Video, ts, PLAN.frame(i as u64, 0)));
        sent.push((MediaKind::Audio, ts + 10, audio(2 * i)));
        sent.push((MediaKind::Audio, ts + 21, audio(2 * i + 1)));
    }
    sent
}

/// Publishes [`publish_order`] as fast as the relay takes it to `PLAYERS` players that
/// joined first; returns the stream's statistics once every frame went through the hub.
async fn fan_out(window_ms: u64) -> anyhow::Result<StreamStats> {
    let srv = start_server_with(|c| c.write_coalesce_ms = window_ms).await?;
    let url = StreamUrl::parse(&srv.url("rtmp", "co"))?;
    let opts = ClientOptions { trust: Trust::CaFile(srv.ca.clone()), ..ClientOptions::default() };
    let sent = publish_order();
    let players: Vec<_> = (0..PLAYERS)
        .map(|_| {
            let (url, opts) = (url.clone(), opts.clone());
            tokio::spawn(async move {
                let mut client = RtmpClient::connect(&url, ClientMode::Play, &opts).await?;
                let mut got = Sent::new();
                loop {
                    match client.read_event().await? {
                        Some(ClientEvent::Media { kind, timestamp, payload }) => {
                            got.push((kind, timestamp, payload))
                        }
                        Some(ClientEvent::StreamEnded) | None => return anyhow::Ok(got),
                        Some(_) => {}
                    }
                }
            })
        })
        .collect();
    srv.wait_subscribers("co", PLAYERS).await?;

    let mut publisher = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
    for (kind, ts, payload) in &sent {
        publisher.send_media(*kind, *ts, payload.clone()).await?;
    }
    publisher.flush().await?;
    let total = sent.len() as u64;
    let stats = srv.wait_stats("co", "every frame through the hub", |s| s.frames == total).await?;
    publisher.finish().await.context("publisher")?;
    for (i, player) in players.into_iter().enumerate() {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), player)
            .await
            .with_context(|| format!("player {i} did not end"))???;
        ensure!(got.len() == sent.len(), "player {i} got {} of {} frames", got.len(), sent.len());
        if let Some(n) = got.iter().zip(&sent).position(|(g, s)| g != s) {
            anyhow::bail!("player {i}: frame {n} is not the one sent ({:?} @{} ms)", got[n].0, got[n].1);
        }
    }
    srv.wait_released("co").await?;
    Ok(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_writes_deliver_every_frame_in_order_with_fewer_writes() -> Result {
    bounded(async {
        let stats = fan_out(40).await?;
        ensure!(stats.direct_writes > 0, "no frame was written directly: {stats:?}");
        // Frames arrive faster than the window: held ones go out together, one write for
        // several frames per player.
        ensure!(
            stats.direct_sends < stats.direct_writes,
            "{} writes for {} frames written: nothing coalesced",
            stats.direct_sends,
            stats.direct_writes
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_writes_each_frame_on_its_own() -> Result {
    bounded(async {
        let stats = fan_out(0).await?;
        ensure!(stats.direct_writes > 0, "no frame was written directly: {stats:?}");
        // At least one write per frame (a frame the socket took only part of makes two).
        ensure!(
            stats.direct_sends >= stats.direct_writes,
            "{} writes for {} frames written with coalescing off",
            stats.direct_sends,
            stats.direct_writes
        );
        Ok(())
    })
    .await
}
