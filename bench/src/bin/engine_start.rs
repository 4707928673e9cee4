//! `engine_start`: how long a Spark Connect engine takes to serve when Rucat starts it on the local
//! platform, against starting the same Spark by hand with `sbin/start-connect-server.sh`.
//!
//! - raw: `SPARK_NO_DAEMONIZE=1 $SPARK_HOME/sbin/start-connect-server.sh --conf
//!   spark.connect.grpc.binding.port=<free port> --conf spark.ui.enabled=false` in its own
//!   process group (own `SPARK_LOG_DIR` and `SPARK_PID_DIR`), timed from spawn until the port
//!   serves gRPC (`rucat::platform::local::grpc_serves`, polled every 50 ms); then the group is
//!   stopped.
//! - rucat: the real `rucat serve` binary (started once, before the rounds); timed from sending
//!   `POST /engines` until `GET /engines/{id}` (polled every 50 ms) says `Running`; then the
//!   engine is stopped, waited for until `Terminated`, and deleted.
//!
//! Rounds alternate (the order flips every round); one raw start before them warms the page
//! cache and is not counted.
//!
//! Flags: `--rounds N` (default 5), `--warmup N` (1), `--spark-home DIR` (default `$SPARK_HOME`),
//! `--rucat PATH` (default: `rucat` next to this binary), `--rucat-config FILE` (a configuration
//! file for `rucat serve`; default none), `--settle-secs S` (2).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rucat::engine::{Engine, EngineEvent, EngineState};
use rucat::platform::local::grpc_serves;
use rucat_bench::process::Group;
use rucat_bench::{
    flag, flag_str, free_port, machine_line, median, post_engine, print_table, rucat_binary, Posted,
};
use tokio::process::Command;

type Error = Box<dyn std::error::Error + Send + Sync>;

const POLL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one engine may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one engine may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `rucat serve` may take to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts Spark Connect by hand; returns the time from spawn until it serves gRPC.
async fn raw_start(spark_home: &Path, scratch: &Path, round: &str) -> Result<Duration, Error> {
    let dir = scratch.join(format!("raw-{round}"));
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("pids"))?;
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut command = Command::new("bash");
    command
        .arg(spark_home.join("sbin").join("start-connect-server.sh"))
        .arg("--conf")
        .arg(format!("spark.connect.grpc.binding.port={port}"))
        .arg("--conf")
        .arg("spark.ui.enabled=false")
        .env("SPARK_HOME", spark_home)
        .env("SPARK_NO_DAEMONIZE", "1")
        .env("SPARK_LOG_DIR", dir.join("logs"))
        .env("SPARK_PID_DIR", dir.join("pids"))
        .current_dir(&dir);

    let started = Instant::now();
    let mut group = Group::spawn(command, &dir.join("out.log"))?;
    let result = loop {
        if grpc_serves(addr, PROBE_TIMEOUT).await {
            break Ok(started.elapsed());
        }
        if let Some(status) = group.child.try_wait()? {
            break Err(format!(
                "start-connect-server.sh ended ({status}) before serving:\n{}",
                group.log_tail()
            ));
        }
        if started.elapsed() > START_TIMEOUT {
            break Err(format!(
                "raw Spark Connect did not serve within {START_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    group.stop(Duration::from_secs(30)).await;
    Ok(result?)
}

struct Rucat {
    http: reqwest::Client,
    base: String,
}

struct RucatStart {
    /// POST sent → `Running` seen.
    total: Duration,
    /// From the event history: created → `StartInProgress` (the process was spawned).
    to_spawned_ms: Option<i64>,
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

    async fn wait_for(
        &self,
        id: &str,
        wanted: EngineState,
        timeout: Duration,
    ) -> Result<Engine, Error> {
        let started = Instant::now();
        loop {
            let engine = self.engine(id).await?;
            if engine.state == wanted {
                return Ok(engine);
            }
            if engine.state.as_str().starts_with("Error") {
                return Err(format!(
                    "engine {id} is {}: {}",
                    engine.state,
                    engine.error.unwrap_or_default()
                )
                .into());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "engine {id} not {wanted} within {timeout:?}: {}",
                    engine.state
                )
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn start(&self) -> Result<RucatStart, Error> {
        let Posted {
            id, sent: started, ..
        } = post_engine(&self.http, &self.base, "4.3.0").await?;
        let result = self
            .wait_for(&id, EngineState::Running, START_TIMEOUT)
            .await;
        let total = started.elapsed();
        let to_spawned_ms = self.spawn_offset(&id).await;
        if let Ok(engine) = &result {
            let serves = match engine
                .endpoint
                .as_deref()
                .and_then(|e| e.strip_prefix("sc://"))
                .and_then(|e| e.parse::<SocketAddr>().ok())
            {
                Some(addr) => grpc_serves(addr, PROBE_TIMEOUT).await,
                None => false,
            };
            if !serves {
                eprintln!(
                    "warning: engine {id} is Running but its endpoint {:?} does not serve",
                    engine.endpoint
                );
            }
        }
        self.stop_and_delete(&id).await?;
        result?;
        Ok(RucatStart {
            total,
            to_spawned_ms,
        })
    }

    async fn spawn_offset(&self, id: &str) -> Option<i64> {
        let response = self
            .http
            .get(format!("{}/engines/{id}/events", self.base))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let events: Vec<EngineEvent> = serde_json::from_value(body["events"].clone()).ok()?;
        let created = events.iter().find(|e| e.from.is_none())?.time;
        let spawned = events
            .iter()
            .find(|e| e.to == EngineState::StartInProgress)?
            .time;
        Some((spawned - created).num_milliseconds())
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
            tokio::time::sleep(POLL).await;
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
            tokio::time::sleep(POLL).await;
        }
        let status = self.http.delete(&url).send().await?.status();
        if !status.is_success() {
            return Err(format!("delete of engine {id} answered {status}").into());
        }
        Ok(())
    }
}

async fn start_rucat(
    binary: &Path,
    spark_home: &Path,
    scratch: &Path,
    config: Option<&Path>,
) -> Result<(Group, Rucat), Error> {
    let port = free_port()?;
    let data_dir = scratch.join("rucat-data");
    let mut command = Command::new(binary);
    // Only the flags below configure it: no configuration file or settings from this shell.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUCAT_") {
            command.env_remove(key);
        }
    }
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--spark-home")
        .arg(spark_home)
        .env("RUCAT_LOG", "warn");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut group = Group::spawn(command, &scratch.join("rucat.log"))?;
    let rucat = Rucat {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
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
        tokio::time::sleep(POLL).await;
    }
    Ok((group, rucat))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let warmup: usize = flag("warmup", 1);
    let settle = Duration::from_secs_f64(flag("settle-secs", 2.0));
    let spark_home = flag_str("spark-home")
        .or_else(|| std::env::var("SPARK_HOME").ok())
        .map(PathBuf::from)
        .ok_or("set SPARK_HOME or --spark-home (SPARK_HOME=$(bash scripts/setup.sh))")?;
    let binary = rucat_binary()?;
    let config = flag_str("rucat-config").map(PathBuf::from);
    let scratch = tempfile::tempdir()?;
    let (mut rucat_process, rucat) =
        start_rucat(&binary, &spark_home, scratch.path(), config.as_deref()).await?;

    let outcome = async {
        for w in 0..warmup {
            let took = raw_start(&spark_home, scratch.path(), &format!("warmup-{w}")).await?;
            eprintln!("warm-up raw start: {:.2} s", took.as_secs_f64());
            tokio::time::sleep(settle).await;
        }
        let mut rows = Vec::new();
        let (mut raws, mut rucats, mut spawned) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let raw_first = r % 2 == 0;
            let (mut raw, mut ours) = (None, None);
            for step in 0..2 {
                if (step == 0) == raw_first {
                    raw = Some(raw_start(&spark_home, scratch.path(), &r.to_string()).await?);
                } else {
                    ours = Some(rucat.start().await?);
                }
                tokio::time::sleep(settle).await;
            }
            let (raw, ours) = (raw.ok_or("no raw start")?, ours.ok_or("no rucat start")?);
            eprintln!(
                "round {}: raw {:.2} s, rucat {:.2} s",
                r + 1,
                raw.as_secs_f64(),
                ours.total.as_secs_f64()
            );
            rows.push(vec![
                (r + 1).to_string(),
                if raw_first {
                    "raw, rucat"
                } else {
                    "rucat, raw"
                }
                .to_owned(),
                format!("{:.2}", raw.as_secs_f64()),
                format!("{:.2}", ours.total.as_secs_f64()),
                format!("{:.3}", ours.total.as_secs_f64() / raw.as_secs_f64()),
                ours.to_spawned_ms
                    .map_or("?".to_owned(), |ms| ms.to_string()),
            ]);
            raws.push(raw.as_secs_f64());
            rucats.push(ours.total.as_secs_f64());
            if let Some(ms) = ours.to_spawned_ms {
                spawned.push(ms as f64);
            }
        }
        Ok::<_, Error>((rows, raws, rucats, spawned))
    }
    .await;
    rucat_process.stop(Duration::from_secs(30)).await;
    let (rows, raws, rucats, spawned) = outcome?;

    println!(
        "### engine_start — {rounds} rounds (alternating), {warmup} warm-up raw start(s); {}\n",
        machine_line()
    );
    print_table(
        &[
            "round",
            "order",
            "raw s",
            "rucat s",
            "rucat / raw",
            "rucat: created → process spawned (ms)",
        ],
        &rows,
    );
    println!();
    let (raw_median, rucat_median) = (median(&raws), median(&rucats));
    print_table(
        &["", "raw", "rucat", "rucat / raw"],
        &[vec![
            "median s".to_owned(),
            format!("{raw_median:.2}"),
            format!("{rucat_median:.2}"),
            format!("{:.3}", rucat_median / raw_median),
        ]],
    );
    println!(
        "\nrucat: median created → process spawned (from the event history, ms precision): {:.0} ms",
        median(&spawned)
    );
    Ok(())
}
