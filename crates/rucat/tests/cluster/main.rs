//! Many `rucat server` and `rucat monitor` processes on one PostgreSQL store: random user
//! operations on hundreds of engines, a monitor killed while it holds claims, and (with the real
//! local platform) real Spark engines started by several monitors.
//!
//! The simulated platform writes every create, adopt and delete, from every process, to one
//! journal; the tests check it against what the store says.

#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod e2e;
mod harness;
mod local;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use e2e::{query, spark_home, spark_processes};
use harness::Cluster;
use rucat::platform::simulated::{JournalEvent, SimulatedPlatform};
use tokio::sync::Semaphore;

const VERSION: &str = "4.3.0";

/// A small deterministic generator (xorshift64*), so that a failing run can be replayed with
/// `RUCAT_TEST_SEED`.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("RUCAT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        (Rng(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Stop,
    Restart,
    Delete,
}

impl Op {
    /// The state an engine settles in when this was the last operation that was accepted.
    fn settles_in(self) -> Option<&'static str> {
        match self {
            Op::Create | Op::Restart => Some("Running"),
            Op::Stop => Some("Terminated"),
            Op::Delete => None,
        }
    }
}

/// Checks the journal: per engine, creates and deletes alternate (a create while a resource
/// exists would be a second resource for one start), and the live resources are exactly
/// `running`. Returns the number of creates and adopts.
fn check_journal(cluster: &Cluster, running: &HashSet<String>) -> (usize, usize) {
    let journal = SimulatedPlatform::journal(&cluster.data_dir()).expect("journal");
    let mut live: HashMap<&str, bool> = HashMap::new();
    let (mut creates, mut adopts) = (0, 0);
    for entry in &journal {
        let exists = live.entry(entry.engine.as_str()).or_default();
        match entry.event {
            JournalEvent::Create => {
                assert!(
                    !*exists,
                    "engine {} got a second resource while one existed: {entry:?}",
                    entry.engine
                );
                *exists = true;
                creates += 1;
            }
            JournalEvent::Adopt => {
                assert!(*exists, "adopted nothing: {entry:?}");
                adopts += 1;
            }
            JournalEvent::Delete => {
                assert!(*exists, "deleted nothing: {entry:?}");
                *exists = false;
            }
        }
    }
    let from_journal: HashSet<String> = live
        .into_iter()
        .filter(|(_, exists)| *exists)
        .map(|(id, _)| id.to_owned())
        .collect();
    let on_disk: HashSet<String> = SimulatedPlatform::live_resources(&cluster.data_dir())
        .expect("live resources")
        .into_iter()
        .collect();
    assert_eq!(
        from_journal, on_disk,
        "the journal and the resources disagree"
    );
    let leaked: Vec<_> = on_disk.difference(running).collect();
    let missing: Vec<_> = running.difference(&on_disk).collect();
    assert!(
        leaked.is_empty(),
        "resources left for engines that are not Running: {leaked:?}"
    );
    assert!(
        missing.is_empty(),
        "Running engines without a resource: {missing:?}"
    );
    (creates, adopts)
}

/// The engines expected to end `Running`.
fn running_ids(expected: &[(String, Option<&str>)]) -> HashSet<String> {
    expected
        .iter()
        .filter(|(_, state)| *state == Some("Running"))
        .map(|(id, _)| id.clone())
        .collect()
}

const SIMULATED: &str = r#"
[monitor]
poll_interval_ms = 1000
trigger_timeout_ms = 20000
start_check_interval_ms = 100
health_check_interval_ms = 2000
orphan_scan_interval_ms = 1500

[simulated]
start_delay_ms = 150
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_monitors_and_two_servers_drive_hundreds_of_engines_on_one_postgres() {
    const ENGINES: usize = 320;
    let db = common::scratch_postgres("cluster").await;
    let mut cluster = Cluster::new(db.url(), "simulated", SIMULATED);
    for _ in 0..2 {
        cluster.add_server().await;
    }
    for _ in 0..4 {
        cluster.add_monitor("");
    }
    let cluster = Arc::new(cluster);
    let (mut rng, seed) = Rng::seeded();
    eprintln!("RUCAT_TEST_SEED={seed}");

    // Each engine: created on one server, then 2 to 6 random operations on either server, with
    // random pauses, all engines at once (32 in flight).
    let limit = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for n in 0..ENGINES {
        let (cluster, limit) = (Arc::clone(&cluster), Arc::clone(&limit));
        let mut rng = Rng(rng.next() | 1);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            let id = cluster
                .create(rng.below(2) as usize, &format!("e{n}"), VERSION)
                .await;
            let mut last = Op::Create;
            let mut answers = Vec::new();
            for _ in 0..2 + rng.below(5) {
                tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
                let op = match rng.below(10) {
                    0..=3 => Op::Stop,
                    4..=7 => Op::Restart,
                    _ => Op::Delete,
                };
                let server = rng.below(2) as usize;
                let path = format!("/engines/{id}");
                let request = match op {
                    Op::Stop => cluster
                        .http
                        .post(cluster.url(server, &format!("{path}/stop"))),
                    Op::Restart => cluster
                        .http
                        .post(cluster.url(server, &format!("{path}/restart"))),
                    Op::Delete | Op::Create => cluster.http.delete(cluster.url(server, &path)),
                };
                let status = request.send().await.expect("request").status();
                answers.push((op, status.as_u16()));
                if status.is_success() {
                    last = op;
                    if op == Op::Delete {
                        break;
                    }
                } else {
                    assert_eq!(
                        status,
                        reqwest::StatusCode::CONFLICT,
                        "{op:?} on {id} answered {status}"
                    );
                }
            }
            (id, last, answers)
        }));
    }
    let mut expected = Vec::new();
    let mut accepted = HashMap::new();
    for task in tasks {
        let (id, last, answers) = task.await.expect("driver task");
        for (op, status) in answers {
            *accepted.entry((format!("{op:?}"), status)).or_insert(0) += 1;
        }
        expected.push((id, last.settles_in()));
    }
    eprintln!("answers (operation, status) → count: {accepted:?}");

    cluster.settle(&expected, Duration::from_secs(180)).await;
    // Let orphan scans and health checks run a few more rounds, then look at the platform.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.settle(&expected, Duration::from_secs(10)).await;

    let running = running_ids(&expected);
    let (creates, adopts) = check_journal(&cluster, &running);
    eprintln!(
        "{} engines, {} Running, {creates} creates, {adopts} adopts",
        expected.len(),
        running.len()
    );
    assert_eq!(adopts, 0, "no claim timed out, so no resource is adopted");
    // Every monitor took part.
    let journal = SimulatedPlatform::journal(&cluster.data_dir()).expect("journal");
    let pids: HashSet<u32> = journal.iter().map(|entry| entry.pid).collect();
    assert_eq!(pids.len(), 4, "creates and deletes came from {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_monitor_killed_while_holding_claims_is_taken_over_without_duplicates() {
    const ENGINES: usize = 12;
    let db = common::scratch_postgres("claims").await;
    let config = SIMULATED.replace("trigger_timeout_ms = 20000", "trigger_timeout_ms = 3000");
    let mut cluster = Cluster::new(db.url(), "simulated", &config);
    cluster.add_server().await;
    // The victim makes each resource, then takes a minute to return from create.
    let victim = cluster.add_monitor("create_delay_ms = 60000");
    let mut ids = Vec::new();
    for n in 0..ENGINES {
        ids.push(cluster.create(0, &format!("claimed-{n}"), VERSION).await);
    }

    // Wait until the victim holds every claim and has made every resource.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let journal = SimulatedPlatform::journal(&cluster.data_dir()).expect("journal");
        let mut claimed = 0;
        for id in &ids {
            if cluster.state(0, id).await.as_deref() == Some("TriggerStart") {
                claimed += 1;
            }
        }
        if claimed == ENGINES && journal.len() == ENGINES {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the victim claimed {claimed} engines and made {} resources{}",
            journal.len(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let victim_pid = cluster.monitors[victim].pid().expect("victim runs");
    cluster.monitors[victim].kill9();

    // Two healthy monitors take over once the claims time out.
    cluster.add_monitor("");
    cluster.add_monitor("");
    let expected: Vec<_> = ids.iter().map(|id| (id.clone(), Some("Running"))).collect();
    cluster.settle(&expected, Duration::from_secs(60)).await;

    let journal = SimulatedPlatform::journal(&cluster.data_dir()).expect("journal");
    for id in &ids {
        let entries: Vec<_> = journal.iter().filter(|entry| &entry.engine == id).collect();
        let events: Vec<_> = entries
            .iter()
            .map(|entry| (entry.event, entry.pid == victim_pid))
            .collect();
        // A survivor's claim is a new generation: it does not take on a resource the victim
        // (which may yet wake up and act on it) made, but replaces it, never two at once.
        assert_eq!(
            events,
            [
                (JournalEvent::Create, true),
                (JournalEvent::Delete, false),
                (JournalEvent::Create, false)
            ],
            "engine {id}: made by the victim, replaced once by a survivor"
        );
        assert_eq!(entries[1].generation, entries[0].generation);
        assert!(
            entries[2].generation > entries[0].generation,
            "engine {id}: the survivor's resource is of a later generation: {entries:?}"
        );
        let history: serde_json::Value = cluster
            .http
            .get(cluster.url(0, &format!("/engines/{id}/events")))
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("JSON");
        assert!(
            history.to_string().contains("claim timed out"),
            "engine {id}: {history}"
        );
    }
    let running: HashSet<String> = ids.iter().cloned().collect();
    check_journal(&cluster, &running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_monitors_start_three_real_spark_engines_once_each() {
    let db = common::scratch_postgres("spark").await;
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port()));
    let config = format!(
        r#"
[monitor]
poll_interval_ms = 500
orphan_scan_interval_ms = 2000
[local]
master = "local[1]"
[proxy]
public_url = "sc://localhost:{}"
"#,
        proxy.port()
    );
    let mut cluster = Cluster::new(db.url(), "local", &config).with_spark(spark_home());
    cluster.add_server().await;
    for _ in 0..3 {
        cluster.add_monitor("");
    }
    // The proxy in a process of its own, on the same PostgreSQL store.
    let _proxy = cluster.start_proxy(proxy);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(cluster.create(0, &format!("spark-{n}"), VERSION).await);
    }
    let expected: Vec<_> = ids.iter().map(|id| (id.clone(), Some("Running"))).collect();
    cluster.settle(&expected, Duration::from_secs(300)).await;

    for id in &ids {
        assert_eq!(
            spark_processes(id).len(),
            1,
            "engine {id} has exactly one Spark process"
        );
    }
    // Which monitors did the work: each start is recorded by the monitor that made it, one of
    // the three processes (its name is HOST-PID).
    let monitors: Vec<String> = cluster
        .monitors
        .iter()
        .map(|m| format!("-{}", m.pid().expect("running")))
        .collect();
    for id in &ids {
        let history: serde_json::Value = cluster
            .http
            .get(cluster.url(0, &format!("/engines/{id}/events")))
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("JSON");
        let started = history["events"]
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["to"] == "StartInProgress")
            .unwrap_or_else(|| panic!("engine {id} never started: {history}"));
        assert_eq!(started["actor"]["kind"], "monitor", "{started}");
        let name = started["actor"]["name"].as_str().expect("a name");
        assert!(
            monitors.iter().any(|m| name.ends_with(m.as_str())),
            "engine {id} started by {name}, not one of the monitors {monitors:?}"
        );
    }
    // Every engine answers a query through the proxy (anonymous: no authentication here).
    for id in &ids {
        let engine = cluster.engine(0, id).await;
        let endpoint = engine["endpoint"].as_str().expect("an endpoint").to_owned();
        assert!(endpoint.starts_with(&format!("sc://localhost:{}/", proxy.port())));
        query(&endpoint).await;
    }

    // A monitor dies; the others still stop every engine, and no Spark process is left.
    cluster.monitors[0].kill9();
    for id in &ids {
        let stopped = cluster
            .http
            .post(cluster.url(0, &format!("/engines/{id}/stop")))
            .send()
            .await
            .expect("stop");
        assert!(
            stopped.status().is_success(),
            "stop answered {}",
            stopped.status()
        );
    }
    let expected: Vec<_> = ids
        .iter()
        .map(|id| (id.clone(), Some("Terminated")))
        .collect();
    cluster.settle(&expected, Duration::from_secs(120)).await;
    for id in &ids {
        assert!(
            spark_processes(id).is_empty(),
            "engine {id}'s Spark process is gone"
        );
    }
}

/// What the load generator saw: when each request was sent, and what came back.
#[derive(Debug, Default)]
struct Seen {
    answers: Vec<(std::time::Instant, String, u16)>,
    /// Each engine answered 201, its last accepted operation, and whether a stop was answered
    /// 5xx: then it is unknown whether the stop committed before the connection died.
    created: Vec<(String, Op, bool)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_loses_nothing_and_answers_no_5xx_once_back() {
    let postgres = harness::PrivatePostgres::start();
    let config = format!(
        "{}\n[database]\nacquire_timeout_ms = 1000\n",
        SIMULATED.replace("trigger_timeout_ms = 20000", "trigger_timeout_ms = 4000")
    );
    let mut cluster = Cluster::new(&postgres.url(), "simulated", &config);
    cluster.add_server().await;
    cluster.add_monitor("");
    cluster.add_monitor("");
    let cluster = Arc::new(cluster);

    // Load: create engines, and stop every other one, until told to stop.
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (cluster, seen, running) = (cluster.clone(), seen.clone(), running.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while running.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let sent = std::time::Instant::now();
                let body = serde_json::json!({"name": format!("w{worker}-{n}"), "engine_type": "Spark", "version": VERSION});
                let created = cluster.http.post(cluster.url(0, "/engines")).json(&body).send().await;
                let response = created.expect("the server answers (it must not crash)");
                let status = response.status().as_u16();
                seen.lock().expect("lock").answers.push((sent, "create".into(), status));
                if status != 201 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let id = response.json::<serde_json::Value>().await.expect("JSON")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned();
                let mut last = Op::Create;
                let mut unknown = false;
                if n % 2 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let sent = std::time::Instant::now();
                    let stop = cluster
                        .http
                        .post(cluster.url(0, &format!("/engines/{id}/stop")))
                        .send()
                        .await
                        .expect("the server answers (it must not crash)");
                    let status = stop.status().as_u16();
                    seen.lock().expect("lock").answers.push((sent, "stop".into(), status));
                    if stop.status().is_success() {
                        last = Op::Stop;
                    }
                    unknown = stop.status().is_server_error();
                }
                seen.lock().expect("lock").created.push((id, last, unknown));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.stop();
    // While the store is down, the server says it is not ready.
    let mut unready = false;
    for _ in 0..50 {
        let ready = cluster
            .http
            .get(cluster.url(0, "/readyz"))
            .send()
            .await
            .expect("readyz");
        if ready.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready, "/readyz never failed while PostgreSQL was down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.start_again();
    let back = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    for worker in load {
        worker.await.expect("load worker");
    }

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let after: Vec<_> = seen
        .answers
        .iter()
        .filter(|(sent, ..)| *sent >= back)
        .collect();
    let failed_after: Vec<_> = after
        .iter()
        .filter(|(_, _, status)| *status >= 500)
        .collect();
    let failed_during = seen
        .answers
        .iter()
        .filter(|(_, _, status)| *status >= 500)
        .count();
    eprintln!(
        "{} requests, {} answered 5xx while PostgreSQL was down, {} sent after it was back",
        seen.answers.len(),
        failed_during,
        after.len()
    );
    assert!(
        after.len() > 20,
        "too little load after the restart to tell"
    );
    assert!(
        failed_during > 0,
        "the outage was never seen: the test proves nothing"
    );
    assert!(
        failed_after.is_empty(),
        "answered 5xx after PostgreSQL was back: {failed_after:?}"
    );
    let mut cluster = Arc::into_inner(cluster).expect("the load is over");
    for process in cluster
        .servers
        .iter_mut()
        .chain(cluster.monitors.iter_mut())
    {
        if let Some(status) = process.exited() {
            panic!("{} exited with {status}: {}", process.name, process.log());
        }
    }

    // A stop answered 5xx during the outage may or may not have committed: asked again now,
    // it is either accepted or refused because the engine is stopping already.
    let mut expected = Vec::new();
    for (id, last, unknown) in &seen.created {
        let mut last = *last;
        if *unknown {
            let again = cluster
                .http
                .post(cluster.url(0, &format!("/engines/{id}/stop")))
                .send()
                .await
                .expect("stop again")
                .status();
            assert!(
                again == reqwest::StatusCode::ACCEPTED || again == reqwest::StatusCode::CONFLICT,
                "a repeated stop of {id} answered {again}"
            );
            last = Op::Stop;
        }
        expected.push((id.clone(), last.settles_in()));
    }
    // Every engine that was answered 201 is there and settles as its last operation implies.
    cluster.settle(&expected, Duration::from_secs(90)).await;
    // A create answered 5xx may have committed too: such an engine is not in `expected`, but
    // it is in the store and must be driven like any other. Resources must match the engines
    // the store holds Running, which include every engine expected to run.
    let running = cluster.ids_in_state("Running").await;
    assert!(running.is_superset(&running_ids(&expected)));
    check_journal(&cluster, &running);
    let ready = cluster
        .http
        .get(cluster.url(0, "/readyz"))
        .send()
        .await
        .expect("readyz");
    assert!(ready.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_started_before_its_postgres_waits_for_it() {
    let postgres = Arc::new(harness::PrivatePostgres::start());
    postgres.stop();
    let mut cluster = Cluster::new(&postgres.url(), "simulated", SIMULATED);
    // PostgreSQL comes up 8 s after the server and the monitor: longer than a connection
    // attempt waits (5 s), so they retry.
    let starter = {
        let postgres = Arc::clone(&postgres);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(8));
            postgres.start_again();
        })
    };
    cluster.add_monitor("");
    cluster.add_server().await;
    starter.join().expect("PostgreSQL started");
    let id = cluster.create(0, "late", VERSION).await;
    cluster
        .settle(&[(id, Some("Running"))], Duration::from_secs(30))
        .await;
    let log = cluster.servers[0].log();
    assert!(log.contains("waiting for the store"), "{log}");
}
