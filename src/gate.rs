//! The decision point before a publish or play is accepted: every transport asks the
//! server's [`Gate`] and awaits its answer in the session's own task, so a decision that
//! takes time (an HTTP hook, a token check, a registry lookup) holds up only the session
//! that asked. The default gate lets everything through; the hub's own rules (one
//! publisher per session ID, the publisher limit) apply after it.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// What a session asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Send media under the session ID.
    Publish,
    /// Receive it.
    Play,
}

/// A publish or play request, as a gate sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Publish or play.
    pub role: Role,
    /// `app/key` without queries.
    pub session_id: String,
    /// The application from `connect`.
    pub app: String,
    /// The stream key with its query (`?token=...`): for the gate, never for logs.
    pub key: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// `tcp`, `tls`, `quic` (tunnel) or `roqr`.
    pub transport: &'static str,
}

/// A gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead (the hub's rules still apply).
    Allow,
    /// Refused, with the reason told to the peer and logged.
    Refuse(String),
}

/// A decision that may take time.
pub type Pending = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// Decides publish and play requests.
pub trait Gate: Send + Sync + Debug + 'static {
    /// The decision on `request`; it is bounded by the caller's time limit.
    fn decide(&self, request: &Request) -> Pending;
}

/// Lets everything through (the embedded default).
#[derive(Debug, Default, Clone, Copy)]
pub struct Open;

impl Gate for Open {
    fn decide(&self, _: &Request) -> Pending {
        Box::pin(std::future::ready(Decision::Allow))
    }
}

/// Asks `gate`, refusing when it does not answer within `limit`.
pub async fn decide(gate: &dyn Gate, request: &Request, limit: Duration) -> Decision {
    tokio::time::timeout(limit, gate.decide(request))
        .await
        .unwrap_or_else(|_| Decision::Refuse("the publish/play decision timed out".into()))
}
