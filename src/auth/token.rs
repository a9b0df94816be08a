//! Publish/play tokens: JSON Web Tokens (RFC 7519) signed with HMAC-SHA256 (`HS256`),
//! so any JWT library can mint them with the same secret. The claims are the session-ID
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

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::gate::Role;

/// The only algorithm accepted. Reading `alg` from the token and following it is how JWT
/// verifiers get fooled (`none`, or an asymmetric key used as an HMAC secret).
const ALG: Algorithm = Algorithm::HS256;
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
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != ALG {
        return Err(TokenError::Malformed);
    }
    let claims = jsonwebtoken::decode::<Claims>(token, &secret.decoding, &validation(ALG, expect))
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
            _ => TokenError::Malformed,
        })?
        .claims;
    check_times(&claims, expect.leeway_s, now)?;
    Ok(claims)
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
    authorize_as(secret, &Expect::default(), token, role, session_id, now)
}

/// Verifies `token` as `expect` says and checks that it allows `role` on `session_id`.
pub fn authorize_as(
    secret: &Secret,
    expect: &Expect,
    token: &str,
    role: Role,
    session_id: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    let claims = verify_as(secret, expect, token, now)?;
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

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

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
        assert!(authorize_as(&s, &edge, &minted, Role::Play, "live/x", unix_now()).is_ok());
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
