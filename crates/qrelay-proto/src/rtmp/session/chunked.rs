//! The chunk framing of RTMP (TCP, TLS and the QUIC tunnel): the handshake, the chunk
//! codec, SetChunkSize, acknowledgement windows and ping, wrapped around the
//! message-level cores. [`ServerSession`] and [`ClientSession`] are what byte-stream
//! transports drive: `handle_input(&[u8])`, `poll_event`, `take_output`.

use bytes::{Bytes, BytesMut};

use super::client::{ClientCore, ClientEvent, ClientMode};
use super::server::{ServerCore, ServerEvent};
use super::{SessionConfig, SessionError, Transmit};
use crate::media::frame::{Frame, MediaKind};
use crate::rtmp::chunk::{self, ChunkDecoder, Message};
use crate::rtmp::handshake::Handshake;
use crate::rtmp::message::{self, RtmpMessage, UserControl};

/// Handshake, chunk decoding and control-message handling shared by both sides.
#[derive(Debug)]
struct ChunkFraming {
    handshake: Option<Handshake>,
    decoder: ChunkDecoder,
    inbuf: BytesMut,
    out: BytesMut,
    out_chunk_size: u32,
    received: u64,
    last_ack: u64,
    peer_window: u32,
}

impl ChunkFraming {
    fn new(handshake: Handshake, config: &SessionConfig) -> Self {
        Self {
            handshake: Some(handshake),
            decoder: ChunkDecoder::new(config.limits),
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            out_chunk_size: chunk::DEFAULT_CHUNK_SIZE,
            received: 0,
            last_ack: 0,
            peer_window: 0,
        }
    }

    fn handshake_done(&self) -> bool {
        self.handshake.is_none()
    }

    /// Appends raw bytes from the peer, running the handshake while it lasts.
    fn feed(&mut self, data: &[u8]) -> Result<(), SessionError> {
        match &mut self.handshake {
            Some(hs) => {
                if let Some(rest) = hs.process(data, &mut self.out)? {
                    self.handshake = None;
                    self.count(rest.len());
                    self.inbuf.extend_from_slice(&rest);
                }
            }
            None => {
                self.count(data.len());
                self.inbuf.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// Raw bytes queued (mostly the client's C0+C1) before anything was received.
    fn queue_raw(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    fn count(&mut self, n: usize) {
        self.received += n as u64;
        if self.peer_window > 0 && self.received - self.last_ack >= u64::from(self.peer_window) {
            self.last_ack = self.received;
            // The sequence number is the byte count modulo 2^32 (it wraps on long sessions).
            self.send(&RtmpMessage::Acknowledgement(self.received as u32), 0, 0);
        }
    }

    /// Next message the core must handle. Protocol control is handled here.
    fn next_message(&mut self) -> Result<Option<(Message, RtmpMessage)>, SessionError> {
        if !self.handshake_done() {
            return Ok(None);
        }
        while let Some(msg) = self.decoder.decode(&mut self.inbuf)? {
            let parsed = RtmpMessage::parse(&msg)?;
            match parsed {
                RtmpMessage::SetChunkSize(n) => self.decoder.set_chunk_size(n)?,
                RtmpMessage::WindowAckSize(n) => self.peer_window = n,
                RtmpMessage::Abort(csid) => self.decoder.abort(csid),
                RtmpMessage::Acknowledgement(_) => {}
                RtmpMessage::SetPeerBandwidth { .. } => {}
                RtmpMessage::UserControl(UserControl::PingRequest(t)) => {
                    self.send(&RtmpMessage::UserControl(UserControl::PingResponse(t)), 0, 0);
                }
                other => return Ok(Some((msg, other))),
            }
        }
        Ok(None)
    }

    /// Queues a message with the current outbound chunk size.
    fn send(&mut self, msg: &RtmpMessage, stream_id: u32, timestamp: u32) {
        self.send_message(&msg.to_message(stream_id, timestamp));
    }

    /// Queues a chunk-layer message with the current outbound chunk size.
    fn send_message(&mut self, msg: &Message) {
        chunk::encode_message(msg, self.out_chunk_size, &mut self.out);
    }

    /// Carries what a core transmits. `Setup` (connect accepted) announces our
    /// acknowledgement window, peer bandwidth and chunk size before the answer.
    fn transmit(&mut self, t: Transmit, config: &SessionConfig) {
        match t {
            Transmit::Message(m) => self.send_message(&m),
            Transmit::Setup => {
                self.send(&RtmpMessage::WindowAckSize(config.window_ack_size), 0, 0);
                self.send(&RtmpMessage::SetPeerBandwidth { size: config.window_ack_size, limit: 2 }, 0, 0);
                self.set_out_chunk_size(config.chunk_size);
            }
        }
    }

    /// Announces and switches to a new outbound chunk size.
    fn set_out_chunk_size(&mut self, size: u32) {
        self.send(&RtmpMessage::SetChunkSize(size), 0, 0);
        self.out_chunk_size = size;
    }

    fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }
}

/// Server side of one RTMP session over a byte stream.
#[derive(Debug)]
pub struct ServerSession {
    framing: ChunkFraming,
    core: ServerCore,
    config: SessionConfig,
}

impl ServerSession {
    /// A session waiting for C0+C1.
    pub fn new(config: SessionConfig) -> Self {
        Self { framing: ChunkFraming::new(Handshake::server(), &config), core: ServerCore::new(), config }
    }

    /// Feeds bytes from the peer and processes every whole message in them.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.framing.feed(data)?;
        while let Some((raw, msg)) = self.framing.next_message()? {
            self.core.handle_message(raw, msg)?;
        }
        self.flush();
        Ok(())
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.core.poll_event()
    }

    /// Bytes to send, if any (including what answers to requests made through
    /// [`core`](Self::core) produced since the last call).
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.flush();
        self.framing.take_output()
    }

    /// Whether `connect` has been answered.
    pub fn is_connected(&self) -> bool {
        self.core.is_connected()
    }

    /// Whether the handshake has completed.
    pub fn handshake_done(&self) -> bool {
        self.framing.handshake_done()
    }

    /// The message-level session, to answer requests (`accept_publish`, `play_ended`...);
    /// its output is framed by the next [`take_output`](Self::take_output).
    pub fn core(&mut self) -> &mut ServerCore {
        &mut self.core
    }

    /// Chunk bytes for a frame to this player. Shared with every other subscriber using
    /// the same chunk size and message stream id: encoded once per frame, not per player.
    pub fn media_bytes(&self, frame: &Frame) -> Bytes {
        self.media_encoder().encode(frame)
    }

    /// How this player's media is framed, for writers outside the session (the publisher
    /// writing to an idle player directly). Fixed once the play started.
    pub fn media_encoder(&self) -> MediaEncoder {
        MediaEncoder { chunk_size: self.framing.out_chunk_size, stream_id: self.core.play_stream_id() }
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.framing.transmit(t, &self.config);
        }
    }
}

/// A player's media framing: outbound chunk size and message stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaEncoder {
    chunk_size: u32,
    stream_id: u32,
}

impl MediaEncoder {
    /// The chunk bytes of `frame` (type 0 header first, so they stand alone), encoded at
    /// most once per frame for the common framing.
    pub fn encode(&self, frame: &Frame) -> Bytes {
        let Self { chunk_size, stream_id } = *self;
        frame.encoded((chunk_size, stream_id), || {
            let m =
                message::media_message(frame.kind(), frame.timestamp(), stream_id, frame.payload().clone());
            chunk::encode_to_bytes(&m, chunk_size)
        })
    }
}

/// Client side of one RTMP session over a byte stream.
#[derive(Debug)]
pub struct ClientSession {
    framing: ChunkFraming,
    core: ClientCore,
    config: SessionConfig,
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
        let mut framing = ChunkFraming::new(hs, &config);
        framing.queue_raw(&c0c1);
        Ok(Self { framing, core: ClientCore::new(mode, app, key, tc_url), config })
    }

    /// Adds a property to the `connect` command object (before the handshake is done).
    pub fn set_connect_property(&mut self, name: &str, value: crate::rtmp::amf0::Amf0Value) {
        self.core.set_connect_property(name, value);
    }

    /// Feeds bytes from the server.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.framing.feed(data)?;
        if !self.core.is_started() && self.framing.handshake_done() {
            // Our chunk size goes first so that connect itself is sent in large chunks.
            self.framing.set_out_chunk_size(self.config.chunk_size);
            self.core.start();
        }
        while let Some((raw, msg)) = self.framing.next_message()? {
            self.core.handle_message(raw, msg)?;
        }
        self.flush();
        Ok(())
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.core.poll_event()
    }

    /// Bytes to send, if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.framing.take_output()
    }

    /// Whether media may be sent (publish accepted).
    pub fn is_publishing(&self) -> bool {
        self.core.is_publishing()
    }

    /// Whether a play was requested and not started yet (see [`ClientCore::awaiting_play`]).
    pub fn awaiting_play(&self) -> bool {
        self.core.awaiting_play()
    }

    /// Queues a media message (only while publishing; ignored otherwise).
    pub fn send_media(&mut self, kind: MediaKind, timestamp: u32, payload: Bytes) {
        self.core.send_media(kind, timestamp, payload);
        self.flush();
    }

    /// Politely ends a publish (FCUnpublish + deleteStream).
    pub fn finish(&mut self) {
        self.core.finish();
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.framing.transmit(t, &self.config);
        }
    }
}
