//! TLS material for QUIC and RTMPS: loading PEM files, making the development CA and
//! localhost certificate on first run, and rustls configs for both sides: TLS 1.3 only for
//! QUIC (which requires it), TLS 1.2 too for RTMPS, where encoders that speak nothing
//! newer are common.
//!
//! Browsers on WebTransport (ALPN `h3`) trust a certificate no CA signed only through
//! `serverCertificateHashes`, and only an ECDSA one valid for at most 14 days; so the QUIC
//! server picks its certificate by ALPN ([`AlpnCertResolver`]): `h3` may get such a
//! short-lived certificate ([`short_lived_cert`]), every other ALPN the relay's identity.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN of the RTMP tunnel mapping (RTMP bytes on one bidirectional stream).
pub const ALPN_RTMP: &[u8] = b"rtmp";
/// ALPN of RoQR.
pub const ALPN_ROQR: &[u8] = b"roqr";
/// ALPN of HTTP/3, which WebTransport sessions ride on.
pub const ALPN_H3: &[u8] = b"h3";
/// What the QUIC server offers, in its order of preference (rustls picks the first of
/// these that the client offers).
pub const SERVER_ALPN: [&[u8]; 3] = [ALPN_ROQR, ALPN_RTMP, ALPN_H3];

/// The longest validity browsers accept for a certificate trusted by its hash
/// (W3C WebTransport, `serverCertificateHashes`).
pub const HASHED_CERT_MAX_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);

/// File names inside the certificate directory.
pub const DEV_CA_FILE: &str = "dev-ca.pem";
const DEV_CERT_FILE: &str = "localhost.pem";
const DEV_KEY_FILE: &str = "localhost.key";

/// Why TLS material could not be prepared. Messages include their cause, which is
/// therefore never also the `source()`: a `{:#}` chain prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A PEM file is malformed.
    #[error("{}: bad PEM: {error}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: pem::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{}: no certificate or private key found", .0.display())]
    Empty(PathBuf),
    /// Generating the development certificates failed.
    #[error("generating certificates: {0}")]
    Generate(rcgen::Error),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    /// The certificate was not made for the private key beside it.
    #[error("{} does not match the private key in {} (a certificate from another key pair?)", cert.display(), key.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        Self::Generate(e)
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Rustls(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |error| TlsError::Io { path: path.to_owned(), error }
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The development CA a client must trust, when the identity is the generated one.
    pub dev_ca: Option<PathBuf>,
}

/// Loads a PEM chain and key.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = load_certs(cert)?;
    let pem = fs::read(key).map_err(io_err(key))?;
    let key_der = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::Empty(key.to_owned())),
        Err(e) => return Err(TlsError::Pem { path: key.to_owned(), error: e }),
    };
    crate::files::warn_if_shared(key, "a private key");
    // A certificate from another key pair would only fail later, in every handshake,
    // with an error no peer can explain: refuse it now, naming both files.
    let signer = provider().key_provider.load_private_key(key_der.clone_key())?;
    match rustls::sign::CertifiedKey::new(chain.clone(), signer).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(TlsError::KeyMismatch { cert: cert.to_owned(), key: key.to_owned() }),
    }
    Ok(Identity { chain, key: key_der, dev_ca: None })
}

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem { path: path.to_owned(), error })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_owned()));
    }
    Ok(certs)
}

/// The development identity in `dir`: reused when present, made (CA + localhost leaf
/// signed by it) when not. The CA's private key is not kept: nothing else is ever
/// signed with it, so a stolen `certs/` cannot mint certificates.
pub fn dev_identity(dir: &Path) -> Result<(Identity, bool), TlsError> {
    let ca = dir.join(DEV_CA_FILE);
    let cert = dir.join(DEV_CERT_FILE);
    let key = dir.join(DEV_KEY_FILE);
    if ca.exists() && cert.exists() && key.exists() {
        crate::files::make_private(&key, "the development key").map_err(io_err(&key))?;
        let mut id = load_identity(&cert, &key)?;
        id.dev_ca = Some(ca);
        return Ok((id, false));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;

    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "qrelay development CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf_params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    // What QUIC stacks outside rustls insist on (RoQR peers): an ECDSA P-256 key (rcgen's
    // default), the names as subjectAltName, and an explicit CA:FALSE on the leaf.
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    fs::write(&ca, ca_cert.pem()).map_err(io_err(&ca))?;
    fs::write(&cert, format!("{}{}", leaf.pem(), ca_cert.pem())).map_err(io_err(&cert))?;
    write_private(&key, leaf_key.serialize_pem().as_bytes())?;
    let mut id = load_identity(&cert, &key)?;
    id.dev_ca = Some(ca);
    Ok((id, true))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS 1.2 suites RTMPS accepts: ECDHE key exchange (forward secrecy) with an AEAD
/// cipher. TLS 1.2 is there only for encoders that lack 1.3, so nothing older.
const TLS12_SUITES: [rustls::CipherSuite; 6] = [
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// ring's TLS 1.3 suites and [`TLS12_SUITES`]: an explicit list rather than the
/// provider's default, which could grow weaker suites in a later release.
fn modern_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| match suite {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(s) => TLS12_SUITES.contains(&s.common.suite),
    });
    Arc::new(provider)
}

/// Server config for QUIC (TLS 1.3 only) with the given ALPN list.
pub fn server_config(id: &Identity, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(id, alpn, &[&rustls::version::TLS13])
}

/// Server config for RTMPS: TLS 1.3, and TLS 1.2 with ECDHE + AEAD suites only.
pub fn rtmps_server_config(id: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(id, &[], &[&rustls::version::TLS13, &rustls::version::TLS12])
}

fn server_config_with(
    id: &Identity,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(modern_provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Server config for QUIC (TLS 1.3 only) whose certificate `resolver` picks per
/// handshake.
pub fn server_config_resolving(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(modern_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A chain and key ready for rustls (the key matched against the leaf).
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(chain, key, &provider())?))
}

/// A self-signed certificate for browsers that trust it by its hash.
#[derive(Debug)]
pub struct ShortLivedCert {
    /// The certificate (DER); browsers compare the SHA-256 of exactly these bytes.
    pub cert: CertificateDer<'static>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The end of its validity.
    pub not_after: SystemTime,
}

impl ShortLivedCert {
    /// The SHA-256 of the certificate's DER, what `serverCertificateHashes` names.
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.cert)
    }
}

/// The SHA-256 of a certificate's DER.
pub fn sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A self-signed ECDSA P-256 certificate for `localhost` and the loopback addresses,
/// valid from an hour before `now` (clocks differ) for `validity` in all. Browsers check
/// the whole span, not what is left of it, so `validity` must stay within
/// [`HASHED_CERT_MAX_VALIDITY`] (it is capped there).
pub fn short_lived_cert(now: SystemTime, validity: Duration) -> Result<ShortLivedCert, TlsError> {
    let validity = validity.min(HASHED_CERT_MAX_VALIDITY);
    let skew = Duration::from_secs(3600).min(validity / 2);
    let not_before = now.checked_sub(skew).unwrap_or(now);
    let not_after = not_before + validity;
    // rcgen's default key is ECDSA P-256 with SHA-256: what browsers require here.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "qrelay webtransport");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let cert = params.self_signed(&key)?;
    Ok(ShortLivedCert {
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        not_after,
    })
}

/// Picks the server's certificate by the ALPN the handshake will settle on: `h3` gets the
/// one set with [`AlpnCertResolver::set_h3`] (a short-lived certificate browsers trust
/// by its hash), everything else, and `h3` until one is set, the relay's identity.
#[derive(Debug)]
pub struct AlpnCertResolver {
    identity: Arc<rustls::sign::CertifiedKey>,
    h3: RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
    /// The server's ALPN list, in its order: rustls picks the first of these the client
    /// offers, and the choice here must be the same.
    server_alpn: Vec<Vec<u8>>,
}

impl AlpnCertResolver {
    /// Serves `identity` to every ALPN of `server_alpn` until an `h3` certificate is set.
    pub fn new(identity: Arc<rustls::sign::CertifiedKey>, server_alpn: &[&[u8]]) -> Self {
        Self {
            identity,
            h3: RwLock::new(None),
            server_alpn: server_alpn.iter().map(|p| p.to_vec()).collect(),
        }
    }

    /// From now on `h3` handshakes present `key` (handshakes under way keep theirs).
    pub fn set_h3(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self.h3.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// The certificate for a client offering `offered`.
    fn pick<'a>(&self, offered: impl Iterator<Item = &'a [u8]> + Clone) -> Arc<rustls::sign::CertifiedKey> {
        let chosen = self.server_alpn.iter().find(|ours| offered.clone().any(|p| p == ours.as_slice()));
        if chosen.is_some_and(|p| p == ALPN_H3) {
            if let Some(h3) = self.h3.read().unwrap_or_else(|e| e.into_inner()).clone() {
                return h3;
            }
        }
        self.identity.clone()
    }
}

impl rustls::server::ResolvesServerCert for AlpnCertResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(match hello.alpn() {
            Some(offered) => {
                let offered: Vec<&[u8]> = offered.collect();
                self.pick(offered.iter().copied())
            }
            None => self.identity.clone(),
        })
    }
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The public web PKI roots.
    WebPki,
    /// Certificates from a PEM file (e.g. `certs/dev-ca.pem`).
    CaFile(PathBuf),
    /// No verification at all (development only).
    Insecure,
    /// A server certificate whose DER has one of these SHA-256 hashes, whatever signed
    /// it: what a browser's `serverCertificateHashes` does, so a client can reach the
    /// relay's short-lived `h3` certificate (listed at `/webtransport.json`) as a page
    /// does.
    CertHashes(Vec<[u8; 32]>),
}

/// Client config for QUIC (TLS 1.3 only) with the given ALPN list.
pub fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(trust, alpn, &[&rustls::version::TLS13])
}

/// Client config for RTMPS: TLS 1.3 preferred, TLS 1.2 (ECDHE + AEAD) for servers
/// without it.
pub fn rtmps_client_config(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(trust, &[], &[&rustls::version::TLS13, &rustls::version::TLS12])
}

fn client_config_with(
    trust: &Trust,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder =
        rustls::ClientConfig::builder_with_provider(modern_provider()).with_protocol_versions(versions)?;
    let mut config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        Trust::CertHashes(hashes) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(HashPinned {
                hashes: hashes.clone(),
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::WebPki | Trust::CaFile(_) => {
            let mut roots = rustls::RootCertStore::empty();
            if let Trust::CaFile(path) = trust {
                for cert in load_certs(path)? {
                    roots.add(cert)?;
                }
            } else {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// `--insecure`: accepts any server certificate but still checks handshake signatures
/// so the connection is at least encrypted to whoever answered.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// [`Trust::CertHashes`]: the end-entity certificate must hash to a listed value; the
/// handshake signatures are checked as always, so the peer holds that certificate's key.
#[derive(Debug)]
struct HashPinned {
    hashes: Vec<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for HashPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The hash names one certificate, so neither the name nor a chain says more.
        if self.hashes.contains(&sha256(end_entity)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22 #15: a key found readable by others is made 0600; a certificate that
    /// does not match its key is refused at start, naming both files.
    #[test]
    fn found_keys_are_made_private_and_mismatched_certificates_refused() {
        let dir = tempfile::tempdir().unwrap();
        dev_identity(dir.path()).unwrap();
        let key = dir.path().join(DEV_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
            dev_identity(dir.path()).unwrap();
            assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let other = tempfile::tempdir().unwrap();
        dev_identity(other.path()).unwrap();
        fs::copy(other.path().join(DEV_KEY_FILE), &key).unwrap();
        let e = dev_identity(dir.path()).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains(DEV_CERT_FILE) && e.to_string().contains(DEV_KEY_FILE), "{e}");
    }

    #[test]
    fn dev_identity_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = dev_identity(dir.path()).unwrap();
        assert!(created);
        let (b, created) = dev_identity(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.chain, b.chain);
        assert!(a.dev_ca.unwrap().ends_with(DEV_CA_FILE));
        server_config(&b, &[ALPN_RTMP]).unwrap();
        client_config(&Trust::CaFile(dir.path().join(DEV_CA_FILE)), &[ALPN_RTMP]).unwrap();
    }

    #[test]
    fn a_pinned_hash_accepts_that_certificate_only() {
        let now = SystemTime::now();
        let listed = short_lived_cert(now, Duration::from_secs(3600)).unwrap();
        let other = short_lived_cert(now, Duration::from_secs(3600)).unwrap();
        let pinned = HashPinned { hashes: vec![listed.sha256()], provider: provider() };
        let name = ServerName::try_from("example.invalid").unwrap();
        let check =
            |cert: &CertificateDer<'_>| pinned.verify_server_cert(cert, &[], &name, &[], UnixTime::now());
        assert!(check(&listed.cert).is_ok(), "any name: the hash is the identity");
        assert!(check(&other.cert).is_err());
        client_config(&Trust::CertHashes(vec![listed.sha256()]), &[ALPN_H3]).unwrap();
    }

    #[test]
    fn pem_files_without_material_or_malformed_are_named() {
        let dir = tempfile::tempdir().unwrap();
        dev_identity(dir.path()).unwrap();
        let (cert, key) = (dir.path().join(DEV_CERT_FILE), dir.path().join(DEV_KEY_FILE));
        assert!(load_identity(&cert, &key).is_ok());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(load_certs(&empty), Err(TlsError::Empty(_))));
        assert!(matches!(load_identity(&cert, &empty), Err(TlsError::Empty(_))));
        let cut = dir.path().join("cut.pem");
        std::fs::write(&cut, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let e = load_certs(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.pem") && e.contains("bad PEM"), "{e}");
    }

    #[test]
    fn the_dev_leaf_is_what_other_quic_stacks_accept() {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = dev_identity(dir.path()).unwrap();
        let leaf: &[u8] = id.chain[0].as_ref();
        let has = |der: &[u8]| leaf.windows(der.len()).any(|w| w == der);
        assert!(has(&[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]), "not an EC key");
        assert!(has(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]), "not P-256");
        assert!(has(&[0x06, 0x03, 0x55, 0x1d, 0x11]), "no subjectAltName");
        // basicConstraints, critical, with cA spelled out as FALSE (what `openssl x509`
        // shows as "CA:FALSE").
        let ca_false =
            [0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x05, 0x30, 0x03, 0x01, 0x01, 0x00];
        assert!(has(&ca_false), "no critical basicConstraints with CA:FALSE");
    }

    #[test]
    fn h3_gets_the_short_lived_certificate_and_every_other_alpn_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = dev_identity(dir.path()).unwrap();
        let identity = certified_key(id.chain.clone(), id.key.clone_key()).unwrap();
        let resolver = AlpnCertResolver::new(identity.clone(), &SERVER_ALPN);
        let pick = |offered: &[&[u8]]| resolver.pick(offered.iter().copied());
        // No h3 certificate yet: the identity for all.
        assert!(Arc::ptr_eq(&pick(&[ALPN_H3]), &identity));
        let now = SystemTime::now();
        let short = short_lived_cert(now, HASHED_CERT_MAX_VALIDITY * 2).unwrap();
        assert!(short.not_after <= now + HASHED_CERT_MAX_VALIDITY, "validity is capped");
        let h3 = certified_key(vec![short.cert.clone()], short.key).unwrap();
        resolver.set_h3(h3.clone());
        assert!(Arc::ptr_eq(&pick(&[ALPN_H3]), &h3));
        assert!(Arc::ptr_eq(&pick(&[b"foo", ALPN_H3]), &h3));
        assert!(Arc::ptr_eq(&pick(&[ALPN_ROQR]), &identity));
        assert!(Arc::ptr_eq(&pick(&[ALPN_RTMP]), &identity));
        assert!(Arc::ptr_eq(&pick(&[b"foo"]), &identity));
        // The server's order decides, as rustls's choice does: roqr before h3.
        assert!(Arc::ptr_eq(&pick(&[ALPN_H3, ALPN_ROQR]), &identity));
    }
}
