//! RoQR, RTMP over QUIC as in draft-gregoire-rtmp-over-quic (ALPN `roqr`), sans-IO: no
//! RTMP handshake and no chunks; every RTMP message is one [`frame`] on a QUIC stream or in
//! a QUIC DATAGRAM. [`RoqrSession`] is the second framing around the message-level
//! session cores (the first is the chunk framing in `rtmp::session`); [`reorder`] restores
//! one timeline when media arrives on several streams.

pub mod frame;
pub mod reorder;
mod session;

pub use session::{MessageCore, RoqrError, RoqrLimits, RoqrSession, Verdict, Via};

/// Application error codes of RoQR (the draft's registry), used to close connections and
/// to reset or stop streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Orderly close.
    NoError = 0x0,
    /// A failure with no more specific code (a refused or broken RTMP session).
    General = 0x1,
    /// Our own failure.
    Internal = 0x2,
    /// Bytes that are not RoQR frames.
    FrameEncoding = 0x3,
    /// A stream could not be opened or used.
    StreamCreation = 0x4,
    /// A stream's media became too old to be worth delivering (a stream reset, not a
    /// teardown).
    FrameCancelled = 0x5,
    /// Frames of a flow the receiver cannot associate with RTMP state.
    UnknownFlowId = 0x6,
    /// The peer did not do what the mapping requires (e.g. no command stream).
    ExpectationUnmet = 0x7,
}

impl ErrorCode {
    /// The code as a QUIC application error code.
    pub fn to_varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The code a QUIC application error code stands for, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0x0 => Self::NoError,
            0x1 => Self::General,
            0x2 => Self::Internal,
            0x3 => Self::FrameEncoding,
            0x4 => Self::StreamCreation,
            0x5 => Self::FrameCancelled,
            0x6 => Self::UnknownFlowId,
            0x7 => Self::ExpectationUnmet,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_round_trip() {
        for c in 0..8 {
            let code = ErrorCode::from_code(c).unwrap();
            assert_eq!(code.to_varint().into_inner(), c);
        }
        assert_eq!(ErrorCode::from_code(8), None);
    }
}
