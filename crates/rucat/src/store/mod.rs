//! The single source of truth for engine records.
//!
//! Every state change is a compare-and-swap: it happens only if the engine is still in the state
//! the caller saw, so that any number of servers and monitors can share one store.

#[cfg(feature = "testing")]
pub mod conformance;
pub mod postgres;
mod rows;
mod settings;
mod sql;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::engine::quota::{Limits, QuotaExceeded};
use crate::engine::{Actor, Cause, Engine, EngineEvent, EngineId, EngineSecret, EngineState};
pub use settings::{DatabaseArgs, DatabaseFile};

/// How many events an engine's history keeps; older ones are dropped.
pub const MAX_EVENTS: usize = 100;
/// How many bytes of driver log are kept per engine.
pub const MAX_KEPT_LOG: usize = 256 * 1024;
/// The largest page a listing returns.
pub const MAX_PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unreachable or failing: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("engine {0} already exists")]
    Duplicate(EngineId),
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    #[error("store holds a malformed record: {0}")]
    Corrupt(String),
    #[error("cannot open the store at {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("cannot reach the store at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The change would take the engine's owner beyond a quota; nothing changed.
    #[error("{0}")]
    OverQuota(QuotaExceeded),
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The change was made.
    Done,
    /// The engine was not in the expected state; nothing changed. Holds the actual state.
    Conflict(EngineState),
    /// There is no such engine.
    NotFound,
}

/// A state change, applied only if the engine is in `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: EngineState,
    pub to: EngineState,
    /// The error message (kept in error states; cleared otherwise when `None`).
    pub error: Option<String>,
    /// The endpoint clients connect to; `None` clears it.
    pub endpoint: Option<String>,
    /// When a monitor should look at the engine next; `None` when nothing is due.
    pub next_update_time: Option<DateTime<Utc>>,
    /// A note for the event history.
    pub message: Option<String>,
    /// When set, the change happens only if the engine is also due by then
    /// (`next_update_time <= due_by`): a monitor taking over a timed-out claim must not take a
    /// fresh claim that another monitor made meanwhile in the same state.
    pub due_by: Option<DateTime<Utc>>,
    /// Who makes the change, for the event history.
    pub actor: Option<Actor>,
    /// Why, for the event history.
    pub cause: Option<Cause>,
    /// When set, the change happens only if it keeps the engine's owner within these limits
    /// (checked atomically with the change; a refusal is [`StoreError::OverQuota`]).
    pub limits: Option<Limits>,
    /// A new secret for the engine's next start; `None` keeps the one it has.
    pub secret: Option<EngineSecret>,
    /// When set, the change happens only if the engine is still in this generation (a
    /// monitor's writes name the generation of its claim, so that one that overran its claim
    /// changes nothing of a later one).
    pub fence: Option<u64>,
    /// A claim: the engine enters a new generation (one more) with the change.
    pub claim: bool,
    /// Keep the count of failed attempts (and since when) instead of resetting it: a claim,
    /// and a claim given back to retry a failed step, are not progress.
    pub keep_failures: bool,
    /// When set, the change happens only while the engine is still in a warm pool (a monitor
    /// shrinking a pool must not stop an engine a create has just taken).
    pub only_warm: bool,
}

impl Transition {
    pub fn new(from: EngineState, to: EngineState) -> Self {
        Transition {
            from,
            to,
            error: None,
            endpoint: None,
            next_update_time: None,
            message: None,
            due_by: None,
            actor: None,
            cause: None,
            limits: None,
            secret: None,
            fence: None,
            claim: false,
            keep_failures: false,
            only_warm: false,
        }
    }

    /// Applies only to a warm engine (see [`Transition::only_warm`]).
    pub fn only_warm(mut self) -> Self {
        self.only_warm = true;
        self
    }

    /// Applies only in `generation` (see [`Transition::fence`]).
    pub fn fenced(mut self, generation: u64) -> Self {
        self.fence = Some(generation);
        self
    }

    /// Makes the change a claim (see [`Transition::claim`]).
    pub fn claiming(mut self) -> Self {
        self.claim = true;
        self
    }

    /// Keeps the count of failed attempts (see [`Transition::keep_failures`]).
    pub fn keeping_failures(mut self) -> Self {
        self.keep_failures = true;
        self
    }

    /// Gives the engine a new secret with the change (see [`Transition::secret`]).
    pub fn with_secret(mut self, secret: EngineSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    pub fn by(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Records why the change happens (see [`Transition::cause`]).
    pub fn because(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    /// Applies only within `limits` (see [`Transition::limits`]).
    pub fn within(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Applies only if the engine is due at `at` (see [`Transition::due_by`]).
    pub fn only_if_due_by(mut self, at: DateTime<Utc>) -> Self {
        self.due_by = Some(at);
        self
    }

    pub fn due_at(mut self, at: DateTime<Utc>) -> Self {
        self.next_update_time = Some(at);
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        let error = error.into();
        self.message = Some(error.clone());
        self.error = Some(error);
        self
    }

    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// When a monitor should look at an engine again, if it is still in `state` (and `fence`'s
/// generation, when set). No event; the count of failed attempts is reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reschedule {
    pub state: EngineState,
    pub fence: Option<u64>,
    /// `None` when nothing is due.
    pub next_update_time: Option<DateTime<Utc>>,
    /// When set, the engine's own address (found while it runs); `None` keeps it.
    pub endpoint: Option<String>,
    /// Keep the count of failed attempts (and since when) instead of resetting it.
    pub keep_failures: bool,
}

impl Reschedule {
    pub fn new(state: EngineState, next_update_time: Option<DateTime<Utc>>) -> Self {
        Reschedule {
            state,
            fence: None,
            next_update_time,
            endpoint: None,
            keep_failures: false,
        }
    }

    pub fn fenced(mut self, generation: u64) -> Self {
        self.fence = Some(generation);
        self
    }
}

/// A failed attempt at an engine's step: counted, recorded as an event, and tried again at
/// `retry_at`, if the engine is still in `state` (and `fence`'s generation, when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub state: EngineState,
    pub fence: Option<u64>,
    pub message: String,
    pub retry_at: DateTime<Utc>,
    pub actor: Option<Actor>,
    pub cause: Option<Cause>,
}

/// What one proxy reports of an engine: its Spark Connect calls under way through that proxy,
/// and when the last one ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityReport {
    pub engine: EngineId,
    pub in_flight: u32,
    pub last_active: Option<DateTime<Utc>>,
}

/// An engine's activity, over every proxy that reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Calls under way, summed over the proxies whose reports are fresh.
    pub in_flight: u32,
    /// When the last call ended, through any proxy.
    pub last_active: Option<DateTime<Utc>>,
}

/// A create taking a warm engine of a pool (see [`Store::take_warm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub pool: String,
    pub owner: String,
    pub name: crate::engine::EngineName,
    /// The engine's new secret; the one it was started with is kept only to hand it over.
    pub secret: EngineSecret,
    pub idle_timeout_minutes: u32,
    /// The owner's quotas, checked atomically with the take, as for an insert.
    pub limits: Limits,
}

/// The states of a pool's engines that count toward its size: starting or serving.
pub const WARM_STATES: [EngineState; 4] = [
    EngineState::WaitToStart,
    EngineState::TriggerStart,
    EngineState::StartInProgress,
    EngineState::Running,
];

/// What a user listing asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub owner: Option<String>,
    pub state: Option<EngineState>,
    /// At most this many engines (capped at [`MAX_PAGE`]).
    pub limit: u32,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub engines: Vec<Engine>,
    /// Pass this as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new engine and records its first event (caused by its owner).
    async fn insert(&self, engine: &Engine) -> Result<(), StoreError> {
        self.insert_within(engine, &Limits::default()).await
    }

    /// [`Store::insert`], only if the owner stays within `limits` (checked atomically with the
    /// insert: concurrent creates cannot exceed them together).
    async fn insert_within(&self, engine: &Engine, limits: &Limits) -> Result<(), StoreError>;

    async fn get(&self, id: &EngineId) -> Result<Option<Engine>, StoreError>;

    /// Stores a new warm engine of pool `engine.pool` (owned by no user), only if the pool holds
    /// fewer than `size` engines in [`WARM_STATES`] (checked atomically: monitors refilling one
    /// pool at once cannot overfill it). Returns whether it was stored. Its first event is
    /// `actor`'s, caused by the monitor step `pool_refill`.
    async fn insert_warm(
        &self,
        engine: &Engine,
        size: u32,
        actor: &Actor,
    ) -> Result<bool, StoreError>;

    /// Gives a `Running` warm engine of `take.pool` to `take.owner` in one change: its owner,
    /// name, idle timeout and a new secret, out of the pool, its warm history dropped (its
    /// events start again with the take). Each warm engine goes to one take only. `None` when
    /// the pool has no `Running` engine; [`StoreError::OverQuota`] when the owner is at a quota.
    async fn take_warm(&self, take: &Take) -> Result<Option<Engine>, StoreError>;

    /// Every engine that is in a pool (warm, not taken), oldest first.
    async fn warm_engines(&self) -> Result<Vec<Engine>, StoreError>;

    /// A page of engines in creation order, filtered by owner and state.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Applies `transition` if the engine is in `transition.from`, recording an event.
    async fn update_state(&self, id: &EngineId, transition: &Transition)
        -> Result<Cas, StoreError>;

    /// Sets when a monitor should look again (see [`Reschedule`]).
    async fn reschedule(&self, id: &EngineId, reschedule: &Reschedule) -> Result<Cas, StoreError>;

    /// Records a failed attempt (see [`Failure`]): the engine's failure count and the time
    /// its failures began are kept with it until its next transition or reschedule.
    async fn record_failure(&self, id: &EngineId, failure: &Failure) -> Result<Cas, StoreError>;

    /// Removes the engine (with its events and logs) if it is in `expected`.
    async fn remove(&self, id: &EngineId, expected: EngineState) -> Result<Cas, StoreError>;

    /// [`Store::remove`], only while the engine is still in a pool: a monitor clearing out an
    /// ended warm engine it read earlier must not remove one a create took since.
    async fn remove_warm(&self, id: &EngineId, expected: EngineState) -> Result<Cas, StoreError>;

    /// Engines whose `next_update_time` is at or before `now`, soonest first.
    async fn list_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Engine>, StoreError>;

    /// The ids, states and generations of all engines (for orphan clean-up).
    async fn all_states(&self) -> Result<Vec<(EngineId, EngineState, u64)>, StoreError>;

    /// How many engines are in each state (states without engines are left out): one
    /// `GROUP BY` query, for metrics.
    async fn count_by_state(&self) -> Result<Vec<(EngineState, u64)>, StoreError>;

    /// The engine's state history, oldest first; `None` if there is no such engine.
    async fn events(&self, id: &EngineId) -> Result<Option<Vec<EngineEvent>>, StoreError>;

    /// Keeps the tail of an engine's driver log (at most [`MAX_KEPT_LOG`] bytes are kept).
    async fn save_logs(&self, id: &EngineId, logs: &str) -> Result<(), StoreError>;

    async fn logs(&self, id: &EngineId) -> Result<Option<String>, StoreError>;

    /// Records what proxy `proxy` saw of these engines (its own row per engine, replaced).
    async fn report_activity(
        &self,
        proxy: &str,
        reports: &[ActivityReport],
    ) -> Result<(), StoreError>;

    /// An engine's activity: calls under way per reports made at or after `fresh_after` (a
    /// proxy that stopped reporting no longer counts), and the last call's end per any report.
    async fn activity(
        &self,
        id: &EngineId,
        fresh_after: DateTime<Utc>,
    ) -> Result<Activity, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Notified whenever an engine becomes due, so that monitors act at once.
    fn wake_ups(&self) -> Arc<Notify>;
}

/// What a log keeps of `text`: its last [`MAX_KEPT_LOG`] bytes, without NUL characters (which
/// PostgreSQL text cannot hold).
pub fn kept_log(text: &str) -> String {
    crate::text::tail(text, MAX_KEPT_LOG).replace('\0', "")
}

/// How a store connects; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The most connections the pool opens (default: 8 for SQLite, 10 for PostgreSQL).
    pub max_connections: Option<u32>,
    /// How long a request waits for a connection before failing (and being answered 503).
    pub acquire_timeout: Duration,
    /// Whether a PostgreSQL store listens for wake-ups (LISTEN/NOTIFY). Off for a connection
    /// pooler that does not support LISTEN; monitors then rely on polling.
    pub push_wake_ups: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
            push_wake_ups: true,
        }
    }
}

/// Opens the store a database URL names (`sqlite://PATH` or `postgres://…`), running
/// migrations.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::open_with(url, options).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PostgresStore::open(url, options).await?))
    } else {
        Err(StoreError::Open {
            url: redact(url),
            reason: "unsupported database URL; expected sqlite://PATH or postgres://USER@HOST/DB"
                .into(),
        })
    }
}

/// A database URL without its password (in the user part, or a `password=` parameter), for
/// messages and logs.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &base[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &base[..scheme + 3],
                    &credentials[..colon],
                    &base[at..]
                ),
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// A database URL, which may hold a password: its `Debug` and `Display` show it redacted, so it
/// cannot reach a log by accident; [`DatabaseUrl::expose`] gives the real one to connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", redact(&self.0))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:///a/b.db"), "sqlite:///a/b.db");
        assert_eq!(
            super::redact("postgres://u@h/db?sslmode=disable&Password=s3cret&x=1"),
            "postgres://u@h/db?sslmode=disable&Password=***&x=1"
        );
        assert_eq!(
            super::redact("postgres://u:p@h/db?password=q"),
            "postgres://u:***@h/db?password=***"
        );
        let url = super::DatabaseUrl::new("postgres://u:hunter2@h/db?password=hunter2");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert!(url.expose().contains("hunter2"));
    }

    #[test]
    fn kept_logs_are_bounded_and_without_nul() {
        assert_eq!(super::kept_log("a\0b"), "ab");
        let long = "x".repeat(super::MAX_KEPT_LOG + 10);
        assert_eq!(super::kept_log(&long).len(), super::MAX_KEPT_LOG);
    }
}
