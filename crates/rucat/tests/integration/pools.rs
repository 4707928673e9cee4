//! Warm pools against the in-memory platform double and a real SQLite store: the server role
//! (built as `rucat server` builds it, with API tokens for two users and an admin) and monitors
//! keeping the pool, as a test configures them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{open_store, run, stop_monitor, until, VERSION};
use crate::hooked_store::HookedStore;
use reqwest::{Method, StatusCode};
use rucat::app::{Application, Roles};
use rucat::auth::token::{self, TokenEntry};
use rucat::auth::Role;
use rucat::config::{FileConfig, RoleArgs, Settings};
use rucat::engine::policy::ConfPolicy;
use rucat::engine::pool::{PoolFile, Pools};
use rucat::engine::{Actor, Cause, Engine, EngineId, EngineState, EventType};
use rucat::monitor::{Monitor, MonitorConfig};
use rucat::platform::memory::MemoryPlatform;
use rucat::platform::Platform;
use rucat::shutdown::{self, Trigger};
use rucat::store::Store;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The pool of these tests.
const POOL: &str = "small";
/// A second version the server offers (the memory platform starts any version it is asked for).
const OTHER_VERSION: &str = "4.2.0";
/// How long anything a monitor does may take here.
const WAIT: Duration = Duration::from_secs(20);

/// The pool's configs.
fn pool_configs() -> BTreeMap<String, String> {
    [
        ("spark.driver.memory", "1g"),
        ("spark.sql.shuffle.partitions", "8"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// The pool [`POOL`] keeping `size` engines (`None`: no pool at all).
fn pools(size: Option<u32>) -> Pools {
    let files: Vec<PoolFile> = size
        .map(|size| PoolFile {
            name: POOL.into(),
            version: VERSION.into(),
            size,
            configs: pool_configs(),
        })
        .into_iter()
        .collect();
    Pools::from_file(&files, &ConfPolicy::default()).expect("a valid pool")
}

fn monitor_config(pools: Pools) -> MonitorConfig {
    MonitorConfig {
        poll_interval: Duration::from_millis(50),
        trigger_timeout: Duration::from_secs(1),
        start_check_interval: Duration::from_millis(10),
        health_check_interval: Duration::from_millis(20),
        orphan_scan_interval: Duration::from_millis(200),
        pools,
        ..MonitorConfig::default()
    }
}

struct Harness {
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    platform: MemoryPlatform,
    alice: String,
    bob: String,
    root: String,
    _dir: TempDir,
    _shutdown: Trigger,
}

fn new_token(user: &str, role: Role) -> (String, TokenEntry) {
    let (secret, hash) = token::generate().expect("random");
    let entry = TokenEntry {
        user: user.into(),
        role,
        hash,
    };
    (secret.expose_secret().to_owned(), entry)
}

/// The server role over a fresh SQLite file and a memory platform, offering [`VERSION`] and
/// [`OTHER_VERSION`], with tokens for alice and bob (users) and root (admin), the pool keeping
/// `size` engines, and `extra` TOML (say, `[quota]`).
async fn harness(size: u32, extra: &str) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let (alice, a) = new_token("alice", Role::User);
    let (bob, b) = new_token("bob", Role::User);
    let (root, r) = new_token("root", Role::Admin);
    let tokens: String = [a, b, r]
        .iter()
        .map(|e| token::entry_toml(e, "auth.tokens"))
        .collect();
    let path = dir.path().join("rucat.toml");
    std::fs::write(&path, format!("{extra}\n[auth]\n{tokens}")).expect("write rucat.toml");
    let file = FileConfig::load(&path).expect("a valid configuration file");
    let mut settings = Settings::resolve(
        RoleArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().join("data")),
            ..RoleArgs::default()
        },
        file,
    )
    .expect("valid settings");
    settings.pools = pools(Some(size));
    let store = open_store(&dir).await;
    let platform = MemoryPlatform::new();
    let app = Application::assemble(
        &settings,
        Roles::SERVER,
        store.clone(),
        Some(Arc::new(platform.clone()) as Arc<dyn Platform>),
        vec![VERSION.to_owned(), OTHER_VERSION.to_owned()],
    )
    .await
    .expect("the server starts");
    let addr = app.local_addr().expect("listening");
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(app.run(shutdown));
    Harness {
        addr,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        store,
        platform,
        alice,
        bob,
        root,
        _dir: dir,
        _shutdown: trigger,
    }
}

impl Harness {
    /// A monitor over the harness' store and platform, keeping `size` engines in the pool
    /// (`None`: a configuration without the pool).
    fn monitor(&self, size: Option<u32>) -> Monitor {
        Monitor::new(
            self.store.clone(),
            Arc::new(self.platform.clone()),
            monitor_config(pools(size)),
        )
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {token}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, token: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/engines", token, Some(body)).await
    }

    /// Creates an engine; its id.
    async fn created(&self, token: &str, body: &Value) -> String {
        let (status, answer) = self.create(token, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["id"].as_str().expect("id").to_owned()
    }

    async fn get(&self, token: &str, id: &str) -> Value {
        let (status, body) = self
            .call(Method::GET, &format!("/engines/{id}"), token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn events(&self, token: &str, id: &str) -> Vec<Value> {
        let (status, body) = self
            .call(Method::GET, &format!("/engines/{id}/events"), token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"].as_array().expect("events").clone()
    }

    /// The engines `token` lists (one page of up to 500).
    async fn list(&self, token: &str) -> Vec<Value> {
        let (status, body) = self
            .call(Method::GET, "/engines?limit=500", token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["engines"].as_array().expect("engines").clone()
    }

    async fn stored(&self, id: &str) -> Option<Engine> {
        self.store.get(&eid(id)).await.expect("get")
    }

    /// Every engine in a pool, as the store holds it.
    async fn warm(&self) -> Vec<Engine> {
        self.store.warm_engines().await.expect("warm engines")
    }

    /// Waits until the pool is exactly `n` engines, all `Running`; their ids.
    async fn wait_warm_running(&self, n: usize) -> BTreeSet<String> {
        until(WAIT, &format!("{n} warm engines Running"), || async {
            let warm = self.warm().await;
            warm.len() == n && warm.iter().all(|e| e.state == EngineState::Running)
        })
        .await;
        let warm = self.warm().await;
        for engine in &warm {
            assert_eq!(engine.pool.as_deref(), Some(POOL), "{engine:?}");
            assert_eq!(engine.owner, "", "{engine:?}");
            assert_eq!(engine.configs, pool_configs(), "{engine:?}");
            assert_eq!(engine.version, VERSION, "{engine:?}");
        }
        ids(&warm)
    }

    async fn wait_state(&self, token: &str, id: &str, state: EngineState) -> Value {
        let wanted = state.to_string();
        until(WAIT, &format!("engine {id} {state}"), || async {
            self.get(token, id).await["state"] == wanted.as_str()
        })
        .await;
        self.get(token, id).await
    }

    /// The value of `rucat_pool_takes_total` for the pool and `result`, from `GET /metrics`.
    async fn takes(&self, result: &str) -> Option<u64> {
        let response = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .header("authorization", format!("Bearer {}", self.root))
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let page = response.text().await.expect("metrics page");
        let pool = format!("pool=\"{POOL}\"");
        let result = format!("result=\"{result}\"");
        page.lines()
            .find(|line| {
                line.starts_with("rucat_pool_takes_total{")
                    && line.contains(&pool)
                    && line.contains(&result)
            })
            .map(|line| {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("not a counter sample: {line}"))
            })
    }
}

fn eid(id: &str) -> EngineId {
    EngineId::parse(id).expect("engine id")
}

fn ids(engines: &[Engine]) -> BTreeSet<String> {
    engines.iter().map(|e| e.id.to_string()).collect()
}

/// A create of an engine named `name` with `configs`, of `version`.
fn request(name: &str, version: &str, configs: &[(&str, &str)]) -> Value {
    let configs: BTreeMap<&str, &str> = configs.iter().copied().collect();
    json!({"name": name, "engine_type": "Spark", "version": version, "configs": configs})
}

/// Test 1. A monitor fills the pool; users never see its engines, admins do, as the pool's.
#[tokio::test]
async fn a_monitor_fills_the_pool_which_only_admins_see() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    for id in &warm {
        assert!(
            h.platform.exists(&eid(id)),
            "warm engine {id} has a resource"
        );
    }

    assert!(h.list(&h.alice).await.is_empty(), "a user lists none");
    let (status, _) = h
        .call(
            Method::GET,
            &format!("/engines/{}", warm.iter().next().expect("one")),
            &h.alice,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor reads one");

    let listed = h.list(&h.root).await;
    let listed_ids: BTreeSet<String> = listed
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(listed_ids, warm);
    for engine in &listed {
        assert_eq!(engine["pool"], POOL, "{engine}");
        assert_eq!(engine["owner"], "", "{engine}");
        assert_eq!(engine["state"], "Running", "{engine}");
        assert_eq!(engine["name"], format!("warm-{POOL}"), "{engine}");
    }

    // And it stays at 2.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&h.warm().await), warm);
    assert_eq!(h.platform.creates().len(), 2);
    stop_monitor(monitor).await;
}

/// Test 2. A fitting create is served from the pool: Running at once, the caller's, with the
/// pool's configs and a history of one event; the pool is refilled.
#[tokio::test]
async fn a_fitting_create_takes_a_warm_engine_and_the_pool_is_refilled() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;

    let mut taken = Vec::new();
    for (token, name, configs) in [
        (&h.alice, "no-configs", vec![]),
        (&h.bob, "some-configs", vec![("spark.driver.memory", "1g")]),
    ] {
        let started = std::time::Instant::now();
        let id = h.created(token, &request(name, VERSION, &configs)).await;
        let engine = h.get(token, &id).await;
        assert!(started.elapsed() < Duration::from_secs(5), "served at once");
        assert_eq!(engine["state"], "Running", "{engine}");
        assert!(engine.get("endpoint").is_some(), "{engine}");
        assert_eq!(engine["name"], name, "{engine}");
        let owner = if token == &h.alice { "alice" } else { "bob" };
        assert_eq!(engine["owner"], owner, "{engine}");
        assert_eq!(
            engine["configs"],
            serde_json::to_value(pool_configs()).expect("json"),
            "the pool's configs: {engine}"
        );
        assert!(engine.get("pool").is_none(), "{engine}");

        let events = h.events(token, &id).await;
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        assert!(event.get("from").is_none(), "{event}");
        assert_eq!(event["to"], "Running", "{event}");
        assert_eq!(event["type"], "created", "{event}");
        let message = event["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("pool {POOL}")), "{event}");
        let stored_events = h
            .store
            .events(&eid(&id))
            .await
            .expect("events")
            .expect("engine");
        assert_eq!(stored_events.len(), 1);
        assert_eq!(stored_events[0].actor, Some(Actor::User(owner.into())));
        assert_eq!(stored_events[0].cause, Some(Cause::user("create")));
        assert_eq!(stored_events[0].event_type, EventType::Created);

        // It is the caller's: listed by them, no longer in the pool.
        let listed: Vec<Value> = h.list(token).await;
        assert!(listed.iter().any(|e| e["id"] == id.as_str()), "{listed:?}");
        let stored = h.stored(&id).await.expect("stored");
        assert_eq!(stored.pool, None);
        assert!(
            stored.handover_secret.is_some(),
            "its old secret to hand over"
        );
        taken.push(id);
    }
    assert!(
        taken.iter().all(|id| warm.contains(id)),
        "taken from the pool: {taken:?} of {warm:?}"
    );
    // No cold start: the platform created only warm engines.
    let refilled = h.wait_warm_running(2).await;
    assert!(
        refilled.iter().all(|id| !warm.contains(id)),
        "new warm engines: {refilled:?} after {warm:?}"
    );
    assert_eq!(h.platform.creates().len(), 4, "2 warm, then 2 refills");
    for id in &taken {
        assert_eq!(
            h.stored(id).await.expect("stored").state,
            EngineState::Running
        );
    }
    stop_monitor(monitor).await;
}

/// Test 3. A create that does not fit starts cold; the pool's engines are left as they are.
#[tokio::test]
async fn a_create_that_does_not_fit_starts_cold_and_leaves_the_pool_alone() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    let before = h.warm().await;
    // No monitor while the creates are checked, so that their state is the create's own.
    stop_monitor(monitor).await;

    let mut cold = Vec::new();
    for (name, version, configs) in [
        ("other-version", OTHER_VERSION, vec![]),
        (
            "extra-config",
            VERSION,
            vec![("spark.driver.memory", "1g"), ("spark.executor.cores", "2")],
        ),
        ("other-value", VERSION, vec![("spark.driver.memory", "2g")]),
    ] {
        let id = h.created(&h.alice, &request(name, version, &configs)).await;
        let engine = h.get(&h.alice, &id).await;
        assert_eq!(engine["state"], "WaitToStart", "cold: {engine}");
        assert!(!warm.contains(&id), "{id} is no warm engine");
        assert_eq!(engine["version"], version, "{engine}");
        let expected: BTreeMap<&str, &str> = configs.iter().copied().collect();
        assert_eq!(
            engine["configs"],
            json!(expected),
            "its own configs: {engine}"
        );
        assert!(engine.get("pool").is_none(), "{engine}");
        let events = h.events(&h.alice, &id).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["to"], "WaitToStart");
        cold.push(id);
    }
    assert_eq!(h.warm().await, before, "the pool untouched");

    // A monitor starts them on the platform, and still leaves the pool as it is.
    let monitor = run(h.monitor(Some(2)));
    for id in &cold {
        h.wait_state(&h.alice, id, EngineState::Running).await;
        assert!(
            h.platform.creates().contains(&eid(id)),
            "started cold: {id}"
        );
    }
    assert_eq!(ids(&h.warm().await), warm);
    for engine in h.warm().await {
        assert_eq!(
            (engine.state, engine.owner.as_str(), engine.pool.as_deref()),
            (EngineState::Running, "", Some(POOL))
        );
    }
    assert_eq!(h.platform.creates().len(), 2 + cold.len());
    stop_monitor(monitor).await;
}

/// Test 4. A fitting create while the pool is still warming up starts cold, and is counted as
/// an empty take.
#[tokio::test]
async fn a_fitting_create_while_the_pool_warms_up_starts_cold() {
    let h = harness(2, "").await;
    // Warm engines start, and never serve.
    h.platform.set_polls_until_ready(u32::MAX);
    let monitor = run(h.monitor(Some(2)));
    until(WAIT, "2 warm engines starting", || async {
        let warm = h.warm().await;
        warm.len() == 2 && warm.iter().all(|e| e.state == EngineState::StartInProgress)
    })
    .await;
    let warm = ids(&h.warm().await);
    assert_eq!(h.takes("empty").await.unwrap_or(0), 0);

    let id = h.created(&h.alice, &request("eager", VERSION, &[])).await;
    assert!(!warm.contains(&id), "a new engine");
    let engine = h.get(&h.alice, &id).await;
    assert_ne!(engine["state"], "Running", "{engine}");
    assert_eq!(engine["owner"], "alice");
    assert!(engine.get("pool").is_none(), "{engine}");
    // Its own request's configs (none), not the pool's.
    assert_eq!(engine["configs"], json!({}), "{engine}");
    let events = h.events(&h.alice, &id).await;
    assert!(events[0].get("from").is_none(), "{events:?}");
    assert_eq!(events[0]["to"], "WaitToStart", "cold: {events:?}");

    assert_eq!(h.takes("empty").await, Some(1));
    assert_eq!(h.takes("taken").await, Some(0));
    assert_eq!(ids(&h.warm().await), warm, "the pool keeps its engines");
    stop_monitor(monitor).await;
}

/// Test 5. A user at `max_engines` is refused a fitting create; the pool keeps its engines.
#[tokio::test]
async fn a_user_at_max_engines_is_refused_and_the_pool_stays_warm() {
    let h = harness(2, "[quota]\nmax_engines = 1\n").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    let before = h.warm().await;

    // alice's one engine, started cold (the pool has no such config).
    h.created(
        &h.alice,
        &request("mine", VERSION, &[("spark.executor.cores", "2")]),
    )
    .await;
    let (status, body) = h.create(&h.alice, &request("more", VERSION, &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_engines is 1"), "{message}");

    let after = h.warm().await;
    assert_eq!(ids(&after), warm, "no warm engine taken");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (
                a.state,
                a.owner.as_str(),
                a.pool.as_deref(),
                &a.name,
                a.create_time
            ),
            (
                b.state,
                b.owner.as_str(),
                b.pool.as_deref(),
                &b.name,
                b.create_time
            ),
            "untouched"
        );
    }
    let mine: Vec<Value> = h.list(&h.alice).await;
    assert_eq!(mine.len(), 1, "{mine:?}");

    // Under the quota, bob takes one.
    let id = h.created(&h.bob, &request("his", VERSION, &[])).await;
    assert_eq!(h.get(&h.bob, &id).await["state"], "Running");
    assert!(warm.contains(&id));
    stop_monitor(monitor).await;
}

/// Test 6 (a). A warm engine an admin stops is removed, and replaced.
#[tokio::test]
async fn a_warm_engine_stopped_by_an_admin_is_removed_and_replaced() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    let victim = warm.iter().next().expect("one").clone();

    let (status, body) = h
        .call(
            Method::POST,
            &format!("/engines/{victim}/stop"),
            &h.root,
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    until(WAIT, "the stopped warm engine is removed", || async {
        h.stored(&victim).await.is_none()
    })
    .await;
    assert!(!h.platform.exists(&eid(&victim)), "its resource is gone");
    let now = h.wait_warm_running(2).await;
    assert!(!now.contains(&victim));
    assert_eq!(now.intersection(&warm).count(), 1, "one kept, one new");
    stop_monitor(monitor).await;
}

/// Test 6 (b). A warm engine whose resource dies is cleaned, removed, and replaced.
#[tokio::test]
async fn a_warm_engine_that_dies_is_removed_and_replaced() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    let victim = warm.iter().next().expect("one").clone();

    h.platform
        .kill(&eid(&victim), "OutOfMemoryError: Java heap space");
    until(WAIT, "the dead warm engine is removed", || async {
        h.stored(&victim).await.is_none()
    })
    .await;
    assert!(!h.platform.exists(&eid(&victim)), "its resource is cleaned");
    let now = h.wait_warm_running(2).await;
    assert!(!now.contains(&victim));
    assert_eq!(now.intersection(&warm).count(), 1, "one kept, one new");
    stop_monitor(monitor).await;
}

/// Waits until no engine is left in the store (the pool emptied), and no resource either.
async fn wait_all_gone(h: &Harness, what: &str) {
    until(WAIT, what, || async {
        h.store.all_states().await.expect("states").is_empty()
    })
    .await;
}

/// Test 7. A monitor with a smaller pool stops and removes the extra engine, one with a
/// larger pool adds one, and one without the pool empties it.
#[tokio::test]
async fn resizing_the_pool_stops_adds_and_removes_engines() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    stop_monitor(monitor).await;

    let monitor = run(h.monitor(Some(1)));
    let one = h.wait_warm_running(1).await;
    assert!(
        one.is_subset(&warm),
        "one of the two kept: {one:?} of {warm:?}"
    );
    let extra: Vec<&String> = warm.difference(&one).collect();
    assert_eq!(extra.len(), 1);
    until(WAIT, "the extra engine is removed", || async {
        h.stored(extra[0]).await.is_none()
    })
    .await;
    assert!(!h.platform.exists(&eid(extra[0])), "its resource deleted");
    assert_eq!(h.store.all_states().await.expect("states").len(), 1);
    stop_monitor(monitor).await;

    let monitor = run(h.monitor(Some(3)));
    let three = h.wait_warm_running(3).await;
    assert!(one.is_subset(&three), "the kept one stays: {three:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&h.warm().await), three, "no more than 3");
    stop_monitor(monitor).await;

    let monitor = run(h.monitor(None));
    wait_all_gone(&h, "a pool no longer configured is emptied").await;
    for id in &three {
        assert!(!h.platform.exists(&eid(id)), "resource of {id} deleted");
    }
    stop_monitor(monitor).await;
}

/// Test 8. A taken engine is never stopped by the pool it came from, however small it gets.
#[tokio::test]
async fn a_taken_engine_is_not_stopped_by_a_shrinking_pool() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    h.wait_warm_running(2).await;
    let id = h.created(&h.alice, &request("kept", VERSION, &[])).await;
    assert_eq!(h.get(&h.alice, &id).await["state"], "Running");
    h.wait_warm_running(2).await;
    stop_monitor(monitor).await;

    let shrunk = h.monitor(Some(0));
    shrunk.keep_pools().await.expect("a keeper round");
    let warm = h.warm().await;
    assert_eq!(warm.len(), 2);
    for engine in &warm {
        assert_eq!(engine.state, EngineState::WaitToTerminate, "{engine:?}");
    }
    let engine = h.stored(&id).await.expect("stored");
    assert_eq!(
        (engine.state, engine.owner.as_str(), engine.pool.as_deref()),
        (EngineState::Running, "alice", None)
    );

    // Driven to the end, the warm ones go; the taken one is still Running.
    let running = run(shrunk);
    until(WAIT, "the pool emptied", || async {
        h.warm().await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.get(&h.alice, &id).await["state"], "Running");
    assert!(h.platform.exists(&eid(&id)));
    assert!(!h.platform.deletes().contains(&eid(&id)), "never deleted");
    let events = h.events(&h.alice, &id).await;
    assert_eq!(events.len(), 1, "nothing happened to it: {events:?}");
    stop_monitor(running).await;
}

/// Test 9. A taken engine stops and restarts as any engine, and stays out of the pool.
#[tokio::test]
async fn a_taken_engine_restarts_and_does_not_go_back_to_the_pool() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    h.wait_warm_running(2).await;
    let id = h.created(&h.alice, &request("again", VERSION, &[])).await;
    let taken = h.stored(&id).await.expect("stored");
    let taken_secret = taken.secret.as_ref().expect("a secret").expose().to_owned();
    assert!(taken.handover_secret.is_some());

    let (status, body) = h
        .call(Method::POST, &format!("/engines/{id}/stop"), &h.alice, None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    h.wait_state(&h.alice, &id, EngineState::Terminated).await;
    assert!(!h.platform.exists(&eid(&id)));
    // A Terminated taken engine is no warm engine: it is kept, not removed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.stored(&id).await.is_some(), "kept after its stop");

    let (status, body) = h
        .call(
            Method::POST,
            &format!("/engines/{id}/restart"),
            &h.alice,
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let engine = h.wait_state(&h.alice, &id, EngineState::Running).await;
    assert!(engine.get("pool").is_none(), "{engine}");
    assert_eq!(engine["owner"], "alice");
    assert_eq!(engine["name"], "again");
    assert!(h.platform.exists(&eid(&id)));
    assert_eq!(
        h.platform
            .creates()
            .iter()
            .filter(|c| c.as_str() == id)
            .count(),
        2,
        "started warm, then again"
    );

    let stored = h.stored(&id).await.expect("stored");
    assert_eq!(stored.pool, None);
    assert!(
        stored.handover_secret.is_none(),
        "nothing to hand over after a restart"
    );
    assert_ne!(
        stored.secret.as_ref().expect("a secret").expose(),
        taken_secret,
        "a new secret for the new start"
    );
    let warm = h.wait_warm_running(2).await;
    assert!(!warm.contains(&id), "not back in the pool");
    let listed = h.list(&h.root).await;
    let entry = listed
        .iter()
        .find(|e| e["id"] == id.as_str())
        .expect("listed");
    assert!(entry.get("pool").is_none(), "{entry}");
    assert_eq!(h.list(&h.alice).await.len(), 1);
    stop_monitor(monitor).await;
}

/// Test 8 (b). A keeper round that read the pool just before a create took one of its engines
/// stops only the engines still warm: the taken one runs on, its history untouched.
#[tokio::test]
async fn a_keeper_round_that_read_the_pool_before_a_take_spares_the_taken_engine() {
    let h = harness(2, "").await;
    let monitor = run(h.monitor(Some(2)));
    let warm = h.wait_warm_running(2).await;
    stop_monitor(monitor).await;

    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let store = Arc::new(HookedStore::new(h.store.clone()));
    *store
        .warm_gate
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((read_tx, go_rx));
    let shrunk = Monitor::new(
        store,
        Arc::new(h.platform.clone()),
        monitor_config(pools(Some(0))),
    );
    let round = tokio::spawn(async move { shrunk.keep_pools().await });
    read_rx.await.expect("the round read the pool");
    let id = h.created(&h.alice, &request("raced", VERSION, &[])).await;
    assert!(warm.contains(&id), "taken from the pool");
    go_tx.send(()).expect("the round waits");
    round.await.expect("join").expect("a keeper round");

    let engine = h.stored(&id).await.expect("stored");
    assert_eq!(
        (engine.state, engine.owner.as_str(), engine.pool.as_deref()),
        (EngineState::Running, "alice", None),
        "the taken engine runs on"
    );
    let events = h.events(&h.alice, &id).await;
    assert_eq!(events.len(), 1, "no stop recorded: {events:?}");
    for other in warm.iter().filter(|w| **w != id) {
        let other = h.stored(other).await.expect("stored");
        assert_eq!(other.state, EngineState::WaitToTerminate, "{other:?}");
        assert_eq!(other.pool.as_deref(), Some(POOL));
    }
}

/// A pool whose engines cannot start (the platform refuses every create, say a namespace out of
/// quota) is refilled with back-off, not at once each time an engine fails: with the default
/// monitor settings (first retry after 1 s, doubling), two slots refilled for 3 s add a handful
/// of engines, not one every few milliseconds.
#[tokio::test]
async fn a_pool_whose_engines_fail_is_refilled_with_back_off() {
    let h = harness(2, "").await;
    h.platform.fail_creates(Some("exceeded quota: pods"));
    let store = Arc::new(HookedStore::new(h.store.clone()));
    let monitor = run(Monitor::new(
        store.clone(),
        Arc::new(h.platform.clone()),
        MonitorConfig {
            pools: pools(Some(2)),
            ..MonitorConfig::default()
        },
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_monitor(monitor).await;
    let added = store
        .warm_inserted
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        added <= 10,
        "{added} warm engines added in 3 s to a pool of 2 whose engines all fail"
    );
}
