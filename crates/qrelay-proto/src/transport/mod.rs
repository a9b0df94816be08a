//! Building blocks of the I/O edge, shared by the server and the client and importing no
//! server code: TLS material and configs, the QUIC endpoints and transport parameters,
//! RoQR's stream/datagram I/O, and admission control. Accept loops, ALPN dispatch and
//! the session drivers are in `server`.

pub mod admission;
pub mod memory;
pub mod quic;
pub mod redundancy;
pub mod roqr;
pub mod tls;
