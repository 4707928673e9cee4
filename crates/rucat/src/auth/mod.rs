//! Who is asking: API tokens and OIDC JWTs, checked on every request but `/healthz` and
//! `/readyz` (and, through the same [`Authenticator`], on every proxied Spark Connect call).
//!
//! A request carries `Authorization: Bearer <credential>`. A credential that starts with
//! `rucat_` is an API token: only its SHA-256 is configured, with a user name and a role, in the
//! configuration file or in a tokens file that is read again whenever it changes. Anything else
//! is taken for a JWT when `[auth.jwt]` is configured: signed RS256 or ES256 by a key of the
//! issuer's JWKS, with the configured issuer and audience, not expired.
//!
//! Without any credential configured, authentication is off: every caller is the one
//! [`ANONYMOUS`] user, with every right, and Rucat listens on loopback only.

pub mod jwt;
pub mod token;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::shutdown::Shutdown;
use jwt::{JwtConfig, JwtVerifier};
use token::{TokenEntry, TokenStore};

/// The owner of engines while authentication is not configured.
pub const ANONYMOUS: &str = "anonymous";
/// The longest user name accepted (from a tokens file or a JWT claim).
pub const MAX_USER_LEN: usize = 256;

/// What a user may do: their own engines (`user`), or every engine (`admin`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

impl Identity {
    /// The caller when authentication is off: one user who may do everything.
    pub fn anonymous() -> Self {
        Identity {
            user: ANONYMOUS.to_owned(),
            role: Role::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller may see and act on an engine owned by `owner`.
    pub fn may_use(&self, owner: &str) -> bool {
        self.is_admin() || self.user == owner
    }
}

/// Checks a user name from the configuration or a token: 1 to [`MAX_USER_LEN`] characters, no
/// control characters, no surrounding whitespace.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a user name must not be empty".into());
    }
    if name.chars().count() > MAX_USER_LEN {
        return Err(format!(
            "a user name is at most {MAX_USER_LEN} characters long"
        ));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(format!(
            "user name {name:?} holds control characters or surrounding whitespace"
        ));
    }
    Ok(())
}

/// Why a request was not authenticated. The message is safe to show to the caller: it never
/// holds the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("unknown API token")]
    UnknownToken,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The credential cannot be checked right now (the issuer's keys could not be loaded).
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthFile {
    /// Tokens written in the configuration file itself (`[[auth.tokens]]`).
    pub tokens: Vec<TokenEntry>,
    /// A TOML file of `[[tokens]]` entries, read again whenever it changes.
    pub tokens_file: Option<PathBuf>,
    /// How often the tokens file (and a JWKS file) is looked at for changes.
    pub reload_interval_ms: Option<u64>,
    pub jwt: Option<jwt::JwtFile>,
}

/// Authentication settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub tokens: Vec<TokenEntry>,
    pub tokens_file: Option<PathBuf>,
    pub reload_interval: Duration,
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens: Vec::new(),
            tokens_file: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            jwt: None,
        }
    }
}

pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

impl AuthConfig {
    /// Whether any credential is configured. An empty tokens file counts: authentication is on
    /// and nobody is let in until a token is added.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty() || self.tokens_file.is_some() || self.jwt.is_some()
    }

    pub fn from_file(file: &AuthFile) -> Result<Self, String> {
        let reload_interval = match file.reload_interval_ms {
            Some(0) => return Err("auth.reload_interval_ms must be greater than 0".into()),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_RELOAD_INTERVAL,
        };
        for entry in &file.tokens {
            check_user_name(&entry.user).map_err(|e| format!("auth.tokens: {e}"))?;
        }
        let jwt = file.jwt.as_ref().map(JwtConfig::from_file).transpose()?;
        Ok(AuthConfig {
            tokens: file.tokens.clone(),
            tokens_file: file.tokens_file.clone(),
            reload_interval,
            jwt,
        })
    }
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{0}")]
    Tokens(String),
    #[error("[auth.jwt]: {0}")]
    Jwt(String),
}

/// Checks credentials. Cheap to share.
pub struct Authenticator {
    enabled: Option<Enabled>,
    reload_interval: Duration,
}

struct Enabled {
    tokens: TokenStore,
    jwt: Option<JwtVerifier>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Authenticator {
    /// Authentication off: every caller is [`Identity::anonymous`].
    pub fn disabled() -> Self {
        Authenticator {
            enabled: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }

    /// Reads the tokens (a missing or malformed tokens file is an error here, never later) and
    /// loads the JWT keys (an issuer that does not answer yet is only logged: its keys are
    /// fetched again until they come).
    pub async fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        if !config.is_enabled() {
            return Ok(Authenticator::disabled());
        }
        let tokens = TokenStore::open(config.tokens.clone(), config.tokens_file.clone())
            .map_err(AuthSetupError::Tokens)?;
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::new(jwt.clone()).map_err(AuthSetupError::Jwt)?),
            None => None,
        };
        if let Some(jwt) = &jwt {
            if let Err(error) = jwt.refresh().await {
                warn!(%error, "cannot load the JWT signing keys yet; trying again");
            }
        }
        info!(
            tokens = tokens.len(),
            tokens_file = ?config.tokens_file,
            jwt = jwt.is_some(),
            "authentication is on"
        );
        Ok(Authenticator {
            enabled: Some(Enabled { tokens, jwt }),
            reload_interval: config.reload_interval,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    /// Authenticates the value of an `Authorization` header (`None` when there is none).
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Identity, AuthError> {
        let Some(enabled) = &self.enabled else {
            return Ok(Identity::anonymous());
        };
        let credential = bearer(authorization)?;
        if credential.starts_with(token::TOKEN_PREFIX) {
            return enabled.tokens.identify(credential);
        }
        match &enabled.jwt {
            Some(jwt) if credential.matches('.').count() == 2 => jwt.verify(credential).await,
            _ => Err(AuthError::UnknownToken),
        }
    }

    /// Keeps the credentials current until `shutdown`: the tokens file is read again when it
    /// changed, the JWKS file likewise, a JWKS URL at its refresh interval.
    pub fn spawn_reloads(self: &Arc<Self>, shutdown: Shutdown) {
        if self.enabled.is_none() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.clone().wait() => return,
                }
                if let Some(enabled) = &this.enabled {
                    enabled.tokens.reload_if_changed();
                    if let Some(jwt) = &enabled.jwt {
                        jwt.refresh_if_due().await;
                    }
                }
            }
        });
    }
}

/// The credential of `Authorization: Bearer <credential>` (the scheme in any case, RFC 7235).
fn bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let header = std::str::from_utf8(header)
        .map_err(|_| AuthError::Malformed("it is not text"))?
        .trim();
    let (scheme, credential) = header
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected \"Bearer <token>\""))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("only the Bearer scheme is accepted"));
    }
    let credential = credential.trim();
    if credential.is_empty() {
        return Err(AuthError::Malformed("the token is empty"));
    }
    // RFC 6750's token68: what a token or a JWT is made of.
    let token68 = credential
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !token68 {
        return Err(AuthError::Malformed(
            "the token holds characters no token has",
        ));
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_parsed_strictly() {
        assert_eq!(bearer(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert!(matches!(
            bearer(Some(b"Basic dXNlcjpwdw==")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer(Some(b"Bearer")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer(Some(b"Bearer ")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer(Some(b"Bearer a b")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer(Some(&[0xff, 0xfe])),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn user_names_are_bounded() {
        assert!(check_user_name("alice@example.com").is_ok());
        assert!(check_user_name("").is_err());
        assert!(check_user_name(" alice").is_err());
        assert!(check_user_name("a\nb").is_err());
        assert!(check_user_name(&"a".repeat(MAX_USER_LEN + 1)).is_err());
    }

    #[tokio::test]
    async fn without_credentials_configured_everyone_is_the_anonymous_admin() {
        let auth = Authenticator::new(&AuthConfig::default())
            .await
            .expect("disabled");
        assert!(!auth.is_enabled());
        assert_eq!(auth.authenticate(None).await, Ok(Identity::anonymous()));
        assert!(Identity::anonymous().may_use("someone"));
    }
}
