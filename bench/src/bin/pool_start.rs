//! `pool_start`: how long a create takes to give a `Running` engine when a warm pool has one
//! ready, against a cold start, side by side on one server.
//!
//! One real `rucat serve` (the release binary: local platform, real Spark, SQLite in a temporary
//! data directory, the plaintext proxy on loopback, no authentication) with one warm pool:
//!
//! ```toml
//! [[pool]]
//! name = "bench"
//! version = "4.3.0"
//! size = 1
//! ```
//!
//! - warm: `POST /engines {"name":"bench","engine_type":"Spark","version":"4.3.0"}` fits the pool
//!   and takes its warm engine;
//! - cold: the same with `"configs": {"spark.sql.shuffle.partitions": "7"}`, a config the pool's
//!   engines do not run with, so it never fits and Spark is started for it.
//!
//! Before every measurement, warm or cold, the pool is waited for until it holds one `Running`
//! warm engine and none starting (admin `GET /engines`, engines with `pool`), then `--settle-secs`:
//! no refill runs when a create is sent. Timed from sending the POST: the 201; the first
//! `GET /engines/{id}` (polled every `--poll-ms`) that says `Running`; and, with `--sql true`, the
//! first `SELECT 1` through the proxy (spark-connect-rs, on the endpoint the REST API gives, tried
//! again every 50 ms until it succeeds; also timed alone, from its first try). Then the engine is
//! stopped, waited for until `Terminated`, and deleted. Each round measures both, the order
//! flipping every round. A take makes the monitor refill the pool at once, so a warm engine's
//! first query runs while the refill's Spark starts; `--refilled-first true` (a diagnostic) has
//! a warm start wait until the pool is refilled before its `SELECT 1`.
//!
//! At the end `rucat serve` is stopped, and every process whose command line names the temporary
//! data directory (the pool's warm engine: a server that stops leaves its local engines running)
//! gets SIGTERM to its process group, SIGKILL after 20 s.
//!
//! Flags: `--rounds N` (default 5), `--poll-ms MS` (5), `--sql BOOL` (true), `--refilled-first
//! BOOL` (false), `--settle-secs S` (1), `--spark-home DIR` (default `$SPARK_HOME`), `--rucat
//! PATH` (default: `rucat` next to this binary).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rucat::engine::{Engine, EngineState};
use rucat_bench::process::Group;
use rucat_bench::{
    flag, flag_str, free_port, machine_line, median, ms, percentile, print_table, rucat_binary,
};
use serde_json::Value;
use tokio::process::Command;

type Error = Box<dyn std::error::Error + Send + Sync>;

const VERSION: &str = "4.3.0";
const POOL: &str = "bench";
/// A config the pool's engines do not run with: a create asking for it starts cold.
const COLD_CONF: (&str, &str) = ("spark.sql.shuffle.partitions", "7");
/// How often the pool is looked at, and a stopping engine.
const SLOW_POLL: Duration = Duration::from_millis(50);
/// How long the pool may take to hold a `Running` warm engine.
const POOL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one engine may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the first `SELECT 1` may take to succeed once the engine is `Running`.
const SQL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one engine may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `rucat serve` may take to answer its readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the processes left at the end get after SIGTERM.
const LEFTOVER_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Warm,
    Cold,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Warm => "warm",
            Kind::Cold => "cold",
        }
    }

    fn body(self) -> Value {
        let mut body =
            serde_json::json!({"name": "bench", "engine_type": "Spark", "version": VERSION});
        if self == Kind::Cold {
            body["configs"] = serde_json::json!({ COLD_CONF.0: COLD_CONF.1 });
        }
        body
    }
}

/// One of the times of a [`Start`], if it was measured.
type Measure = fn(&Start) -> Option<Duration>;

/// One measurement, each time from sending the POST.
struct Start {
    /// The 201 received.
    answered: Duration,
    /// The state the first GET gave (a taken warm engine is `Running` at once).
    first_state: EngineState,
    /// The first GET saying `Running` received.
    running: Duration,
    /// The first `SELECT 1` through the proxy answered, and how many tries failed before it.
    sql: Option<Sql>,
}

/// The first `SELECT 1` through the proxy on a started engine.
#[derive(Debug, Clone, Copy)]
struct Sql {
    /// Its answer, from sending the POST.
    answered: Duration,
    /// From its first try to its answer.
    took: Duration,
    /// How many tries failed before it.
    failures: u32,
}

struct Rucat {
    http: reqwest::Client,
    base: String,
    poll: Duration,
}

impl Rucat {
    async fn engine(&self, id: &str) -> Result<Engine, Error> {
        let response = self
            .http
            .get(format!("{}/engines/{id}", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("GET /engines/{id} answered {}", response.status()).into());
        }
        Ok(response.json().await?)
    }

    /// The pool's engines (an admin sees them: authentication is off).
    async fn pool_engines(&self) -> Result<Vec<Engine>, Error> {
        let response = self
            .http
            .get(format!("{}/engines?limit=100", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("GET /engines answered {}", response.status()).into());
        }
        let page: Value = response.json().await?;
        let engines: Vec<Engine> = serde_json::from_value(page["engines"].clone())?;
        Ok(engines
            .into_iter()
            .filter(|e| e.pool.as_deref() == Some(POOL))
            .collect())
    }

    /// Waits until the pool holds a `Running` warm engine and none starting.
    async fn wait_pool_ready(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        loop {
            let engines = self.pool_engines().await?;
            let running = engines
                .iter()
                .filter(|e| e.state == EngineState::Running)
                .count();
            let starting = engines
                .iter()
                .filter(|e| {
                    matches!(
                        e.state,
                        EngineState::WaitToStart
                            | EngineState::TriggerStart
                            | EngineState::StartInProgress
                    )
                })
                .count();
            if running >= 1 && starting == 0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > POOL_TIMEOUT {
                let states: Vec<String> = engines.iter().map(|e| e.state.to_string()).collect();
                return Err(format!(
                    "pool {POOL} holds no Running warm engine within {POOL_TIMEOUT:?}: {states:?}"
                )
                .into());
            }
            tokio::time::sleep(SLOW_POLL).await;
        }
    }

    async fn start(&self, kind: Kind, sql: bool, refilled_first: bool) -> Result<Start, Error> {
        let sent = Instant::now();
        let response = self
            .http
            .post(format!("{}/engines", self.base))
            .json(&kind.body())
            .send()
            .await?;
        let answered = sent.elapsed();
        let status = response.status();
        if status != reqwest::StatusCode::CREATED {
            return Err(format!(
                "POST /engines ({}) answered {status}: {}",
                kind.name(),
                response.text().await?
            )
            .into());
        }
        let created: Value = response.json().await?;
        let id = created["id"]
            .as_str()
            .ok_or("POST /engines answered no id")?
            .to_owned();
        let result = self
            .follow(&id, sent, sql, refilled_first && kind == Kind::Warm)
            .await;
        let stopped = self.stop_and_delete(&id).await;
        let (first_state, running, sql) = result?;
        stopped?;
        Ok(Start {
            answered,
            first_state,
            running,
            sql,
        })
    }

    /// From the 201 on: until a GET says `Running`, then (with `sql`) until `SELECT 1` answers;
    /// with `refilled_first`, the pool is waited for until it is refilled before `SELECT 1`.
    async fn follow(
        &self,
        id: &str,
        sent: Instant,
        sql: bool,
        refilled_first: bool,
    ) -> Result<(EngineState, Duration, Option<Sql>), Error> {
        let mut first_state = None;
        let engine = loop {
            let engine = self.engine(id).await?;
            let first_state = *first_state.get_or_insert(engine.state);
            if engine.state == EngineState::Running {
                break (first_state, engine);
            }
            if engine.state.as_str().starts_with("Error") {
                return Err(format!(
                    "engine {id} is {}: {}",
                    engine.state,
                    engine.error.unwrap_or_default()
                )
                .into());
            }
            if sent.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "engine {id} not Running within {START_TIMEOUT:?}: {}",
                    engine.state
                )
                .into());
            }
            tokio::time::sleep(self.poll).await;
        };
        let (first_state, engine) = engine;
        let running = sent.elapsed();
        if !sql {
            return Ok((first_state, running, None));
        }
        let endpoint = engine
            .endpoint
            .ok_or_else(|| format!("engine {id} is Running without an endpoint"))?;
        let connection = if endpoint.contains("/;") {
            format!("{endpoint};user_id=rucat-bench")
        } else {
            format!("{endpoint}/;user_id=rucat-bench")
        };
        if refilled_first {
            self.wait_pool_ready().await?;
        }
        let mut failures = 0;
        let first_try = Instant::now();
        let deadline = first_try + SQL_TIMEOUT;
        loop {
            match tokio::time::timeout(SQL_TIMEOUT, select_one(&connection)).await {
                Ok(Ok(())) => {
                    let sql = Sql {
                        answered: sent.elapsed(),
                        took: first_try.elapsed(),
                        failures,
                    };
                    return Ok((first_state, running, Some(sql)));
                }
                Ok(Err(error)) if Instant::now() > deadline => {
                    return Err(format!("SELECT 1 on engine {id} still fails: {error}").into())
                }
                Err(_) => return Err(format!("SELECT 1 on engine {id} did not answer").into()),
                Ok(Err(error)) => {
                    if failures == 0 {
                        eprintln!("SELECT 1 on engine {id} failed (trying again): {error}");
                    }
                    failures += 1;
                    tokio::time::sleep(SLOW_POLL).await;
                }
            }
        }
    }

    async fn stop_and_delete(&self, id: &str) -> Result<(), Error> {
        let url = format!("{}/engines/{id}", self.base);
        let started = Instant::now();
        loop {
            let status = self.http.post(format!("{url}/stop")).send().await?.status();
            if status.is_success() {
                break;
            }
            if status != reqwest::StatusCode::CONFLICT || started.elapsed() > STOP_TIMEOUT {
                return Err(format!("stop of engine {id} answered {status}").into());
            }
            // Not stoppable yet (a claim under way): try again.
            let engine = self.engine(id).await?;
            if matches!(
                engine.state,
                EngineState::Terminated | EngineState::ErrorClean
            ) {
                break;
            }
            tokio::time::sleep(SLOW_POLL).await;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let engine = self.engine(id).await?;
            if matches!(
                engine.state,
                EngineState::Terminated | EngineState::ErrorClean
            ) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("engine {id} did not stop within {STOP_TIMEOUT:?}").into());
            }
            tokio::time::sleep(SLOW_POLL).await;
        }
        let status = self.http.delete(&url).send().await?.status();
        if !status.is_success() {
            return Err(format!("delete of engine {id} answered {status}").into());
        }
        Ok(())
    }
}

/// One Spark Connect session through the proxy, one `SELECT 1`.
async fn select_one(connection: &str) -> Result<(), Error> {
    use spark_connect_rs::SparkSessionBuilder;

    let spark = SparkSessionBuilder::remote(connection).build().await?;
    let batch = spark.sql("SELECT 1 AS one").await?.collect().await?;
    if batch.num_rows() != 1 {
        return Err(format!("SELECT 1 gave {} rows", batch.num_rows()).into());
    }
    Ok(())
}

async fn start_rucat(
    binary: &Path,
    spark_home: &Path,
    data_dir: &Path,
    scratch: &Path,
    poll: Duration,
) -> Result<(Group, Rucat), Error> {
    let (port, proxy_port) = (free_port()?, free_port()?);
    let config = scratch.join("rucat.toml");
    std::fs::write(
        &config,
        format!("[[pool]]\nname = \"{POOL}\"\nversion = \"{VERSION}\"\nsize = 1\n"),
    )?;
    let mut command = Command::new(binary);
    // Only the flags and the file below configure it: no settings from this shell.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUCAT_") {
            command.env_remove(key);
        }
    }
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--proxy-listen")
        .arg(format!("127.0.0.1:{proxy_port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--spark-home")
        .arg(spark_home)
        .arg("--config")
        .arg(&config)
        .env("RUCAT_LOG", "warn");
    let mut group = Group::spawn(command, &scratch.join("rucat.log"))?;
    let rucat = Rucat {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
        poll,
    };
    let started = Instant::now();
    loop {
        if let Ok(response) = rucat
            .http
            .get(format!("{}/readyz", rucat.base))
            .send()
            .await
        {
            if response.status().is_success() {
                break;
            }
        }
        if let Some(status) = group.child.try_wait()? {
            return Err(format!("rucat serve ended ({status}):\n{}", group.log_tail()).into());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!("rucat serve not ready within {READY_TIMEOUT:?}").into());
        }
        tokio::time::sleep(SLOW_POLL).await;
    }
    Ok((group, rucat))
}

/// The live (non-zombie) processes, other than this one, whose command line contains `needle`,
/// with their process groups.
fn processes_matching(needle: &str) -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name: state, ppid, pgrp.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?;
            let pgrp = fields.nth(1)?.parse::<i32>().ok()?;
            (state != "Z" && String::from_utf8_lossy(&cmdline).contains(needle))
                .then_some((pid, pgrp))
        })
        .collect()
}

/// Ends every process whose command line names `needle`: SIGTERM to its process group, SIGKILL
/// after [`LEFTOVER_GRACE`]. Returns how many there were.
async fn end_leftovers(needle: &str) -> usize {
    // SAFETY: getpgrp cannot fail.
    let own_group = unsafe { libc::getpgrp() };
    let signal_groups = |processes: &[(i32, i32)], signal: i32| {
        for &(pid, pgrp) in processes {
            // SAFETY: kill(2) of the group (or, in this process's own group, the process) of a
            // process whose command line names this run's temporary data directory.
            unsafe {
                if pgrp > 1 && pgrp != own_group {
                    libc::kill(-pgrp, signal);
                } else {
                    libc::kill(pid, signal);
                }
            }
        }
    };
    let left = processes_matching(needle);
    signal_groups(&left, libc::SIGTERM);
    let deadline = Instant::now() + LEFTOVER_GRACE;
    loop {
        let still = processes_matching(needle);
        if still.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "{} process(es) still running {LEFTOVER_GRACE:?} after SIGTERM; killing them",
                still.len()
            );
            signal_groups(&still, libc::SIGKILL);
            break;
        }
        tokio::time::sleep(SLOW_POLL).await;
    }
    left.len()
}

/// Median, min, p90 and max of `values`, as table cells (one decimal below 100 ms).
fn spread(values: &[f64]) -> [String; 4] {
    let cell = |v: f64| {
        if v < 100.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [
        cell(median(values)),
        cell(min),
        cell(percentile(values, 90.0)),
        cell(max),
    ]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let poll = Duration::from_millis(flag("poll-ms", 5));
    let sql: bool = flag("sql", true);
    let refilled_first: bool = flag("refilled-first", false);
    let settle = Duration::from_secs_f64(flag("settle-secs", 1.0));
    let spark_home = flag_str("spark-home")
        .or_else(|| std::env::var("SPARK_HOME").ok())
        .map(PathBuf::from)
        .ok_or("set SPARK_HOME or --spark-home (SPARK_HOME=$(bash scripts/setup.sh))")?;
    let binary = rucat_binary()?;
    let scratch = tempfile::tempdir()?;
    // Canonical, as the local platform writes it into its engines' command lines.
    let scratch_path = std::fs::canonicalize(scratch.path())?;
    let data_dir = scratch_path.join("rucat-data");
    std::fs::create_dir_all(&data_dir)?;
    let needle = data_dir.to_string_lossy().into_owned();

    let started = start_rucat(&binary, &spark_home, &data_dir, &scratch_path, poll).await;
    let (mut rucat_process, rucat) = match started {
        Ok(started) => started,
        Err(error) => {
            end_leftovers(&needle).await;
            return Err(error);
        }
    };

    let outcome = async {
        let first = rucat.wait_pool_ready().await?;
        eprintln!(
            "pool {POOL}: a Running warm engine {:.1} s after the server was ready",
            first.as_secs_f64()
        );
        let mut rows = Vec::new();
        let mut warm: Vec<Start> = Vec::new();
        let mut cold: Vec<Start> = Vec::new();
        for r in 0..rounds {
            let order = if r % 2 == 0 {
                [Kind::Warm, Kind::Cold]
            } else {
                [Kind::Cold, Kind::Warm]
            };
            for kind in order {
                rucat.wait_pool_ready().await?;
                tokio::time::sleep(settle).await;
                let start = rucat.start(kind, sql, refilled_first).await?;
                let taken = start.first_state == EngineState::Running;
                if taken != (kind == Kind::Warm) {
                    eprintln!(
                        "warning: round {} {}: the first GET said {} (a create that took a warm engine is Running at once, a cold one is not)",
                        r + 1,
                        kind.name(),
                        start.first_state
                    );
                }
                eprintln!(
                    "round {} {}: 201 {:.1} ms (first GET: {}), Running {:.1} ms, SELECT 1 {}",
                    r + 1,
                    kind.name(),
                    ms(start.answered),
                    start.first_state,
                    ms(start.running),
                    start.sql.map_or("-".to_owned(), |sql| format!(
                        "{:.1} ms (the query itself {:.1} ms, {} failed tries)",
                        ms(sql.answered),
                        ms(sql.took),
                        sql.failures
                    )),
                );
                match kind {
                    Kind::Warm => warm.push(start),
                    Kind::Cold => cold.push(start),
                }
            }
            let (w, c) = (
                warm.last().ok_or("no warm start")?,
                cold.last().ok_or("no cold start")?,
            );
            let sql_cell = |s: &Start| {
                s.sql
                    .map_or("-".to_owned(), |sql| format!("{:.0}", ms(sql.answered)))
            };
            rows.push(vec![
                (r + 1).to_string(),
                format!("{}, {}", order[0].name(), order[1].name()),
                format!("{:.1}", ms(w.answered)),
                format!("{:.1}", ms(w.running)),
                sql_cell(w),
                format!("{:.1}", ms(c.answered)),
                format!("{:.0}", ms(c.running)),
                sql_cell(c),
                format!("{:.1}", c.running.as_secs_f64() / w.running.as_secs_f64()),
            ]);
        }
        Ok::<_, Error>((rows, warm, cold))
    }
    .await;
    rucat_process.stop(Duration::from_secs(30)).await;
    let left = end_leftovers(&needle).await;
    let (rows, warm, cold) = outcome?;

    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    println!(
        "### pool_start — {rounds} rounds (warm and cold alternating), polled every {} ms{}; {}, load average {load} at the end\n",
        poll.as_millis(),
        if refilled_first {
            "; warm SELECT 1 after the pool refilled"
        } else {
            ""
        },
        machine_line()
    );
    print_table(
        &[
            "round",
            "order",
            "warm: 201 ms",
            "warm: Running ms",
            "warm: SELECT 1 ms",
            "cold: 201 ms",
            "cold: Running ms",
            "cold: SELECT 1 ms",
            "cold / warm (Running)",
        ],
        &rows,
    );
    println!();
    let series = |starts: &[Start], what: Measure| -> Vec<f64> {
        starts.iter().filter_map(what).map(ms).collect()
    };
    let mut summary = Vec::new();
    let measures: [(&str, Measure); 4] = [
        ("POST sent → 201", |s| Some(s.answered)),
        ("POST sent → GET says Running", |s| Some(s.running)),
        ("POST sent → first SELECT 1 answered", |s| {
            s.sql.map(|sql| sql.answered)
        }),
        ("first SELECT 1 alone (first try → answer)", |s| {
            s.sql.map(|sql| sql.took)
        }),
    ];
    for (what, measure) in measures {
        let (w, c) = (series(&warm, measure), series(&cold, measure));
        if w.is_empty() || c.is_empty() {
            continue;
        }
        let [w50, wmin, w90, wmax] = spread(&w);
        let [c50, cmin, c90, cmax] = spread(&c);
        summary.push(vec![
            what.to_owned(),
            w50,
            wmin,
            w90,
            wmax,
            c50,
            cmin,
            c90,
            cmax,
            format!("{:.2}", median(&c) / median(&w)),
        ]);
    }
    print_table(
        &[
            "ms",
            "warm p50",
            "warm min",
            "warm p90",
            "warm max",
            "cold p50",
            "cold min",
            "cold p90",
            "cold max",
            "cold / warm (p50)",
        ],
        &summary,
    );
    let failed: u32 = warm
        .iter()
        .chain(&cold)
        .filter_map(|s| s.sql.map(|sql| sql.failures))
        .sum();
    println!(
        "\nFailed SELECT 1 tries before the first success (all starts): {failed}. Processes under the data directory after the server stopped: {left} (the pool's warm engine; ended)."
    );
    Ok(())
}
