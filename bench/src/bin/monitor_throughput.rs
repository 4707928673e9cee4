//! `monitor_throughput`: engines driven from `WaitToStart` to `Running` per second by `rucat
//! monitor` processes on the simulated platform, with 1 and with 4 monitors, for two `rucat`
//! binaries side by side: the current one (`--rucat`) and, optionally, an earlier one
//! (`--rucat-before`, e.g. the last commit before fencing).
//!
//! One measurement (a binary, a number of monitors M, a simulated start delay): a fresh
//! PostgreSQL scratch database and a fresh data directory; one `rucat server --listen
//! 127.0.0.1:<port> --platform simulated` of that binary (loopback and no `[auth]`: no
//! authentication); `--engines` (400) engines created through `POST /engines` while no monitor
//! runs (4 requests at a time, each retried on 503); the server stopped; then M `rucat monitor`
//! processes of the same binary, same configuration file and data directory, started at once.
//! The time runs from their spawn until `SELECT count(*) FROM engines WHERE state = 'Running'` (on the database directly,
//! every `--poll-ms` (20) ms) counts every engine. Throughput = engines / that time
//! (**wall**, process start-up included). A second figure excludes the start-up: engines /
//! (last `→ Running` event − first `WaitToStart → TriggerStart` event), from the monitors' own
//! event times in `engine_events` (whole ms) (**events**). Then every process gets SIGTERM
//! (SIGKILL after 15 s), and the database is dropped.
//!
//! Both binaries get the same configuration file, with keys both know:
//! `[simulated] versions = ["4.3.0"], create_delay_ms = 0, start_delay_ms = D` and `[monitor]
//! concurrency = C` (`--concurrency`, default 16 as Rucat's default), `poll_interval_ms = P`
//! (`--monitor-poll-ms`, default 250), `start_check_interval_ms = 200` (the default),
//! `health_check_interval_ms = 600000` and `orphan_scan_interval_ms = 600000` (so that no health
//! check or orphan scan of engines already Running competes with the starts being measured).
//! With D = 0 a resource is Running at once: the monitors and the store are what is measured;
//! the poll interval hardly matters (wake-ups drive everything). With D = 50 every engine is
//! `Starting` at its first check and looked at again after `start_check_interval`; the last of
//! these re-checks are found only by the poll (a monitor keeps one wake-up hint, the earliest),
//! so with Rucat's default of 2 s each measurement would end with a random wait of up to 2 s.
//!
//! Each round runs every (binary, M, D) once; the order rotates from round to round (the order
//! of the start delays, and within each the order of the (binary, M) combinations). One
//! warm-up round runs first and is not counted. After each measurement the simulated
//! platform's journal and the events are counted, and reported at the end: every engine should
//! be created exactly once and claimed exactly once, none adopted, no step failed.
//!
//! Reported: per round and start delay the throughput of each binary and M, and after / before;
//! then per start delay and M the medians, after / before of the medians, and the median (and
//! the range) of the per-round ratios. Last, what the database did per engine while the monitors
//! ran: the CPU time of the monitor processes and of the PostgreSQL backends serving them
//! (`/proc/PID/stat`, read when all engines are Running; the backends are the scratch
//! database's connections but the benchmark's own), and from `pg_stat_database` of the scratch
//! database (one per measurement) the transactions committed and rolled back (a
//! compare-and-swap that changed nothing), rows updated and inserted. Unlike the throughput,
//! these hardly depend on what else the machine is doing.
//!
//! Flags: `--engines N` (400), `--rounds N` (5), `--warmup-rounds N` (1), `--monitors 1,4`,
//! `--start-delays 0,50` (ms), `--concurrency N` (16), `--monitor-poll-ms MS` (250),
//! `--poll-ms MS` (20, the benchmark's own count of Running engines), `--timeout-secs S`
//! (120, per measurement), `--rucat PATH` (default: `rucat` next to this binary),
//! `--rucat-before PATH` (optional; without it only `--rucat` is measured), `--postgres-url URL`
//! (default `$RUCAT_TEST_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rucat::platform::simulated::{JournalEvent, SimulatedPlatform};
use rucat::store::postgres::ScratchDatabase;
use rucat_bench::process::RucatProcess as Process;
use rucat_bench::{
    flag, flag_str, free_port, machine_line, median, post_engine, postgres_admin_url, print_table,
    rucat_binary,
};
use sqlx::{Connection, PgConnection};

type Error = Box<dyn std::error::Error + Send + Sync>;

const VERSION: &str = "4.3.0";
/// How long a process may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many `POST /engines` are in flight at once while the engines are created.
const CREATE_TASKS: usize = 4;

/// Stops all of `processes` at once: SIGTERM to each, then waits for each.
async fn stop_all(processes: &mut [Process]) {
    for process in processes.iter() {
        process.terminate();
    }
    for process in processes.iter_mut() {
        process.reap().await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Binary {
    Before,
    After,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Before => "before",
            Binary::After => "after",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Case {
    binary: Binary,
    monitors: usize,
    start_delay_ms: u64,
}

impl Case {
    /// A short label for the order column: `B1`, `A4`, …
    fn label(self) -> String {
        let b = match self.binary {
            Binary::Before => 'B',
            Binary::After => 'A',
        };
        format!("{b}{}", self.monitors)
    }
}

struct Settings {
    engines: usize,
    concurrency: usize,
    monitor_poll_ms: u64,
    poll: Duration,
    timeout: Duration,
    admin_url: String,
}

struct Measured {
    /// Engines / (monitors spawned → all Running seen), per second.
    wall: f64,
    /// Engines / (first claim event → last Running event), per second.
    events: f64,
    /// Monitors spawned → first claim event (ms).
    startup_ms: f64,
    /// Journal check.
    creates: usize,
    adopts: usize,
    duplicates: usize,
    /// Event check: claims (`WaitToStart → TriggerStart`) and failed steps recorded.
    claims: i64,
    failures: i64,
    /// What the database counted while the monitors ran (`pg_stat_database` of the scratch
    /// database, the benchmark's own queries taken out), per engine.
    store: StoreWork,
}

/// Per engine: transactions committed (each statement outside a transaction is one), rolled
/// back (a compare-and-swap that changed nothing), rows updated and inserted.
#[derive(Clone, Copy, Default)]
struct StoreWork {
    /// CPU time of the monitor processes, and of the database backends serving them (ms).
    monitor_cpu_ms: f64,
    backend_cpu_ms: f64,
    commits: f64,
    rollbacks: f64,
    updated: f64,
    inserted: f64,
}

/// The scratch database's cumulative statistics: commits, rollbacks, rows updated, inserted.
async fn database_stats(url: &str) -> Result<[i64; 4], Error> {
    // A connection of its own, closed at once: its query is counted only after it is read.
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|e| format!("connecting to the scratch database: {e}"))?;
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback, tup_updated, tup_inserted \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok([row.0, row.1, row.2, row.3])
}

/// User + system CPU time a live process has used, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, which may hold spaces): state is field 3, utime
    // field 14, stime field 15.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// How long to let closed connections' backends end and report their statistics.
const STATS_SETTLE: Duration = Duration::from_millis(500);

fn config_text(settings: &Settings, start_delay_ms: u64) -> String {
    format!(
        "[simulated]\nversions = [\"{VERSION}\"]\ncreate_delay_ms = 0\nstart_delay_ms = {start_delay_ms}\n\n\
         [monitor]\nconcurrency = {}\npoll_interval_ms = {}\nstart_check_interval_ms = 200\n\
         health_check_interval_ms = 600000\norphan_scan_interval_ms = 600000\n",
        settings.concurrency, settings.monitor_poll_ms
    )
}

/// Creates `count` engines through the server at `base`, [`CREATE_TASKS`] requests at a time.
async fn create_engines(base: &str, count: usize) -> Result<(), Error> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CREATE_TASKS {
        let (http, base) = (http.clone(), base.to_owned());
        let mine = count / CREATE_TASKS + usize::from(t < count % CREATE_TASKS);
        tasks.spawn(async move {
            for _ in 0..mine {
                // A store slowed down by other work on the machine may answer 503: try again.
                let mut tries = 0;
                loop {
                    match post_engine(&http, &base, VERSION).await {
                        Ok(_) => break,
                        Err(e) if tries < 10 && e.to_string().contains("503") => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn count_in_state(conn: &mut PgConnection, state: &str) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM engines WHERE state = $1")
            .bind(state)
            .fetch_one(conn)
            .await?,
    )
}

async fn measure(binary: &Path, case: Case, settings: &Settings) -> Result<Measured, Error> {
    let scratch = ScratchDatabase::create(&settings.admin_url, "bench_monitor")
        .await
        .map_err(|e| {
            format!(
                "cannot create a scratch database through {}: {e}",
                settings.admin_url
            )
        })?;
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let config = dir.path().join("rucat.toml");
    std::fs::write(&config, config_text(settings, case.start_delay_ms))
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let data_dir = dir.path().join("data");
    let (config, data) = (config.to_string_lossy(), data_dir.to_string_lossy());
    let common = [
        "--data-dir",
        &data,
        "--database-url",
        scratch.url(),
        "--platform",
        "simulated",
        "--config",
        &config,
    ];

    // The server, only while the engines are created.
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut server_args = vec!["server", "--listen", &listen];
    server_args.extend(common);
    let mut server = vec![Process::spawn(
        binary,
        "server".to_owned(),
        &server_args,
        &dir.path().join("server.log"),
    )?];
    let base = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        server[0].check_alive()?;
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "server not ready within {READY_TIMEOUT:?}:\n{}",
                server[0].log_tail()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    create_engines(&base, settings.engines).await?;
    stop_all(&mut server).await;

    tokio::time::sleep(STATS_SETTLE).await;
    let stats_before = database_stats(scratch.url()).await?;
    let mut conn = PgConnection::connect(scratch.url())
        .await
        .map_err(|e| format!("connecting to the scratch database: {e}"))?;
    // The benchmark's own transactions while the monitors run: the one that read the
    // statistics, this count, and the counts below.
    let mut own_queries = 2;
    let waiting = count_in_state(&mut conn, "WaitToStart").await?;
    if waiting != settings.engines as i64 {
        return Err(format!(
            "{waiting} engines WaitToStart before the monitors start, expected {}",
            settings.engines
        )
        .into());
    }

    // The monitors: the time runs from their spawn.
    let mut monitor_args = vec!["monitor"];
    monitor_args.extend(common);
    let spawned = Instant::now();
    let spawned_unix_ms = chrono::Utc::now().timestamp_millis();
    let mut monitors = Vec::with_capacity(case.monitors);
    for m in 0..case.monitors {
        monitors.push(Process::spawn(
            binary,
            format!("monitor {m}"),
            &monitor_args,
            &dir.path().join(format!("monitor-{m}.log")),
        )?);
    }
    let outcome = async {
        loop {
            let running = count_in_state(&mut conn, "Running").await?;
            own_queries += 1;
            if running >= settings.engines as i64 {
                return Ok::<_, Error>(spawned.elapsed());
            }
            for monitor in &mut monitors {
                monitor.check_alive()?;
            }
            if spawned.elapsed() > settings.timeout {
                let tails: Vec<String> = monitors.iter().map(Process::log_tail).collect();
                return Err(format!(
                    "only {running} of {} engines Running after {:?}:\n{}",
                    settings.engines,
                    settings.timeout,
                    tails.join("\n---\n")
                )
                .into());
            }
            tokio::time::sleep(settings.poll).await;
        }
    }
    .await;
    // CPU used so far by the monitor processes and by the database backends serving them
    // (every connection to the scratch database but the benchmark's own).
    let cpu = async {
        let monitor_ticks: u64 = monitors
            .iter()
            .filter_map(|m| m.child.id())
            .filter_map(cpu_ticks)
            .sum();
        let backends: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await?;
        let backend_ticks: u64 = backends
            .iter()
            .filter_map(|&pid| u32::try_from(pid).ok())
            .filter_map(cpu_ticks)
            .sum();
        Ok::<_, Error>((monitor_ticks, backend_ticks))
    }
    .await;
    own_queries += 1;
    stop_all(&mut monitors).await;
    let wall = outcome?;
    let (monitor_ticks, backend_ticks) = cpu?;
    conn.close().await?;
    tokio::time::sleep(STATS_SETTLE).await;
    let stats_after = database_stats(scratch.url()).await?;
    let delta = |i: usize| (stats_after[i] - stats_before[i]) as f64 / settings.engines as f64;
    let tick_ms = 1000.0 / clock_ticks_per_second();
    let store = StoreWork {
        monitor_cpu_ms: monitor_ticks as f64 * tick_ms / settings.engines as f64,
        backend_cpu_ms: backend_ticks as f64 * tick_ms / settings.engines as f64,
        commits: delta(0) - own_queries as f64 / settings.engines as f64,
        rollbacks: delta(1),
        updated: delta(2),
        inserted: delta(3),
    };
    let mut conn = PgConnection::connect(scratch.url())
        .await
        .map_err(|e| format!("connecting to the scratch database: {e}"))?;

    let (first_claim, last_running, claims, failures): (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    ) = sqlx::query_as(
        "SELECT \
           min(time) FILTER (WHERE from_state = 'WaitToStart' AND to_state = 'TriggerStart'), \
           max(time) FILTER (WHERE to_state = 'Running'), \
           count(*) FILTER (WHERE from_state = 'WaitToStart' AND to_state = 'TriggerStart'), \
           count(*) FILTER (WHERE from_state = to_state) \
         FROM engine_events",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    let (first_claim, last_running) = first_claim
        .zip(last_running)
        .ok_or("no claim or no Running event recorded")?;
    // Whole milliseconds; at least one.
    let span_ms = (last_running - first_claim).max(1) as f64;

    let journal = SimulatedPlatform::journal(&data_dir)
        .map_err(|e| format!("reading the simulated platform's journal: {e}"))?;
    let mut per_engine = std::collections::HashMap::<&str, usize>::new();
    for entry in journal.iter().filter(|e| e.event == JournalEvent::Create) {
        *per_engine.entry(entry.engine.as_str()).or_default() += 1;
    }
    drop(scratch);
    Ok(Measured {
        wall: settings.engines as f64 / wall.as_secs_f64(),
        events: settings.engines as f64 * 1000.0 / span_ms,
        startup_ms: (first_claim - spawned_unix_ms) as f64,
        creates: per_engine.values().sum(),
        adopts: journal
            .iter()
            .filter(|e| e.event == JournalEvent::Adopt)
            .count(),
        duplicates: per_engine.values().filter(|&&n| n > 1).count(),
        claims: claims.unwrap_or(0),
        failures: failures.unwrap_or(0),
        store,
    })
}

fn list_flag<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    let raw = flag_str(name).unwrap_or_else(|| default.to_owned());
    raw.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim().parse().unwrap_or_else(|_| {
                eprintln!("invalid value {s:?} in --{name}");
                std::process::exit(2)
            })
        })
        .collect()
}

fn fmt_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".to_owned()
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let warmup_rounds: usize = flag("warmup-rounds", 1);
    let monitors: Vec<usize> = list_flag("monitors", "1,4");
    let delays: Vec<u64> = list_flag("start-delays", "0,50");
    let settings = Settings {
        engines: flag("engines", 400),
        concurrency: flag("concurrency", 16),
        monitor_poll_ms: flag("monitor-poll-ms", 250),
        poll: Duration::from_millis(flag("poll-ms", 20)),
        timeout: Duration::from_secs(flag("timeout-secs", 120)),
        admin_url: postgres_admin_url(),
    };
    let after = rucat_binary()?;
    let before = match flag_str("rucat-before") {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(
                    format!("no rucat binary at {} (--rucat-before)", path.display()).into(),
                );
            }
            Some(path)
        }
        None => None,
    };
    let binaries: Vec<Binary> = if before.is_some() {
        vec![Binary::Before, Binary::After]
    } else {
        vec![Binary::After]
    };
    let path_of = |b: Binary| match b {
        Binary::Before => before.as_deref().unwrap_or(&after),
        Binary::After => &after,
    };

    // The (binary, M) combinations, run for each start delay.
    let mut combos = Vec::new();
    for &m in &monitors {
        for &binary in &binaries {
            combos.push((binary, m));
        }
    }
    let mut cases = Vec::new();
    for &start_delay_ms in &delays {
        for &(binary, m) in &combos {
            cases.push(Case {
                binary,
                monitors: m,
                start_delay_ms,
            });
        }
    }
    let index_of = |case: Case| {
        cases
            .iter()
            .position(|&c| c == case)
            .expect("every case is listed")
    };

    let run_started = Instant::now();
    // results[round][case index]
    let mut results: Vec<Vec<Option<Measured>>> = Vec::new();
    let mut orders: Vec<Vec<Case>> = Vec::new();
    for r in 0..warmup_rounds + rounds {
        let counted = r >= warmup_rounds;
        let label = if counted {
            format!("round {}", r - warmup_rounds + 1)
        } else {
            format!("warm-up round {}", r + 1)
        };
        // Each round rotates the order of the start delays and, within each, of the (binary,
        // M) combinations.
        let mut order = Vec::new();
        for d in 0..delays.len() {
            let start_delay_ms = delays[(d + r) % delays.len()];
            for c in 0..combos.len() {
                let (binary, m) = combos[(c + r) % combos.len()];
                order.push(Case {
                    binary,
                    monitors: m,
                    start_delay_ms,
                });
            }
        }
        let mut row: Vec<Option<Measured>> = (0..cases.len()).map(|_| None).collect();
        for &case in &order {
            let measured = measure(path_of(case.binary), case, &settings).await?;
            eprintln!(
                "{label}: {} M={} delay {} ms: {:.0}/s wall, {:.0}/s events, start-up {:.0} ms, \
                 CPU per engine {:.2} ms monitors + {:.2} ms PostgreSQL",
                case.binary.name(),
                case.monitors,
                case.start_delay_ms,
                measured.wall,
                measured.events,
                measured.startup_ms,
                measured.store.monitor_cpu_ms,
                measured.store.backend_cpu_ms
            );
            row[index_of(case)] = Some(measured);
        }
        if counted {
            results.push(row);
            orders.push(order);
        }
    }
    let took = run_started.elapsed();

    println!(
        "### monitor_throughput — {} engines from WaitToStart to Running per measurement; {}; \
         PostgreSQL, platform simulated (create delay 0), `[monitor] concurrency = {}`, \
         `poll_interval_ms = {}`; {rounds} rounds after {warmup_rounds} warm-up; took {:.0} s\n",
        settings.engines,
        machine_line(),
        settings.concurrency,
        settings.monitor_poll_ms,
        took.as_secs_f64()
    );
    println!("- after: `{}`", after.display());
    if let Some(before) = &before {
        println!("- before: `{}`", before.display());
    }
    println!();

    let find = |b: Binary, m: usize, d: u64| {
        cases
            .iter()
            .position(|c| c.binary == b && c.monitors == m && c.start_delay_ms == d)
    };
    type Pick = fn(&Measured) -> f64;
    let metrics: [(&str, Pick); 2] = [
        (
            "wall: monitors spawned → all Running, engines/s",
            |m: &Measured| m.wall,
        ),
        (
            "events: first claim → last Running, engines/s",
            |m: &Measured| m.events,
        ),
    ];

    for (title, pick) in metrics {
        println!("#### {title}\n");
        let mut headers = vec![
            "round".to_owned(),
            "start delay".to_owned(),
            "order".to_owned(),
        ];
        for &m in &monitors {
            for &b in &binaries {
                headers.push(format!("{} M={m}", b.name()));
            }
            if before.is_some() {
                headers.push(format!("after / before M={m}"));
            }
        }
        let mut rows = Vec::new();
        for (r, row) in results.iter().enumerate() {
            for &d in &delays {
                let order: Vec<String> = orders[r]
                    .iter()
                    .filter(|c| c.start_delay_ms == d)
                    .map(|c| c.label())
                    .collect();
                let mut cells = vec![(r + 1).to_string(), format!("{d} ms"), order.join(", ")];
                for &m in &monitors {
                    let value = |b: Binary| {
                        find(b, m, d)
                            .and_then(|i| row[i].as_ref())
                            .map_or(f64::NAN, pick)
                    };
                    for &b in &binaries {
                        cells.push(format!("{:.0}", value(b)));
                    }
                    if before.is_some() {
                        cells.push(fmt_ratio(value(Binary::After) / value(Binary::Before)));
                    }
                }
                rows.push(cells);
            }
        }
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        print_table(&headers, &rows);
        println!();

        let mut headers = vec!["start delay", "M", "after median"];
        if before.is_some() {
            headers.extend([
                "before median",
                "after / before (medians)",
                "median of per-round ratios",
                "per-round ratios min–max",
            ]);
        }
        let mut rows = Vec::new();
        for &d in &delays {
            for &m in &monitors {
                let series = |b: Binary| -> Vec<f64> {
                    find(b, m, d).map_or_else(Vec::new, |i| {
                        results
                            .iter()
                            .filter_map(|row| row[i].as_ref().map(pick))
                            .collect()
                    })
                };
                let a = series(Binary::After);
                let mut cells = vec![
                    format!("{d} ms"),
                    m.to_string(),
                    format!("{:.0}", median(&a)),
                ];
                if before.is_some() {
                    let b = series(Binary::Before);
                    let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
                    let (lo, hi) = ratios
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                            (lo.min(x), hi.max(x))
                        });
                    cells.extend([
                        format!("{:.0}", median(&b)),
                        format!("**{}**", fmt_ratio(median(&a) / median(&b))),
                        fmt_ratio(median(&ratios)),
                        format!("{}–{}", fmt_ratio(lo), fmt_ratio(hi)),
                    ]);
                }
                rows.push(cells);
            }
        }
        print_table(&headers, &rows);
        println!();
    }

    println!("#### start-up and checks\n");
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let all: Vec<&Measured> = results.iter().filter_map(|row| row[i].as_ref()).collect();
        let startup: Vec<f64> = all.iter().map(|m| m.startup_ms).collect();
        rows.push(vec![
            case.binary.name().to_owned(),
            case.monitors.to_string(),
            format!("{} ms", case.start_delay_ms),
            format!("{:.0}", median(&startup)),
            all.iter().map(|m| m.creates).sum::<usize>().to_string(),
            all.iter().map(|m| m.adopts).sum::<usize>().to_string(),
            all.iter().map(|m| m.duplicates).sum::<usize>().to_string(),
            all.iter().map(|m| m.claims).sum::<i64>().to_string(),
            all.iter().map(|m| m.failures).sum::<i64>().to_string(),
        ]);
    }
    print_table(
        &[
            "binary",
            "M",
            "start delay",
            "spawn → first claim ms (median)",
            "creates",
            "adopts",
            "engines created twice",
            "claims",
            "failed steps",
        ],
        &rows,
    );
    println!(
        "\n(counted rounds only; expected per case: creates = claims = {} × {rounds}, nothing else)\n",
        settings.engines
    );

    println!("#### work per engine while the monitors ran (medians of the rounds)\n");
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let all: Vec<StoreWork> = results
            .iter()
            .filter_map(|row| row[i].as_ref().map(|m| m.store))
            .collect();
        let of = |f: fn(&StoreWork) -> f64| median(&all.iter().map(f).collect::<Vec<f64>>());
        rows.push(vec![
            case.binary.name().to_owned(),
            case.monitors.to_string(),
            format!("{} ms", case.start_delay_ms),
            format!("{:.2}", of(|w| w.monitor_cpu_ms)),
            format!("{:.2}", of(|w| w.backend_cpu_ms)),
            format!("{:.2}", of(|w| w.commits)),
            format!("{:.2}", of(|w| w.rollbacks)),
            format!("{:.2}", of(|w| w.updated)),
            format!("{:.2}", of(|w| w.inserted)),
        ]);
    }
    print_table(
        &[
            "binary",
            "M",
            "start delay",
            "monitor CPU ms",
            "PostgreSQL backends CPU ms",
            "transactions committed",
            "rolled back",
            "rows updated",
            "rows inserted",
        ],
        &rows,
    );
    println!(
        "\n(CPU: user + system time of the monitor processes and of the PostgreSQL backends \
         serving them, from their start until all engines were Running, `/proc/PID/stat`, \
         10 ms ticks; the rest: `pg_stat_database` of each scratch database, from before the \
         monitors started to after they ended, less the benchmark's own queries; every \
         statement run outside a transaction counts as one committed transaction, a failed \
         compare-and-swap as one rolled back)"
    );
    Ok(())
}
