//! The local platform with real Spark under several `rucat monitor` processes: fencing, hung
//! engines and deletes that need escalating.
//!
//! A hung Spark is made with SIGSTOP of its JVM: a stopped process answers no Spark Connect
//! request and does not die on SIGTERM (the signal stays pending), but SIGKILL ends it, as it
//! ends a real JVM stuck so that it ignores SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rucat::engine::{Engine, EngineId, EngineName, EngineSecret, EngineState, EngineType};
use rucat::platform::local::LocalPlatform;
use rucat::platform::{Platform, ResourceState};
use rucat::store::Store;
use serde_json::Value;

use crate::common::process::processes_matching;
use crate::e2e::{query, spark_home, spark_processes, with_parameter};
use crate::harness::{freeze, holds_flock, Cluster, Process};
use crate::VERSION;

/// How long a real Spark engine may take to be Running on a loaded 2-core machine.
const SPARK_START: Duration = Duration::from_secs(240);
/// Slack for a loaded machine on top of what the monitor's settings imply.
const MARGIN: Duration = Duration::from_secs(30);

const HEALTH_INTERVAL_MS: u64 = 1000;
const HEALTH_TIMEOUT_MS: u64 = 4000;
const DELETE_TIMEOUT_MS: u64 = 3000;
/// How long a plain delete of the local platform waits for the processes after SIGTERM
/// (`TERM_WAIT` in the platform): the first look at the delete comes after it.
const TERM_WAIT: Duration = Duration::from_secs(2);

/// A configuration for a cluster of real `rucat` processes on the local platform.
fn config(health_timeout_ms: u64, trigger_timeout_ms: u64) -> String {
    format!(
        r#"
[monitor]
poll_interval_ms = 500
trigger_timeout_ms = {trigger_timeout_ms}
health_check_interval_ms = {HEALTH_INTERVAL_MS}
health_timeout_ms = {health_timeout_ms}
delete_timeout_ms = {DELETE_TIMEOUT_MS}
kill_timeout_ms = 60000
orphan_scan_interval_ms = 2000
[local]
master = "local[1]"
"#
    )
}

/// The engine's events, oldest first.
async fn history_of(cluster: &Cluster, id: &str) -> Vec<Value> {
    let body: Value = cluster
        .http
        .get(cluster.url(0, &format!("/engines/{id}/events")))
        .send()
        .await
        .expect("GET /engines/{id}/events")
        .json()
        .await
        .expect("JSON events");
    body["events"].as_array().expect("events").clone()
}

fn event_time(event: &Value) -> DateTime<Utc> {
    event["time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("an event without a time: {event}"))
}

fn actor_name(event: &Value) -> &str {
    event["actor"]["name"].as_str().unwrap_or_default()
}

/// Whether `event` was recorded by the monitor process `monitor` (its name is HOST-PID).
fn is_by(event: &Value, monitor: &Process) -> bool {
    let pid = monitor.pid().expect("the monitor runs");
    event["actor"]["kind"] == "monitor" && actor_name(event).ends_with(&format!("-{pid}"))
}

/// Waits until the engine is in one of `states`; returns that state.
async fn wait_for(cluster: &Cluster, id: &str, states: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let state = cluster.state(0, id).await;
        if let Some(state) = state.as_deref().filter(|s| states.contains(s)) {
            return state.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "engine {id} is {state:?}, not one of {states:?}, after {within:?}{}{}",
            cluster.history(id).await,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The engine's only Spark process (the JVM), once it is Running.
fn the_jvm(id: &str) -> i32 {
    let pids = spark_processes(id);
    assert_eq!(pids.len(), 1, "engine {id} has one Spark process: {pids:?}");
    pids[0]
}

/// The state letter of process `pid` (`T`: stopped), if it lives.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

async fn post(cluster: &Cluster, id: &str, op: &str) {
    let response = cluster
        .http
        .post(cluster.url(0, &format!("/engines/{id}/{op}")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {op}: {e}"));
    assert!(
        response.status().is_success(),
        "{op} of {id} answered {}",
        response.status()
    );
}

/// The first event into `state` (after `after` events), or a failure naming the history.
fn first_into<'a>(events: &'a [Value], state: &str, after: usize) -> &'a Value {
    events
        .iter()
        .skip(after)
        .find(|e| e["to"] == state)
        .unwrap_or_else(|| panic!("no event into {state}: {events:#?}"))
}

/// The event saying a delete was escalated to SIGKILL past the delete timeout.
fn kill_event(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("killing it"))
        })
        .unwrap_or_else(|| panic!("no forced kill in the history: {events:#?}"))
}

fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

/// 1. A Running engine whose Spark hangs (SIGSTOP: no answer to Spark Connect, SIGTERM left
///    pending) fails its health checks, goes to `ErrorWaitToClean` once they failed for the
///    health timeout, and is cleaned: its delete is escalated to SIGKILL past the delete
///    timeout, and nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_real_spark_engine_fails_its_health_checks_and_is_killed_and_cleaned() {
    let db = crate::common::scratch_postgres("hung").await;
    let config = config(HEALTH_TIMEOUT_MS, 20000);
    let mut cluster = Cluster::new(db.url(), "local", &config).with_spark(spark_home());
    cluster.add_server().await;
    cluster.add_monitor("");
    let id = cluster.create(0, "hung", VERSION).await;
    wait_for(&cluster, &id, &["Running"], SPARK_START).await;
    let jvm = the_jvm(&id);

    freeze(jvm);
    let hung_at = Utc::now();
    let health_timeout = Duration::from_millis(HEALTH_TIMEOUT_MS);
    let interval = Duration::from_millis(HEALTH_INTERVAL_MS);
    let failed_within = health_timeout + interval + MARGIN;
    wait_for(
        &cluster,
        &id,
        &[
            "ErrorWaitToClean",
            "ErrorTriggerClean",
            "ErrorCleanInProgress",
            "ErrorClean",
        ],
        failed_within,
    )
    .await;
    let delete_timeout = Duration::from_millis(DELETE_TIMEOUT_MS);
    wait_for(
        &cluster,
        &id,
        &["ErrorClean"],
        TERM_WAIT + delete_timeout + MARGIN,
    )
    .await;
    let cleaned_at = Utc::now();

    let events = history_of(&cluster, &id).await;
    let failed = first_into(&events, "ErrorWaitToClean", 0);
    let took = since(hung_at, event_time(failed));
    eprintln!(
        "hung engine failed {took:?} after SIGSTOP (health timeout {health_timeout:?}, interval \
         {interval:?}); ErrorClean {:?} after SIGSTOP",
        since(hung_at, cleaned_at)
    );
    assert!(
        took >= health_timeout,
        "failed before the health timeout: {took:?}"
    );
    assert!(took <= failed_within, "failed only after {took:?}");
    // The reason, in the failing event and on the engine.
    let reason = failed["message"].as_str().unwrap_or_default().to_owned();
    let engine = cluster.engine(0, &id).await;
    let error = engine["error"].as_str().unwrap_or_default();
    for text in [reason.as_str(), error] {
        assert!(
            text.contains("did not answer Spark Connect") && text.contains("health timeout"),
            "the error names the reason: {text:?}; {events:#?}"
        );
    }
    // The health checks failed before that, each an event.
    assert!(
        events.iter().any(|e| e["to"] == "Running"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("health check failed"))),
        "{events:#?}"
    );

    // The stopped JVM ignored the SIGTERM of the delete; past the delete timeout it was killed.
    let cleaning = first_into(&events, "ErrorCleanInProgress", 0);
    let kill = kill_event(&events);
    assert_eq!(kill["to"], "ErrorCleanInProgress", "{kill}");
    let waited = since(event_time(cleaning), event_time(kill));
    eprintln!("the hung engine's delete was forced {waited:?} after it began");
    assert!(
        waited >= delete_timeout,
        "forced before the delete timeout: {waited:?}"
    );
    assert_eq!(events.last().expect("events")["to"], "ErrorClean");
    assert!(
        spark_processes(&id).is_empty(),
        "no process of the engine is left: {:?}",
        spark_processes(&id)
    );
    assert_eq!(process_state(jvm), None, "the stopped JVM is gone");
}

/// 2. A user's stop of a Running engine whose Spark ignores SIGTERM: the delete is forced
///    (SIGKILL) past the delete timeout, and the engine is Terminated with no process left.
///
/// The next escalation, `ErrorClean` naming a process that even SIGKILL did not remove, cannot
/// be produced with a real process of our own (SIGKILL always ends it; only a process stuck in
/// the kernel would stay): the monitor's unit tests cover it with a platform that never lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_a_hung_real_spark_engine_kills_it_past_the_delete_timeout() {
    let db = crate::common::scratch_postgres("stuckstop").await;
    // Health checks must not fail the engine first: a long health timeout.
    let config = config(120_000, 20000);
    let mut cluster = Cluster::new(db.url(), "local", &config).with_spark(spark_home());
    cluster.add_server().await;
    cluster.add_monitor("");
    let id = cluster.create(0, "stuck-stop", VERSION).await;
    wait_for(&cluster, &id, &["Running"], SPARK_START).await;
    let jvm = the_jvm(&id);

    freeze(jvm);
    let before = history_of(&cluster, &id).await.len();
    let stopped_at = Utc::now();
    post(&cluster, &id, "stop").await;
    let delete_timeout = Duration::from_millis(DELETE_TIMEOUT_MS);
    let within = TERM_WAIT + delete_timeout + MARGIN;
    wait_for(&cluster, &id, &["Terminated"], within).await;
    eprintln!(
        "the hung engine was Terminated {:?} after its stop (delete timeout {delete_timeout:?})",
        since(stopped_at, Utc::now())
    );

    let events = history_of(&cluster, &id).await;
    let deleting = first_into(&events, "TerminateInProgress", before);
    let kill = kill_event(&events[before..]);
    assert_eq!(kill["to"], "TerminateInProgress", "{kill}");
    let waited = since(event_time(deleting), event_time(kill));
    assert!(
        waited >= delete_timeout,
        "forced before the delete timeout: {waited:?}"
    );
    assert_eq!(events.last().expect("events")["to"], "Terminated");
    assert!(
        cluster.engine(0, &id).await["error"].is_null(),
        "a stop that needed a kill is still a stop"
    );
    assert!(
        spark_processes(&id).is_empty(),
        "no process of the engine is left: {:?}",
        spark_processes(&id)
    );
    assert_eq!(process_state(jvm), None);
}

/// Kills, when dropped, whatever a failed test left running under `0`.
struct KillUnder(PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for pid in processes_matching(&self.0.to_string_lossy()) {
            // SAFETY: sending a signal by pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn engine_at(id: &EngineId, generation: u64) -> Engine {
    let now = Utc::now();
    Engine {
        id: id.clone(),
        name: EngineName::parse("fenced").expect("a valid engine name"),
        owner: "anonymous".to_owned(),
        engine_type: EngineType::Spark,
        version: VERSION.to_owned(),
        state: EngineState::StartInProgress,
        error: None,
        configs: BTreeMap::new(),
        endpoint: None,
        create_time: now,
        update_time: now,
        next_update_time: None,
        idle_timeout_minutes: 0,
        secret: Some(EngineSecret::generate()),
        generation,
        failures: 0,
        failing_since: None,
        pool: None,
        handover_secret: None,
    }
}

/// Waits until the platform serves the engine; its endpoint.
async fn serving(platform: &LocalPlatform, engine: &Engine) -> String {
    let deadline = Instant::now() + SPARK_START;
    loop {
        if let ResourceState::Running { endpoint } = platform.state(engine).await.expect("state") {
            if platform.probe(engine, &endpoint).await.is_ok() {
                return endpoint;
            }
        }
        assert!(
            Instant::now() < deadline,
            "engine {} does not serve after {SPARK_START:?}: {}",
            engine.id,
            platform
                .logs(&engine.id, 4000)
                .await
                .ok()
                .flatten()
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `process.json` of the engine: (pid, generation).
fn recorded(data: &Path, id: &EngineId) -> (i64, u64) {
    let path = data.join("engines").join(id.as_str()).join("process.json");
    let record: Value = serde_json::from_slice(&std::fs::read(&path).expect("process.json"))
        .expect("process.json is JSON");
    (
        record["pid"].as_i64().expect("pid"),
        record["generation"].as_u64().expect("generation"),
    )
}

/// Runs `SELECT 1` and a count on the engine itself, with its secret.
async fn query_engine(engine: &Engine, endpoint: &str) {
    let secret = engine.secret.as_ref().expect("a secret").expose();
    query(&with_parameter(endpoint, &format!("token={secret}"))).await;
}

/// 3a. Fencing on the local platform, deterministic: two platforms on one data directory, as
///     two monitor processes have. A starts generation 1; B stops it (generation 2) and starts
///     the engine again (generation 3); then A's deletes for generations 1 and 2 (plain and
///     forced) arrive late. B's Spark is untouched and still answers queries; A's stale create
///     starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_delete_spares_the_next_real_spark_incarnation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _cleanup = KillUnder(dir.path().to_owned());
    let data = dir.path().join("data");
    let platform =
        || LocalPlatform::new(spark_home(), data.clone(), "local[1]".to_owned()).expect("platform");
    let (a, b) = (platform(), platform());
    let id = EngineId::generate();

    let first = engine_at(&id, 1);
    a.create(&first).await.expect("A starts generation 1");
    serving(&a, &first).await;
    let old_jvm = the_jvm(id.as_str());

    // B stops it (its claim for the stop is generation 2)…
    let stop = engine_at(&id, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.state(&stop).await.expect("state") != ResourceState::Gone {
        b.delete(&id, 2, Instant::now() > deadline - Duration::from_secs(30))
            .await
            .expect("B deletes generation 2");
        assert!(Instant::now() < deadline, "generation 1 does not go");
    }
    assert!(spark_processes(id.as_str()).is_empty());
    // …and starts it again, as generation 3.
    let next = engine_at(&id, 3);
    b.create(&next).await.expect("B starts generation 3");
    let endpoint = serving(&b, &next).await;
    let jvm = the_jvm(id.as_str());
    assert_ne!(jvm, old_jvm);
    assert_eq!(recorded(&data, &id), (i64::from(jvm), 3));

    // A's late deletes: each generation up to 2, plain and forced.
    for generation in [1, 2] {
        for force in [false, true] {
            let asked = Instant::now();
            a.delete(&id, generation, force)
                .await
                .unwrap_or_else(|e| panic!("A's delete({generation}, {force}): {e}"));
            eprintln!(
                "A's late delete of generation {generation} (force {force}) took {:?}",
                asked.elapsed()
            );
            // What A sees of its generation: nothing (a later start is none of its business).
            let stale = engine_at(&id, generation);
            assert_eq!(a.state(&stale).await.expect("state"), ResourceState::Gone);
        }
    }
    // A's late create of generation 2 starts nothing either.
    let refused = a.create(&engine_at(&id, 2)).await;
    assert!(refused.is_err(), "a stale create is refused");
    assert_eq!(spark_processes(id.as_str()), vec![jvm]);
    assert_eq!(
        recorded(&data, &id),
        (i64::from(jvm), 3),
        "B's record is untouched"
    );
    assert_eq!(
        b.state(&next).await.expect("state"),
        ResourceState::Running {
            endpoint: endpoint.clone()
        }
    );
    b.probe(&next, &endpoint)
        .await
        .expect("Spark Connect answers");
    query_engine(&next, &endpoint).await;

    // The current generation's forced delete does remove it.
    b.delete(&id, 3, true).await.expect("delete generation 3");
    assert_eq!(b.state(&next).await.expect("state"), ResourceState::Gone);
    assert!(spark_processes(id.as_str()).is_empty());
}

/// 3b. Fencing with two real monitors: A holds the stop of an engine whose Spark hangs, and is
///     frozen (SIGSTOP); B takes the stop over (forced past the delete timeout), and starts the
///     engine again when the user restarts it. A, thawed, changes nothing: the engine stays
///     Running in B's generation, its new Spark alive and answering, and A records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_monitor_thawed_after_a_restart_leaves_the_new_real_spark_engine_alone() {
    const TRIGGER_TIMEOUT_MS: u64 = 6000;
    let db = crate::common::scratch_postgres("fenced").await;
    let store = rucat::store::postgres::PostgresStore::open(
        db.url(),
        &rucat::store::StoreOptions {
            push_wake_ups: false,
            ..Default::default()
        },
    )
    .await
    .expect("open the store");
    // A long health timeout: the hung engine must not be failed while A holds its stop.
    let config = config(120_000, TRIGGER_TIMEOUT_MS);
    let mut cluster = Cluster::new(db.url(), "local", &config).with_spark(spark_home());
    let proxy_process = cluster.start_proxy().await;
    let proxy = proxy_process.addr.expect("the proxy's address");
    cluster.add_server().await;
    // Only A runs until it is frozen, so that A is the one that holds the stop.
    let a = cluster.add_monitor("");
    let id = cluster.create(0, "fenced", VERSION).await;
    let engine_id = EngineId::parse(&id).expect("an engine id");
    wait_for(&cluster, &id, &["Running"], SPARK_START).await;
    let old_jvm = the_jvm(&id);

    // Spark hangs, so that the stop's delete cannot finish; the user stops the engine.
    freeze(old_jvm);
    post(&cluster, &id, "stop").await;
    let holding = ["TriggerTermination", "TerminateInProgress"];
    let deadline = Instant::now() + MARGIN;
    loop {
        let events = history_of(&cluster, &id).await;
        let last = events.last().expect("events");
        if holding.iter().any(|s| last["to"] == *s) && is_by(last, &cluster.monitors[a]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A does not hold the stop: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Frozen outside the engine's lock: the platform takes it only for short steps, and a
    // process frozen inside one would hold up every other until it thaws (B's delete would
    // wait for the lock, fail and be retried).
    let a_pid = cluster.monitors[a].pid().expect("A runs");
    let lock = cluster.data_dir().join("engines").join(&id).join("lock");
    let mut tries = 0;
    loop {
        freeze(a_pid as i32);
        if !holds_flock(a_pid, &lock) {
            break;
        }
        tries += 1;
        assert!(tries < 200, "A always holds the engine's lock");
        cluster.monitors[a].resume();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frozen = history_of(&cluster, &id).await;
    let held = frozen.last().expect("events");
    assert!(
        holding.iter().any(|s| held["to"] == *s) && is_by(held, &cluster.monitors[a]),
        "A still holds the stop when frozen: {frozen:#?}"
    );
    let held_generation = store
        .get(&engine_id)
        .await
        .expect("read")
        .expect("engine")
        .generation;
    eprintln!(
        "monitor A frozen holding {} (generation {held_generation}; {tries} retries to freeze it outside the lock)",
        held["to"]
    );

    // B finishes the stop: the hung Spark is killed past the delete timeout.
    let b = cluster.add_monitor("");
    let stopped_at = Instant::now();
    let within = Duration::from_millis(TRIGGER_TIMEOUT_MS + DELETE_TIMEOUT_MS) + TERM_WAIT + MARGIN;
    wait_for(&cluster, &id, &["Terminated"], within).await;
    eprintln!(
        "B terminated the engine {:?} after it started",
        stopped_at.elapsed()
    );
    let events = history_of(&cluster, &id).await;
    let after_freeze = &events[frozen.len()..];
    assert!(
        after_freeze.iter().all(|e| is_by(e, &cluster.monitors[b])),
        "only B acted while A was frozen: {after_freeze:#?}"
    );
    let kill = kill_event(after_freeze);
    assert!(is_by(kill, &cluster.monitors[b]), "{kill}");
    assert!(spark_processes(&id).is_empty(), "the hung Spark is gone");

    // The user restarts the engine; B starts it.
    post(&cluster, &id, "restart").await;
    wait_for(&cluster, &id, &["Running"], SPARK_START).await;
    let jvm = the_jvm(&id);
    assert_ne!(jvm, old_jvm);
    let endpoint = cluster.engine(0, &id).await["endpoint"]
        .as_str()
        .expect("an endpoint")
        .to_owned();
    assert!(endpoint.starts_with(&format!("sc://localhost:{}/", proxy.port())));
    query(&endpoint).await;
    let generation = store
        .get(&engine_id)
        .await
        .expect("read")
        .expect("engine")
        .generation;
    assert!(generation > held_generation);
    let events = history_of(&cluster, &id).await;
    let started = first_into(&events, "StartInProgress", frozen.len());
    assert!(
        is_by(started, &cluster.monitors[b]),
        "B started it: {started}"
    );

    // A thaws, in the middle of its stop of an earlier generation.
    let before_thaw = events.len();
    let a_log_before = cluster.monitors[a].log().len();
    cluster.monitors[a].resume();
    tokio::time::sleep(Duration::from_millis(HEALTH_INTERVAL_MS * 6)).await;
    assert!(cluster.monitors[a].exited().is_none(), "A runs on");

    assert_eq!(cluster.state(0, &id).await.as_deref(), Some("Running"));
    let now = store.get(&engine_id).await.expect("read").expect("engine");
    assert_eq!(
        (now.state, now.generation),
        (EngineState::Running, generation),
        "the engine stays Running in B's generation"
    );
    assert_eq!(
        spark_processes(&id),
        vec![jvm],
        "B's Spark is the one alive"
    );
    assert!(matches!(process_state(jvm), Some('S' | 'R')));
    query(&endpoint).await;
    let events = history_of(&cluster, &id).await;
    let after_thaw = &events[before_thaw..];
    assert!(
        !after_thaw.iter().any(|e| is_by(e, &cluster.monitors[a])),
        "A recorded nothing after it thawed: {after_thaw:#?}"
    );
    eprintln!(
        "{} events after A thawed, none A's; the engine is Running in generation {generation}",
        after_thaw.len()
    );
    // A did wake up to its stop, and left the engine alone.
    let a_log = cluster.monitors[a].log();
    let woke: Vec<&str> = a_log[a_log_before..]
        .lines()
        .filter(|line| line.contains(&id))
        .collect();
    eprintln!("A after it thawed:\n{}", woke.join("\n"));
    if held["to"] == "TriggerTermination" {
        // Its claim's step went on after the thaw, to a write the store refused.
        assert!(!woke.is_empty(), "A never went on with its stop");
    }

    // Stopped for good; nothing is left.
    post(&cluster, &id, "stop").await;
    wait_for(&cluster, &id, &["Terminated"], MARGIN).await;
    assert!(spark_processes(&id).is_empty());
    store.close().await;
}
