//! qrelay's protocol and client: everything the relay shares with outbound tools (the
//! `qrelay publish`/`play` commands, the bridge, the load generator), and nothing of the
//! server. The `qrelay` crate re-exports each module under the same name.
//!
//! - [`url`]: stream URLs (transport, mapping, host, app, key). Pure.
//! - [`rtmp`]: the RTMP protocol, sans-IO: handshake, chunk codec, AMF0, typed messages,
//!   the message-level session cores with their chunk framing (`rtmp::session`), and
//!   the RoQR framing (`rtmp::roqr`).
//! - [`files`]: permission checks on files that hold secrets.
//! - [`http`]: HTTP/1.1 request and response heads, sans-IO and bounded.
//! - [`media`]: frames shared by reference, codec inspection, FLV files.
//! - [`transport`]: building blocks of the I/O edge: TLS, the QUIC endpoints and
//!   transport parameters, RoQR stream/datagram I/O, admission.
//! - [`client`]: the outbound side (connect, publish, play over TCP, TLS or QUIC, a QUIC
//!   connection pool), with its own options.

pub mod client;
pub mod files;
pub mod http;
pub mod media;
pub mod rtmp;
pub mod transport;
pub mod url;
