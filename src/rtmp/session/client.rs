//! The client side of an RTMP session: connect, createStream, then publish or play.
//! Used by `qrelay publish/play`, the bench load generator and (later) relays.

use std::collections::VecDeque;

use bytes::Bytes;

use super::core::{Core, SessionConfig, SessionError};
use crate::media::frame::MediaKind;
use crate::rtmp::amf0::{self, Amf0Value};
use crate::rtmp::chunk::Message;
use crate::rtmp::handshake::Handshake;
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
    Handshaking,
    Connecting,
    CreatingStream,
    Starting(u32),
    Active(u32),
    Ended,
}

/// Client side of one RTMP session.
#[derive(Debug)]
pub struct ClientSession {
    core: Core,
    config: SessionConfig,
    mode: ClientMode,
    app: String,
    key: String,
    tc_url: String,
    state: State,
    events: VecDeque<ClientEvent>,
}

impl ClientSession {
    /// A session whose C0+C1 are already queued in the output.
    pub fn new(
        config: SessionConfig,
        mode: ClientMode,
        app: &str,
        key: &str,
        tc_url: &str,
    ) -> Result<Self, SessionError> {
        let (hs, c0c1) = Handshake::client()?;
        let mut core = Core::new(hs, &config);
        core.queue_raw(&c0c1);
        Ok(Self {
            core,
            config,
            mode,
            app: app.to_owned(),
            key: key.to_owned(),
            tc_url: tc_url.to_owned(),
            state: State::Handshaking,
            events: VecDeque::new(),
        })
    }

    /// Feeds bytes from the server.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.core.feed(data)?;
        if self.state == State::Handshaking && self.core.handshake_done() {
            self.start_connect();
        }
        while let Some((raw, msg)) = self.core.next_message()? {
            self.handle_message(raw, msg)?;
        }
        Ok(())
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Bytes to send, if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.core.take_output()
    }

    /// Whether media may be sent (publish accepted).
    pub fn is_publishing(&self) -> bool {
        self.mode == ClientMode::Publish && matches!(self.state, State::Active(_))
    }

    /// Whether a play was requested and the server has not started it yet: a server
    /// holds such a player until its stream is published.
    pub fn awaiting_play(&self) -> bool {
        self.mode == ClientMode::Play && matches!(self.state, State::Starting(_))
    }

    /// Queues a media message (only while publishing; ignored otherwise).
    pub fn send_media(&mut self, kind: MediaKind, timestamp: u32, payload: Bytes) {
        if let (ClientMode::Publish, State::Active(sid)) = (self.mode, self.state) {
            self.core.send_message(&message::media_message(kind, timestamp, sid, payload));
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
        self.core.send(&RtmpMessage::Command(cmd), sid, 0);
    }

    fn start_connect(&mut self) {
        self.core.set_out_chunk_size(self.config.chunk_size);
        let obj = amf0::object([
            ("app", Amf0Value::String(self.app.clone())),
            ("type", Amf0Value::String("nonprivate".into())),
            ("flashVer", Amf0Value::String("FMLE/3.0 (compatible; qrelay)".into())),
            ("tcUrl", Amf0Value::String(self.tc_url.clone())),
        ]);
        let cmd = Command { name: "connect".into(), transaction: TXN_CONNECT, object: obj, args: vec![] };
        self.core.send(&RtmpMessage::Command(cmd), 0, 0);
        self.state = State::Connecting;
    }

    fn handle_message(&mut self, raw: Message, msg: RtmpMessage) -> Result<(), SessionError> {
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
                        self.core.send(&RtmpMessage::UserControl(buf), 0, 0);
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
