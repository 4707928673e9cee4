//! Warm pools end to end: the real `rucat serve` keeping a `[[pool]]` of real Spark Connect
//! engines, users' creates taking them (Running at once, queried with PySpark through the
//! proxy), the pool refilled, and a taken engine's isolation: no one reaches a warm engine
//! through the proxy, and after the take the pool's secret no longer opens it while the new one
//! does.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rucat::engine::EngineState;
use rucat_client::{Client, Engine, ListRequest};

use super::harness::{grpc_status, pyspark, with_parameter, Options, Rucat, SPARK_VERSION};
use super::{token_create, START};
use crate::common::process::processes_matching;

/// Alice (a user, the harness's credential) and root (an admin), with one pool `default` of
/// `size` engines on the tests' Spark.
struct Users {
    alice: String,
    root: String,
}

fn with_pool(size: u32) -> (Options, Users) {
    let (alice, a) = token_create("alice", false);
    let (root, r) = token_create("root", true);
    let config = format!(
        "{a}{r}\n[[pool]]\nname = \"default\"\nversion = \"{SPARK_VERSION}\"\nsize = {size}\n"
    );
    (
        Options {
            config: Some(config),
            token: Some(alice.clone()),
            ..Options::default()
        },
        Users { alice, root },
    )
}

/// The pool an engine is warm in, as an admin's listing shows it (none once taken).
fn pool_of(engine: &Engine) -> Option<&str> {
    engine.pool.as_deref()
}

/// The warm engines of pool `default`, as the admin lists them.
async fn warm(admin: &Client) -> Vec<Engine> {
    admin
        .list_all(&ListRequest::default())
        .await
        .expect("the admin lists every engine")
        .into_iter()
        .filter(|engine| pool_of(engine) == Some("default"))
        .collect()
}

/// Waits (within [`START`]) until pool `default` holds exactly `size` warm engines, all Running;
/// them.
async fn wait_warm(rucat: &Rucat, admin: &Client, size: usize) -> Vec<Engine> {
    let started = Instant::now();
    loop {
        let engines = warm(admin).await;
        let running = engines
            .iter()
            .filter(|engine| engine.state == EngineState::Running)
            .count();
        if engines.len() == size && running == size {
            return engines;
        }
        assert!(
            started.elapsed() < START,
            "the pool has not {size} Running warm engines within {START:?}: {:?}\n{}",
            engines
                .iter()
                .map(|e| (e.id.as_str(), e.state))
                .collect::<Vec<_>>(),
            rucat.server_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// PySpark's `SELECT 1` through `connection`: it must answer 1.
fn select1(connection: &str, user: &str) {
    let url = with_parameter(connection, &format!("user_id={user}"));
    let (ok, answer) = pyspark(&["select1", &url]);
    assert!(ok, "{user}: {answer}");
    assert_eq!(answer["value"], 1, "{user}: {answer}");
}

/// PySpark's `SELECT 1` through `connection`, which must be refused with gRPC `status`.
fn refused(connection: &str, user: &str, status: &str) {
    let url = with_parameter(connection, &format!("user_id={user}"));
    let (ok, answer) = pyspark(&["select1", &url, "--max-retries", "0"]);
    assert!(!ok, "{user}: {answer}");
    assert_eq!(grpc_status(&answer), status, "{user}: {answer}");
}

/// Stops `rucat serve` (cleanly, as the harness checks) and kills what it left running under
/// its data dir; then no process of the test is alive.
async fn shut_down(rucat: Rucat) {
    let dir = rucat.dir.path().to_string_lossy().into_owned();
    drop(rucat);
    let started = Instant::now();
    loop {
        let left = processes_matching(&dir);
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "processes left under {dir}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pool of two: two creates in a row get its Running engines at once (queried through the
/// proxy), the third starts cold and runs later, and the pool is back to two new warm engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_two_serves_two_creates_at_once_and_refills() {
    let (options, users) = with_pool(2);
    let rucat = Rucat::start_with(options).await;
    let admin = rucat.client_as(&users.root);
    let client = rucat.client();
    let began = Instant::now();

    let first_warm: BTreeSet<String> = wait_warm(&rucat, &admin, 2)
        .await
        .into_iter()
        .map(|engine| engine.id)
        .collect();
    assert!(
        client
            .list_all(&ListRequest::default())
            .await
            .expect("list")
            .is_empty(),
        "a user never sees warm engines"
    );
    eprintln!("{:?}: the pool's 2 engines run", began.elapsed());

    // Three creates in a row, each looked at right after its 201.
    let mut created = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let id = client
            .create(name, SPARK_VERSION, &Default::default())
            .await
            .expect("create");
        let engine = client.get(&id).await.expect("get");
        created.push(engine);
    }
    for engine in &created[..2] {
        assert_eq!(
            engine.state,
            EngineState::Running,
            "taken from the pool: {engine:?}"
        );
        assert!(first_warm.contains(&engine.id), "{engine:?} {first_warm:?}");
        assert_eq!(engine.owner, "alice");
        assert_eq!(pool_of(engine), None, "{engine:?}");
    }
    assert_ne!(created[0].id, created[1].id);
    let cold = &created[2];
    assert!(
        matches!(
            cold.state,
            EngineState::WaitToStart | EngineState::TriggerStart | EngineState::StartInProgress
        ),
        "the pool was empty: the third starts cold: {cold:?}"
    );
    assert!(!first_warm.contains(&cold.id));

    // PySpark through the proxy on the two taken ones.
    for (n, engine) in created[..2].iter().enumerate() {
        let endpoint = engine
            .endpoint
            .as_deref()
            .expect("a Running engine's endpoint");
        let alice = with_parameter(endpoint, &format!("token={}", users.alice));
        select1(&alice, &format!("alice-taken-{n}"));
    }

    eprintln!("{:?}: the 2 taken engines served", began.elapsed());
    // The cold one runs later, and serves too.
    let cold = client
        .wait(&cold.id, EngineState::Running, START, |e| {
            eprintln!("{}: {}", e.id, e.state)
        })
        .await
        .expect("the cold engine runs");
    let endpoint = cold.endpoint.as_deref().expect("endpoint");
    select1(
        &with_parameter(endpoint, &format!("token={}", users.alice)),
        "alice-cold",
    );

    eprintln!("{:?}: the cold engine served", began.elapsed());
    // The pool is back to two Running warm engines, new ones.
    let refilled = wait_warm(&rucat, &admin, 2).await;
    let taken: BTreeSet<&str> = created.iter().map(|engine| engine.id.as_str()).collect();
    for engine in &refilled {
        assert!(
            !taken.contains(engine.id.as_str()) && !first_warm.contains(&engine.id),
            "a new warm engine: {engine:?}"
        );
        assert_eq!(engine.owner, "");
    }
    eprintln!("{:?}: the pool refilled", began.elapsed());
    // Alice's three are hers, out of the pool, all Running.
    let mine = client
        .list_all(&ListRequest::default())
        .await
        .expect("list");
    let mine_ids: BTreeSet<&str> = mine.iter().map(|engine| engine.id.as_str()).collect();
    assert_eq!(mine_ids, taken);
    assert!(mine
        .iter()
        .all(|e| e.state == EngineState::Running && pool_of(e).is_none()));

    shut_down(rucat).await;
}

/// What the local platform's record and `/proc` say of a warm engine's Spark process: its pid,
/// its Spark Connect port and the secret it started with.
struct WarmProcess {
    pid: i32,
    port: u16,
    secret: String,
}

fn warm_process(rucat: &Rucat, id: &str) -> WarmProcess {
    let record = rucat
        .dir
        .path()
        .join("data")
        .join("engines")
        .join(id)
        .join("process.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("the engine's process record"))
            .expect("JSON");
    let pid = record["pid"].as_i64().expect("a pid") as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("its command line");
    let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
    assert!(cmdline.contains(id), "the engine's process: {cmdline}");
    let port: u16 = cmdline
        .split('\0')
        .find_map(|arg| arg.strip_prefix("spark.connect.grpc.binding.port="))
        .expect("the port on the command line")
        .parse()
        .expect("a port");
    assert_eq!(record["port"].as_u64(), Some(u64::from(port)));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("its environment");
    let environ = String::from_utf8_lossy(&environ).into_owned();
    let secret = environ
        .split('\0')
        .find_map(|var| var.strip_prefix("RUCAT_ENGINE_TOKEN="))
        .expect("a warm engine starts with RUCAT_ENGINE_TOKEN")
        .to_owned();
    assert!(!secret.is_empty());
    assert!(
        !environ.contains("SPARK_CONNECT_AUTHENTICATE_TOKEN="),
        "a warm engine's secret is the interceptor's, not Spark's fixed one"
    );
    WarmProcess { pid, port, secret }
}

/// Isolation: no caller reaches a warm engine through the proxy (the admin neither), only its
/// pool secret opens it directly; once taken, and after a call through the proxy, the pool
/// secret is refused and the engine's new secret works; its history starts at the take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_engine_has_a_new_secret_and_the_pool_secret_no_longer_works() {
    let (options, users) = with_pool(1);
    let rucat = Rucat::start_with(options).await;
    let admin = rucat.client_as(&users.root);
    let client = rucat.client();

    let warm = wait_warm(&rucat, &admin, 1).await;
    let id = warm[0].id.clone();
    let process = warm_process(&rucat, &id);
    let proxy = format!("sc://localhost:{}/;x-rucat-engine={id}", rucat.proxy.port());
    let direct = format!("sc://localhost:{}", process.port);
    let pool_secret = format!("{direct}/;token={}", process.secret);

    // Before the take: the proxy gives the warm engine to no one, the admin included, and the
    // engine never sees those calls.
    for (token, probe) in [(&users.root, "root-warm"), (&users.alice, "alice-warm")] {
        refused(
            &with_parameter(&proxy, &format!("token={token}")),
            probe,
            "NOT_FOUND",
        );
        assert!(
            !rucat.driver_log(&id).contains(probe),
            "the warm engine saw {probe}"
        );
    }
    // Directly: nothing without a secret, the pool secret works.
    refused(&direct, "no-secret", "UNAUTHENTICATED");
    select1(&pool_secret, "pool-secret-before");
    assert!(
        rucat.driver_log(&id).contains("pool-secret-before"),
        "the engine's log names the sessions it serves (else the checks above prove nothing)"
    );

    // The take: the pool's only Running engine is alice's, Running at once.
    let taken = client
        .create("mine", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    assert_eq!(taken, id, "the create took the warm engine");
    let engine = client.get(&id).await.expect("get");
    assert_eq!(engine.state, EngineState::Running);
    assert_eq!(engine.owner, "alice");
    assert_eq!(engine.name, "mine");
    assert_eq!(pool_of(&engine), None);
    let events = client.events(&id).await.expect("events");
    assert_eq!(
        events.len(),
        1,
        "the history starts at the take: {events:?}"
    );
    let event = &events[0];
    assert_eq!(
        (event.from, event.to),
        (None, EngineState::Running),
        "{event:?}"
    );
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("taken from warm pool default"),
        "{event:?}"
    );
    assert_eq!(
        event.actor,
        Some(rucat_client::Actor::User("alice".into())),
        "{event:?}"
    );

    // A call through the proxy: alice's, and it hands the new secret over.
    let endpoint = engine.endpoint.as_deref().expect("endpoint");
    select1(
        &with_parameter(endpoint, &format!("token={}", users.alice)),
        "alice-taken",
    );

    // Now the pool secret is refused, the new one works, and they differ.
    refused(&pool_secret, "pool-secret-after", "UNAUTHENTICATED");
    assert!(!rucat.driver_log(&id).contains("pool-secret-after"));
    let stored = rucat.stored(&id).await;
    let secret = stored.secret.expect("the taken engine's secret");
    assert_ne!(secret.expose(), process.secret, "a new secret at the take");
    select1(
        &format!("{direct}/;token={}", secret.expose()),
        "new-secret",
    );
    assert_eq!(
        processes_matching(&id),
        vec![process.pid],
        "the same Spark process serves the taken engine"
    );
    // The owner still goes on through the proxy.
    select1(
        &with_parameter(endpoint, &format!("token={}", users.alice)),
        "alice-again",
    );

    shut_down(rucat).await;
}
