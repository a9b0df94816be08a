//! qrelay: a live-media relay. RTMP publish and play over TCP and over QUIC on one port,
//! fanned out by session ID (`app/stream_key`).
//!
//! Layers (DESIGN §1), each in its own module and kept apart:
//! - [`url`]: stream URLs (transport, mapping, host, app, key). Pure.
//! - [`rtmp`]: the RTMP protocol, sans-IO: handshake, chunk codec, AMF0, typed messages,
//!   the message-level session cores with their chunk framing (`rtmp::session`), and
//!   the RoQR framing (`rtmp::roqr`).
//! - [`media`]: frames shared by reference, codec inspection, FLV files.
//! - [`hub`]: live streams by session ID, GOP cache, bounded fan-out to subscribers.
//! - [`transport`]: building blocks of the I/O edge, importing no server code: TLS, the
//!   QUIC endpoints and transport parameters, RoQR stream/datagram I/O, admission.
//! - [`server`]: binds the one port, accepts (TCP, QUIC with ALPN dispatch) and drives
//!   each session (byte streams in `server::connection`, RoQR in `server::roqr_conn`)
//!   until shutdown.
//! - [`gate`]: the asynchronous decision before a publish or play is accepted, and the
//!   gate the configuration asks for: [`auth`] (publish/play tokens), then [`hooks`]
//!   (HTTP hooks).
//! - [`reason`]: why connections end or are refused, with stable codes and counters.
//! - [`client`]: the outbound side (`qrelay publish` / `qrelay play`, relays), own options.
//! - [`bridge`]: `qrelay bridge`, local RTMP for stock encoders carried upstream over RoQR.
//! - [`bench`]: `qrelay bench`, the load generator.

pub mod auth;
pub mod bench;
pub mod bridge;
pub mod client;
pub mod config;
pub mod gate;
pub mod hooks;
pub mod hub;
pub mod media;
pub mod reason;
pub mod rtmp;
pub mod server;
pub mod transport;
pub mod url;

pub use config::Config;
pub use server::{run, Server, ServerError};
