//! Helpers shared by the integration tests: a real server on a random port over a real SQLite
//! file, with typed calls.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rucat::client::Client;
use rucat::engine::policy::ConfPolicy;
use rucat::engine::{Engine, EngineId, EngineState};
use rucat::platform::Platform;
use rucat::server::{self, ApiContext};
use rucat::shutdown::{self, Trigger};
use rucat::store::sqlite::SqliteStore;
use rucat::store::Store;
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

    /// Every engine in the store, whatever its state.
    pub async fn count(&self) -> usize {
        self.store.all_states().await.expect("store answers").len()
    }

    /// Puts an engine straight into the store, in `state`.
    pub async fn plant(&self, state: EngineState) -> Engine {
        let now = Utc::now();
        let engine = Engine {
            id: EngineId::generate(),
            name: format!("planted-{state}"),
            owner: "anonymous".into(),
            engine_type: "Spark".into(),
            version: VERSION.into(),
            state,
            error: None,
            configs: Default::default(),
            endpoint: (state == EngineState::Running).then(|| "sc://127.0.0.1:1".to_owned()),
            create_time: now,
            update_time: now,
            next_update_time: None,
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

pub async fn spawn_api_on(
    dir: TempDir,
    store: Arc<dyn Store>,
    live_logs: Option<Arc<dyn Platform>>,
) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let context = ApiContext {
        store: store.clone(),
        policy: Arc::new(ConfPolicy::default()),
        versions: Arc::new(vec![VERSION.to_owned()]),
        live_logs,
    };
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(server::serve(listener, context, shutdown));
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
