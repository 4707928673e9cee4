//! The monitor against the in-memory platform double and a real SQLite store, with faults
//! injected: creation fails, a resource dies, a monitor dies mid-claim, several monitors race.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{spawn_api, TestApp, VERSION};
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
    assert!(app.client.get(&id).await.is_err());

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

    // ...then takes the work over and completes it, creating the resource once.
    tokio::time::sleep(Duration::from_millis(350)).await;
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
    let (app, platform, monitor) = setup(config).await;
    // Starting checks are rescheduled at the start-check interval, not the poll interval.
    platform.set_polls_until_ready(3);
    let (trigger, shutdown) = rucat::shutdown::channel();
    let running = tokio::spawn(monitor.run(shutdown));
    tokio::time::sleep(Duration::from_millis(100)).await;

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
