//! The certificate browsers trust by its hash, and what the HTTP side tells them of it.
//!
//! Without `--cert/--key` the relay has no certificate a browser trusts, and a browser
//! accepts one no CA signed only through `serverCertificateHashes`: ECDSA, valid for at
//! most 14 days. So the QUIC server presents a short-lived self-signed certificate to
//! `h3` handshakes ([`AlpnCertResolver`]) and replaces it before it expires; a page
//! learns the hashes from `GET /webtransport.json` on the TCP port. The previous
//! certificate's hash stays listed while that certificate is still valid: a page that
//! read the list just before a rotation and connects just after still finds a hash it
//! can use on a retry, and a page holding the list after it gets both.
//!
//! With `--cert/--key` every ALPN gets that identity (ordinary web PKI) and the list of
//! hashes is empty.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::transport::tls::{self, AlpnCertResolver, ShortLivedCert, TlsError};

/// The whole validity of each certificate: under the 14 days browsers allow, with room
/// for clocks that differ by a day.
pub const VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// How long before its end a certificate is replaced: a page that read the hashes just
/// before the rotation still connects with the old one for this long.
pub const RENEW_BEFORE: Duration = Duration::from_secs(6 * 24 * 3600);
/// How soon a failed rotation is tried again.
const RETRY: Duration = Duration::from_secs(3600);

/// One certificate handed out, as the HTTP side lists it.
#[derive(Debug, Clone, Copy)]
struct Issued {
    sha256: [u8; 32],
    not_after: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Issued>,
    previous: Option<Issued>,
}

/// The WebTransport side of the relay's certificates: the hashes browsers need and the
/// rotation that keeps them fresh. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct WebTransportCerts {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` with a configured identity: nothing to rotate, no hashes.
    resolver: Option<Arc<AlpnCertResolver>>,
    state: Mutex<State>,
    /// The UDP port browsers connect to (the relay's one port).
    port: u16,
}

impl WebTransportCerts {
    /// Short-lived certificates for `h3`, the first one made now and set on `resolver`.
    pub fn self_signed(resolver: Arc<AlpnCertResolver>, port: u16) -> Result<Self, TlsError> {
        let certs =
            Self { inner: Arc::new(Inner { resolver: Some(resolver), state: Mutex::default(), port }) };
        certs.rotate(SystemTime::now())?;
        Ok(certs)
    }

    /// A configured identity serves `h3` as every other ALPN: no hashes.
    pub fn web_pki(port: u16) -> Self {
        Self { inner: Arc::new(Inner { resolver: None, state: Mutex::default(), port }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new certificate valid from `now` and serves it to `h3` handshakes from now
    /// on; the one it replaces stays listed until it expires.
    pub fn rotate(&self, now: SystemTime) -> Result<(), TlsError> {
        let Some(resolver) = &self.inner.resolver else { return Ok(()) };
        let ShortLivedCert { cert, key, not_after } = tls::short_lived_cert(now, VALIDITY)?;
        let issued = Issued { sha256: tls::sha256(&cert), not_after };
        resolver.set_h3(tls::certified_key(vec![cert], key)?);
        let mut st = self.state();
        st.previous = st.current.replace(issued);
        Ok(())
    }

    /// When the current certificate is due for replacement (`None`: never).
    fn renew_at(&self) -> Option<SystemTime> {
        let current = self.state().current?;
        Some(current.not_after.checked_sub(RENEW_BEFORE).unwrap_or(current.not_after))
    }

    /// The SHA-256 hashes of the certificates a browser may be presented now, newest
    /// first (empty with a configured identity).
    pub fn hashes(&self, now: SystemTime) -> Vec<[u8; 32]> {
        let st = self.state();
        [st.current, st.previous]
            .into_iter()
            .flatten()
            .filter(|c| c.not_after > now)
            .map(|c| c.sha256)
            .collect()
    }

    /// The body of `GET /webtransport.json`: `{"port": P, "certificate_hashes": [base64...]}`.
    pub fn json(&self, now: SystemTime) -> String {
        let hashes: Vec<String> = self.hashes(now).iter().map(|h| STANDARD.encode(h)).collect();
        serde_json::json!({ "port": self.inner.port, "certificate_hashes": hashes }).to_string()
    }

    /// How long until the current certificate is due for replacement (zero when it is).
    fn until_renewal(&self) -> Duration {
        self.renew_at().and_then(|at| at.duration_since(SystemTime::now()).ok()).unwrap_or_default()
    }

    /// Replaces the certificate before it expires, until `stop`. Checked against the
    /// wall clock at least hourly, so a machine that slept does not miss a rotation.
    pub async fn keep_fresh(self, stop: CancellationToken) {
        if self.inner.resolver.is_none() {
            return;
        }
        let mut wait = self.until_renewal();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                // A long timer only fires late after a suspend: wake up hourly to look.
                _ = tokio::time::sleep(wait.min(RETRY)) => {}
            }
            wait = self.until_renewal();
            if !wait.is_zero() {
                continue;
            }
            wait = match self.rotate(SystemTime::now()) {
                Ok(()) => {
                    info!("WebTransport certificate renewed");
                    self.until_renewal()
                }
                Err(e) => {
                    warn!(error = %e, "WebTransport certificate renewal failed; retrying in an hour");
                    RETRY
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Arc<AlpnCertResolver> {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = tls::dev_identity(dir.path()).unwrap();
        Arc::new(AlpnCertResolver::new(tls::certified_key(id.chain, id.key).unwrap(), &tls::SERVER_ALPN))
    }

    #[test]
    fn a_rotation_keeps_the_previous_hash_until_it_expires() {
        let certs = WebTransportCerts::self_signed(resolver(), 1935).unwrap();
        let now = SystemTime::now();
        let first = certs.hashes(now);
        assert_eq!(first.len(), 1);
        let later = now + Duration::from_secs(3 * 24 * 3600);
        certs.rotate(later).unwrap();
        let both = certs.hashes(later);
        assert_eq!(both.len(), 2);
        assert_eq!(both[1], first[0], "newest first, the previous one after it");
        assert_ne!(both[0], first[0]);
        // Past the first one's end, within the second one's.
        assert_eq!(certs.hashes(now + VALIDITY), vec![both[0]]);
        let json: serde_json::Value = serde_json::from_str(&certs.json(later)).unwrap();
        assert_eq!(json["port"], 1935);
        assert_eq!(json["certificate_hashes"].as_array().unwrap().len(), 2);
        assert_eq!(json["certificate_hashes"][0], STANDARD.encode(both[0]));
    }

    #[test]
    fn renewal_is_due_well_before_the_end() {
        let certs = WebTransportCerts::self_signed(resolver(), 1).unwrap();
        let renew = certs.renew_at().unwrap();
        let now = SystemTime::now();
        assert!(renew > now + VALIDITY - RENEW_BEFORE - Duration::from_secs(7200));
        assert!(renew < now + VALIDITY - RENEW_BEFORE);
    }

    #[test]
    fn a_configured_identity_lists_no_hashes() {
        let certs = WebTransportCerts::web_pki(443);
        assert!(certs.hashes(SystemTime::now()).is_empty());
        let json: serde_json::Value = serde_json::from_str(&certs.json(SystemTime::now())).unwrap();
        assert_eq!(json, serde_json::json!({ "port": 443, "certificate_hashes": [] }));
    }
}
