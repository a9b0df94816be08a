//! RoQR against an in-process relay on 127.0.0.1: interop with a minimal peer of another
//! kind (everything on flow 0 on one bidirectional stream, audio in QUIC DATAGRAMs, no
//! per-track streams, nothing of qrelay's session code), both ways; and hostile peers
//! (malformed frames, huge length claims, unknown-flow floods, datagram garbage, stream
//! floods) closed with the draft's error codes while a publisher → player pair over RoQR
//! keeps streaming untouched and memory stays bounded.

mod support_hostile;

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::{BufMut, Bytes, BytesMut};
use qrelay::client::RtmpClient;
use qrelay::media::frame::MediaKind;
use qrelay::rtmp::amf0::{self, Amf0Value};
use qrelay::rtmp::chunk::Message;
use qrelay::rtmp::message::{media_message, Command, RtmpMessage};
use qrelay::rtmp::roqr::{frame, ErrorCode};
use qrelay::rtmp::session::{ClientEvent, ClientMode};
use qrelay::transport::quic;
use qrelay::transport::tls::{Trust, ALPN_ROQR};
use qrelay::url::StreamUrl;
use support_hostile::*;
use tokio::time::{timeout, Instant};

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long the relay may take to close an offender once it sent the bad bytes.
const PROMPT: Duration = Duration::from_secs(2);
/// Longest the pair's player may wait between two frames sent 20 ms apart.
const MAX_GAP: Duration = Duration::from_millis(500);

/// One test at a time: RSS is per process, and the timing checks should not compete
/// with each other for two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bounded<F: std::future::Future<Output = Result>>(f: F) -> Result {
    let _serial = SERIAL.lock().await;
    timeout(TEST_LIMIT, f)
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_LIMIT:?}"))?
}

// ---------------------------------------------------------------------------------------
// A minimal RoQR peer: flow 0 on the first bidirectional stream, audio in datagrams
// ---------------------------------------------------------------------------------------

struct MiniPeer {
    _endpoint: quic::ClientEndpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    stream_id: u32,
}

impl MiniPeer {
    async fn connect(relay: &Relay) -> Result<MiniPeer> {
        let endpoint = quic::client_endpoint(
            relay.addr,
            &Trust::CaFile(relay.ca.clone()),
            &Default::default(),
            ALPN_ROQR,
        )?;
        let conn = timeout(Duration::from_secs(5), endpoint.connect(relay.addr, "localhost"))
            .await
            .context("QUIC connect timed out")??;
        let (send, recv) = conn.open_bi().await?;
        Ok(MiniPeer { _endpoint: endpoint, conn, send, recv, buf: BytesMut::new(), stream_id: 0 })
    }

    async fn send(&mut self, msg: &Message) -> Result {
        let mut out = BytesMut::new();
        frame::encode(0, msg, &mut out);
        self.send.write_all(&out).await?;
        Ok(())
    }

    async fn command(&mut self, name: &str, txn: f64, object: Amf0Value, args: Vec<Amf0Value>) -> Result {
        let cmd = Command { name: name.into(), transaction: txn, object, args };
        let sid = if matches!(name, "publish" | "play") { self.stream_id } else { 0 };
        self.send(&RtmpMessage::Command(cmd).to_message(sid, 0)).await
    }

    /// The next message on the bidirectional stream; `None` at its end.
    async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(f) = frame::decode(&mut self.buf, 16 << 20)? {
                ensure!(f.flow == 0, "a frame on flow {}", f.flow);
                return Ok(Some(f.message));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(c) => self.buf.extend_from_slice(&c.bytes),
                None => return Ok(None),
            }
        }
    }

    /// Reads until a command named `name`.
    async fn expect_command(&mut self, name: &str) -> Result<Command> {
        timeout(Duration::from_secs(5), async {
            loop {
                let m = self.next().await?.with_context(|| format!("stream ended before {name}"))?;
                if let RtmpMessage::Command(c) = RtmpMessage::parse(&m)? {
                    if c.name == name {
                        return Ok(c);
                    }
                    if c.name == "onStatus" && status_code(&c).ends_with("Failed") {
                        bail!("refused: {}", status_code(&c));
                    }
                }
            }
        })
        .await
        .with_context(|| format!("no {name} in time"))?
    }

    /// connect, answered.
    async fn hello(&mut self, relay: &Relay) -> Result {
        let tc_url = format!("rtmp+quic://{}/live", relay.addr);
        let obj =
            amf0::object([("app", Amf0Value::String("live".into())), ("tcUrl", Amf0Value::String(tc_url))]);
        self.command("connect", 1.0, obj, vec![]).await?;
        self.expect_command("_result").await?;
        Ok(())
    }

    /// connect, createStream, then publish or play `key`; with `wait`, returns at the
    /// Start status.
    async fn start(&mut self, relay: &Relay, key: &str, publish: bool) -> Result {
        self.request(relay, key, publish).await?;
        let want = if publish { "NetStream.Publish.Start" } else { "NetStream.Play.Start" };
        loop {
            let status = self.expect_command("onStatus").await?;
            if status_code(&status) == want {
                return Ok(());
            }
        }
    }

    /// connect, createStream, then publish or play `key`, without waiting for the answer.
    async fn request(&mut self, relay: &Relay, key: &str, publish: bool) -> Result {
        self.hello(relay).await?;
        self.command("createStream", 2.0, Amf0Value::Null, vec![]).await?;
        let created = self.expect_command("_result").await?;
        let sid = created.args.first().and_then(Amf0Value::as_number).context("no stream id")?;
        self.stream_id = sid as u32;
        let key = Amf0Value::String(key.into());
        if publish {
            self.command("publish", 3.0, Amf0Value::Null, vec![key, Amf0Value::String("live".into())])
                .await?;
        } else {
            self.command("play", 3.0, Amf0Value::Null, vec![key]).await?;
        }
        Ok(())
    }
}

fn status_code(c: &Command) -> String {
    c.args.first().and_then(|i| i.get("code")).and_then(Amf0Value::as_str).unwrap_or_default().to_owned()
}

/// Audio frame `seq`: AAC raw (0xaf 0x01) with `seq` after it.
fn audio(seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_slice(&[0xaf, 1]);
    b.put_u32(seq);
    b.put_slice(&[seq as u8; 8]);
    b.freeze()
}

const AAC_HEADER: &[u8] = &[0xaf, 0, 0x12, 0x10];

/// Splits what a player got into video (checked) and audio sequence numbers.
fn on_media(checker: &mut SeqChecker, audio_seen: &mut Vec<u32>, kind: MediaKind, payload: &[u8]) -> Result {
    match kind {
        MediaKind::Audio if payload == AAC_HEADER => {}
        MediaKind::Audio => {
            ensure!(payload.len() == 14 && payload[..2] == [0xaf, 1], "foreign audio payload");
            let seq = u32::from_be_bytes([payload[2], payload[3], payload[4], payload[5]]);
            ensure!(payload == &audio(seq)[..], "corrupt audio frame {seq}");
            audio_seen.push(seq);
        }
        MediaKind::Video => checker.on_media(kind, payload),
        MediaKind::Data => {}
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow0_peer_with_audio_in_datagrams_publishes_to_tcp_and_roqr_players() -> Result {
    bounded(async {
        let relay = start_relay(|c| c.handshake_timeout_ms = 2000).await?;
        let mut peer = MiniPeer::connect(&relay).await?;
        peer.start(&relay, "mini", true).await?;
        ensure!(peer.conn.max_datagram_size().is_some(), "the relay did not negotiate QUIC DATAGRAM");

        // Players over TCP and over RoQR (our own client, per-track mapping).
        let mut players = Vec::new();
        for scheme in ["rtmp", "rtmp+quic"] {
            let url = StreamUrl::parse(&relay.url(scheme, "mini"))?;
            let mut client = RtmpClient::connect(&url, ClientMode::Play, &relay.opts()).await?;
            players.push(tokio::spawn(async move {
                let (mut checker, mut audio_seen) = (SeqChecker::default(), Vec::new());
                loop {
                    match timeout(Duration::from_secs(10), client.read_event()).await?? {
                        Some(ClientEvent::Media { kind, payload, .. }) => {
                            on_media(&mut checker, &mut audio_seen, kind, &payload)?
                        }
                        Some(ClientEvent::StreamEnded) | None => return anyhow::Ok((checker, audio_seen)),
                        Some(_) => {}
                    }
                }
            }));
        }

        // Video and commands on the bidirectional stream; audio in datagrams.
        peer.send(&media_message(MediaKind::Video, 0, peer.stream_id, sequence_header())).await?;
        peer.send(&media_message(MediaKind::Audio, 0, peer.stream_id, Bytes::from_static(AAC_HEADER)))
            .await?;
        let (frames, audios) = (100u32, 150u32);
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (mut v, mut a) = (0u32, 0u32);
        while v < frames || a < audios {
            tick.tick().await;
            let ts = start.elapsed().as_millis() as u32;
            if a < audios {
                let mut d = BytesMut::new();
                frame::encode(0, &media_message(MediaKind::Audio, ts, peer.stream_id, audio(a)), &mut d);
                peer.conn.send_datagram(d.freeze())?;
                a += 1;
            }
            if v < frames && a % 3 != 0 {
                peer.send(&media_message(MediaKind::Video, ts, peer.stream_id, frame(v))).await?;
                v += 1;
            }
        }
        peer.command(
            "deleteStream",
            0.0,
            Amf0Value::Null,
            vec![Amf0Value::Number(f64::from(peer.stream_id))],
        )
        .await?;
        for (player, name) in players.into_iter().zip(["TCP", "RoQR"]) {
            let (checker, audio_seen) = player.await??;
            if let Some(e) = &checker.error {
                bail!("{name} player: {e}");
            }
            ensure!(
                checker.first == Some(0) && checker.received == u64::from(frames),
                "{name} player got {} of {frames} video frames",
                checker.received
            );
            // Datagrams are unreliable by design, but loopback loses none in practice;
            // what arrives must be whole and in order.
            ensure!(
                audio_seen.len() as u32 >= audios * 9 / 10,
                "{name} player got {} of {audios} audio frames",
                audio_seen.len()
            );
            ensure!(audio_seen.windows(2).all(|w| w[0] < w[1]), "{name} player got audio out of order");
            println!(
                "{name} player: {} video frames, {} of {audios} audio frames",
                checker.received,
                audio_seen.len()
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow0_peer_plays_everything_on_its_one_stream() -> Result {
    bounded(async {
        let relay = start_relay(|c| c.handshake_timeout_ms = 2000).await?;
        let mut peer = MiniPeer::connect(&relay).await?;
        // The play waits for a publisher: a qrelay RoQR publisher (per-track streams).
        peer.request(&relay, "mini2", false).await?;
        let url = StreamUrl::parse(&relay.url("rtmp+quic", "mini2"))?;
        let mut publisher = RtmpClient::connect(&url, ClientMode::Publish, &relay.opts()).await?;
        let frames = 120u32;
        publisher.send_media(MediaKind::Video, 0, sequence_header()).await?;
        publisher.send_media(MediaKind::Audio, 0, Bytes::from_static(AAC_HEADER)).await?;
        let send = tokio::spawn(async move {
            for i in 0..frames {
                let ts = i * 20;
                publisher.send_media(MediaKind::Audio, ts, audio(i)).await?;
                publisher.send_media(MediaKind::Video, ts, frame(i)).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            publisher.finish().await?;
            anyhow::Ok(())
        });
        let (mut checker, mut audio_seen) = (SeqChecker::default(), Vec::new());
        let mut last_ts = 0;
        loop {
            let m = match timeout(Duration::from_secs(10), peer.next()).await?? {
                Some(m) => m,
                None => break,
            };
            match RtmpMessage::parse(&m)? {
                RtmpMessage::Media { kind, payload } => {
                    ensure!(m.timestamp >= last_ts, "timestamps went back: {} after {last_ts}", m.timestamp);
                    last_ts = m.timestamp;
                    on_media(&mut checker, &mut audio_seen, kind, &payload)?;
                }
                RtmpMessage::Command(c) if status_code(&c) == "NetStream.Play.UnpublishNotify" => break,
                _ => {}
            }
        }
        send.await??;
        if let Some(e) = &checker.error {
            bail!("flow-0 player: {e}");
        }
        ensure!(
            checker.received == u64::from(frames),
            "flow-0 player got {} of {frames} video frames",
            checker.received
        );
        ensure!(audio_seen == (0..frames).collect::<Vec<_>>(), "flow-0 player got audio {:?}", audio_seen);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Hostile peers
// ---------------------------------------------------------------------------------------

/// Waits for the relay to close `conn`; returns the application error code.
async fn closed_with(conn: &quinn::Connection, limit: Duration) -> Result<u64> {
    match timeout(limit, conn.closed()).await.context("the relay did not close the offender")? {
        quinn::ConnectionError::ApplicationClosed(c) => Ok(c.error_code.into_inner()),
        other => bail!("closed otherwise: {other}"),
    }
}

/// Runs `case` beside a publisher → RoQR player pair; checks the pair got every frame
/// without a long gap and that RSS grew less than `rss_bound_mib`.
async fn beside_pair<F, Fut>(relay: &Relay, rss_bound_mib: u64, case: F) -> Result
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result>,
{
    let pair =
        Pair::start(&relay.url("rtmp+quic", "pair"), &relay.url("rtmp+quic", "pair"), &relay.opts()).await?;
    let base = rss_kib("self")?;
    let started = Instant::now();
    let outcome = case().await;
    let peak = rss_kib("self")?;
    tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    let report = pair.finish().await.context("the pair")?;
    outcome?;
    ensure!(report.max_gap < MAX_GAP, "the pair's player waited {:?}", report.max_gap);
    let growth = peak.saturating_sub(base);
    ensure!(growth < rss_bound_mib * 1024, "RSS grew by {:.1} MiB", mib(growth));
    println!(
        "pair: {} frames, max gap {:?}; RSS +{:.1} MiB",
        report.frames_received,
        report.max_gap,
        mib(growth)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_huge_claims_close_with_frame_encoding_error() -> Result {
    bounded(async {
        let relay = start_relay(|c| c.handshake_timeout_ms = 2000).await?;
        beside_pair(&relay, 64, || async {
            let cases: [(&str, Vec<u8>); 3] = [
                ("empty payload", vec![0, 0, 20, 0, 3, 0]),
                // A 1 GiB claim is refused before any of it arrives.
                ("1 GiB length claim", vec![0, 0, 9, 1, 6, 0xc0, 0, 0, 0, 0x40, 0, 0, 0]),
                ("timestamp beyond 32 bits", vec![0, 0xc0, 0, 0, 1, 0, 0, 0, 0, 9, 1, 6, 1, 0]),
            ];
            for (what, bytes) in cases {
                let mut peer = MiniPeer::connect(&relay).await?;
                peer.send.write_all(&bytes).await?;
                let code = closed_with(&peer.conn, PROMPT).await.with_context(|| what.to_owned())?;
                ensure!(code == ErrorCode::FrameEncoding as u64, "{what}: closed with {code:#x}");
            }
            // Many streams each holding most of a large frame: the connection's pending
            // limit (16 MiB) closes it, and memory stays bounded.
            let mut peer = MiniPeer::connect(&relay).await?;
            peer.hello(&relay).await?;
            let mut streams = Vec::new();
            for _ in 0..24 {
                // The relay closes the connection part way through: stop there.
                let Ok(mut s) = peer.conn.open_uni().await else { break };
                let mut head = BytesMut::new();
                head.extend_from_slice(&[0, 0, 9, 1, 6, 0x80, 0x7f, 0, 0]); // claims 8323072 bytes
                let _ = s.write_all(&head).await;
                let _ = s.write_all(&vec![7u8; 1 << 20]).await;
                streams.push(s);
            }
            let code = closed_with(&peer.conn, Duration::from_secs(5)).await?;
            ensure!(code == ErrorCode::FrameEncoding as u64, "pending flood closed with {code:#x}");
            let counted = relay.counters.get(qrelay::reason::Reason::FrameEncoding);
            ensure!(counted == 4, "{counted} closes counted as frame_encoding, expected 4");
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flows_are_bounded_and_datagram_garbage_is_dropped() -> Result {
    bounded(async {
        let relay = start_relay(|c| c.handshake_timeout_ms = 2000).await?;
        beside_pair(&relay, 64, || async {
            let mut peer = MiniPeer::connect(&relay).await?;
            peer.start(&relay, "flows", true).await?;
            // A stream of frames for a flow nobody bound: held up to a bound, then the
            // stream is stopped with UNKNOWN_FLOW_ID.
            let mut s = peer.conn.open_uni().await?;
            let stopped = s.stopped();
            let mut out = BytesMut::new();
            for i in 0..200u32 {
                frame::encode(7, &media_message(MediaKind::Audio, i, 1, audio(i)), &mut out);
            }
            let _ = s.write_all(&out).await;
            let code =
                timeout(PROMPT, stopped).await.context("the unknown-flow stream was not stopped")??;
            ensure!(
                code.map(|c| c.into_inner()) == Some(ErrorCode::UnknownFlowId as u64),
                "stopped with {code:?}"
            );
            // Garbage and unknown-flow datagrams are dropped; the connection lives on.
            let mut rng = Rng::new(7);
            for i in 0..2000u32 {
                let d = if i % 2 == 0 {
                    Bytes::from(rng.bytes_in(1, 200))
                } else {
                    let mut d = BytesMut::new();
                    frame::encode(9, &media_message(MediaKind::Audio, i, 1, audio(i)), &mut d);
                    d.freeze()
                };
                if peer.conn.send_datagram(d).is_err() {
                    tokio::task::yield_now().await;
                }
            }
            // The session still answers: a ping gets its pong.
            let ping = RtmpMessage::UserControl(qrelay::rtmp::message::UserControl::PingRequest(99))
                .to_message(0, 0);
            peer.send(&ping).await?;
            timeout(Duration::from_secs(3), async {
                loop {
                    let m = peer.next().await?.context("stream ended")?;
                    if RtmpMessage::parse(&m)?
                        == RtmpMessage::UserControl(qrelay::rtmp::message::UserControl::PingResponse(99))
                    {
                        return anyhow::Ok(());
                    }
                }
            })
            .await
            .context("no pong after the garbage")??;
            ensure!(peer.conn.close_reason().is_none(), "the relay closed the connection");
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_floods_wait_for_credit_and_silent_peers_are_closed() -> Result {
    bounded(async {
        let relay = start_relay(|c| c.handshake_timeout_ms = 2000).await?;
        beside_pair(&relay, 64, || async {
            // Opening far more streams than allowed: quinn holds the opener to the
            // limit; the relay's memory and the pair do not notice.
            let mut peer = MiniPeer::connect(&relay).await?;
            peer.hello(&relay).await?;
            let mut streams = Vec::new();
            let mut n = 0;
            let flood = async {
                loop {
                    let mut s = peer.conn.open_uni().await?;
                    let _ = s.write_all(&[0]).await; // a partial frame, never completed
                    streams.push(s);
                    n += 1;
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            };
            let _ = timeout(Duration::from_millis(1500), flood).await;
            ensure!(n <= 64, "{n} streams were let open at once");
            // A connection that never opens its command stream is closed at the handshake
            // timeout with EXPECTATION_UNMET.
            let endpoint = quic::client_endpoint(
                relay.addr,
                &Trust::CaFile(relay.ca.clone()),
                &Default::default(),
                ALPN_ROQR,
            )?;
            let silent = endpoint.connect(relay.addr, "localhost").await?;
            let code = closed_with(&silent, Duration::from_secs(5)).await?;
            ensure!(code == ErrorCode::ExpectationUnmet as u64, "silent peer closed with {code:#x}");
            ensure!(
                relay.counters.get(qrelay::reason::Reason::NoSession) == 1,
                "the silent peer was not counted"
            );
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_changes_address_keeps_publishing_without_a_gap() -> Result {
    bounded(async {
        let relay = start_relay(|c| c.handshake_timeout_ms = 2000).await?;
        let url = StreamUrl::parse(&relay.url("rtmp+quic", "move"))?;
        let mut publisher = RtmpClient::connect(&url, ClientMode::Publish, &relay.opts()).await?;
        let play = StreamUrl::parse(&relay.url("rtmp", "move"))?;
        let mut player = RtmpClient::connect(&play, ClientMode::Play, &relay.opts()).await?;
        let player = tokio::spawn(async move {
            let mut checker = SeqChecker::default();
            let end =
                play_frames(&mut player, &mut checker, &tokio_util::sync::CancellationToken::new()).await?;
            ensure!(end == PlayEnd::StreamEnded, "player ended with {end:?}");
            anyhow::Ok(checker)
        });
        publisher.send_media(MediaKind::Video, 0, sequence_header()).await?;
        let frames = 150u32;
        let mut moves = Vec::new();
        let mut tick = tokio::time::interval(FRAME_INTERVAL);
        for seq in 0..frames {
            tick.tick().await;
            if seq == 50 || seq == 100 {
                // The old socket goes away with the rebind, as on a network change.
                moves.push(publisher.rebind()?);
            }
            publisher.send_media(MediaKind::Video, seq * 20, frame(seq)).await?;
        }
        publisher.finish().await?;
        let checker = timeout(Duration::from_secs(10), player).await???;
        if let Some(e) = &checker.error {
            bail!("player: {e}");
        }
        ensure!(moves.len() == 2 && moves[0] != moves[1], "the publisher did not move: {moves:?}");
        ensure!(
            checker.first == Some(0) && checker.received == u64::from(frames),
            "the player got {} of {frames} frames across the move",
            checker.received
        );
        ensure!(checker.max_gap < MAX_GAP, "the player waited {:?} across the move", checker.max_gap);
        println!("moved to {moves:?}; {} frames, max gap {:?}", checker.received, checker.max_gap);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Redundant copies on a lossy path
// ---------------------------------------------------------------------------------------

/// What a [`LossyPath`] saw.
#[derive(Debug, Default)]
struct PathCounts {
    from_client: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
    /// Datagrams byte-for-byte equal to one of the last few: redundant copies on the wire.
    copies: std::sync::atomic::AtomicU64,
}

/// A UDP path from one QUIC client to the relay that drops `loss` of the client's
/// datagrams at random (seeded, independent losses, as the impairment lab's), and
/// passes everything the relay sends back.
struct LossyPath {
    addr: std::net::SocketAddr,
    counts: std::sync::Arc<PathCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyPath {
    async fn start(relay: std::net::SocketAddr, loss: f64, seed: u64) -> Result<LossyPath> {
        use std::sync::atomic::Ordering::Relaxed;
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(relay).await?;
        let addr = front.local_addr()?;
        let counts = std::sync::Arc::new(PathCounts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut rng = seed.max(1);
            let mut client = None;
            let mut recent = std::collections::VecDeque::new();
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        c.from_client.fetch_add(1, Relaxed);
                        let datagram = Bytes::copy_from_slice(&up[..n]);
                        if recent.contains(&datagram) {
                            c.copies.fetch_add(1, Relaxed);
                        }
                        recent.push_back(datagram);
                        if recent.len() > 16 {
                            recent.pop_front();
                        }
                        // xorshift64: the same losses on every run.
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if (rng % 1_000_000) as f64 / 1e6 < loss {
                            c.dropped.fetch_add(1, Relaxed);
                            continue;
                        }
                        let _ = back.send(&up[..n]).await;
                    }
                    r = back.recv(&mut down) => {
                        let Ok(n) = r else { return };
                        if let Some(to) = client {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        Ok(LossyPath { addr, counts, task })
    }
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes 4 s of 3.2 Mbit/s video over RoQR through a path losing 5 % of the
/// publisher's datagrams; returns the share of packets QUIC declared lost (each one a
/// retransmission, a frame late by more than a round trip), the copies the publisher
/// sent and the copies the path saw, and what the publisher's path estimate said.
async fn publish_through_loss(
    relay: &Relay,
    mode: qrelay::transport::redundancy::RedundancyMode,
) -> Result<(f64, u64, u64, qrelay::client::PathEstimate)> {
    use std::sync::atomic::Ordering::Relaxed;
    const LOSSY_PLAN: qrelay_bench::synth::VideoPlan =
        qrelay_bench::synth::VideoPlan { fps: 50, gop_frames: GOP, key_bytes: 8000, inter_bytes: 8000 };
    let path = LossyPath::start(relay.addr, 0.05, 7).await?;
    let mut opts = relay.opts();
    opts.quic.redundancy = mode;
    let url = StreamUrl::parse(&format!("rtmp+quic://127.0.0.1:{}/live/lossy-{mode}", path.addr.port()))?;
    let mut publisher = RtmpClient::connect(&url, ClientMode::Publish, &opts).await?;
    publisher.send_media(MediaKind::Video, 0, sequence_header()).await?;
    let mut tick = tokio::time::interval(FRAME_INTERVAL);
    for seq in 0..200u32 {
        tick.tick().await;
        publisher.send_media(MediaKind::Video, seq * 20, LOSSY_PLAN.frame(u64::from(seq), 0)).await?;
    }
    publisher.flush().await?;
    let (stats, redundancy) = publisher.quic_stats().context("a RoQR publisher has QUIC statistics")?;
    let estimate = publisher.path_estimate().context("a RoQR publisher has a path estimate")?;
    publisher.finish().await?;
    let lost = stats.path.lost_packets as f64 / stats.path.sent_packets.max(1) as f64;
    let dropped =
        path.counts.dropped.load(Relaxed) as f64 / path.counts.from_client.load(Relaxed).max(1) as f64;
    println!(
        "{mode}: path dropped {:.1} % of {} datagrams, QUIC lost {:.2} % of {} packets, {} copies sent, {} seen",
        dropped * 100.0,
        path.counts.from_client.load(Relaxed),
        lost * 100.0,
        stats.path.sent_packets,
        redundancy.extra_datagrams,
        path.counts.copies.load(Relaxed)
    );
    ensure!(dropped > 0.04, "the path dropped only {:.1} %", dropped * 100.0);
    Ok((lost, redundancy.extra_datagrams, path.counts.copies.load(Relaxed), estimate))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundant_copies_hide_random_loss_from_a_roqr_publisher() -> Result {
    use qrelay::transport::redundancy::RedundancyMode;
    bounded(async {
        let relay = start_relay(|_| {}).await?;
        // Without copies, QUIC sees the path's loss: every lost packet is retransmitted.
        let (lost, sent, seen, estimate) = publish_through_loss(&relay, RedundancyMode::Off).await?;
        ensure!(sent == 0 && seen == 0, "copies with redundancy off: {sent} sent, {seen} seen");
        ensure!(lost > 0.03, "without copies QUIC lost only {:.2} %", lost * 100.0);
        // The encoder can see it: the estimate counts the losses, no copies.
        ensure!(
            !estimate.redundant
                && estimate.lost_packets * 100 > estimate.sent_packets * 3
                && estimate.allowed_bps > 0
                && !estimate.rtt.is_zero(),
            "{estimate:?}"
        );
        // With them (the default), the publisher measures the loss within half a second
        // and sends each datagram three times: what QUIC still loses is the first
        // moments' loss, a fraction of the path's.
        let (lost, sent, seen, estimate) = publish_through_loss(&relay, RedundancyMode::Auto).await?;
        ensure!(sent > 500 && seen > 500, "too few copies: {sent} sent, {seen} seen on the path");
        ensure!(lost < 0.02, "with copies QUIC still lost {:.2} % of its packets", lost * 100.0);
        ensure!(estimate.redundant, "the estimate does not say copies are on: {estimate:?}");
        Ok(())
    })
    .await
}
