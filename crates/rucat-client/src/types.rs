//! What the REST API sends and takes, as JSON.
//!
//! These types follow the server's answers without depending on the server: fields a newer
//! server adds are kept in [`Engine::other`] rather than refused, and an event cause or type
//! this client does not know reads as `Unknown`.
//!
//! [`Created`], [`EnginePage`], [`Logs`] and [`Events`] are the server's too: it writes them with
//! its own types in their type parameters (its engine id, engine and event records, log source),
//! and this client reads them with the defaults (text, and the types here).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The states an engine goes through, as the API names them.
///
/// A new engine waits to start (`WaitToStart`), a monitor starts it (`TriggerStart`,
/// `StartInProgress`) and it serves Spark Connect (`Running`); a stop goes through
/// `WaitToTerminate`, `TriggerTermination` and `TerminateInProgress` to `Terminated`; a failure
/// is cleaned up through the `Error…` states to `ErrorClean`. `Terminated` and `ErrorClean`
/// hold until a user restarts or deletes the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum EngineState {
    WaitToStart,
    TriggerStart,
    StartInProgress,
    Running,
    WaitToTerminate,
    TriggerTermination,
    TerminateInProgress,
    Terminated,
    ErrorWaitToClean,
    ErrorTriggerClean,
    ErrorCleanInProgress,
    ErrorClean,
}

impl EngineState {
    /// Every state, in the order of an engine's life.
    pub const ALL: [EngineState; 12] = [
        EngineState::WaitToStart,
        EngineState::TriggerStart,
        EngineState::StartInProgress,
        EngineState::Running,
        EngineState::WaitToTerminate,
        EngineState::TriggerTermination,
        EngineState::TerminateInProgress,
        EngineState::Terminated,
        EngineState::ErrorWaitToClean,
        EngineState::ErrorTriggerClean,
        EngineState::ErrorCleanInProgress,
        EngineState::ErrorClean,
    ];

    /// The state's name in the API (`Running`, `Terminated`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::WaitToStart => "WaitToStart",
            EngineState::TriggerStart => "TriggerStart",
            EngineState::StartInProgress => "StartInProgress",
            EngineState::Running => "Running",
            EngineState::WaitToTerminate => "WaitToTerminate",
            EngineState::TriggerTermination => "TriggerTermination",
            EngineState::TerminateInProgress => "TerminateInProgress",
            EngineState::Terminated => "Terminated",
            EngineState::ErrorWaitToClean => "ErrorWaitToClean",
            EngineState::ErrorTriggerClean => "ErrorTriggerClean",
            EngineState::ErrorCleanInProgress => "ErrorCleanInProgress",
            EngineState::ErrorClean => "ErrorClean",
        }
    }

    /// States in which a platform resource may exist (or is being created or deleted).
    pub fn may_have_resource(self) -> bool {
        !matches!(
            self,
            EngineState::WaitToStart | EngineState::Terminated | EngineState::ErrorClean
        )
    }

    /// `Terminated` and `ErrorClean`: the engine stays there until a user acts (no monitor
    /// needs to look at it).
    pub fn is_settled(self) -> bool {
        matches!(self, EngineState::Terminated | EngineState::ErrorClean)
    }

    /// The `Trigger*` states: a monitor has claimed the engine and is working on it.
    pub fn is_trigger(self) -> bool {
        self.trigger_retry().is_some()
    }

    /// For a `Trigger*` state, the `WaitTo*` state it came from (where it goes back to when the
    /// monitor that claimed it died mid-operation).
    pub fn trigger_retry(self) -> Option<EngineState> {
        match self {
            EngineState::TriggerStart => Some(EngineState::WaitToStart),
            EngineState::TriggerTermination => Some(EngineState::WaitToTerminate),
            EngineState::ErrorTriggerClean => Some(EngineState::ErrorWaitToClean),
            _ => None,
        }
    }

    /// The states of a failed engine (being cleaned up, or cleaned up).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            EngineState::ErrorWaitToClean
                | EngineState::ErrorTriggerClean
                | EngineState::ErrorCleanInProgress
                | EngineState::ErrorClean
        )
    }
}

impl fmt::Display for EngineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`EngineState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown engine state {0:?}; expected one of: {states}", states = EngineState::ALL.map(EngineState::as_str).join(", "))]
pub struct UnknownState(pub String);

impl FromStr for EngineState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EngineState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_owned()))
    }
}

/// An engine, as `GET /engines/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engine {
    /// 32 lowercase hex digits.
    pub id: String,
    pub name: String,
    /// The user who created it.
    pub owner: String,
    /// `Spark`.
    pub engine_type: String,
    /// The Spark version.
    pub version: String,
    pub state: EngineState,
    /// Why it failed, in an error state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its Spark configuration.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// Where Spark Connect clients reach it while it runs: the proxy's
    /// `sc://HOST:PORT/;x-rucat-engine=ID` (add `;token=…` when the server wants a credential;
    /// [`Client::connection_string`](crate::Client::connection_string) does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// Minutes without a Spark Connect call after which the engine is stopped; 0: never.
    #[serde(default)]
    pub idle_timeout_minutes: u32,
    /// The warm pool it waits in, owned by no user, until a create takes it (admins see warm
    /// engines; no other engine has a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Fields this client does not know (from a newer server), kept as sent.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `POST /engines`: the new engine's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(description = "The new engine's id.")
)]
pub struct Created<Id = String> {
    pub id: Id,
}

/// `GET /engines`: a page of engines, oldest first. `next_cursor` is what to pass as
/// [`ListRequest::cursor`](crate::ListRequest::cursor) for the next page (`None` on the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(description = "A page of engines, oldest first.")
)]
pub struct EnginePage<E = Engine> {
    pub engines: Vec<E>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `GET /engines/{id}/logs`: the driver's log. `source` is `live` (read from the running
/// engine), `kept` (saved when it stopped) or `none`; read as text here, so that a source a
/// newer server names is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(description = "The tail of an engine's driver log.")
)]
pub struct Logs<Source = String> {
    pub source: Source,
    pub log: String,
}

/// `GET /engines/{id}/events`: a page of an engine's history, oldest first. `next_cursor` is
/// what to pass as [`EventsRequest::cursor`](crate::EventsRequest::cursor) for the next page
/// (`None` on the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(description = "A page of an engine's history, oldest first.")
)]
pub struct Events<E = EngineEvent> {
    pub events: Vec<E>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One entry of an engine's history: its creation, a state change, or a failed attempt at a
/// step (which changes no state).
///
/// The server keeps a copy of its own of this type and of [`EventType`], [`Actor`] and
/// [`Cause`], without the `Unknown` variants: these are the reader's side, which takes what a
/// newer server adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEvent {
    /// The event's place in the engine's history (increasing).
    #[serde(default)]
    pub id: u64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub time: DateTime<Utc>,
    /// The state before (none for the creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<EngineState>,
    pub to: EngineState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who caused it (absent in old events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// Why it happened (absent in old events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// What kind of entry an [`EngineEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The engine was created (its first event).
    Created,
    /// The engine moved from one state to another.
    StateChange,
    /// An attempt at a step failed; the engine stays where it was and the step is tried again.
    AttemptFailed,
    /// A type this client does not know.
    #[serde(other)]
    Unknown,
}

impl EventType {
    /// The type's name in the API (`created`, `state_change`, `attempt_failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::StateChange => "state_change",
            EventType::AttemptFailed => "attempt_failed",
            EventType::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused an event: a user (by name), or a monitor (by the name it runs under).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Actor {
    User(String),
    Monitor(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(name) => write!(f, "user {name}"),
            Actor::Monitor(name) => write!(f, "monitor {name}"),
        }
    }
}

/// Why an event happened (who did it is its [`Actor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// A user's request: `create`, `stop`, `restart` or `delete`.
    User { operation: String },
    /// A monitor's step in the engine's life (`claim`, `created`, `ready`, …).
    Monitor { step: String },
    /// A deadline passed (`claim`, `start`, `health`, `delete`, `kill`).
    Timeout { timeout: String },
    /// The engine had no Spark Connect call for its idle timeout.
    Idle { minutes: u32 },
    /// The platform failed or reported the engine failed, and why.
    PlatformError { reason: String },
    /// A health check of a running engine failed, and why.
    HealthCheck { reason: String },
    /// The store could not be read or written during a step.
    StoreError { reason: String },
    /// A kind this client does not know.
    #[serde(other)]
    Unknown,
}

impl Cause {
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
            Cause::Unknown => "unknown",
        }
    }
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
            Cause::Unknown => f.write_str("unknown cause"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_and_print_by_their_api_names() {
        for state in EngineState::ALL {
            assert_eq!(state.as_str().parse::<EngineState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::json!(state.as_str()))
            );
        }
        let error = "running".parse::<EngineState>().unwrap_err().to_string();
        assert!(
            error.contains("\"running\"") && error.contains("Running"),
            "{error}"
        );
    }

    #[test]
    fn an_engine_keeps_fields_it_does_not_know() {
        let json = serde_json::json!({
            "id": "0123456789abcdef0123456789abcdef", "name": "n", "owner": "alice",
            "engine_type": "Spark", "version": "4.3.0", "state": "Running", "configs": {},
            "endpoint": "sc://localhost:15002/;x-rucat-engine=0123456789abcdef0123456789abcdef",
            "create_time": "2026-01-01T00:00:00Z", "update_time": "2026-01-01T00:00:01Z",
            "idle_timeout_minutes": 30, "something_new": {"a": 1}
        });
        let engine: Engine = serde_json::from_value(json.clone()).expect("an engine");
        assert_eq!(engine.state, EngineState::Running);
        assert_eq!(engine.other["something_new"], serde_json::json!({"a": 1}));
        assert_eq!(serde_json::to_value(&engine).ok(), Some(json));
    }

    #[test]
    fn events_read_known_and_unknown_causes() {
        let events: Events = serde_json::from_value(serde_json::json!({"events": [
            {"id": 1, "type": "created", "time": "2026-01-01T00:00:00Z", "to": "WaitToStart",
             "actor": {"kind": "user", "name": "alice"},
             "cause": {"kind": "user", "operation": "create"}},
            {"id": 2, "type": "something_new", "time": "2026-01-01T00:00:01Z",
             "from": "WaitToStart", "to": "TriggerStart",
             "cause": {"kind": "cosmic_ray", "energy": 9}}
        ]}))
        .expect("events");
        assert_eq!(
            events.events[0].cause,
            Some(Cause::User {
                operation: "create".into()
            })
        );
        assert_eq!(events.events[0].actor, Some(Actor::User("alice".into())));
        assert_eq!(events.events[1].event_type, EventType::Unknown);
        assert_eq!(events.events[1].cause, Some(Cause::Unknown));
        assert_eq!(events.next_cursor, None);
    }
}
