//! The server side of an RTMP session at the message level: answers
//! connect/createStream/publish/play and turns a publisher's media into frames. It never
//! sees bytes: a framing (chunks after a handshake, or RoQR frames) feeds it whole
//! messages and carries what it [`transmits`](ServerCore::poll_transmit). Whether a publish
//! or play may proceed is the owner's decision, so those arrive as events and the owner
//! answers with `accept_*`/`reject_*`.

use std::collections::VecDeque;

use super::{SessionError, Transmit};
use crate::media::frame::{Frame, MediaKind};
use crate::rtmp::amf0::{self, Amf0Value};
use crate::rtmp::chunk::Message;
use crate::rtmp::message::{self, Command, RtmpMessage, UserControl};

/// Streams one connection may create; real clients create one.
const MAX_STREAMS: u32 = 8;
/// Longest app or stream key accepted.
const MAX_NAME_LEN: usize = 1024;

/// What the server session needs its owner to act on.
#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// The client wants to publish; answer with `accept_publish` or `reject_publish`.
    PublishRequest {
        /// Message stream the publish arrived on.
        stream_id: u32,
        /// Application from `connect`, with its query (or tcUrl's) for authorisation.
        app: String,
        /// Stream key with its query.
        key: String,
        /// `app/key` without either's query.
        session_id: String,
    },
    /// The client wants to play; answer with `accept_play` or `reject_play`.
    PlayRequest {
        /// Message stream the play arrived on.
        stream_id: u32,
        /// Application from `connect`, with its query (or tcUrl's) for authorisation.
        app: String,
        /// Stream key with its query.
        key: String,
        /// `app/key` without either's query.
        session_id: String,
    },
    /// A media or data message from the publisher.
    Media(Frame),
    /// The publisher stopped (FCUnpublish, closeStream or deleteStream).
    Unpublish,
    /// The player stopped (closeStream or deleteStream).
    StopPlay,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Role {
    #[default]
    Idle,
    PublishPending(u32),
    Publishing(u32),
    PlayPending(u32),
    Playing(u32),
}

/// Server side of one RTMP session, message level.
///
/// Call order: [`handle_message`](Self::handle_message) for each whole message from the
/// peer (protocol control already taken out by the framing), then drain
/// [`poll_event`](Self::poll_event), answering requests with `accept_*`/`reject_*`, then
/// drain [`poll_transmit`](Self::poll_transmit) into the framing.
#[derive(Debug, Default)]
pub struct ServerCore {
    app: Option<String>,
    /// The command object of `connect` (capabilities a framing may look at).
    connect: Option<Amf0Value>,
    streams_created: u32,
    role: Role,
    events: VecDeque<ServerEvent>,
    out: VecDeque<Transmit>,
}

impl ServerCore {
    /// A session that has not seen `connect` yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Next message (or framing step) to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Whether `connect` has been answered.
    pub fn is_connected(&self) -> bool {
        self.app.is_some()
    }

    /// A property of the client's `connect` command object.
    pub fn connect_property(&self, name: &str) -> Option<&Amf0Value> {
        self.connect.as_ref()?.get(name)
    }

    /// The message stream a player's media goes on (1 before the play started).
    pub fn play_stream_id(&self) -> u32 {
        match self.role {
            Role::Playing(sid) => sid,
            _ => 1,
        }
    }

    fn send(&mut self, msg: &RtmpMessage, stream_id: u32, timestamp: u32) {
        self.out.push_back(Transmit::Message(msg.to_message(stream_id, timestamp)));
    }

    /// The publish may go ahead.
    pub fn accept_publish(&mut self) {
        if let Role::PublishPending(sid) = self.role {
            self.role = Role::Publishing(sid);
            self.send(&RtmpMessage::UserControl(UserControl::StreamBegin(sid)), 0, 0);
            self.on_status(sid, "status", "NetStream.Publish.Start", "Start publishing");
        }
    }

    /// The publish is refused with a NetStream status code (e.g. `NetStream.Publish.BadName`).
    pub fn reject_publish(&mut self, code: &str, description: &str) {
        if let Role::PublishPending(sid) = self.role {
            self.role = Role::Idle;
            self.on_status(sid, "error", code, description);
        }
    }

    /// The play may start: media follows, framed by the framing (chunk bytes shared per
    /// frame, or RoQR frames).
    pub fn accept_play(&mut self) {
        if let Role::PlayPending(sid) = self.role {
            self.role = Role::Playing(sid);
            self.send(&RtmpMessage::UserControl(UserControl::StreamIsRecorded(sid)), 0, 0);
            self.send(&RtmpMessage::UserControl(UserControl::StreamBegin(sid)), 0, 0);
            self.on_status(sid, "status", "NetStream.Play.Reset", "Playing and resetting");
            self.on_status(sid, "status", "NetStream.Play.Start", "Started playing");
            let mut body = bytes::BytesMut::new();
            amf0::encode_all(
                &[
                    Amf0Value::String("|RtmpSampleAccess".into()),
                    Amf0Value::Boolean(true),
                    Amf0Value::Boolean(true),
                ],
                &mut body,
            );
            let access = RtmpMessage::Media { kind: MediaKind::Data, payload: body.freeze() };
            self.send(&access, sid, 0);
        }
    }

    /// The play is refused (e.g. `NetStream.Play.StreamNotFound`).
    pub fn reject_play(&mut self, code: &str, description: &str) {
        if let Role::PlayPending(sid) = self.role {
            self.role = Role::Idle;
            self.on_status(sid, "error", code, description);
        }
    }

    /// The stream being played ended: StreamEOF and `NetStream.Play.UnpublishNotify`.
    pub fn play_ended(&mut self) {
        if let Role::Playing(sid) = self.role {
            self.send(&RtmpMessage::UserControl(UserControl::StreamEof(sid)), 0, 0);
            self.on_status(sid, "status", "NetStream.Play.UnpublishNotify", "Stream was unpublished");
            self.on_status(sid, "status", "NetStream.Play.Stop", "Stopped playing");
            self.role = Role::Idle;
        }
    }

    fn on_status(&mut self, sid: u32, level: &str, code: &str, description: &str) {
        let cmd = Command {
            name: "onStatus".into(),
            transaction: 0.0,
            object: Amf0Value::Null,
            args: vec![message::status(level, code, description)],
        };
        self.send(&RtmpMessage::Command(cmd), sid, 0);
    }

    fn result(&mut self, transaction: f64, object: Amf0Value, args: Vec<Amf0Value>) {
        // Transaction 0 means the client expects no answer.
        if transaction != 0.0 {
            let cmd = Command { name: "_result".into(), transaction, object, args };
            self.send(&RtmpMessage::Command(cmd), 0, 0);
        }
    }

    /// Handles one whole message from the peer: `raw` as framed, `msg` its typed reading.
    pub fn handle_message(&mut self, raw: Message, msg: RtmpMessage) -> Result<(), SessionError> {
        match msg {
            RtmpMessage::Media { kind, payload } => {
                if !matches!(self.role, Role::Publishing(_)) {
                    // Media from a non-publisher is dropped, as nginx-rtmp does.
                    return Ok(());
                }
                let payload =
                    if kind == MediaKind::Data { message::strip_set_data_frame(&payload) } else { payload };
                self.events.push_back(ServerEvent::Media(Frame::new(kind, raw.timestamp, payload)));
            }
            RtmpMessage::Command(cmd) => self.handle_command(raw.stream_id, cmd)?,
            _ => {}
        }
        Ok(())
    }

    fn handle_command(&mut self, stream_id: u32, cmd: Command) -> Result<(), SessionError> {
        match cmd.name.as_str() {
            "connect" => self.on_connect(cmd),
            "createStream" => {
                self.require_connected("createStream")?;
                if self.streams_created >= MAX_STREAMS {
                    return Err(SessionError::Protocol(format!("more than {MAX_STREAMS} createStream")));
                }
                self.streams_created += 1;
                let id = self.streams_created;
                self.result(cmd.transaction, Amf0Value::Null, vec![Amf0Value::Number(f64::from(id))]);
                Ok(())
            }
            "releaseStream" | "FCPublish" => {
                self.require_connected(&cmd.name)?;
                self.result(cmd.transaction, Amf0Value::Null, vec![Amf0Value::Undefined]);
                Ok(())
            }
            "getStreamLength" => {
                self.require_connected(&cmd.name)?;
                // A live stream has no length: players (ffmpeg, VLC) expect a number and
                // read 0 as "live, not seekable"; anything else they log as unexpected.
                self.result(cmd.transaction, Amf0Value::Null, vec![Amf0Value::Number(0.0)]);
                Ok(())
            }
            "publish" => {
                let (app, key) = self.stream_request("publish", stream_id, &cmd)?;
                let session_id = crate::url::session_id(&app, &key);
                self.role = Role::PublishPending(stream_id);
                self.events.push_back(ServerEvent::PublishRequest { stream_id, app, key, session_id });
                Ok(())
            }
            "play" => {
                let (app, key) = self.stream_request("play", stream_id, &cmd)?;
                let session_id = crate::url::session_id(&app, &key);
                self.role = Role::PlayPending(stream_id);
                self.events.push_back(ServerEvent::PlayRequest { stream_id, app, key, session_id });
                Ok(())
            }
            "FCUnpublish" | "closeStream" | "deleteStream" => {
                match self.role {
                    Role::Publishing(_) | Role::PublishPending(_) => {
                        self.events.push_back(ServerEvent::Unpublish);
                        self.role = Role::Idle;
                    }
                    Role::Playing(_) | Role::PlayPending(_) if cmd.name != "FCUnpublish" => {
                        self.events.push_back(ServerEvent::StopPlay);
                        self.role = Role::Idle;
                    }
                    _ => {}
                }
                Ok(())
            }
            // Answers to anything we might have sent, bandwidth checks, pause and the
            // receiveAudio/Video toggles need nothing from a live relay.
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, cmd: Command) -> Result<(), SessionError> {
        if self.app.is_some() {
            return Err(SessionError::Protocol("second connect on one session".into()));
        }
        let field = |name| cmd.object.get(name).and_then(Amf0Value::as_str);
        let mut app = field("app").map(|a| a.trim_matches('/').to_owned()).unwrap_or_default();
        // A token may come in the app (`live?token=abc`) or only in tcUrl
        // (`rtmp://host/live?token=abc`): kept with the app for authorisation, left out
        // of the session ID.
        if let (false, Some((_, query))) = (app.contains('?'), field("tcUrl").and_then(|t| t.split_once('?')))
        {
            app = format!("{app}?{query}");
        }
        let name = crate::url::without_query(&app).trim_matches('/');
        if name.is_empty() || app.len() > MAX_NAME_LEN || app.chars().any(char::is_control) {
            return Err(SessionError::Protocol("connect without a valid app".into()));
        }
        self.app = Some(app);
        self.connect = Some(cmd.object.clone());
        self.out.push_back(Transmit::Setup);
        let mut props = amf0::object([
            ("fmsVer", Amf0Value::String("FMS/3,0,1,123".into())),
            ("capabilities", Amf0Value::Number(31.0)),
        ]);
        if let (true, Amf0Value::Object(p)) = (declares_enhanced_rtmp(&cmd.object), &mut props) {
            p.extend(enhanced_rtmp_capabilities(&cmd.object));
        }
        let mut info = message::status("status", "NetConnection.Connect.Success", "Connection succeeded.");
        if let Amf0Value::Object(p) = &mut info {
            p.push(("objectEncoding".into(), Amf0Value::Number(0.0)));
        }
        let cmd =
            Command { name: "_result".into(), transaction: cmd.transaction, object: props, args: vec![info] };
        self.send(&RtmpMessage::Command(cmd), 0, 0);
        Ok(())
    }

    fn require_connected(&self, what: &str) -> Result<&str, SessionError> {
        self.app.as_deref().ok_or_else(|| SessionError::Protocol(format!("{what} before connect")))
    }

    /// Validates a publish/play and returns (app, key).
    fn stream_request(
        &self,
        what: &str,
        stream_id: u32,
        cmd: &Command,
    ) -> Result<(String, String), SessionError> {
        let app = self.require_connected(what)?.to_owned();
        if stream_id == 0 || stream_id > self.streams_created {
            return Err(SessionError::Protocol(format!(
                "{what} on stream {stream_id} that createStream never made"
            )));
        }
        if self.role != Role::Idle {
            return Err(SessionError::Protocol(format!("{what} while already publishing or playing")));
        }
        let key = cmd.args.first().and_then(Amf0Value::as_str).unwrap_or_default();
        if key.is_empty() || key.len() > MAX_NAME_LEN || key.chars().any(char::is_control) {
            return Err(SessionError::Protocol(format!("{what} without a valid stream key")));
        }
        Ok((app, key.to_owned()))
    }
}

/// E-RTMP v2 `capsEx` bits the relay supports: Multitrack (0x02) and ModEx (0x04), both
/// relayed byte for byte and parsed for keyframes and sequence headers. Not Reconnect
/// (0x01): the relay never asks a publisher to reconnect.
const CAPS_EX: f64 = (0x02 | 0x04) as f64;
/// `FourCcInfoMask.CanForward`: a relay forwards every codec without decoding it.
const CAN_FORWARD: f64 = 4.0;

/// Whether a `connect` declares E-RTMP support (v1 `fourCcList`, v2 `capsEx` or a
/// FourCC info map). Only such clients get E-RTMP properties back, so legacy clients see
/// the answer they always did.
fn declares_enhanced_rtmp(object: &Amf0Value) -> bool {
    ["fourCcList", "videoFourCcInfoMap", "audioFourCcInfoMap", "capsEx"]
        .iter()
        .any(|k| object.get(k).is_some())
}

/// The relay's E-RTMP v2 capabilities for the `connect` answer, as the spec asks a server
/// to state them: any codec forwarded (the `*` wildcard), and [`CAPS_EX`]. A v1 client's
/// `fourCcList` is answered in kind.
fn enhanced_rtmp_capabilities(object: &Amf0Value) -> Vec<(String, Amf0Value)> {
    let any = || amf0::object([("*", Amf0Value::Number(CAN_FORWARD))]);
    let mut props = vec![
        ("videoFourCcInfoMap".to_owned(), any()),
        ("audioFourCcInfoMap".to_owned(), any()),
        ("capsEx".to_owned(), Amf0Value::Number(CAPS_EX)),
    ];
    if object.get("fourCcList").is_some() {
        props.push(("fourCcList".to_owned(), Amf0Value::StrictArray(vec![Amf0Value::String("*".into())])));
    }
    props
}
