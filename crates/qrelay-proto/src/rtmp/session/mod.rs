//! RTMP session state machines, sans-IO, in two layers. The message-level cores
//! ([`ServerCore`], [`ClientCore`]) take and emit whole RTMP messages plus events; a
//! framing wraps each core and owns what depends on the wire: the chunk framing (handshake,
//! chunk codec, SetChunkSize, acknowledgements) for byte streams, and RoQR frames
//! (`rtmp::roqr`) for QUIC streams and datagrams.
//!
//! Call order for the byte-stream sessions ([`ServerSession`], [`ClientSession`]):
//! `handle_input` with whatever the socket produced, then drain `poll_event` until `None`,
//! acting on each event (which may queue more output), then write `take_output`. Media
//! towards a player bypasses the output buffer: its chunk bytes come from
//! [`ServerSession::media_bytes`], shared across subscribers.

mod chunked;
mod client;
mod server;
#[cfg(test)]
mod tests;

pub use chunked::{ClientSession, MediaEncoder, ServerSession};
pub use client::{ClientCore, ClientEvent, ClientMode};
pub use server::{ServerCore, ServerEvent};

use crate::rtmp::chunk::{ChunkError, DecoderLimits, Message};
use crate::rtmp::handshake::HandshakeError;
use crate::rtmp::message::MessageError;

/// What a message-level core hands its framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A whole message to send.
    Message(Message),
    /// `connect` was accepted: a framing with session parameters of its own (the chunk
    /// framing's acknowledgement window and chunk size) announces them now, before the
    /// answer. RoQR has none.
    Setup,
}

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
