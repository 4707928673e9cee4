//! The monitor against the in-memory platform double and a real SQLite store, with faults
//! injected: creation fails, a resource dies, a monitor dies mid-claim, several monitors race.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    assert_delete_escalated, assert_failed_after_health_timeout, engine_events, run, spawn_api,
    stop_monitor, until, TestApp, VERSION,
};
use crate::hooked_store::HookedStore;
use rucat::engine::{EngineId, EngineState};
use rucat::monitor::{Monitor, MonitorConfig};
use rucat::platform::memory::MemoryPlatform;
use rucat::platform::Platform;

fn fast_config() -> MonitorConfig {
    MonitorConfig {
        poll_interval: Duration::from_millis(50),
        trigger_timeout: Duration::from_millis(300),
        start_check_interval: Duration::from_millis(1),
        health_check_interval: Duration::from_millis(1),
        ..MonitorConfig::default()
    }
}

async fn setup(config: MonitorConfig) -> (TestApp, MemoryPlatform, Monitor) {
    let platform = MemoryPlatform::new();
    let app = spawn_api(Some(Arc::new(platform.clone()) as Arc<dyn Platform>)).await;
    let monitor = Monitor::new(app.store.clone(), Arc::new(platform.clone()), config);
    (app, platform, monitor)
}

async fn create(app: &TestApp, name: &str) -> String {
    app.client
        .create(name, VERSION, &Default::default())
        .await
        .expect("create")
}

async fn state(app: &TestApp, id: &str) -> EngineState {
    app.client.get(id).await.expect("get").state
}

/// Runs passes until the engine is in `wanted` (at most `passes` of them).
async fn drive_until(app: &TestApp, monitor: &Monitor, id: &str, wanted: EngineState) {
    for _ in 0..200 {
        if state(app, id).await == wanted {
            return;
        }
        monitor.pass().await.expect("pass");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "engine {id} never reached {wanted}; it is {}",
        state(app, id).await
    );
}

fn eid(id: &str) -> EngineId {
    EngineId::parse(id).expect("engine id")
}

#[tokio::test]
async fn engine_runs_stops_restarts_and_is_deleted() {
    let (app, platform, monitor) = setup(fast_config()).await;
    platform.set_polls_until_ready(2);
    let id = create(&app, "life").await;

    drive_until(&app, &monitor, &id, EngineState::Running).await;
    let engine = app.client.get(&id).await.expect("get");
    assert_eq!(
        engine.endpoint,
        Some(format!("sc://localhost:15002/;x-rucat-engine={id}")),
        "users see the proxy's address"
    );
    let stored = app
        .store
        .get(&eid(&id))
        .await
        .expect("get")
        .expect("engine");
    assert_eq!(stored.endpoint, Some(MemoryPlatform::endpoint(&eid(&id))));
    assert!(stored.secret.is_some(), "every start has a secret");
    assert_eq!(platform.creates(), vec![eid(&id)]);
    assert_eq!(app.client.logs(&id).await.expect("logs").source, "live");

    app.client.stop(&id).await.expect("stop");
    drive_until(&app, &monitor, &id, EngineState::Terminated).await;
    assert!(!platform.exists(&eid(&id)));
    assert_eq!(platform.deletes(), vec![eid(&id)]);
    let engine = app.client.get(&id).await.expect("get");
    assert_eq!(engine.endpoint, None);
    let logs = app.client.logs(&id).await.expect("logs");
    assert_eq!(logs.source, "kept");
    assert!(logs.log.contains(&id), "{}", logs.log);

    app.client.restart(&id).await.expect("restart");
    drive_until(&app, &monitor, &id, EngineState::Running).await;
    assert_eq!(platform.creates().len(), 2);

    app.client.stop(&id).await.expect("stop");
    drive_until(&app, &monitor, &id, EngineState::Terminated).await;
    app.client.delete(&id).await.expect("delete");
    match app.client.get(&id).await {
        Err(rucat_client::ClientError::Api { status, code, .. }) => {
            assert_eq!((status.as_u16(), code.as_str()), (404, "not_found"));
        }
        other => panic!("a deleted engine was answered {other:?}"),
    }

    let path: Vec<EngineState> = {
        // The history of a deleted engine is gone with it; check a fresh engine's instead.
        let id = create(&app, "path").await;
        drive_until(&app, &monitor, &id, EngineState::Running).await;
        app.client
            .events(&id)
            .await
            .expect("events")
            .iter()
            .map(|e| e.to)
            .collect()
    };
    assert_eq!(
        path,
        vec![
            EngineState::WaitToStart,
            EngineState::TriggerStart,
            EngineState::StartInProgress,
            EngineState::Running
        ]
    );
}

#[tokio::test]
async fn failed_creation_ends_in_error_clean_with_the_message() {
    let (app, platform, monitor) = setup(fast_config()).await;
    platform.fail_creates(Some("quota exceeded"));
    let id = create(&app, "doomed").await;
    drive_until(&app, &monitor, &id, EngineState::ErrorClean).await;
    let engine = app.client.get(&id).await.expect("get");
    assert!(
        engine
            .error
            .as_deref()
            .is_some_and(|e| e.contains("quota exceeded")),
        "{engine:?}"
    );
    assert!(!platform.exists(&eid(&id)));
    app.client
        .delete(&id)
        .await
        .expect("an ErrorClean engine can be deleted");
}

#[tokio::test]
async fn resource_dying_while_running_is_cleaned_with_the_message() {
    let (app, platform, monitor) = setup(fast_config()).await;
    let id = create(&app, "fragile").await;
    drive_until(&app, &monitor, &id, EngineState::Running).await;

    platform.kill(&eid(&id), "OutOfMemoryError: Java heap space");
    drive_until(&app, &monitor, &id, EngineState::ErrorClean).await;
    let engine = app.client.get(&id).await.expect("get");
    assert!(engine
        .error
        .as_deref()
        .is_some_and(|e| e.contains("OutOfMemoryError")));
    assert_eq!(engine.endpoint, None);
    assert!(!platform.exists(&eid(&id)), "the dead resource was cleaned");
    assert_eq!(app.client.logs(&id).await.expect("logs").source, "kept");
    let path: Vec<_> = app
        .client
        .events(&id)
        .await
        .expect("events")
        .iter()
        .map(|e| e.to)
        .collect();
    assert_eq!(
        &path[path.len() - 4..],
        &[
            EngineState::ErrorWaitToClean,
            EngineState::ErrorTriggerClean,
            EngineState::ErrorCleanInProgress,
            EngineState::ErrorClean
        ]
    );
}

#[tokio::test]
async fn a_monitor_that_dies_after_claiming_is_taken_over_after_the_trigger_timeout() {
    let (app, platform, monitor) = setup(fast_config()).await;
    platform.hang_creates(true);
    let id = create(&app, "orphaned-claim").await;

    // The first monitor claims the engine, then dies while creating it.
    let dying = tokio::spawn({
        let monitor = monitor.clone();
        async move { monitor.pass().await }
    });
    for _ in 0..100 {
        if state(&app, &id).await == EngineState::TriggerStart {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state(&app, &id).await, EngineState::TriggerStart);
    dying.abort();
    platform.hang_creates(false);

    // Another monitor leaves the claim alone until it times out...
    let other = Monitor::new(app.store.clone(), Arc::new(platform.clone()), fast_config());
    other.pass().await.expect("pass");
    assert_eq!(state(&app, &id).await, EngineState::TriggerStart);
    assert!(platform.creates().is_empty());

    // ...then, once the claim is older than the trigger timeout, takes the work over and
    // completes it, creating the resource once.
    let claimed = app.client.get(&id).await.expect("get").update_time;
    until(
        Duration::from_secs(10),
        "the claim times out",
        || async move { chrono::Utc::now() - claimed > chrono::Duration::milliseconds(300) },
    )
    .await;
    drive_until(&app, &other, &id, EngineState::Running).await;
    assert_eq!(platform.creates(), vec![eid(&id)]);
    let events = app.client.events(&id).await.expect("events");
    assert!(events
        .iter()
        .any(|e| e.from == Some(EngineState::TriggerStart) && e.to == EngineState::WaitToStart));
}

#[tokio::test]
async fn an_engine_that_never_serves_fails_after_the_start_timeout() {
    let config = MonitorConfig {
        start_timeout: Duration::from_millis(100),
        ..fast_config()
    };
    let (app, platform, monitor) = setup(config).await;
    platform.set_polls_until_ready(u32::MAX);
    let id = create(&app, "slow").await;
    drive_until(&app, &monitor, &id, EngineState::ErrorClean).await;
    let engine = app.client.get(&id).await.expect("get");
    assert!(engine
        .error
        .as_deref()
        .is_some_and(|e| e.contains("start timeout")));
    assert!(!platform.exists(&eid(&id)));
}

#[tokio::test]
async fn several_monitors_create_each_resource_once() {
    let (app, platform, _) = setup(fast_config()).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(create(&app, &format!("e{i}")).await);
    }
    let monitors: Vec<Monitor> = (0..4)
        .map(|_| Monitor::new(app.store.clone(), Arc::new(platform.clone()), fast_config()))
        .collect();
    for _ in 0..50 {
        let passes: Vec<_> = monitors
            .iter()
            .map(|m| {
                let m = m.clone();
                tokio::spawn(async move { m.pass().await })
            })
            .collect();
        for pass in passes {
            pass.await.expect("join").expect("pass");
        }
        let page = app
            .client
            .list(Some(EngineState::Running), Some(100), None)
            .await
            .expect("list");
        if page.engines.len() == ids.len() {
            break;
        }
    }
    let mut creates = platform.creates();
    assert_eq!(creates.len(), ids.len(), "one creation per engine");
    creates.sort();
    creates.dedup();
    assert_eq!(creates.len(), ids.len());
    for id in &ids {
        assert_eq!(state(&app, id).await, EngineState::Running);
    }
}

#[tokio::test]
async fn a_new_request_and_its_start_checks_are_acted_on_at_once_not_at_the_next_poll() {
    let config = MonitorConfig {
        poll_interval: Duration::from_secs(3600),
        start_check_interval: Duration::from_millis(100),
        ..fast_config()
    };
    let (app, platform, _) = setup(config.clone()).await;
    let store = Arc::new(HookedStore::new(app.store.clone()));
    let monitor = Monitor::new(store.clone(), Arc::new(platform.clone()), config);
    // Starting checks are rescheduled at the start-check interval, not the poll interval.
    platform.set_polls_until_ready(3);
    let (trigger, shutdown) = rucat::shutdown::channel();
    let mut due_reads = store.due_reads.subscribe();
    let running = tokio::spawn(monitor.run(shutdown));
    // The monitor's first pass has read its (empty) due list: it is idle now, until a wake-up
    // or the hour-long poll. Only a wake-up can make it see the engine.
    due_reads
        .wait_for(|n| *n >= 1)
        .await
        .expect("the monitor reads the due engines");
    assert!(platform.creates().is_empty());

    let id = create(&app, "pushed").await;
    let engine = app
        .client
        .wait(&id, EngineState::Running, Duration::from_secs(20), |_| {})
        .await
        .expect("running long before the hour-long poll interval");
    assert!(engine.endpoint.is_some());

    trigger.fire();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("monitor stops on shutdown")
        .expect("join");
}

/// Every engine's own re-check is a wake-up. Before, the monitor kept only the earliest one: a
/// later engine's re-check, asked for meanwhile, was lost, and the last engines to start waited
/// for the next poll (here an hour).
#[tokio::test]
async fn every_engines_start_checks_wake_the_monitor_not_just_the_earliest() {
    let config = MonitorConfig {
        poll_interval: Duration::from_secs(3600),
        start_check_interval: Duration::from_millis(100),
        ..fast_config()
    };
    let (app, platform, monitor) = setup(config).await;
    platform.set_polls_until_ready(3);
    let (trigger, shutdown) = rucat::shutdown::channel();
    let running = tokio::spawn(monitor.run(shutdown));
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(create(&app, &format!("staggered-{n}")).await);
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    for id in &ids {
        app.client
            .wait(id, EngineState::Running, Duration::from_secs(20), |_| {})
            .await
            .expect("running long before the hour-long poll interval");
    }
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("monitor stops on shutdown")
        .expect("join");
}

#[tokio::test]
async fn orphans_are_cleaned() {
    let (app, platform, monitor) = setup(fast_config()).await;
    // A resource whose engine is gone.
    let ghost = EngineId::generate();
    platform.plant(&ghost);
    // A resource running for an engine the store says is terminated.
    let settled = app.plant(EngineState::Terminated).await;
    platform.plant(&settled.id);
    // A resource of a live engine stays.
    let live = app.plant(EngineState::Running).await;
    platform.plant(&live.id);

    assert_eq!(monitor.clean_orphans().await.expect("clean"), 2);
    assert!(!platform.exists(&ghost));
    assert!(!platform.exists(&settled.id));
    assert!(platform.exists(&live.id));
}

// ---------------------------------------------------------------------------------------------
// Convergence: back-off, delete deadlines, health, and the items fixed with fencing.

async fn stored(app: &TestApp, id: &str) -> rucat::engine::Engine {
    app.store.get(&eid(id)).await.expect("get").expect("engine")
}

/// The most attempts a step failing for `window` can make when the wait after the n-th
/// failure is `initial` doubled n times up to `max`, each shortened by at most a quarter
/// (the jitter): attempts k and k+1 are at least 3/4 of the k-th wait apart.
fn most_attempts(initial: Duration, max: Duration, window: Duration) -> u32 {
    let mut attempts = 1;
    let mut elapsed = Duration::ZERO;
    let mut wait = initial;
    loop {
        elapsed += wait * 3 / 4;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
        wait = (wait * 2).min(max);
    }
}

/// Item 1. 280 engines whose state cannot be read (their start checks fail) and 20 whose
/// creates are refused (and so is the removal of what they left, so the start step fails and
/// is retried rather than the engine failed; a create that fails cleanly fails the engine, see
/// `failed_creation_ends_in_error_clean_with_the_message`), beside 10 healthy engines, under
/// one running monitor reading at most 64 due engines per pass.
///
/// Before the back-off, a failed step left the engine due as it was: it was tried again at
/// every pass (a platform call per pass and per failing engine, unbounded), and, read soonest
/// due first, the 300 failing engines filled every pass's batch of 64 so that healthy engines
/// created after them were never read. And a failure was only a log line, no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_engines_back_off_without_starving_healthy_ones_and_each_failure_is_an_event() {
    // The defaults' first wait, a shorter cap: over the window, at most three attempts apart
    // from the first, where retrying at every pass makes several times as many.
    let (retry_initial, retry_max) = (Duration::from_secs(1), Duration::from_secs(4));
    let config = MonitorConfig {
        poll_interval: Duration::from_millis(100),
        // Failed steps come back on their back-off, never on a claim's timeout.
        trigger_timeout: Duration::from_secs(60),
        start_check_interval: Duration::from_millis(10),
        health_check_interval: Duration::from_secs(60),
        retry_initial,
        retry_max,
        batch: 64,
        orphan_scan_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let (app, platform, monitor) = setup(config).await;
    const UNREADABLE: &str = "the API cannot read the pod: etcdserver: request timed out";
    const REFUSED: &str = "admission webhook \"quota.example.com\" denied the request";
    platform.fail_state_named("unreadable-", UNREADABLE);
    platform.refuse_named("refused-", REFUSED);
    let mut unreadable = Vec::new();
    let mut refused = Vec::new();
    for i in 0..280 {
        unreadable.push(create(&app, &format!("unreadable-{i}")).await);
        if i % 14 == 0 {
            refused.push(create(&app, &format!("refused-{i}")).await);
        }
    }
    assert_eq!((unreadable.len(), refused.len()), (280, 20));
    let failing: Vec<&String> = unreadable.iter().chain(&refused).collect();

    let started = std::time::Instant::now();
    let running = run(monitor);
    // Every failing engine has failed once, and waits for its retry; then the healthy ones
    // come.
    until(
        Duration::from_secs(20),
        "every failing engine tried",
        || async { failing.iter().all(|id| platform.calls(&eid(id)) >= 2) },
    )
    .await;
    let mut healthy = Vec::new();
    for i in 0..10 {
        healthy.push(create(&app, &format!("healthy-{i}")).await);
    }
    until(
        Duration::from_secs(20),
        "healthy engines running",
        || async {
            for id in &healthy {
                if state(&app, id).await != EngineState::Running {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // A window long enough for the waits to double a few times.
    let window = Duration::from_secs(5);
    if let Some(rest) = window.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop_monitor(running).await;
    let elapsed = started.elapsed();

    // Start checks that fail: one create, then one state read per attempt, the attempts
    // spaced by the doubling waits (give or take the store's milliseconds).
    let bound = 1 + most_attempts(
        retry_initial,
        retry_max,
        elapsed + Duration::from_millis(10),
    );
    let most = |ids: &[String]| ids.iter().map(|id| platform.calls(&eid(id))).max();
    eprintln!(
        "in {elapsed:?}: at most {:?} calls per unreadable engine (bound {bound}), {:?} per refused one",
        most(&unreadable),
        most(&refused)
    );
    for id in &unreadable {
        let calls = platform.calls(&eid(id));
        assert!(
            calls <= bound,
            "engine {id}: {calls} platform calls in {elapsed:?}, at most {bound} with back-off"
        );
    }
    // A start whose create and clean-up are refused: two calls per attempt. Each attempt
    // claims the engine anew, and the claim keeps its count of failures, so these attempts
    // too are spaced by the doubling waits.
    for id in &refused {
        let calls = platform.calls(&eid(id));
        assert!(
            calls <= 2 * bound,
            "engine {id}: {calls} platform calls in {elapsed:?}, at most {} with back-off",
            2 * bound
        );
    }

    // Each failure is an event with its message, in the state it happened in.
    for (ids, message, state) in [
        (&unreadable, UNREADABLE, EngineState::StartInProgress),
        (&refused, REFUSED, EngineState::TriggerStart),
    ] {
        for id in ids {
            let events = engine_events(&app, id).await;
            let failures: Vec<_> = events
                .iter()
                .filter(|e| e.message.as_deref().is_some_and(|m| m.contains(message)))
                .collect();
            assert!(
                !failures.is_empty(),
                "engine {id}: no failure event: {events:?}"
            );
            for failure in failures {
                assert_eq!((failure.from, failure.to), (Some(state), state));
                let text = failure.message.as_deref().unwrap_or_default();
                assert!(text.contains("trying again in"), "{text}");
            }
        }
    }
    for id in &unreadable {
        assert_eq!(state(&app, id).await, EngineState::StartInProgress);
    }
}

/// Item 2 (b). A resource that will not go, even killed: after `delete_timeout` the delete is
/// forced, after `kill_timeout` more the engine is `ErrorClean` with a message naming the
/// resource; the orphan scan keeps at it and removes it once it can.
///
/// Before the deadlines, such an engine stayed in `TerminateInProgress` for ever, its delete
/// asked again every check, never forced.
#[tokio::test]
async fn a_delete_that_never_finishes_is_forced_then_fails_naming_the_resource() {
    let (delete_timeout, kill_timeout) = (Duration::from_millis(400), Duration::from_millis(400));
    let check = Duration::from_millis(20);
    let config = MonitorConfig {
        start_check_interval: check,
        health_check_interval: Duration::from_secs(60),
        delete_timeout,
        kill_timeout,
        orphan_scan_interval: Duration::from_millis(100),
        ..fast_config()
    };
    let (app, platform, monitor) = setup(config).await;
    let running = run(monitor);
    let id = create(&app, "sticky").await;
    app.client
        .wait(&id, EngineState::Running, Duration::from_secs(10), |_| {})
        .await
        .expect("running");

    platform.stuck_deletes(true);
    app.client.stop(&id).await.expect("stop");
    until(Duration::from_secs(10), "ErrorClean", || async {
        state(&app, &id).await == EngineState::ErrorClean
    })
    .await;
    assert!(platform.exists(&eid(&id)), "still there");
    assert!(
        platform.forced().contains(&eid(&id)),
        "the delete was forced"
    );

    let events = engine_events(&app, &id).await;
    assert_delete_escalated(&events, delete_timeout, kill_timeout, check);
    let error = app
        .client
        .get(&id)
        .await
        .expect("get")
        .error
        .unwrap_or_default();
    assert!(
        error.contains(&format!("the resource of engine {id}")) && error.contains("orphan scan"),
        "{error}"
    );

    // The orphan scan keeps forcing it, and it goes once it can.
    let forced = |platform: &MemoryPlatform| {
        platform
            .forced()
            .iter()
            .filter(|f| f.as_str() == id)
            .count()
    };
    let before = forced(&platform);
    until(
        Duration::from_secs(10),
        "the orphan scan forces it again",
        || async { forced(&platform) > before },
    )
    .await;
    platform.stuck_deletes(false);
    until(
        Duration::from_secs(10),
        "the orphan scan removes it",
        || async { !platform.exists(&eid(&id)) },
    )
    .await;
    assert_eq!(state(&app, &id).await, EngineState::ErrorClean);
    stop_monitor(running).await;
}

/// Item 4. A Running engine whose Spark Connect stops answering (its resource alive) fails
/// once its checks have failed for `health_timeout`, with the reason, and is cleaned.
///
/// Before health checks, Running was kept as long as the resource looked alive: a hung engine
/// stayed Running for ever.
#[tokio::test]
async fn a_hung_engine_fails_after_the_health_timeout_and_is_cleaned() {
    let (interval, timeout) = (Duration::from_millis(100), Duration::from_millis(600));
    let config = MonitorConfig {
        health_check_interval: interval,
        health_timeout: timeout,
        ..fast_config()
    };
    let (app, platform, monitor) = setup(config).await;
    let running = run(monitor);
    let id = create(&app, "hangs").await;
    app.client
        .wait(&id, EngineState::Running, Duration::from_secs(10), |_| {})
        .await
        .expect("running");

    platform.set_unhealthy(&eid(&id), true);
    until(Duration::from_secs(10), "the engine fails", || async {
        state(&app, &id).await != EngineState::Running
    })
    .await;
    let engine = app
        .client
        .wait(
            &id,
            EngineState::ErrorClean,
            Duration::from_secs(10),
            |_| {},
        )
        .await
        .expect("cleaned");
    let error = engine.error.unwrap_or_default();
    assert!(
        error.contains("did not answer Spark Connect") && error.contains("a hung engine"),
        "{error}"
    );
    assert!(!platform.exists(&eid(&id)), "its resource is gone");

    let events = engine_events(&app, &id).await;
    assert_failed_after_health_timeout(&events, timeout, interval);
    stop_monitor(running).await;
}

/// Item 5. STOP while starting, then RESTART before any monitor acted on the stop: the
/// engine is Running again (the stop cancelled) without ever having had an endpoint; the
/// monitor gives it its endpoint once it serves.
///
/// Before, a Running engine's checks only rescheduled it: it stayed Running with no endpoint,
/// and no client could reach it.
#[tokio::test]
async fn a_stop_cancelled_while_starting_ends_running_with_its_endpoint() {
    let (app, platform, monitor) = setup(fast_config()).await;
    platform.set_polls_until_ready(5);
    let id = create(&app, "indecisive").await;
    drive_until(&app, &monitor, &id, EngineState::StartInProgress).await;

    app.client.stop(&id).await.expect("stop");
    let restarted = app.client.restart(&id).await.expect("restart");
    assert_eq!(restarted.state, EngineState::Running);
    assert_eq!(stored(&app, &id).await.endpoint, None, "never had one");

    for _ in 0..200 {
        if stored(&app, &id).await.endpoint.is_some() {
            break;
        }
        monitor.pass().await.expect("pass");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        stored(&app, &id).await.endpoint,
        Some(MemoryPlatform::endpoint(&eid(&id)))
    );
    let engine = app.client.get(&id).await.expect("get");
    assert_eq!(engine.state, EngineState::Running);
    assert_eq!(
        engine.endpoint,
        Some(format!("sc://localhost:15002/;x-rucat-engine={id}"))
    );
    assert_eq!(platform.creates(), vec![eid(&id)], "the same resource");
}

/// Item 6. An orphan scan whose platform listing never returns holds up nothing.
///
/// Before, the scan ran inside the monitor's loop, before each dispatch: a hung listing
/// stopped the monitor, and no engine was driven any more.
#[tokio::test]
async fn a_hung_orphan_scan_does_not_hold_up_engines() {
    let config = MonitorConfig {
        orphan_scan_interval: Duration::from_millis(10),
        ..fast_config()
    };
    let (app, platform, monitor) = setup(config).await;
    platform.hang_resources(true);
    let running = run(monitor);
    let id = create(&app, "unhindered").await;
    app.client
        .wait(&id, EngineState::Running, Duration::from_secs(10), |_| {})
        .await
        .expect("running while the orphan scan hangs");
    app.client.stop(&id).await.expect("stop");
    app.client
        .wait(
            &id,
            EngineState::Terminated,
            Duration::from_secs(10),
            |_| {},
        )
        .await
        .expect("stopped while the orphan scan hangs");
    // And the hung scan does not keep the monitor from stopping.
    stop_monitor(running).await;
}

/// Item 7. While the driver log cannot be kept (the store fails to save it), the resource is
/// not deleted: the step fails, as an event, and is retried; once the store keeps logs again
/// the engine is deleted with its log kept.
///
/// Before, a log that could not be saved was only warned about and the resource deleted
/// anyway, its log lost. And (until the failure was recorded against the claimed engine) the
/// failure was no event, and was retried only once the claim timed out.
#[tokio::test]
async fn a_driver_log_that_cannot_be_kept_holds_the_delete_until_it_can() {
    let config = MonitorConfig {
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(40),
        // Retries come from the back-off, not from a timed-out claim.
        trigger_timeout: Duration::from_secs(60),
        ..fast_config()
    };
    let (app, platform, _) = setup(config.clone()).await;
    let store = Arc::new(HookedStore::new(app.store.clone()));
    let monitor = Monitor::new(store.clone(), Arc::new(platform.clone()), config);
    let id = create(&app, "chatty").await;
    drive_until(&app, &monitor, &id, EngineState::Running).await;

    store
        .refuse_logs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    app.client.stop(&id).await.expect("stop");
    let failures = |events: &[rucat::engine::EngineEvent]| {
        events
            .iter()
            .filter(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("disk I/O error while keeping the log"))
            })
            .count()
    };
    let mut seen = 0;
    for _ in 0..500 {
        monitor.pass().await.expect("pass");
        seen = failures(&engine_events(&app, &id).await);
        if seen >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        seen >= 3,
        "the failure is an event, each time it is retried"
    );
    assert!(platform.exists(&eid(&id)), "nothing deleted unkept");
    assert!(platform.deletes().is_empty());
    let engine = stored(&app, &id).await;
    assert!(
        matches!(
            engine.state,
            EngineState::WaitToTerminate | EngineState::TriggerTermination
        ),
        "{engine:?}"
    );
    let failure = engine_events(&app, &id)
        .await
        .into_iter()
        .find(|e| failures(std::slice::from_ref(e)) == 1)
        .expect("a failure event");
    assert_eq!(
        (failure.from, failure.to),
        (
            Some(EngineState::TriggerTermination),
            EngineState::TriggerTermination
        )
    );

    store
        .refuse_logs
        .store(false, std::sync::atomic::Ordering::SeqCst);
    drive_until(&app, &monitor, &id, EngineState::Terminated).await;
    assert!(!platform.exists(&eid(&id)));
    let logs = app.client.logs(&id).await.expect("logs");
    assert_eq!(logs.source, "kept");
    assert!(
        logs.log.contains(&format!("driver log of {id}")),
        "{logs:?}"
    );
}
