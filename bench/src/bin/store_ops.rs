//! `store_ops`: the store's two hot operations on SQLite and on PostgreSQL.
//!
//! 1. **CAS updates/s**: `writers` tasks (1, then 8), each owning its own engines, loop the legal
//!    pair `Running → WaitToTerminate → Running` through `Store::update_state` for `--secs`
//!    seconds after a 1 s warm-up; `--rounds` rounds, the median reported. Each CAS is one
//!    transaction: the conditional `UPDATE`, one event row and the trim of the event history.
//! 2. **`list_due` scaling**: 50 due engines inserted through the store, then filler engines
//!    (half with nothing due, half due in an hour) loaded by bulk SQL up to 1k, 10k and 100k
//!    engines in all; at each size `list_due(now, 256)` is timed `--calls` times.
//!
//! SQLite: a file in a temporary directory (WAL). PostgreSQL: a fresh database on
//! `RUCAT_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), dropped after.
//!
//! Flags: `--secs S` (5), `--rounds N` (3), `--calls N` (200).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rucat::engine::{Engine, EngineState};
use rucat::store::conformance::sample_engine;
use rucat::store::postgres::{PostgresStore, ScratchDatabase};
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Store, StoreOptions, Transition};
use rucat_bench::{flag, machine_line, median, ms, percentile, print_table};

const DUE: usize = 50;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn admin_url() -> String {
    std::env::var("RUCAT_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// What keeps a fresh store's data alive (dropped: removed).
#[allow(dead_code)]
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(ScratchDatabase),
}

async fn fresh(kind: &str) -> (Arc<dyn Store>, Backend, String) {
    if kind == "SQLite" {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
        let store = SqliteStore::open(&url).await.expect("open SQLite");
        (Arc::new(store), Backend::Sqlite(dir), url)
    } else {
        let db = ScratchDatabase::create(&admin_url(), "bench")
            .await
            .expect("PostgreSQL is needed: set RUCAT_TEST_POSTGRES_URL");
        let url = db.url().to_owned();
        let options = StoreOptions {
            max_connections: Some(16),
            ..StoreOptions::default()
        };
        let store = PostgresStore::open(&url, &options)
            .await
            .expect("open PostgreSQL");
        (Arc::new(store), Backend::Postgres(db), url)
    }
}

async fn cas_rate(store: &Arc<dyn Store>, writers: usize, secs: u64) -> f64 {
    let mut engines = Vec::new();
    for n in 0..writers {
        let engine = Engine {
            state: EngineState::Running,
            ..sample_engine(&format!("w{n}"))
        };
        store.insert(&engine).await.expect("insert");
        engines.push(engine);
    }
    let run = |duration: Duration| {
        let tasks: Vec<_> = engines
            .iter()
            .map(|engine| {
                let (store, id) = (Arc::clone(store), engine.id.clone());
                tokio::spawn(async move {
                    let stop = Instant::now() + duration;
                    let there = Transition::new(EngineState::Running, EngineState::WaitToTerminate);
                    let back = Transition::new(EngineState::WaitToTerminate, EngineState::Running);
                    let mut done = 0_u64;
                    while Instant::now() < stop {
                        for t in [&there, &back] {
                            let cas = store.update_state(&id, t).await.expect("update_state");
                            assert_eq!(cas, rucat::store::Cas::Done, "the writer owns its engine");
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect::<Vec<_>>();
        async move {
            let started = Instant::now();
            let mut total = 0;
            for task in tasks {
                total += task.await.expect("writer");
            }
            total as f64 / started.elapsed().as_secs_f64()
        }
    };
    run(Duration::from_secs(1)).await;
    run(Duration::from_secs(secs)).await
}

/// Loads filler engines `from..to` (numbered) by bulk SQL: even ones with nothing due, odd ones
/// due in an hour.
async fn load_filler(kind: &str, url: &str, from: usize, to: usize) {
    let later = chrono::Utc::now().timestamp_millis() + 3_600_000;
    if kind == "SQLite" {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        sqlx::query(
            "WITH RECURSIVE g(n) AS (SELECT ? UNION ALL SELECT n + 1 FROM g WHERE n + 1 < ?) \
             INSERT INTO engines (id, name, owner, engine_type, version, configs, state, \
             create_time, update_time, next_update_time) \
             SELECT 'filler' || n, 'filler', 'alice', 'Spark', '4.3.0', '{}', 'Running', 0, 0, \
             CASE WHEN n % 2 = 0 THEN NULL ELSE ? END FROM g",
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(later)
        .execute(&pool)
        .await
        .expect("load filler");
        sqlx::query("ANALYZE")
            .execute(&pool)
            .await
            .expect("analyze");
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        sqlx::query(
            "INSERT INTO engines (id, name, owner, engine_type, version, configs, state, \
             create_time, update_time, next_update_time) \
             SELECT 'filler' || n, 'filler', 'alice', 'Spark', '4.3.0', '{}', 'Running', 0, 0, \
             CASE WHEN n % 2 = 0 THEN NULL ELSE $3 END FROM generate_series($1, $2 - 1) n",
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(later)
        .execute(&pool)
        .await
        .expect("load filler");
        sqlx::query("ANALYZE engines")
            .execute(&pool)
            .await
            .expect("analyze");
        pool.close().await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs: u64 = flag("secs", 5);
    let rounds: usize = flag("rounds", 3);
    let calls: usize = flag("calls", 200);
    println!("{}\n", machine_line());

    println!("### CAS updates/s ({rounds} rounds of {secs} s, median)\n");
    let mut rows = Vec::new();
    for writers in [1, 8] {
        let mut rates = Vec::new();
        for kind in ["SQLite", "PostgreSQL"] {
            let mut samples = Vec::new();
            for _ in 0..rounds {
                let (store, _keep, _) = fresh(kind).await;
                samples.push(cas_rate(&store, writers, secs).await);
            }
            rates.push(median(&samples));
        }
        rows.push(vec![
            writers.to_string(),
            format!("{:.0}", rates[0]),
            format!("{:.0}", rates[1]),
            format!("{:.2}×", rates[1] / rates[0]),
        ]);
    }
    print_table(
        &[
            "writers",
            "SQLite CAS/s",
            "PostgreSQL CAS/s",
            "PostgreSQL / SQLite",
        ],
        &rows,
    );

    println!("\n### list_due(now, 256) with {DUE} due engines ({calls} calls per size)\n");
    let mut rows = Vec::new();
    for kind in ["SQLite", "PostgreSQL"] {
        let (store, _keep, url) = fresh(kind).await;
        for n in 0..DUE {
            let engine = Engine {
                next_update_time: Some(chrono::Utc::now()),
                ..sample_engine(&format!("due{n}"))
            };
            store.insert(&engine).await.expect("insert");
        }
        let mut loaded = DUE;
        let mut medians = Vec::new();
        for size in SIZES {
            load_filler(kind, &url, loaded, size).await;
            loaded = size;
            let mut times = Vec::with_capacity(calls);
            for _ in 0..calls {
                let started = Instant::now();
                let due = store
                    .list_due(chrono::Utc::now(), 256)
                    .await
                    .expect("list_due");
                times.push(ms(started.elapsed()));
                assert_eq!(due.len(), DUE);
            }
            let p50 = median(&times);
            medians.push(p50);
            rows.push(vec![
                kind.to_owned(),
                size.to_string(),
                format!("{p50:.3}"),
                format!("{:.3}", percentile(&times, 99.0)),
            ]);
        }
        rows.push(vec![
            kind.to_owned(),
            "100k / 1k".to_owned(),
            format!("{:.2}×", medians[2] / medians[0]),
            String::new(),
        ]);
    }
    print_table(&["store", "engines", "p50 ms", "p99 ms"], &rows);
}
