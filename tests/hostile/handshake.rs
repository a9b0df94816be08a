//! Hostile peers: handshake.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_version_handshakes_are_closed() -> Result {
    run_case(
        "garbage handshake",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            let mut rng = Rng::new(1);
            let mut garbage = rng.bytes(1 + 1536);
            garbage[0] = 0x47;
            let mut wrong_version = c0c1();
            wrong_version[0] = 6;
            let mut fake_tls = rng.bytes(1 + 1536);
            fake_tls[0] = 0x16;
            let mut big_garbage = rng.bytes(256 * 1024);
            big_garbage[0] = 0xFF;
            all(vec![
                ("1537 random bytes", Box::pin(refuse_raw(addr, garbage)) as PinFut),
                ("version byte 6", Box::pin(refuse_raw(addr, wrong_version))),
                ("TLS record header then garbage", Box::pin(refuse_raw(addr, fake_tls))),
                ("256 KiB of garbage", Box::pin(refuse_raw(addr, big_garbage))),
            ])
            .await?;
            // An HTTP request for nothing the relay serves: answered 404 and closed at once.
            let mut http = RawPeer::connect(addr).await?;
            http.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
            let closed = http.closed_within(PROMPT).await.context("HTTP request: not closed")?;
            println!("  HTTP request: closed after {closed:.2?}");
            // The random bytes start with 'G' (0x47): the HTTP side refuses them as a
            // malformed request; the wrong version and the 0xFF garbage by the RTMP
            // handshake, the fake TLS record by TLS.
            expect_counted(&env.counters, Reason::BadHandshake, 2).await?;
            expect_counted(&env.counters, Reason::BadHttpRequest, 1).await?;
            expect_counted(&env.counters, Reason::HttpNotFound, 1).await?;
            expect_counted(&env.counters, Reason::TlsFailed, 1).await?;
            Ok(())
        },
    )
    .await
}

async fn refuse_raw(addr: SocketAddr, bytes: Vec<u8>) -> Result<Duration> {
    let peer = RawPeer::connect(addr).await?;
    expect_refused("garbage", peer, &bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_at_the_timeout() -> Result {
    run_case(
        "stalled handshakes",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let limit = env.handshake_timeout() + CLOSE_MARGIN;
            let silent = RawPeer::connect(env.addr).await?;
            let mut half_c1 = RawPeer::connect(env.addr).await?;
            half_c1.send(&c0c1()[..1 + 700]).await?;
            let mut no_c2 = RawPeer::connect(env.addr).await?;
            no_c2.send(&c0c1()).await?;
            let mut no_connect = RawPeer::connect(env.addr).await?;
            no_connect.handshake().await?;
            let mut peers = vec![
                ("silent", silent),
                ("half of C1", half_c1),
                ("no C2", no_c2),
                ("handshake but no connect", no_connect),
            ];
            for (what, peer) in &mut peers {
                let closed = peer.closed_within(limit).await.with_context(|| what.to_string())?;
                println!("  {what}: closed after {closed:.2?}");
                assert_closed_at_timeout(what, closed, &env)?;
            }
            expect_counted(&env.counters, Reason::HandshakeTimeout, 1).await?;
            expect_counted(&env.counters, Reason::PeerSilent, 3).await?;
            Ok(())
        },
    )
    .await
}

/// Sends `bytes` one byte a second from `start`; stops at the first write error.
async fn trickle(stream: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8], start: Instant) {
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    for b in bytes {
        tick.tick().await;
        if stream.write_all(&[*b]).await.is_err() {
            return;
        }
    }
}

/// A slowloris peer: `prefix` at once, then `rest` one byte a second from `first_byte_at`.
async fn slowloris(addr: SocketAddr, prefix: bool, first_byte_at: Duration) -> Result<Duration> {
    let mut peer = RawPeer::connect(addr).await?;
    let rest = if prefix {
        peer.handshake().await?;
        command_payload(&connect_values()).to_vec()
    } else {
        c0c1()
    };
    let opened = peer.opened;
    let (mut rd, mut wr) = peer.stream.into_split();
    let writer = tokio::spawn(async move { trickle(&mut wr, &rest, opened + first_byte_at).await });
    let mut buf = [0u8; 4096];
    let closed = timeout(Duration::from_millis(HANDSHAKE_MS) * 3, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("slowloris still connected"))?;
    writer.abort();
    Ok(closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "slowloris",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            // 50 peers sending C0+C1 a byte a second, and 10 that completed the handshake and
            // send their connect command a byte a second.
            let mut tasks = Vec::new();
            for i in 0..60 {
                tasks.push(tokio::spawn(slowloris(env.addr, i >= 50, Duration::ZERO)));
            }
            let mut worst = Duration::ZERO;
            for task in tasks {
                let closed = task.await??;
                assert_closed_at_timeout("slowloris", closed, &env)?;
                worst = worst.max(closed);
            }
            println!("  60 slowloris peers: the last was closed after {worst:.2?}");
            expect_counted(&env.counters, Reason::PeerSilent, 60).await?;
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_with_a_late_first_byte_is_closed_at_the_handshake_timeout() -> Result {
    run_case(
        "late slowloris",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let late = env.handshake_timeout() - Duration::from_millis(100);
            let closed = slowloris(env.addr, false, late).await?;
            println!("  first byte after {late:?}: closed after {closed:.2?}");
            assert_closed_at_timeout("late slowloris", closed, &env)
        },
    )
    .await
}
