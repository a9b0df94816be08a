//! Publish and play tokens (`[auth]`): which requests need one (globally, per app), the
//! [`Auth`] gate that checks them, and minting ([`Auth::mint`], `qrelay token`). The
//! token format lives in [`token`].
//!
//! A token travels as a `token=` query parameter of the stream key (`cam1?token=...`) or
//! of the app (`live?token=...`, OBS's "Server" box); the key's wins when both have one.
//! Tokens and the secret are never logged: refusals name the reason, not the token.

pub mod jwks;
pub mod token;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AppAuth, AuthConfig};
use crate::gate::{Decision, Gate, Pending, Request, Role};
use crate::reason::Reason;
pub use jwks::{Jwks, JwksError};
pub use token::{Expect, KeyError, PublicKey, Secret, SecretError, TokenError, TokenRole};

/// The query parameter a token travels in.
pub const TOKEN_PARAM: &str = "token";

/// Whether a role needs a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may (the default).
    #[default]
    Open,
    /// Only with a valid token.
    Token,
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Open => "open",
            AuthMode::Token => "token",
        })
    }
}

/// Why token checking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A mode needs tokens and no secret or public key is configured.
    #[error(
        "{rule} = \"token\" needs a token secret: set auth.secret_file (--auth-secret-file, \
         QRELAY_AUTH_SECRET_FILE) or the secret itself in QRELAY_AUTH_SECRET, or public keys \
         to check tokens signed elsewhere (auth.public_keys, auth.jwks_url)"
    )]
    NoSecret {
        /// The setting that asks for tokens (`auth.publish`, `auth.apps."private".play`).
        rule: String,
    },
    /// The secret could not be read or is unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A public key could not be read or is unusable.
    #[error(transparent)]
    PublicKey(#[from] KeyError),
    /// The JWKS URL is unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
    /// Minting needs a secret and none is configured.
    #[error("no token secret is configured (auth.secret_file or QRELAY_AUTH_SECRET)")]
    CannotMint,
    /// The token could not be made (bad pattern or lifetime).
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The token rules and the secret: decides requests (a [`Gate`]) and mints tokens.
#[derive(Debug)]
pub struct Auth {
    secret: Option<Secret>,
    /// Keys of whoever signs tokens elsewhere: they verify, they do not mint.
    public_keys: Vec<PublicKey>,
    /// More such keys, fetched from a JWKS URL and kept fresh.
    jwks: Option<Arc<Jwks>>,
    /// What tokens must carry besides their scope, and the clock leeway.
    expect: Expect,
    publish: AuthMode,
    play: AuthMode,
    apps: BTreeMap<String, AppAuth>,
}

impl Auth {
    /// The rules of `[auth]` with the secret and public keys loaded. `None` when nothing
    /// needs a token and no secret is configured; an error when a rule needs tokens and
    /// there is no usable secret or public key.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthError> {
        if let Some(path) = &config.secret_file {
            crate::files::warn_if_shared(path, "the token secret file");
        }
        let secret = Secret::load(config.secret_file.as_deref())?;
        let public_keys =
            config.public_keys.iter().map(|p| PublicKey::load(p)).collect::<Result<Vec<_>, _>>()?;
        let jwks = config.jwks_url.as_deref().map(Jwks::new).transpose()?.map(Arc::new);
        let expect = Expect {
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_s: config.leeway_s,
        };
        let auth = Self {
            secret,
            public_keys,
            jwks,
            expect,
            publish: config.publish,
            play: config.play,
            apps: config.apps.clone(),
        };
        if auth.secret.is_none() {
            return match auth.first_token_rule() {
                Some(_) if !auth.public_keys.is_empty() || auth.jwks.is_some() => Ok(Some(auth)),
                Some(rule) => Err(AuthError::NoSecret { rule }),
                None => Ok(None),
            };
        }
        Ok(Some(auth))
    }

    /// Rules with a given secret (tests, embedders), with the default leeway and no
    /// issuer or audience (see [`Auth::expecting`]).
    pub fn new(secret: Secret, publish: AuthMode, play: AuthMode, apps: BTreeMap<String, AppAuth>) -> Self {
        let expect = Expect { leeway_s: token::DEFAULT_LEEWAY_S, ..Expect::default() };
        Self { secret: Some(secret), public_keys: Vec::new(), jwks: None, expect, publish, play, apps }
    }

    /// These rules also accepting tokens signed for `keys`.
    pub fn with_public_keys(self, keys: Vec<PublicKey>) -> Self {
        Self { public_keys: keys, ..self }
    }

    /// The JWKS key set, when `jwks_url` is configured: the server fetches it before it
    /// listens and keeps it fresh ([`Jwks::run`]).
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        self.jwks.clone()
    }

    /// These rules checking and minting tokens as `expect` says.
    pub fn expecting(self, expect: Expect) -> Self {
        Self { expect, ..self }
    }

    /// The first setting that asks for tokens, for the error that says a secret is needed.
    fn first_token_rule(&self) -> Option<String> {
        let global = [("auth.publish", self.publish), ("auth.play", self.play)];
        if let Some((rule, _)) = global.iter().find(|(_, m)| *m == AuthMode::Token) {
            return Some((*rule).to_owned());
        }
        self.apps.iter().find_map(|(app, rule)| {
            [("publish", rule.publish), ("play", rule.play)]
                .into_iter()
                .find(|(_, m)| *m == Some(AuthMode::Token))
                .map(|(role, _)| format!("auth.apps.\"{app}\".{role}"))
        })
    }

    /// Whether any request may need a token (otherwise the gate is left out).
    pub fn checks_tokens(&self) -> bool {
        self.first_token_rule().is_some()
    }

    /// What `role` on `session_id` needs (see [`mode_of`]).
    pub fn mode(&self, session_id: &str, role: Role) -> AuthMode {
        mode_of((self.publish, self.play), &self.apps, session_id, role)
    }

    /// A token for `pattern` (a session ID, `app/*`, `*`) and `role`, valid for `ttl`.
    pub fn mint(&self, pattern: &str, role: TokenRole, ttl: Duration) -> Result<String, AuthError> {
        let secret = self.secret.as_ref().ok_or(AuthError::CannotMint)?;
        Ok(token::mint_for(secret, &self.expect, pattern, role, ttl)?)
    }

    /// Decides `request` at `now` (Unix seconds).
    pub fn check(&self, request: &Request, now: u64) -> Decision {
        match self.outcome(request, now) {
            Ok(()) => Decision::Allow,
            Err(refusal) => refusal.into(),
        }
    }

    /// Why `request` is refused at `now`, if it is.
    fn outcome(&self, request: &Request, now: u64) -> Result<(), Refused> {
        if self.mode(&request.session_id, request.role) == AuthMode::Open {
            return Ok(());
        }
        let Some(token) = request.param(TOKEN_PARAM).filter(|t| !t.is_empty()) else {
            return Err(Refused::NoToken);
        };
        let fetched = self.jwks.as_ref().map(|j| j.keys());
        let keys = token::Keys {
            secret: self.secret.as_ref(),
            public: &self.public_keys,
            fetched: fetched.as_deref().unwrap_or_default(),
        };
        match token::authorize_with(&keys, &self.expect, token, request.role, &request.session_id, now) {
            Ok(_) => Ok(()),
            Err(e) => Err(Refused::Token(e)),
        }
    }
}

/// Why the token gate refuses a request.
enum Refused {
    NoToken,
    Token(TokenError),
}

impl From<Refused> for Decision {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NoToken => Decision::refuse(Reason::TokenMissing, "a token is required (?token=...)"),
            Refused::Token(e) => Decision::refuse(reason_of(&e), e.to_string()),
        }
    }
}

/// What `role` on `session_id` needs under the global modes (publish, play) and the app
/// rules. An app's rule covers the app and every app under it (`live` covers
/// `live/cam` and `live/a/cam`), and the longest app with a rule for `role` wins: the
/// session ID alone decides, so no split of it into app and key (`live` + `a/cam` or
/// `live/a` + `cam`) can reach another rule.
fn mode_of(
    global: (AuthMode, AuthMode),
    apps: &BTreeMap<String, AppAuth>,
    session_id: &str,
    role: Role,
) -> AuthMode {
    let rule_for = |r: &AppAuth| match role {
        Role::Publish => r.publish,
        Role::Play => r.play,
    };
    apps.iter()
        .filter(|(app, _)| {
            let app = app.trim_matches('/');
            session_id.strip_prefix(app).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        })
        .filter_map(|(app, r)| rule_for(r).map(|m| (app.len(), m)))
        .max_by_key(|(len, _)| *len)
        .map_or(
            match role {
                Role::Publish => global.0,
                Role::Play => global.1,
            },
            |(_, m)| m,
        )
}

/// The credential an allowed publish presented: its token, when publishing there needs
/// one (the gate checked it before the request was allowed). A publisher presenting the
/// same token as the current publisher of the session ID may replace it at once (the
/// hub's takeover); without tokens there is no credential to compare.
pub fn publish_credential<'a>(config: &AuthConfig, request: &'a Request) -> Option<&'a str> {
    let mode = mode_of((config.publish, config.play), &config.apps, &request.session_id, Role::Publish);
    (mode == AuthMode::Token).then(|| request.param(TOKEN_PARAM)).flatten().filter(|t| !t.is_empty())
}

/// The counted reason for a token refusal.
fn reason_of(e: &TokenError) -> Reason {
    match e {
        TokenError::Expired => Reason::TokenExpired,
        TokenError::NotYetValid => Reason::TokenNotYetValid,
        TokenError::WrongRole(_) => Reason::TokenWrongRole,
        TokenError::WrongStream => Reason::TokenWrongStream,
        TokenError::Malformed
        | TokenError::BadSignature
        | TokenError::WrongAudience
        | TokenError::WrongIssuer
        | TokenError::Algorithm
        | TokenError::UnknownKey
        | TokenError::BadPattern(_)
        | TokenError::BadTtl => Reason::TokenInvalid,
    }
}

/// How long a request whose token names an unknown key ID waits for the JWKS fetch it
/// asked for (the publish/play decision is bounded by the handshake timeout anyway).
const JWKS_WAIT: Duration = jwks::FETCH_TIMEOUT;

impl Gate for Auth {
    fn decide(&self, request: &Request) -> Pending {
        let now = token::unix_now();
        let refused = match self.outcome(request, now) {
            Ok(()) => return Box::pin(std::future::ready(Decision::Allow)),
            Err(refused) => refused,
        };
        // A key the JWKS does not have yet (the auth service rotated): fetch, then check
        // once more with the new set. Rate-limited by `Jwks::ask`: made-up key IDs are
        // refused at once.
        let asked = match (&refused, &self.jwks) {
            (Refused::Token(TokenError::UnknownKey), Some(jwks)) => jwks.ask(),
            _ => None,
        };
        let Some(mut changed) = asked else {
            return Box::pin(std::future::ready(refused.into()));
        };
        let again = Self {
            secret: self.secret.clone(),
            public_keys: self.public_keys.clone(),
            jwks: self.jwks.clone(),
            expect: self.expect.clone(),
            publish: self.publish,
            play: self.play,
            apps: self.apps.clone(),
        };
        let request = request.clone();
        Box::pin(async move {
            if tokio::time::timeout(JWKS_WAIT, changed.changed()).await.is_err() {
                return refused.into();
            }
            again.check(&request, token::unix_now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Refusal;

    const NOW: u64 = 1_700_000_000;

    fn request(role: Role, app: &str, key: &str) -> Request {
        Request {
            role,
            session_id: crate::url::session_id(app, key),
            app: app.into(),
            key: key.into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            transport: "tcp",
        }
    }

    fn reason(d: Decision) -> Option<Reason> {
        match d {
            Decision::Allow => None,
            Decision::Refuse(Refusal { reason, .. }) => Some(reason),
        }
    }

    #[test]
    fn rules_tokens_and_reasons() {
        let secret = Secret::new(b"0123456789abcdef", "test").unwrap();
        let apps = BTreeMap::from([
            ("private".to_owned(), AppAuth { publish: None, play: Some(AuthMode::Token) }),
            ("open".to_owned(), AppAuth { publish: Some(AuthMode::Open), play: None }),
        ]);
        let auth = Auth::new(secret.clone(), AuthMode::Token, AuthMode::Open, apps);
        let t = |pattern, role| token::mint_until(&secret, pattern, role, NOW + 60).unwrap();
        let publish = t("live/cam1", TokenRole::Publish);
        let check = |role, app: &str, key: &str| reason(auth.check(&request(role, app, key), NOW));

        assert_eq!(check(Role::Publish, "live", &format!("cam1?token={publish}")), None);
        assert_eq!(check(Role::Publish, &format!("live?token={publish}"), "cam1"), None);
        assert_eq!(check(Role::Publish, &format!("live?a=1&token={publish}"), "cam1?b=2"), None);
        assert_eq!(check(Role::Publish, "live", "cam1"), Some(Reason::TokenMissing));
        assert_eq!(check(Role::Publish, "live", "cam1?token="), Some(Reason::TokenMissing));
        assert_eq!(check(Role::Publish, "live", "cam1?token=abc"), Some(Reason::TokenInvalid));
        assert_eq!(
            check(Role::Publish, "live", &format!("cam2?token={publish}")),
            Some(Reason::TokenWrongStream)
        );
        let play = t("live/*", TokenRole::Play);
        assert_eq!(check(Role::Publish, "live", &format!("cam1?token={play}")), Some(Reason::TokenWrongRole));
        let old = token::mint_until(&secret, "live/cam1", TokenRole::Publish, NOW - 30).unwrap();
        assert_eq!(check(Role::Publish, "live", &format!("cam1?token={old}")), Some(Reason::TokenExpired));
        let late = token::mint_until(&secret, "live/cam1", TokenRole::Publish, NOW - 29).unwrap();
        assert_eq!(check(Role::Publish, "live", &format!("cam1?token={late}")), None, "within the leeway");
        let early = token::Claims {
            sub: "live/cam1".into(),
            role: TokenRole::Publish,
            exp: NOW + 600,
            nbf: Some(NOW + 31),
        };
        let early = token::mint_claims(&secret, &Expect::default(), &early).unwrap();
        assert_eq!(
            check(Role::Publish, "live", &format!("cam1?token={early}")),
            Some(Reason::TokenNotYetValid)
        );
        let other = Secret::new(b"another secret, long enough", "test").unwrap();
        let forged = token::mint_until(&other, "live/cam1", TokenRole::Publish, NOW + 60).unwrap();
        assert_eq!(check(Role::Publish, "live", &format!("cam1?token={forged}")), Some(Reason::TokenInvalid));
        // Per-app rules: play is open except on `private`; publish needs a token except on `open`.
        assert_eq!(check(Role::Play, "live", "cam1"), None);
        assert_eq!(check(Role::Play, "private", "x"), Some(Reason::TokenMissing));
        assert_eq!(check(Role::Play, "private?token=bad", "x"), Some(Reason::TokenInvalid));
        let private = t("private/*", TokenRole::Both);
        assert_eq!(check(Role::Play, "private", &format!("x?token={private}")), None);
        assert_eq!(check(Role::Publish, "open", "x"), None);
    }

    /// Issue 22 #3: app `private` with key `team/cam` and app `private/team` with key
    /// `cam` are both session `private/team/cam`; before, only the first met the
    /// `private` rule. Rules now follow the session ID: an app's rule covers the apps
    /// under it, and the longest app with a rule wins.
    #[test]
    fn no_split_of_a_session_id_sidesteps_an_app_rule() {
        let secret = Secret::new(b"0123456789abcdef", "test").unwrap();
        let apps = BTreeMap::from([
            ("private".to_owned(), AppAuth { publish: None, play: Some(AuthMode::Token) }),
            ("private/lobby".to_owned(), AppAuth { publish: None, play: Some(AuthMode::Open) }),
        ]);
        let auth = Auth::new(secret, AuthMode::Open, AuthMode::Open, apps);
        let check = |app: &str, key: &str| reason(auth.check(&request(Role::Play, app, key), NOW));
        for (app, key) in [("private", "team/cam"), ("private/team", "cam"), ("private/team/", "cam")] {
            assert_eq!(check(app, key), Some(Reason::TokenMissing), "{app} + {key}");
        }
        assert_eq!(check("private/lobby", "cam"), None, "the longer rule wins");
        assert_eq!(check("private", "lobby/cam"), None, "whatever the split");
        assert_eq!(check("privateer", "cam"), None, "a prefix only at a segment boundary");
        assert_eq!(check("live", "cam"), None);
        let r = request(Role::Play, "private", "team/cam?token=x");
        assert_eq!((r.app_name(), r.key_name()), ("private/team", "cam"), "what hooks are told");
    }

    /// `[auth] audience` and `issuer`: refused without them (as invalid), and what the
    /// relay mints (control API, pulls) carries them.
    #[test]
    fn audience_and_issuer_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let config = AuthConfig {
            secret_file: Some(file),
            play: AuthMode::Token,
            audience: Some("edge.example".into()),
            issuer: Some("auth.example".into()),
            ..AuthConfig::default()
        };
        let auth = Auth::from_config(&config).unwrap().unwrap();
        let minted = auth.mint("live/cam1", TokenRole::Play, Duration::from_secs(60)).unwrap();
        let play =
            |t: &str| reason(auth.decide_now(&request(Role::Play, "live", &format!("cam1?token={t}"))));
        assert_eq!(play(&minted), None);
        let secret = Secret::new(b"0123456789abcdef0123", "test").unwrap();
        let plain = token::mint(&secret, "live/cam1", TokenRole::Play, Duration::from_secs(60)).unwrap();
        assert_eq!(play(&plain), Some(Reason::TokenInvalid));
        let other = Expect { issuer: Some("elsewhere".into()), ..auth.expect.clone() };
        let foreign =
            token::mint_for(&secret, &other, "live/cam1", TokenRole::Play, Duration::from_secs(60)).unwrap();
        assert_eq!(play(&foreign), Some(Reason::TokenInvalid));
    }

    /// `[auth] public_keys` alone: tokens an auth service signs are checked, nothing is
    /// minted (an edge holding only public keys cannot make tokens).
    #[test]
    fn public_keys_check_tokens_and_mint_none() {
        use token::test_keys::{ed25519, es256};
        let dir = tempfile::tempdir().unwrap();
        let (ec, ed) = (es256(), ed25519());
        let mut config = AuthConfig { publish: AuthMode::Token, ..AuthConfig::default() };
        for (name, key) in [("ec.pem", &ec), ("ed.pem", &ed)] {
            std::fs::write(dir.path().join(name), &key.pem).unwrap();
            config.public_keys.push(dir.path().join(name));
        }
        let auth = Auth::from_config(&config).unwrap().unwrap();
        assert!(matches!(
            auth.mint("live/x", TokenRole::Publish, Duration::from_secs(60)),
            Err(AuthError::CannotMint)
        ));
        let claims =
            token::Claims { sub: "live/*".into(), role: TokenRole::Publish, exp: NOW + 60, nbf: None };
        let publish =
            |t: &str| reason(auth.check(&request(Role::Publish, "live", &format!("x?token={t}")), NOW));
        assert_eq!(publish(&ec.sign(&claims, None)), None);
        assert_eq!(publish(&ed.sign(&claims, Some("any"))), None);
        assert_eq!(publish(&es256().sign(&claims, None)), Some(Reason::TokenInvalid));
        let hs = token::mint_until(
            &Secret::new(b"0123456789abcdef", "t").unwrap(),
            "live/*",
            TokenRole::Publish,
            NOW + 60,
        )
        .unwrap();
        assert_eq!(publish(&hs), Some(Reason::TokenInvalid), "no secret: no HS256");
        config.public_keys.push(dir.path().join("absent.pem"));
        let e = Auth::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("absent.pem"), "{e}");
    }

    #[test]
    fn a_rule_that_needs_tokens_needs_a_secret() {
        let mut config = AuthConfig::default();
        assert!(Auth::from_config(&config).unwrap().is_none(), "open needs nothing");
        config.apps.insert("private".into(), AppAuth { publish: None, play: Some(AuthMode::Token) });
        let e = Auth::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("auth.apps.\"private\".play") && e.contains("QRELAY_AUTH_SECRET"), "{e}");
        config.apps.clear();
        config.publish = AuthMode::Token;
        let e = Auth::from_config(&config).unwrap_err().to_string();
        assert!(e.starts_with("auth.publish = \"token\" needs a token secret"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "short\n").unwrap();
        config.secret_file = Some(file.clone());
        let e = Auth::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("5 bytes") && e.contains("at least 16"), "{e}");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let auth = Auth::from_config(&config).unwrap().unwrap();
        assert!(auth.checks_tokens());
        let t = auth.mint("live/cam1", TokenRole::Publish, Duration::from_secs(60)).unwrap();
        assert_eq!(
            reason(auth.decide_now(&request(Role::Publish, "live", &format!("cam1?token={t}")))),
            None
        );
        config.secret_file = Some(dir.path().join("absent"));
        let e = Auth::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
    }

    impl Auth {
        fn decide_now(&self, r: &Request) -> Decision {
            self.check(r, token::unix_now())
        }
    }
}
