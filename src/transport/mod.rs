//! The I/O edge: the TCP listener (RTMP, and RTMPS detected by its first byte), the one
//! QUIC endpoint whose ALPN picks the mapping, TLS material, and admission control
//! shared by both.

pub mod admission;
pub mod quic;
pub mod roqr;
pub mod tcp;
pub mod tls;
