//! HTTP hooks (`[hooks]`): a JSON POST to an operator's URL when a publish or play is
//! asked for (`publish`, `play`: a 2xx answer allows it, anything else, no answer within
//! `hooks.timeout_ms` or no connection refuses it) and when an allowed one ends
//! (`unpublish`, `stop`: notifications, sent from tasks of their own, at most
//! [`MAX_NOTIFICATIONS`] in flight). [`Hooks`] is a [`Gate`]: a decision is awaited in
//! the asking session's own task, so a slow hook delays that session only.
//!
//! The body: `{"action", "session_id", "app", "key", "client", "transport", "query"}`,
//! with the app and key without their queries and `query` their parameters without the
//! token (tokens never leave the relay).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request as HttpRequest, StatusCode, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::{debug, warn, Instrument};

use crate::auth::TOKEN_PARAM;
use crate::config::HooksConfig;
use crate::gate::{Decision, Gate, Pending, Request, Role};
use crate::reason::Reason;
use crate::transport::tls;

/// Notifications (`unpublish`, `stop`) in flight at once; more are dropped (and counted)
/// rather than queued without bound behind a slow endpoint.
pub const MAX_NOTIFICATIONS: usize = 256;

/// Why the hooks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The TLS client for `https://` hooks.
    #[error("hooks: {0}")]
    Tls(#[from] tls::TlsError),
    /// A URL that is not an absolute `http://` or `https://` URL.
    #[error("hooks.{name}: {reason}")]
    Url {
        /// The hook's key.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks a hook URL: absolute, `http` or `https`, with a host.
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}`: only http:// and https:// hooks are supported")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

/// How the notifications went (for metrics and tests).
#[derive(Debug, Default)]
pub struct HookStats {
    /// Answered with 2xx.
    pub delivered: AtomicU64,
    /// Answered otherwise, unreachable or timed out.
    pub failed: AtomicU64,
    /// Not sent: [`MAX_NOTIFICATIONS`] were already in flight.
    pub dropped: AtomicU64,
}

/// The HTTP/1 client hooks and the JWKS fetch (`auth::jwks`) use.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for `http://` and `https://` URLs, trusting the web PKI roots.
pub(crate) fn http_client() -> Result<HttpClient, tls::TlsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::rtmps_client_config(&tls::Trust::WebPki)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // Idle connections kept are bounded too; open ones are by the hooks' semaphores.
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(32)
        .build(connector))
}

/// The configured hooks with their HTTP client.
#[derive(Debug, Clone)]
pub struct Hooks {
    client: HttpClient,
    publish: Option<Uri>,
    unpublish: Option<Uri>,
    play: Option<Uri>,
    stop: Option<Uri>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    /// Decisions waiting for a hook (`[hooks] max_in_flight`).
    deciding: Arc<Semaphore>,
    stats: Arc<HookStats>,
}

/// The JSON body of every hook.
#[derive(Debug, Serialize)]
struct Event<'a> {
    action: &'static str,
    session_id: &'a str,
    app: &'a str,
    key: &'a str,
    client: String,
    transport: &'static str,
    query: BTreeMap<&'a str, &'a str>,
}

/// Why a hook gave no answer.
#[derive(Debug)]
enum Failure {
    Timeout,
    Unreachable(String),
}

impl Hooks {
    /// The hooks of `[hooks]`; `None` when none is configured.
    pub fn from_config(config: &HooksConfig) -> Result<Option<Self>, HookError> {
        if config.urls().next().is_none() {
            return Ok(None);
        }
        let uri = |name: &'static str, url: &Option<String>| {
            url.as_deref().map(check_url).transpose().map_err(|reason| HookError::Url { name, reason })
        };
        Ok(Some(Self {
            client: http_client()?,
            publish: uri("publish", &config.publish)?,
            unpublish: uri("unpublish", &config.unpublish)?,
            play: uri("play", &config.play)?,
            stop: uri("stop", &config.stop)?,
            timeout: Duration::from_millis(config.timeout_ms),
            in_flight: Arc::new(Semaphore::new(MAX_NOTIFICATIONS)),
            deciding: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            stats: Arc::default(),
        }))
    }

    /// How the notifications went.
    pub fn stats(&self) -> Arc<HookStats> {
        self.stats.clone()
    }

    /// POSTs `body` to `uri`: the answer's status, or why there is none within the
    /// timeout. The answer's body is not read (it decides nothing).
    async fn post(
        client: HttpClient,
        uri: Uri,
        body: Bytes,
        timeout: Duration,
    ) -> Result<StatusCode, Failure> {
        let request = HttpRequest::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("qrelay/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) => Ok(response.status()),
            Ok(Err(e)) => Err(Failure::Unreachable(error_chain(&e))),
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// An error with its causes, `: `-separated (hyper's own message is only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The hook body for `request` as JSON.
fn body(action: &'static str, request: &Request) -> Bytes {
    let mut query = BTreeMap::new();
    for (name, value) in request.params().filter(|(n, _)| *n != TOKEN_PARAM) {
        // The key's parameters before the app's, as the token is looked up.
        query.entry(name).or_insert(value);
    }
    let event = Event {
        action,
        session_id: &request.session_id,
        app: request.app_name(),
        key: request.key_name(),
        client: request.peer.to_string(),
        transport: request.transport,
        query,
    };
    serde_json::to_vec(&event).map(Bytes::from).unwrap_or_default()
}

impl Gate for Hooks {
    fn decide(&self, request: &Request) -> Pending {
        let (action, uri) = match request.role {
            Role::Publish => ("publish", &self.publish),
            Role::Play => ("play", &self.play),
        };
        let Some(uri) = uri.clone() else { return Box::pin(std::future::ready(Decision::Allow)) };
        let Ok(permit) = self.deciding.clone().try_acquire_owned() else {
            // Fails closed: an unchecked publish or play is worse than a refused one.
            warn!(hook = action, "hook decision refused: too many in flight");
            let why = format!("the {action} hook is overloaded; try again");
            return Box::pin(std::future::ready(Decision::refuse(Reason::HookOverloaded, why)));
        };
        let (client, timeout, body) = (self.client.clone(), self.timeout, body(action, request));
        Box::pin(async move {
            let _permit = permit;
            match Self::post(client, uri, body, timeout).await {
                Ok(status) if status.is_success() => Decision::Allow,
                Ok(status) => Decision::refuse(
                    Reason::HookRefused,
                    format!("refused by the {action} hook (HTTP {})", status.as_u16()),
                ),
                Err(Failure::Timeout) => {
                    Decision::refuse(Reason::HookTimeout, format!("the {action} hook did not answer in time"))
                }
                Err(Failure::Unreachable(e)) => {
                    // The URL stays out of logs: an operator may keep a credential in it.
                    warn!(hook = action, error = %e, "hook unreachable");
                    Decision::refuse(Reason::HookFailed, format!("the {action} hook could not be reached"))
                }
            }
        })
    }

    fn ended(&self, request: &Request) {
        let (action, uri) = match request.role {
            Role::Publish => ("unpublish", &self.unpublish),
            Role::Play => ("stop", &self.stop),
        };
        let Some(uri) = uri.clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return warn!(hook = action, "hook notification dropped: {MAX_NOTIFICATIONS} already in flight");
        };
        let (client, timeout, stats, body) =
            (self.client.clone(), self.timeout, self.stats.clone(), body(action, request));
        let notify = async move {
            let _permit = permit;
            match Self::post(client, uri, body, timeout).await {
                Ok(status) if status.is_success() => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    debug!(hook = action, "hook notified");
                }
                outcome => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    let outcome = match outcome {
                        Ok(status) => format!("HTTP {}", status.as_u16()),
                        Err(Failure::Timeout) => "no answer in time".to_owned(),
                        Err(Failure::Unreachable(e)) => e,
                    };
                    warn!(hook = action, %outcome, "hook notification failed");
                }
            }
        };
        runtime.spawn(notify.in_current_span());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:8080/on_publish").is_ok());
        assert!(check_url("https://hooks.example/x?key=1").is_ok());
        for bad in ["", "/relative", "ftp://h/x", "http://", "not a url"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_body_has_no_token() {
        let request = Request {
            role: Role::Publish,
            session_id: "live/cam1".into(),
            app: "live?token=secret1&region=eu".into(),
            key: "cam1?token=secret2&quality=hd&region=us".into(),
            peer: "192.0.2.1:5000".parse().unwrap(),
            transport: "roqr",
        };
        let json: serde_json::Value = serde_json::from_slice(&body("publish", &request)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "action": "publish", "session_id": "live/cam1", "app": "live", "key": "cam1",
                "client": "192.0.2.1:5000", "transport": "roqr",
                "query": {"quality": "hd", "region": "us"}
            })
        );
    }
}
