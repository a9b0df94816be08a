//! What both session sides share: handshake, chunk decoding, protocol control messages
//! (chunk size, acknowledgement window, ping), and the output buffer.

use bytes::{Bytes, BytesMut};

use crate::rtmp::chunk::{self, ChunkDecoder, ChunkError, DecoderLimits, Message};
use crate::rtmp::handshake::{Handshake, HandshakeError};
use crate::rtmp::message::{MessageError, RtmpMessage, UserControl};

/// Settings of one RTMP session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Chunk size we send with (announced by SetChunkSize right after the handshake
    /// exchange). Larger chunks mean fewer headers; 4096 is what OBS/ffmpeg/nginx use.
    pub chunk_size: u32,
    /// Acknowledgement window we ask the peer to use.
    pub window_ack_size: u32,
    /// What the chunk decoder accepts from the peer.
    pub limits: DecoderLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { chunk_size: 4096, window_ack_size: 2_500_000, limits: DecoderLimits::default() }
    }
}

/// Why a session ended. Messages include their cause, which is therefore never also the
/// `source()`: a `{:#}` chain prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The handshake was malformed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The chunk stream was malformed or broke a limit.
    #[error("chunk stream: {0}")]
    Chunk(ChunkError),
    /// A message was malformed.
    #[error("message: {0}")]
    Message(MessageError),
    /// A well-formed message that is not allowed now (e.g. publish before connect).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer refused what we asked (client side): its status code and description.
    #[error("refused by peer: {code} ({description})")]
    Refused {
        /// NetStream/NetConnection status code.
        code: String,
        /// The peer's description.
        description: String,
    },
}

impl From<ChunkError> for SessionError {
    fn from(e: ChunkError) -> Self {
        Self::Chunk(e)
    }
}

impl From<MessageError> for SessionError {
    fn from(e: MessageError) -> Self {
        Self::Message(e)
    }
}

/// Handshake, chunk decoding and control-message handling shared by both sides.
#[derive(Debug)]
pub(super) struct Core {
    handshake: Option<Handshake>,
    decoder: ChunkDecoder,
    inbuf: BytesMut,
    out: BytesMut,
    pub(super) out_chunk_size: u32,
    received: u64,
    last_ack: u64,
    peer_window: u32,
}

impl Core {
    pub(super) fn new(handshake: Handshake, config: &SessionConfig) -> Self {
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

    pub(super) fn handshake_done(&self) -> bool {
        self.handshake.is_none()
    }

    /// Appends raw bytes from the peer, running the handshake while it lasts.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<(), SessionError> {
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
    pub(super) fn queue_raw(&mut self, data: &[u8]) {
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

    /// Next message the session layer must handle. Protocol control is handled here.
    pub(super) fn next_message(&mut self) -> Result<Option<(Message, RtmpMessage)>, SessionError> {
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
    pub(super) fn send(&mut self, msg: &RtmpMessage, stream_id: u32, timestamp: u32) {
        self.send_message(&msg.to_message(stream_id, timestamp));
    }

    /// Queues a chunk-layer message with the current outbound chunk size.
    pub(super) fn send_message(&mut self, msg: &Message) {
        chunk::encode_message(msg, self.out_chunk_size, &mut self.out);
    }

    /// Announces and switches to a new outbound chunk size.
    pub(super) fn set_out_chunk_size(&mut self, size: u32) {
        self.send(&RtmpMessage::SetChunkSize(size), 0, 0);
        self.out_chunk_size = size;
    }

    pub(super) fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }
}
