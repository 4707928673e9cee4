//! `cas_throughput`: compare-and-swap state updates per second through the `Store` trait, on
//! SQLite (a WAL file in a temporary directory) and on PostgreSQL (a scratch database).
//!
//! Every update is a real CAS, `Store::update_state(id, Transition::new(from, to).due_at(t))`,
//! on a legal two-state cycle: `Running → WaitToTerminate → Running` (a stop, then a restart
//! that cancels it). Each successful CAS is one transaction that updates the engine row, inserts
//! an event row and trims the engine's history to its last 100 events.
//!
//! Cases, on each store:
//! - **1 writer, own engines** and **8 writers, own engines**: each writer (a tokio task) cycles
//!   over its own `--engines-per-writer` engines, so no two writers touch the same row: this is
//!   throughput, not contention. Every CAS succeeds.
//! - **8 writers, 1 shared engine**: contention. Every writer flips the same engine from the
//!   state it last saw; a CAS that finds another state (`Cas::Conflict`) learns the actual state
//!   and counts as a conflict, not an update.
//! - **8 writers, own engines, due now**: as the second case, but every update makes the engine
//!   due at once (`due_at(now)`), so each one also wakes monitors: an in-process notification on
//!   SQLite, a `pg_notify` inside the transaction on PostgreSQL. In the other cases the engines
//!   are due in an hour, which wakes nobody.
//!
//! Each case runs `--warmup-secs` (1) unmeasured, then `--secs` (5) measured, on a fresh store
//! (a new SQLite file, a new scratch database), so that no round inherits the rows and dead
//! tuples of earlier ones: with one PostgreSQL database for a whole run, the 8-writer rate fell
//! by a third over six rounds.
//! Each of the `--rounds` (3) rounds runs every case once; the order rotates from round to round.
//! Reported: each case's median updates/s over the rounds, conflicts/s, the CAS latency
//! percentiles over all rounds and the share of calls that took 10 ms or more, and
//! PostgreSQL / SQLite.
//!
//! Flags: `--secs S` (5), `--warmup-secs S` (1), `--rounds N` (3), `--engines-per-writer N`
//! (16), `--writers N` (8), `--postgres-url URL` (default `$RUCAT_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`; a scratch database is created on it and dropped).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rucat::engine::{EngineId, EngineState};
use rucat::store::conformance::sample_engine;
use rucat::store::postgres::{PostgresStore, ScratchDatabase};
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Cas, Store, StoreOptions, Transition};
use rucat_bench::{flag, machine_line, median, ms, percentile, postgres_admin_url, print_table};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres => "PostgreSQL",
        }
    }
}

/// What the writers do, on either store.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    writers: usize,
    /// All writers on one engine (contention) instead of each on its own engines.
    shared: bool,
    /// Every update makes the engine due now (wakes monitors) instead of in an hour.
    due_now: bool,
}

impl Shape {
    fn label(self) -> String {
        let writers = if self.writers == 1 {
            "1 writer".to_owned()
        } else {
            format!("{} writers", self.writers)
        };
        let engines = if self.shared {
            "1 shared engine"
        } else {
            "own engines"
        };
        let due = if self.due_now { ", due now" } else { "" };
        format!("{writers}, {engines}{due}")
    }
}

#[derive(Default)]
struct Outcome {
    updates: u64,
    conflicts: u64,
    elapsed: Duration,
    /// Milliseconds per `update_state` call (successful or not).
    latencies: Vec<f64>,
}

fn flipped(state: EngineState) -> EngineState {
    if state == EngineState::Running {
        EngineState::WaitToTerminate
    } else {
        EngineState::Running
    }
}

/// A new, empty store: a new SQLite file in `dir`, or a new PostgreSQL scratch database (which
/// is dropped with the returned guard).
async fn fresh_store(
    kind: Kind,
    dir: &Path,
    admin_url: &str,
) -> Result<(Arc<dyn Store>, Option<ScratchDatabase>), Error> {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    match kind {
        Kind::Sqlite => {
            let file = dir.join(format!(
                "rucat-{}.db",
                FILES.fetch_add(1, Ordering::Relaxed)
            ));
            let url = format!("sqlite://{}", file.display());
            Ok((Arc::new(SqliteStore::open(&url).await?), None))
        }
        Kind::Postgres => {
            let scratch = ScratchDatabase::create(admin_url, "bench_cas").await?;
            let store = PostgresStore::open(scratch.url(), &StoreOptions::default()).await?;
            Ok((Arc::new(store), Some(scratch)))
        }
    }
}

/// Inserts `count` new engines in state `Running`.
async fn running_engines(store: &dyn Store, count: usize) -> Result<Vec<EngineId>, Error> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let mut engine = sample_engine(&format!("cas-{i}"));
        engine.state = EngineState::Running;
        store.insert(&engine).await?;
        ids.push(engine.id);
    }
    Ok(ids)
}

/// One writer: flips its engines round-robin until `until`.
async fn writer(
    store: Arc<dyn Store>,
    engines: Vec<EngineId>,
    due_now: bool,
    until: Instant,
) -> Result<Outcome, Error> {
    let mut seen = vec![EngineState::Running; engines.len()];
    let mut outcome = Outcome::default();
    let later = Utc::now() + chrono::Duration::hours(1);
    // Bounded in time, and in count as a second guard.
    for n in 0..u64::MAX {
        if Instant::now() >= until {
            break;
        }
        let i = (n % engines.len() as u64) as usize;
        let (from, to) = (seen[i], flipped(seen[i]));
        let due = if due_now { Utc::now() } else { later };
        let started = Instant::now();
        let cas = store
            .update_state(&engines[i], &Transition::new(from, to).due_at(due))
            .await?;
        outcome.latencies.push(ms(started.elapsed()));
        match cas {
            Cas::Done => {
                seen[i] = to;
                outcome.updates += 1;
            }
            Cas::Conflict(actual) => {
                seen[i] = actual;
                outcome.conflicts += 1;
            }
            Cas::NotFound => return Err(format!("engine {} vanished", engines[i]).into()),
        }
    }
    Ok(outcome)
}

/// Runs `shape` on `store` for `duration`; all writers start together.
async fn run(
    store: &Arc<dyn Store>,
    shape: Shape,
    per_writer: usize,
    duration: Duration,
) -> Result<Outcome, Error> {
    let shared = if shape.shared {
        running_engines(store.as_ref(), 1).await?
    } else {
        Vec::new()
    };
    let mut sets = Vec::with_capacity(shape.writers);
    for _ in 0..shape.writers {
        sets.push(if shape.shared {
            shared.clone()
        } else {
            running_engines(store.as_ref(), per_writer).await?
        });
    }
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = sets
        .into_iter()
        .map(|engines| tokio::spawn(writer(store.clone(), engines, shape.due_now, until)))
        .collect();
    let mut total = Outcome::default();
    for task in tasks {
        let one = task.await??;
        total.updates += one.updates;
        total.conflicts += one.conflicts;
        total.latencies.extend(one.latencies);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let secs: f64 = flag("secs", 5.0);
    let warmup_secs: f64 = flag("warmup-secs", 1.0);
    let rounds: usize = flag("rounds", 3);
    let per_writer: usize = flag("engines-per-writer", 16);
    let many: usize = flag("writers", 8);
    let duration = Duration::from_secs_f64(secs);
    let warmup = Duration::from_secs_f64(warmup_secs);
    if per_writer == 0 || many == 0 || rounds == 0 {
        return Err("--engines-per-writer, --writers and --rounds must be at least 1".into());
    }

    let dir = tempfile::tempdir()?;
    let admin_url = postgres_admin_url();
    // Fail early, with a clear message, when there is no PostgreSQL.
    drop(
        ScratchDatabase::create(&admin_url, "bench_cas")
            .await
            .map_err(|e| format!("cannot create a scratch database through {admin_url}: {e}"))?,
    );

    let shapes = [
        Shape {
            writers: 1,
            shared: false,
            due_now: false,
        },
        Shape {
            writers: many,
            shared: false,
            due_now: false,
        },
        Shape {
            writers: many,
            shared: true,
            due_now: false,
        },
        Shape {
            writers: many,
            shared: false,
            due_now: true,
        },
    ];
    let mut cases = Vec::new();
    for shape in shapes {
        for kind in [Kind::Sqlite, Kind::Postgres] {
            cases.push((kind, shape));
        }
    }

    let started = Instant::now();
    // Per case: updates/s and conflicts/s of each round, latencies of all rounds.
    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut conflicts: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let c = (k + round) % cases.len();
            let (kind, shape) = cases[c];
            let (store, scratch) = fresh_store(kind, dir.path(), &admin_url).await?;
            run(&store, shape, per_writer, warmup).await?;
            let outcome = run(&store, shape, per_writer, duration).await?;
            drop(store);
            drop(scratch);
            let seconds = outcome.elapsed.as_secs_f64();
            let rate = outcome.updates as f64 / seconds;
            eprintln!(
                "round {}: {} {}: {rate:.0} updates/s, {:.0} conflicts/s",
                round + 1,
                kind.name(),
                shape.label(),
                outcome.conflicts as f64 / seconds
            );
            per_second[c].push(rate);
            conflicts[c].push(outcome.conflicts as f64 / seconds);
            latencies[c].extend(outcome.latencies);
        }
    }
    let took = started.elapsed();

    println!(
        "### cas_throughput — {rounds} rounds, each case {warmup_secs} s warm-up + {secs} s measured; {}; took {:.0} s\n",
        machine_line(),
        took.as_secs_f64()
    );
    println!(
        "Each case and round on a fresh store: SQLite, a new WAL file in {} (synchronous=NORMAL, one write connection, a read pool of 8); \
         PostgreSQL, a new scratch database on {} (pool of 10). \
         Every update is one transaction: UPDATE engines, INSERT an event, trim events to 100.\n",
        dir.path().display(),
        rucat::store::redact(&admin_url)
    );
    let mut headers: Vec<String> = vec!["store".into(), "case".into()];
    headers.extend((1..=rounds).map(|r| format!("round {r} updates/s")));
    headers.extend(
        [
            "median updates/s",
            "median conflicts/s",
            "CAS p50 ms",
            "CAS p90 ms",
            "CAS p99 ms",
            "CAS ≥ 10 ms",
        ]
        .map(String::from),
    );
    let rows: Vec<Vec<String>> = cases
        .iter()
        .enumerate()
        .map(|(c, (kind, shape))| {
            let mut row = vec![kind.name().to_owned(), shape.label()];
            row.extend(per_second[c].iter().map(|r| format!("{r:.0}")));
            row.push(format!("**{:.0}**", median(&per_second[c])));
            row.push(format!("{:.0}", median(&conflicts[c])));
            row.push(format!("{:.2}", percentile(&latencies[c], 50.0)));
            row.push(format!("{:.2}", percentile(&latencies[c], 90.0)));
            row.push(format!("{:.2}", percentile(&latencies[c], 99.0)));
            let slow = latencies[c].iter().filter(|&&l| l >= 10.0).count();
            row.push(format!(
                "{:.2} %",
                100.0 * slow as f64 / latencies[c].len().max(1) as f64
            ));
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&headers, &rows);

    println!();
    let summary: Vec<Vec<String>> = shapes
        .iter()
        .map(|shape| {
            let of = |kind: Kind| {
                cases
                    .iter()
                    .position(|(k, s)| *k == kind && s == shape)
                    .map(|c| median(&per_second[c]))
                    .unwrap_or(0.0)
            };
            let (s, p) = (of(Kind::Sqlite), of(Kind::Postgres));
            let ratio = if s > 0.0 { p / s } else { 0.0 };
            vec![
                shape.label(),
                format!("{s:.0}"),
                format!("{p:.0}"),
                format!("{ratio:.2}"),
            ]
        })
        .collect();
    print_table(
        &[
            "case (median updates/s)",
            "SQLite",
            "PostgreSQL",
            "PostgreSQL / SQLite",
        ],
        &summary,
    );

    Ok(())
}
