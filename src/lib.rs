//! qrelay: a live-media relay. RTMP publish and play over TCP and over QUIC on one port,
//! fanned out by session ID (`app/stream_key`).
//!
//! Layers (DESIGN §1), each in its own module and kept apart:
//! - [`url`]: stream URLs (transport, mapping, host, app, key). Pure.
//! - [`rtmp`]: the RTMP protocol, sans-IO: handshake, chunk codec, AMF0, typed messages,
//!   and the server/client session state machines (bytes in, events and bytes out).
//! - [`media`]: frames shared by reference, codec inspection, FLV files.
//! - [`hub`]: live streams by session ID, GOP cache, bounded fan-out to subscribers.
//! - [`transport`]: the I/O edge: TCP listener, the one QUIC endpoint with ALPN dispatch,
//!   TLS and certificates.
//! - [`connection`]: one task per RTMP session driving a session machine over a byte stream.
//! - [`gate`]: the asynchronous decision before a publish or play is accepted.
//! - [`roqr_conn`]: one task per RoQR connection (commands on the first bidirectional
//!   stream, media on any stream or datagram).
//! - [`client`]: the outbound side (`qrelay publish` / `qrelay play`).
//! - [`bench`]: `qrelay bench`, the load generator.
//! - [`bridge`]: `qrelay bridge`, local RTMP for stock encoders carried upstream over RoQR.
//! - [`server`]: binds the port and runs everything until shutdown.

pub mod bench;
pub mod bridge;
pub mod client;
pub mod config;
pub mod connection;
pub mod gate;
pub mod hub;
pub mod media;
pub mod reason;
pub mod roqr_conn;
pub mod rtmp;
pub mod server;
pub mod transport;
pub mod url;

pub use config::Config;
pub use server::{run, Server};
