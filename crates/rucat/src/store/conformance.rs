//! The store conformance suite: every backend must pass it.
//!
//! Each `pub async fn` here takes a fresh, empty store and panics when the store breaks the
//! [`Store`] contract. [`store_conformance_tests!`](crate::store_conformance_tests) turns the
//! whole suite into one `#[tokio::test]` per function for a backend:
//!
//! ```ignore
//! rucat::store_conformance_tests!(|| async {
//!     let dir = tempfile::TempDir::new().expect("temp dir");
//!     let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
//!     let store = rucat::store::sqlite::SqliteStore::open(&url).await.expect("open");
//!     (std::sync::Arc::new(store) as std::sync::Arc<dyn rucat::store::Store>, dir)
//! });
//! ```
//!
//! The maker returns the store and a guard that is kept alive until the test ends (a temporary
//! directory, a database to drop, or `()`).
//!
//! Test support: built only with the crate's `testing` feature.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    ActivityReport, Cas, Failure, ListQuery, Reschedule, Store, StoreError, Take, Transition,
    MAX_EVENTS, MAX_KEPT_LOG, MAX_PAGE, WARM_STATES,
};
use crate::engine::quota::{Limits, QuotaExceeded};
use crate::engine::{
    Actor, Cause, Engine, EngineEvent, EngineId, EngineName, EngineSecret, EngineState, EngineType,
    EventType,
};
use crate::text::tail;

use EngineState::*;

/// Generates one `#[tokio::test]` per conformance test, each on a fresh store.
///
/// The argument is a closure (or any callable) taking no argument and returning a future of
/// `(Arc<dyn Store>, guard)`; the guard lives until the end of the test.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr $(,)?) => {
        $crate::store_conformance_tests!(@tests $make;
            insert_and_get_round_trip,
            timestamps_keep_milliseconds,
            duplicate_insert_is_refused,
            get_unknown_is_none,
            update_state_records_event,
            update_state_conflict_changes_nothing,
            update_state_not_found,
            error_message_kept_and_cleared,
            endpoint_set_and_cleared,
            reschedule_is_a_cas,
            remove_is_a_cas,
            list_due_returns_due_engines_soonest_first,
            list_pages_in_creation_order,
            list_filters_by_state,
            list_filters_by_owner,
            list_rejects_invalid_cursor,
            list_never_skips_an_engine_created_while_paging,
            all_states_lists_every_engine,
            engines_are_counted_by_state,
            event_history_is_bounded,
            logs_are_saved_bounded,
            concurrent_transitions_have_one_winner,
            guarded_transitions_need_the_engine_due,
            wake_ups_when_an_engine_becomes_due,
            ping_answers,
            events_record_who_caused_them,
            quotas_hold_under_concurrent_creates,
            quotas_hold_under_concurrent_restarts,
            secrets_are_kept_and_replaced_by_transitions,
            activity_adds_up_over_proxies_and_goes_stale,
            claims_raise_the_generation_and_fenced_writes_need_it,
            failures_are_counted_recorded_and_reset,
            reschedule_restores_a_lost_endpoint,
            warm_inserts_fill_a_pool_to_its_size,
            warm_inserts_never_overfill_a_pool,
            take_warm_gives_a_running_warm_engine_to_its_taker,
            take_warm_respects_quotas,
            concurrent_takes_give_each_warm_engine_once,
            only_warm_transitions_skip_taken_engines,
            a_new_secret_ends_the_handover,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = ($make)().await;
                $crate::store::conformance::$name(store).await;
            }
        )*
    };
}

/// Now, at the millisecond precision every store keeps.
pub fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("now is in range")
}

/// A new engine in `WaitToStart`, owned by "alice", with nothing due.
pub fn sample_engine(name: &str) -> Engine {
    let now = now_ms();
    Engine {
        id: EngineId::generate(),
        name: EngineName::parse(name).expect("a valid engine name"),
        owner: "alice".to_owned(),
        engine_type: EngineType::Spark,
        version: "3.5.3".to_owned(),
        state: WaitToStart,
        error: None,
        configs: BTreeMap::from([("spark.executor.instances".to_owned(), "2".to_owned())]),
        endpoint: None,
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
    }
}

async fn insert(store: &dyn Store, engine: Engine) -> Engine {
    store.insert(&engine).await.expect("insert");
    engine
}

async fn get(store: &dyn Store, id: &EngineId) -> Engine {
    store
        .get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("engine {id} is missing"))
}

async fn events(store: &dyn Store, id: &EngineId) -> Vec<EngineEvent> {
    store
        .events(id)
        .await
        .expect("events")
        .unwrap_or_else(|| panic!("no events for engine {id}"))
}

async fn transition(store: &dyn Store, id: &EngineId, t: Transition) {
    let cas = store.update_state(id, &t).await.expect("update_state");
    assert_eq!(cas, Cas::Done, "{} -> {} on {id}", t.from, t.to);
}

fn ids(engines: &[Engine]) -> Vec<EngineId> {
    engines.iter().map(|e| e.id.clone()).collect()
}

/// Asserts `time` lies in `[before, after]` (with `before` at millisecond precision).
fn assert_between(time: DateTime<Utc>, before: DateTime<Utc>, after: DateTime<Utc>, what: &str) {
    assert!(
        before <= time && time <= after,
        "{what} {time} is not between {before} and {after}"
    );
}

pub async fn insert_and_get_round_trip(store: Arc<dyn Store>) {
    let store = &*store;
    let now = now_ms();
    let full = Engine {
        state: ErrorWaitToClean,
        error: Some("driver pod failed: OOMKilled ✗".to_owned()),
        endpoint: Some("sc://10.0.0.7:15002".to_owned()),
        owner: "bob@example.com".to_owned(),
        configs: BTreeMap::from([
            ("spark.driver.memory".to_owned(), "2g".to_owned()),
            ("spark.executor.instances".to_owned(), "4".to_owned()),
            (
                "spark.app.note".to_owned(),
                "quotes \" and \\ and 日本".to_owned(),
            ),
        ]),
        create_time: now - TimeDelta::milliseconds(86_400_123),
        update_time: now - TimeDelta::milliseconds(5_001),
        next_update_time: Some(now + TimeDelta::milliseconds(30_007)),
        ..sample_engine("full")
    };
    let bare = Engine {
        configs: BTreeMap::new(),
        ..sample_engine("bare")
    };
    let old = Engine {
        create_time: DateTime::from_timestamp_millis(1).expect("in range"),
        update_time: DateTime::from_timestamp_millis(2).expect("in range"),
        next_update_time: Some(DateTime::from_timestamp_millis(3).expect("in range")),
        ..sample_engine("old")
    };
    for engine in [full, bare, old] {
        insert(store, engine.clone()).await;
        assert_eq!(get(store, &engine.id).await, engine);
        let history = events(store, &engine.id).await;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].from, None);
        assert_eq!(history[0].to, engine.state);
        assert_eq!(history[0].message, None);
    }
}

pub async fn timestamps_keep_milliseconds(store: Arc<dyn Store>) {
    let store = &*store;
    let precise = Utc::now() + TimeDelta::nanoseconds(123_456);
    let engine = Engine {
        create_time: precise,
        update_time: precise,
        next_update_time: Some(precise),
        ..sample_engine("precise")
    };
    insert(store, engine.clone()).await;
    let got = get(store, &engine.id).await;
    for (what, time) in [
        ("create_time", got.create_time),
        ("update_time", got.update_time),
        (
            "next_update_time",
            got.next_update_time.expect("next_update_time"),
        ),
    ] {
        let drift = (time - precise).abs();
        assert!(
            drift < TimeDelta::milliseconds(1),
            "{what} {time} drifted from {precise}"
        );
    }
}

pub async fn duplicate_insert_is_refused(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("first")).await;
    let twin = Engine {
        name: EngineName::parse("second").expect("a valid engine name"),
        state: Running,
        ..engine.clone()
    };
    match store.insert(&twin).await {
        Err(StoreError::Duplicate(id)) => assert_eq!(id, engine.id),
        other => panic!("a duplicate insert gave {other:?}"),
    }
    assert_eq!(get(store, &engine.id).await, engine);
    assert_eq!(events(store, &engine.id).await.len(), 1);
}

pub async fn get_unknown_is_none(store: Arc<dyn Store>) {
    let store = &*store;
    insert(store, sample_engine("other")).await;
    let unknown = EngineId::generate();
    assert_eq!(store.get(&unknown).await.expect("get"), None);
    assert_eq!(store.events(&unknown).await.expect("events"), None);
    assert_eq!(store.logs(&unknown).await.expect("logs"), None);
}

pub async fn update_state_records_event(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("claimed")).await;
    let due = now_ms() + TimeDelta::seconds(30);
    let before = now_ms();
    let t = Transition::new(WaitToStart, TriggerStart)
        .due_at(due)
        .with_message("claimed by monitor m1")
        .because(Cause::monitor("claim"));
    assert_eq!(
        store.update_state(&engine.id, &t).await.expect("update"),
        Cas::Done
    );
    let after = Utc::now();

    let got = get(store, &engine.id).await;
    assert_between(got.update_time, before, after, "update_time");
    assert_eq!(
        got,
        Engine {
            state: TriggerStart,
            next_update_time: Some(due),
            update_time: got.update_time,
            ..engine.clone()
        }
    );

    let history = events(store, &engine.id).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].from, None);
    assert_eq!(history[0].to, WaitToStart);
    // The first event is the owner's create.
    assert_eq!(history[0].event_type, EventType::Created);
    assert_eq!(history[0].cause, Some(Cause::user("create")));
    let event = &history[1];
    assert_eq!(event.from, Some(WaitToStart));
    assert_eq!(event.to, TriggerStart);
    assert_eq!(event.message.as_deref(), Some("claimed by monitor m1"));
    assert_eq!(event.event_type, EventType::StateChange);
    assert_eq!(event.cause, Some(Cause::monitor("claim")));
    assert!(event.id > history[0].id, "event ids increase: {history:?}");
    assert_between(event.time, before, after, "event time");

    // A transition without a due time clears it.
    transition(
        store,
        &engine.id,
        Transition::new(TriggerStart, StartInProgress),
    )
    .await;
    let got = get(store, &engine.id).await;
    assert_eq!(got.state, StartInProgress);
    assert_eq!(got.next_update_time, None);
    let history = events(store, &engine.id).await;
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].message, None);
    assert_eq!(history[2].cause, None);
    assert!(
        history[2].id > history[1].id,
        "event ids increase: {history:?}"
    );
}

pub async fn update_state_conflict_changes_nothing(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("busy")).await;
    let history = events(store, &engine.id).await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let t = Transition::new(Running, WaitToTerminate)
        .with_error("nope")
        .with_endpoint(Some("sc://nowhere:1".to_owned()))
        .due_at(now_ms());
    assert_eq!(
        store.update_state(&engine.id, &t).await.expect("update"),
        Cas::Conflict(WaitToStart)
    );
    assert_eq!(get(store, &engine.id).await, engine);
    assert_eq!(events(store, &engine.id).await, history);
}

pub async fn update_state_not_found(store: Arc<dyn Store>) {
    let store = &*store;
    insert(store, sample_engine("other")).await;
    let unknown = EngineId::generate();
    let t = Transition::new(WaitToStart, TriggerStart);
    assert_eq!(
        store.update_state(&unknown, &t).await.expect("update"),
        Cas::NotFound
    );
    assert_eq!(store.get(&unknown).await.expect("get"), None);
    assert_eq!(store.events(&unknown).await.expect("events"), None);
}

pub async fn error_message_kept_and_cleared(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(
        store,
        Engine {
            state: Running,
            ..sample_engine("failing")
        },
    )
    .await;

    let failed = Transition::new(Running, ErrorWaitToClean).with_error("executor lost");
    transition(store, &engine.id, failed).await;
    let got = get(store, &engine.id).await;
    assert_eq!(got.state, ErrorWaitToClean);
    assert_eq!(got.error.as_deref(), Some("executor lost"));
    let last = events(store, &engine.id).await.pop().expect("an event");
    assert_eq!(last.message.as_deref(), Some("executor lost"));

    // Kept when the transition carries it on.
    let mut claim = Transition::new(ErrorWaitToClean, ErrorTriggerClean);
    claim.error = got.error.clone();
    transition(store, &engine.id, claim).await;
    let got = get(store, &engine.id).await;
    assert_eq!(got.error.as_deref(), Some("executor lost"));
    let last = events(store, &engine.id).await.pop().expect("an event");
    assert_eq!(last.message, None);

    // Cleared by a transition without one.
    transition(
        store,
        &engine.id,
        Transition::new(ErrorTriggerClean, WaitToStart),
    )
    .await;
    assert_eq!(get(store, &engine.id).await.error, None);
}

pub async fn endpoint_set_and_cleared(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(
        store,
        Engine {
            state: StartInProgress,
            ..sample_engine("serving")
        },
    )
    .await;
    let endpoint = Some("sc://spark-driver.rucat.svc:15002".to_owned());

    transition(
        store,
        &engine.id,
        Transition::new(StartInProgress, Running).with_endpoint(endpoint.clone()),
    )
    .await;
    assert_eq!(get(store, &engine.id).await.endpoint, endpoint);

    transition(
        store,
        &engine.id,
        Transition::new(Running, WaitToTerminate).with_endpoint(endpoint.clone()),
    )
    .await;
    assert_eq!(get(store, &engine.id).await.endpoint, endpoint);

    transition(
        store,
        &engine.id,
        Transition::new(WaitToTerminate, TriggerTermination),
    )
    .await;
    assert_eq!(get(store, &engine.id).await.endpoint, None);
}

pub async fn reschedule_is_a_cas(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("waiting")).await;
    let history = events(store, &engine.id).await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let later = now_ms() + TimeDelta::seconds(90);
    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(WaitToStart, Some(later)))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    // Only the due time changes: no event, no new update time.
    let expected = Engine {
        next_update_time: Some(later),
        ..engine.clone()
    };
    assert_eq!(get(store, &engine.id).await, expected);
    assert_eq!(events(store, &engine.id).await, history);

    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(Running, None))
            .await
            .expect("reschedule"),
        Cas::Conflict(WaitToStart)
    );
    assert_eq!(get(store, &engine.id).await, expected);

    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(WaitToStart, None))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    assert_eq!(get(store, &engine.id).await.next_update_time, None);

    assert_eq!(
        store
            .reschedule(
                &EngineId::generate(),
                &Reschedule::new(WaitToStart, Some(later))
            )
            .await
            .expect("reschedule"),
        Cas::NotFound
    );
}

pub async fn remove_is_a_cas(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(
        store,
        Engine {
            state: Terminated,
            ..sample_engine("done")
        },
    )
    .await;
    let neighbour = insert(store, sample_engine("neighbour")).await;
    store
        .save_logs(&engine.id, "driver log\n")
        .await
        .expect("save logs");
    store
        .save_logs(&neighbour.id, "neighbour log\n")
        .await
        .expect("save logs");
    let history = events(store, &engine.id).await;

    assert_eq!(
        store.remove(&engine.id, Running).await.expect("remove"),
        Cas::Conflict(Terminated)
    );
    assert_eq!(get(store, &engine.id).await, engine);
    assert_eq!(events(store, &engine.id).await, history);
    assert_eq!(
        store.logs(&engine.id).await.expect("logs").as_deref(),
        Some("driver log\n")
    );

    assert_eq!(
        store.remove(&engine.id, Terminated).await.expect("remove"),
        Cas::Done
    );
    assert_eq!(store.get(&engine.id).await.expect("get"), None);
    assert_eq!(store.events(&engine.id).await.expect("events"), None);
    assert_eq!(store.logs(&engine.id).await.expect("logs"), None);
    assert_eq!(
        store.remove(&engine.id, Terminated).await.expect("remove"),
        Cas::NotFound
    );

    // The neighbour is untouched.
    assert_eq!(get(store, &neighbour.id).await, neighbour);
    assert_eq!(events(store, &neighbour.id).await.len(), 1);
    assert_eq!(
        store.logs(&neighbour.id).await.expect("logs").as_deref(),
        Some("neighbour log\n")
    );
    let all = store.all_states().await.expect("all states");
    assert_eq!(all, vec![(neighbour.id.clone(), WaitToStart, 0)]);
}

pub async fn list_due_returns_due_engines_soonest_first(store: Arc<dyn Store>) {
    let store = &*store;
    let now = now_ms();
    let due_in = |name: &str, ms: Option<i64>| Engine {
        next_update_time: ms.map(|ms| now + TimeDelta::milliseconds(ms)),
        ..sample_engine(name)
    };
    let a = insert(store, due_in("a", Some(-3_000))).await;
    let b = insert(store, due_in("b", Some(-1_000))).await;
    let _future = insert(store, due_in("future", Some(60_000))).await;
    let c = insert(store, due_in("c", Some(-2_000))).await;
    let _never = insert(store, due_in("never", None)).await;
    let exactly = insert(store, due_in("exactly", Some(0))).await;

    let due = store.list_due(now, 10).await.expect("list due");
    assert_eq!(
        ids(&due),
        ids(&[a.clone(), c.clone(), b.clone(), exactly.clone()])
    );
    assert_eq!(due[0], a, "list_due returns whole records");

    let due = store.list_due(now, 2).await.expect("list due");
    assert_eq!(ids(&due), ids(&[a.clone(), c.clone()]));

    let due = store
        .list_due(now - TimeDelta::seconds(10), 10)
        .await
        .expect("list due");
    assert!(due.is_empty(), "{due:?}");

    // Rescheduling and transitions move engines in and out.
    assert_eq!(
        store
            .reschedule(&a.id, &Reschedule::new(WaitToStart, None))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    transition(
        store,
        &c.id,
        Transition::new(WaitToStart, TriggerStart).due_at(now + TimeDelta::seconds(60)),
    )
    .await;
    let due = store.list_due(now, 10).await.expect("list due");
    assert_eq!(ids(&due), ids(&[b, exactly]));
}

async fn collect_pages(store: &dyn Store, mut query: ListQuery) -> Vec<Vec<Engine>> {
    let mut pages = Vec::new();
    loop {
        let page = store.list(&query).await.expect("list");
        pages.push(page.engines);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return pages,
        }
        assert!(pages.len() <= 100, "the listing never ends");
    }
}

pub async fn list_pages_in_creation_order(store: Arc<dyn Store>) {
    let store = &*store;
    let empty = store.list(&ListQuery::default()).await.expect("list");
    assert!(empty.engines.is_empty());
    assert_eq!(empty.next_cursor, None);

    let mut created = Vec::new();
    for i in 0..7 {
        created.push(insert(store, sample_engine(&format!("engine-{i}"))).await);
    }
    // Changes after creation do not reorder the listing.
    transition(
        store,
        &created[0].id,
        Transition::new(WaitToStart, TriggerStart),
    )
    .await;
    let created: Vec<Engine> = {
        let mut fresh = Vec::new();
        for engine in &created {
            fresh.push(get(store, &engine.id).await);
        }
        fresh
    };

    let pages = collect_pages(
        store,
        ListQuery {
            limit: 3,
            ..ListQuery::default()
        },
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(pages.concat(), created, "whole records, in creation order");

    // Exactly a page's worth: the last full page says there is no more.
    let pages = collect_pages(
        store,
        ListQuery {
            limit: 7,
            ..ListQuery::default()
        },
    )
    .await;
    assert_eq!(pages.len(), 1);
    assert_eq!(ids(&pages[0]), ids(&created));

    // No limit means a default page; a huge one is capped, not refused.
    for limit in [0, MAX_PAGE, MAX_PAGE + 1, u32::MAX] {
        let page = store
            .list(&ListQuery {
                limit,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(ids(&page.engines), ids(&created), "limit {limit}");
        assert_eq!(page.next_cursor, None, "limit {limit}");
    }
}

/// A listing that pages while engines are being created never skips one it has already paged
/// past: every engine listed before the furthest one a listing reached is in that listing. (On
/// PostgreSQL, creates that commit out of the order of their sequence numbers would let a page
/// move past an engine that is committed a moment later.)
pub async fn list_never_skips_an_engine_created_while_paging(store: Arc<dyn Store>) {
    const CREATORS: usize = 8;
    const EACH: usize = 60;
    const PAGERS: usize = 3;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for creator in 0..CREATORS {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        creators.push(tokio::spawn(async move {
            for i in 0..EACH {
                // An owner per creator: no quota lock serializes them.
                let engine = Engine {
                    owner: format!("owner-{creator}"),
                    ..sample_engine(&format!("engine-{creator}-{i}"))
                };
                store.insert(&engine).await.expect("insert");
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    let query = ListQuery {
        limit: 4,
        ..ListQuery::default()
    };
    // Listings made while creates were under way, each as the ids of its pages in order.
    let mut pagers = Vec::new();
    for _ in 0..PAGERS {
        let (store, done, query) = (Arc::clone(&store), Arc::clone(&done), query.clone());
        pagers.push(tokio::spawn(async move {
            let mut listings: Vec<Vec<EngineId>> = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < CREATORS {
                let mut listing = Vec::new();
                let mut query = query.clone();
                loop {
                    let page = store.list(&query).await.expect("list");
                    listing.extend(ids(&page.engines));
                    match page.next_cursor {
                        Some(cursor) => query.cursor = Some(cursor),
                        None => break,
                    }
                }
                listings.push(listing);
            }
            listings
        }));
    }
    for creator in creators {
        creator.await.expect("creator");
    }
    let mut listings = Vec::new();
    for pager in pagers {
        listings.extend(pager.await.expect("pager"));
    }
    assert!(!listings.is_empty(), "no listing ran during the creates");
    let all = ids(&collect_pages(
        &*store,
        ListQuery {
            limit: MAX_PAGE,
            ..ListQuery::default()
        },
    )
    .await
    .concat());
    assert_eq!(
        all.len(),
        CREATORS * EACH,
        "every engine listed once at the end"
    );
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        all.len(),
        "no engine listed twice"
    );
    let position: std::collections::HashMap<&EngineId, usize> =
        all.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut skipped = Vec::new();
    for (n, listing) in listings.iter().enumerate() {
        let seen: HashSet<&EngineId> = listing.iter().collect();
        assert_eq!(seen.len(), listing.len(), "listing {n} has an engine twice");
        let order: Vec<usize> = listing.iter().map(|id| position[id]).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "listing {n} is out of creation order"
        );
        let reached = order.last().copied().unwrap_or(0);
        skipped.extend(
            all[..reached]
                .iter()
                .filter(|id| !seen.contains(id))
                .map(|id| (n, id.clone())),
        );
    }
    assert!(
        skipped.is_empty(),
        "{} of {} listings made during the creates skipped engines they paged past: {skipped:?}",
        skipped.iter().map(|(n, _)| n).collect::<HashSet<_>>().len(),
        listings.len()
    );
}

pub async fn list_filters_by_state(store: Arc<dyn Store>) {
    let store = &*store;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(insert(store, sample_engine(&format!("engine-{i}"))).await);
    }
    for i in [1, 3] {
        transition(store, &created[i].id, Transition::new(WaitToStart, Running)).await;
    }
    let running = ListQuery {
        state: Some(Running),
        limit: 1,
        ..ListQuery::default()
    };
    let pages = collect_pages(store, running).await;
    assert_eq!(pages.len(), 2);
    let listed = pages.concat();
    assert_eq!(ids(&listed), ids(&[created[1].clone(), created[3].clone()]));
    assert!(listed.iter().all(|e| e.state == Running));

    let waiting = store
        .list(&ListQuery {
            state: Some(WaitToStart),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        ids(&waiting.engines),
        ids(&[created[0].clone(), created[2].clone(), created[4].clone()])
    );
    let none = store
        .list(&ListQuery {
            state: Some(ErrorClean),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(none.engines.is_empty());
    assert_eq!(none.next_cursor, None);
}

pub async fn list_filters_by_owner(store: Arc<dyn Store>) {
    let store = &*store;
    let mut created = Vec::new();
    for (i, owner) in ["alice", "bob", "alice", "bob", "alice"].iter().enumerate() {
        let engine = Engine {
            owner: (*owner).to_owned(),
            ..sample_engine(&format!("engine-{i}"))
        };
        created.push(insert(store, engine).await);
    }
    transition(store, &created[2].id, Transition::new(WaitToStart, Running)).await;

    let alice = collect_pages(
        store,
        ListQuery {
            owner: Some("alice".to_owned()),
            limit: 2,
            ..ListQuery::default()
        },
    )
    .await
    .concat();
    assert_eq!(
        ids(&alice),
        ids(&[created[0].clone(), created[2].clone(), created[4].clone()])
    );

    let bob = store
        .list(&ListQuery {
            owner: Some("bob".to_owned()),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        ids(&bob.engines),
        ids(&[created[1].clone(), created[3].clone()])
    );

    let alice_running = store
        .list(&ListQuery {
            owner: Some("alice".to_owned()),
            state: Some(Running),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(&alice_running.engines), ids(&[created[2].clone()]));

    for owner in ["carol", "", "ALICE"] {
        let page = store
            .list(&ListQuery {
                owner: Some(owner.to_owned()),
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert!(page.engines.is_empty(), "owner {owner:?}");
    }
}

pub async fn list_rejects_invalid_cursor(store: Arc<dyn Store>) {
    let store = &*store;
    insert(store, sample_engine("one")).await;
    for cursor in ["not a cursor", "", "-1; DROP TABLE engines", "🙂"] {
        match store
            .list(&ListQuery {
                cursor: Some(cursor.to_owned()),
                ..ListQuery::default()
            })
            .await
        {
            Err(StoreError::InvalidCursor(c)) => assert_eq!(c, cursor),
            other => panic!("cursor {cursor:?} gave {other:?}"),
        }
    }
    // The store still works.
    let page = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(page.engines.len(), 1);
}

pub async fn all_states_lists_every_engine(store: Arc<dyn Store>) {
    let store = &*store;
    assert!(store.all_states().await.expect("all states").is_empty());
    let mut expected = HashSet::new();
    for (i, state) in [WaitToStart, Running, ErrorCleanInProgress, Terminated]
        .into_iter()
        .enumerate()
    {
        let engine = insert(
            store,
            Engine {
                state,
                generation: i as u64,
                ..sample_engine(&format!("engine-{i}"))
            },
        )
        .await;
        expected.insert((engine.id, state, i as u64));
    }
    let all: HashSet<_> = store
        .all_states()
        .await
        .expect("all states")
        .into_iter()
        .collect();
    assert_eq!(all, expected);
}

pub async fn engines_are_counted_by_state(store: Arc<dyn Store>) {
    let store = &*store;
    assert!(store.count_by_state().await.expect("count").is_empty());
    let states = [Running, WaitToStart, Running, Terminated, Running];
    let mut ids = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        let engine = insert(
            store,
            Engine {
                state,
                ..sample_engine(&format!("counted-{i}"))
            },
        )
        .await;
        ids.push(engine.id);
    }
    let mut counts = store.count_by_state().await.expect("count");
    counts.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(
        counts,
        vec![(Running, 3), (Terminated, 1), (WaitToStart, 1)]
    );
    // A transition moves an engine from one count to the other; a removal takes it out.
    transition(store, &ids[1], Transition::new(WaitToStart, TriggerStart)).await;
    assert_eq!(
        store.remove(&ids[3], Terminated).await.expect("remove"),
        Cas::Done
    );
    let mut counts = store.count_by_state().await.expect("count");
    counts.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(counts, vec![(Running, 3), (TriggerStart, 1)]);
}

pub async fn event_history_is_bounded(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("flapping")).await;
    let changes = MAX_EVENTS + 5;
    let mut state = WaitToStart;
    for i in 0..changes {
        let to = if state == Running {
            WaitToTerminate
        } else {
            Running
        };
        transition(
            store,
            &engine.id,
            Transition::new(state, to).with_message(i.to_string()),
        )
        .await;
        state = to;
    }
    let history = events(store, &engine.id).await;
    assert_eq!(history.len(), MAX_EVENTS);
    // The newest are kept, oldest first: the insert event and the first changes are gone.
    let messages: Vec<String> = history
        .iter()
        .map(|e| e.message.clone().expect("a message"))
        .collect();
    let expected: Vec<String> = (changes - MAX_EVENTS..changes)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(messages, expected);
    assert_eq!(history.last().map(|e| e.to), Some(state));
    for pair in history.windows(2) {
        assert_eq!(pair[0].to, pair[1].from.expect("a from state"));
        assert!(pair[0].time <= pair[1].time);
    }
}

pub async fn logs_are_saved_bounded(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("chatty")).await;
    assert_eq!(store.logs(&engine.id).await.expect("logs"), None);

    store
        .save_logs(&engine.id, "starting driver\n")
        .await
        .expect("save logs");
    assert_eq!(
        store.logs(&engine.id).await.expect("logs").as_deref(),
        Some("starting driver\n")
    );

    // A newer capture replaces the older one; only its tail is kept, cut at a character.
    let mut big = String::from("HEAD-MARKER\n");
    let mut line = 0;
    while big.len() <= MAX_KEPT_LOG + 10_000 {
        big.push_str(&format!("line {line}: ünïcödé ✓ log output\n"));
        line += 1;
    }
    store.save_logs(&engine.id, &big).await.expect("save logs");
    let kept = store
        .logs(&engine.id)
        .await
        .expect("logs")
        .expect("logs kept");
    assert!(kept.len() <= MAX_KEPT_LOG, "{} bytes kept", kept.len());
    assert_eq!(kept, tail(&big, MAX_KEPT_LOG));
    assert!(!kept.contains("HEAD-MARKER"));
    assert!(kept.ends_with(&format!("line {}: ünïcödé ✓ log output\n", line - 1)));

    store.save_logs(&engine.id, "").await.expect("save logs");
    assert_eq!(
        store.logs(&engine.id).await.expect("logs").as_deref(),
        Some("")
    );

    // Saving for an engine that is gone is harmless and keeps nothing.
    let unknown = EngineId::generate();
    store.save_logs(&unknown, "lost").await.expect("save logs");
    assert_eq!(store.logs(&unknown).await.expect("logs"), None);
    assert_eq!(store.get(&unknown).await.expect("get"), None);
}

pub async fn concurrent_transitions_have_one_winner(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    let engine = insert(&*store, sample_engine("contended")).await;

    // Every task tries the same transition.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), engine.id.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t = Transition::new(WaitToStart, TriggerStart).with_message(format!("task {i}"));
            store.update_state(&id, &t).await.expect("update_state")
        }));
    }
    let mut done = 0;
    for task in tasks {
        match task.await.expect("task") {
            Cas::Done => done += 1,
            Cas::Conflict(actual) => assert_eq!(actual, TriggerStart),
            Cas::NotFound => panic!("engine vanished"),
        }
    }
    assert_eq!(done, 1);
    assert_eq!(events(&*store, &engine.id).await.len(), 2);

    // Tasks racing to different states: one wins, the others see the winner's state.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), engine.id.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let to = if i % 2 == 0 {
                StartInProgress
            } else {
                ErrorClean
            };
            let cas = store
                .update_state(&id, &Transition::new(TriggerStart, to))
                .await
                .expect("update_state");
            (to, cas)
        }));
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (to, Cas::Done) => winners.push(to),
            (_, Cas::Conflict(actual)) => seen.push(actual),
            (_, Cas::NotFound) => panic!("engine vanished"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(seen.len(), TASKS - 1);
    assert!(seen.iter().all(|s| *s == winners[0]), "{seen:?}");
    assert_eq!(get(&*store, &engine.id).await.state, winners[0]);
    assert_eq!(events(&*store, &engine.id).await.len(), 3);
}

pub async fn guarded_transitions_need_the_engine_due(store: Arc<dyn Store>) {
    let engine = insert(&*store, sample_engine("claimed")).await;
    let claim_until = now_ms() + TimeDelta::minutes(2);
    transition(
        &*store,
        &engine.id,
        Transition::new(WaitToStart, TriggerStart).due_at(claim_until),
    )
    .await;

    // Taking over a claim that has not timed out: refused, nothing changes.
    let take_over = Transition::new(TriggerStart, WaitToStart).only_if_due_by(now_ms());
    assert_eq!(
        store
            .update_state(&engine.id, &take_over)
            .await
            .expect("cas"),
        Cas::Conflict(TriggerStart)
    );
    let unchanged = get(&*store, &engine.id).await;
    assert_eq!(unchanged.next_update_time, Some(claim_until));
    assert_eq!(events(&*store, &engine.id).await.len(), 2);

    // Nothing due at all: refused too.
    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(TriggerStart, None))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    assert_eq!(
        store
            .update_state(&engine.id, &take_over)
            .await
            .expect("cas"),
        Cas::Conflict(TriggerStart)
    );

    // Once the claim's time has passed, it is taken over.
    let expired = now_ms() - TimeDelta::seconds(1);
    store
        .reschedule(&engine.id, &Reschedule::new(TriggerStart, Some(expired)))
        .await
        .expect("reschedule");
    let take_over = take_over.only_if_due_by(now_ms());
    assert_eq!(
        store
            .update_state(&engine.id, &take_over)
            .await
            .expect("cas"),
        Cas::Done
    );
    assert_eq!(get(&*store, &engine.id).await.state, WaitToStart);
}

/// Runs `write` and asserts the store's wake-ups fire within a second.
async fn assert_wakes<F: std::future::Future>(store: &dyn Store, what: &str, write: F) {
    let wake_ups = store.wake_ups();
    let notified = wake_ups.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    write.await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .is_ok(),
        "no wake-up after {what}"
    );
}

pub async fn wake_ups_when_an_engine_becomes_due(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = Engine {
        next_update_time: Some(now_ms() - TimeDelta::milliseconds(1)),
        ..sample_engine("due")
    };
    assert_wakes(store, "inserting a due engine", async {
        store.insert(&engine).await.expect("insert");
    })
    .await;

    assert_wakes(store, "a transition due now", async {
        transition(
            store,
            &engine.id,
            Transition::new(WaitToStart, TriggerStart).due_at(now_ms()),
        )
        .await;
    })
    .await;

    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(TriggerStart, None))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    assert_wakes(store, "rescheduling to now", async {
        let cas = store
            .reschedule(&engine.id, &Reschedule::new(TriggerStart, Some(now_ms())))
            .await
            .expect("reschedule");
        assert_eq!(cas, Cas::Done);
    })
    .await;
}

pub async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    insert(&*store, sample_engine("one")).await;
    store.ping().await.expect("ping");
}

pub async fn events_record_who_caused_them(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("caused")).await;
    transition(
        store,
        &engine.id,
        Transition::new(WaitToStart, TriggerStart).by(Actor::Monitor("host-7".into())),
    )
    .await;
    transition(
        store,
        &engine.id,
        Transition::new(TriggerStart, StartInProgress),
    )
    .await;
    let actors: Vec<Option<Actor>> = events(store, &engine.id)
        .await
        .into_iter()
        .map(|event| event.actor)
        .collect();
    assert_eq!(
        actors,
        vec![
            Some(Actor::User("alice".into())),
            Some(Actor::Monitor("host-7".into())),
            None,
        ]
    );
}

fn owned_by(owner: &str, state: EngineState) -> Engine {
    Engine {
        owner: owner.to_owned(),
        state,
        ..sample_engine(&format!("{owner}-{state}"))
    }
}

pub async fn quotas_hold_under_concurrent_creates(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    let limits = Limits {
        max_engines: Some(5),
        max_active_engines: Some(3),
    };
    // Settled engines count toward max_engines only.
    insert(&*store, owned_by("alice", Terminated)).await;
    // Another owner's engines count toward nobody else's limits.
    for _ in 0..4 {
        insert(&*store, owned_by("bob", WaitToStart)).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .insert_within(&owned_by("alice", WaitToStart), &limits)
                .await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => created += 1,
            Err(StoreError::OverQuota(QuotaExceeded { limit, value, .. })) => {
                assert_eq!((limit, value), ("max_active_engines", 3));
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(created, 3, "exactly max_active_engines creates win");
    let alice = store
        .list(&ListQuery {
            owner: Some("alice".into()),
            limit: MAX_PAGE,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(alice.engines.len(), 4);

    // At max_engines in all, even a settled engine cannot be added.
    insert(&*store, owned_by("alice", ErrorClean)).await;
    match store
        .insert_within(&owned_by("alice", Terminated), &limits)
        .await
    {
        Err(StoreError::OverQuota(exceeded)) => {
            assert_eq!(
                (exceeded.limit, exceeded.value, exceeded.current),
                ("max_engines", 5, 5)
            );
        }
        other => panic!("expected max_engines to refuse, got {other:?}"),
    }
    assert_eq!(store.all_states().await.expect("states").len(), 9);
}

pub async fn quotas_hold_under_concurrent_restarts(store: Arc<dyn Store>) {
    const ENGINES: usize = 8;
    let limits = Limits {
        max_engines: None,
        max_active_engines: Some(3),
    };
    let running = insert(&*store, owned_by("alice", Running)).await;
    let mut stopped = Vec::new();
    for _ in 0..ENGINES {
        stopped.push(insert(&*store, owned_by("alice", Terminated)).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(ENGINES));
    let mut tasks = Vec::new();
    for engine in &stopped {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), engine.id.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t = Transition::new(Terminated, WaitToStart).within(limits);
            (id.clone(), store.update_state(&id, &t).await)
        }));
    }
    let mut restarted = 0;
    for task in tasks {
        let (id, result) = task.await.expect("task");
        match result {
            Ok(Cas::Done) => restarted += 1,
            Err(StoreError::OverQuota(exceeded)) => {
                assert_eq!(exceeded.limit, "max_active_engines");
                let engine = get(&*store, &id).await;
                assert_eq!(
                    engine.state, Terminated,
                    "a refused restart changes nothing"
                );
                assert_eq!(events(&*store, &id).await.len(), 1);
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(
        restarted, 2,
        "one Running engine plus two restarted reach the limit of 3"
    );

    // A change that activates nothing is never refused, even at the limit.
    transition(
        &*store,
        &running.id,
        Transition::new(Running, WaitToTerminate).within(limits),
    )
    .await;
    let back = Transition::new(WaitToTerminate, Running).within(limits);
    assert_eq!(
        store
            .update_state(&running.id, &back)
            .await
            .expect("cancel stop"),
        Cas::Done
    );
}

pub async fn secrets_are_kept_and_replaced_by_transitions(store: Arc<dyn Store>) {
    let store = &*store;
    let first = EngineSecret::generate();
    let engine = insert(
        store,
        Engine {
            secret: Some(first.clone()),
            idle_timeout_minutes: 45,
            ..sample_engine("keyed")
        },
    )
    .await;
    let got = get(store, &engine.id).await;
    assert_eq!(got.secret, Some(first.clone()));
    assert_eq!(got.idle_timeout_minutes, 45);
    // A transition without a secret keeps the one the engine has.
    transition(store, &engine.id, Transition::new(WaitToStart, Terminated)).await;
    assert_eq!(get(store, &engine.id).await.secret, Some(first.clone()));
    // One with a secret replaces it (a restart's new start).
    let second = EngineSecret::generate();
    transition(
        store,
        &engine.id,
        Transition::new(Terminated, WaitToStart).with_secret(second.clone()),
    )
    .await;
    let got = get(store, &engine.id).await;
    assert_eq!(got.secret, Some(second));
    assert_ne!(got.secret, Some(first));
    // Never in a listing's JSON either.
    let listed = store.list(&ListQuery::default()).await.expect("list");
    let json = serde_json::to_string(&listed.engines).expect("json");
    assert!(
        !json.contains("\"secret\":") && !json.contains(got.secret.as_ref().expect("s").expose())
    );
}

pub async fn activity_adds_up_over_proxies_and_goes_stale(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("busy")).await;
    let other = insert(store, sample_engine("quiet")).await;
    let long_ago = now_ms() - TimeDelta::hours(1);
    assert_eq!(
        store
            .activity(&engine.id, long_ago)
            .await
            .expect("activity"),
        super::Activity::default(),
        "no report: nothing under way, nothing ever ended"
    );
    let t1 = now_ms() - TimeDelta::seconds(30);
    let t2 = now_ms() - TimeDelta::seconds(10);
    let report = |id: &EngineId, in_flight, last_active| ActivityReport {
        engine: id.clone(),
        in_flight,
        last_active,
    };
    store
        .report_activity("proxy-a", &[report(&engine.id, 2, Some(t1))])
        .await
        .expect("report");
    store
        .report_activity(
            "proxy-b",
            &[report(&engine.id, 1, Some(t2)), report(&other.id, 0, None)],
        )
        .await
        .expect("report");
    let activity = store
        .activity(&engine.id, long_ago)
        .await
        .expect("activity");
    assert_eq!(activity.in_flight, 3, "the proxies' calls add up");
    assert_eq!(
        activity.last_active,
        Some(t2),
        "the latest end over every proxy"
    );
    // A proxy's new report replaces its row; an older last_active never moves it back.
    store
        .report_activity("proxy-a", &[report(&engine.id, 0, Some(t1))])
        .await
        .expect("report");
    let activity = store
        .activity(&engine.id, long_ago)
        .await
        .expect("activity");
    assert_eq!(activity.in_flight, 1);
    assert_eq!(activity.last_active, Some(t2));
    // Reports older than `fresh_after` no longer count their calls under way.
    let later = now_ms() + TimeDelta::seconds(1);
    let activity = store.activity(&engine.id, later).await.expect("activity");
    assert_eq!(
        activity.in_flight, 0,
        "stale reports count nothing under way"
    );
    assert_eq!(
        activity.last_active,
        Some(t2),
        "but their last call still ended then"
    );
    let quiet = store.activity(&other.id, long_ago).await.expect("activity");
    assert_eq!(quiet, super::Activity::default());
    // A removed engine's activity goes with it.
    transition(store, &engine.id, Transition::new(WaitToStart, Terminated)).await;
    assert_eq!(
        store.remove(&engine.id, Terminated).await.expect("remove"),
        Cas::Done
    );
    assert_eq!(
        store
            .activity(&engine.id, long_ago)
            .await
            .expect("activity"),
        super::Activity::default()
    );
}

pub async fn claims_raise_the_generation_and_fenced_writes_need_it(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("fenced")).await;
    assert_eq!(engine.generation, 0);

    // A claim starts generation 1.
    transition(
        store,
        &engine.id,
        Transition::new(WaitToStart, TriggerStart).claiming(),
    )
    .await;
    assert_eq!(get(store, &engine.id).await.generation, 1);

    // A second claim of the same state (a monitor taking over one whose claim timed out) starts
    // generation 2; the first monitor's writes, naming generation 1, now change nothing.
    transition(
        store,
        &engine.id,
        Transition::new(TriggerStart, TriggerStart).claiming(),
    )
    .await;
    let taken_over = get(store, &engine.id).await;
    assert_eq!(taken_over.generation, 2);
    let history = events(store, &engine.id).await;
    let later = now_ms() + TimeDelta::seconds(60);
    let stale = [
        store
            .update_state(
                &engine.id,
                &Transition::new(TriggerStart, StartInProgress)
                    .fenced(1)
                    .due_at(later),
            )
            .await
            .expect("update_state"),
        store
            .reschedule(
                &engine.id,
                &Reschedule::new(TriggerStart, Some(later)).fenced(1),
            )
            .await
            .expect("reschedule"),
        store
            .record_failure(
                &engine.id,
                &Failure {
                    state: TriggerStart,
                    fence: Some(1),
                    message: "late".to_owned(),
                    retry_at: later,
                    actor: None,
                    cause: None,
                },
            )
            .await
            .expect("record_failure"),
    ];
    assert_eq!(
        stale,
        [
            Cas::Conflict(TriggerStart),
            Cas::Conflict(TriggerStart),
            Cas::Conflict(TriggerStart)
        ]
    );
    assert_eq!(get(store, &engine.id).await, taken_over);
    assert_eq!(events(store, &engine.id).await, history);

    // The current generation's writes apply, and a fenced transition keeps the generation.
    transition(
        store,
        &engine.id,
        Transition::new(TriggerStart, StartInProgress).fenced(2),
    )
    .await;
    assert_eq!(
        store
            .reschedule(
                &engine.id,
                &Reschedule::new(StartInProgress, Some(later)).fenced(2),
            )
            .await
            .expect("reschedule"),
        Cas::Done
    );
    let now = get(store, &engine.id).await;
    assert_eq!((now.state, now.generation), (StartInProgress, 2));
    assert_eq!(now.next_update_time, Some(later));

    // Unfenced writes (a user's) apply whatever the generation, and do not raise it.
    transition(
        store,
        &engine.id,
        Transition::new(StartInProgress, WaitToTerminate),
    )
    .await;
    assert_eq!(get(store, &engine.id).await.generation, 2);
    assert_eq!(
        store
            .all_states()
            .await
            .expect("all_states")
            .into_iter()
            .find(|(id, _, _)| id == &engine.id),
        Some((engine.id.clone(), WaitToTerminate, 2))
    );
}

pub async fn failures_are_counted_recorded_and_reset(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("failing")).await;
    transition(
        store,
        &engine.id,
        Transition::new(WaitToStart, TriggerStart).claiming(),
    )
    .await;
    let monitor = Actor::Monitor("m-1".to_owned());
    let before = now_ms();
    for n in 1..=2 {
        let retry_at = now_ms() + TimeDelta::seconds(n);
        let failure = Failure {
            state: TriggerStart,
            fence: Some(1),
            message: format!("the API refused ({n})"),
            retry_at,
            actor: Some(monitor.clone()),
            cause: Some(Cause::monitor("test")),
        };
        assert_eq!(
            store
                .record_failure(&engine.id, &failure)
                .await
                .expect("record_failure"),
            Cas::Done
        );
        let stored = get(store, &engine.id).await;
        assert_eq!(stored.state, TriggerStart);
        assert_eq!(stored.failures, n as u32);
        assert_eq!(stored.next_update_time, Some(retry_at));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failing = get(store, &engine.id).await;
    let since = failing
        .failing_since
        .expect("failing since the first failure");
    assert_between(since, before, now_ms(), "failing_since");
    // Each failure is an event naming the state, the message and the monitor.
    let recorded: Vec<_> = events(store, &engine.id)
        .await
        .into_iter()
        .filter(|e| e.from == Some(TriggerStart) && e.to == TriggerStart)
        .map(|e| (e.event_type, e.message, e.actor, e.cause))
        .collect();
    assert_eq!(
        recorded,
        (1..=2)
            .map(|n| (
                EventType::AttemptFailed,
                Some(format!("the API refused ({n})")),
                Some(monitor.clone()),
                Some(Cause::monitor("test"))
            ))
            .collect::<Vec<_>>()
    );
    // A failure for another state changes nothing.
    let wrong = Failure {
        state: Running,
        fence: None,
        message: "wrong".to_owned(),
        retry_at: now_ms(),
        actor: None,
        cause: None,
    };
    assert_eq!(
        store
            .record_failure(&engine.id, &wrong)
            .await
            .expect("record"),
        Cas::Conflict(TriggerStart)
    );
    assert_eq!(
        store
            .record_failure(&EngineId::generate(), &wrong)
            .await
            .expect("record"),
        Cas::NotFound
    );

    // A reschedule keeping failures keeps the count and since when; one that does not resets.
    let keep = Reschedule {
        keep_failures: true,
        ..Reschedule::new(TriggerStart, None).fenced(1)
    };
    assert_eq!(
        store
            .reschedule(&engine.id, &keep)
            .await
            .expect("reschedule"),
        Cas::Done
    );
    let kept = get(store, &engine.id).await;
    assert_eq!((kept.failures, kept.failing_since), (2, Some(since)));
    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(TriggerStart, None).fenced(1))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    let reset = get(store, &engine.id).await;
    assert_eq!((reset.failures, reset.failing_since), (0, None));

    // A transition resets them too.
    let again = Failure {
        state: TriggerStart,
        fence: Some(1),
        message: "once more".to_owned(),
        retry_at: now_ms(),
        actor: None,
        cause: None,
    };
    store
        .record_failure(&engine.id, &again)
        .await
        .expect("record");
    assert_eq!(get(store, &engine.id).await.failures, 1);
    // ... unless it keeps them (a claim retrying a failed step).
    transition(
        store,
        &engine.id,
        Transition::new(TriggerStart, TriggerStart)
            .claiming()
            .keeping_failures(),
    )
    .await;
    let retried = get(store, &engine.id).await;
    assert_eq!((retried.failures, retried.generation), (1, 2));
    assert!(retried.failing_since.is_some());
    transition(
        store,
        &engine.id,
        Transition::new(TriggerStart, StartInProgress).fenced(2),
    )
    .await;
    let moved = get(store, &engine.id).await;
    assert_eq!((moved.failures, moved.failing_since), (0, None));
}

pub async fn reschedule_restores_a_lost_endpoint(store: Arc<dyn Store>) {
    let store = &*store;
    let engine = insert(store, sample_engine("endpoint")).await;
    transition(store, &engine.id, Transition::new(WaitToStart, Running)).await;
    assert_eq!(get(store, &engine.id).await.endpoint, None);
    let found = Reschedule {
        endpoint: Some("sc://127.0.0.1:15555".to_owned()),
        ..Reschedule::new(Running, None)
    };
    assert_eq!(
        store
            .reschedule(&engine.id, &found)
            .await
            .expect("reschedule"),
        Cas::Done
    );
    assert_eq!(
        get(store, &engine.id).await.endpoint.as_deref(),
        Some("sc://127.0.0.1:15555")
    );
    // Without one, the endpoint is kept.
    assert_eq!(
        store
            .reschedule(&engine.id, &Reschedule::new(Running, None))
            .await
            .expect("reschedule"),
        Cas::Done
    );
    assert_eq!(
        get(store, &engine.id).await.endpoint.as_deref(),
        Some("sc://127.0.0.1:15555")
    );
}

/// A warm engine of `pool` as a monitor makes one: owned by no user, named after its pool, with
/// no idle timeout and its own secret.
pub fn sample_warm_engine(pool: &str) -> Engine {
    Engine {
        name: EngineName::parse(&format!("warm-{pool}")).expect("a valid engine name"),
        owner: String::new(),
        idle_timeout_minutes: 0,
        secret: Some(EngineSecret::generate()),
        pool: Some(pool.to_owned()),
        ..sample_engine("warm")
    }
}

fn refiller() -> Actor {
    Actor::Monitor("refiller".to_owned())
}

/// Inserts a warm engine of `pool` that the pool has room for.
async fn insert_warm(store: &dyn Store, pool: &str) -> Engine {
    let engine = sample_warm_engine(pool);
    assert!(
        store
            .insert_warm(&engine, 64, &refiller())
            .await
            .expect("insert_warm"),
        "pool {pool} refused a warm engine below its size"
    );
    engine
}

/// Moves a warm engine from `WaitToStart` to `to` as a monitor starting it would.
async fn start_warm(store: &dyn Store, id: &EngineId, to: EngineState) {
    let steps = [
        Transition::new(WaitToStart, TriggerStart).claiming(),
        Transition::new(TriggerStart, StartInProgress).fenced(1),
        Transition::new(StartInProgress, Running)
            .fenced(1)
            .with_endpoint(Some(format!("sc://{id}.warm:15002"))),
    ];
    for step in steps {
        if step.from == to {
            return;
        }
        transition(store, id, step.by(refiller())).await;
    }
}

/// A `Running` warm engine of `pool`, with an endpoint, as the store now holds it.
async fn running_warm(store: &dyn Store, pool: &str) -> Engine {
    let engine = insert_warm(store, pool).await;
    start_warm(store, &engine.id, Running).await;
    let running = get(store, &engine.id).await;
    assert_eq!(running.state, Running);
    assert!(running.endpoint.is_some());
    running
}

/// A create of `owner`'s taking an engine of `pool`, without quotas.
fn take_by(pool: &str, owner: &str) -> Take {
    Take {
        pool: pool.to_owned(),
        owner: owner.to_owned(),
        name: EngineName::parse(&format!("{owner}-engine")).expect("a valid engine name"),
        secret: EngineSecret::generate(),
        idle_timeout_minutes: 30,
        limits: Limits::default(),
    }
}

/// The warm engines of `pool`, oldest first.
async fn warm_of(store: &dyn Store, pool: &str) -> Vec<Engine> {
    store
        .warm_engines()
        .await
        .expect("warm_engines")
        .into_iter()
        .filter(|e| e.pool.as_deref() == Some(pool))
        .collect()
}

pub async fn warm_inserts_fill_a_pool_to_its_size(store: Arc<dyn Store>) {
    let store = &*store;
    let size = WARM_STATES.len() as u32;
    let monitor = Actor::Monitor("m-1".to_owned());

    // Stored whole, out of every user's hands, its first event the monitor's refill.
    let first = sample_warm_engine("small");
    assert!(store
        .insert_warm(&first, size, &monitor)
        .await
        .expect("insert_warm"));
    let got = get(store, &first.id).await;
    assert_eq!(got, first);
    assert_eq!(
        (got.pool.as_deref(), got.owner.as_str()),
        (Some("small"), "")
    );
    let history = events(store, &first.id).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].event_type, history[0].from, history[0].to),
        (EventType::Created, None, WaitToStart)
    );
    assert_eq!(history[0].actor, Some(monitor.clone()));
    assert_eq!(history[0].cause, Some(Cause::monitor("pool_refill")));

    // An ended engine of the pool does not count.
    transition(store, &first.id, Transition::new(WaitToStart, Terminated)).await;
    // Engines starting or serving count, whatever their step.
    let mut stored = vec![first.id.clone()];
    for state in WARM_STATES {
        let engine = sample_warm_engine("small");
        assert!(
            store
                .insert_warm(&engine, size, &monitor)
                .await
                .expect("insert_warm"),
            "refused below the size, with {} engines counted",
            stored.len() - 1
        );
        start_warm(store, &engine.id, state).await;
        assert_eq!(get(store, &engine.id).await.state, state);
        stored.push(engine.id);
    }

    // At the size: refused, and nothing stored.
    let extra = sample_warm_engine("small");
    assert!(!store
        .insert_warm(&extra, size, &monitor)
        .await
        .expect("insert_warm"));
    assert_eq!(store.get(&extra.id).await.expect("get"), None);
    assert_eq!(store.events(&extra.id).await.expect("events"), None);
    assert_eq!(ids(&warm_of(store, "small").await), stored);

    // Another pool has its own size: this one's engines do not count there, nor its there.
    let other = sample_warm_engine("other");
    assert!(store
        .insert_warm(&other, 1, &monitor)
        .await
        .expect("insert_warm"));
    assert!(!store
        .insert_warm(&sample_warm_engine("other"), 1, &monitor)
        .await
        .expect("insert_warm"));
    assert!(!store
        .insert_warm(&extra, size, &monitor)
        .await
        .expect("insert_warm"));

    // A serving engine being stopped leaves the count: there is room for one more.
    let running = stored.last().expect("an engine").clone();
    transition(store, &running, Transition::new(Running, WaitToTerminate)).await;
    assert!(store
        .insert_warm(&extra, size, &monitor)
        .await
        .expect("insert_warm"));
    stored.push(extra.id.clone());
    assert!(!store
        .insert_warm(&sample_warm_engine("small"), size, &monitor)
        .await
        .expect("insert_warm"));

    // A pool of size 0 takes nothing.
    assert!(!store
        .insert_warm(&sample_warm_engine("empty"), 0, &monitor)
        .await
        .expect("insert_warm"));

    // Every engine in a pool, oldest first; no user's listing of its own has them.
    let warm = store.warm_engines().await.expect("warm_engines");
    let mut expected = stored.clone();
    expected.insert(stored.len() - 1, other.id.clone());
    assert_eq!(ids(&warm), expected);
    let alice = store
        .list(&ListQuery {
            owner: Some("alice".to_owned()),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(alice.engines.is_empty());
}

pub async fn warm_inserts_never_overfill_a_pool(store: Arc<dyn Store>) {
    warm_inserts_race(&[store]).await;
}

/// 16 warm inserts of one pool of size 3 at once, spread over `stores` (one store, or several
/// on one database as several processes would be): exactly 3 are stored.
pub async fn warm_inserts_race(stores: &[Arc<dyn Store>]) {
    const TASKS: usize = 16;
    const SIZE: u32 = 3;
    let store = &*stores[0];
    // Another pool's engines and this pool's ended ones take no room.
    insert_warm(store, "elsewhere").await;
    let ended = insert_warm(store, "raced").await;
    transition(store, &ended.id, Transition::new(WaitToStart, Terminated)).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, barrier) = (Arc::clone(&stores[i % stores.len()]), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let engine = sample_warm_engine("raced");
            barrier.wait().await;
            let stored = store
                .insert_warm(&engine, SIZE, &refiller())
                .await
                .expect("insert_warm");
            (engine.id, stored)
        }));
    }
    let mut stored = HashSet::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (id, true) => {
                stored.insert(id);
            }
            (id, false) => refused.push(id),
        }
    }
    assert_eq!(stored.len(), SIZE as usize, "inserts that reported success");
    let counted: HashSet<EngineId> = warm_of(store, "raced")
        .await
        .into_iter()
        .filter(|e| e.state == WaitToStart)
        .map(|e| e.id)
        .collect();
    assert_eq!(
        counted, stored,
        "the pool holds exactly the inserts that won"
    );
    for id in refused {
        assert_eq!(store.get(&id).await.expect("get"), None, "refused {id}");
    }
    assert_eq!(warm_of(store, "elsewhere").await.len(), 1);
}

pub async fn take_warm_gives_a_running_warm_engine_to_its_taker(store: Arc<dyn Store>) {
    let store = &*store;
    // Nothing to take: warm engines still starting, and a Running one of another pool.
    let waiting = insert_warm(store, "pool-a").await;
    let starting = insert_warm(store, "pool-a").await;
    start_warm(store, &starting.id, StartInProgress).await;
    let claimed = insert_warm(store, "pool-a").await;
    start_warm(store, &claimed.id, TriggerStart).await;
    let elsewhere = running_warm(store, "pool-b").await;
    let before = store.warm_engines().await.expect("warm_engines");
    assert_eq!(before.len(), 4);
    let history: Vec<Vec<EngineEvent>> = {
        let mut all = Vec::new();
        for engine in &before {
            all.push(events(store, &engine.id).await);
        }
        all
    };
    assert_eq!(
        store
            .take_warm(&take_by("pool-a", "bob"))
            .await
            .expect("take_warm"),
        None
    );
    assert_eq!(
        store
            .take_warm(&take_by("pool-none", "bob"))
            .await
            .expect("take_warm"),
        None
    );
    assert_eq!(store.warm_engines().await.expect("warm_engines"), before);
    for (engine, history) in before.iter().zip(&history) {
        assert_eq!(&events(store, &engine.id).await, history);
    }

    // One Running: taken, with the take's owner, name, idle timeout and secret, the secret it
    // was started with kept for the handover, still Running at its endpoint.
    let warm = running_warm(store, "pool-a").await;
    store
        .save_logs(&warm.id, "warm driver log\n")
        .await
        .expect("save logs");
    store
        .report_activity(
            "proxy-a",
            &[ActivityReport {
                engine: warm.id.clone(),
                in_flight: 1,
                last_active: Some(now_ms()),
            }],
        )
        .await
        .expect("report");
    let take = take_by("pool-a", "bob");
    let started = now_ms();
    let taken = store
        .take_warm(&take)
        .await
        .expect("take_warm")
        .expect("a Running warm engine is taken");
    let after = Utc::now();
    assert_eq!(taken.id, warm.id);
    assert_eq!(taken.owner, "bob");
    assert_eq!(taken.name, take.name);
    assert_eq!(taken.idle_timeout_minutes, 30);
    assert_eq!(taken.pool, None);
    assert_eq!(taken.secret, Some(take.secret.clone()));
    assert_ne!(taken.secret, warm.secret);
    assert_eq!(taken.handover_secret, warm.secret);
    assert_eq!(taken.state, Running);
    assert_eq!(taken.endpoint, warm.endpoint);
    assert_eq!(
        (&taken.version, &taken.configs, taken.engine_type),
        (&warm.version, &warm.configs, warm.engine_type)
    );
    assert_between(
        taken.create_time,
        started,
        after,
        "the taken engine's create_time",
    );
    assert_eq!(get(store, &warm.id).await, taken);

    // Out of the pool; its warm life gone: one event, the user's create, naming the pool.
    assert!(!ids(&store.warm_engines().await.expect("warm_engines")).contains(&warm.id));
    let history = events(store, &warm.id).await;
    assert_eq!(history.len(), 1, "{history:?}");
    let event = &history[0];
    assert_eq!(
        (event.event_type, event.from, event.to),
        (EventType::Created, None, Running)
    );
    assert_eq!(event.actor, Some(Actor::User("bob".to_owned())));
    assert_eq!(event.cause, Some(Cause::user("create")));
    let message = event.message.as_deref().unwrap_or_default();
    assert!(message.contains("pool-a"), "{message:?}");
    assert_eq!(store.logs(&warm.id).await.expect("logs"), None);
    assert_eq!(
        store
            .activity(&warm.id, now_ms() - TimeDelta::hours(1))
            .await
            .expect("activity"),
        super::Activity::default()
    );
    let bobs = store
        .list(&ListQuery {
            owner: Some("bob".to_owned()),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(&bobs.engines), vec![warm.id.clone()]);

    // Taken once only; the engines not Running, and another pool's, are never taken.
    assert_eq!(
        store
            .take_warm(&take_by("pool-a", "carol"))
            .await
            .expect("take_warm"),
        None
    );
    assert_eq!(get(store, &warm.id).await.owner, "bob");
    assert_eq!(store.warm_engines().await.expect("warm_engines"), before);
    for id in [&waiting.id, &starting.id, &claimed.id, &elsewhere.id] {
        assert_eq!(get(store, id).await.owner, "");
    }
}

pub async fn take_warm_respects_quotas(store: Arc<dyn Store>) {
    let store = &*store;
    let warm = running_warm(store, "pool").await;
    let history = events(store, &warm.id).await;
    let mine = insert(store, owned_by("alice", Terminated)).await;

    // At max_engines: refused, and the warm engine stays warm, unchanged.
    let at_total = Take {
        limits: Limits {
            max_engines: Some(1),
            max_active_engines: None,
        },
        ..take_by("pool", "alice")
    };
    match store.take_warm(&at_total).await {
        Err(StoreError::OverQuota(exceeded)) => {
            assert_eq!((exceeded.limit, exceeded.value), ("max_engines", 1))
        }
        other => panic!("a take beyond max_engines gave {other:?}"),
    }
    assert_eq!(get(store, &warm.id).await, warm);
    assert_eq!(events(store, &warm.id).await, history);
    assert_eq!(ids(&warm_of(store, "pool").await), vec![warm.id.clone()]);

    // At max_active_engines: refused too (the taken engine is Running).
    transition(store, &mine.id, Transition::new(Terminated, Running)).await;
    let at_active = Take {
        limits: Limits {
            max_engines: Some(2),
            max_active_engines: Some(1),
        },
        ..take_by("pool", "alice")
    };
    match store.take_warm(&at_active).await {
        Err(StoreError::OverQuota(exceeded)) => {
            assert_eq!((exceeded.limit, exceeded.value), ("max_active_engines", 1))
        }
        other => panic!("a take beyond max_active_engines gave {other:?}"),
    }
    assert_eq!(get(store, &warm.id).await, warm);
    assert_eq!(ids(&warm_of(store, "pool").await), vec![warm.id.clone()]);

    // Within the limits: taken. Other owners' engines (and warm ones) count for nobody.
    let within = Take {
        limits: Limits {
            max_engines: Some(2),
            max_active_engines: Some(2),
        },
        ..take_by("pool", "alice")
    };
    let taken = store
        .take_warm(&within)
        .await
        .expect("take_warm")
        .expect("taken within the limits");
    assert_eq!((taken.id, taken.owner.as_str()), (warm.id, "alice"));
}

pub async fn concurrent_takes_give_each_warm_engine_once(store: Arc<dyn Store>) {
    warm_takes_race(&[store]).await;
}

/// 10 takes of one pool with 3 Running warm engines at once, by different owners, spread over
/// `stores`: exactly 3 succeed, each with its own engine, which the store gives to that taker.
pub async fn warm_takes_race(stores: &[Arc<dyn Store>]) {
    const TASKS: usize = 10;
    let store = &*stores[0];
    let mut running = HashSet::new();
    for _ in 0..3 {
        running.insert(running_warm(store, "raced").await.id);
    }
    let starting = insert_warm(store, "raced").await;
    let elsewhere = running_warm(store, "elsewhere").await;

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (store, barrier) = (Arc::clone(&stores[i % stores.len()]), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let take = take_by("raced", &format!("owner-{i}"));
            barrier.wait().await;
            let taken = store.take_warm(&take).await.expect("take_warm");
            (take, taken)
        }));
    }
    let mut taken = Vec::new();
    for task in tasks {
        if let (take, Some(engine)) = task.await.expect("task") {
            taken.push((take, engine));
        }
    }
    assert_eq!(taken.len(), 3, "takes that got an engine");
    let got: HashSet<EngineId> = taken.iter().map(|(_, e)| e.id.clone()).collect();
    assert_eq!(got, running, "each Running warm engine went to one take");
    for (take, engine) in &taken {
        let stored = get(store, &engine.id).await;
        assert_eq!(&stored, engine, "the store holds what the take returned");
        assert_eq!(
            (stored.owner.as_str(), &stored.name, stored.pool.as_deref()),
            (take.owner.as_str(), &take.name, None)
        );
        assert_eq!(stored.secret, Some(take.secret.clone()));
        assert_eq!(events(store, &engine.id).await.len(), 1);
    }
    assert_eq!(
        ids(&store.warm_engines().await.expect("warm_engines")),
        vec![starting.id, elsewhere.id]
    );
}

pub async fn only_warm_transitions_skip_taken_engines(store: Arc<dyn Store>) {
    let store = &*store;
    // A warm engine: applies.
    let warm = insert_warm(store, "pool").await;
    transition(
        store,
        &warm.id,
        Transition::new(WaitToStart, Terminated).only_warm(),
    )
    .await;
    assert_eq!(get(store, &warm.id).await.state, Terminated);
    // An ended warm engine is removed only while warm.
    assert_eq!(
        store
            .remove_warm(&warm.id, Terminated)
            .await
            .expect("remove_warm"),
        Cas::Done
    );
    assert_eq!(store.get(&warm.id).await.expect("get"), None);

    // A taken engine (and one never warm): conflict, nothing changed.
    let warm = running_warm(store, "pool").await;
    store
        .take_warm(&take_by("pool", "bob"))
        .await
        .expect("take_warm")
        .expect("taken");
    let cold = insert(store, owned_by("alice", Running)).await;
    for id in [&warm.id, &cold.id] {
        let engine = get(store, id).await;
        let history = events(store, id).await;
        let stop = Transition::new(Running, WaitToTerminate)
            .only_warm()
            .by(refiller())
            .with_message("pool shrinks");
        assert_eq!(
            store.update_state(id, &stop).await.expect("update_state"),
            Cas::Conflict(Running)
        );
        assert_eq!(get(store, id).await, engine);
        assert_eq!(events(store, id).await, history);
    }
    // Without only_warm, the same change applies to the taken engine.
    transition(store, &warm.id, Transition::new(Running, WaitToTerminate)).await;
}

pub async fn a_new_secret_ends_the_handover(store: Arc<dyn Store>) {
    let store = &*store;
    let warm = running_warm(store, "pool").await;
    let take = take_by("pool", "bob");
    store
        .take_warm(&take)
        .await
        .expect("take_warm")
        .expect("taken");
    // Transitions without a secret keep both: the engine still runs with the handover to do.
    let mut state = Running;
    for next in [
        WaitToTerminate,
        TriggerTermination,
        TerminateInProgress,
        Terminated,
    ] {
        transition(store, &warm.id, Transition::new(state, next)).await;
        state = next;
        let engine = get(store, &warm.id).await;
        assert_eq!(engine.secret, Some(take.secret.clone()), "in {state}");
        assert_eq!(engine.handover_secret, warm.secret, "in {state}");
    }
    // Ended, but taken: a monitor clearing out ended warm engines leaves it.
    let ended = get(store, &warm.id).await;
    assert_eq!(
        store
            .remove_warm(&warm.id, Terminated)
            .await
            .expect("remove_warm"),
        Cas::Conflict(Terminated)
    );
    assert_eq!(get(store, &warm.id).await, ended);
    // A restart's new secret: the old one is no longer handed over.
    let fresh = EngineSecret::generate();
    transition(
        store,
        &warm.id,
        Transition::new(Terminated, WaitToStart).with_secret(fresh.clone()),
    )
    .await;
    let engine = get(store, &warm.id).await;
    assert_eq!(engine.secret, Some(fresh));
    assert_eq!(engine.handover_secret, None);
}
