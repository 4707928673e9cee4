//! The SQLite store against the store conformance suite, plus what only a file database shows.

use std::sync::Arc;

use rucat::engine::EngineState;
use rucat::store::conformance::sample_engine;
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Cas, Store, StoreError, Transition};
use tempfile::TempDir;

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("data/rucat.db").display())
}

/// A fresh store in its own temporary directory (which goes when the guard is dropped).
async fn fresh() -> (Arc<dyn Store>, TempDir) {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open store");
    (Arc::new(store), dir)
}

rucat::store_conformance_tests!(fresh);

#[tokio::test]
async fn reopening_keeps_the_data() {
    let dir = TempDir::new().expect("temp dir");
    let engine = sample_engine("survivor");
    {
        let store = SqliteStore::open(&url(&dir)).await.expect("open store");
        store.insert(&engine).await.expect("insert");
        let t = Transition::new(EngineState::WaitToStart, EngineState::TriggerStart)
            .with_message("claimed");
        assert_eq!(
            store.update_state(&engine.id, &t).await.expect("update"),
            Cas::Done
        );
        store
            .save_logs(&engine.id, "driver log")
            .await
            .expect("save logs");
        store.close().await;
    }
    // Migrations run again, harmlessly, and everything is still there.
    for _ in 0..2 {
        let store = SqliteStore::open(&url(&dir)).await.expect("reopen store");
        let got = store.get(&engine.id).await.expect("get").expect("engine");
        assert_eq!(got.state, EngineState::TriggerStart);
        assert_eq!(got.create_time, engine.create_time);
        let events = store
            .events(&engine.id)
            .await
            .expect("events")
            .expect("events");
        assert_eq!(events.len(), 2);
        assert_eq!(
            store.logs(&engine.id).await.expect("logs").as_deref(),
            Some("driver log")
        );
        store.close().await;
    }
}

#[tokio::test]
async fn two_stores_on_one_file_share_compare_and_swap() {
    let dir = TempDir::new().expect("temp dir");
    let a = SqliteStore::open(&url(&dir)).await.expect("open store");
    let b = SqliteStore::open(&url(&dir)).await.expect("open store");
    let engine = sample_engine("shared");
    a.insert(&engine).await.expect("insert");
    let t = Transition::new(EngineState::WaitToStart, EngineState::TriggerStart);
    assert_eq!(
        b.update_state(&engine.id, &t).await.expect("update"),
        Cas::Done
    );
    assert_eq!(
        a.update_state(&engine.id, &t).await.expect("update"),
        Cas::Conflict(EngineState::TriggerStart)
    );
}

/// Warm inserts and takes of one pool through two stores on one file (as two processes would
/// make them): the pool is never overfilled, and each warm engine goes to one take.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_pools_hold_across_processes() {
    let (a, b) = (
        TempDir::new().expect("temp dir"),
        TempDir::new().expect("temp dir"),
    );
    let two = |dir: &TempDir| {
        let url = url(dir);
        async move {
            let mut stores: Vec<Arc<dyn Store>> = Vec::new();
            for _ in 0..2 {
                stores.push(Arc::new(SqliteStore::open(&url).await.expect("open store")));
            }
            stores
        }
    };
    rucat::store::conformance::warm_inserts_race(&two(&a).await).await;
    rucat::store::conformance::warm_takes_race(&two(&b).await).await;
}

#[tokio::test]
async fn reads_see_every_write_to_the_file_at_once() {
    let dir = TempDir::new().expect("temp dir");
    let reader = SqliteStore::open(&url(&dir)).await.expect("open store");
    let writer = SqliteStore::open(&url(&dir)).await.expect("open store");
    let engine = sample_engine("watched");
    assert_eq!(reader.get(&engine.id).await.expect("get"), None);
    writer.insert(&engine).await.expect("insert");
    assert_eq!(
        reader.get(&engine.id).await.expect("get").map(|e| e.state),
        Some(EngineState::WaitToStart)
    );

    // Another store on the file (as another process would be), and a plain connection.
    let mut state = EngineState::WaitToStart;
    for next in [EngineState::TriggerStart, EngineState::StartInProgress] {
        let t = Transition::new(state, next);
        assert_eq!(
            writer.update_state(&engine.id, &t).await.expect("update"),
            Cas::Done
        );
        state = next;
        let seen = reader.get(&engine.id).await.expect("get").expect("engine");
        assert_eq!(seen.state, state);
    }
    let pool = sqlx::SqlitePool::connect(&url(&dir))
        .await
        .expect("connect");
    sqlx::query("UPDATE engines SET endpoint = 'sc://elsewhere:1' WHERE id = ?")
        .bind(engine.id.as_str())
        .execute(&pool)
        .await
        .expect("update behind the store's back");
    let seen = reader.get(&engine.id).await.expect("get").expect("engine");
    assert_eq!(seen.endpoint.as_deref(), Some("sc://elsewhere:1"));
    sqlx::query("DELETE FROM engines WHERE id = ?")
        .bind(engine.id.as_str())
        .execute(&pool)
        .await
        .expect("delete behind the store's back");
    pool.close().await;
    assert_eq!(reader.get(&engine.id).await.expect("get"), None);
}

#[tokio::test]
async fn malformed_rows_are_reported_not_panicked_on() {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open store");
    let bad_state = sample_engine("bad-state");
    let bad_configs = sample_engine("bad-configs");
    store.insert(&bad_state).await.expect("insert");
    store.insert(&bad_configs).await.expect("insert");

    // Damage the rows behind the store's back.
    let pool = sqlx::SqlitePool::connect(&url(&dir))
        .await
        .expect("connect");
    sqlx::query("UPDATE engines SET state = 'Exploded' WHERE id = ?")
        .bind(bad_state.id.as_str())
        .execute(&pool)
        .await
        .expect("damage state");
    sqlx::query("UPDATE engines SET configs = '{not json' WHERE id = ?")
        .bind(bad_configs.id.as_str())
        .execute(&pool)
        .await
        .expect("damage configs");
    pool.close().await;

    for engine in [&bad_state, &bad_configs] {
        match store.get(&engine.id).await {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains(engine.id.as_str()), "{message}")
            }
            other => panic!("a damaged row gave {other:?}"),
        }
    }
    let t = Transition::new(EngineState::Running, EngineState::WaitToTerminate);
    assert!(matches!(
        store.update_state(&bad_state.id, &t).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.all_states().await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.list(&Default::default()).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn unusable_locations_are_refused() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    let url = format!("sqlite://{}", file.join("rucat.db").display());
    assert!(matches!(
        SqliteStore::open(&url).await,
        Err(StoreError::Open { .. })
    ));
    assert!(matches!(
        SqliteStore::open("sqlite://").await,
        Err(StoreError::Open { .. })
    ));
}
