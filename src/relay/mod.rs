//! Relays: the relay as a client of other relays. [`push`] forwards published streams to
//! configured targets; [`backoff`] (reconnect delays) and [`hops`] (hop counts, loops to
//! ourselves) are the rules every relay client shares.
//!
//! A relay client is an ordinary hub subscriber (or publisher) on one side and an
//! [`RtmpClient`](crate::client::RtmpClient) on the other: GOP cache, bounded queues and
//! skip-to-keyframe apply to it as to any player, so a slow or failing upstream costs
//! bounded memory and never holds up the publisher.

pub mod backoff;
pub mod hops;
pub mod push;

use std::time::Duration;

use crate::client::ClientOptions;
use crate::config::Config;
use crate::transport::tls::Trust;

/// How relay clients reach other servers: `upstream_ca` (or the web PKI) for TLS and
/// QUIC, the relay's own session and QUIC settings, `handshake_timeout_ms` for reaching
/// a server and getting its answer.
pub fn client_options(config: &Config) -> ClientOptions {
    ClientOptions {
        trust: config.upstream_ca.clone().map_or(Trust::WebPki, Trust::CaFile),
        session: config.session(),
        quic: config.quic(),
        max_latency: Duration::from_millis(config.max_latency_ms),
        connect_timeout: Duration::from_millis(config.handshake_timeout_ms),
        ..ClientOptions::default()
    }
}
