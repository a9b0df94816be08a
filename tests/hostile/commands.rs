//! Hostile peers: amf0 and commands.

use super::*;

/// `connect`, 1, then `tail` (raw AMF0) as the command object.
fn connect_with(tail: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    amf0::encode(&Amf0Value::String("connect".into()), &mut b);
    amf0::encode(&Amf0Value::Number(1.0), &mut b);
    b.put_slice(tail);
    b.freeze()
}

async fn command_refused(addr: SocketAddr, payload: Bytes) -> Result<Duration> {
    let mut peer = RawPeer::connect(addr).await?;
    peer.handshake().await?;
    let bytes = encode(3, 20, 0, payload, chunk::DEFAULT_CHUNK_SIZE);
    expect_refused("command", peer, &bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_amf0_commands_are_refused() -> Result {
    run_case(
        "malformed AMF0",
        |_| {},
        PlayerOver::Quic,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            // 10,000 nested objects: { a: { a: { ... (40 KB, under the command size cap,
            // so the depth limit is what refuses it).
            let mut deep = BytesMut::new();
            for _ in 0..10_000 {
                deep.put_slice(&[0x03, 0, 1, b'a']);
            }
            // 10,000 nested strict arrays of one element (50 KB).
            let mut deep_arrays = BytesMut::new();
            for _ in 0..10_000 {
                deep_arrays.put_slice(&[0x0A, 0, 0, 0, 1]);
            }
            // 100,000 nested objects (400 KB): over the command size cap, refused unread.
            let mut huge_deep = BytesMut::new();
            for _ in 0..100_000 {
                huge_deep.put_slice(&[0x03, 0, 1, b'a']);
            }
            // { app: "<claims 65535 bytes, has 4>" }
            let huge_string = [0x03, 0, 3, b'a', b'p', b'p', 0x02, 0xFF, 0xFF, b'l', b'i', b'v', b'e'];
            // A long string claiming 4 GiB.
            let huge_long_string = [0x0C, 0xFF, 0xFF, 0xFF, 0xFF, b'x'];
            // A strict array claiming 4 billion entries, holding 3.
            let mut huge_array = vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF];
            for _ in 0..3 {
                huge_array.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            // A number cut after 3 of its 8 bytes.
            let truncated_number = [0x00, 0x40, 0x09, 0x21];
            // { app: <invalid UTF-8> }
            let bad_utf8 = [0x03, 0, 3, b'a', b'p', b'p', 0x02, 0, 2, 0xFF, 0xFE];
            // AMF3 switch and reference markers, refused.
            let amf3 = [0x11, 0x01];
            let reference = [0x07, 0, 1];
            // A command whose name is a number.
            let mut nameless = BytesMut::new();
            amf0::encode(&Amf0Value::Number(1.0), &mut nameless);
            all(vec![
                ("10k nested objects", Box::pin(command_refused(addr, connect_with(&deep))) as PinFut),
                ("10k nested arrays", Box::pin(command_refused(addr, connect_with(&deep_arrays)))),
                ("400 KB command", Box::pin(command_refused(addr, connect_with(&huge_deep)))),
                ("string claiming 64 KiB", Box::pin(command_refused(addr, connect_with(&huge_string)))),
                (
                    "long string claiming 4 GiB",
                    Box::pin(command_refused(addr, connect_with(&huge_long_string))),
                ),
                ("array claiming 4G entries", Box::pin(command_refused(addr, connect_with(&huge_array)))),
                ("truncated number", Box::pin(command_refused(addr, connect_with(&truncated_number)))),
                ("invalid UTF-8", Box::pin(command_refused(addr, connect_with(&bad_utf8)))),
                ("AMF3 marker", Box::pin(command_refused(addr, connect_with(&amf3)))),
                ("reference marker", Box::pin(command_refused(addr, connect_with(&reference)))),
                ("command without a name", Box::pin(command_refused(addr, nameless.freeze()))),
            ])
            .await?;
            // Nesting (2), truncation (4), bad UTF-8 (1), unsupported markers (2).
            expect_counted(&env.counters, Reason::BadAmf0, 9).await?;
            expect_counted(&env.counters, Reason::CommandTooLarge, 1).await?;
            expect_counted(&env.counters, Reason::BadCommand, 1).await
        },
    )
    .await
}

/// A peer after the handshake (and `connect` when `connected`) sends `commands` and must
/// be closed for a protocol violation.
async fn sequence_refused(
    addr: SocketAddr,
    connected: bool,
    commands: Vec<(Vec<Amf0Value>, u32)>,
) -> Result<Duration> {
    let peer = if connected {
        RawPeer::connected(addr).await?
    } else {
        let mut p = RawPeer::connect(addr).await?;
        p.handshake().await?;
        p
    };
    let mut bytes = Vec::new();
    for (values, stream_id) in commands {
        bytes.extend_from_slice(&encode(3, 20, stream_id, command_payload(&values), peer.chunk_size));
    }
    expect_refused("commands", peer, &bytes).await
}

fn cmd(name: &str, txn: f64, args: &[Amf0Value]) -> Vec<Amf0Value> {
    let mut v = vec![Amf0Value::String(name.into()), Amf0Value::Number(txn), Amf0Value::Null];
    v.extend_from_slice(args);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_out_of_order_are_refused() -> Result {
    run_case(
        "commands out of order",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let addr = env.addr;
            let key = [Amf0Value::String("pair".into())];
            all(vec![
                (
                    "publish before connect",
                    Box::pin(sequence_refused(addr, false, vec![(cmd("publish", 5.0, &key), 1)])) as PinFut,
                ),
                (
                    "createStream before connect",
                    Box::pin(sequence_refused(addr, false, vec![(cmd("createStream", 2.0, &[]), 0)])),
                ),
                (
                    "play without createStream",
                    Box::pin(sequence_refused(addr, true, vec![(cmd("play", 5.0, &key), 1)])),
                ),
                (
                    "publish on stream 0",
                    Box::pin(sequence_refused(addr, true, vec![(cmd("publish", 5.0, &key), 0)])),
                ),
                ("second connect", Box::pin(sequence_refused(addr, true, vec![(connect_values(), 0)]))),
                (
                    "publish while playing",
                    Box::pin(sequence_refused(
                        addr,
                        true,
                        vec![
                            (cmd("createStream", 2.0, &[]), 0),
                            (cmd("play", 3.0, &key), 1),
                            (cmd("publish", 4.0, &key), 1),
                        ],
                    )),
                ),
                (
                    "nine createStreams",
                    Box::pin(sequence_refused(
                        addr,
                        true,
                        (0..9).map(|i| (cmd("createStream", 2.0 + f64::from(i), &[]), 0)).collect(),
                    )),
                ),
            ])
            .await?;
            expect_counted(&env.counters, Reason::ProtocolViolation, 7).await
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_ignored() -> Result {
    run_case(
        "unknown message types",
        |_| {},
        PlayerOver::Tcp,
        RSS_BOUND_MIB,
        |env| async move {
            let mut rng = Rng::new(7);
            let mut peer = RawPeer::connect(env.addr).await?;
            peer.handshake().await?;
            // Every type id without a meaning for the relay, with random payloads, then a user
            // control event nobody defined: all ignored, and the session still works.
            let mut bytes = Vec::new();
            let known = [1u8, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20];
            for type_id in (0..=255u8).filter(|t| !known.contains(t)) {
                let payload = rng.bytes_in(0, 600);
                bytes.extend_from_slice(&encode(3 + u32::from(type_id % 8), type_id, 0, payload, 128));
            }
            bytes.extend_from_slice(&encode(2, 4, 0, vec![0x12, 0x34, 1, 2, 3], 128));
            peer.send(&bytes).await?;
            peer.send_command(&connect_values(), 0).await?;
            peer.expect_command("_result").await.context("connect after unknown messages")?;
            // Media from a peer that is not publishing is dropped, not relayed to anyone.
            let media = encode(6, 9, 1, frame(0), peer.chunk_size);
            peer.send(&media).await?;
            peer.send_command(&cmd("createStream", 2.0, &[]), 0).await?;
            let created = peer.expect_command("_result").await?;
            ensure!(created.args.first() == Some(&Amf0Value::Number(1.0)), "createStream: {created:?}");
            Ok(())
        },
    )
    .await
}
