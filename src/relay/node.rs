//! Node URLs: how one relay names another (`--origin`, `--node-url`, the registry's
//! values). A node URL is a stream URL without app and key: `scheme://host[:port]` with
//! an optional `?mode=tunnel|roqr`; a session ID appended makes the URL of one stream.

use std::fmt;
use std::net::SocketAddr;

use crate::url::{QuicMapping, StreamUrl, Transport, UrlError};

/// Another relay (or any RTMP server), as reachable from this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    /// `scheme://host:port` as given, without a trailing slash.
    base: String,
    /// `mode=...` when given.
    query: Option<String>,
    /// What the URL of a stream on it parses to (its transport, host and port).
    probe: StreamUrl,
}

impl NodeUrl {
    /// Parses `scheme://host[:port][?mode=...]`. A path is refused: the session ID is what
    /// names a stream on every node.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let input = input.trim();
        let (head, query) = match input.split_once('?') {
            Some((h, q)) => (h, Some(q.to_owned())),
            None => (input, None),
        };
        let head = head.trim_end_matches('/');
        let authority = head.split_once("://").map_or("", |(_, rest)| rest);
        if authority.contains('/') {
            return Err(UrlError::Syntax(format!(
                "`{input}`: a node URL has no path (scheme://host[:port]); the stream's app/key is appended"
            )));
        }
        let probe = StreamUrl::parse(&with_path(head, "app/key", query.as_deref()))?;
        if probe.key != "key" {
            return Err(UrlError::Syntax(format!(
                "`{input}`: only `mode=` or `quic=` may follow a node URL"
            )));
        }
        Ok(Self { base: head.to_owned(), query, probe })
    }

    /// The URL of `session_id` (`app/key`, the key with its own query if any) on this node.
    pub fn stream_url(&self, session_id: &str) -> Result<StreamUrl, UrlError> {
        StreamUrl::parse(&with_path(&self.base, session_id, self.query.as_deref()))
    }

    /// Transport and QUIC mapping of this node's streams.
    pub fn transport(&self) -> Transport {
        self.probe.transport
    }

    /// Whether the node is reached over QUIC with the tunnel mapping, whose sessions can
    /// share one connection.
    pub fn is_quic(&self) -> bool {
        matches!(self.probe.transport, Transport::Quic(_))
    }

    /// Host and port to resolve.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.probe.host, self.probe.port)
    }
}

/// Whether `addr` (a node's resolved address) is this relay, bound to `local`: the same
/// port on a loopback or unspecified address, on `local`'s own IP, or on any address of
/// this machine when `local` is a wildcard (an address is this machine's when a socket
/// can be bound to it). A loop this misses (an address translated back to us) is caught
/// by the hop count.
pub fn is_self(addr: SocketAddr, local: SocketAddr) -> bool {
    if addr.port() != local.port() {
        return false;
    }
    let ip = addr.ip();
    if ip.is_loopback() || ip.is_unspecified() || ip == local.ip() {
        return true;
    }
    local.ip().is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok()
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// `base/path` with `query` added to the key's own query.
fn with_path(base: &str, path: &str, query: Option<&str>) -> String {
    let mut url = format!("{base}/{path}");
    if let Some(q) = query {
        url.push(if path.contains('?') { '&' } else { '?' });
        url.push_str(q);
    }
    url
}

/// The QUIC mapping a pulled or pushed stream uses towards `node`: the tunnel when the
/// URL does not name one, so that every stream to the node shares one QUIC connection
/// (a RoQR connection carries one RTMP session).
pub fn relay_mapping(node: &NodeUrl) -> Option<QuicMapping> {
    match node.transport() {
        Transport::Quic(m) => Some(if node.query.as_deref().is_some_and(|q| q.contains("mode=roqr")) {
            m
        } else {
            QuicMapping::Tunnel
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_make_stream_urls() {
        let n = NodeUrl::parse("rtmp+quic://origin:1936").unwrap();
        let u = n.stream_url("live/cam1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.app.as_str(), u.key.as_str()),
            ("origin", 1936, "live", "cam1")
        );
        assert_eq!(relay_mapping(&n), Some(QuicMapping::Tunnel));
        let n = NodeUrl::parse("rtmp+quic://origin?mode=roqr").unwrap();
        assert_eq!(relay_mapping(&n), Some(QuicMapping::Roqr));
        assert_eq!(n.stream_url("a/b?x=1").unwrap().key, "b?x=1");
        let n = NodeUrl::parse("rtmp://10.0.0.5/").unwrap();
        assert_eq!(n.to_string(), "rtmp://10.0.0.5");
        assert_eq!(relay_mapping(&n), None);
    }

    #[test]
    fn bad_node_urls_are_refused() {
        for bad in ["rtmp://h/live", "http://h", "rtmp://", "rtmp://h:0", "rtmp://h?token=x", "h:1935"] {
            assert!(NodeUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_node_knows_its_own_address() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let me = addr("127.0.0.1:1935");
        assert!(is_self(addr("127.0.0.1:1935"), me));
        assert!(is_self(addr("[::1]:1935"), me));
        assert!(!is_self(addr("127.0.0.1:1936"), me));
        assert!(!is_self(addr("192.0.2.7:1935"), me));
        // A wildcard listener is every local address, and only those.
        let any = addr("0.0.0.0:1935");
        assert!(is_self(addr("127.0.0.2:1935"), any));
        assert!(!is_self(addr("192.0.2.7:1935"), any), "TEST-NET-1 is nobody's address");
    }
}
