//! Hostile peers: quic.

use super::*;

async fn quic_connect(env: &Env) -> Result<(quic::ClientEndpoint, quinn::Connection)> {
    let endpoint =
        quic::client_endpoint(env.addr, &Trust::CaFile(env.ca.clone()), &Default::default(), ALPN_RTMP)?;
    let conn = timeout(Duration::from_secs(5), endpoint.connect(env.addr, "localhost"))
        .await
        .context("QUIC connect timed out")??;
    Ok((endpoint, conn))
}

/// Sends C0+C1 on a QUIC stream and reads S0+S1+S2: the relay serves this stream.
async fn quic_served(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) -> Result {
    send.write_all(&c0c1()).await?;
    let mut s = vec![0u8; 1 + 1536 + 1536];
    timeout(Duration::from_secs(3), recv.read_exact(&mut s)).await.context("no S0S1S2")??;
    ensure!(s[0] == 3, "S0 is {}", s[0]);
    Ok(())
}

/// Reads a QUIC stream until the server ends it (finish, reset or connection loss).
async fn quic_stream_closed(
    mut recv: quinn::RecvStream,
    opened: Instant,
    limit: Duration,
) -> Result<Duration> {
    let mut buf = [0u8; 4096];
    timeout(limit, async {
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return opened.elapsed(),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("QUIC stream still open after {:?}", opened.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_garbage_datagrams_are_ignored() -> Result {
    run_case(
        "QUIC garbage datagrams",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let mut rng = Rng::new(42);
            let mut sent = 0;
            for burst in 0..40 {
                for i in 0..100 {
                    let datagram = match (burst * 100 + i) % 4 {
                        // Short random datagrams.
                        0 => rng.bytes_in(1, 64),
                        // Long-header QUIC v1 Initial lookalikes, padded to 1200 bytes.
                        1 => {
                            let mut d = rng.bytes(1200);
                            d[0] = 0xC0 | (d[0] & 0x0F);
                            d[1..5].copy_from_slice(&1u32.to_be_bytes());
                            d[5] = 8;
                            d
                        }
                        // Long headers with an unknown version (may get version negotiation).
                        2 => {
                            let mut d = rng.bytes(1200);
                            d[0] |= 0x80;
                            d
                        }
                        // Short-header lookalikes for connections that do not exist.
                        _ => {
                            let mut d = rng.bytes_in(20, 1400);
                            d[0] = 0x40 | (d[0] & 0x3F);
                            d
                        }
                    };
                    socket.send_to(&datagram, env.addr)?;
                    sent += 1;
                }
                // Paced so the flood tests the parser rather than the socket buffer.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!("  {sent} datagrams sent");
            // A new QUIC player still connects and plays.
            let url = StreamUrl::parse(&env.url("rtmp+quic", "pair"))?;
            let mut player = RtmpClient::connect(&url, ClientMode::Play, &env.opts()).await?;
            timeout(Duration::from_secs(5), async {
                loop {
                    match player.read_event().await? {
                        Some(ClientEvent::Media { .. }) => return Ok(()),
                        Some(_) => {}
                        None => bail!("closed"),
                    }
                }
            })
            .await
            .context("no media for a new QUIC player")??;
            player.finish().await?;
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_streams_over_the_limit_wait_for_a_free_one() -> Result {
    let tweak = |c: &mut Config| {
        c.max_quic_streams = 4;
        c.handshake_timeout_ms = 5000;
    };
    run_case("QUIC stream limit", tweak, PlayerOver::Quic, RSS_BOUND_MIB, |env| async move {
        let (_endpoint, conn) = quic_connect(&env).await?;
        let mut streams = Vec::new();
        for i in 0..4 {
            let (mut send, mut recv) = timeout(Duration::from_secs(2), conn.open_bi()).await??;
            quic_served(&mut send, &mut recv).await.with_context(|| format!("stream {i}"))?;
            streams.push((send, recv));
        }
        // The fifth is not even opened while four are in use.
        ensure!(
            timeout(Duration::from_millis(500), conn.open_bi()).await.is_err(),
            "a fifth stream opened beside four live ones"
        );
        // End one session; its stream closes and the fifth gets its place.
        let (mut send, recv) = streams.remove(0);
        let ended = Instant::now();
        send.finish()?;
        quic_stream_closed(recv, ended, Duration::from_secs(2)).await?;
        let (mut send5, mut recv5) =
            timeout(Duration::from_secs(2), conn.open_bi()).await.context("fifth stream not opened")??;
        quic_served(&mut send5, &mut recv5).await.context("fifth stream")?;
        let waited = ended.elapsed();
        println!("  fifth stream served {waited:.2?} after one of four closed");
        ensure!(waited < env.handshake_timeout() / 2, "the fifth stream waited {waited:?}");
        conn.close(0u32.into(), b"done");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_quic_streams_are_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "silent QUIC streams",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let (_endpoint, conn) = quic_connect(&env).await?;
            let mut streams = Vec::new();
            for _ in 0..4 {
                streams.push(conn.open_bi().await?);
            }
            // Streams 0 and 1 never send a byte (writing on 2 opens them at the server), 2 sends
            // one byte, 3 completes the RTMP handshake and then goes silent.
            let opened = Instant::now();
            streams[2].0.write_all(&[3]).await?;
            {
                let (send, recv) = &mut streams[3];
                quic_served(send, recv).await?;
            }
            let limit = env.handshake_timeout() + CLOSE_MARGIN;
            let mut sends = Vec::new();
            let mut watchers = Vec::new();
            for (send, recv) in streams {
                sends.push(send);
                watchers.push(tokio::spawn(quic_stream_closed(recv, opened, limit)));
            }
            for (i, w) in watchers.into_iter().enumerate() {
                let closed = w.await?.with_context(|| format!("stream {i}"))?;
                println!("  stream {i}: closed after {closed:.2?}");
                assert_closed_at_timeout(&format!("stream {i}"), closed, &env)?;
            }
            expect_counted(&env.counters, Reason::PeerSilent, 4).await?;
            conn.close(0u32.into(), b"done");
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connection_without_streams_is_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "idle QUIC connection",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let (_endpoint, conn) = quic_connect(&env).await?;
            let opened = Instant::now();
            let why = timeout(env.handshake_timeout() + CLOSE_MARGIN, conn.closed()).await.map_err(|_| {
                anyhow!("QUIC connection without streams still open after {:?}", opened.elapsed())
            })?;
            let closed = opened.elapsed();
            println!("  closed after {closed:.2?}: {why}");
            // Closed with the stable code of its reason, and counted under it.
            let code = match why {
                quinn::ConnectionError::ApplicationClosed(c) => Reason::from_quic(c.error_code),
                _ => None,
            };
            ensure!(code == Some(Reason::NoSession), "closed with {code:?}");
            expect_counted(&env.counters, Reason::NoSession, 1).await?;
            assert_closed_at_timeout("idle QUIC connection", closed, &env)
        },
    )
    .await
}

/// Real QUIC Initials for `count` connections, captured before they reach anyone: a
/// client connects to a UDP socket of ours that only records what arrives. Replayed to
/// the relay from another socket, they are what a spoofer sends: Initials from an
/// address that will never answer.
async fn captured_initials(env: &Env, count: usize) -> Result<Vec<Vec<u8>>> {
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let at = trap.local_addr()?;
    let endpoint = quic::client_endpoint(at, &Trust::CaFile(env.ca.clone()), &Default::default(), ALPN_RTMP)?;
    // Connecting sends the Initial at once; the connections are never driven further.
    let pending: Vec<_> = (0..count)
        .map(|_| endpoint.endpoint.connect(at, "localhost"))
        .collect::<std::result::Result<_, _>>()?;
    let mut initials: Vec<Vec<u8>> = Vec::with_capacity(count);
    let mut buf = vec![0u8; 65536];
    let mut seen = std::collections::HashSet::new();
    while initials.len() < count {
        let n =
            timeout(Duration::from_secs(5), trap.recv(&mut buf)).await.context("no Initial captured")??;
        // First datagrams only: an Initial packet (long header, type 0), each
        // connection's own destination connection ID.
        let dcid_len = *buf.get(5).unwrap_or(&0) as usize;
        let Some(dcid) = buf.get(6..6 + dcid_len) else { continue };
        if buf[0] & 0xf0 == 0xc0 && seen.insert(dcid.to_vec()) {
            initials.push(buf[..n].to_vec());
        }
    }
    drop((pending, endpoint));
    Ok(initials)
}

/// Issue 22 #7: admission counted a QUIC connection per address before the address was
/// validated, and each held its place until its handshake timed out, so about 2000
/// spoofed Initials per 30 s locked the victim address out of TCP and QUIC. Now an
/// unvalidated Initial from an address that already holds a place gets a Retry, which a
/// spoofer never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_initials_cannot_lock_an_address_out() -> Result {
    const PER_IP: usize = 16;
    const SPOOFED: usize = 64;
    let tweak = |c: &mut Config| c.max_connections_per_ip = PER_IP;
    run_case("spoofed Initials", tweak, PlayerOver::Quic, RSS_BOUND_MIB, |env| async move {
        let initials = captured_initials(&env, SPOOFED).await?;
        // From the victim's address (the steady pair's, 127.0.0.1), never answered.
        let spoofer = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        for initial in &initials {
            spoofer.send_to(initial, env.addr).await?;
        }
        // The spoofer reads nothing: whatever the relay answered (Retry packets) is dropped.
        drop(spoofer);
        // The victim still gets in, over QUIC and over TCP.
        let (_endpoint, conn) = quic_connect(&env).await.context("QUIC from the victim's address")?;
        let (mut send, mut recv) = conn.open_bi().await?;
        quic_served(&mut send, &mut recv).await?;
        let mut peer = RawPeer::connect(env.addr).await?;
        peer.handshake().await.context("TCP from the victim's address")?;
        ensure!(env.counters.get(Reason::AddressLimit) == 0, "the victim address was refused");
        Ok(())
    })
    .await
}

/// Issue 19, bad input on the WebTransport side: h3 connections that never ask for a
/// session (a CONNECT flood that stops after the handshake), and ones that send garbage on
/// a stream of their own, are each closed by the handshake deadline and counted, while
/// the steady pair plays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_connections_without_a_session_are_closed() -> Result {
    const SILENT: usize = 20;
    const NOISY: usize = 5;
    run_case(
        "h3 without a session",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let endpoint = quic::client_endpoint(
                env.addr,
                &Trust::Insecure,
                &Default::default(),
                qrelay::transport::tls::ALPN_H3,
            )?;
            let mut conns = Vec::new();
            for _ in 0..SILENT + NOISY {
                let conn = timeout(Duration::from_secs(5), endpoint.connect(env.addr, "localhost"))
                    .await
                    .context("h3 connect timed out")??;
                conns.push(conn);
            }
            for conn in &conns[SILENT..] {
                // Not HTTP/3 at all: a control stream of garbage.
                let mut s = conn.open_uni().await?;
                s.write_all(&[0xff; 4096]).await?;
                let _ = s.finish();
            }
            let opened = Instant::now();
            for conn in &conns {
                timeout(env.handshake_timeout() + CLOSE_MARGIN, conn.closed()).await.map_err(|_| {
                    anyhow!("an h3 connection without a session still open after {:?}", opened.elapsed())
                })?;
            }
            println!("  {} h3 connections closed within {:.2?}", conns.len(), opened.elapsed());
            let counted = env.counters.get(Reason::NoSession) + env.counters.get(Reason::BadHttpRequest);
            ensure!(counted as usize >= SILENT + NOISY, "only {counted} of {} counted", SILENT + NOISY);
            Ok(())
        },
    )
    .await
}
