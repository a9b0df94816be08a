//! Hostile peers: session ids and admission.

use super::*;

fn expect_bad_name(result: std::result::Result<RtmpClient, ClientError>) -> Result {
    match result {
        Err(ClientError::Session(SessionError::Refused { code, .. }))
            if code == "NetStream.Publish.BadName" =>
        {
            Ok(())
        }
        Err(e) => bail!("publish refused with an unexpected error: {e}"),
        Ok(_) => bail!("a second publisher was accepted for live/pair"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_held_session_id_is_refused() -> Result {
    run_case(
        "session ID held",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let opts = env.opts();
            for scheme in ["rtmp", "rtmp+quic", "rtmp"] {
                let url = StreamUrl::parse(&env.url(scheme, "pair"))?;
                expect_bad_name(RtmpClient::connect(&url, ClientMode::Publish, &opts).await)
                    .with_context(|| format!("over {scheme}"))?;
            }
            // With a query on the key, it is still the same session ID.
            let url = StreamUrl::parse(&format!("{}?token=x", env.url("rtmp", "pair")))?;
            expect_bad_name(RtmpClient::connect(&url, ClientMode::Publish, &opts).await)?;
            expect_counted(&env.counters, Reason::PublishTaken, 4).await
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_are_refused() -> Result {
    const IDLE: usize = 2000;
    const PER_IP: usize = 200;
    // The idle connections come from 127.0.0.2, so the pair (127.0.0.1) keeps its own
    // allowance. A longer handshake timeout keeps "refused at once" and "closed at the
    // timeout" far apart.
    let tweak = |c: &mut Config| {
        c.max_connections_per_ip = PER_IP;
        c.handshake_timeout_ms = 3000;
    };
    run_case("2000 idle connections", tweak, PlayerOver::Tcp, RSS_BOUND_MIB, |env| async move {
        let other_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let limit = env.handshake_timeout() + CLOSE_MARGIN;
        let mut watchers = Vec::with_capacity(IDLE);
        let start = Instant::now();
        for _ in 0..IDLE {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(other_ip, 0))?;
            let mut stream = socket.connect(env.addr).await?;
            let opened = Instant::now();
            watchers.push(tokio::spawn(async move { closed_within(&mut stream, opened, limit).await }));
        }
        println!("  {IDLE} connections opened in {:.2?}", start.elapsed());
        let (mut refused, mut accepted) = (0, 0);
        for w in watchers {
            let closed = w.await??;
            if closed < PROMPT {
                refused += 1;
            } else {
                assert_closed_at_timeout("idle connection", closed, &env)?;
                accepted += 1;
            }
        }
        println!("  accepted {accepted} (closed at the handshake timeout), refused {refused} at once");
        ensure!(accepted == PER_IP && refused == IDLE - PER_IP, "accepted {accepted}, refused {refused}");
        expect_counted(&env.counters, Reason::AddressLimit, IDLE - PER_IP).await?;
        // The address has its allowance back once they are gone.
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(other_ip, 0))?;
        let mut peer = RawPeer::from_stream(socket.connect(env.addr).await?);
        peer.handshake().await.context("a new connection from 127.0.0.2")?;
        Ok(())
    })
    .await
}

/// Issue 22 #8: one address could hold every `max_publishers` slot. Now it may publish
/// `max_publishers_per_ip` streams at once; the next is refused and counted, and others
/// (the steady pair) are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_publisher_slot() -> Result {
    const PER_IP: usize = 4;
    // The steady pair publishes from 127.0.0.1 too: one of its places is taken.
    let tweak = |c: &mut Config| c.max_publishers_per_ip = PER_IP;
    run_case("publisher-slot exhaustion", tweak, PlayerOver::Tcp, RSS_BOUND_MIB, |env| async move {
        let opts = env.opts();
        let mut held = Vec::new();
        for i in 1..PER_IP {
            let url = StreamUrl::parse(&env.url("rtmp", &format!("slot{i}")))?;
            held.push(
                RtmpClient::connect(&url, ClientMode::Publish, &opts)
                    .await
                    .with_context(|| format!("slot{i}"))?,
            );
        }
        let url = StreamUrl::parse(&env.url("rtmp+quic", "one-too-many"))?;
        expect_bad_name(RtmpClient::connect(&url, ClientMode::Publish, &opts).await)?;
        expect_counted(&env.counters, Reason::AddressPublisherLimit, 1).await?;
        // A place comes back when its publish ends.
        drop(held.pop());
        let again = timeout(Duration::from_secs(5), async {
            loop {
                let url = StreamUrl::parse(&env.url("rtmp", "slot-again"))?;
                match RtmpClient::connect(&url, ClientMode::Publish, &opts).await {
                    Ok(c) => return anyhow::Ok(c),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await
        .context("the freed place never came back")??;
        drop((held, again));
        Ok(())
    })
    .await
}

/// Issue 22 #8: a session that never publishes or plays, sending a byte now and then to
/// stay within the idle timeout, is closed at `role_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_takes_no_role_is_closed() -> Result {
    let tweak = |c: &mut Config| {
        c.role_timeout_ms = 1_500;
        c.idle_timeout_ms = 1_000;
    };
    run_case("no role", tweak, PlayerOver::Tcp, RSS_BOUND_MIB, |env| async move {
        let mut peer = RawPeer::connect(env.addr).await?;
        peer.handshake().await?;
        peer.send_command(&connect_values(), 0).await?;
        let opened = Instant::now();
        // Keep-alive: an acknowledgement every 300 ms, well inside the idle timeout.
        let closed = timeout(Duration::from_secs(10), async {
            loop {
                match timeout(Duration::from_millis(300), peer.next_message()).await {
                    Ok(Ok(None)) | Ok(Err(_)) => return opened.elapsed(),
                    Ok(Ok(Some(_))) => {}
                    Err(_) => {
                        if peer.send_msg(&RtmpMessage::Acknowledgement(0), 0).await.is_err() {
                            return opened.elapsed();
                        }
                    }
                }
            }
        })
        .await
        .context("a session without a role stayed open")?;
        ensure!(closed >= Duration::from_millis(1_200), "closed after {closed:?}, before the role timeout");
        expect_counted(&env.counters, Reason::NoRole, 1).await
    })
    .await
}
