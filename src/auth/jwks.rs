//! Public keys from a JWKS URL (`[auth] jwks_url`, RFC 7517): fetched when the relay
//! starts, again every [`REFRESH`], and sooner when a token names a key ID the set does
//! not have (an auth service rotated its key), at most once per [`ON_DEMAND_MIN`]. A fetch
//! that fails keeps the last good set and is logged. What makes a key usable is
//! [`PublicKey::from_jwk`]'s; how tokens are checked with the keys is [`super::token`]'s.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::token::PublicKey;
use crate::hooks::HttpClient;

/// How often the set is fetched again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// Shortest time between fetches asked for by unknown key IDs: anyone can send a token
/// with a made-up `kid`, and must not make the relay hammer the auth service.
pub const ON_DEMAND_MIN: Duration = Duration::from_secs(30);
/// How soon a failed fetch is tried again (a relay that starts before its auth service
/// should not wait [`REFRESH`] for its keys).
const RETRY: Duration = Duration::from_secs(30);
/// How long one fetch may take, connection to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read: real ones are a few KiB.
const MAX_BODY: usize = 256 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 64;

/// Why a fetch did not give a key set.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// `jwks_url` is not an `http://` or `https://` URL.
    #[error("auth.jwks_url: {0}")]
    Url(String),
    /// The HTTP client could not be made.
    #[error("auth.jwks_url: {0}")]
    Tls(#[from] crate::transport::tls::TlsError),
    /// No answer, or not a 2xx one, or its body could not be read.
    #[error("fetching the JWKS: {0}")]
    Fetch(String),
    /// The body is not a JWKS (`{"keys": [...]}`).
    #[error("the JWKS is not JSON with a `keys` list: {0}")]
    Parse(String),
}

/// What a JWKS document holds: its keys are read one by one, so that one this relay
/// cannot use (RSA, another curve, a new `kty`) does not cost it the others.
#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document, and how many were passed over.
pub fn parse(body: &[u8], origin: &str) -> Result<(Vec<PublicKey>, usize), JwksError> {
    let doc: Document = serde_json::from_slice(body).map_err(|e| JwksError::Parse(e.to_string()))?;
    let total = doc.keys.len();
    let keys: Vec<PublicKey> = doc
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value(value).ok())
        .filter_map(|jwk| PublicKey::from_jwk(&jwk, origin).ok())
        .take(MAX_KEYS)
        .collect();
    let skipped = total - keys.len();
    Ok((keys, skipped))
}

/// When the last fetch asked for by an unknown key ID was made.
#[derive(Debug, Default)]
struct OnDemand {
    last: Option<Instant>,
}

/// The key set of a JWKS URL and what keeps it fresh. Shared (`Arc`) by the token gate,
/// which reads the keys and asks for fetches, and the task in [`Jwks::run`].
pub struct Jwks {
    url: Uri,
    client: HttpClient,
    keys: RwLock<Arc<[PublicKey]>>,
    /// Counts fetches that replaced the set; waiters for a new set watch it.
    generation: watch::Sender<u64>,
    /// Wakes [`Jwks::run`] for a fetch asked for by an unknown key ID.
    wake: Notify,
    on_demand: Mutex<OnDemand>,
    refresh: Duration,
    on_demand_min: Duration,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).field("keys", &self.keys().len()).finish()
    }
}

impl Jwks {
    /// The key set of `url`, empty until fetched.
    pub fn new(url: &str) -> Result<Self, JwksError> {
        Self::with_intervals(url, REFRESH, ON_DEMAND_MIN)
    }

    /// As [`Jwks::new`], fetching every `refresh` and on demand at most every
    /// `on_demand_min` (tests shorten both).
    pub fn with_intervals(url: &str, refresh: Duration, on_demand_min: Duration) -> Result<Self, JwksError> {
        let url = crate::hooks::check_url(url).map_err(JwksError::Url)?;
        Ok(Self {
            url,
            client: crate::hooks::http_client()?,
            keys: RwLock::new(Arc::from(Vec::new())),
            generation: watch::Sender::new(0),
            wake: Notify::new(),
            on_demand: Mutex::default(),
            refresh,
            on_demand_min,
        })
    }

    /// The current keys.
    pub fn keys(&self) -> Arc<[PublicKey]> {
        // Replaced whole under the lock: a poisoned lock still holds a valid set.
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn on_demand(&self) -> MutexGuard<'_, OnDemand> {
        self.on_demand.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches the set once; on success it replaces the keys, otherwise they are kept.
    /// Returns how many keys the new set has.
    pub async fn fetch(&self) -> Result<usize, JwksError> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.download())
            .await
            .map_err(|_| JwksError::Fetch(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        let (keys, skipped) = parse(&body, &self.url.to_string())?;
        let n = keys.len();
        if n == 0 {
            warn!(url = %self.url, skipped, "the JWKS has no P-256 or Ed25519 signature key");
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(keys);
        self.generation.send_modify(|g| *g += 1);
        info!(url = %self.url, keys = n, skipped, "JWKS fetched");
        Ok(n)
    }

    async fn download(&self) -> Result<Bytes, JwksError> {
        let request = Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Fetch(format!("status {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| JwksError::Fetch(format!("reading the body: {e}")))?;
        Ok(body.to_bytes())
    }

    /// Fetches, logging a failure (the last good keys stay). Whether it succeeded.
    pub async fn fetch_logged(&self) -> bool {
        match self.fetch().await {
            Ok(_) => true,
            Err(error) => {
                warn!(url = %self.url, %error, keys = self.keys().len(), "JWKS fetch failed; keeping the last good keys");
                false
            }
        }
    }

    /// Asks for a fetch because a token named a key ID the set lacks. `None` when one was
    /// asked for less than `on_demand_min` ago; otherwise a receiver that changes when a
    /// new set is in (the caller may wait for it, bounded).
    pub fn ask(&self) -> Option<watch::Receiver<u64>> {
        let now = Instant::now();
        let mut on_demand = self.on_demand();
        if on_demand.last.is_some_and(|last| now.duration_since(last) < self.on_demand_min) {
            return None;
        }
        on_demand.last = Some(now);
        let mut rx = self.generation.subscribe();
        rx.mark_unchanged();
        self.wake.notify_one();
        Some(rx)
    }

    /// Keeps the set fresh until `stop`: every `refresh` after a good fetch, sooner
    /// after a failed one (or before any; 30 s), and when [`Jwks::ask`] wakes it.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut good = *self.generation.borrow() > 0;
        loop {
            let wait = if good { self.refresh } else { RETRY.min(self.refresh) };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
            good = self.fetch_logged().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use serde_json::json;

    use super::*;
    use crate::auth::token::test_keys::{ed25519, es256};
    use crate::auth::token::{verify_with, Claims, Expect, KeyKind, Keys, TokenError, TokenRole};

    /// What the test server answers, and how many requests it had.
    #[derive(Default)]
    struct Served {
        answer: Mutex<(u16, String)>,
        hits: AtomicUsize,
    }

    impl Served {
        fn set(&self, status: u16, body: String) {
            *self.answer.lock().unwrap() = (status, body);
        }
    }

    /// A JWKS endpoint on 127.0.0.1 port 0: `GET /jwks.json` answers what `Served` holds.
    async fn serve() -> (Arc<Served>, String) {
        async fn jwks(State(s): State<Arc<Served>>) -> (StatusCode, String) {
            s.hits.fetch_add(1, Ordering::SeqCst);
            let (status, body) = s.answer.lock().unwrap().clone();
            (StatusCode::from_u16(status).unwrap(), body)
        }
        let served = Arc::new(Served::default());
        let app = Router::new().route("/jwks.json", get(jwks)).with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (served, url)
    }

    fn set(keys: &[serde_json::Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    const NOW: u64 = 1_700_000_000;

    fn claims() -> Claims {
        Claims { sub: "live/*".into(), role: TokenRole::Play, exp: NOW + 60, nbf: None }
    }

    fn check(jwks: &Jwks, token: &str) -> Result<Claims, TokenError> {
        let fetched = jwks.keys();
        verify_with(&Keys { secret: None, public: &[], fetched: &fetched }, &Expect::default(), token, NOW)
    }

    #[test]
    fn only_signature_keys_on_p256_and_ed25519_are_taken() {
        let (ec, ed) = (es256(), ed25519());
        let mut sig_for_encryption = ec.jwk("enc");
        sig_for_encryption["use"] = json!("enc");
        let mut wrong_alg = ed.jwk("alg");
        wrong_alg["alg"] = json!("ES256");
        let mut short = ec.jwk("short");
        short["x"] = json!("AAAA");
        let body = set(&[
            ec.jwk("ec"),
            ed.jwk("ed"),
            json!({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "hmac", "alg": "HS256"}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"}),
            json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"}),
            json!({"kty": "new-kind", "kid": "future"}),
            sig_for_encryption,
            wrong_alg,
            short,
        ]);
        let (keys, skipped) = parse(body.as_bytes(), "test").unwrap();
        let got: Vec<(Option<&str>, KeyKind)> = keys.iter().map(|k| (k.kid(), k.kind())).collect();
        assert_eq!(got, [(Some("ec"), KeyKind::Es256), (Some("ed"), KeyKind::Ed25519)]);
        assert_eq!(skipped, 7);
        for bad in ["", "[]", "{}", r#"{"keys": 1}"#, "not json"] {
            assert!(parse(bad.as_bytes(), "test").is_err(), "{bad}");
        }
    }

    /// Against a real HTTP server on loopback: the set is fetched, a failed fetch keeps
    /// the last good one, an unknown key ID brings a fetch at most once per interval, and
    /// the periodic refresh picks up a rotation.
    #[tokio::test]
    async fn fetched_kept_on_failure_and_refreshed() {
        let (served, url) = serve().await;
        let (a, b, c) = (es256(), ed25519(), es256());
        served.set(200, set(&[a.jwk("a")]));
        let jwks = Arc::new(
            Jwks::with_intervals(&url, Duration::from_secs(3600), Duration::from_secs(3600)).unwrap(),
        );
        assert_eq!(
            check(&jwks, &a.sign(&claims(), Some("a"))),
            Err(TokenError::UnknownKey),
            "nothing before a fetch"
        );
        assert_eq!(jwks.fetch().await.unwrap(), 1);
        assert_eq!(check(&jwks, &a.sign(&claims(), Some("a"))), Ok(claims()));
        assert_eq!(check(&jwks, &a.sign(&claims(), None)), Ok(claims()));

        // Failures keep the last good set: an error status, a body that is not a JWKS, a
        // body too large, nobody listening.
        for (status, body) in
            [(500, "oops".to_owned()), (200, "<html>".to_owned()), (200, "x".repeat(MAX_BODY + 1))]
        {
            served.set(status, body);
            assert!(!jwks.fetch_logged().await);
            assert_eq!(check(&jwks, &a.sign(&claims(), Some("a"))), Ok(claims()), "after a {status}");
        }
        let gone = Jwks::with_intervals("http://127.0.0.1:9/jwks.json", REFRESH, ON_DEMAND_MIN).unwrap();
        assert!(gone.fetch().await.is_err());

        // An unknown kid asks for a fetch: the task fetches, the waiter sees the new set.
        served.set(200, set(&[a.jwk("a"), b.jwk("b")]));
        let stop = CancellationToken::new();
        let task = tokio::spawn(jwks.clone().run(stop.clone()));
        let token_b = b.sign(&claims(), Some("b"));
        assert_eq!(check(&jwks, &token_b), Err(TokenError::UnknownKey));
        let hits = served.hits.load(Ordering::SeqCst);
        let mut rx = jwks.ask().expect("the first ask fetches");
        tokio::time::timeout(FETCH_TIMEOUT, rx.changed()).await.unwrap().unwrap();
        assert_eq!(check(&jwks, &token_b), Ok(claims()));
        assert_eq!(served.hits.load(Ordering::SeqCst), hits + 1);
        // Another unknown kid within the interval: no fetch.
        assert!(jwks.ask().is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(served.hits.load(Ordering::SeqCst), hits + 1, "made-up kids do not hammer the server");
        stop.cancel();
        task.await.unwrap();

        // The periodic refresh picks up a rotation (and a key removed from the set goes).
        served.set(200, set(&[c.jwk("c")]));
        let quick = Arc::new(Jwks::with_intervals(&url, Duration::from_millis(50), ON_DEMAND_MIN).unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(quick.clone().run(stop.clone()));
        let mut rx = quick.generation.subscribe();
        tokio::time::timeout(FETCH_TIMEOUT, rx.changed()).await.unwrap().unwrap();
        assert_eq!(check(&quick, &c.sign(&claims(), Some("c"))), Ok(claims()));
        assert_eq!(check(&quick, &a.sign(&claims(), Some("a"))), Err(TokenError::UnknownKey));
        stop.cancel();
        task.await.unwrap();
    }
}
