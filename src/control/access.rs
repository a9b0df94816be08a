//! Who may use the control API: the bearer token, the Host header, and where the token
//! comes from when the operator configured none.
//!
//! The threat is a web page in a browser on the relay's own host. A page can send
//! simple requests (a `no-cors` POST) to `127.0.0.1:8935` without a preflight, and DNS
//! rebinding can give it a name that resolves to 127.0.0.1 and so read the answers. So:
//! - every mutating request needs the bearer token, on loopback too (a page cannot add an
//!   `Authorization` header to a simple request, and a preflight for one is never
//!   answered with permission);
//! - a Host header that is neither an IP literal, `localhost`, nor a configured name is
//!   refused (a rebinding page's Host is its own name; an IP literal cannot be rebound);
//! - with no `[api] token`, the relay makes one at first start and keeps it in a 0600
//!   file beside the development CA; reads from loopback peers stay open then, so the
//!   status page works on the same machine without it.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;

/// The token file's name in the certificate directory.
pub const TOKEN_FILE: &str = "api-token";
/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The control API's token and how it came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The bearer token.
    pub token: String,
    /// Where a generated token is kept (`None`: the operator configured it). A generated
    /// token leaves reads from loopback open; a configured one locks every request but
    /// the status page.
    pub generated: Option<PathBuf>,
}

impl ApiToken {
    /// The configured token, or the one kept in `dir` (made there on first use).
    pub fn resolve(configured: Option<&str>, dir: &Path) -> std::io::Result<Self> {
        match configured {
            Some(token) => Ok(Self { token: token.to_owned(), generated: None }),
            None => {
                let path = dir.join(TOKEN_FILE);
                let token = load_or_create(&path)?;
                Ok(Self { token, generated: Some(path) })
            }
        }
    }

    /// Whether reads (GET, HEAD) from `peer` need no token.
    pub fn reads_open_to(&self, peer: Option<SocketAddr>) -> bool {
        self.generated.is_some() && peer.is_some_and(|p| p.ip().is_loopback())
    }
}

/// Reads the token kept at `path`, or makes one (32 random bytes, base64url) and keeps
/// it there, readable by the owner only. A file readable by others is made private.
fn load_or_create(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= MIN_TOKEN_LEN => {
            crate::files::make_private(path, "the API token file")?;
            return Ok(text.trim().to_owned());
        }
        Ok(_) => tracing::warn!(path = %path.display(), "API token file too short; making a new token"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no system randomness for the API token"))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    crate::files::make_private(path, "the API token file")?;
    Ok(token)
}

/// Whether a request's Host header names this API: an IP literal (with or without a
/// port), `localhost`, or one of `allowed` (case-insensitive). A missing Host is refused.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, port)| if port.parse::<u16>().is_ok() { name } else { host })
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_cannot_be_rebound_or_are_named_pass() {
        let allowed = vec!["relay.example.com".to_owned()];
        for ok in [
            "127.0.0.1:8935",
            "127.0.0.1",
            "[::1]:8935",
            "localhost:8935",
            "LOCALHOST",
            "10.1.2.3:80",
            "Relay.Example.com:8935",
        ] {
            assert!(host_allowed(Some(ok), &allowed), "{ok}");
        }
        for bad in
            ["evil.example:8935", "rebind.attacker.net", "", "[nonsense]:1", "relay.example.com.evil:8935"]
        {
            assert!(!host_allowed(Some(bad), &allowed), "{bad}");
        }
        assert!(!host_allowed(None, &allowed));
    }

    #[test]
    fn a_token_is_made_once_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = ApiToken::resolve(None, dir.path()).unwrap();
        assert!(a.token.len() >= 40, "{}", a.token);
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(a.generated.as_deref(), Some(path.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let b = ApiToken::resolve(None, dir.path()).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600,
                "made private again"
            );
        }
        let c = ApiToken::resolve(Some("configured-token-0123"), dir.path()).unwrap();
        assert_eq!(c.generated, None);
        let loopback: SocketAddr = "127.0.0.1:5".parse().unwrap();
        assert!(b.reads_open_to(Some(loopback)));
        assert!(!c.reads_open_to(Some(loopback)), "a configured token locks reads too");
        assert!(!b.reads_open_to(Some("10.0.0.1:5".parse().unwrap())));
    }
}
