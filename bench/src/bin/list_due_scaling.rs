//! `list_due_scaling`: how the time of `Store::list_due(now, 256)` grows with the number of
//! engines in the store, while the number of due engines stays fixed. The store contract says it
//! is indexed, so its cost grows with the due engines only.
//!
//! On SQLite (a WAL file in a temporary directory) and PostgreSQL (a scratch database): first
//! `--due` (50) engines due in the past (`next_update_time` 1–50 s ago), then filler engines up
//! to each of `--sizes` (1 000, 10 000, 100 000 engines in all), every other one with
//! `next_update_time` NULL (waiting for a user) and the others due in an hour (so they are in
//! the partial index `engines_due`, but not due). Every engine is stored with `Store::insert`
//! (one transaction each, with its first event row), `--insert-tasks` at a time on PostgreSQL
//! (8) and one at a time on SQLite (which has one writer anyway). After loading, PostgreSQL gets
//! `ANALYZE` (as autovacuum would do in a while), so that its planner knows the
//! table's size; SQLite is left as Rucat leaves it.
//!
//! At each size: `--warmup-calls` (20) unmeasured calls, then `--calls` (200) timed calls of
//! `list_due(Utc::now(), --limit)`, one at a time; each must return exactly the due engines.
//! Reported: median, p90, p99 and max per size, and the ratio of the medians largest / smallest
//! size. At the largest size the benchmark also prints PostgreSQL's plans of the query, with the
//! values filled in (custom plan) and as a prepared statement's generic plan, which a pooled
//! connection may switch to after five executions.
//!
//! Flags: `--sizes 1000,10000,100000`, `--due N` (50), `--limit N` (256), `--calls N` (200),
//! `--warmup-calls N` (20), `--insert-tasks N` (8), `--stores sqlite,postgres`,
//! `--postgres-url URL` (default `$RUCAT_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rucat::store::conformance::sample_engine;
use rucat::store::postgres::{PostgresStore, ScratchDatabase};
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Store, StoreOptions};
use rucat_bench::{
    flag, flag_str, machine_line, median, ms, percentile, postgres_admin_url, print_table,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The `list_due` query, as the stores run it, with the values filled in.
fn list_due_sql(now_ms: i64, limit: u32) -> String {
    format!(
        "SELECT seq, id, name, owner, engine_type, version, configs, state, error, endpoint, \
         create_time, update_time, next_update_time FROM engines \
         WHERE next_update_time IS NOT NULL AND next_update_time <= {now_ms} \
         ORDER BY next_update_time, seq LIMIT {limit}"
    )
}

/// Runs `statements` (separated by `;`) on one connection to `url`, in the simple query
/// protocol; the text of every row they return, one line each.
async fn run_sql(url: &str, statements: &str) -> Result<String, Error> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let rows = sqlx::raw_sql(statements).fetch_all(&mut conn).await?;
    let mut text = String::new();
    for row in &rows {
        text.push_str(&row.try_get::<String, _>(0)?);
        text.push('\n');
    }
    conn.close().await?;
    Ok(text)
}

/// Inserts filler engines `from..to` (their index decides their `next_update_time`), `tasks`
/// at a time.
async fn insert_filler(
    store: &Arc<dyn Store>,
    from: usize,
    to: usize,
    tasks: usize,
    in_an_hour: DateTime<Utc>,
) -> Result<(), Error> {
    let tasks = tasks.max(1);
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in (from + t..to).step_by(tasks) {
                let mut engine = sample_engine(&format!("filler-{i}"));
                engine.next_update_time =
                    (i % 2 == 1).then(|| in_an_hour + chrono::Duration::milliseconds(i as i64));
                store.insert(&engine).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

struct SizeResult {
    engines: usize,
    inserted_in: Duration,
    times: Vec<f64>,
}

struct StoreResult {
    name: &'static str,
    sizes: Vec<SizeResult>,
    plans: Vec<(String, String)>,
    analyzed: bool,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    name: &'static str,
    store: Arc<dyn Store>,
    postgres_url: Option<&str>,
    sizes: &[usize],
    due: usize,
    limit: u32,
    calls: usize,
    warmup_calls: usize,
    insert_tasks: usize,
) -> Result<StoreResult, Error> {
    let now = Utc::now();
    for i in 0..due {
        let mut engine = sample_engine(&format!("due-{i}"));
        engine.next_update_time = Some(now - chrono::Duration::seconds(i as i64 + 1));
        store.insert(&engine).await?;
    }
    let in_an_hour = now + chrono::Duration::hours(1);
    let mut result = StoreResult {
        name,
        sizes: Vec::new(),
        plans: Vec::new(),
        analyzed: false,
    };
    let mut have = due;
    for &size in sizes {
        let started = Instant::now();
        if size > have {
            insert_filler(&store, have, size, insert_tasks, in_an_hour).await?;
            have = size;
        }
        if let Some(url) = postgres_url {
            match run_sql(url, "ANALYZE").await {
                Ok(_) => result.analyzed = true,
                Err(e) => eprintln!(
                    "warning: no ANALYZE ({e}); the planner may not know the table's size"
                ),
            }
        }
        let inserted_in = started.elapsed();
        eprintln!(
            "{name}: {have} engines ({:.1} s to load and analyze)",
            inserted_in.as_secs_f64()
        );

        let mut times = Vec::with_capacity(calls);
        for call in 0..warmup_calls + calls {
            let started = Instant::now();
            let found = store.list_due(Utc::now(), limit).await?;
            let took = started.elapsed();
            if found.len() != due.min(limit as usize) {
                return Err(format!(
                    "{name}: list_due returned {} engines, expected {due}",
                    found.len()
                )
                .into());
            }
            if call >= warmup_calls {
                times.push(ms(took));
            }
        }
        result.sizes.push(SizeResult {
            engines: have,
            inserted_in,
            times,
        });
    }
    if let Some(url) = postgres_url {
        let sql = list_due_sql(Utc::now().timestamp_millis(), limit);
        let custom = run_sql(url, &format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}")).await;
        let generic = run_sql(
            url,
            &format!(
                "SET plan_cache_mode = force_generic_plan; \
                 PREPARE due(BIGINT, BIGINT) AS {}; \
                 EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE due({}, {limit});",
                list_due_sql(0, 0)
                    .replace("<= 0", "<= $1")
                    .replace("LIMIT 0", "LIMIT $2"),
                Utc::now().timestamp_millis()
            ),
        )
        .await;
        for (what, plan) in [("custom plan", custom), ("generic plan", generic)] {
            result.plans.push((
                what.to_owned(),
                plan.unwrap_or_else(|e| format!("(no plan: {e})")),
            ));
        }
    }
    Ok(result)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let sizes: Vec<usize> = flag_str("sizes")
        .unwrap_or_else(|| "1000,10000,100000".to_owned())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid --sizes: {e}"))?;
    let due: usize = flag("due", 50);
    let limit: u32 = flag("limit", 256);
    let calls: usize = flag("calls", 200);
    let warmup_calls: usize = flag("warmup-calls", 20);
    let insert_tasks: usize = flag("insert-tasks", 8);
    let stores = flag_str("stores").unwrap_or_else(|| "sqlite,postgres".to_owned());
    if sizes.is_empty() || sizes.windows(2).any(|w| w[0] >= w[1]) || sizes[0] < due {
        return Err("--sizes must be increasing, the first at least --due".into());
    }

    let dir = tempfile::tempdir()?;
    let admin_url = postgres_admin_url();
    let started = Instant::now();
    let mut results = Vec::new();
    for kind in stores.split(',') {
        match kind.trim() {
            "sqlite" => {
                let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
                let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
                results.push(
                    measure(
                        "SQLite",
                        store,
                        None,
                        &sizes,
                        due,
                        limit,
                        calls,
                        warmup_calls,
                        1,
                    )
                    .await?,
                );
            }
            "postgres" => {
                let scratch = ScratchDatabase::create(&admin_url, "bench_due")
                    .await
                    .map_err(|e| {
                        format!("cannot create a scratch database through {admin_url}: {e}")
                    })?;
                let store: Arc<dyn Store> =
                    Arc::new(PostgresStore::open(scratch.url(), &StoreOptions::default()).await?);
                results.push(
                    measure(
                        "PostgreSQL",
                        store,
                        Some(scratch.url()),
                        &sizes,
                        due,
                        limit,
                        calls,
                        warmup_calls,
                        insert_tasks,
                    )
                    .await?,
                );
            }
            other => return Err(format!("unknown store {other:?} in --stores").into()),
        }
    }

    println!(
        "### list_due_scaling — {due} due engines, list_due(now, {limit}), {calls} calls per size ({warmup_calls} warm-up); {}; took {:.0} s\n",
        machine_line(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "Not-due engines: half with next_update_time NULL, half due in an hour. \
         Loaded with Store::insert (PostgreSQL: {insert_tasks} tasks, then ANALYZE; SQLite: 1 task).\n"
    );
    let mut rows = Vec::new();
    for result in &results {
        for size in &result.sizes {
            rows.push(vec![
                result.name.to_owned(),
                size.engines.to_string(),
                format!("{:.1}", size.inserted_in.as_secs_f64()),
                format!("{:.3}", median(&size.times)),
                format!("{:.3}", percentile(&size.times, 90.0)),
                format!("{:.3}", percentile(&size.times, 99.0)),
                format!("{:.3}", percentile(&size.times, 100.0)),
            ]);
        }
    }
    print_table(
        &[
            "store",
            "engines",
            "load s (added engines)",
            "list_due median ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ],
        &rows,
    );
    println!();
    let mut summary = Vec::new();
    for result in &results {
        let (Some(first), Some(last)) = (result.sizes.first(), result.sizes.last()) else {
            continue;
        };
        summary.push(vec![
            result.name.to_owned(),
            format!("{} → {}", first.engines, last.engines),
            format!(
                "{:.2}",
                median(&last.times) / median(&first.times).max(f64::MIN_POSITIVE)
            ),
            format!(
                "{:.2}",
                percentile(&last.times, 99.0)
                    / percentile(&first.times, 99.0).max(f64::MIN_POSITIVE)
            ),
        ]);
    }
    print_table(&["store", "engines", "median ratio", "p99 ratio"], &summary);
    for result in &results {
        if result.plans.is_empty() {
            continue;
        }
        println!(
            "\n{} plans at {} engines ({}):",
            result.name,
            result.sizes.last().map_or(0, |s| s.engines),
            if result.analyzed {
                "after ANALYZE"
            } else {
                "not analyzed"
            }
        );
        for (what, plan) in &result.plans {
            println!("\n{what}:\n\n```\n{}\n```", plan.trim_end());
        }
    }
    Ok(())
}
