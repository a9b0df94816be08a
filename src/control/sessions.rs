//! Session allocation (`POST /api/sessions`): a session ID reserved for a time, with the
//! forward targets its media should be pushed to, and the URLs to publish and play it
//! over every transport. Tokens in those URLs come from a [`TokenMinter`] the server may
//! be given; without one the URLs carry none.
//!
//! In memory, bounded ([`MAX_ALLOCATIONS`]); expired allocations are forgotten when the
//! table is next touched.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::auth::{Auth, AuthMode, TokenRole};
use crate::gate::Role;
use crate::url::StreamUrl;

/// Allocations held at once; more are refused (409 is for a taken ID, this is 503).
pub const MAX_ALLOCATIONS: usize = 10_000;
/// Default lifetime of an allocation.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime asked for (a week).
pub const MAX_TTL_S: u64 = 7 * 24 * 3600;
/// Forward targets per session.
pub const MAX_FORWARD: usize = 16;
/// Longest session ID (as the RTMP session caps app and key).
const MAX_SESSION_LEN: usize = 1024;
/// The app of generated session IDs.
const GENERATED_APP: &str = "live";

/// Makes publish and play tokens for allocated sessions ([`Auth`] is one).
pub trait TokenMinter: Send + Sync + Debug + 'static {
    /// A token allowing `role` on `session_id` for `ttl`, or `None` when this role needs
    /// none.
    fn mint(&self, session_id: &str, role: Role, ttl: Duration) -> Option<String>;
}

/// The relay's own tokens: minted for a role only where that role needs one (`[auth]`
/// rules for the session's app), for exactly the session ID, valid as long as the
/// allocation.
impl TokenMinter for Auth {
    fn mint(&self, session_id: &str, role: Role, ttl: Duration) -> Option<String> {
        if self.mode(session_id, role) == AuthMode::Open {
            return None;
        }
        let role = match role {
            Role::Publish => TokenRole::Publish,
            Role::Play => TokenRole::Play,
        };
        Auth::mint(self, session_id, role, ttl).ok()
    }
}

/// One allocated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// `app/key`.
    pub session_id: String,
    /// Where the session's media is to be pushed (`rtmp://...` URLs, checked to parse).
    pub forward: Vec<String>,
    /// When it was made.
    pub created: SystemTime,
    /// When it lapses.
    pub expires: SystemTime,
}

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The request is malformed (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The session ID is allocated already and has not expired.
    #[error("session {0} is already allocated")]
    Taken(String),
    /// [`MAX_ALLOCATIONS`] are held.
    #[error("the relay holds its limit of {MAX_ALLOCATIONS} session allocations")]
    Full,
}

/// The body of `POST /api/sessions`; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// `app/key`; one is made when absent.
    pub session: Option<String>,
    /// Lifetime in seconds (default 3600, at most a week).
    pub ttl_s: Option<u64>,
    /// Push targets for the session's media.
    pub forward: Option<Vec<String>>,
}

/// The allocation table. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Allocations {
    inner: Arc<Mutex<HashMap<String, Allocation>>>,
}

impl Allocations {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Allocation>> {
        // Single inserts and removes only: a poisoned lock still guards a valid map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validates `request` and records the allocation it asks for.
    pub fn allocate(&self, request: SessionRequest) -> Result<Allocation, AllocError> {
        let session_id = match request.session {
            Some(s) => check_session_id(&s)?,
            None => format!("{GENERATED_APP}/{}", random_key()?),
        };
        let ttl = match request.ttl_s {
            None => DEFAULT_TTL,
            Some(s) if (1..=MAX_TTL_S).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                return Err(AllocError::Invalid(format!("ttl_s must be within 1..={MAX_TTL_S} (it is {s})")))
            }
        };
        let forward = request.forward.unwrap_or_default();
        if forward.len() > MAX_FORWARD {
            return Err(AllocError::Invalid(format!("at most {MAX_FORWARD} forward targets")));
        }
        for (i, url) in forward.iter().enumerate() {
            StreamUrl::parse(url).map_err(|e| AllocError::Invalid(format!("forward[{i}]: {e}")))?;
        }
        let now = SystemTime::now();
        let allocation =
            Allocation { session_id: session_id.clone(), forward, created: now, expires: now + ttl };
        let mut table = self.table();
        table.retain(|_, a| a.expires > now);
        if table.contains_key(&session_id) {
            return Err(AllocError::Taken(session_id));
        }
        if table.len() >= MAX_ALLOCATIONS {
            return Err(AllocError::Full);
        }
        table.insert(session_id, allocation.clone());
        Ok(allocation)
    }

    /// The allocation of `session_id`, unless absent or expired.
    pub fn get(&self, session_id: &str) -> Option<Allocation> {
        let now = SystemTime::now();
        self.table().get(session_id).filter(|a| a.expires > now).cloned()
    }

    /// Where `session_id`'s media is to be forwarded (empty without an allocation).
    pub fn forward_targets(&self, session_id: &str) -> Vec<String> {
        self.get(session_id).map(|a| a.forward).unwrap_or_default()
    }

    /// Every allocation that has not expired, by session ID.
    pub fn list(&self) -> Vec<Allocation> {
        let now = SystemTime::now();
        let mut all: Vec<Allocation> = self.table().values().filter(|a| a.expires > now).cloned().collect();
        all.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        all
    }
}

/// `app/key`: an app (one or more segments) and a key, literal (no `*`), no query, no
/// control characters or spaces, no empty segment.
fn check_session_id(s: &str) -> Result<String, AllocError> {
    let bad = |why: &str| Err(AllocError::Invalid(format!("session must be app/key: {why}")));
    if s.len() > MAX_SESSION_LEN {
        return bad("too long");
    }
    // `*` would make the minted tokens' scope a pattern (`*/*`: every stream).
    if s.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '\\' | '*')) {
        return bad("a literal ID: no spaces, control characters, '?', '#', '\\' or '*'");
    }
    let segments: Vec<&str> = s.split('/').collect();
    if segments.len() < 2 || segments.iter().any(|seg| seg.is_empty()) {
        return bad("an app and a key, no empty segment");
    }
    Ok(s.to_owned())
}

/// 96 random bits as hex: unguessable, so an open relay's allocated key is itself a
/// secret of sorts.
fn random_key() -> Result<String, AllocError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 12];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AllocError::Invalid("no randomness available to make a session ID".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Publish and play URLs of a session for every transport, tokens included.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionUrls {
    /// `rtmp://`.
    pub rtmp: String,
    /// `rtmps://` (on the RTMP port).
    pub rtmps: String,
    /// `rtmp+quic://` (RoQR; the same UDP port).
    #[serde(rename = "rtmp+quic")]
    pub rtmp_quic: String,
}

impl SessionUrls {
    /// The URLs for `session_id` on `host` and the relay's port, with `token` as the
    /// key's query when there is one.
    pub fn new(host: &str, port: u16, session_id: &str, token: Option<&str>) -> Self {
        let query = token.map(|t| format!("?token={}", percent_encode(t))).unwrap_or_default();
        let url = |scheme: &str| format!("{scheme}://{host}:{port}/{session_id}{query}");
        Self { rtmp: url("rtmp"), rtmps: url("rtmps"), rtmp_quic: url("rtmp+quic") }
    }
}

/// The host clients should use: the HTTP request's `Host` (without its port) when it is a
/// plain host name or address, else the relay's own address (loopback when it listens on
/// every interface).
pub fn public_host(host_header: Option<&str>, rtmp: SocketAddr) -> String {
    let from_header = host_header.and_then(|h| {
        let host = if let Some(rest) = h.strip_prefix('[') {
            format!("[{}]", rest.split(']').next()?)
        } else {
            h.split(':').next()?.to_owned()
        };
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        ok.then_some(host)
    });
    from_header.unwrap_or_else(|| match rtmp.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_validate_and_refuse_a_taken_id() {
        let a = Allocations::default();
        let made = a.allocate(SessionRequest::default()).unwrap();
        assert!(made.session_id.starts_with("live/") && made.session_id.len() == 5 + 24, "{made:?}");
        let req = |s: &str| SessionRequest { session: Some(s.into()), ..SessionRequest::default() };
        assert!(a.allocate(req("live/cam1")).is_ok());
        assert_eq!(a.allocate(req("live/cam1")), Err(AllocError::Taken("live/cam1".into())));
        for bad in
            ["cam1", "live/", "/cam1", "live//x", "live/a b", "live/x?token=1", "", "*/*", "live/*", "li*e/x"]
        {
            assert!(matches!(a.allocate(req(bad)), Err(AllocError::Invalid(_))), "{bad:?}");
        }
        assert!(a.allocate(req("a/b/c")).is_ok(), "multi-segment apps");
        let ttl = SessionRequest { ttl_s: Some(0), ..SessionRequest::default() };
        assert!(matches!(a.allocate(ttl), Err(AllocError::Invalid(m)) if m.contains("ttl_s")));
        let fwd = SessionRequest { forward: Some(vec!["http://x/y".into()]), ..SessionRequest::default() };
        assert!(matches!(a.allocate(fwd), Err(AllocError::Invalid(m)) if m.contains("forward[0]")));
        let fwd = SessionRequest {
            session: Some("live/fwd".into()),
            forward: Some(vec!["rtmp://origin.example/live/x".into()]),
            ..SessionRequest::default()
        };
        a.allocate(fwd).unwrap();
        assert_eq!(a.forward_targets("live/fwd"), vec!["rtmp://origin.example/live/x".to_owned()]);
        assert_eq!(a.list().len(), 4);
    }

    #[test]
    fn urls_carry_the_token_encoded_and_the_request_host() {
        let u = SessionUrls::new("relay.example", 1935, "live/a", Some("a+b/c"));
        assert_eq!(u.rtmp, "rtmp://relay.example:1935/live/a?token=a%2Bb%2Fc");
        assert_eq!(u.rtmp_quic, "rtmp+quic://relay.example:1935/live/a?token=a%2Bb%2Fc");
        assert_eq!(SessionUrls::new("h", 1, "a/b", None).rtmps, "rtmps://h:1/a/b");
        let any: SocketAddr = "0.0.0.0:1935".parse().unwrap();
        assert_eq!(public_host(Some("relay.example:8935"), any), "relay.example");
        assert_eq!(public_host(Some("[::1]:8935"), any), "[::1]");
        assert_eq!(public_host(Some("bad host<>"), any), "127.0.0.1");
        assert_eq!(public_host(None, "10.1.2.3:1935".parse().unwrap()), "10.1.2.3");
    }
}
