//! The RTMP protocol, sans-IO. Nothing here touches a socket or a clock.

pub mod amf0;
pub mod chunk;
pub mod handshake;
pub mod message;
pub mod roqr;
pub mod session;
