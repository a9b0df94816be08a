//! Publish/play tokens: JSON Web Tokens (RFC 7519) signed with HMAC-SHA256 (`HS256`),
//! so any JWT library can mint them with the same secret. The claims are the session-ID
//! pattern (`sub`), the role (`role`: `publish`, `play` or `both`) and the expiry (`exp`,
//! Unix seconds). A token is three base64url parts joined by `.`: it travels in a URL
//! query unescaped. Pure: the current time is passed in.
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
    /// Expiry, Unix seconds: valid strictly before.
    pub exp: u64,
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
    if ttl.is_zero() {
        return Err(TokenError::BadTtl);
    }
    let exp = unix_now().checked_add(ttl.as_secs().max(1)).ok_or(TokenError::BadTtl)?;
    mint_until(secret, pattern, role, exp)
}

/// A token for `pattern` and `role` that expires at `exp` (Unix seconds).
pub fn mint_until(secret: &Secret, pattern: &str, role: TokenRole, exp: u64) -> Result<String, TokenError> {
    check_pattern(pattern)?;
    let claims = Claims { sub: pattern.to_owned(), role, exp };
    jsonwebtoken::encode(&Header::new(ALG), &claims, &secret.encoding).map_err(|_| TokenError::Malformed)
}

/// The claims of a token signed with `secret` and not expired at `now` (Unix seconds).
/// Checks the signature before reading the claims.
pub fn verify(secret: &Secret, token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != ALG {
        return Err(TokenError::Malformed);
    }
    let mut validation = Validation::new(ALG);
    // The library would read the system clock; expiry is checked below against `now`.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(token, &secret.decoding, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            _ => TokenError::Malformed,
        })?
        .claims;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Verifies `token` and checks that it allows `role` on `session_id`.
pub fn authorize(
    secret: &Secret,
    token: &str,
    role: Role,
    session_id: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    let claims = verify(secret, token, now)?;
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
        assert_eq!(c, Claims { sub: "live/cam1".into(), role: TokenRole::Publish, exp: NOW + 60 });
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
            assert_eq!(c, Claims { sub: sub.into(), role, exp: OLD_EXP }, "{token}");
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
