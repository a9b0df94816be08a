//! The cluster registry: which node holds the publisher of a session ID, so that edges
//! find a stream's origin and only one node at a time takes a publisher for it.
//!
//! Two kinds, chosen by `registry` in the configuration:
//! - [`Embedded`] (the default, nothing else to run): no shared state. Edges pull from the
//!   static `--origin` list; each node's hub alone decides who publishes there.
//! - [`Redis`] (`--registry redis://host:port`): a node with a publisher holds a lease
//!   `session ID → node URL` (set if absent, with an expiry, refreshed by a heartbeat,
//!   deleted on unpublish). An origin that dies stops refreshing; its leases expire and a
//!   publisher reconnecting elsewhere takes the session ID over.
//!
//! A registry that cannot be reached never stops local publish or play: the caller
//! treats an error as "unknown" (publish goes ahead locally, edges fall back to the
//! static origins) and counts it.

mod embedded;
mod lease;
mod redis;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use embedded::Embedded;
pub use lease::PublisherLease;
pub use redis::Redis;

use crate::relay::node::NodeUrl;

/// A registry operation in flight.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the session ID's publisher lease, as this holder.
    Held(Holder),
    /// Another node does (its URL as registered).
    Taken(String),
}

/// Who holds a lease: this node and one claim of it. A publisher replaced on the same
/// node claims anew, and the one it replaced can then neither extend nor delete its
/// successor's lease: refresh and release name the claim, not only the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder(pub String);

/// Why the registry could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry server is down, unreachable or failed the request.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// It did not answer in time.
    #[error("registry did not answer within {0:?}")]
    Timeout(Duration),
    /// A value in it is not a node URL.
    #[error("registry holds a bad node URL `{0}`")]
    BadValue(String),
}

/// Where streams are published across the cluster.
pub trait Registry: Send + Sync + Debug + 'static {
    /// The node holding `session_id`'s publisher, if the registry knows one.
    fn resolve<'a>(&'a self, session_id: &'a str) -> Pending<'a, Option<NodeUrl>>;
    /// Takes `session_id`'s publisher lease for this node, or says who has it.
    fn claim<'a>(&'a self, session_id: &'a str) -> Pending<'a, Claim>;
    /// Extends the lease `holder` claimed; `false` when it is no longer its.
    fn refresh<'a>(&'a self, session_id: &'a str, holder: &'a Holder) -> Pending<'a, bool>;
    /// Gives the lease up if `holder` still holds it.
    fn release<'a>(&'a self, session_id: &'a str, holder: &'a Holder) -> Pending<'a, ()>;
    /// How long a lease lasts without a refresh (`None`: nothing to refresh).
    fn lease(&self) -> Option<Duration>;
}
