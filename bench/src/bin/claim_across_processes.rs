//! `claim_across_processes`: how long from `POST /engines` being sent to one process until a
//! monitor in another process has claimed the engine, with PostgreSQL LISTEN/NOTIFY wake-ups and
//! with polling only.
//!
//! Each case starts, from the real release binary, one `rucat server` and one `rucat monitor`
//! (two processes) on one fresh PostgreSQL scratch database and one shared data directory, with
//! `--platform simulated` (no Spark) and a configuration file holding
//! `[monitor] poll_interval_ms = 2000` (the default) and `[database] push_wake_ups = true`
//! (case **notify**) or `false` (case **poll**), for both processes.
//!
//! Requests are sequential. Before each one the benchmark waits a random time, uniform in
//! `[0, --jitter-ms)` (default: the poll interval), the same seeded sequence in both cases, so
//! that requests arrive at random points of the monitor's poll cycle, as real ones would.
//! Without it, every request would arrive just after the pass that finished the previous engine,
//! and polling would always take almost the whole interval. Then `POST /engines`, and the
//! claim is timed from the wall clock at sending (`SystemTime`, µs) to:
//!
//! - **platform create**: the time (unix ms) the monitor process wrote on the simulated
//!   platform's journal line `<ms> <pid> create <id>`, right after its claim. The benchmark
//!   reads the journal (incrementally, every 1 ms) only to know when to go on; the time measured
//!   is the monitor's own, so polling the file adds nothing to it and puts no load on the store.
//! - **claim CAS**: the time of the `WaitToStart → TriggerStart` event in the engine's history,
//!   taken by the monitor when it starts the compare-and-swap.
//!
//! Both are whole milliseconds (floored); 0.5 ms is added to each, so a value is within ±0.5 ms.
//! Then the engine is stopped, waited for until `Terminated` (`GET` every 10 ms) and deleted, so
//! that the monitor is idle before the next request. Reported per case: p50/p90/p99/max/mean and
//! the ratio poll / notify. At the end the journal is checked: each engine created exactly once.
//!
//! The child processes are stopped at the end of each case (SIGTERM, then SIGKILL) and killed if
//! the benchmark fails or is interrupted on the way (kill on drop).
//!
//! Flags: `--requests N` (default 200), `--warmup N` (10), `--poll-ms MS` (2000),
//! `--jitter-ms MS` (the poll interval), `--seed N` (1), `--budget-secs S` (1800, per case),
//! `--rucat PATH` (default: `rucat` next to this binary), `--postgres-url URL` (default
//! `$RUCAT_TEST_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rucat::engine::{EngineEvent, EngineState};
use rucat::platform::simulated::{JournalEntry, JournalEvent, SimulatedPlatform};
use rucat::store::postgres::ScratchDatabase;
use rucat_bench::process::RucatProcess as Process;
use rucat_bench::{
    flag, free_port, machine_line, percentile, post_engine, postgres_admin_url, print_table,
    rucat_binary, Posted, Rng,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const VERSION: &str = "4.3.0";
/// How long a process may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the clean-up of one engine may take (beyond one poll interval).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the journal's new lines, remembering when each engine was created.
struct JournalTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    created: std::collections::HashMap<String, i64>,
}

impl JournalTail {
    fn new(data_dir: &Path) -> Self {
        JournalTail {
            path: data_dir.join("simulated").join("journal"),
            offset: 0,
            partial: String::new(),
            created: std::collections::HashMap::new(),
        }
    }

    fn read_new(&mut self) -> Result<(), Error> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("reading {}: {e}", self.path.display()).into()),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = String::new();
        let read = file.read_to_string(&mut chunk)?;
        self.offset += read as u64;
        self.partial.push_str(&chunk);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let entry = JournalEntry::parse(&line)
                .ok_or_else(|| format!("malformed journal line {line:?}"))?;
            if entry.event == JournalEvent::Create {
                self.created.insert(entry.engine, entry.time_ms);
            }
        }
        Ok(())
    }

    fn created(&mut self, id: &str) -> Result<Option<i64>, Error> {
        if !self.created.contains_key(id) {
            self.read_new()?;
        }
        Ok(self.created.get(id).copied())
    }
}

struct Deployment {
    server: Process,
    monitor: Process,
    http: reqwest::Client,
    base: String,
    journal: JournalTail,
    poll: Duration,
}

struct Sample {
    /// POST sent → the journal's create line (ms, +0.5 for the flooring).
    create: f64,
    /// POST sent → the `TriggerStart` event (ms, +0.5 for the flooring).
    cas: f64,
    /// POST sent → 201 received (ms).
    response: f64,
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

impl Deployment {
    async fn start(
        binary: &Path,
        database_url: &str,
        dir: &Path,
        push_wake_ups: bool,
        poll: Duration,
    ) -> Result<Deployment, Error> {
        let config = dir.join("rucat.toml");
        std::fs::write(
            &config,
            format!(
                "[monitor]\npoll_interval_ms = {}\n\n[database]\npush_wake_ups = {push_wake_ups}\n",
                poll.as_millis()
            ),
        )?;
        let data_dir = dir.join("data");
        let (config, data) = (config.to_string_lossy(), data_dir.to_string_lossy());
        let common = [
            "--data-dir",
            &data,
            "--database-url",
            database_url,
            "--platform",
            "simulated",
            "--config",
            &config,
        ];
        let listen = format!("127.0.0.1:{}", free_port()?);
        let mut server_args = vec!["server", "--listen", &listen];
        server_args.extend(common);
        let mut monitor_args = vec!["monitor"];
        monitor_args.extend(common);
        let server = Process::spawn(binary, "server", &server_args, &dir.join("server.log"))?;
        let monitor = Process::spawn(binary, "monitor", &monitor_args, &dir.join("monitor.log"))?;
        let mut deployment = Deployment {
            server,
            monitor,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            base: format!("http://{listen}"),
            journal: JournalTail::new(&data_dir),
            poll,
        };

        let started = Instant::now();
        loop {
            deployment.server.check_alive()?;
            deployment.monitor.check_alive()?;
            let ready = deployment
                .http
                .get(format!("{}/readyz", deployment.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready && deployment.monitor.log_text().contains("monitor started") {
                return Ok(deployment);
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "server or monitor not ready within {READY_TIMEOUT:?}:\n{}\n{}",
                    deployment.server.log_tail(),
                    deployment.monitor.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn one(&mut self) -> Result<Sample, Error> {
        self.server.check_alive()?;
        self.monitor.check_alive()?;
        let wall = unix_ms(SystemTime::now());
        let Posted { id, sent, answered } = post_engine(&self.http, &self.base, VERSION).await?;

        let claim_timeout = self.poll + Duration::from_secs(10);
        let created = loop {
            if let Some(created) = self.journal.created(&id)? {
                break created;
            }
            if sent.elapsed() > claim_timeout {
                self.monitor.check_alive()?;
                return Err(format!("engine {id} not created within {claim_timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };

        self.stop_and_wait(&id).await?;
        let events = self.events(&id).await?;
        let claimed = events
            .iter()
            .find(|e| e.from == Some(EngineState::WaitToStart) && e.to == EngineState::TriggerStart)
            .ok_or_else(|| format!("engine {id} has no WaitToStart → TriggerStart event"))?
            .time
            .timestamp_millis();
        let status = self
            .http
            .delete(format!("{}/engines/{id}", self.base))
            .send()
            .await?
            .status();
        if status != reqwest::StatusCode::NO_CONTENT {
            return Err(format!("DELETE /engines/{id} answered {status}").into());
        }
        Ok(Sample {
            create: created as f64 + 0.5 - wall,
            cas: claimed as f64 + 0.5 - wall,
            response: (answered - sent).as_secs_f64() * 1000.0,
        })
    }

    async fn state(&self, id: &str) -> Result<EngineState, Error> {
        let response = self
            .http
            .get(format!("{}/engines/{id}", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("GET /engines/{id} answered {}", response.status()).into());
        }
        let body: serde_json::Value = response.json().await?;
        Ok(serde_json::from_value(body["state"].clone())?)
    }

    async fn events(&self, id: &str) -> Result<Vec<EngineEvent>, Error> {
        let response = self
            .http
            .get(format!("{}/engines/{id}/events", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("GET /engines/{id}/events answered {}", response.status()).into());
        }
        let body: serde_json::Value = response.json().await?;
        Ok(serde_json::from_value(body["events"].clone())?)
    }

    /// Stops the engine (again while the monitor still holds its claim: 409) and waits until it
    /// is `Terminated`.
    async fn stop_and_wait(&self, id: &str) -> Result<(), Error> {
        let deadline = Instant::now() + self.poll + CLEANUP_TIMEOUT;
        loop {
            let status = self
                .http
                .post(format!("{}/engines/{id}/stop", self.base))
                .send()
                .await?
                .status();
            if status == reqwest::StatusCode::ACCEPTED {
                break;
            }
            if status != reqwest::StatusCode::CONFLICT || Instant::now() > deadline {
                return Err(format!("POST /engines/{id}/stop answered {status}").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        loop {
            let state = self.state(id).await?;
            if state == EngineState::Terminated {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("engine {id} not Terminated in time: {state}").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&mut self) {
        self.monitor.stop().await;
        self.server.stop().await;
    }
}

struct CaseResult {
    samples: Vec<Sample>,
    elapsed: Duration,
    /// Journal check: creates, adopts, engines created more than once.
    creates: usize,
    adopts: usize,
    duplicates: usize,
}

#[allow(clippy::too_many_arguments)]
async fn run_case(
    binary: &Path,
    admin_url: &str,
    push_wake_ups: bool,
    poll: Duration,
    jitter: Duration,
    seed: u64,
    requests: usize,
    warmup: usize,
    budget: Duration,
) -> Result<CaseResult, Error> {
    let scratch = ScratchDatabase::create(admin_url, "bench_claim")
        .await
        .map_err(|e| format!("cannot create a scratch database through {admin_url}: {e}"))?;
    let dir = tempfile::tempdir()?;
    let mut deployment =
        Deployment::start(binary, scratch.url(), dir.path(), push_wake_ups, poll).await?;
    let outcome = async {
        let mut rng = Rng::new(seed);
        let started = Instant::now();
        let mut samples = Vec::with_capacity(requests);
        for i in 0..warmup + requests {
            if started.elapsed() > budget {
                eprintln!("time budget of {budget:?} spent; stopping early");
                break;
            }
            tokio::time::sleep(jitter.mul_f64(rng.unit())).await;
            let sample = deployment.one().await?;
            if i >= warmup {
                samples.push(sample);
            }
        }
        Ok::<_, Error>((samples, started.elapsed()))
    }
    .await;
    deployment.stop().await;
    let (samples, elapsed) = outcome?;

    let journal = SimulatedPlatform::journal(&dir.path().join("data"))?;
    let mut per_engine = std::collections::HashMap::<&str, usize>::new();
    for entry in journal.iter().filter(|e| e.event == JournalEvent::Create) {
        *per_engine.entry(entry.engine.as_str()).or_default() += 1;
    }
    Ok(CaseResult {
        samples,
        elapsed,
        creates: per_engine.values().sum(),
        adopts: journal
            .iter()
            .filter(|e| e.event == JournalEvent::Adopt)
            .count(),
        duplicates: per_engine.values().filter(|&&n| n > 1).count(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let requests: usize = flag("requests", 200);
    let warmup: usize = flag("warmup", 10);
    let poll = Duration::from_millis(flag("poll-ms", 2000));
    let jitter = Duration::from_millis(flag("jitter-ms", poll.as_millis() as u64));
    let seed: u64 = flag("seed", 1);
    let budget = Duration::from_secs(flag("budget-secs", 1800));
    let binary = rucat_binary()?;
    let admin_url = postgres_admin_url();

    let mut results = Vec::new();
    for (name, push) in [("notify", true), ("poll", false)] {
        eprintln!("case {name}: push_wake_ups = {push}");
        let result = run_case(
            &binary, &admin_url, push, poll, jitter, seed, requests, warmup, budget,
        )
        .await?;
        eprintln!(
            "case {name}: {} requests in {:.0} s",
            result.samples.len(),
            result.elapsed.as_secs_f64()
        );
        results.push((name, push, result));
    }

    println!(
        "### claim_across_processes — {requests} sequential requests ({warmup} warm-up) per case; {}; \
         one `rucat server` + one `rucat monitor` process, PostgreSQL, platform simulated, \
         poll_interval {poll:?}, random wait before each request uniform in [0, {jitter:?})\n",
        machine_line()
    );
    let row = |case: &str, what: &str, v: &[f64]| {
        let mean = if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        vec![
            case.to_owned(),
            what.to_owned(),
            v.len().to_string(),
            format!("{:.1}", percentile(v, 50.0)),
            format!("{:.1}", percentile(v, 90.0)),
            format!("{:.1}", percentile(v, 99.0)),
            format!("{:.1}", percentile(v, 100.0)),
            format!("{mean:.1}"),
        ]
    };
    let mut rows = Vec::new();
    for (name, push, result) in &results {
        let case = format!("{name} (push_wake_ups = {push})");
        let create: Vec<f64> = result.samples.iter().map(|s| s.create).collect();
        let cas: Vec<f64> = result.samples.iter().map(|s| s.cas).collect();
        let response: Vec<f64> = result.samples.iter().map(|s| s.response).collect();
        rows.push(row(&case, "POST sent → platform create (journal)", &create));
        rows.push(row(&case, "POST sent → claim CAS (event)", &cas));
        rows.push(row(&case, "POST sent → 201 received", &response));
    }
    print_table(
        &["case", "ms", "n", "p50", "p90", "p99", "max", "mean"],
        &rows,
    );

    if let [(_, _, notify), (_, _, polled)] = &results[..] {
        let create = |r: &CaseResult| r.samples.iter().map(|s| s.create).collect::<Vec<f64>>();
        let (a, b) = (create(notify), create(polled));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!();
        print_table(
            &[
                "POST sent → platform create",
                "notify",
                "poll",
                "poll / notify",
            ],
            &[50.0, 90.0, 99.0]
                .iter()
                .map(|&p| {
                    let (x, y) = (percentile(&a, p), percentile(&b, p));
                    vec![
                        format!("p{p:.0} ms"),
                        format!("{x:.1}"),
                        format!("{y:.1}"),
                        format!("{:.0}", y / x),
                    ]
                })
                .chain(std::iter::once(vec![
                    "mean ms".to_owned(),
                    format!("{:.1}", mean(&a)),
                    format!("{:.1}", mean(&b)),
                    format!("{:.0}", mean(&b) / mean(&a)),
                ]))
                .collect::<Vec<_>>(),
        );
    }
    println!();
    for (name, _, result) in &results {
        let fast = result.samples.iter().filter(|s| s.create < 50.0).count();
        println!(
            "- {name}: {} requests in {:.0} s; claims under 50 ms: {fast}; journal: {} creates, {} adopts, {} engines created more than once",
            result.samples.len(),
            result.elapsed.as_secs_f64(),
            result.creates,
            result.adopts,
            result.duplicates
        );
    }
    Ok(())
}
