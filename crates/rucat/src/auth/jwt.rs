//! OIDC JWTs (`[auth.jwt]`): a token signed RS256 or ES256 by a key of the issuer's JWKS, with
//! the configured issuer and audience, within `exp`/`nbf` (give or take a small leeway). The
//! user is one claim (`sub` by default); admins are those whose admin claim holds the admin
//! value (the claim may be a string or a list of strings, as group claims are).
//!
//! The keys come from a JWKS file (read again when it changes) or URL (fetched at start, then
//! every refresh interval, and at once, at most every [`MIN_REFETCH`], when a token names a key
//! id not known yet: the issuer rotated its keys).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::{check_user_name, AuthError, Identity, Role};

/// The soonest a JWKS URL is fetched again because a token named an unknown key.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The `[auth.jwt]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtFile {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub refresh_interval_ms: Option<u64>,
    pub user_claim: Option<String>,
    pub admin_claim: Option<String>,
    pub admin_value: Option<String>,
    pub leeway_secs: Option<u64>,
}

/// Where the issuer's keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub refresh_interval: Duration,
    pub user_claim: String,
    /// The claim and the value in it that make a user an admin.
    pub admin: Option<(String, String)>,
    pub leeway_secs: u64,
}

impl JwtConfig {
    pub fn from_file(file: &JwtFile) -> Result<Self, String> {
        let required = |value: &Option<String>, name: &str| {
            value
                .clone()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("auth.jwt.{name} is required"))
        };
        let issuer = required(&file.issuer, "issuer")?;
        let audience = required(&file.audience, "audience")?;
        let jwks = match (&file.jwks_file, &file.jwks_url) {
            (Some(path), None) => JwksSource::File(path.clone()),
            (None, Some(url)) => {
                check_jwks_url(url)?;
                JwksSource::Url(url.clone())
            }
            _ => return Err("auth.jwt needs exactly one of jwks_file and jwks_url".into()),
        };
        let refresh_interval = match file.refresh_interval_ms {
            Some(0) => return Err("auth.jwt.refresh_interval_ms must be greater than 0".into()),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_REFRESH,
        };
        let admin = match (&file.admin_claim, &file.admin_value) {
            (Some(claim), Some(value)) => Some((claim.clone(), value.clone())),
            (None, None) => None,
            _ => return Err("auth.jwt.admin_claim and admin_value go together".into()),
        };
        Ok(JwtConfig {
            issuer,
            audience,
            jwks,
            refresh_interval,
            user_claim: file.user_claim.clone().unwrap_or_else(|| "sub".to_owned()),
            admin,
            leeway_secs: file.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS),
        })
    }
}

/// A JWKS URL must be https, except on loopback (a local test issuer).
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("auth.jwt.jwks_url {url:?} is not a URL: {e}"))?;
    let loopback = match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "auth.jwt.jwks_url {url:?} must be https (plain http only on loopback)"
        )),
    }
}

struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// How many verified JWTs are remembered (by digest) so that a client's repeated requests with
/// one token cost a hash and a lookup, not a signature check each.
const CACHE_SIZE: usize = 4096;

/// Verifies JWTs against the issuer's current keys.
pub struct JwtVerifier {
    config: JwtConfig,
    validation: [Validation; 2],
    keys: RwLock<Arc<Vec<Key>>>,
    /// Tokens verified with the current keys: their digest, who they name, and their `exp`.
    /// Emptied whenever the keys change.
    verified: Mutex<HashMap<[u8; 32], (Identity, i64)>>,
    /// When the keys were last fetched or read (or tried), and the JWKS file's content digest.
    fetched: Mutex<Fetched>,
    http: reqwest::Client,
}

#[derive(Default)]
struct Fetched {
    at: Option<Instant>,
    file_content: Option<Vec<u8>>,
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Result<Self, String> {
        let validation = ALGORITHMS.map(|algorithm| {
            let mut v = Validation::new(algorithm);
            v.leeway = config.leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&[&config.issuer]);
            v.set_audience(&[&config.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot make an HTTP client for the JWKS: {e}"))?;
        Ok(JwtVerifier {
            config,
            validation,
            keys: RwLock::new(Arc::new(Vec::new())),
            verified: Mutex::new(HashMap::new()),
            fetched: Mutex::new(Fetched::default()),
            http,
        })
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn fetched(&self) -> std::sync::MutexGuard<'_, Fetched> {
        self.fetched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the keys now.
    pub async fn refresh(&self) -> Result<usize, String> {
        self.fetched().at = Some(Instant::now());
        let bytes = match &self.config.jwks {
            JwksSource::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?;
                let mut fetched = self.fetched();
                if fetched.file_content.as_deref() == Some(&bytes[..]) {
                    return Ok(self.keys().len());
                }
                fetched.file_content = Some(bytes.clone());
                bytes
            }
            JwksSource::Url(url) => self.fetch(url).await?,
        };
        let keys = parse_jwks(&bytes)?;
        let count = keys.len();
        info!(keys = count, "JWT signing keys loaded");
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        // A token verified with a key that is gone must be checked again.
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(count)
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch the JWKS from {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "the JWKS at {url} answered HTTP {}",
                response.status()
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot read the JWKS from {url}: {e}"))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the JWKS at {url} is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        Ok(bytes.to_vec())
    }

    /// Called every reload interval: a JWKS file is read when it changed, a URL fetched when
    /// its refresh interval passed.
    pub async fn refresh_if_due(&self) {
        let due = match &self.config.jwks {
            JwksSource::File(_) => true,
            JwksSource::Url(_) => self
                .fetched()
                .at
                .is_none_or(|at| at.elapsed() >= self.config.refresh_interval),
        };
        if due {
            if let Err(error) = self.refresh().await {
                warn!(%error, "cannot refresh the JWT signing keys; keeping the ones loaded");
            }
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let digest = sha256(token.as_bytes());
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(self.config.leeway_secs).unwrap_or(i64::MAX);
        if let Some((identity, exp)) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
        {
            if now <= exp.saturating_add(leeway) {
                return Ok(identity.clone());
            }
            return Err(AuthError::Expired);
        }
        let (identity, exp) = self.verify_signed(token).await?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= CACHE_SIZE {
            verified.retain(|_, (_, exp)| now <= exp.saturating_add(leeway));
            if verified.len() >= CACHE_SIZE {
                verified.clear();
            }
        }
        verified.insert(digest, (identity.clone(), exp));
        Ok(identity)
    }

    /// Checks the token's signature and claims: who it names, and its `exp`.
    async fn verify_signed(&self, token: &str) -> Result<(Identity, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a JWT".into()))?;
        let Some(slot) = ALGORITHMS.iter().position(|a| *a == header.alg) else {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted (RS256, ES256 are)",
                header.alg
            )));
        };
        let mut keys = self.keys();
        if find_key(&keys, header.alg, header.kid.as_deref()).is_none() {
            // The issuer may have rotated its keys: look again, but not on every request.
            let may_refetch = self
                .fetched()
                .at
                .is_none_or(|at| at.elapsed() >= MIN_REFETCH);
            if may_refetch {
                if let Err(error) = self.refresh().await {
                    warn!(%error, "cannot load the JWT signing keys");
                }
                keys = self.keys();
            }
        }
        if keys.is_empty() {
            return Err(AuthError::Unavailable(
                "the issuer's signing keys (JWKS) could not be loaded".into(),
            ));
        }
        let key = find_key(&keys, header.alg, header.kid.as_deref())
            .ok_or_else(|| AuthError::Invalid("signed by a key the issuer does not list".into()))?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation[slot])
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Invalid(format!("no {claim:?} claim"))
                }
                _ => AuthError::Invalid("malformed JWT".into()),
            })?
            .claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| AuthError::Invalid("the \"exp\" claim is not a whole number".into()))?;
        Ok((self.identity(&claims)?, exp))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let claim = &self.config.user_claim;
        let user = claims.get(claim).and_then(Value::as_str).ok_or_else(|| {
            AuthError::Invalid(format!("no string {claim:?} claim names the user"))
        })?;
        check_user_name(user).map_err(|e| AuthError::Invalid(format!("claim {claim:?}: {e}")))?;
        let admin =
            self.config
                .admin
                .as_ref()
                .is_some_and(|(claim, value)| match claims.get(claim) {
                    Some(Value::String(s)) => s == value,
                    Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
                    _ => false,
                });
        Ok(Identity {
            user: user.to_owned(),
            role: if admin { Role::Admin } else { Role::User },
        })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn find_key<'a>(
    keys: &'a [Key],
    algorithm: Algorithm,
    id: Option<&str>,
) -> Option<&'a DecodingKey> {
    let mut candidates = keys.iter().filter(|k| k.algorithm == algorithm);
    match id {
        Some(id) => candidates.find(|k| k.id.as_deref() == Some(id)),
        // No key id: only an issuer with a single key of that algorithm is unambiguous.
        None => {
            let first = candidates.next();
            candidates.next().is_none().then_some(first).flatten()
        }
    }
    .map(|k| &k.key)
}

/// The signing keys of a JWKS: RSA keys (RS256) and P-256 keys (ES256). Encryption keys and
/// other kinds are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let id = jwk.common.key_id.clone();
        if !seen.insert((id.clone(), algorithm)) {
            continue;
        }
        keys.push(Key { id, algorithm, key });
    }
    Ok(keys)
}
