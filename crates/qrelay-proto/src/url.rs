//! Stream URL parsing (DESIGN §2): which transport and mapping a URL asks for, where to
//! connect, and the session's app and stream key. Pure functions, no I/O.

use std::fmt;

/// How the RTMP session is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain RTMP over TCP (`rtmp://`).
    Tcp,
    /// RTMP over TLS over TCP (`rtmps://`).
    Tls,
    /// RTMP over QUIC (`rtmp+quic://`, `rtmpq://`, `rtmp://...?quic=1`).
    Quic(QuicMapping),
}

/// How RTMP maps onto QUIC (selected by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicMapping {
    /// The RTMP byte stream (handshake + chunks) on one bidirectional stream; ALPN `rtmp`.
    Tunnel,
    /// RoQR framing (draft-gregoire-rtmp-over-quic); ALPN `roqr`.
    Roqr,
}

/// A parsed stream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrl {
    /// Transport (and QUIC mapping) the URL asks for.
    pub transport: Transport,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port, the scheme's default when absent (1935; 443 for `rtmps`).
    pub port: u16,
    /// RTMP application name (first path segment(s) up to the last one).
    pub app: String,
    /// Stream key including its own query string, as sent in `publish`/`play`.
    pub key: String,
}

/// Why a URL was refused; each variant names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not parseable as a URL at all.
    #[error("invalid URL: {0}")]
    Syntax(String),
    /// A scheme other than rtmp, rtmps, rtmp+quic, rtmpq.
    #[error("unsupported scheme `{0}` (expected rtmp, rtmps, rtmp+quic or rtmpq)")]
    Scheme(String),
    /// No host.
    #[error("missing host")]
    MissingHost,
    /// Port is not a valid non-zero u16.
    #[error("bad port `{0}`")]
    Port(String),
    /// No application in the path.
    #[error("missing app (path must be /app/key)")]
    MissingApp,
    /// No stream key in the path.
    #[error("missing stream key (path must be /app/key)")]
    MissingKey,
    /// `mode=` or `quic=` has a value we do not know, or conflicts with the scheme.
    #[error("bad query parameter `{0}`")]
    Query(String),
}

/// Query parameters the relay reads from a URL and removes from the stream key.
const QUIC_PARAM: &str = "quic";
const MODE_PARAM: &str = "mode";

impl StreamUrl {
    /// Parses a stream URL.
    ///
    /// Hand-parsed rather than through the `url` crate: `url` treats `rtmp` as a
    /// non-special scheme, so it accepts `rtmp:///live/x` with no host at all and port 0,
    /// reports a bad port without its text, and percent-encodes the key, which must reach
    /// the server byte for byte as the user typed it. RTMP has no fragments, so `#` is an
    /// ordinary character of the key (OBS sends it as typed).
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let input = input.trim();
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| UrlError::Syntax(format!("`{input}` has no `scheme://`")))?;
        let base = scheme_transport(scheme)?;
        let default_port = if base == Transport::Tls { 443 } else { 1935 };

        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(authority_end);
        let (host, port) = parse_authority(authority, default_port)?;

        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let (app, key, query) = match (split_path(path), query) {
            // A query on the app, as OBS's "Server" box makes it (`rtmp://h/live?token=x`
            // with key `cam1`) and ffmpeg reads it: `rtmp://h/live?token=x/cam1`. The app
            // keeps its query (sent in connect); the key starts after the query's first `/`.
            // Only for a one-segment app: `rtmp://h/a/b?t=1/k` already means app `a`, key
            // `b?t=1/k` (a key's query may hold `/`).
            (Err(UrlError::MissingKey), Some(query))
                if query.contains('/') && !path.trim_matches('/').contains('/') =>
            {
                let (app_query, rest) = query.split_once('/').unwrap_or((query, ""));
                let (key, key_query) = match rest.split_once('?') {
                    Some((key, q)) => (key, Some(q)),
                    None => (rest, None),
                };
                (app_with_query(path, app_query)?, key, key_query)
            }
            (split, query) => {
                let (app, key) = split?;
                (app.to_owned(), key, query)
            }
        };

        let mut params = RelayParams::default();
        let mut kept = Vec::new();
        // Whitespace around a parameter is not part of it (`k ?quic=1`, `&\tmode=...`):
        // trimmed before the relay's own parameters are recognised, so printing and
        // parsing again gives the same URL.
        for param in query.into_iter().flat_map(|q| q.split('&')).map(str::trim) {
            if !param.is_empty() && !params.take(param)? {
                kept.push(param);
            }
        }
        let transport = params.resolve(base)?;

        // Whitespace before removed relay parameters (`k ?quic=1`) is not part of the key:
        // printed at the end of a URL it would not survive a re-parse.
        let key = key.trim_end();
        if key.is_empty() {
            return Err(UrlError::MissingKey);
        }
        let key = if kept.is_empty() { key.to_owned() } else { format!("{key}?{}", kept.join("&")) };
        if key.chars().chain(app.chars()).any(char::is_control) {
            return Err(UrlError::Syntax("control character in app or stream key".into()));
        }
        Ok(StreamUrl { transport, host, port, app, key })
    }

    /// The URL for logs: every `token=` value replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_tokens(&self.to_string()).into_owned()
    }

    /// `base` (`scheme://host[:port]/app[?query]`, no key) with `key` appended: the URL
    /// a relay uses to carry a stream with that key (`qrelay bridge`). A query in
    /// `base` goes after the key (`rtmp://h/live?mode=tunnel` + `k` →
    /// `rtmp://h/live/k?mode=tunnel`), so the relay's own parameters still apply.
    pub fn with_key(base: &str, key: &str) -> Result<Self, UrlError> {
        let base = base.trim();
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (base, None),
        };
        let mut url = format!("{}/{key}", head.trim_end_matches('/'));
        if let Some(q) = query {
            url.push(if key.contains('?') { '&' } else { '?' });
            url.push_str(q);
        }
        Self::parse(&url)
    }

    /// A forward target: `target` itself when it names a stream key
    /// (`rtmp://h/live/renamed`), otherwise `target` with `key` appended
    /// ([`with_key`](Self::with_key)): `rtmp://h/live`, or `rtmp://h/a/b/` (a trailing
    /// `/` says the whole path is the app).
    pub fn target(target: &str, key: &str) -> Result<Self, UrlError> {
        match Self::parse(target) {
            Err(UrlError::MissingKey) => Self::with_key(target, key),
            other => other,
        }
    }

    /// A relay target for logs and status pages, stricter than
    /// [`redacted`](Self::redacted): no query at all, and the stream key shown only when
    /// it is `public_key` (one already in the logs, as part of a session ID); any other
    /// key may be a credential (a platform's stream key) and reads `***`.
    pub fn redacted_target(&self, public_key: &str) -> String {
        let key = without_query(&self.key);
        let key = if key == public_key { key } else { "***" };
        let app = without_query(&self.app);
        format!("{}://{}/{app}/{key}", scheme_name(self.transport), self.authority())
    }

    /// Session ID: `app/key` with the key's query removed.
    pub fn session_id(&self) -> String {
        session_id(&self.app, &self.key)
    }

    /// `tcUrl` for the RTMP connect command (`rtmp://host:port/app`).
    pub fn tc_url(&self) -> String {
        format!("{}://{}/{}", scheme_name(self.transport), self.authority(), self.app)
    }

    /// `host:port` with an IPv6 literal in brackets.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for StreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tc_url(), self.key)?;
        // The mapping is always spelled out so the URL means the same to builds whose
        // default differed (before RoQR, rtmp+quic meant the tunnel).
        if let Transport::Quic(mapping) = self.transport {
            let sep = if self.key.contains('?') { '&' } else { '?' };
            let mode = match mapping {
                QuicMapping::Tunnel => "tunnel",
                QuicMapping::Roqr => "roqr",
            };
            write!(f, "{sep}{MODE_PARAM}={mode}")?;
        }
        Ok(())
    }
}

/// Session ID from an app and a stream key as the server receives them: `app/key` with
/// the query (`?token=...`) of each removed. Encoders put a token in either: OBS sends
/// its "Server" box (`rtmp://host/live?token=abc`) as the app, its "Stream Key" as the key.
pub fn session_id(app: &str, key: &str) -> String {
    format!("{}/{}", without_query(app).trim_end_matches('/'), without_query(key))
}

/// The parameters of a query string (`a=1&b&c=3` → `(a, 1)`, `(b, "")`, `(c, 3)`), as
/// written: no percent-decoding (tokens and keys are compared byte for byte).
pub fn query_params(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Query parameters whose values are secrets and never printed.
const SECRET_PARAMS: &[&str] = &["token"];

/// `url` with the password of its user information (`scheme://user:password@host`)
/// replaced by `***`, for logs and error messages (Redis AUTH URLs carry one).
pub fn redact_password(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else { return url.into() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.into() };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]).into(),
        None => url.into(),
    }
}

/// `text` (a URL, an app or a key) with the value of every `token=` parameter replaced
/// by `***`, for logs and error messages.
pub fn redact_tokens(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    for (at, _) in text.match_indices(['?', '&']) {
        let rest = &text[at + 1..];
        let Some(name) =
            SECRET_PARAMS.iter().find(|n| rest.strip_prefix(**n).is_some_and(|r| r.starts_with('=')))
        else {
            continue;
        };
        let start = at + 1 + name.len() + 1;
        let end = text[start..].find(['&', '/', '?', ' ']).map_or(text.len(), |i| start + i);
        if start < copied {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str("***");
        copied = end;
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// `name?query` for an app with a query (the path holds the app's name only).
fn app_with_query(path: &str, query: &str) -> Result<String, UrlError> {
    let name = path.trim_matches('/');
    if name.is_empty() {
        return Err(UrlError::MissingApp);
    }
    Ok(format!("{name}?{query}"))
}

/// The part before the first `?`.
pub fn without_query(s: &str) -> &str {
    s.split_once('?').map_or(s, |(name, _)| name)
}

/// Transport a scheme selects before query parameters are applied.
fn scheme_transport(scheme: &str) -> Result<Transport, UrlError> {
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(UrlError::Syntax(format!("`{scheme}` is not a URL scheme")));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "rtmp" => Ok(Transport::Tcp),
        "rtmps" => Ok(Transport::Tls),
        "rtmp+quic" | "rtmpq" => Ok(Transport::Quic(QuicMapping::Roqr)),
        _ => Err(UrlError::Scheme(scheme.to_owned())),
    }
}

/// Canonical scheme for a transport (the mapping travels in `mode=`, not the scheme).
fn scheme_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "rtmp",
        Transport::Tls => "rtmps",
        Transport::Quic(_) => "rtmp+quic",
    }
}

/// Splits `host[:port]` or `[v6]:port`; an empty port (`host:`) means the default, as
/// RFC 3986 §3.2.3 allows.
fn parse_authority(authority: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    if authority.contains('@') {
        // There is nowhere to carry credentials; dropping them silently would surprise.
        return Err(UrlError::Syntax("user info (`user@`) is not supported".into()));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (literal, after) =
            bracketed.split_once(']').ok_or_else(|| UrlError::Syntax("unclosed `[` in host".into()))?;
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::Syntax(format!("`{literal}` is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| UrlError::Syntax(format!("unexpected `{after}` after IPv6 address")))?,
            ),
        };
        (literal.to_ascii_lowercase(), port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err(UrlError::Syntax(format!(
                "`{authority}`: an IPv6 host must be in brackets (`[::1]:1935`)"
            )));
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let valid = host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'));
        if !valid {
            return Err(UrlError::Syntax(format!("`{host}` is not a valid host")));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None | Some("") => default_port,
        Some(text) => parse_port(text)?,
    };
    Ok((host, port))
}

/// Digits only: `u16::from_str` would also take `+80`.
fn parse_port(text: &str) -> Result<u16, UrlError> {
    let bad = || UrlError::Port(text.to_owned());
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// `/app/key` where the app may itself contain slashes: the key is the last segment.
fn split_path(path: &str) -> Result<(&str, &str), UrlError> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (app, key) = path.rsplit_once('/').unwrap_or((path, ""));
    if app.is_empty() {
        return Err(UrlError::MissingApp);
    }
    if key.is_empty() {
        return Err(UrlError::MissingKey);
    }
    Ok((app, key))
}

/// The relay's own query parameters, collected while the key's query is filtered.
#[derive(Default)]
struct RelayParams {
    /// `quic=`: the parameter text as written, and whether it asks for QUIC.
    quic: Option<(String, bool)>,
    /// `mode=`: the parameter text as written, and the mapping it names.
    mode: Option<(String, QuicMapping)>,
}

impl RelayParams {
    /// Records `param` if it is one of ours (`Ok(true)`: remove it from the key).
    fn take(&mut self, param: &str) -> Result<bool, UrlError> {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let bad = || UrlError::Query(param.to_owned());
        match name {
            QUIC_PARAM => {
                let on = match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(bad()),
                };
                // Two values would leave the intent ambiguous.
                if self.quic.replace((param.to_owned(), on)).is_some() {
                    return Err(bad());
                }
                Ok(true)
            }
            MODE_PARAM => {
                let mapping = match value.to_ascii_lowercase().as_str() {
                    "tunnel" => QuicMapping::Tunnel,
                    "roqr" => QuicMapping::Roqr,
                    _ => return Err(bad()),
                };
                if self.mode.replace((param.to_owned(), mapping)).is_some() {
                    return Err(bad());
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Final transport from the scheme's and the parameters'; a conflict names the
    /// parameter at fault.
    fn resolve(self, base: Transport) -> Result<Transport, UrlError> {
        let quic = match (base, &self.quic) {
            (Transport::Quic(_), Some((text, false))) => return Err(UrlError::Query(text.clone())),
            (Transport::Tls, Some((text, true))) => return Err(UrlError::Query(text.clone())),
            (Transport::Quic(_), _) => true,
            (_, Some((_, on))) => *on,
            (_, None) => false,
        };
        match (quic, self.mode) {
            // RoQR is what QUIC means unless `mode=tunnel` asks for the byte-stream tunnel.
            (true, None) => Ok(Transport::Quic(QuicMapping::Roqr)),
            (true, Some((_, mapping))) => Ok(Transport::Quic(mapping)),
            (false, Some((text, _))) => Err(UrlError::Query(text)),
            (false, None) => Ok(base),
        }
    }
}

#[cfg(test)]
mod tests;
