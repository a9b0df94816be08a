//! Typed RTMP messages: protocol control, user control, commands and media, converted to
//! and from the chunk layer's [`Message`]. One place knows message type ids and layouts.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::amf0::{self, Amf0Error, Amf0Value};
use super::chunk::Message;
use crate::media::frame::MediaKind;

/// Chunk stream for protocol control messages (the spec requires 2).
pub const CSID_CONTROL: u32 = 2;
/// Chunk stream for commands.
pub const CSID_COMMAND: u32 = 3;
/// Chunk stream for audio we send.
pub const CSID_AUDIO: u32 = 4;
/// Chunk stream for data messages (metadata) we send.
pub const CSID_DATA: u32 = 5;
/// Chunk stream for video we send.
pub const CSID_VIDEO: u32 = 6;

/// Largest command message decoded. Real commands are well under 1 KiB; AMF0 decoding
/// turns each input byte into up to ~32 bytes of values, so an uncapped 16 MiB command
/// would cost hundreds of MiB before its name is even checked.
pub const MAX_COMMAND_SIZE: usize = 64 * 1024;

/// User control events (message type 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControl {
    /// Event 0: the stream is now playable.
    StreamBegin(u32),
    /// Event 1: playback of the stream ended.
    StreamEof(u32),
    /// Event 2: no more data for now.
    StreamDry(u32),
    /// Event 3: client buffer length in ms.
    SetBufferLength {
        /// Message stream id.
        stream_id: u32,
        /// Buffer length in ms.
        ms: u32,
    },
    /// Event 4: the stream is recorded.
    StreamIsRecorded(u32),
    /// Event 6: ping request carrying a timestamp.
    PingRequest(u32),
    /// Event 7: ping response echoing the request's timestamp.
    PingResponse(u32),
    /// Any other event, kept opaque.
    Other {
        /// Event type.
        event: u16,
        /// Event data.
        data: Bytes,
    },
}

/// A command (AMF0 type 20, or AMF3-wrapped type 17 carrying AMF0).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Command name (`connect`, `publish`, `_result`, `onStatus`, ...).
    pub name: String,
    /// Transaction id.
    pub transaction: f64,
    /// Command object (often Null).
    pub object: Amf0Value,
    /// Further arguments.
    pub args: Vec<Amf0Value>,
}

/// One typed RTMP message.
#[derive(Debug, Clone, PartialEq)]
pub enum RtmpMessage {
    /// Type 1.
    SetChunkSize(u32),
    /// Type 2: abandon the partial message on a chunk stream.
    Abort(u32),
    /// Type 3: bytes received so far.
    Acknowledgement(u32),
    /// Type 4.
    UserControl(UserControl),
    /// Type 5.
    WindowAckSize(u32),
    /// Type 6.
    SetPeerBandwidth {
        /// Window size.
        size: u32,
        /// Limit type (0 hard, 1 soft, 2 dynamic).
        limit: u8,
    },
    /// Types 8, 9 and 18 (15 is mapped to 18 after stripping its AMF3 marker).
    Media {
        /// Audio, video or data.
        kind: MediaKind,
        /// Payload as received.
        payload: Bytes,
    },
    /// Types 20 and 17.
    Command(Command),
    /// Anything else (shared objects, aggregates...), ignored by the sessions.
    Other {
        /// Type id.
        type_id: u8,
    },
}

/// Why a message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A control message shorter than its fixed layout.
    #[error("message type {0} is too short")]
    Short(u8),
    /// A command whose AMF0 is malformed (the message includes the cause, which is
    /// therefore not also its `source()`).
    #[error("bad AMF0 in command: {0}")]
    Amf0(Amf0Error),
    /// A command larger than [`MAX_COMMAND_SIZE`].
    #[error("command of {0} bytes exceeds the limit of {MAX_COMMAND_SIZE}")]
    CommandTooLarge(usize),
    /// A command without a name or transaction id.
    #[error("command without name or transaction id")]
    BadCommand,
}

impl From<Amf0Error> for MessageError {
    fn from(e: Amf0Error) -> Self {
        Self::Amf0(e)
    }
}

impl RtmpMessage {
    /// Interprets a whole message from the chunk layer.
    pub fn parse(msg: &Message) -> Result<Self, MessageError> {
        let mut p = msg.payload.clone();
        let need = |p: &Bytes, n: usize| {
            if p.len() < n {
                Err(MessageError::Short(msg.type_id))
            } else {
                Ok(())
            }
        };
        Ok(match msg.type_id {
            1 => {
                need(&p, 4)?;
                // The top bit is reserved and must be zero: mask it like ffmpeg does.
                RtmpMessage::SetChunkSize(p.get_u32() & 0x7FFF_FFFF)
            }
            2 => {
                need(&p, 4)?;
                RtmpMessage::Abort(p.get_u32())
            }
            3 => {
                need(&p, 4)?;
                RtmpMessage::Acknowledgement(p.get_u32())
            }
            4 => {
                need(&p, 2)?;
                let event = p.get_u16();
                let word = |p: &mut Bytes| -> Result<u32, MessageError> {
                    need(p, 4)?;
                    Ok(p.get_u32())
                };
                RtmpMessage::UserControl(match event {
                    0 => UserControl::StreamBegin(word(&mut p)?),
                    1 => UserControl::StreamEof(word(&mut p)?),
                    2 => UserControl::StreamDry(word(&mut p)?),
                    3 => {
                        let stream_id = word(&mut p)?;
                        let ms = word(&mut p)?;
                        UserControl::SetBufferLength { stream_id, ms }
                    }
                    4 => UserControl::StreamIsRecorded(word(&mut p)?),
                    6 => UserControl::PingRequest(word(&mut p)?),
                    7 => UserControl::PingResponse(word(&mut p)?),
                    _ => UserControl::Other { event, data: p },
                })
            }
            5 => {
                need(&p, 4)?;
                RtmpMessage::WindowAckSize(p.get_u32())
            }
            6 => {
                need(&p, 5)?;
                let size = p.get_u32();
                RtmpMessage::SetPeerBandwidth { size, limit: p.get_u8() }
            }
            8 | 9 | 18 => RtmpMessage::Media {
                kind: MediaKind::from_type_id(msg.type_id).ok_or(MessageError::BadCommand)?,
                payload: p,
            },
            // AMF3 data: a leading 0x00 format byte, then (in practice) AMF0.
            15 => {
                need(&p, 1)?;
                p.advance(1);
                RtmpMessage::Media { kind: MediaKind::Data, payload: p }
            }
            17 | 20 if p.len() > MAX_COMMAND_SIZE => return Err(MessageError::CommandTooLarge(p.len())),
            20 => RtmpMessage::Command(parse_command(&p)?),
            17 => {
                need(&p, 1)?;
                RtmpMessage::Command(parse_command(&p[1..])?)
            }
            other => RtmpMessage::Other { type_id: other },
        })
    }

    /// Builds the chunk-layer message for this typed message.
    pub fn to_message(&self, stream_id: u32, timestamp: u32) -> Message {
        let mut b = BytesMut::new();
        let (csid, type_id) = match self {
            RtmpMessage::SetChunkSize(n) => {
                b.put_u32(*n);
                (CSID_CONTROL, 1)
            }
            RtmpMessage::Abort(n) => {
                b.put_u32(*n);
                (CSID_CONTROL, 2)
            }
            RtmpMessage::Acknowledgement(n) => {
                b.put_u32(*n);
                (CSID_CONTROL, 3)
            }
            RtmpMessage::UserControl(uc) => {
                let (event, a, bb) = match uc {
                    UserControl::StreamBegin(s) => (0, *s, None),
                    UserControl::StreamEof(s) => (1, *s, None),
                    UserControl::StreamDry(s) => (2, *s, None),
                    UserControl::SetBufferLength { stream_id, ms } => (3, *stream_id, Some(*ms)),
                    UserControl::StreamIsRecorded(s) => (4, *s, None),
                    UserControl::PingRequest(t) => (6, *t, None),
                    UserControl::PingResponse(t) => (7, *t, None),
                    UserControl::Other { event, data } => {
                        b.put_u16(*event);
                        b.put_slice(data);
                        return Message {
                            csid: CSID_CONTROL,
                            timestamp,
                            type_id: 4,
                            stream_id: 0,
                            payload: b.freeze(),
                        };
                    }
                };
                b.put_u16(event);
                b.put_u32(a);
                if let Some(x) = bb {
                    b.put_u32(x);
                }
                (CSID_CONTROL, 4)
            }
            RtmpMessage::WindowAckSize(n) => {
                b.put_u32(*n);
                (CSID_CONTROL, 5)
            }
            RtmpMessage::SetPeerBandwidth { size, limit } => {
                b.put_u32(*size);
                b.put_u8(*limit);
                (CSID_CONTROL, 6)
            }
            RtmpMessage::Media { kind, payload } => {
                return media_message(*kind, timestamp, stream_id, payload.clone());
            }
            RtmpMessage::Command(c) => {
                amf0::encode(&Amf0Value::String(c.name.clone()), &mut b);
                amf0::encode(&Amf0Value::Number(c.transaction), &mut b);
                amf0::encode(&c.object, &mut b);
                amf0::encode_all(&c.args, &mut b);
                (CSID_COMMAND, 20)
            }
            RtmpMessage::Other { type_id } => (CSID_CONTROL, *type_id),
        };
        // Protocol control and user control messages always travel on message stream 0.
        let stream_id = if type_id <= 6 { 0 } else { stream_id };
        Message { csid, timestamp, type_id, stream_id, payload: b.freeze() }
    }
}

fn parse_command(body: &[u8]) -> Result<Command, MessageError> {
    let mut values = amf0::decode_all(body)?.into_iter();
    let name = match values.next() {
        Some(Amf0Value::String(s)) => s,
        _ => return Err(MessageError::BadCommand),
    };
    // Some encoders omit the transaction id on notifications; treat as 0.
    let transaction = match values.next() {
        Some(Amf0Value::Number(n)) => n,
        None => 0.0,
        Some(_) => return Err(MessageError::BadCommand),
    };
    let object = values.next().unwrap_or(Amf0Value::Null);
    Ok(Command { name, transaction, object, args: values.collect() })
}

/// A data message body with `@setDataFrame` removed, as players expect it (`onMetaData`
/// first). Returns the payload unchanged when it does not start with `@setDataFrame`.
pub fn strip_set_data_frame(payload: &Bytes) -> Bytes {
    const PREFIX: &[u8] = b"\x02\x00\x0d@setDataFrame";
    if payload.starts_with(PREFIX) {
        payload.slice(PREFIX.len()..)
    } else {
        payload.clone()
    }
}

/// Name of a data message (`onMetaData`, `onTextData`...), if its first value is a string.
pub fn data_name(payload: &[u8]) -> Option<String> {
    let (&marker, rest) = payload.split_first()?;
    if marker != 0x02 || rest.len() < 2 {
        return None;
    }
    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let s = rest.get(2..2 + len)?;
    std::str::from_utf8(s).ok().map(str::to_owned)
}

/// A media message on its conventional chunk stream, without copying the payload.
pub fn media_message(kind: MediaKind, timestamp: u32, stream_id: u32, payload: Bytes) -> Message {
    let csid = match kind {
        MediaKind::Audio => CSID_AUDIO,
        MediaKind::Video => CSID_VIDEO,
        MediaKind::Data => CSID_DATA,
    };
    Message { csid, timestamp, type_id: kind.type_id(), stream_id, payload }
}

/// `onStatus` info object.
pub fn status(level: &str, code: &str, description: &str) -> Amf0Value {
    amf0::object([
        ("level", Amf0Value::String(level.into())),
        ("code", Amf0Value::String(code.into())),
        ("description", Amf0Value::String(description.into())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: RtmpMessage) {
        let wire = m.to_message(1, 7);
        assert_eq!(RtmpMessage::parse(&wire), Ok(m));
    }

    #[test]
    fn control_messages_round_trip() {
        round_trip(RtmpMessage::SetChunkSize(4096));
        round_trip(RtmpMessage::Acknowledgement(123));
        round_trip(RtmpMessage::WindowAckSize(5_000_000));
        round_trip(RtmpMessage::SetPeerBandwidth { size: 5_000_000, limit: 2 });
        round_trip(RtmpMessage::UserControl(UserControl::StreamBegin(1)));
        round_trip(RtmpMessage::UserControl(UserControl::SetBufferLength { stream_id: 1, ms: 3000 }));
        round_trip(RtmpMessage::UserControl(UserControl::PingRequest(99)));
    }

    #[test]
    fn command_round_trip() {
        round_trip(RtmpMessage::Command(Command {
            name: "publish".into(),
            transaction: 5.0,
            object: Amf0Value::Null,
            args: vec![Amf0Value::String("cam1".into()), Amf0Value::String("live".into())],
        }));
    }

    #[test]
    fn short_control_message_is_an_error() {
        let m =
            Message { csid: 2, timestamp: 0, type_id: 1, stream_id: 0, payload: Bytes::from_static(&[0, 1]) };
        assert_eq!(RtmpMessage::parse(&m), Err(MessageError::Short(1)));
    }

    #[test]
    fn oversized_commands_are_refused_before_decoding() {
        let m = Message {
            csid: 3,
            timestamp: 0,
            type_id: 20,
            stream_id: 0,
            payload: Bytes::from(vec![0x05; MAX_COMMAND_SIZE + 1]),
        };
        assert_eq!(RtmpMessage::parse(&m), Err(MessageError::CommandTooLarge(MAX_COMMAND_SIZE + 1)));
    }

    #[test]
    fn set_data_frame_is_stripped_without_copy() {
        let mut b = BytesMut::new();
        amf0::encode(&Amf0Value::String("@setDataFrame".into()), &mut b);
        amf0::encode(&Amf0Value::String("onMetaData".into()), &mut b);
        let payload = b.freeze();
        let stripped = strip_set_data_frame(&payload);
        assert_eq!(data_name(&stripped).as_deref(), Some("onMetaData"));
        assert_eq!(data_name(&payload).as_deref(), Some("@setDataFrame"));
    }
}
