//! Relays between nodes: `pull` (an edge playing a stream from an origin on demand and
//! publishing it into its own hub). Shared pieces: node URLs ([`node`]), reconnect
//! backoff ([`backoff`]), and splicing a stream across upstream reconnects ([`splice`]).

pub mod backoff;
pub mod node;
pub mod pull;
pub mod splice;
