//! Relays between nodes: the relay as a client of other servers. [`pull`]: an edge
//! playing a stream from an origin on demand and publishing it into its own hub.
//! [`push`]: published streams forwarded to configured targets. Shared pieces: node URLs
//! and whether an address is this node ([`node`]), reconnect backoff ([`backoff`]), hop
//! counts that keep chains finite ([`hops`]), splicing a stream across upstream
//! reconnects ([`splice`]), and how relay clients reach other servers
//! ([`client_options`]).
//!
//! A relay link is an ordinary hub subscriber or publisher on one side and an
//! [`RtmpClient`](crate::client::RtmpClient) on the other: GOP cache, bounded queues and
//! skip-to-keyframe apply to it as to any player, so a slow or failing peer costs
//! bounded memory and never holds up a publisher.

pub mod backoff;
pub mod hops;
pub mod node;
pub mod pull;
pub mod push;
pub mod splice;

use std::time::Duration;

use crate::client::ClientOptions;
use crate::config::Config;

/// How relay links reach other servers: `relay_ca` / `relay_insecure` (or the web PKI)
/// for TLS and QUIC, the relay's own session and QUIC settings, `handshake_timeout_ms`
/// for reaching a server and getting its answer.
pub fn client_options(config: &Config) -> ClientOptions {
    ClientOptions {
        trust: config.relay_trust(),
        session: config.session(),
        quic: config.quic(),
        max_latency: Duration::from_millis(config.max_latency_ms),
        connect_timeout: Duration::from_millis(config.handshake_timeout_ms),
        ..ClientOptions::default()
    }
}
