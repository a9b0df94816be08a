//! The client side of an RTMP session at the message level: connect, createStream, then
//! publish or play. Used by `qrelay publish/play`, the bench load generator and relays,
//! under either framing (chunks after a handshake, or RoQR frames).

use std::collections::VecDeque;

use bytes::Bytes;

use super::{SessionError, Transmit};
use crate::media::frame::MediaKind;
use crate::rtmp::amf0::{self, Amf0Value};
use crate::rtmp::chunk::Message;
use crate::rtmp::message::{self, Command, RtmpMessage, UserControl};

const TXN_CONNECT: f64 = 1.0;
const TXN_CREATE_STREAM: f64 = 4.0;

/// What the client wants to do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// Send media.
    Publish,
    /// Receive media.
    Play,
}

/// What the client session reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the publish (`NetStream.Publish.Start`); media may be sent.
    PublishStarted,
    /// The server started playback (`NetStream.Play.Start`).
    PlayStarted,
    /// A media or data message from the server.
    Media {
        /// Audio, video or data.
        kind: MediaKind,
        /// Timestamp in ms.
        timestamp: u32,
        /// Payload as received.
        payload: Bytes,
    },
    /// The stream being played ended (StreamEOF or `NetStream.Play.UnpublishNotify`).
    StreamEnded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the framing to be ready (the RTMP handshake, under chunks).
    Handshaking,
    Connecting,
    CreatingStream,
    Starting(u32),
    Active(u32),
    Ended,
}

/// Client side of one RTMP session, message level.
///
/// Call order: [`start`](Self::start) once the framing can carry messages, then
/// [`handle_message`](Self::handle_message) for each whole message from the server,
/// draining [`poll_event`](Self::poll_event) and [`poll_transmit`](Self::poll_transmit)
/// after each call.
#[derive(Debug)]
pub struct ClientCore {
    mode: ClientMode,
    app: String,
    key: String,
    tc_url: String,
    /// Further `connect` properties (a framing's capabilities).
    extra: Vec<(String, Amf0Value)>,
    state: State,
    events: VecDeque<ClientEvent>,
    out: VecDeque<Transmit>,
}

impl ClientCore {
    /// A session that will connect to `app` and publish or play `key`.
    pub fn new(mode: ClientMode, app: &str, key: &str, tc_url: &str) -> Self {
        Self {
            mode,
            app: app.to_owned(),
            key: key.to_owned(),
            tc_url: tc_url.to_owned(),
            extra: Vec::new(),
            state: State::Handshaking,
            events: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Adds a property to the `connect` command object (before [`start`](Self::start)).
    pub fn set_connect_property(&mut self, name: &str, value: Amf0Value) {
        self.extra.push((name.to_owned(), value));
    }

    /// Whether `connect` was sent (the framing is past its own set-up).
    pub fn is_started(&self) -> bool {
        self.state != State::Handshaking
    }

    fn send(&mut self, msg: &RtmpMessage, stream_id: u32) {
        self.out.push_back(Transmit::Message(msg.to_message(stream_id, 0)));
    }

    /// Whether media may be sent (publish accepted).
    pub fn is_publishing(&self) -> bool {
        self.mode == ClientMode::Publish && matches!(self.state, State::Active(_))
    }

    /// Whether the server started the play (media is taken).
    pub fn is_playing(&self) -> bool {
        self.mode == ClientMode::Play && matches!(self.state, State::Active(_))
    }

    /// Whether a play was requested and the server has not started it yet: a server
    /// holds such a player until its stream is published.
    pub fn awaiting_play(&self) -> bool {
        self.mode == ClientMode::Play && matches!(self.state, State::Starting(_))
    }

    /// Queues a media message (only while publishing; ignored otherwise).
    pub fn send_media(&mut self, kind: MediaKind, timestamp: u32, payload: Bytes) {
        if let (ClientMode::Publish, State::Active(sid)) = (self.mode, self.state) {
            self.out.push_back(Transmit::Message(message::media_message(kind, timestamp, sid, payload)));
        }
    }

    /// Politely ends a publish (FCUnpublish + deleteStream).
    pub fn finish(&mut self) {
        if let State::Active(sid) | State::Starting(sid) = self.state {
            if self.mode == ClientMode::Publish {
                self.command("FCUnpublish", 0.0, vec![Amf0Value::String(self.key.clone())], 0);
            }
            self.command("deleteStream", 0.0, vec![Amf0Value::Number(f64::from(sid))], 0);
            self.state = State::Ended;
        }
    }

    fn command(&mut self, name: &str, transaction: f64, args: Vec<Amf0Value>, sid: u32) {
        let cmd = Command { name: name.into(), transaction, object: Amf0Value::Null, args };
        self.send(&RtmpMessage::Command(cmd), sid);
    }

    /// Sends `connect`: the framing is ready for messages.
    pub fn start(&mut self) {
        if self.state != State::Handshaking {
            return;
        }
        let mut obj = amf0::object([
            ("app", Amf0Value::String(self.app.clone())),
            ("type", Amf0Value::String("nonprivate".into())),
            ("flashVer", Amf0Value::String("FMLE/3.0 (compatible; qrelay)".into())),
            ("tcUrl", Amf0Value::String(self.tc_url.clone())),
        ]);
        if let Amf0Value::Object(props) = &mut obj {
            props.extend(self.extra.iter().cloned());
        }
        let cmd = Command { name: "connect".into(), transaction: TXN_CONNECT, object: obj, args: vec![] };
        self.send(&RtmpMessage::Command(cmd), 0);
        self.state = State::Connecting;
    }

    /// Handles one whole message from the server: `raw` as framed, `msg` its typed reading.
    pub fn handle_message(&mut self, raw: Message, msg: RtmpMessage) -> Result<(), SessionError> {
        match msg {
            // |RtmpSampleAccess is a player permission flag, not stream content.
            RtmpMessage::Media { kind, payload }
                if self.mode == ClientMode::Play
                    && matches!(self.state, State::Active(_))
                    && !(kind == MediaKind::Data && payload.get(3..20) == Some(b"|RtmpSampleAccess")) =>
            {
                self.events.push_back(ClientEvent::Media { kind, timestamp: raw.timestamp, payload });
            }
            RtmpMessage::UserControl(UserControl::StreamEof(_)) => self.end_stream(),
            RtmpMessage::Command(cmd) => self.handle_command(cmd)?,
            _ => {}
        }
        Ok(())
    }

    fn end_stream(&mut self) {
        if self.mode == ClientMode::Play && self.state != State::Ended {
            self.state = State::Ended;
            self.events.push_back(ClientEvent::StreamEnded);
        }
    }

    fn handle_command(&mut self, cmd: Command) -> Result<(), SessionError> {
        match (cmd.name.as_str(), self.state) {
            ("_result", State::Connecting) if cmd.transaction == TXN_CONNECT => {
                if self.mode == ClientMode::Publish {
                    let key = Amf0Value::String(self.key.clone());
                    self.command("releaseStream", 2.0, vec![key.clone()], 0);
                    self.command("FCPublish", 3.0, vec![key], 0);
                }
                self.command("createStream", TXN_CREATE_STREAM, vec![], 0);
                self.state = State::CreatingStream;
            }
            ("_result", State::CreatingStream) if cmd.transaction == TXN_CREATE_STREAM => {
                let sid = cmd
                    .args
                    .first()
                    .and_then(Amf0Value::as_number)
                    .filter(|n| *n >= 1.0 && *n <= f64::from(u32::MAX))
                    .ok_or_else(|| SessionError::Protocol("createStream result without a stream id".into()))?
                    as u32;
                let key = Amf0Value::String(self.key.clone());
                match self.mode {
                    ClientMode::Publish => {
                        self.command("publish", 5.0, vec![key, Amf0Value::String("live".into())], sid);
                    }
                    ClientMode::Play => {
                        self.command("play", 5.0, vec![key, Amf0Value::Number(-2000.0)], sid);
                        let buf = UserControl::SetBufferLength { stream_id: sid, ms: 3000 };
                        self.send(&RtmpMessage::UserControl(buf), 0);
                    }
                }
                self.state = State::Starting(sid);
            }
            ("_error", _) => {
                let (code, description) = status_fields(&cmd);
                return Err(SessionError::Refused { code, description });
            }
            ("onStatus", _) => {
                let (code, description) = status_fields(&cmd);
                let level = cmd.args.first().and_then(|i| i.get("level")).and_then(Amf0Value::as_str);
                match (code.as_str(), self.state) {
                    ("NetStream.Publish.Start", State::Starting(sid)) => {
                        self.state = State::Active(sid);
                        self.events.push_back(ClientEvent::PublishStarted);
                    }
                    ("NetStream.Play.Start", State::Starting(sid)) => {
                        self.state = State::Active(sid);
                        self.events.push_back(ClientEvent::PlayStarted);
                    }
                    ("NetStream.Play.UnpublishNotify" | "NetStream.Play.Stop", _) => self.end_stream(),
                    _ if level == Some("error") => {
                        return Err(SessionError::Refused { code, description });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn status_fields(cmd: &Command) -> (String, String) {
    let info = cmd.args.first();
    let field =
        |name| info.and_then(|i| i.get(name)).and_then(Amf0Value::as_str).unwrap_or_default().to_owned();
    (field("code"), field("description"))
}
