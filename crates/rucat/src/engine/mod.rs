//! What an engine is: its identity, its request, its record, and the state machine it follows.

pub mod policy;
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
}

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_CONFIGS: usize = 128;
pub const MAX_CONFIG_KEY_LEN: usize = 256;
pub const MAX_CONFIG_VALUE_LEN: usize = 4096;

/// An engine's id: opaque, URL-safe and unguessable: the 122 random bits of a UUID v4, written as
/// 32 lowercase hex digits, so that it also fits in file names and DNS labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
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

impl<'de> Deserialize<'de> for EngineName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EngineName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineRequest {
    pub name: EngineName,
    pub engine_type: EngineType,
    pub version: String,
    #[serde(default)]
    pub configs: SparkConf,
}

/// An engine as the store keeps it and the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engine {
    pub id: EngineId,
    pub name: String,
    pub owner: String,
    pub engine_type: String,
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
}

/// One state change in an engine's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEvent {
    pub time: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<EngineState>,
    pub to: EngineState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who caused the change (absent in events recorded before Rucat kept it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
}

/// Who caused a change: a user (by name), or a monitor (by the name it runs under).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
