//! The RTMP handshake (C0/C1/C2 and S0/S1/S2), sans-IO. rml_rtmp does the work, both the
//! plain and the digest (Flash Player 9) forms; this wrapper gives it our error type and
//! a byte-buffer interface.

use bytes::{BufMut, BytesMut};
use rml_rtmp::handshake::{Handshake as RmlHandshake, HandshakeProcessResult, PeerType};

/// Size of C0+C1 (and S0+S1), which is all a peer sends before it hears back.
pub const C0_C1_LEN: usize = 1 + 1536;

/// Why a handshake failed. The message includes rml_rtmp's, which is therefore not
/// also the `source()` (a `{:#}` chain would print it twice).
#[derive(Debug, thiserror::Error)]
#[error("RTMP handshake failed: {0}")]
pub struct HandshakeError(rml_rtmp::handshake::HandshakeError);

impl From<rml_rtmp::handshake::HandshakeError> for HandshakeError {
    fn from(e: rml_rtmp::handshake::HandshakeError) -> Self {
        Self(e)
    }
}

/// Handshake progress for one side of a connection.
pub struct Handshake {
    inner: RmlHandshake,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handshake")
    }
}

impl Handshake {
    /// The server side; it answers once C0+C1 arrive.
    pub fn server() -> Self {
        Self { inner: RmlHandshake::new(PeerType::Server) }
    }

    /// The client side and its C0+C1, which must be sent first.
    pub fn client() -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut inner = RmlHandshake::new(PeerType::Client);
        let c0c1 = inner.generate_outbound_p0_and_p1()?;
        Ok((Self { inner }, c0c1))
    }

    /// Feeds received bytes; appends any response to `out`. Returns the bytes that followed
    /// the handshake once it is complete (the start of the chunk stream), `None` before.
    pub fn process(&mut self, data: &[u8], out: &mut BytesMut) -> Result<Option<Vec<u8>>, HandshakeError> {
        match self.inner.process_bytes(data)? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                out.put_slice(&response_bytes);
                Ok(None)
            }
            HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                out.put_slice(&response_bytes);
                Ok(Some(remaining_bytes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_complete() {
        let (mut client, c0c1) = Handshake::client().unwrap();
        let mut server = Handshake::server();
        let mut s_out = BytesMut::new();
        assert!(server.process(&c0c1, &mut s_out).unwrap().is_none());
        let mut c_out = BytesMut::new();
        let rest = client.process(&s_out, &mut c_out).unwrap();
        assert_eq!(rest, Some(vec![]));
        c_out.put_slice(b"chunks");
        let rest = server.process(&c_out, &mut BytesMut::new()).unwrap();
        assert_eq!(rest.as_deref(), Some(&b"chunks"[..]));
    }

    #[test]
    fn wrong_version_byte_is_refused() {
        let mut server = Handshake::server();
        let mut bad = vec![6u8];
        bad.extend_from_slice(&[0; 1536]);
        assert!(server.process(&bad, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn plain_handshake_with_zero_c1_is_accepted() {
        let mut server = Handshake::server();
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0; 1536]);
        let mut out = BytesMut::new();
        assert!(server.process(&c0c1, &mut out).unwrap().is_none());
        assert_eq!(out.len(), 1 + 1536 + 1536);
        // C2 echoes S1.
        let s1 = out[1..1537].to_vec();
        assert!(server.process(&s1, &mut BytesMut::new()).unwrap().is_some());
    }
}
