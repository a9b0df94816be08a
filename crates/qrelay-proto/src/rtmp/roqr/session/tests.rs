//! Unit tests of `rtmp::roqr::session`.

use super::*;
use crate::media::frame::MediaKind;
use crate::rtmp::message::media_message;
use crate::rtmp::session::{ClientEvent, ClientMode, ServerEvent};

/// Moves command frames both ways until neither side has output.
fn pump(c: &mut RoqrSession<ClientCore>, s: &mut RoqrSession<ServerCore>, now: Instant) -> Vec<ServerEvent> {
    let mut events = Vec::new();
    loop {
        let mut moved = false;
        if let Some(mut out) = c.take_output().map(BytesMut::from) {
            while let Some(f) = frame::decode(&mut out, 1 << 20).unwrap() {
                s.handle_frame(f, Via::Stream, now).unwrap();
            }
            moved = true;
        }
        events.extend(std::iter::from_fn(|| s.core().poll_event()));
        if let Some(mut out) = s.take_output().map(BytesMut::from) {
            while let Some(f) = frame::decode(&mut out, 1 << 20).unwrap() {
                c.handle_frame(f, Via::Stream, now).unwrap();
            }
            moved = true;
        }
        if !moved {
            return events;
        }
    }
}

/// A server session whose publish was accepted.
fn publishing(now: Instant) -> RoqrSession<ServerCore> {
    let mut c = publisher();
    let mut s = RoqrSession::new(ServerCore::new(), RoqrLimits::default());
    pump(&mut c, &mut s, now);
    s.core().accept_publish();
    pump(&mut c, &mut s, now);
    s
}

/// A command frame on flow 0.
fn command(name: &str, args: Vec<crate::rtmp::amf0::Amf0Value>) -> RoqrFrame {
    let cmd = crate::rtmp::message::Command {
        name: name.into(),
        transaction: 0.0,
        object: crate::rtmp::amf0::Amf0Value::Null,
        args,
    };
    RoqrFrame { flow: 0, message: RtmpMessage::Command(cmd).to_message(0, 0) }
}

fn publisher() -> RoqrSession<ClientCore> {
    let mut core = ClientCore::new(ClientMode::Publish, "live", "cam", "rtmp+quic://h/live");
    core.start();
    RoqrSession::new(core, RoqrLimits::default())
}

#[test]
fn publish_over_roqr_needs_no_handshake_and_no_control_messages() {
    let now = Instant::now();
    let mut c = publisher();
    let mut s = RoqrSession::new(ServerCore::new(), RoqrLimits::default());
    let first = c.take_output().unwrap();
    // The first bytes are a frame on flow 0 carrying the connect command (type 20).
    assert_eq!((first[0], first[2]), (0, 20));
    let mut first = BytesMut::from(&first[..]);
    let f = frame::decode(&mut first, 1 << 20).unwrap().unwrap();
    s.handle_frame(f, Via::Stream, now).unwrap();
    let events = pump(&mut c, &mut s, now);
    assert!(
        matches!(events.as_slice(), [ServerEvent::PublishRequest { session_id, .. }] if session_id == "live/cam")
    );
    s.core().accept_publish();
    pump(&mut c, &mut s, now);
    assert_eq!(c.core().poll_event(), Some(ClientEvent::PublishStarted));

    // Media from a datagram (audio) and a stream (video) reach the core in order.
    let first = media_message(MediaKind::Video, 0, 1, Bytes::from_static(&[0x17, 1, 0, 0, 0, 8]));
    s.handle_frame(RoqrFrame { flow: 0, message: first }, Via::Stream, now).unwrap();
    assert!(matches!(s.core().poll_event(), Some(ServerEvent::Media(f)) if f.timestamp() == 0));
    let audio = media_message(MediaKind::Audio, 20, 1, Bytes::from_static(&[0xaf, 1, 5]));
    let video = media_message(MediaKind::Video, 10, 1, Bytes::from_static(&[0x17, 1, 0, 0, 0, 9]));
    s.handle_frame(RoqrFrame { flow: 0, message: audio }, Via::Datagram, now).unwrap();
    assert!(s.core().poll_event().is_none(), "audio at 20 waits for video to reach 20");
    s.handle_frame(RoqrFrame { flow: 0, message: video }, Via::Stream, now).unwrap();
    let ts: Vec<u32> = std::iter::from_fn(|| s.core().poll_event())
        .map(|e| match e {
            ServerEvent::Media(f) => f.timestamp(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ts, vec![10]);
    s.handle_timeout(now + Duration::from_secs(1)).unwrap();
    assert!(matches!(s.core().poll_event(), Some(ServerEvent::Media(f)) if f.timestamp() == 20));
}

#[test]
fn a_repeated_configuration_is_dropped_and_a_new_one_kept() {
    let now = Instant::now();
    let mut s = publishing(now);
    let config = |ts, b| media_message(MediaKind::Video, ts, 1, Bytes::from(vec![0x17, 0, 0, 0, 0, 1, b]));
    for (ts, b) in [(0, 1), (2000, 1), (4000, 2), (6000, 2)] {
        s.handle_frame(RoqrFrame { flow: 0, message: config(ts, b) }, Via::Stream, now).unwrap();
    }
    s.handle_timeout(now + Duration::from_secs(1)).unwrap();
    let ts: Vec<u32> = std::iter::from_fn(|| s.core().poll_event())
        .filter_map(|e| match e {
            ServerEvent::Media(f) => Some(f.timestamp()),
            _ => None,
        })
        .collect();
    assert_eq!(ts, vec![0, 4000]);
}

#[test]
fn a_delete_stream_that_overtakes_the_last_media_waits_for_the_media_streams() {
    let now = Instant::now();
    let mut s = publishing(now);
    s.stream_opened(); // the publisher's audio stream
    let audio = |ts| RoqrFrame {
        flow: 0,
        message: media_message(MediaKind::Audio, ts, 1, Bytes::from_static(&[0xaf, 1, 5])),
    };
    s.handle_frame(audio(0), Via::Stream, now).unwrap();
    // deleteStream arrives on the command stream before the audio stream's last frame.
    let delete = command("deleteStream", vec![crate::rtmp::amf0::Amf0Value::Number(1.0)]);
    s.handle_frame(delete, Via::Stream, now).unwrap();
    s.handle_frame(audio(23), Via::Stream, now).unwrap();
    s.stream_closed().unwrap();
    let got: Vec<String> = std::iter::from_fn(|| s.core().poll_event())
        .map(|e| match e {
            ServerEvent::Media(f) => format!("media {}", f.timestamp()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec!["media 0", "media 23", "Unpublish"]);
    // With a stream that never ends, the command goes after the limit.
    let mut s2 = RoqrSession::new(ServerCore::new(), RoqrLimits::default());
    s2.stream_opened();
    s2.handle_frame(command("closeStream", vec![]), Via::Stream, now).unwrap();
    assert_eq!(s2.poll_timeout(), Some(now + DEFER_LIMIT));
    s2.handle_timeout(now + DEFER_LIMIT).unwrap();
    assert!(s2.deferred.is_empty());
}

#[test]
fn unknown_flows_are_held_within_bounds() {
    let now = Instant::now();
    let limits = RoqrLimits { unknown_flow_frames: 2, ..RoqrLimits::default() };
    let mut s = RoqrSession::new(ServerCore::new(), limits);
    let f =
        |flow| RoqrFrame { flow, message: media_message(MediaKind::Audio, 0, 1, Bytes::from_static(&[1])) };
    assert_eq!(s.handle_frame(f(7), Via::Stream, now).unwrap(), Verdict::Continue);
    assert_eq!(s.handle_frame(f(8), Via::Datagram, now).unwrap(), Verdict::Continue);
    assert_eq!(s.handle_frame(f(9), Via::Datagram, now).unwrap(), Verdict::Dropped);
    assert_eq!(
        s.handle_frame(f(9), Via::Stream, now).unwrap(),
        Verdict::StopStream(ErrorCode::UnknownFlowId)
    );
}

#[test]
fn pings_are_answered_and_chunk_control_is_ignored() {
    let now = Instant::now();
    let mut s = RoqrSession::new(ServerCore::new(), RoqrLimits::default());
    let ping = RtmpMessage::UserControl(UserControl::PingRequest(77)).to_message(0, 0);
    let size = RtmpMessage::SetChunkSize(1).to_message(0, 0);
    s.handle_frame(RoqrFrame { flow: 0, message: size }, Via::Stream, now).unwrap();
    s.handle_frame(RoqrFrame { flow: 0, message: ping }, Via::Stream, now).unwrap();
    let mut out = BytesMut::from(&s.take_output().unwrap()[..]);
    let f = frame::decode(&mut out, 1 << 20).unwrap().unwrap();
    let parsed = RtmpMessage::parse(&f.message).unwrap();
    assert_eq!(parsed, RtmpMessage::UserControl(UserControl::PingResponse(77)));
}

#[test]
fn a_malformed_command_ends_the_session_with_a_general_error() {
    let now = Instant::now();
    let mut s = RoqrSession::new(ServerCore::new(), RoqrLimits::default());
    let bad = Message {
        csid: 3,
        timestamp: 0,
        type_id: 20,
        stream_id: 0,
        payload: Bytes::from_static(&[0x02, 0xff]),
    };
    let e = s.handle_frame(RoqrFrame { flow: 0, message: bad }, Via::Stream, now).unwrap_err();
    assert_eq!(e.code(), ErrorCode::General);
}

#[test]
fn a_players_media_that_overtakes_play_start_is_held_not_dropped() {
    // A late joiner's cached GOP comes on media streams of its own and may arrive before
    // `NetStream.Play.Start` on the command stream.
    let now = Instant::now();
    let mut core = ClientCore::new(ClientMode::Play, "live", "cam", "rtmp+quic://h/live");
    core.start();
    let mut c = RoqrSession::new(core, RoqrLimits::default());
    let mut s = RoqrSession::new(ServerCore::new(), RoqrLimits::default());
    let events = pump(&mut c, &mut s, now);
    assert!(events.iter().any(|e| matches!(e, ServerEvent::PlayRequest { .. })), "{events:?}");
    let media = [
        media_message(
            MediaKind::Data,
            2000,
            1,
            Bytes::from_static(&[2, 0, 10, b'o', b'n', b'M', b'e', b't', b'a', b'D', b'a', b't', b'a']),
        ),
        media_message(MediaKind::Video, 0, 1, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1])),
        media_message(MediaKind::Audio, 0, 1, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])),
        media_message(MediaKind::Video, 2000, 1, Bytes::from_static(&[0x17, 1, 0, 0, 0, 9])),
        media_message(MediaKind::Audio, 2010, 1, Bytes::from_static(&[0xaf, 1, 7])),
        media_message(MediaKind::Video, 2033, 1, Bytes::from_static(&[0x27, 1, 0, 0, 0, 9])),
    ];
    for m in &media {
        c.handle_frame(RoqrFrame { flow: 0, message: m.clone() }, Via::Stream, now).unwrap();
    }
    c.handle_timeout(now + Duration::from_secs(1)).unwrap();
    assert!(c.core().poll_event().is_none(), "media before the play started");
    s.core().accept_play();
    pump(&mut c, &mut s, now);
    let got: Vec<(MediaKind, u32)> = std::iter::from_fn(|| c.core().poll_event())
        .filter_map(|e| match e {
            ClientEvent::Media { kind, timestamp, .. } => Some((kind, timestamp)),
            _ => None,
        })
        .collect();
    let want = [
        (MediaKind::Video, 0),
        (MediaKind::Audio, 0),
        (MediaKind::Data, 2000),
        (MediaKind::Video, 2000),
        (MediaKind::Audio, 2010),
        (MediaKind::Video, 2033),
    ];
    assert_eq!(got, want);
}
