//! Helpers shared by the integration tests: a real server on a random port over a real SQLite
//! file, with typed calls.
#![allow(dead_code)]

pub mod fake_connect;
pub mod jwt;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rucat::app::{Application, Roles};
use rucat::config::{FileConfig, RoleArgs, Settings};
use rucat::engine::{Engine, EngineId, EngineName, EngineState, EngineType};
use rucat::platform::Platform;
use rucat::shutdown::{self, Trigger};
use rucat::store::sqlite::SqliteStore;
use rucat::store::Store;
use rucat_client::Client;
use tempfile::TempDir;

pub const VERSION: &str = "4.3.0";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub dir: TempDir,
    _shutdown: Trigger,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client that authenticates with `token`.
    pub fn client_as(&self, token: &str) -> Client {
        Client::new(
            &format!("http://{}", self.addr),
            Some(secrecy::SecretString::from(token.to_owned())),
        )
    }

    /// Every engine in the store, whatever its state.
    pub async fn count(&self) -> usize {
        self.store.all_states().await.expect("store answers").len()
    }

    /// Puts an engine straight into the store, in `state`.
    pub async fn plant(&self, state: EngineState) -> Engine {
        self.plant_as("anonymous", state, VERSION, &[]).await
    }

    /// Puts an engine of `owner` straight into the store, as an older Rucat (another policy,
    /// other versions) could have made it.
    pub async fn plant_as(
        &self,
        owner: &str,
        state: EngineState,
        version: &str,
        configs: &[(&str, &str)],
    ) -> Engine {
        let now = Utc::now();
        let engine = Engine {
            id: EngineId::generate(),
            name: EngineName::parse(&format!("planted-{state}")).expect("a valid engine name"),
            owner: owner.into(),
            engine_type: EngineType::Spark,
            version: version.into(),
            state,
            error: None,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            endpoint: (state == EngineState::Running).then(|| "sc://127.0.0.1:1".to_owned()),
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
        self.store.insert(&engine).await.expect("insert");
        // As stored (times at the store's precision).
        self.store
            .get(&engine.id)
            .await
            .expect("get")
            .expect("just inserted")
    }
}

pub async fn open_store(dir: &TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
    Arc::new(SqliteStore::open(&url).await.expect("open store"))
}

/// A server (no monitor) on a random port over a fresh SQLite file.
pub async fn spawn_api(live_logs: Option<Arc<dyn Platform>>) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir).await;
    spawn_api_on(dir, store, live_logs).await
}

/// The server role as `rucat server` builds it with default settings ([`Application::assemble`]:
/// no authentication, loopback, the default policy), over `store`, with `live_logs` as its
/// platform and [`VERSION`] as the one version.
pub async fn spawn_api_on(
    dir: TempDir,
    store: Arc<dyn Store>,
    live_logs: Option<Arc<dyn Platform>>,
) -> TestApp {
    let settings = Settings::resolve(
        RoleArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().join("data")),
            ..RoleArgs::default()
        },
        FileConfig::default(),
    )
    .expect("default settings");
    let app = Application::assemble(
        &settings,
        Roles::SERVER,
        store.clone(),
        live_logs,
        vec![VERSION.to_owned()],
    )
    .await
    .expect("the server starts");
    let addr = app.local_addr().expect("listening");
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(app.run(shutdown));
    TestApp {
        addr,
        client: Client::new(&format!("http://{addr}"), None),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        store,
        dir,
        _shutdown: trigger,
    }
}

/// The server role as `rucat server` builds it (through [`Application::build`]), from the text
/// of a configuration file, on a random port with a fresh SQLite file and the simulated
/// platform (version [`VERSION`] unless the text has a `[simulated]` table).
pub async fn spawn_configured(config: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut text = config.to_owned();
    if !text.contains("[simulated]") {
        text.push_str(&format!("\n[simulated]\nversions = [\"{VERSION}\"]\n"));
    }
    let path = dir.path().join("rucat.toml");
    std::fs::write(&path, &text).expect("write rucat.toml");
    let file = FileConfig::load(&path).expect("a valid configuration file");
    let settings = Settings::resolve(
        RoleArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().join("data")),
            platform: Some("simulated".into()),
            ..RoleArgs::default()
        },
        file,
    )
    .expect("valid settings");
    let app = Application::build(&settings, Roles::SERVER)
        .await
        .expect("the server starts");
    let addr = app.local_addr().expect("listening");
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(app.run(shutdown));
    let store = open_store_at(&dir.path().join("data").join("rucat.db")).await;
    TestApp {
        addr,
        client: Client::new(&format!("http://{addr}"), None),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        store,
        dir,
        _shutdown: trigger,
    }
}

async fn open_store_at(path: &std::path::Path) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", path.display());
    Arc::new(SqliteStore::open(&url).await.expect("open store"))
}

/// The PostgreSQL server tests create their scratch databases on: `RUCAT_TEST_POSTGRES_URL`, or
/// the one on this machine. A test that needs it fails (never skips) when it is unreachable.
pub fn postgres_admin_url() -> String {
    std::env::var("RUCAT_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh, empty database for one test, dropped when the value is.
pub async fn scratch_postgres(prefix: &str) -> rucat::store::postgres::ScratchDatabase {
    let admin = postgres_admin_url();
    rucat::store::postgres::ScratchDatabase::create(&admin, prefix)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test: {e}"))
}

/// Polls `check` every 10 ms until it holds; panics with `what` after `deadline`.
pub async fn until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A monitor running as `rucat monitor` runs it, until [`stop_monitor`].
pub struct RunningMonitor(Trigger, tokio::task::JoinHandle<()>);

/// Runs `monitor` in the background, as `rucat monitor` does.
pub fn run(monitor: rucat::monitor::Monitor) -> RunningMonitor {
    let (trigger, shutdown) = shutdown::channel();
    RunningMonitor(trigger, tokio::spawn(monitor.run(shutdown)))
}

/// Stops a monitor started by [`run`], and waits until it has.
pub async fn stop_monitor(running: RunningMonitor) {
    running.0.fire();
    tokio::time::timeout(Duration::from_secs(30), running.1)
        .await
        .expect("the monitor stops on shutdown")
        .expect("join");
}

/// The events of engine `id`, from the store.
pub async fn engine_events(app: &TestApp, id: &str) -> Vec<rucat::engine::EngineEvent> {
    app.store
        .events(&EngineId::parse(id).expect("id"))
        .await
        .expect("events")
        .expect("engine")
}

/// The time of the first event into `to`.
pub fn entered(events: &[rucat::engine::EngineEvent], to: EngineState) -> chrono::DateTime<Utc> {
    events
        .iter()
        .find(|e| e.to == to && e.from != Some(to))
        .unwrap_or_else(|| panic!("no event into {to}: {events:?}"))
        .time
}

/// `after` past `from`, as the store (which keeps milliseconds) can tell.
pub fn deadline_at(from: chrono::DateTime<Utc>, after: Duration) -> chrono::DateTime<Utc> {
    from + chrono::Duration::from_std(after).expect("duration") - chrono::Duration::milliseconds(1)
}

/// From an engine's history: it failed (entered `ErrorWaitToClean`) no earlier than `timeout`
/// after its first failed health check, and no later than an `interval` more (with a margin
/// for a busy machine).
pub fn assert_failed_after_health_timeout(
    events: &[rucat::engine::EngineEvent],
    timeout: Duration,
    interval: Duration,
) {
    let first_failure = events
        .iter()
        .find(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("health check failed"))
        })
        .unwrap_or_else(|| panic!("no failed check recorded: {events:?}"));
    // Each failed check is an attempt that failed, caused by the check; the failure by the
    // health timeout.
    assert_eq!(
        first_failure.event_type,
        rucat::engine::EventType::AttemptFailed,
        "{first_failure:?}"
    );
    assert_eq!(
        first_failure.cause.as_ref().map(|c| c.kind()),
        Some("health_check"),
        "{first_failure:?}"
    );
    let first_failure = first_failure.time;
    let failed = entered(events, EngineState::ErrorWaitToClean);
    let failing = events
        .iter()
        .find(|e| e.to == EngineState::ErrorWaitToClean)
        .and_then(|e| e.cause.clone());
    assert_eq!(
        failing,
        Some(rucat::engine::Cause::timeout("health")),
        "{events:?}"
    );
    assert!(failed >= deadline_at(first_failure, timeout), "{events:?}");
    assert!(
        failed <= deadline_at(first_failure, timeout + interval + Duration::from_secs(2)),
        "{events:?}"
    );
}

/// From an engine's history: its delete was forced ("killing it") no earlier than
/// `delete_timeout` after it entered `TerminateInProgress`, and it entered `ErrorClean` after
/// `delete_timeout + kill_timeout`, give or take a `check` (and a margin for a busy machine).
pub fn assert_delete_escalated(
    events: &[rucat::engine::EngineEvent],
    delete_timeout: Duration,
    kill_timeout: Duration,
    check: Duration,
) {
    let deleting = entered(events, EngineState::TerminateInProgress);
    let killing = events
        .iter()
        .find(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("killing it"))
        })
        .unwrap_or_else(|| panic!("no event saying the resource is killed: {events:?}"));
    assert_eq!(
        killing.cause,
        Some(rucat::engine::Cause::timeout("delete")),
        "{killing:?}"
    );
    let stuck = events
        .iter()
        .find(|e| e.to == EngineState::ErrorClean)
        .and_then(|e| e.cause.clone());
    assert_eq!(
        stuck,
        Some(rucat::engine::Cause::timeout("kill")),
        "{events:?}"
    );
    assert!(
        killing.time >= deadline_at(deleting, delete_timeout),
        "forced before the delete timeout: {events:?}"
    );
    let failed = entered(events, EngineState::ErrorClean);
    assert!(
        failed >= deadline_at(deleting, delete_timeout + kill_timeout),
        "{events:?}"
    );
    assert!(
        failed
            <= deadline_at(
                deleting,
                delete_timeout + kill_timeout + check + Duration::from_secs(2)
            ),
        "{events:?}"
    );
}
