//! qrelay: a live-media relay. RTMP publish and play over TCP and over QUIC on one port,
//! fanned out by session ID (`app/stream_key`).
//!
//! Layers (DESIGN §1), each in its own module and kept apart.
//!
//! From the `qrelay-proto` crate (the protocol and client, shared with the load
//! generator in `qrelay-bench`), re-exported here under their own names:
//! - [`url`]: stream URLs (transport, mapping, host, app, key). Pure.
//! - [`rtmp`]: the RTMP protocol, sans-IO: handshake, chunk codec, AMF0, typed messages,
//!   the message-level session cores with their chunk framing (`rtmp::session`), and
//!   the RoQR framing (`rtmp::roqr`).
//! - [`media`]: frames shared by reference, codec inspection, FLV files.
//! - [`transport`]: building blocks of the I/O edge, importing no server code: TLS, the
//!   QUIC endpoints and transport parameters, RoQR stream/datagram I/O, admission.
//! - [`client`]: the outbound side (`qrelay publish` / `qrelay play`, relays, the bench),
//!   own options.
//!
//! The relay itself:
//! - [`hub`]: live streams by session ID, GOP cache, bounded fan-out to subscribers.
//! - [`server`]: binds the one port, accepts (TCP, QUIC with ALPN dispatch) and drives
//!   each session (byte streams in `server::connection`, RoQR in `server::roqr_conn`)
//!   until shutdown.
//! - [`control`]: the HTTP control plane: JSON API, Prometheus `/metrics`, status page,
//!   session allocation, drain.
//! - [`gate`]: the asynchronous decision before a publish or play is accepted, and the
//!   gate the configuration asks for: [`auth`] (publish/play tokens), then [`hooks`]
//!   (HTTP hooks).
//! - [`reason`]: why connections end or are refused, with stable codes and counters.
//! - [`relay`]: links between nodes: edges pulling streams from origins on demand, push
//!   forwarding of published streams to other servers, and the loop/hop rules they share.
//! - [`registry`]: which node publishes a session ID across a cluster (embedded or Redis).
//! - [`config`]: the one configuration type (TOML file, command line, environment).
//! - [`bridge`]: `qrelay bridge`, local RTMP for stock encoders carried upstream over RoQR.
//!
//! `qrelay bench` (the load generator) is the `qrelay-bench` crate, which the binary
//! calls; the library uses only its `/proc` readers (`control::process`).

pub mod auth;
pub mod bridge;
pub mod config;
pub mod control;
pub mod gate;
pub mod glob;
pub mod hooks;
pub mod hub;
pub mod reason;
pub mod registry;
pub mod relay;
pub mod server;

pub use qrelay_proto::{client, files, http, media, rtmp, transport, url};

pub use config::Config;
pub use server::{run, Server, ServerError};
