//! The PostgreSQL store against the store conformance suite, plus what only a shared server
//! shows: concurrent migrations, wake-ups pushed between processes, a lost listener connection.

use std::sync::Arc;
use std::time::Duration;

use rucat::engine::{Engine, EngineState};
use rucat::store::conformance::{now_ms, sample_engine};
use rucat::store::postgres::{PostgresStore, ScratchDatabase};
use rucat::store::{Cas, Store, StoreError, StoreOptions, Transition};

use crate::common;

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, &StoreOptions::default())
        .await
        .expect("open store")
}

/// A fresh store on its own database (dropped with the guard).
async fn fresh() -> (Arc<dyn Store>, ScratchDatabase) {
    let db = common::scratch_postgres("conformance").await;
    let store = open(db.url()).await;
    (Arc::new(store), db)
}

rucat::store_conformance_tests!(fresh);

/// Warm inserts and takes of one pool through two stores on one database (as two processes
/// would make them): the pool is never overfilled, and each warm engine goes to one take.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_pools_hold_across_processes() {
    let db = common::scratch_postgres("pools").await;
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(open(db.url()).await),
        Arc::new(open(db.url()).await),
    ];
    rucat::store::conformance::warm_inserts_race(&stores).await;
    let db = common::scratch_postgres("takes").await;
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(open(db.url()).await),
        Arc::new(open(db.url()).await),
    ];
    rucat::store::conformance::warm_takes_race(&stores).await;
}

async fn sql(url: &str, statement: &str) -> u64 {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let done = sqlx::query(statement)
        .execute(&pool)
        .await
        .expect(statement);
    pool.close().await;
    done.rows_affected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_starting_together_migrate_once() {
    let db = common::scratch_postgres("migrate").await;
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url().to_owned();
            tokio::spawn(async move { PostgresStore::open(&url, &StoreOptions::default()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("task").expect("every open succeeds"));
    }
    let pool = sqlx::PgPool::connect(db.url()).await.expect("connect");
    // Each migration once: as many rows as migration files, none twice.
    let (applied, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT version) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .expect("migrations table");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations")
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
        })
        .count();
    assert_eq!((applied, distinct), (files as i64, files as i64));
    pool.close().await;

    // They all see one another's writes.
    let engine = sample_engine("shared");
    stores[0].insert(&engine).await.expect("insert");
    for store in &stores {
        assert!(store.get(&engine.id).await.expect("get").is_some());
    }
    for store in &stores {
        store.close().await;
    }
}

fn due(name: &str) -> Engine {
    Engine {
        next_update_time: Some(now_ms()),
        ..sample_engine(name)
    }
}

/// Waits until `listeners` sessions of the database `db` listen for wake-ups (their last
/// statement was the `LISTEN`), instead of guessing how long subscribing takes.
async fn until_listening(db: &ScratchDatabase, listeners: i64) {
    let pool = sqlx::PgPool::connect(&common::postgres_admin_url())
        .await
        .expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN %'",
        )
        .bind(db.name())
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        if listening >= listeners {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{listening} of {listeners} stores listening after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.close().await;
}

/// Waits up to `within` for `store`'s wake-ups while `write` runs.
async fn wakes(store: &dyn Store, within: Duration, write: impl std::future::Future) -> bool {
    let wake_ups = store.wake_ups();
    let notified = wake_ups.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    write.await;
    tokio::time::timeout(within, notified).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_in_one_process_wakes_the_monitors_of_another() {
    let db = common::scratch_postgres("notify").await;
    let writer = open(db.url()).await;
    let listener = open(db.url()).await;
    let deaf = PostgresStore::open(
        db.url(),
        &StoreOptions {
            push_wake_ups: false,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open store");
    until_listening(&db, 1).await;

    let engine = due("due");
    assert!(
        wakes(&listener, Duration::from_secs(2), writer.insert(&engine)).await,
        "no wake-up after another store inserted a due engine"
    );
    let t = Transition::new(EngineState::WaitToStart, EngineState::TriggerStart).due_at(now_ms());
    assert!(
        wakes(&listener, Duration::from_secs(2), async {
            assert_eq!(
                writer.update_state(&engine.id, &t).await.expect("cas"),
                Cas::Done
            );
        })
        .await,
        "no wake-up after another store made an engine due"
    );
    // Without LISTEN, only this process's own writes wake it: the same write that reached the
    // listening store (so it was delivered) does not wake the deaf one.
    let deaf_wake_ups = deaf.wake_ups();
    let deaf_notified = deaf_wake_ups.notified();
    tokio::pin!(deaf_notified);
    deaf_notified.as_mut().enable();
    let other = due("unheard");
    assert!(wakes(&listener, Duration::from_secs(10), writer.insert(&other)).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), deaf_notified)
            .await
            .is_err(),
        "a store without LISTEN was woken by another's write"
    );

    // Writes that make nothing due now announce nothing: a marker notified after such a write
    // is the first notification on the channel (notifications arrive in commit order).
    let mut channel = sqlx::postgres::PgListener::connect(db.url())
        .await
        .expect("listener");
    channel
        .listen(rucat::store::postgres::CHANNEL)
        .await
        .expect("listen");
    let later = Engine {
        next_update_time: Some(now_ms() + chrono::TimeDelta::hours(1)),
        ..sample_engine("later")
    };
    writer.insert(&later).await.expect("insert");
    let t = Transition::new(EngineState::WaitToStart, EngineState::TriggerStart)
        .due_at(now_ms() + chrono::TimeDelta::hours(1));
    assert_eq!(
        writer.update_state(&later.id, &t).await.expect("cas"),
        Cas::Done
    );
    sql(
        db.url(),
        &format!(
            "SELECT pg_notify('{}', 'marker')",
            rucat::store::postgres::CHANNEL
        ),
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(10), channel.recv())
        .await
        .expect("the marker arrives")
        .expect("notification");
    assert_eq!(
        first.payload(),
        "marker",
        "a write that made nothing due announced it"
    );
    for store in [writer, listener, deaf] {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_listener_comes_back_after_its_connection_is_killed() {
    let db = common::scratch_postgres("relisten").await;
    let writer = open(db.url()).await;
    let listener = open(db.url()).await;
    until_listening(&db, 1).await;

    // Kill every connection to the database, as a server restart would.
    let killed = sql(
        &common::postgres_admin_url(),
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name()
        ),
    )
    .await;
    assert!(killed >= 2, "killed {killed} connections");

    // The listener reconnects by itself; a due engine written afterwards wakes it.
    let mut woke = false;
    for attempt in 0..20 {
        let engine = due(&format!("after-kill-{attempt}"));
        // The writer's pooled connections were killed too: the first use may fail.
        let write = async {
            let _ = writer.insert(&engine).await;
        };
        if wakes(&listener, Duration::from_millis(500), write).await {
            woke = true;
            break;
        }
    }
    assert!(woke, "the listener never came back");
    // And the store answers again.
    listener.ping().await.expect("ping after the kill");
    writer.close().await;
    listener.close().await;
}

#[tokio::test]
async fn malformed_rows_are_reported_not_panicked_on() {
    let db = common::scratch_postgres("corrupt").await;
    let store = open(db.url()).await;
    let engine = sample_engine("bad-state");
    store.insert(&engine).await.expect("insert");
    sql(
        db.url(),
        &format!(
            "UPDATE engines SET state = 'Exploded' WHERE id = '{}'",
            engine.id
        ),
    )
    .await;
    match store.get(&engine.id).await {
        Err(StoreError::Corrupt(message)) => assert!(message.contains(engine.id.as_str())),
        other => panic!("a damaged row gave {other:?}"),
    }
    store.close().await;
}

#[tokio::test]
async fn unreachable_and_unknown_urls_are_refused_with_the_url() {
    let options = StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    };
    match rucat::store::open("postgres://rucat:secret@127.0.0.1:1/none", &options).await {
        Err(StoreError::Unreachable { url, reason }) => {
            assert_eq!(url, "postgres://rucat:***@127.0.0.1:1/none");
            assert!(!reason.contains("secret"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
    match rucat::store::open("mysql://h/db", &options).await {
        Err(StoreError::Open { reason, .. }) => assert!(reason.contains("postgres://"), "{reason}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a MySQL URL"),
    }
}
