//! What an engine is: its identity, its request, its record, and the state machine it follows.

pub mod admission;
pub mod policy;
pub mod pool;
pub mod quota;
pub mod state;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use state::{EngineState, MonitorStep, UserOp, UserTarget};

/// Why a piece of an engine request cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEngine {
    #[error("engine name must not be empty")]
    EmptyName,
    #[error("engine name is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    NameTooLong(usize),
    #[error("engine name {0:?} may only hold letters, digits, '-', '_' and '.'")]
    NameCharacters(String),
    #[error("unknown engine type {0:?}; supported: Spark")]
    UnknownEngineType(String),
    #[error("{count} configs given; at most {MAX_CONFIGS} are allowed")]
    TooManyConfigs { count: usize },
    #[error("config key {0:?} is empty or longer than {MAX_CONFIG_KEY_LEN} bytes")]
    ConfigKeyLength(String),
    #[error("config key {0:?} is not a Spark config (it must start with \"spark.\" and hold no whitespace)")]
    ConfigKeyForm(String),
    #[error(
        "value of config {key:?} is {len} bytes long; at most {MAX_CONFIG_VALUE_LEN} are allowed"
    )]
    ConfigValueLength { key: String, len: usize },
    #[error("value of config {0:?} holds a control character")]
    ConfigValueCharacters(String),
    #[error("idle_timeout_minutes {minutes} is not allowed: engines must stop after at most {max} idle minutes (0 would be never)")]
    IdleTimeout { minutes: u32, max: u32 },
}

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_CONFIGS: usize = 128;
pub const MAX_CONFIG_KEY_LEN: usize = 256;
pub const MAX_CONFIG_VALUE_LEN: usize = 4096;

/// An engine's id: opaque, URL-safe and unguessable: the 122 random bits of a UUID v4, written as
/// 32 lowercase hex digits, so that it also fits in file names and DNS labels.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[0-9a-f]{32}$", example = "3f9c2a7e5b1d4c8f9a0b6e2d7c4f1a35")]
pub struct EngineId(String);

impl EngineId {
    pub fn generate() -> Self {
        EngineId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts only what `generate` produces; anything else cannot name an engine.
    pub fn parse(s: &str) -> Option<Self> {
        let valid = s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| EngineId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user-chosen engine name: 1 to 128 letters, digits, '-', '_' or '.'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EngineName(String);

impl EngineName {
    pub fn parse(s: &str) -> Result<Self, InvalidEngine> {
        if s.is_empty() {
            return Err(InvalidEngine::EmptyName);
        }
        let len = s.chars().count();
        if len > MAX_NAME_LEN {
            return Err(InvalidEngine::NameTooLong(len));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(InvalidEngine::NameCharacters(s.to_owned()));
        }
        Ok(EngineName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EngineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EngineName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EngineName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum EngineType {
    Spark,
}

impl EngineType {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineType::Spark => "Spark",
        }
    }
}

impl fmt::Display for EngineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineType {
    type Err = InvalidEngine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Spark" => Ok(EngineType::Spark),
            other => Err(InvalidEngine::UnknownEngineType(other.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for EngineType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Spark configuration given by a user, checked for form and size (not for policy: see
/// [`policy::ConfPolicy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SparkConf(BTreeMap<String, String>);

impl SparkConf {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, InvalidEngine> {
        if map.len() > MAX_CONFIGS {
            return Err(InvalidEngine::TooManyConfigs { count: map.len() });
        }
        for (key, value) in &map {
            if key.is_empty() || key.len() > MAX_CONFIG_KEY_LEN {
                return Err(InvalidEngine::ConfigKeyLength(truncate(key)));
            }
            if !key.starts_with("spark.")
                || key.len() == "spark.".len()
                || key
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '=')
            {
                return Err(InvalidEngine::ConfigKeyForm(key.clone()));
            }
            if value.len() > MAX_CONFIG_VALUE_LEN {
                return Err(InvalidEngine::ConfigValueLength {
                    key: key.clone(),
                    len: value.len(),
                });
            }
            if value.chars().any(char::is_control) {
                return Err(InvalidEngine::ConfigValueCharacters(key.clone()));
            }
        }
        Ok(SparkConf(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for SparkConf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        SparkConf::parse(map).map_err(serde::de::Error::custom)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The engine a user asks for, already parsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineRequest {
    /// 1 to 128 letters, digits, '-', '_' or '.'.
    #[schema(value_type = String, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$", example = "etl-nightly")]
    pub name: EngineName,
    pub engine_type: EngineType,
    /// One of the Spark versions the server offers (others are answered 422, naming them).
    #[schema(example = "4.3.0")]
    pub version: String,
    /// Spark configuration: keys start with `spark.` (at most 128 entries, keys up to 256
    /// bytes, values up to 4096 bytes without control characters), subject to the server's
    /// policy.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>, example = json!({"spark.executor.memory": "2g"}))]
    pub configs: SparkConf,
    /// Minutes without a Spark Connect call after which the engine is stopped; 0: never.
    /// Absent: the configured default.
    #[serde(default)]
    pub idle_timeout_minutes: Option<u32>,
}

/// The secret an engine's Spark Connect server requires (Spark's pre-shared token), made anew
/// at every start. Only Rucat knows it: it is never serialized, and prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineSecret(String);

impl EngineSecret {
    /// 256 random bits, base64url.
    pub fn generate() -> Self {
        use base64::Engine as _;
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        // The system's random source failing is not something a caller could handle; fall
        // back to a UUID's randomness rather than to no secret.
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        EngineSecret(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A secret as the store keeps it.
    pub fn from_stored(text: String) -> Self {
        EngineSecret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EngineSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineSecret(***)")
    }
}

/// Where Spark Connect clients reach engines: the proxy's public address, `sc://HOST:PORT`,
/// possibly with connection-string parameters (`sc://HOST:PORT/;use_ssl=true`). An engine's
/// endpoint adds the parameter that routes to it, `x-rucat-engine=<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

/// The connection-string parameter (and gRPC metadata key) naming the engine.
pub const ENGINE_PARAMETER: &str = "x-rucat-engine";

impl PublicUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("sc://")
            .ok_or_else(|| format!("{text:?} is not a Spark Connect address (sc://HOST:PORT)"))?;
        let (authority, params) = match rest.split_once('/') {
            Some((authority, params)) => (authority, params),
            None => (rest, ""),
        };
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("{text:?} has no HOST:PORT after sc://"));
        }
        if !(params.is_empty() || params.starts_with(';')) || params.contains(ENGINE_PARAMETER) {
            return Err(format!(
                "{text:?}: parameters go after \"/;\" and must not name the engine"
            ));
        }
        Ok(PublicUrl(text.trim_end_matches('/').to_owned()))
    }

    /// The connection string of engine `id`.
    pub fn endpoint(&self, id: &EngineId) -> String {
        if self.0.contains("/;") {
            format!("{};{ENGINE_PARAMETER}={id}", self.0)
        } else {
            format!("{}/;{ENGINE_PARAMETER}={id}", self.0)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Idle auto-stop limits users choose within: `idle_timeout_minutes` of a create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdleTimeouts {
    /// What an engine gets when its create names none; 0: never stopped for idleness.
    pub default_minutes: u32,
    /// The most a user may ask for; 0: no maximum.
    pub max_minutes: u32,
}

impl IdleTimeouts {
    /// The timeout of a new engine asking for `requested`.
    pub fn resolve(&self, requested: Option<u32>) -> Result<u32, InvalidEngine> {
        let minutes = requested.unwrap_or(self.default_minutes);
        if self.max_minutes > 0 && (minutes == 0 || minutes > self.max_minutes) {
            return Err(InvalidEngine::IdleTimeout {
                minutes,
                max: self.max_minutes,
            });
        }
        Ok(minutes)
    }
}

/// An engine as the store keeps it and the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Engine {
    pub id: EngineId,
    #[schema(value_type = String)]
    pub name: EngineName,
    pub owner: String,
    #[schema(value_type = String)]
    pub engine_type: EngineType,
    pub version: String,
    pub state: EngineState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub configs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// When a monitor should look at the engine next; `None` when nothing is due.
    #[serde(skip)]
    pub next_update_time: Option<DateTime<Utc>>,
    /// Minutes without a Spark Connect call after which a monitor stops the engine; 0: never.
    #[serde(default)]
    pub idle_timeout_minutes: u32,
    /// What the engine's Spark Connect server requires of its clients (the proxy sends it).
    #[serde(skip)]
    pub secret: Option<EngineSecret>,
    /// The generation of the engine's last claim by a monitor (see the store's fencing).
    #[serde(skip)]
    pub generation: u64,
    /// How many attempts at the current step failed in a row, and since when.
    #[serde(skip)]
    pub failures: u32,
    #[serde(skip)]
    pub failing_since: Option<DateTime<Utc>>,
    /// The warm pool the engine belongs to: it was started ahead of any request and waits, owned
    /// by no user, for a create to take it. Absent for every engine a user owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The secret the engine's Spark Connect server was started with, while the one a take gave
    /// it ([`Engine::secret`]) is being handed over (see [`Engine::credentials`]).
    #[serde(skip)]
    pub handover_secret: Option<EngineSecret>,
}

/// The gRPC metadata that hands an engine taken from a warm pool its new secret: sent with the
/// old secret as the credential, it makes the engine's Spark Connect server accept the new one
/// from then on, and the old one never again (see `engine-auth/`).
pub const REKEY_HEADER: &str = "x-rucat-rekey";

/// What a Spark Connect call to an engine carries: the secret as the bearer credential and,
/// while a take's new secret is being handed over, the new one as [`REKEY_HEADER`].
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub bearer: &'a EngineSecret,
    pub rekey: Option<&'a EngineSecret>,
}

impl Engine {
    /// How to authenticate to the engine's Spark Connect server, `None` when it has no secret.
    pub fn credentials(&self) -> Option<Credentials<'_>> {
        let secret = self.secret.as_ref()?;
        Some(match &self.handover_secret {
            Some(old) => Credentials {
                bearer: old,
                rekey: Some(secret),
            },
            None => Credentials {
                bearer: secret,
                rekey: None,
            },
        })
    }
}

// `rucat-client` has a copy of its own of `EngineEvent`, `EventType`, `Cause` and `Actor`, with
// `Unknown` variants that read what a newer server adds; these are the writer's side.

/// One entry of an engine's history: its creation, a state change, or a failed attempt at a
/// step (which changes no state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineEvent {
    /// The event's place in the engine's history (increasing; the events' cursor).
    #[serde(default)]
    pub id: u64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub time: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<EngineState>,
    pub to: EngineState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who caused the change (absent in events recorded before Rucat kept it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// Why it happened (absent in events recorded before Rucat kept it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// What kind of entry an [`EngineEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The engine was created (its first event).
    Created,
    /// The engine moved from one state to another.
    StateChange,
    /// An attempt at a step failed; the engine stays where it was and the step is tried again.
    AttemptFailed,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::Created,
        EventType::StateChange,
        EventType::AttemptFailed,
    ];

    /// The type of an event that went from `from` (none for the first) to `to`.
    pub fn of(from: Option<EngineState>, to: EngineState) -> Self {
        match from {
            None => EventType::Created,
            Some(from) if from == to => EventType::AttemptFailed,
            Some(_) => EventType::StateChange,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::StateChange => "state_change",
            EventType::AttemptFailed => "attempt_failed",
        }
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown event type {text:?}; expected one of: {}",
                    EventType::ALL.map(EventType::as_str).join(", ")
                )
            })
    }
}

/// Why an event happened (who did it is its [`Actor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// A user's request: `create`, `stop`, `restart` or `delete`.
    User { operation: String },
    /// A monitor's step in the engine's life (for example `claim`, `created`, `ready`,
    /// `delete_requested`, `gone`, `retry`).
    Monitor { step: String },
    /// A deadline passed: `claim` (a monitor's claim was not finished in time), `start` (the
    /// engine did not serve in time), `health` (it stopped answering for too long), `delete`
    /// (its resource was not gone in time, so it is killed) or `kill` (not even then).
    Timeout { timeout: String },
    /// The engine had no Spark Connect call for its idle timeout.
    Idle { minutes: u32 },
    /// The platform failed or reported the engine failed, and why.
    PlatformError { reason: String },
    /// A health check of a running engine failed, and why.
    HealthCheck { reason: String },
    /// The store could not be read or written during a step.
    StoreError { reason: String },
}

impl Cause {
    pub fn user(operation: &str) -> Self {
        Cause::User {
            operation: operation.to_owned(),
        }
    }

    pub fn monitor(step: &str) -> Self {
        Cause::Monitor {
            step: step.to_owned(),
        }
    }

    pub fn timeout(timeout: &str) -> Self {
        Cause::Timeout {
            timeout: timeout.to_owned(),
        }
    }

    /// The kind's name, as in JSON (`user`, `monitor`, `timeout`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::User { .. } => "user",
            Cause::Monitor { .. } => "monitor",
            Cause::Timeout { .. } => "timeout",
            Cause::Idle { .. } => "idle",
            Cause::PlatformError { .. } => "platform_error",
            Cause::HealthCheck { .. } => "health_check",
            Cause::StoreError { .. } => "store_error",
        }
    }

    pub const KINDS: [&'static str; 7] = [
        "user",
        "monitor",
        "timeout",
        "idle",
        "platform_error",
        "health_check",
        "store_error",
    ];
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::User { operation } => write!(f, "user {operation}"),
            Cause::Monitor { step } => write!(f, "monitor step {step}"),
            Cause::Timeout { timeout } => write!(f, "{timeout} timeout"),
            Cause::Idle { minutes } => write!(f, "idle for {minutes} minute(s)"),
            Cause::PlatformError { reason } => write!(f, "platform error: {reason}"),
            Cause::HealthCheck { reason } => write!(f, "health check failed: {reason}"),
            Cause::StoreError { reason } => write!(f, "store error: {reason}"),
        }
    }
}

/// Who caused a change: a user (by name), or a monitor (by the name it runs under).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Actor {
    User(String),
    Monitor(String),
}

impl Actor {
    /// How the store keeps it: `user:NAME` or `monitor:NAME`.
    pub fn to_text(&self) -> String {
        match self {
            Actor::User(name) => format!("user:{name}"),
            Actor::Monitor(name) => format!("monitor:{name}"),
        }
    }

    pub fn from_text(text: &str) -> Option<Self> {
        match text.split_once(':')? {
            ("user", name) => Some(Actor::User(name.to_owned())),
            ("monitor", name) => Some(Actor::Monitor(name.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(name) => write!(f, "user {name}"),
            Actor::Monitor(name) => write!(f, "monitor {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_distinct() {
        let a = EngineId::generate();
        let b = EngineId::generate();
        assert_ne!(a, b);
        assert_eq!(EngineId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(EngineId::parse("../etc/passwd"), None);
        assert_eq!(EngineId::parse(&a.as_str().to_uppercase()), None);
    }

    #[test]
    fn actors_round_trip_through_text_and_json() {
        for actor in [
            Actor::User("alice:x@y".into()),
            Actor::Monitor("host-12".into()),
        ] {
            assert_eq!(Actor::from_text(&actor.to_text()), Some(actor.clone()));
        }
        assert_eq!(Actor::from_text("robot:r2"), None);
        assert_eq!(
            serde_json::to_value(Actor::User("alice".into())).expect("json"),
            serde_json::json!({"kind": "user", "name": "alice"})
        );
    }

    #[test]
    fn public_urls_route_to_the_engine() {
        let id = EngineId::generate();
        let plain = PublicUrl::parse("sc://localhost:15002").expect("valid");
        assert_eq!(
            plain.endpoint(&id),
            format!("sc://localhost:15002/;x-rucat-engine={id}")
        );
        let tls = PublicUrl::parse("sc://rucat.example.com:443/;use_ssl=true").expect("valid");
        assert_eq!(
            tls.endpoint(&id),
            format!("sc://rucat.example.com:443/;use_ssl=true;x-rucat-engine={id}")
        );
        for bad in [
            "http://x:1",
            "sc://x",
            "sc://:1",
            "sc://x:1/abc",
            "sc://x:1/;x-rucat-engine=a",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idle_timeouts_stay_within_the_maximum() {
        let open = IdleTimeouts::default();
        assert_eq!(open.resolve(None), Ok(0));
        assert_eq!(open.resolve(Some(600)), Ok(600));
        let capped = IdleTimeouts {
            default_minutes: 30,
            max_minutes: 120,
        };
        assert_eq!(capped.resolve(None), Ok(30));
        assert_eq!(capped.resolve(Some(120)), Ok(120));
        assert!(capped.resolve(Some(121)).is_err());
        assert!(
            capped.resolve(Some(0)).is_err(),
            "never is beyond any maximum"
        );
    }

    #[test]
    fn secrets_are_random_and_never_shown() {
        let a = EngineSecret::generate();
        assert_ne!(a, EngineSecret::generate());
        assert_eq!(a.expose().len(), 43);
        assert_eq!(format!("{a:?}"), "EngineSecret(***)");
    }

    #[test]
    fn names_are_bounded() {
        assert!(EngineName::parse("etl-nightly_2.1").is_ok());
        assert_eq!(EngineName::parse(""), Err(InvalidEngine::EmptyName));
        assert_eq!(
            EngineName::parse(&"a".repeat(129)),
            Err(InvalidEngine::NameTooLong(129))
        );
        assert!(matches!(
            EngineName::parse("a b"),
            Err(InvalidEngine::NameCharacters(_))
        ));
    }

    #[test]
    fn an_engine_shows_its_name_and_type_as_text() {
        let now = DateTime::from_timestamp_millis(0).expect("in range");
        let engine = Engine {
            id: EngineId::generate(),
            name: EngineName::parse("etl").expect("a valid name"),
            owner: "alice".into(),
            engine_type: EngineType::Spark,
            version: "4.3.0".into(),
            state: EngineState::Running,
            error: None,
            configs: BTreeMap::new(),
            endpoint: None,
            create_time: now,
            update_time: now,
            next_update_time: None,
            idle_timeout_minutes: 0,
            secret: None,
            generation: 0,
            failures: 0,
            failing_since: None,
            pool: None,
            handover_secret: None,
        };
        let json = serde_json::to_value(&engine).expect("json");
        assert_eq!(json["name"], "etl");
        assert_eq!(json["engine_type"], "Spark");
        let back: Engine = serde_json::from_value(json).expect("an engine");
        assert_eq!(back, engine);
    }

    #[test]
    fn configs_are_bounded() {
        let conf = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(SparkConf::parse(conf("spark.executor.memory", "2g")).is_ok());
        assert!(matches!(
            SparkConf::parse(conf("executor.memory", "2g")),
            Err(InvalidEngine::ConfigKeyForm(_))
        ));
        assert!(matches!(
            SparkConf::parse(conf("spark.x", &"v".repeat(4097))),
            Err(InvalidEngine::ConfigValueLength { len: 4097, .. })
        ));
        assert!(matches!(
            SparkConf::parse(conf("spark.x", "a\nb")),
            Err(InvalidEngine::ConfigValueCharacters(_))
        ));
        let many = (0..129)
            .map(|i| (format!("spark.k{i}"), "v".to_owned()))
            .collect();
        assert_eq!(
            SparkConf::parse(many),
            Err(InvalidEngine::TooManyConfigs { count: 129 })
        );
    }
}
