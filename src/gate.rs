//! The decision point before a publish or play is accepted: every transport asks the
//! server's [`Gate`] and awaits its answer in the session's own task, so a decision that
//! takes time (an HTTP hook, a token check, a registry lookup) holds up only the session
//! that asked. The default gate lets everything through; the hub's own rules (one
//! publisher per session ID, the publisher limit) apply after it. [`from_config`] builds
//! the configured one: tokens (`auth`) first, then the HTTP hooks, in a [`Chain`].

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::reason::Reason;
use crate::url::{query_params, redact_tokens};

/// What a session asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Send media under the session ID.
    Publish,
    /// Receive it.
    Play,
}

/// A publish or play request, as a gate sees it. Its `Debug` form hides tokens.
#[derive(Clone)]
pub struct Request {
    /// Publish or play.
    pub role: Role,
    /// `app/key` without queries.
    pub session_id: String,
    /// The application from `connect`, with its query (`live?token=...`, from the app or
    /// tcUrl): for the gate, never for logs.
    pub app: String,
    /// The stream key with its query (`?token=...`): for the gate, never for logs.
    pub key: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// `tcp`, `tls`, `quic` (tunnel) or `roqr`.
    pub transport: &'static str,
}

impl Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("role", &self.role)
            .field("session_id", &self.session_id)
            .field("app", &redact_tokens(&self.app))
            .field("key", &redact_tokens(&self.key))
            .field("peer", &self.peer)
            .field("transport", &self.transport)
            .finish()
    }
}

impl Request {
    /// The application: the session ID up to its last `/`. Taken from the session ID,
    /// never from how the client split it, so app `live` with key `a/cam` and app
    /// `live/a` with key `cam` (both session `live/a/cam`) are one and the same to every
    /// gate, rule and hook; HTTP, WebTransport and control API paths split the same way.
    pub fn app_name(&self) -> &str {
        self.session_id.rsplit_once('/').map_or("", |(app, _)| app)
    }

    /// The stream key: the session ID's last segment (see [`Request::app_name`]).
    pub fn key_name(&self) -> &str {
        self.session_id.rsplit_once('/').map_or(self.session_id.as_str(), |(_, key)| key)
    }

    /// The query parameters of the key, then those of the app, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        query_params(query_of(&self.key)).chain(query_params(query_of(&self.app)))
    }

    /// The first value of parameter `name` (the key's before the app's).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// The query of an app or key (after its first `?`), empty without one.
fn query_of(s: &str) -> &str {
    s.split_once('?').map_or("", |(_, q)| q)
}

/// Why a gate refused, as told to the peer (`message`) and counted (`reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Counted and logged under this reason.
    pub reason: Reason,
    /// The status description the peer gets. Never holds a token.
    pub message: String,
}

/// A gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead (the hub's rules still apply).
    Allow,
    /// Refused.
    Refuse(Refusal),
}

impl Decision {
    /// A refusal for `reason`, telling the peer `message`.
    pub fn refuse(reason: Reason, message: impl Into<String>) -> Self {
        Decision::Refuse(Refusal { reason, message: message.into() })
    }
}

/// A decision that may take time.
pub type Pending = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// Decides publish and play requests.
pub trait Gate: Send + Sync + Debug + 'static {
    /// The decision on `request`; it is bounded by the caller's time limit.
    fn decide(&self, request: &Request) -> Pending;

    /// A request this gate (and every other of the server's) allowed has ended: the
    /// publish or play stopped, the player's wait for its publisher ran out, the hub
    /// refused it after all, or the connection closed. Called exactly once per allowed
    /// request, from the session's task: it must not block (notifications are sent from
    /// tasks of their own).
    fn ended(&self, _request: &Request) {}
}

/// A request the gate allowed, held for as long as it lasts: the gate hears of its end
/// ([`Gate::ended`]) once, when this is dropped, however the session ends.
#[derive(Debug)]
pub struct Allowed {
    gate: Arc<dyn Gate>,
    request: Request,
}

impl Allowed {
    /// Holds `request`, which `gate` allowed.
    pub fn new(gate: Arc<dyn Gate>, request: Request) -> Self {
        Self { gate, request }
    }
}

impl Drop for Allowed {
    fn drop(&mut self) {
        self.gate.ended(&self.request);
    }
}

/// Lets everything through (the embedded default).
#[derive(Debug, Default, Clone, Copy)]
pub struct Open;

impl Gate for Open {
    fn decide(&self, _: &Request) -> Pending {
        Box::pin(std::future::ready(Decision::Allow))
    }
}

/// Gates asked in order: the first refusal is the answer, and later gates are not asked.
#[derive(Debug, Clone)]
pub struct Chain(Vec<Arc<dyn Gate>>);

impl Chain {
    /// The gates, in the order they are asked.
    pub fn new(gates: Vec<Arc<dyn Gate>>) -> Self {
        Self(gates)
    }
}

impl Gate for Chain {
    fn decide(&self, request: &Request) -> Pending {
        let gates = self.0.clone();
        let request = request.clone();
        Box::pin(async move {
            for gate in &gates {
                if let refused @ Decision::Refuse(_) = gate.decide(&request).await {
                    return refused;
                }
            }
            Decision::Allow
        })
    }

    fn ended(&self, request: &Request) {
        for gate in &self.0 {
            gate.ended(request);
        }
    }
}

/// Why the configured gate could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Tokens are required but cannot be checked.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The hooks' HTTP client could not be made.
    #[error(transparent)]
    Hooks(#[from] crate::hooks::HookError),
}

/// What [`from_config`] builds.
#[derive(Debug)]
pub struct Configured {
    /// The gate to install.
    pub gate: Arc<dyn Gate>,
    /// The token rules and secret, when a secret is configured (for minting tokens, e.g.
    /// by the control API, even when no mode needs one).
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// How the hooks' notifications went, when hooks are configured (for `/metrics`).
    pub hooks: Option<Arc<crate::hooks::HookStats>>,
}

/// The gates the configuration asks for: token checks (`[auth]`), then the HTTP hooks
/// (`[hooks]`), so a hook never hears of a request without a valid token.
pub fn from_config(config: &crate::Config) -> Result<Configured, GateError> {
    let auth = crate::auth::Auth::from_config(&config.auth)?.map(Arc::new);
    let mut gates: Vec<Arc<dyn Gate>> = Vec::new();
    if let Some(a) = auth.as_ref().filter(|a| a.checks_tokens()) {
        gates.push(a.clone());
    }
    let hooks = crate::hooks::Hooks::from_config(&config.hooks)?;
    let hook_stats = hooks.as_ref().map(crate::hooks::Hooks::stats);
    if let Some(hooks) = hooks {
        gates.push(Arc::new(hooks));
    }
    let gate: Arc<dyn Gate> = match gates.len() {
        0 => Arc::new(Open),
        1 => gates.remove(0),
        _ => Arc::new(Chain::new(gates)),
    };
    Ok(Configured { gate, auth, hooks: hook_stats })
}

/// Asks `gate`, refusing when it does not answer within `limit`.
pub async fn decide(gate: &dyn Gate, request: &Request, limit: Duration) -> Decision {
    tokio::time::timeout(limit, gate.decide(request))
        .await
        .unwrap_or_else(|_| Decision::refuse(Reason::Refused, "the publish/play decision timed out"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn request() -> Request {
        Request {
            role: Role::Publish,
            session_id: "live/cam1".into(),
            app: "live?token=secret-a&x=1".into(),
            key: "cam1?token=secret-k".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            transport: "tcp",
        }
    }

    #[test]
    fn the_keys_parameters_come_first_and_debug_hides_tokens() {
        let r = request();
        assert_eq!((r.app_name(), r.key_name()), ("live", "cam1"));
        assert_eq!(r.param("token"), Some("secret-k"));
        assert_eq!(r.param("x"), Some("1"));
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret") && shown.contains("token=***"), "{shown}");
    }

    /// Answers `answer` and counts what it was asked and told.
    #[derive(Debug)]
    struct Counting {
        answer: Decision,
        asked: AtomicUsize,
        ended: AtomicUsize,
    }

    impl Gate for Counting {
        fn decide(&self, _: &Request) -> Pending {
            self.asked.fetch_add(1, Ordering::Relaxed);
            Box::pin(std::future::ready(self.answer.clone()))
        }
        fn ended(&self, _: &Request) {
            self.ended.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_chain_stops_at_the_first_refusal_and_tells_every_gate_of_an_end() {
        let gate =
            |answer| Arc::new(Counting { answer, asked: AtomicUsize::new(0), ended: AtomicUsize::new(0) });
        let (allow, refuse, last) = (
            gate(Decision::Allow),
            gate(Decision::refuse(Reason::TokenMissing, "no")),
            gate(Decision::Allow),
        );
        let chain = Chain::new(vec![allow.clone(), refuse.clone(), last.clone()]);
        let got = decide(&chain, &request(), Duration::from_secs(1)).await;
        assert_eq!(got, Decision::refuse(Reason::TokenMissing, "no"));
        let asked = |g: &Counting| g.asked.load(Ordering::Relaxed);
        assert_eq!((asked(&allow), asked(&refuse), asked(&last)), (1, 1, 0));
        chain.ended(&request());
        assert!([&allow, &refuse, &last].iter().all(|g| g.ended.load(Ordering::Relaxed) == 1));
        let open = Chain::new(vec![allow, last]);
        assert_eq!(decide(&open, &request(), Duration::from_secs(1)).await, Decision::Allow);
    }
}
