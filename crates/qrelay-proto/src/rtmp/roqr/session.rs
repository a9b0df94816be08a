//! The RoQR framing around a message-level core: frames from any stream or datagram in,
//! command frames for the first bidirectional stream out. Media towards a player is
//! framed by the I/O layer itself ([`frame::encode_header`] + the shared payload), so a
//! frame's payload is never copied per player.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::frame::{self, FrameError, RoqrFrame};
use super::reorder::Reorder;
use super::ErrorCode;
use crate::media::frame::{inspect_audio, inspect_video};
use crate::rtmp::chunk::Message;
use crate::rtmp::message::{RtmpMessage, UserControl};
use crate::rtmp::session::{ClientCore, ServerCore, SessionError, Transmit};

/// A message-level session core, as both framings drive it.
pub trait MessageCore {
    /// Handles one whole message from the peer.
    fn handle_message(&mut self, raw: Message, msg: RtmpMessage) -> Result<(), SessionError>;
    /// Next message (or framing step) to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// Whether media from the peer is taken now. A player's media travels on streams of
    /// its own and may overtake the `NetStream.Play.Start` that makes the core take it:
    /// until then it is held, not dropped.
    fn media_ready(&self) -> bool {
        true
    }
}

impl MessageCore for ServerCore {
    fn handle_message(&mut self, raw: Message, msg: RtmpMessage) -> Result<(), SessionError> {
        ServerCore::handle_message(self, raw, msg)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ServerCore::poll_transmit(self)
    }
}

impl MessageCore for ClientCore {
    fn handle_message(&mut self, raw: Message, msg: RtmpMessage) -> Result<(), SessionError> {
        ClientCore::handle_message(self, raw, msg)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ClientCore::poll_transmit(self)
    }
    fn media_ready(&self) -> bool {
        self.is_playing()
    }
}

/// Longest a stream-ending command waits for the peer's media streams to end.
const DEFER_LIMIT: Duration = Duration::from_secs(2);
/// Media messages held at most while the core does not take media yet (a late joiner's
/// cached GOP is a few hundred).
const MAX_HELD_BEFORE_START: usize = 1024;
/// Commands deferred at most (beyond, they are handled in order at once).
const MAX_DEFERRED: usize = 64;

/// Whether a message ends a publish or a play: a publisher's `FCUnpublish`,
/// `closeStream` or `deleteStream`, a player's StreamEOF or `UnpublishNotify`/`Play.Stop`.
fn ends_stream(msg: &RtmpMessage) -> bool {
    match msg {
        RtmpMessage::Command(c) => match c.name.as_str() {
            "FCUnpublish" | "closeStream" | "deleteStream" => true,
            "onStatus" => c
                .args
                .first()
                .and_then(|i| i.get("code"))
                .and_then(crate::rtmp::amf0::Amf0Value::as_str)
                .is_some_and(|code| matches!(code, "NetStream.Play.UnpublishNotify" | "NetStream.Play.Stop")),
            _ => false,
        },
        RtmpMessage::UserControl(UserControl::StreamEof(_)) => true,
        _ => false,
    }
}

/// Limits on what a peer may make a RoQR session hold.
#[derive(Debug, Clone, Copy)]
pub struct RoqrLimits {
    /// Largest frame payload (an RTMP message) accepted.
    pub max_payload: u32,
    /// Frames of flows we cannot associate held at most (the draft asks for a bound).
    pub unknown_flow_frames: usize,
    /// Bytes of such frames held at most.
    pub unknown_flow_bytes: usize,
    /// Longest a media message waits for the other tracks to catch up.
    pub reorder_hold: Duration,
}

impl Default for RoqrLimits {
    fn default() -> Self {
        Self {
            max_payload: 8 * 1024 * 1024,
            unknown_flow_frames: 64,
            unknown_flow_bytes: 256 * 1024,
            reorder_hold: Duration::from_millis(300),
        }
    }
}

/// Where a frame came from: the draft treats a bad datagram as droppable, a bad stream
/// as fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A QUIC stream (either direction, either side's).
    Stream,
    /// A QUIC DATAGRAM.
    Datagram,
}

/// What the I/O layer does with the source of a frame that was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep reading.
    Continue,
    /// Stop reading that stream with this code (its flow is over our bounds).
    StopStream(ErrorCode),
    /// The frame was dropped (a datagram over our bounds).
    Dropped,
}

/// Why a RoQR session ended.
#[derive(Debug, thiserror::Error)]
pub enum RoqrError {
    /// Bytes on a stream that are not RoQR frames.
    #[error("RoQR framing: {0}")]
    Frame(#[from] FrameError),
    /// The RTMP session broke or was refused.
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl RoqrError {
    /// The code to close the connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            RoqrError::Frame(_) => ErrorCode::FrameEncoding,
            RoqrError::Session(_) => ErrorCode::General,
        }
    }
}

/// One RTMP session over RoQR: a core ([`ServerCore`] or [`ClientCore`]) with the RoQR
/// framing, sans-IO. Call order: [`handle_frame`](Self::handle_frame) for every frame
/// read (and [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout)),
/// then drain the core's events, then send [`take_output`](Self::take_output) on the
/// command stream.
#[derive(Debug)]
pub struct RoqrSession<C> {
    core: C,
    reorder: Reorder,
    limits: RoqrLimits,
    unknown: VecDeque<RoqrFrame>,
    unknown_bytes: usize,
    out: BytesMut,
    /// Media the core sent (a publishing client), for the I/O layer's media mapping.
    media: VecDeque<Message>,
    /// The last configuration (sequence header) received per track (audio, video):
    /// senders repeat it at the start of every GOP stream, and a repeat is dropped.
    config: [Option<Bytes>; 2],
    /// Streams of the peer's other than the command stream still open (media).
    media_streams: usize,
    /// A command that ends the stream, with what followed it, held until the peer's
    /// media streams have ended (it arrives on another stream and may overtake their last
    /// frames), at most [`DEFER_LIMIT`].
    deferred: VecDeque<(Message, RtmpMessage)>,
    /// When the first deferred message arrived.
    deferred_since: Option<Instant>,
}

impl<C: MessageCore> RoqrSession<C> {
    /// A session around `core`.
    pub fn new(core: C, limits: RoqrLimits) -> Self {
        Self {
            core,
            reorder: Reorder::new(limits.reorder_hold),
            limits,
            unknown: VecDeque::new(),
            unknown_bytes: 0,
            out: BytesMut::new(),
            media: VecDeque::new(),
            config: [None, None],
            media_streams: 0,
            deferred: VecDeque::new(),
            deferred_since: None,
        }
    }

    /// The message-level session (events, accept/reject, media to send).
    pub fn core(&mut self) -> &mut C {
        &mut self.core
    }

    /// The frame limits of this session (for the I/O layer's decoders).
    pub fn limits(&self) -> RoqrLimits {
        self.limits
    }

    /// Handles one frame received at `now`.
    pub fn handle_frame(&mut self, frame: RoqrFrame, via: Via, now: Instant) -> Result<Verdict, RoqrError> {
        if frame.flow != 0 {
            return Ok(self.hold_unknown(frame, via));
        }
        let msg = frame.message;
        match msg.type_id {
            8 | 9 | 18 => {
                if self.is_repeated_config(&msg) {
                    return Ok(Verdict::Continue);
                }
                self.reorder.push(msg, now);
                self.release(now)?;
            }
            _ => {
                let parsed = RtmpMessage::parse(&msg).map_err(SessionError::from)?;
                match parsed {
                    // The frame size and QUIC's flow control replace these.
                    RtmpMessage::SetChunkSize(_)
                    | RtmpMessage::Abort(_)
                    | RtmpMessage::Acknowledgement(_)
                    | RtmpMessage::WindowAckSize(_)
                    | RtmpMessage::SetPeerBandwidth { .. } => {}
                    RtmpMessage::UserControl(UserControl::PingRequest(t)) => {
                        let pong = RtmpMessage::UserControl(UserControl::PingResponse(t)).to_message(0, 0);
                        frame::encode(0, &pong, &mut self.out);
                    }
                    other => {
                        let defer = (!self.deferred.is_empty()
                            || (self.media_streams > 0 && ends_stream(&other)))
                            && self.deferred.len() < MAX_DEFERRED;
                        if defer {
                            // The sender finished its media streams before sending this;
                            // their last frames may still be on their way to us.
                            self.deferred_since.get_or_insert(now);
                            self.deferred.push_back((msg, other));
                        } else {
                            self.command(msg, other)?;
                        }
                    }
                }
            }
        }
        Ok(Verdict::Continue)
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due, if anything waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deferred = self.deferred_since.map(|t| t + DEFER_LIMIT);
        [self.reorder.deadline(), deferred].into_iter().flatten().min()
    }

    /// Releases media and commands whose wait is over.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), RoqrError> {
        self.release(now)?;
        if self.deferred_since.is_some_and(|t| now >= t + DEFER_LIMIT) {
            self.release_deferred()?;
        }
        Ok(())
    }

    /// Whether commands wait for the peer's media streams to end.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The peer opened a stream besides the command stream.
    pub fn stream_opened(&mut self) {
        self.media_streams += 1;
    }

    /// Such a stream ended (all its frames were handled); a command that waited for the
    /// media streams goes once none is left.
    pub fn stream_closed(&mut self) -> Result<(), RoqrError> {
        self.media_streams = self.media_streams.saturating_sub(1);
        if self.media_streams == 0 {
            self.release_deferred()?;
        }
        Ok(())
    }

    fn release_deferred(&mut self) -> Result<(), RoqrError> {
        self.deferred_since = None;
        while let Some((msg, parsed)) = self.deferred.pop_front() {
            self.command(msg, parsed)?;
        }
        Ok(())
    }

    /// A non-media message for the core: media received before it goes first, unless the
    /// core does not take media yet, when it goes after (the command may be the one that
    /// starts playback).
    fn command(&mut self, msg: Message, parsed: RtmpMessage) -> Result<(), RoqrError> {
        self.deliver_held()?;
        self.core.handle_message(msg, parsed)?;
        self.deliver_held()
    }

    /// Every held message, in order, if the core takes media.
    fn deliver_held(&mut self) -> Result<(), RoqrError> {
        if self.core.media_ready() {
            let held: Vec<Message> = self.reorder.drain().collect();
            for m in held {
                self.deliver(m)?;
            }
        }
        Ok(())
    }

    /// Frames for the command stream, if any. Media the core sent is kept apart for
    /// [`take_media`](Self::take_media).
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.collect();
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// The next media message the core sent, in order, once the commands before it were
    /// taken with [`take_output`](Self::take_output).
    pub fn take_media(&mut self) -> Option<Message> {
        self.collect();
        self.media.pop_front()
    }

    fn collect(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            match t {
                Transmit::Message(m) if matches!(m.type_id, 8 | 9 | 18) => self.media.push_back(m),
                Transmit::Message(m) => frame::encode(0, &m, &mut self.out),
                // RoQR has no chunk size or acknowledgement window to announce.
                Transmit::Setup => {}
            }
        }
    }

    /// Media messages held for reordering.
    pub fn held(&self) -> usize {
        self.reorder.len()
    }

    fn release(&mut self, now: Instant) -> Result<(), RoqrError> {
        if !self.core.media_ready() {
            // Held until the core takes media, within the reorder buffer's bound: past
            // it the oldest goes, and the core drops it (a peer that sends media and never
            // starts the stream costs bounded memory).
            while self.reorder.len() > MAX_HELD_BEFORE_START {
                let oldest = self.reorder.drain().next();
                if let Some(m) = oldest {
                    self.deliver(m)?;
                }
            }
            return Ok(());
        }
        while let Some(m) = self.reorder.pop(now) {
            self.deliver(m)?;
        }
        Ok(())
    }

    fn deliver(&mut self, msg: Message) -> Result<(), RoqrError> {
        let parsed = RtmpMessage::parse(&msg).map_err(SessionError::from)?;
        self.core.handle_message(msg, parsed)?;
        Ok(())
    }

    fn is_repeated_config(&mut self, msg: &Message) -> bool {
        let track = usize::from(msg.type_id == 9);
        let header = match msg.type_id {
            8 => inspect_audio(&msg.payload).sequence_header,
            9 => inspect_video(&msg.payload).sequence_header,
            _ => false,
        };
        if !header {
            return false;
        }
        if self.config[track].as_ref() == Some(&msg.payload) {
            return true;
        }
        self.config[track] = Some(msg.payload.clone());
        false
    }

    /// No flow but 0 is bound to RTMP state here, so frames of others are held within
    /// bounds (as the draft asks) and never delivered.
    fn hold_unknown(&mut self, frame: RoqrFrame, via: Via) -> Verdict {
        let len = frame.message.payload.len();
        if self.unknown.len() < self.limits.unknown_flow_frames
            && self.unknown_bytes + len <= self.limits.unknown_flow_bytes
        {
            self.unknown_bytes += len;
            self.unknown.push_back(frame);
            return Verdict::Continue;
        }
        match via {
            Via::Stream => Verdict::StopStream(ErrorCode::UnknownFlowId),
            Via::Datagram => Verdict::Dropped,
        }
    }
}

#[cfg(test)]
mod tests;
