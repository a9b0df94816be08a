//! Publish/play tokens: JSON Web Tokens (RFC 7519) signed with HMAC-SHA256 (`HS256`),
//! so any JWT library can mint them with the same secret, or by an auth service with a
//! private key whose public half the relay has ([`PublicKey`]: `ES256` on P-256, `EdDSA`
//! on Ed25519), so that an edge that checks tokens cannot make them. The claims are the session-ID
//! pattern (`sub`), the role (`role`: `publish`, `play` or `both`), the expiry (`exp`,
//! Unix seconds) and optionally `nbf` (not before), `iss` and `aud`, checked against
//! [`Expect`]. A token is three base64url parts joined by `.`: it travels in a URL query
//! unescaped. Pure: the current time is passed in.
//!
//! Parsing, signatures and minting are `jsonwebtoken`'s (a maintained JWT library on
//! ring, the crypto rustls and quinn use here); what is ours is the choice of key for a
//! token's algorithm and the time checks, which take `now` instead of reading the clock.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::gate::Role;

/// The algorithm of the shared secret, the only one it is used with. A token's `alg`
/// picks a kind of key, never how a key is used: following it blindly is how JWT
/// verifiers get fooled (`none`, or a public key's bytes used as an HMAC secret).
const ALG: Algorithm = Algorithm::HS256;
/// Keys a token is tried against at most (those of its algorithm, and of its `kid` when
/// keys have IDs): each try is a signature check.
const MAX_TRIES: usize = 8;
/// DER of a P-256 public key (SubjectPublicKeyInfo) up to its 65-byte point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER of an Ed25519 public key (SubjectPublicKeyInfo) up to its 32 bytes.
const ED25519_SPKI_PREFIX: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Longest token looked at: real ones are about 150 characters.
const MAX_TOKEN_LEN: usize = 2048;
/// Longest pattern, as long as the longest session ID.
const MAX_PATTERN_LEN: usize = 2049;
/// Shortest secret accepted: an HMAC key much shorter than its hash is guessable offline
/// from a single token.
pub const MIN_SECRET_LEN: usize = 16;
/// Where the secret itself may be given instead of a file.
pub const SECRET_ENV: &str = "QRELAY_AUTH_SECRET";
/// How far `exp` and `nbf` are stretched by default: a token minted by an auth service
/// whose clock is a little ahead is not refused as "not yet valid" on a fresh edge.
pub const DEFAULT_LEEWAY_S: u64 = 30;
/// Largest leeway accepted: more turns `exp` into a suggestion.
pub const MAX_LEEWAY_S: u64 = 600;

/// What a token must say besides its scope, and how much clocks may disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// The `aud` a token must name (minted tokens carry it). When `None`, a token that
    /// names an audience is refused (RFC 7519 4.1.3: it is meant for someone else).
    pub audience: Option<String>,
    /// The `iss` a token must carry (minted tokens carry it); any or none when `None`.
    pub issuer: Option<String>,
    /// Seconds added to `exp` and taken from `nbf` before comparing them with now.
    pub leeway_s: u64,
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Publish only.
    Publish,
    /// Play only.
    Play,
    /// Publish and play.
    Both,
}

impl TokenRole {
    /// Whether the token's role covers `role`.
    pub fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (TokenRole::Both, _) | (TokenRole::Publish, Role::Publish) | (TokenRole::Play, Role::Play)
        )
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRole::Publish => "publish",
            TokenRole::Play => "play",
            TokenRole::Both => "both",
        })
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The session-ID pattern it is valid for (`live/cam1`, `live/*`, `*`).
    pub sub: String,
    /// What it allows.
    pub role: TokenRole,
    /// Expiry, Unix seconds: valid strictly before (plus the leeway). Required: a
    /// token without one would be valid for ever.
    pub exp: u64,
    /// Not before, Unix seconds (less the leeway); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// What a minted token carries: the claims, and the issuer and audience verifiers expect.
/// `aud` and `iss` are not in [`Claims`] because other issuers may send `aud` as a list;
/// `jsonwebtoken` checks both either way.
#[derive(Serialize)]
struct Minted<'a> {
    #[serde(flatten)]
    claims: &'a Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Why a token was not accepted (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, not JSON, not `HS256`, claims missing or too long.
    #[error("token malformed")]
    Malformed,
    /// The signature does not match: another secret, or altered claims.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Before its `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// Without the configured audience, or naming one when none is configured.
    #[error("token not meant for this relay (aud)")]
    WrongAudience,
    /// Without the configured issuer.
    #[error("token from another issuer (iss)")]
    WrongIssuer,
    /// An algorithm other than `HS256`, `ES256` and `EdDSA`.
    #[error("token algorithm not accepted")]
    Algorithm,
    /// No configured key of the token's algorithm (and `kid`, when keys have IDs).
    #[error("no key for this token")]
    UnknownKey,
    /// Valid, for the other role.
    #[error("token not valid for {0}")]
    WrongRole(&'static str),
    /// Valid, for other session IDs.
    #[error("token not valid for this stream")]
    WrongStream,
    /// A pattern that cannot be put in a token.
    #[error("bad session-ID pattern: {0}")]
    BadPattern(&'static str),
    /// A lifetime of zero, or past the year 2^64.
    #[error("bad token lifetime")]
    BadTtl,
}

/// The signing secret. Its bytes never leave this type (not even through `Debug`, which
/// `jsonwebtoken`'s key types would print).
#[derive(Clone)]
pub struct Secret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("reading the auth secret file {}: {error}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// Fewer bytes than [`MIN_SECRET_LEN`] (after trimming whitespace).
    #[error(
        "the auth secret from {origin} is {len} bytes; at least {MIN_SECRET_LEN} are needed \
         (make one with `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort {
        /// The file or variable it came from.
        origin: String,
        /// Its length.
        len: usize,
    },
}

impl Secret {
    /// A secret from its text or bytes; surrounding whitespace (a file's final newline)
    /// is not part of it.
    pub fn new(bytes: &[u8], origin: &str) -> Result<Self, SecretError> {
        let bytes = bytes.trim_ascii();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { origin: origin.to_owned(), len: bytes.len() });
        }
        Ok(Self { encoding: EncodingKey::from_secret(bytes), decoding: DecodingKey::from_secret(bytes) })
    }

    /// The secret in `file`, or else in `QRELAY_AUTH_SECRET`; `None` when neither is set.
    pub fn load(file: Option<&Path>) -> Result<Option<Self>, SecretError> {
        if let Some(path) = file {
            let bytes =
                std::fs::read(path).map_err(|error| SecretError::Read { path: path.to_owned(), error })?;
            return Self::new(&bytes, &path.display().to_string()).map(Some);
        }
        match std::env::var_os(SECRET_ENV) {
            Some(v) if !v.is_empty() => Self::new(v.as_encoded_bytes(), SECRET_ENV).map(Some),
            _ => Ok(None),
        }
    }
}

/// The kind of a public key, which fixes the one algorithm it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256 (`ES256`).
    Es256,
    /// Ed25519 (`EdDSA`).
    Ed25519,
}

impl KeyKind {
    /// The kind of key a token signed with `alg` needs; `None` for the shared secret's
    /// `HS256` and for algorithms not accepted.
    fn of(alg: Algorithm) -> Option<Self> {
        match alg {
            Algorithm::ES256 => Some(KeyKind::Es256),
            Algorithm::EdDSA => Some(KeyKind::Ed25519),
            _ => None,
        }
    }

    /// The algorithm it verifies.
    pub fn alg(self) -> Algorithm {
        match self {
            KeyKind::Es256 => Algorithm::ES256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// A public key tokens may be signed for: it verifies and cannot mint.
#[derive(Clone)]
pub struct PublicKey {
    kind: KeyKind,
    /// Its ID (`kid`), when it has one: a token naming a `kid` is checked with the keys of
    /// that ID only, if there are any.
    kid: Option<String>,
    key: DecodingKey,
    /// Where it came from, for logs.
    origin: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Why a public key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading the auth public key file {}: {error}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// Not a P-256 or Ed25519 public key in PEM.
    #[error("the auth public key {origin}: {why}")]
    Unusable {
        /// The file (or JWKS entry) it came from.
        origin: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl PublicKey {
    /// A key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block, P-256 or Ed25519, as
    /// `openssl pkey -pubout` writes it.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Self, KeyError> {
        let unusable = |why| KeyError::Unusable { origin: origin.to_owned(), why };
        let text = std::str::from_utf8(pem).map_err(|_| unusable("not PEM text"))?;
        if text.contains("PRIVATE KEY-----") {
            return Err(unusable("a private key; give its public half (openssl pkey -pubout)"));
        }
        let der = pem_block(text, "PUBLIC KEY").ok_or(unusable("no PEM `PUBLIC KEY` block"))?;
        // The whole encoding is fixed for these two kinds, so a prefix says the algorithm
        // and the curve (P-384 or RSA keys, which `from_ec_pem` would also take, do not).
        let (kind, key) = if der.len() == P256_SPKI_PREFIX.len() + 65 && der.starts_with(P256_SPKI_PREFIX) {
            (KeyKind::Es256, DecodingKey::from_ec_pem(pem))
        } else if der.len() == ED25519_SPKI_PREFIX.len() + 32 && der.starts_with(ED25519_SPKI_PREFIX) {
            (KeyKind::Ed25519, DecodingKey::from_ed_pem(pem))
        } else {
            return Err(unusable("not a P-256 (ES256) or Ed25519 (EdDSA) public key"));
        };
        let key = key.map_err(|_| unusable("not a valid public key"))?;
        Ok(Self { kind, kid: None, key, origin: origin.to_owned() })
    }

    /// The key in the PEM file `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|error| KeyError::Read { path: path.to_owned(), error })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    /// A key from a JWK (RFC 7517) of a JWKS: `EC` on `P-256` or `OKP` on `Ed25519`, for
    /// signatures. Symmetric (`oct`) keys are refused: `HS256` is checked with the shared
    /// secret only, never with a key anyone who reads the JWKS has.
    pub fn from_jwk(jwk: &jsonwebtoken::jwk::Jwk, origin: &str) -> Result<Self, KeyError> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm, PublicKeyUse};
        let unusable = |why| KeyError::Unusable { origin: origin.to_owned(), why };
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
            return Err(unusable("not a signature key (use)"));
        }
        let raw_len = |b64: &str| URL_SAFE_NO_PAD.decode(b64).map(|b| b.len()).unwrap_or(0);
        let (kind, key) = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p)
                if p.curve == EllipticCurve::P256 && raw_len(&p.x) == 32 && raw_len(&p.y) == 32 =>
            {
                (KeyKind::Es256, DecodingKey::from_ec_components(&p.x, &p.y))
            }
            AlgorithmParameters::OctetKeyPair(p)
                if p.curve == EllipticCurve::Ed25519 && raw_len(&p.x) == 32 =>
            {
                (KeyKind::Ed25519, DecodingKey::from_ed_components(&p.x))
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(unusable("a symmetric key (HS256 is the secret's)"))
            }
            _ => return Err(unusable("not a P-256 (ES256) or Ed25519 (EdDSA) key")),
        };
        let alg = match kind {
            KeyKind::Es256 => KeyAlgorithm::ES256,
            KeyKind::Ed25519 => KeyAlgorithm::EdDSA,
        };
        if jwk.common.key_algorithm.is_some_and(|a| a != alg) {
            return Err(unusable("its alg does not fit its curve"));
        }
        let key = key.map_err(|_| unusable("bad key coordinates"))?;
        Ok(Self { kind, kid: jwk.common.key_id.clone(), key, origin: origin.to_owned() })
    }

    /// This key with the ID `kid`.
    pub fn with_kid(self, kid: impl Into<String>) -> Self {
        Self { kid: Some(kid.into()), ..self }
    }

    /// Its kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Its ID, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// The base64 body of the first `-----BEGIN {label}-----` block in `text`, decoded.
fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The keys tokens are checked with: the shared secret for `HS256`, public keys for
/// `ES256` and `EdDSA`.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    /// The shared secret, if any.
    pub secret: Option<&'a Secret>,
    /// Public keys from files.
    pub public: &'a [PublicKey],
    /// Public keys from elsewhere (a JWKS).
    pub fetched: &'a [PublicKey],
}

impl<'a> Keys<'a> {
    /// The secret alone.
    pub fn secret(secret: &'a Secret) -> Self {
        Self { secret: Some(secret), public: &[], fetched: &[] }
    }

    /// The keys that may have signed a token with `header`: the secret for `HS256`; for
    /// the others, the public keys of that kind, narrowed to those with the token's
    /// `kid` when any has it (keys without an ID otherwise).
    fn for_header(&self, header: &Header) -> Result<Vec<&'a DecodingKey>, TokenError> {
        if header.alg == ALG {
            return self.secret.map(|s| vec![&s.decoding]).ok_or(TokenError::UnknownKey);
        }
        let kind = KeyKind::of(header.alg).ok_or(TokenError::Algorithm)?;
        let of_kind = || self.public.iter().chain(self.fetched).filter(move |k| k.kind == kind);
        let kid = header.kid.as_deref();
        let named = kid.is_some_and(|kid| of_kind().any(|k| k.kid.as_deref() == Some(kid)));
        let keys: Vec<&DecodingKey> = of_kind()
            .filter(|k| match kid {
                Some(_) if named => k.kid.as_deref() == kid,
                Some(_) => k.kid.is_none(),
                None => true,
            })
            .map(|k| &k.key)
            .take(MAX_TRIES)
            .collect();
        if keys.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        Ok(keys)
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token for `pattern` and `role`, valid for `ttl` from now.
pub fn mint(secret: &Secret, pattern: &str, role: TokenRole, ttl: Duration) -> Result<String, TokenError> {
    mint_for(secret, &Expect::default(), pattern, role, ttl)
}

/// A token for `pattern` and `role`, valid for `ttl` from now, carrying the issuer and
/// audience `expect` asks for.
pub fn mint_for(
    secret: &Secret,
    expect: &Expect,
    pattern: &str,
    role: TokenRole,
    ttl: Duration,
) -> Result<String, TokenError> {
    if ttl.is_zero() {
        return Err(TokenError::BadTtl);
    }
    let exp = unix_now().checked_add(ttl.as_secs().max(1)).ok_or(TokenError::BadTtl)?;
    mint_claims(secret, expect, &Claims { sub: pattern.to_owned(), role, exp, nbf: None })
}

/// A token for `pattern` and `role` that expires at `exp` (Unix seconds).
pub fn mint_until(secret: &Secret, pattern: &str, role: TokenRole, exp: u64) -> Result<String, TokenError> {
    mint_claims(secret, &Expect::default(), &Claims { sub: pattern.to_owned(), role, exp, nbf: None })
}

/// A token with `claims`, carrying the issuer and audience `expect` asks for.
pub fn mint_claims(secret: &Secret, expect: &Expect, claims: &Claims) -> Result<String, TokenError> {
    check_pattern(&claims.sub)?;
    let minted = Minted { claims, iss: expect.issuer.as_deref(), aud: expect.audience.as_deref() };
    jsonwebtoken::encode(&Header::new(ALG), &minted, &secret.encoding).map_err(|_| TokenError::Malformed)
}

/// The claims of a token signed with `secret` and not expired at `now` (Unix seconds),
/// with no leeway and no issuer or audience expected.
pub fn verify(secret: &Secret, token: &str, now: u64) -> Result<Claims, TokenError> {
    verify_as(secret, &Expect::default(), token, now)
}

/// The claims of a token signed with `secret`, valid at `now` (Unix seconds) as `expect`
/// says. Checks the signature before reading the claims.
pub fn verify_as(secret: &Secret, expect: &Expect, token: &str, now: u64) -> Result<Claims, TokenError> {
    verify_with(&Keys::secret(secret), expect, token, now)
}

/// The claims of a token signed with one of `keys` (the one its `alg` and `kid` pick),
/// valid at `now` (Unix seconds) as `expect` says. Checks the signature before reading
/// the claims.
pub fn verify_with(keys: &Keys<'_>, expect: &Expect, token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let candidates = keys.for_header(&header)?;
    // One algorithm, the header's, allowed for keys that `for_header` chose by it: the
    // library refuses a key of another family, so a public key never verifies `HS256`.
    let validation = validation(header.alg, expect);
    for key in candidates {
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => {
                check_times(&data.claims, expect.leeway_s, now)?;
                return Ok(data.claims);
            }
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
                    ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                    _ => TokenError::Malformed,
                })
            }
        }
    }
    Err(TokenError::BadSignature)
}

/// What `jsonwebtoken` checks: the signature with `alg` only, and `aud` and `iss`.
fn validation(alg: Algorithm, expect: &Expect) -> Validation {
    let mut validation = Validation::new(alg);
    // The library would read the system clock; `check_times` compares with `now`.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    // `exp` is required by `Claims` itself; `aud` and `iss` only when configured (the
    // library checks a present one against the expected value, not an absent one).
    validation.required_spec_claims.clear();
    if let Some(aud) = &expect.audience {
        validation.set_audience(&[aud]);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    if let Some(iss) = &expect.issuer {
        validation.set_issuer(&[iss]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    validation
}

/// `exp` and `nbf` against `now`, each stretched by `leeway_s`.
fn check_times(claims: &Claims, leeway_s: u64, now: u64) -> Result<(), TokenError> {
    if claims.exp.saturating_add(leeway_s) <= now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway_s)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// Verifies `token` and checks that it allows `role` on `session_id`.
pub fn authorize(
    secret: &Secret,
    token: &str,
    role: Role,
    session_id: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    authorize_with(&Keys::secret(secret), &Expect::default(), token, role, session_id, now)
}

/// Verifies `token` with `keys` as `expect` says and checks that it allows `role` on
/// `session_id`.
pub fn authorize_with(
    keys: &Keys<'_>,
    expect: &Expect,
    token: &str,
    role: Role,
    session_id: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    let claims = verify_with(keys, expect, token, now)?;
    check_scope(claims, role, session_id)
}

/// Whether verified `claims` allow `role` on `session_id`.
fn check_scope(claims: Claims, role: Role, session_id: &str) -> Result<Claims, TokenError> {
    if !claims.role.allows(role) {
        return Err(TokenError::WrongRole(match role {
            Role::Publish => "publishing",
            Role::Play => "playing",
        }));
    }
    if !pattern_matches(&claims.sub, session_id) {
        return Err(TokenError::WrongStream);
    }
    Ok(claims)
}

fn check_pattern(pattern: &str) -> Result<(), TokenError> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
        return Err(TokenError::BadPattern("empty or too long"));
    }
    if pattern.contains('?') || pattern.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenError::BadPattern("no `?`, spaces or control characters in a session ID"));
    }
    if pattern != "*" && (pattern.starts_with('/') || pattern.ends_with('/') || !pattern.contains('/')) {
        return Err(TokenError::BadPattern("a session ID is `app/key` (or `*` for every session)"));
    }
    Ok(())
}

/// Whether a session ID matches a token's pattern: `*` alone matches every session;
/// otherwise the pattern and the session ID have the same number of `/`-separated
/// segments and each pattern segment matches its segment, a `*` standing for any run of
/// characters within it (`live/*`, `live/cam*`, `*/cam1`).
pub fn pattern_matches(pattern: &str, session_id: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let mut pat = pattern.split('/');
    let mut id = session_id.split('/');
    loop {
        match (pat.next(), id.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if crate::glob::matches(p, s) => {}
            _ => return false,
        }
    }
}

/// A token lifetime: a number with `s`, `m`, `h` or `d` (`30s`, `15m`, `1h`, `7d`); a bare
/// number is seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: expected a number with s, m, h or d (30s, 15m, 1h, 7d)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{text}`: expected a number with s, m, h or d"))?;
    match n.checked_mul(scale) {
        Some(0) => Err(format!("`{text}`: a token must live longer than 0 s")),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("`{text}` is too long")),
    }
}

/// Key pairs for tests: the private half as `jsonwebtoken` signs with it, the public half
/// as PEM and as JWK parameters.
#[cfg(test)]
pub(crate) mod test_keys {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    use super::{Claims, ED25519_SPKI_PREFIX, P256_SPKI_PREFIX};

    pub(crate) struct TestKey {
        pub(crate) alg: Algorithm,
        pub(crate) signing: EncodingKey,
        /// The public key's raw bytes (a P-256 point or 32 Ed25519 bytes).
        pub(crate) raw: Vec<u8>,
        pub(crate) pem: String,
    }

    pub(crate) fn pem(label: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> =
            b64.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    pub(crate) fn es256() -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let raw = pair.public_key().as_ref().to_vec();
        let pem = pem("PUBLIC KEY", &[P256_SPKI_PREFIX, &raw].concat());
        TestKey { alg: Algorithm::ES256, signing: EncodingKey::from_ec_der(pkcs8.as_ref()), raw, pem }
    }

    pub(crate) fn ed25519() -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let raw = pair.public_key().as_ref().to_vec();
        let pem = pem("PUBLIC KEY", &[ED25519_SPKI_PREFIX, &raw].concat());
        TestKey { alg: Algorithm::EdDSA, signing: EncodingKey::from_ed_der(pkcs8.as_ref()), raw, pem }
    }

    impl TestKey {
        /// A token with `claims`, and `kid` in its header if given.
        pub(crate) fn sign(&self, claims: &Claims, kid: Option<&str>) -> String {
            let header = Header { kid: kid.map(str::to_owned), ..Header::new(self.alg) };
            jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
        }

        /// The public key as a JWK (`kty`, `crv`, coordinates, `kid`).
        pub(crate) fn jwk(&self, kid: &str) -> serde_json::Value {
            let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            match self.alg {
                Algorithm::ES256 => serde_json::json!({
                    "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": b64(&self.raw[1..33]), "y": b64(&self.raw[33..65]),
                }),
                _ => serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&self.raw)}),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes(), "test").unwrap()
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_minted_token_verifies_and_is_url_safe() {
        let s = secret("0123456789abcdef-secret");
        let t = mint_until(&s, "live/cam1", TokenRole::Publish, NOW + 60).unwrap();
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{t}");
        let c = verify(&s, &t, NOW).unwrap();
        assert_eq!(c, Claims { sub: "live/cam1".into(), role: TokenRole::Publish, exp: NOW + 60, nbf: None });
        assert!(authorize(&s, &t, Role::Publish, "live/cam1", NOW).is_ok());
    }

    /// Tokens minted by the hand-written HS256 code this module had before it used
    /// `jsonwebtoken` (header `{"alg":"HS256","typ":"JWT"}`, claims `sub`, `role`, `exp`):
    /// tokens handed out then must keep working until they expire.
    #[test]
    fn tokens_minted_by_the_old_code_still_verify() {
        const OLD_SECRET: &str = "old-code-secret-0123456789";
        const OLD_EXP: u64 = 1_700_003_600;
        let s = secret(OLD_SECRET);
        for (token, sub, role) in [
            (
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlLyoiLCJyb2xlIjoiYm90aCIsImV4cCI6MTcwMDAwMzYwMH0.\
                 0JlIVmLhxFY40egI4RDjO3wjcnUX2nKv9wfE3UTJ1z0",
                "live/*",
                TokenRole::Both,
            ),
            (
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlL2NhbTEiLCJyb2xlIjoicHVibGlzaCIsImV4cCI6MTcwMDAwMzYwMH0.\
                 je4My3pNHvfPGvtKE9c9j1dNXLbAfPPaN6A2lMboEGY",
                "live/cam1",
                TokenRole::Publish,
            ),
            (
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIqIiwicm9sZSI6InBsYXkiLCJleHAiOjE3MDAwMDM2MDB9.\
                 8VPsqmxuQg5sgd6wDFpm3UOfZd9ZLAD_wytFrjy1qbw",
                "*",
                TokenRole::Play,
            ),
        ] {
            let c = verify(&s, token, OLD_EXP - 1).unwrap();
            assert_eq!(c, Claims { sub: sub.into(), role, exp: OLD_EXP, nbf: None }, "{token}");
            assert_eq!(verify(&s, token, OLD_EXP + 3600), Err(TokenError::Expired));
            assert_eq!(verify(&secret("another-secret-of-enough-bytes"), token, NOW), Err(TokenError::BadSignature));
        }
        let both = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlLyoiLCJyb2xlIjoiYm90aCIsImV4cCI6MTcwMDAwMzYwMH0.\
                    0JlIVmLhxFY40egI4RDjO3wjcnUX2nKv9wfE3UTJ1z0";
        assert!(authorize(&s, both, Role::Play, "live/cam9", NOW).is_ok());
        assert_eq!(authorize(&s, both, Role::Play, "other/cam9", NOW), Err(TokenError::WrongStream));
    }

    #[test]
    fn refusals_say_why() {
        let s = secret("0123456789abcdef-secret");
        let t = mint_until(&s, "live/cam1", TokenRole::Publish, NOW + 60).unwrap();
        let other = secret("another-secret-of-enough-bytes");
        assert_eq!(verify(&other, &t, NOW), Err(TokenError::BadSignature));
        assert_eq!(verify(&s, &t, NOW + 60), Err(TokenError::Expired));
        assert_eq!(authorize(&s, &t, Role::Play, "live/cam1", NOW), Err(TokenError::WrongRole("playing")));
        assert_eq!(authorize(&s, &t, Role::Publish, "live/cam2", NOW), Err(TokenError::WrongStream));
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(3000)] {
            assert_eq!(verify(&s, bad, NOW), Err(TokenError::Malformed), "{bad}");
        }
        // Altered claims (another stream) under the original signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"*","role":"both","exp":9999999999}"#);
        parts[1] = &forged;
        assert_eq!(verify(&s, &parts.join("."), NOW), Err(TokenError::BadSignature));
        // `alg: none` with no signature is not a token.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), forged);
        assert_eq!(verify(&s, &none, NOW), Err(TokenError::Malformed));
    }

    /// `nbf` is checked besides `exp` (before, a token was valid before its `nbf`), both
    /// stretched by the leeway.
    #[test]
    fn not_before_and_leeway() {
        let s = secret("0123456789abcdef-secret");
        let claims =
            Claims { sub: "live/cam1".into(), role: TokenRole::Play, exp: NOW + 600, nbf: Some(NOW) };
        let t = mint_claims(&s, &Expect::default(), &claims).unwrap();
        let strict = Expect::default();
        assert_eq!(verify_as(&s, &strict, &t, NOW - 1), Err(TokenError::NotYetValid));
        assert_eq!(verify_as(&s, &strict, &t, NOW), Ok(claims.clone()));
        assert_eq!(verify_as(&s, &strict, &t, NOW + 600), Err(TokenError::Expired));
        let lenient = Expect { leeway_s: 30, ..Expect::default() };
        assert_eq!(verify_as(&s, &lenient, &t, NOW - 30), Ok(claims.clone()));
        assert_eq!(verify_as(&s, &lenient, &t, NOW - 31), Err(TokenError::NotYetValid));
        assert_eq!(verify_as(&s, &lenient, &t, NOW + 629), Ok(claims.clone()));
        assert_eq!(verify_as(&s, &lenient, &t, NOW + 630), Err(TokenError::Expired));
        // Near the end of time the leeway saturates instead of wrapping round.
        let far = Claims { exp: u64::MAX, nbf: Some(u64::MAX - 10), ..claims };
        let t = mint_claims(&s, &Expect::default(), &far).unwrap();
        assert_eq!(verify_as(&s, &lenient, &t, u64::MAX - 20), Ok(far.clone()));
        assert_eq!(verify_as(&s, &lenient, &t, u64::MAX - 50), Err(TokenError::NotYetValid));
    }

    /// With `audience` and `issuer` configured a token must carry both; minted tokens do.
    #[test]
    fn audience_and_issuer() {
        let s = secret("0123456789abcdef-secret");
        let edge = Expect { audience: Some("edge".into()), issuer: Some("auth".into()), leeway_s: 0 };
        let minted = mint_for(&s, &edge, "live/*", TokenRole::Play, Duration::from_secs(60)).unwrap();
        assert!(authorize_with(&Keys::secret(&s), &edge, &minted, Role::Play, "live/x", unix_now()).is_ok());
        let plain = mint_until(&s, "live/*", TokenRole::Play, NOW + 60).unwrap();
        // Both missing: either is named (the library checks required claims in no order).
        let both = verify_as(&s, &edge, &plain, NOW);
        assert!(matches!(both, Err(TokenError::WrongAudience | TokenError::WrongIssuer)), "{both:?}");
        let only_aud = Expect { issuer: None, ..edge.clone() };
        assert_eq!(verify_as(&s, &only_aud, &plain, NOW), Err(TokenError::WrongAudience));
        let only_iss = Expect { audience: None, ..edge.clone() };
        assert_eq!(verify_as(&s, &only_iss, &plain, NOW), Err(TokenError::WrongIssuer));
        let claims = Claims { sub: "live/*".into(), role: TokenRole::Play, exp: NOW + 60, nbf: None };
        for (aud, iss, want) in [
            ("other", "auth", Err(TokenError::WrongAudience)),
            ("edge", "other", Err(TokenError::WrongIssuer)),
            ("edge", "auth", Ok(claims.clone())),
        ] {
            let e = Expect { audience: Some(aud.into()), issuer: Some(iss.into()), leeway_s: 0 };
            let t = mint_claims(&s, &e, &claims).unwrap();
            assert_eq!(verify_as(&s, &edge, &t, NOW), want, "aud {aud}, iss {iss}");
        }
        // A list of audiences naming this one is accepted, as from other issuers.
        let body = r#"{"sub":"live/*","role":"play","exp":1700000060,"aud":["x","edge"],"iss":"auth"}"#;
        let t = jsonwebtoken::encode(
            &Header::new(ALG),
            &serde_json::from_str::<serde_json::Value>(body).unwrap(),
            &s.encoding,
        )
        .unwrap();
        assert_eq!(verify_as(&s, &edge, &t, NOW), Ok(claims.clone()));
        // A token for an audience is not for a relay that names none.
        assert_eq!(verify(&s, &t, NOW), Err(TokenError::WrongAudience));
    }

    fn play_claims() -> Claims {
        Claims { sub: "live/*".into(), role: TokenRole::Play, exp: NOW + 60, nbf: None }
    }

    /// Tokens an auth service signs with its private key verify with the public half.
    #[test]
    fn es256_and_eddsa_tokens_verify_with_public_keys() {
        use test_keys::{ed25519, es256};
        let (ec, ed) = (es256(), ed25519());
        let public = [
            PublicKey::from_pem(ec.pem.as_bytes(), "ec").unwrap(),
            PublicKey::from_pem(ed.pem.as_bytes(), "ed").unwrap(),
        ];
        assert_eq!((public[0].kind(), public[1].kind()), (KeyKind::Es256, KeyKind::Ed25519));
        let keys = Keys { secret: None, public: &public, fetched: &[] };
        let expect = Expect::default();
        let claims = play_claims();
        for key in [&ec, &ed] {
            let t = key.sign(&claims, None);
            assert_eq!(verify_with(&keys, &expect, &t, NOW), Ok(claims.clone()), "{:?}", key.alg);
            assert!(authorize_with(&keys, &expect, &t, Role::Play, "live/x", NOW).is_ok());
            assert_eq!(
                authorize_with(&keys, &expect, &t, Role::Publish, "live/x", NOW),
                Err(TokenError::WrongRole("publishing"))
            );
            assert_eq!(verify_with(&keys, &expect, &t, NOW + 60), Err(TokenError::Expired));
            // Another key pair of the same kind did not sign it.
            let other = if key.alg == Algorithm::ES256 { es256() } else { ed25519() };
            let forged = other.sign(&claims, None);
            assert_eq!(verify_with(&keys, &expect, &forged, NOW), Err(TokenError::BadSignature));
        }
        // Without a secret, HS256 tokens have no key; without public keys, ES256 neither.
        let s = secret("0123456789abcdef-secret");
        let hs = mint_claims(&s, &expect, &claims).unwrap();
        assert_eq!(verify_with(&keys, &expect, &hs, NOW), Err(TokenError::UnknownKey));
        assert_eq!(
            verify_with(&Keys::secret(&s), &expect, &ec.sign(&claims, None), NOW),
            Err(TokenError::UnknownKey)
        );
        let both = Keys { secret: Some(&s), ..keys };
        assert_eq!(verify_with(&both, &expect, &hs, NOW), Ok(claims.clone()));
        // Other algorithms are not accepted, whatever the keys.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef-secret"),
        )
        .unwrap();
        assert_eq!(verify_with(&both, &expect, &hs384, NOW), Err(TokenError::Algorithm));
    }

    /// Algorithm confusion: an `HS256` token whose HMAC key is a public key (its PEM text,
    /// its DER, its raw point: all public) is never verified with that public key.
    #[test]
    fn an_hs256_token_is_never_checked_with_a_public_key() {
        use test_keys::{ed25519, es256};
        let claims = play_claims();
        for key in [es256(), ed25519()] {
            let public = [PublicKey::from_pem(key.pem.as_bytes(), "k").unwrap()];
            let s = secret("0123456789abcdef-secret");
            let der = pem_block(&key.pem, "PUBLIC KEY").unwrap();
            for hmac_key in [key.pem.as_bytes(), &der, &key.raw] {
                let forged = jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &claims,
                    &EncodingKey::from_secret(hmac_key),
                )
                .unwrap();
                let only_public = Keys { secret: None, public: &public, fetched: &[] };
                assert_eq!(
                    verify_with(&only_public, &Expect::default(), &forged, NOW),
                    Err(TokenError::UnknownKey)
                );
                let with_secret = Keys { secret: Some(&s), public: &public, fetched: &public };
                assert_eq!(
                    verify_with(&with_secret, &Expect::default(), &forged, NOW),
                    Err(TokenError::BadSignature)
                );
                // Nor with the header claiming the public key's algorithm over an HMAC.
                let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{:?}","typ":"JWT"}}"#, key.alg));
                let mut parts: Vec<String> = forged.split('.').map(str::to_owned).collect();
                parts[0] = header;
                assert_eq!(
                    verify_with(&with_secret, &Expect::default(), &parts.join("."), NOW),
                    Err(TokenError::BadSignature)
                );
            }
        }
    }

    /// A token naming a `kid` is checked with the keys of that ID, or with keys that
    /// have none; one without a `kid` with every key of its kind.
    #[test]
    fn key_ids_pick_the_key() {
        use test_keys::es256;
        let (a, b, c) = (es256(), es256(), es256());
        let pk = |k: &test_keys::TestKey| PublicKey::from_pem(k.pem.as_bytes(), "k").unwrap();
        let public = [pk(&a).with_kid("a"), pk(&b).with_kid("b")];
        let keys = Keys { secret: None, public: &public, fetched: &[] };
        let (e, claims) = (Expect::default(), play_claims());
        assert!(verify_with(&keys, &e, &a.sign(&claims, Some("a")), NOW).is_ok());
        assert!(verify_with(&keys, &e, &b.sign(&claims, Some("b")), NOW).is_ok());
        assert!(verify_with(&keys, &e, &b.sign(&claims, None), NOW).is_ok(), "no kid: every key tried");
        assert_eq!(verify_with(&keys, &e, &b.sign(&claims, Some("a")), NOW), Err(TokenError::BadSignature));
        assert_eq!(verify_with(&keys, &e, &c.sign(&claims, Some("c")), NOW), Err(TokenError::UnknownKey));
        // An unknown kid falls back on keys without an ID.
        let with_plain = [pk(&a).with_kid("a"), pk(&c)];
        let keys = Keys { secret: None, public: &with_plain, fetched: &[] };
        assert!(verify_with(&keys, &e, &c.sign(&claims, Some("c")), NOW).is_ok());
        assert_eq!(with_plain[0].kid(), Some("a"));
    }

    #[test]
    fn only_p256_and_ed25519_public_keys_in_pem() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p384_prefix: &[u8] = &[
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
            0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
        ];
        let p384 = test_keys::pem("PUBLIC KEY", &[p384_prefix, pair.public_key().as_ref()].concat());
        let private = test_keys::pem("PRIVATE KEY", pkcs8.as_ref());
        let ec = test_keys::es256().pem;
        let truncated = test_keys::pem("PUBLIC KEY", &pem_block(&ec, "PUBLIC KEY").unwrap()[..80]);
        for (pem, says) in [
            (p384.as_str(), "not a P-256"),
            (private.as_str(), "private key"),
            ("hello", "no PEM"),
            (truncated.as_str(), "not a P-256"),
            (&ec.replace("BEGIN PUBLIC", "BEGIN CERTIFICATE"), "no PEM"),
        ] {
            let e = PublicKey::from_pem(pem.as_bytes(), "f.pem").unwrap_err().to_string();
            assert!(e.contains("f.pem") && e.contains(says), "{e}");
        }
        // As `openssl pkey -pubout` writes them.
        let openssl_ec = concat!(
            "-----BEGIN PUBLIC KEY-----\n",
            "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+jr+thVZie3EAjtcCcxJbu0tIb5V\n",
            "iH6p1QybBysjZaNsAy8tRKd1YH6csrVKSQAFdbSHO4kh5q+3iz4V4+eIiw==\n",
            "-----END PUBLIC KEY-----\n"
        );
        let openssl_ed = concat!(
            "-----BEGIN PUBLIC KEY-----\n",
            "MCowBQYDK2VwAyEAprrS4ezi5F3oxUsfXsvgM148mvkyg5HnkPKQK53zuY0=\n",
            "-----END PUBLIC KEY-----\n"
        );
        assert_eq!(PublicKey::from_pem(openssl_ec.as_bytes(), "ec").unwrap().kind(), KeyKind::Es256);
        assert_eq!(PublicKey::from_pem(openssl_ed.as_bytes(), "ed").unwrap().kind(), KeyKind::Ed25519);
        let dir = tempfile::tempdir().unwrap();
        let e = PublicKey::load(&dir.path().join("absent.pem")).unwrap_err().to_string();
        assert!(e.contains("absent.pem"), "{e}");
        std::fs::write(dir.path().join("k.pem"), &ec).unwrap();
        assert_eq!(PublicKey::load(&dir.path().join("k.pem")).unwrap().kind(), KeyKind::Es256);
    }

    #[test]
    fn roles_and_patterns() {
        assert!(TokenRole::Both.allows(Role::Play) && TokenRole::Both.allows(Role::Publish));
        assert!(!TokenRole::Play.allows(Role::Publish));
        for (p, id, ok) in [
            ("live/cam1", "live/cam1", true),
            ("live/cam1", "live/cam10", false),
            ("live/*", "live/cam1", true),
            ("live/*", "live/a/cam1", false),
            ("live/*", "other/cam1", false),
            ("live/cam*", "live/cam7", true),
            ("live/cam*", "live/dog7", false),
            ("*/cam1", "any/cam1", true),
            ("a/*/k", "a/b/k", true),
            ("*", "x/y/z", true),
            ("live/*a*b", "live/xaybzab", true),
            ("live/*a*b", "live/xaybza", false),
        ] {
            assert_eq!(pattern_matches(p, id), ok, "{p} vs {id}");
        }
        let s = secret("0123456789abcdef-secret");
        for bad in ["", "cam1", "/live/x", "live/", "live/x?token=1", "live/a b"] {
            assert!(mint_until(&s, bad, TokenRole::Play, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_and_ttls() {
        assert!(Secret::new(b"short\n", "f").is_err());
        assert!(Secret::new(b"  0123456789abcdef \n", "f").is_ok());
        let s1 = secret("0123456789abcdef");
        let s2 = Secret::new(b"0123456789abcdef\n", "file").unwrap();
        let t = mint_until(&s1, "live/x", TokenRole::Play, NOW + 1).unwrap();
        assert!(verify(&s2, &t, NOW).is_ok(), "the file's newline is not part of the secret");
        assert_eq!(format!("{s1:?}"), "Secret(..)");
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "0s", "1w", "h", "-1h", "99999999999999999999d", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
