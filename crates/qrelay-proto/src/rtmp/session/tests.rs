//! Client and server session machines driven against each other in memory: no sockets,
//! so every exchange is deterministic.

use bytes::Bytes;

use super::*;
use crate::media::frame::MediaKind;
use crate::rtmp::chunk::{self, Message};
use crate::rtmp::message::RtmpMessage;

/// Moves bytes both ways until neither side has output, collecting server events.
fn pump(client: &mut ClientSession, server: &mut ServerSession) -> Vec<ServerEvent> {
    let mut events = Vec::new();
    loop {
        let mut moved = false;
        if let Some(out) = client.take_output() {
            server.handle_input(&out).unwrap();
            moved = true;
        }
        while let Some(e) = server.poll_event() {
            events.push(e);
        }
        if let Some(out) = server.take_output() {
            client.handle_input(&out).unwrap();
            moved = true;
        }
        if !moved {
            return events;
        }
    }
}

fn client(mode: ClientMode) -> ClientSession {
    ClientSession::new(SessionConfig::default(), mode, "live", "cam1?token=x", "rtmp://127.0.0.1:1935/live")
        .unwrap()
}

#[test]
fn publish_is_requested_accepted_and_media_flows() {
    let mut c = client(ClientMode::Publish);
    let mut s = ServerSession::new(SessionConfig::default());
    let events = pump(&mut c, &mut s);
    match events.as_slice() {
        [ServerEvent::PublishRequest { stream_id: 1, app, key, session_id }] => {
            assert_eq!(app, "live");
            assert_eq!(key, "cam1?token=x");
            assert_eq!(session_id, "live/cam1");
        }
        other => panic!("unexpected events {other:?}"),
    }
    assert!(!c.is_publishing());
    s.core().accept_publish();
    pump(&mut c, &mut s);
    assert_eq!(c.poll_event(), Some(ClientEvent::PublishStarted));
    assert!(c.is_publishing());

    let payload = Bytes::from(vec![0x17, 1, 0, 0, 0, 1, 2, 3]);
    c.send_media(MediaKind::Video, 0x0100_0000, payload.clone());
    let events = pump(&mut c, &mut s);
    match events.as_slice() {
        [ServerEvent::Media(f)] => {
            assert_eq!(f.payload(), &payload);
            assert_eq!(f.timestamp(), 0x0100_0000);
            assert!(f.is_keyframe());
        }
        other => panic!("unexpected events {other:?}"),
    }
    c.finish();
    let events = pump(&mut c, &mut s);
    assert!(matches!(events.as_slice(), [ServerEvent::Unpublish]), "{events:?}");
}

#[test]
fn refused_publish_is_reported_to_the_client() {
    let mut c = client(ClientMode::Publish);
    let mut s = ServerSession::new(SessionConfig::default());
    pump(&mut c, &mut s);
    s.core().reject_publish("NetStream.Publish.BadName", "taken");
    let out = s.take_output().unwrap();
    match c.handle_input(&out) {
        Err(SessionError::Refused { code, .. }) => assert_eq!(code, "NetStream.Publish.BadName"),
        other => panic!("expected refusal, got {other:?}"),
    }
}

#[test]
fn play_gets_media_and_end_of_stream() {
    let mut c = client(ClientMode::Play);
    let mut s = ServerSession::new(SessionConfig::default());
    let events = pump(&mut c, &mut s);
    assert!(matches!(events.as_slice(), [ServerEvent::PlayRequest { stream_id: 1, .. }]), "{events:?}");
    s.core().accept_play();
    pump(&mut c, &mut s);
    assert_eq!(c.poll_event(), Some(ClientEvent::PlayStarted));

    // 10 000 bytes spans several 4096-byte chunks.
    let frame = crate::media::frame::Frame::new(MediaKind::Video, 40, Bytes::from(vec![0x27; 10_000]));
    let wire = s.media_bytes(&frame);
    assert_eq!(s.media_bytes(&frame).as_ptr(), wire.as_ptr(), "encoded once, shared");
    c.handle_input(&wire).unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Media { kind: MediaKind::Video, timestamp: 40, payload: frame.payload().clone() })
    );
    s.core().play_ended();
    pump(&mut c, &mut s);
    assert_eq!(c.poll_event(), Some(ClientEvent::StreamEnded));
}

#[test]
fn set_data_frame_reaches_the_hub_as_on_metadata() {
    let mut c = client(ClientMode::Publish);
    let mut s = ServerSession::new(SessionConfig::default());
    pump(&mut c, &mut s);
    s.core().accept_publish();
    pump(&mut c, &mut s);
    let mut body = bytes::BytesMut::new();
    crate::rtmp::amf0::encode_all(
        &[
            crate::rtmp::amf0::Amf0Value::String("@setDataFrame".into()),
            crate::rtmp::amf0::Amf0Value::String("onMetaData".into()),
            crate::rtmp::amf0::object([("width", crate::rtmp::amf0::Amf0Value::Number(1280.0))]),
        ],
        &mut body,
    );
    c.send_media(MediaKind::Data, 0, body.freeze());
    let events = pump(&mut c, &mut s);
    match events.as_slice() {
        [ServerEvent::Media(f)] => {
            assert_eq!(crate::rtmp::message::data_name(f.payload()).as_deref(), Some("onMetaData"))
        }
        other => panic!("{other:?}"),
    }
}

/// Drives the server with raw chunks, as a hostile or odd client would.
fn connected_server() -> (ServerSession, ClientSession) {
    let mut c = client(ClientMode::Play);
    let mut s = ServerSession::new(SessionConfig::default());
    // Only the handshake: take the client's C0C1, answer, take C2.
    let c0c1 = c.take_output().unwrap();
    s.handle_input(&c0c1).unwrap();
    let s_out = s.take_output().unwrap();
    c.handle_input(&s_out).unwrap();
    // The client's C2 plus its SetChunkSize/connect follow; deliver only C2 (1536 bytes).
    let out = c.take_output().unwrap();
    s.handle_input(&out[..1536]).unwrap();
    assert!(s.handshake_done());
    (s, c)
}

fn command(name: &str, txn: f64, stream_id: u32, args: Vec<crate::rtmp::amf0::Amf0Value>) -> Bytes {
    let cmd = crate::rtmp::message::Command {
        name: name.into(),
        transaction: txn,
        object: crate::rtmp::amf0::Amf0Value::Null,
        args,
    };
    let m = RtmpMessage::Command(cmd).to_message(stream_id, 0);
    chunk::encode_to_bytes(&m, chunk::DEFAULT_CHUNK_SIZE)
}

#[test]
fn commands_out_of_order_end_the_session() {
    let key = vec![crate::rtmp::amf0::Amf0Value::String("x".into())];
    let (mut s, _) = connected_server();
    let err = s.handle_input(&command("publish", 5.0, 1, key.clone())).unwrap_err();
    assert!(err.to_string().contains("before connect"), "{err}");

    let (mut s, _) = connected_server();
    let connect = {
        let cmd = crate::rtmp::message::Command {
            name: "connect".into(),
            transaction: 1.0,
            object: crate::rtmp::amf0::object([("app", crate::rtmp::amf0::Amf0Value::String("live".into()))]),
            args: vec![],
        };
        chunk::encode_to_bytes(&RtmpMessage::Command(cmd).to_message(0, 0), 128)
    };
    s.handle_input(&connect).unwrap();
    let err = s.handle_input(&command("play", 5.0, 1, key)).unwrap_err();
    assert!(err.to_string().contains("createStream"), "{err}");
}

#[test]
fn unknown_message_types_are_ignored() {
    let (mut s, _) = connected_server();
    let m =
        Message { csid: 3, timestamp: 0, type_id: 0x42, stream_id: 0, payload: Bytes::from_static(b"junk") };
    s.handle_input(&chunk::encode_to_bytes(&m, 128)).unwrap();
    assert!(s.poll_event().is_none());
}

#[test]
fn ping_requests_are_answered() {
    let (mut s, _) = connected_server();
    let _ = s.take_output();
    let ping = RtmpMessage::UserControl(crate::rtmp::message::UserControl::PingRequest(77)).to_message(0, 0);
    s.handle_input(&chunk::encode_to_bytes(&ping, 128)).unwrap();
    let out = s.take_output().unwrap();
    let mut dec = chunk::ChunkDecoder::new(Default::default());
    let mut buf = bytes::BytesMut::from(&out[..]);
    let m = dec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        RtmpMessage::parse(&m).unwrap(),
        RtmpMessage::UserControl(crate::rtmp::message::UserControl::PingResponse(77))
    );
}

/// Moves whole messages between the message-level cores, as a framing without chunks
/// (RoQR) does: protocol control never reaches a core, so none may be needed.
fn pump_cores(client: &mut ClientCore, server: &mut ServerCore) -> (Vec<ServerEvent>, usize) {
    let mut events = Vec::new();
    let mut setups = 0;
    loop {
        let mut moved = false;
        while let Some(t) = client.poll_transmit() {
            let Transmit::Message(m) = t else { panic!("a client core asked for framing set-up") };
            let parsed = RtmpMessage::parse(&m).unwrap();
            server.handle_message(m, parsed).unwrap();
            moved = true;
        }
        events.extend(std::iter::from_fn(|| server.poll_event()));
        while let Some(t) = server.poll_transmit() {
            match t {
                Transmit::Setup => setups += 1,
                Transmit::Message(m) => {
                    let parsed = RtmpMessage::parse(&m).unwrap();
                    client.handle_message(m, parsed).unwrap();
                }
            }
            moved = true;
        }
        if !moved {
            return (events, setups);
        }
    }
}

#[test]
fn message_level_cores_publish_and_play_without_any_framing() {
    let mut pc = ClientCore::new(ClientMode::Publish, "live", "cam1", "rtmp+quic://h/live");
    let mut ps = ServerCore::new();
    pc.start();
    let (events, setups) = pump_cores(&mut pc, &mut ps);
    assert_eq!(setups, 1, "connect must ask the framing for its set-up once");
    assert!(
        matches!(events.as_slice(), [ServerEvent::PublishRequest { session_id, .. }] if session_id == "live/cam1")
    );
    ps.accept_publish();
    pump_cores(&mut pc, &mut ps);
    assert_eq!(pc.poll_event(), Some(ClientEvent::PublishStarted));
    pc.send_media(MediaKind::Audio, 5, Bytes::from_static(&[0xaf, 1, 9]));
    let (events, _) = pump_cores(&mut pc, &mut ps);
    assert!(
        matches!(events.as_slice(), [ServerEvent::Media(f)] if f.timestamp() == 5 && f.payload()[2] == 9)
    );

    let mut player = ClientCore::new(ClientMode::Play, "live", "cam1", "rtmp+quic://h/live");
    let mut ss = ServerCore::new();
    player.start();
    let (events, _) = pump_cores(&mut player, &mut ss);
    assert!(matches!(events.as_slice(), [ServerEvent::PlayRequest { stream_id: 1, .. }]));
    ss.accept_play();
    pump_cores(&mut player, &mut ss);
    assert_eq!(player.poll_event(), Some(ClientEvent::PlayStarted));
    assert_eq!(ss.play_stream_id(), 1);
    ss.play_ended();
    pump_cores(&mut player, &mut ss);
    assert_eq!(player.poll_event(), Some(ClientEvent::StreamEnded));
}

fn server_output_messages(s: &mut ServerSession) -> Vec<RtmpMessage> {
    let out = s.take_output().unwrap_or_default();
    let mut dec = chunk::ChunkDecoder::new(Default::default());
    let mut buf = bytes::BytesMut::from(&out[..]);
    let mut msgs = Vec::new();
    while let Some(m) = dec.decode(&mut buf).unwrap() {
        let parsed = RtmpMessage::parse(&m).unwrap();
        if let RtmpMessage::SetChunkSize(n) = parsed {
            dec.set_chunk_size(n).unwrap();
        }
        msgs.push(parsed);
    }
    msgs
}

#[test]
fn get_stream_length_is_answered_with_a_number() {
    use crate::rtmp::amf0::Amf0Value;
    let (mut s, _) = connected_server();
    let connect = crate::rtmp::message::Command {
        name: "connect".into(),
        transaction: 1.0,
        object: crate::rtmp::amf0::object([("app", Amf0Value::String("live".into()))]),
        args: vec![],
    };
    s.handle_input(&chunk::encode_to_bytes(&RtmpMessage::Command(connect).to_message(0, 0), 128)).unwrap();
    let _ = s.take_output();
    s.handle_input(&command("getStreamLength", 3.0, 0, vec![Amf0Value::String("x".into())])).unwrap();
    // ffmpeg reads `_result`, the transaction, null, then a number; anything else it logs
    // as "Unexpected reply on getStreamLength()". 0 means live.
    let answer = server_output_messages(&mut s).into_iter().find_map(|m| match m {
        RtmpMessage::Command(c) if c.name == "_result" && c.transaction == 3.0 => Some(c),
        _ => None,
    });
    let answer = answer.expect("no answer to getStreamLength");
    assert_eq!(answer.object, Amf0Value::Null);
    assert_eq!(answer.args, vec![Amf0Value::Number(0.0)]);
}

#[test]
fn a_token_in_the_app_or_tc_url_stays_out_of_the_session_id() {
    // (app, tcUrl) as encoders send them: OBS's "Server" box with a token goes into
    // both; other clients put it only in tcUrl.
    let cases = [
        ("live?token=abc", "rtmp://h:1935/live?token=abc", "live?token=abc"),
        ("live", "rtmp://h:1935/live?token=abc", "live?token=abc"),
        ("live?token=abc", "rtmp://h:1935/live", "live?token=abc"),
        ("a/b/?t=1", "rtmp://h/a/b/?t=1", "a/b/?t=1"),
    ];
    for (app, tc_url, want_app) in cases {
        let mut c =
            ClientSession::new(SessionConfig::default(), ClientMode::Publish, app, "cam3", tc_url).unwrap();
        let mut s = ServerSession::new(SessionConfig::default());
        let events = pump(&mut c, &mut s);
        match events.as_slice() {
            [ServerEvent::PublishRequest { session_id, app, key, .. }] => {
                assert_eq!(session_id, if want_app.starts_with("a/b") { "a/b/cam3" } else { "live/cam3" });
                assert_eq!(app, want_app, "the query is kept for authorisation");
                assert_eq!(key, "cam3");
            }
            other => panic!("{app} {tc_url}: {other:?}"),
        }
    }
}

#[test]
fn connect_with_only_a_query_as_app_is_refused() {
    let mut c =
        ClientSession::new(SessionConfig::default(), ClientMode::Play, "?token=abc", "k", "rtmp://h/")
            .unwrap();
    let mut s = ServerSession::new(SessionConfig::default());
    let c0c1 = c.take_output().unwrap();
    s.handle_input(&c0c1).unwrap();
    c.handle_input(&s.take_output().unwrap()).unwrap();
    let err = s.handle_input(&c.take_output().unwrap()).unwrap_err();
    assert!(err.to_string().contains("valid app"), "{err}");
}

/// The properties object of the server's answer to `connect` with `object`.
fn connect_answer(object: crate::rtmp::amf0::Amf0Value) -> crate::rtmp::amf0::Amf0Value {
    let (mut s, _) = connected_server();
    let connect =
        crate::rtmp::message::Command { name: "connect".into(), transaction: 1.0, object, args: vec![] };
    s.handle_input(&chunk::encode_to_bytes(&RtmpMessage::Command(connect).to_message(0, 0), 128)).unwrap();
    let answer = server_output_messages(&mut s).into_iter().find_map(|m| match m {
        RtmpMessage::Command(c) if c.name == "_result" && c.transaction == 1.0 => Some(c.object),
        _ => None,
    });
    answer.expect("no answer to connect")
}

#[test]
fn enhanced_rtmp_clients_get_the_relays_capabilities() {
    use crate::rtmp::amf0::{object, Amf0Value};
    let app = || ("app", Amf0Value::String("live".into()));
    // OBS-style E-RTMP v2 connect: capsEx and a FourCC info map.
    let v2 = connect_answer(object([
        app(),
        ("capsEx", Amf0Value::Number(2.0)),
        ("videoFourCcInfoMap", object([("hvc1", Amf0Value::Number(2.0))])),
    ]));
    let caps = v2.get("capsEx").and_then(Amf0Value::as_number);
    assert_eq!(caps, Some(6.0), "Multitrack | ModEx");
    for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
        let forward = v2.get(map).and_then(|m| m.get("*")).and_then(Amf0Value::as_number);
        assert_eq!(forward, Some(4.0), "{map}: CanForward for any codec");
    }
    assert!(v2.get("fourCcList").is_none());
    // v1: fourCcList answered in kind.
    let list = vec![Amf0Value::String("hvc1".into())];
    let v1 = connect_answer(object([app(), ("fourCcList", Amf0Value::StrictArray(list))]));
    assert_eq!(v1.get("fourCcList"), Some(&Amf0Value::StrictArray(vec![Amf0Value::String("*".into())])));
    // Legacy clients get the legacy answer.
    let legacy = connect_answer(object([app()]));
    assert!(legacy.get("capsEx").is_none() && legacy.get("videoFourCcInfoMap").is_none());
    assert_eq!(legacy.get("fmsVer").and_then(Amf0Value::as_str), Some("FMS/3,0,1,123"));
}
