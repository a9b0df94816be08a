//! HTTP/1.1 request heads and response heads, sans-IO: bytes in, a parsed head out (or
//! why it is refused). The relay serves HTTP on its one TCP port (players, pages), so
//! this is reached by unauthenticated peers: every size is capped, and nothing here
//! allocates more than the head it was given.
//!
//! Parsing is `httparse`'s; what is ours is the bounds, the path/query split and the
//! refusals (each with the status code it answers with).

use std::fmt::Write as _;

/// Largest request head (request line and headers) accepted; a longer one is refused
/// with 431 before it is parsed further.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 48;

/// One request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `OPTIONS`...
    pub method: String,
    /// The path, as sent (no percent-decoding: session IDs and tokens compare byte for
    /// byte, as they do over RTMP).
    pub path: String,
    /// What follows the first `?` of the target, empty without one.
    pub query: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Over [`MAX_HEAD_BYTES`].
    #[error("request head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// Over [`MAX_HEADERS`].
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    /// Not HTTP/1.x syntax.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A target that is not an absolute path (`*`, an absolute URI of a proxy request).
    #[error("request target is not a path")]
    BadTarget,
}

impl HttpError {
    /// The status code and reason phrase this refusal answers with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => (431, "Request Header Fields Too Large"),
            HttpError::Malformed(_) | HttpError::BadTarget => (400, "Bad Request"),
        }
    }
}

/// Parses a request head from the start of `buf`: `Ok(None)` while it is incomplete,
/// else the head and the bytes it took (a body, if any, follows).
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let status = match request.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => {
            return Err(if buf.len() > MAX_HEAD_BYTES {
                HttpError::HeadTooLarge
            } else {
                HttpError::Malformed(e.to_string())
            })
        }
    };
    let len = match status {
        httparse::Status::Complete(len) if len <= MAX_HEAD_BYTES => len,
        httparse::Status::Complete(_) => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    // Complete: httparse has filled these.
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(HttpError::Malformed("no request line".into()));
    };
    if !target.starts_with('/') {
        return Err(HttpError::BadTarget);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = request
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    Ok(Some((
        RequestHead { method: method.to_owned(), path: path.to_owned(), query: query.to_owned(), headers },
        len,
    )))
}

/// A stream path (`app/key`, without the leading `/`) split at its last `/`, as RTMP
/// URLs split (`a/b/key` is app `a/b`), each part checked: empty, `.` and `..` segments
/// and control characters are refused with the reason. HTTP-FLV, the player page and
/// WebTransport sessions all name streams this way.
pub fn split_stream(stream: &str) -> Result<(&str, &str), &'static str> {
    let (app, key) = stream.rsplit_once('/').ok_or("a stream path needs an app and a key: /{app}/{key}")?;
    let bad_segment = |s: &str| s.is_empty() || s == "." || s == "..";
    if app.split('/').any(bad_segment) || bad_segment(key) {
        return Err("empty, `.` or `..` path segment");
    }
    if stream.chars().any(|c| c.is_control()) {
        return Err("control character in the path");
    }
    Ok((app, key))
}

/// A response head: status line, `headers`, then `Connection: close` and the blank line.
/// Every response of the relay's HTTP side closes its connection after its body (a
/// player's body runs until the stream ends, a page's is short), so there is no
/// keep-alive to get wrong.
pub fn response_head(status: u16, reason: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        // Values are ours, but a stray CR/LF must never split a header.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

#[cfg(test)]
mod tests;
