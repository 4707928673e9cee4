//! `proxy_overhead`: what Rucat's Spark Connect proxy costs a client, against connecting to the
//! same engine directly, in plaintext and over TLS.
//!
//! One real `rucat serve` (the release binary: REST server, monitor with the local platform and
//! real Spark, the plaintext proxy on loopback) with authentication on, one engine started through
//! the REST API, and a second `rucat proxy` on the same SQLite store serving TLS (a test CA made
//! with rcgen). Three targets, the same engine behind each:
//!
//! - direct: the engine's own port, plaintext, with its secret (read from the store):
//!   `sc://localhost:ENGINE/;token=SECRET`;
//! - proxy: `rucat serve`'s proxy, the engine's endpoint as the REST API gives it, plus the
//!   user's token: `sc://localhost:PROXY/;x-rucat-engine=ID;token=TOKEN`;
//! - proxy-tls: the TLS proxy: `sc://localhost:TLS/;use_ssl=true;x-rucat-engine=ID;token=TOKEN`.
//!
//! The client is PySpark's own Spark Connect client (`bench/proxy_overhead_client.py`, run with
//! the Spark virtualenv's Python): one process and one session per target per round, made and
//! warmed up (one of each operation) before anything is timed. Timed, in this order: `--collects`
//! collects of `spark.range(ROWS).selectExpr("id", "id * 2 AS double", "CAST(id AS STRING) AS
//! text")` with `toPandas()`; `--calls` sequential `spark.sql("SELECT 1 AS one").collect()`;
//! `--calls` sequential `spark.conf.get("spark.sql.shuffle.partitions")` (one `Config` RPC each,
//! answered without a query: the cost of one proxied call on its own). The order of the targets
//! rotates from round to round; a warm-up round runs first and is not counted. Then the same with
//! spark-connect-rs 0.0.2 (in this process, plaintext only: direct and proxy; `collect()` into one
//! Arrow batch). The proxies' `/metrics` are read around each timed part to count the calls
//! forwarded and the bytes per operation; the PySpark client counts its own RPCs by method. At the
//! end, the store read the proxy makes for every call is timed on its own (`Store::get` on the
//! same SQLite file, in this process).
//!
//! Flags: `--rounds N` (5), `--rows N` (1000000), `--calls N` (200), `--collects N` (2 per target
//! per round), `--warmup-rounds N` (1: rounds run first and not counted), `--rust BOOL` (true:
//! also the spark-connect-rs rows), `--reattach BOOL` (true: PySpark's reattachable execution, its
//! default; false for a diagnostic run without it), `--settle-secs S` (1),
//! `--spark-home DIR` (default `$SPARK_HOME`), `--python PATH` (default: the Python of the
//! virtualenv that holds `SPARK_HOME`), `--rucat PATH` (default: `rucat` next to this binary).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rucat::engine::{Engine, EngineId, EngineState};
use rucat::store::Store;
use rucat_bench::process::Group;
use rucat_bench::{
    flag, flag_str, free_port, machine_line, median, percentile, post_engine, print_table,
    rucat_binary,
};
use serde_json::Value;
use tokio::process::Command;

type Error = Box<dyn std::error::Error + Send + Sync>;

const POLL: Duration = Duration::from_millis(50);
/// How long the engine may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the engine may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `rucat serve` and `rucat proxy` may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one client run (one target in one round) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

const COLUMNS: [&str; 3] = ["id", "id * 2 AS double", "CAST(id AS STRING) AS text"];

/// The live (non-zombie) processes, other than this one, whose command line contains `needle`.
fn processes_matching(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// `rucat token create --user bench --json`: the token and its `[[auth.tokens]]` entry.
fn token_create(binary: &Path) -> Result<(String, String), Error> {
    let output = std::process::Command::new(binary)
        .args(["token", "create", "--user", "bench", "--json"])
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(format!("rucat token create failed: {output:?}").into());
    }
    let made: Value = serde_json::from_slice(&output.stdout)?;
    let token = made["token"].as_str().ok_or("no token")?.to_owned();
    let entry = format!(
        "[[auth.tokens]]\nuser = {}\nrole = {}\nhash = {}\n",
        made["user"], made["role"], made["hash"]
    );
    Ok((token, entry))
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in `dir`:
/// (CA, certificate, key).
fn tls_files(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), Error> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "rucat bench CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.use_authority_key_identifier_extension = true;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

/// A `rucat` role process (`serve` or `proxy`) with only the given flags and configuration.
fn rucat_command(binary: &Path, role: &str) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUCAT_") {
            command.env_remove(key);
        }
    }
    command.arg(role).env("RUCAT_LOG", "warn");
    command
}

/// The REST API as the benchmark's user.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
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
        wanted: &[EngineState],
        timeout: Duration,
    ) -> Result<Engine, Error> {
        let started = Instant::now();
        loop {
            let engine = self.engine(id).await?;
            if wanted.contains(&engine.state) {
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
                return Err(format!("engine {id} not {wanted:?} within {timeout:?}").into());
            }
            tokio::time::sleep(POLL).await;
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
            let engine = self.engine(id).await?;
            if matches!(
                engine.state,
                EngineState::Terminated | EngineState::ErrorClean
            ) {
                break;
            }
            if status != reqwest::StatusCode::CONFLICT || started.elapsed() > STOP_TIMEOUT {
                return Err(format!("stop of engine {id} answered {status}").into());
            }
            tokio::time::sleep(POLL).await;
        }
        self.wait_for(
            id,
            &[EngineState::Terminated, EngineState::ErrorClean],
            STOP_TIMEOUT,
        )
        .await?;
        let status = self.http.delete(&url).send().await?.status();
        if !status.is_success() {
            return Err(format!("delete of engine {id} answered {status}").into());
        }
        Ok(())
    }
}

/// The three ways to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Proxy,
    ProxyTls,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Proxy => "proxy",
            Target::ProxyTls => "proxy-tls",
        }
    }
}

/// How each target is reached.
struct Targets {
    direct: String,
    proxy: String,
    proxy_tls: String,
    proxy_metrics: String,
    proxy_tls_metrics: String,
    ca: PathBuf,
    /// The pids of `rucat serve` (its plaintext proxy) and of the TLS `rucat proxy`.
    serve_pid: i32,
    proxy_tls_pid: i32,
}

impl Targets {
    fn url(&self, target: Target) -> &str {
        match target {
            Target::Direct => &self.direct,
            Target::Proxy => &self.proxy,
            Target::ProxyTls => &self.proxy_tls,
        }
    }

    fn metrics(&self, target: Target) -> Option<&str> {
        match target {
            Target::Direct => None,
            Target::Proxy => Some(&self.proxy_metrics),
            Target::ProxyTls => Some(&self.proxy_tls_metrics),
        }
    }

    /// The process whose CPU time is read around each timed part: the target's proxy, and for
    /// direct `rucat serve` (then only its idle monitor and REST server: a baseline).
    fn cpu_pid(&self, target: Target) -> i32 {
        match target {
            Target::Direct | Target::Proxy => self.serve_pid,
            Target::ProxyTls => self.proxy_tls_pid,
        }
    }
}

/// The CPU time (user + system) process `pid` has used, in ms (clock-tick resolution).
fn cpu_ms(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 * 1000.0 / per_second as f64
}

/// The proxy's counters over one timed part: calls forwarded and bytes each way.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    calls: u64,
    bytes_to_engine: u64,
    bytes_to_client: u64,
}

impl Counted {
    fn from_json(value: &Value) -> Option<Counted> {
        Some(Counted {
            calls: value["calls"].as_u64()?,
            bytes_to_engine: value["bytes_to_engine"].as_u64()?,
            bytes_to_client: value["bytes_to_client"].as_u64()?,
        })
    }

    fn parse(text: &str) -> Counted {
        let mut counted = Counted::default();
        for line in text.lines() {
            let value = || {
                line.split_whitespace()
                    .last()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("rucat_proxy_streams_total ") {
                counted.calls = value();
            } else if line.starts_with("rucat_proxy_bytes_total{direction=\"to_engine\"}") {
                counted.bytes_to_engine = value();
            } else if line.starts_with("rucat_proxy_bytes_total{direction=\"to_client\"}") {
                counted.bytes_to_client = value();
            }
        }
        counted
    }

    fn minus(self, before: Counted) -> Counted {
        Counted {
            calls: self.calls.saturating_sub(before.calls),
            bytes_to_engine: self.bytes_to_engine.saturating_sub(before.bytes_to_engine),
            bytes_to_client: self.bytes_to_client.saturating_sub(before.bytes_to_client),
        }
    }
}

/// The timed parts of a run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// One collect of `--rows` rows (seconds).
    Collect,
    /// One `SELECT 1`, collected (milliseconds).
    Select,
    /// One `Config` RPC: `spark.conf.get(…)`, answered without running a query (milliseconds).
    Config,
}

const PARTS: [Part; 3] = [Part::Collect, Part::Select, Part::Config];
/// The key `spark.conf.get` reads in the `Config` part.
const CONF_KEY: &str = "spark.sql.shuffle.partitions";

impl Part {
    fn key(self) -> &'static str {
        match self {
            Part::Collect => "collect",
            Part::Select => "select",
            Part::Config => "config",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Part::Collect => "collect",
            Part::Select => "SELECT 1",
            Part::Config => "Config RPC",
        }
    }

    /// How many timed operations one run makes of this part.
    fn count(self, settings: &Settings) -> usize {
        match self {
            Part::Collect => settings.collects,
            Part::Select | Part::Config => settings.calls,
        }
    }
}

/// One target in one round.
struct Run {
    /// Per part (in [`PARTS`] order): the time of each operation (s for collects, ms otherwise).
    times: [Vec<f64>; 3],
    /// Per part: what the proxy counted (proxy targets only).
    counted: Option<[Counted; 3]>,
    /// Per part: the RPCs the client made, by gRPC method, as the PySpark client counts them.
    rpcs: Option<[Rpcs; 3]>,
    /// Per part: the CPU time the target's proxy process used (ms; see [`Targets::cpu_pid`]).
    cpu_ms: [f64; 3],
}

impl Run {
    fn times(&self, part: Part) -> &[f64] {
        &self.times[part as usize]
    }
}

/// What the PySpark client saw of one gRPC method during one timed part.
#[derive(Debug, Clone, Copy)]
struct RpcStat {
    calls: u64,
    /// The median time of one call (ms): until its answer, or for a stream until its end.
    p50_ms: Option<f64>,
    /// The mean time of one call (ms).
    mean_ms: Option<f64>,
    /// Messages per stream (streams only).
    messages: Option<f64>,
}

type Rpcs = std::collections::BTreeMap<String, RpcStat>;

fn rpcs_from_json(value: &Value) -> Option<Rpcs> {
    value.as_object().map(|methods| {
        methods
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.clone(),
                    RpcStat {
                        calls: v["calls"].as_u64()?,
                        p50_ms: v["p50_ms"].as_f64(),
                        mean_ms: v["mean_ms"].as_f64(),
                        messages: v["messages"].as_f64(),
                    },
                ))
            })
            .collect()
    })
}

struct Settings {
    rows: i64,
    collects: usize,
    calls: usize,
    /// Whether PySpark uses reattachable execution (its default).
    reattach: bool,
}

/// One PySpark run: `bench/proxy_overhead_client.py` in the Spark virtualenv.
async fn pyspark_run(
    python: &Path,
    targets: &Targets,
    target: Target,
    settings: &Settings,
    log: &Path,
) -> Result<Run, Error> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy_overhead_client.py");
    let mut command = Command::new(python);
    command
        .arg(&script)
        .arg(targets.url(target))
        .args(["--rows", &settings.rows.to_string()])
        .args(["--collects", &settings.collects.to_string()])
        .args(["--calls", &settings.calls.to_string()])
        .args(["--conf-key", CONF_KEY])
        .args(["--timeout", &RUN_TIMEOUT.as_secs().to_string()])
        .env_remove("SPARK_CONNECT_AUTHENTICATE_TOKEN")
        .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &targets.ca)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(File::create(log)?))
        .kill_on_drop(true);
    if let Some(metrics) = targets.metrics(target) {
        command.args(["--metrics", metrics]);
    }
    if !settings.reattach {
        command.arg("--no-reattach");
    }
    command.args(["--cpu-pid", &targets.cpu_pid(target).to_string()]);
    let child = command.spawn()?;
    let output = tokio::time::timeout(
        RUN_TIMEOUT + Duration::from_secs(30),
        child.wait_with_output(),
    )
    .await
    .map_err(|_| format!("the PySpark client ({}) did not end", target.name()))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).map_err(|_| {
            format!(
                "the PySpark client ({}) printed no JSON ({}); see {}",
                target.name(),
                output.status,
                log.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "the PySpark client ({}) failed: {}; see {}",
            target.name(),
            answer["error"],
            log.display()
        )
        .into());
    }
    let floats = |key: &str| -> Vec<f64> {
        answer["times"][key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let counted: Option<Vec<Counted>> = PARTS
        .iter()
        .map(|part| Counted::from_json(&answer["metrics"][part.key()]))
        .collect();
    let rpcs: Option<Vec<Rpcs>> = PARTS
        .iter()
        .map(|part| rpcs_from_json(&answer["rpcs"][part.key()]))
        .collect();
    Ok(Run {
        times: PARTS.map(|part| floats(part.key())),
        counted: counted.and_then(|c| c.try_into().ok()),
        rpcs: rpcs.and_then(|r| r.try_into().ok()),
        cpu_ms: PARTS.map(|part| answer["cpu_ms"][part.key()].as_f64().unwrap_or(f64::NAN)),
    })
}

/// The proxy's counters now (plaintext proxy only).
async fn metrics_now(http: &reqwest::Client, url: &str) -> Result<Counted, Error> {
    Ok(Counted::parse(&http.get(url).send().await?.text().await?))
}

/// One spark-connect-rs run, in this process.
async fn rust_run(
    http: &reqwest::Client,
    targets: &Targets,
    target: Target,
    settings: &Settings,
) -> Result<Run, Error> {
    use spark_connect_rs::SparkSessionBuilder;

    let spark = SparkSessionBuilder::remote(targets.url(target))
        .build()
        .await?;
    let select1 = || async {
        let batch = spark.sql("SELECT 1 AS one").await?.collect().await?;
        if batch.num_rows() != 1 {
            return Err::<(), Error>(format!("SELECT 1 gave {} rows", batch.num_rows()).into());
        }
        Ok(())
    };
    let collect = || async {
        let batch = spark
            .range(None, settings.rows, 1, None)
            .select_expr(COLUMNS)
            .collect()
            .await?;
        if batch.num_rows() as i64 != settings.rows || batch.num_columns() != COLUMNS.len() {
            return Err::<(), Error>(
                format!(
                    "collect gave {} rows, not {}",
                    batch.num_rows(),
                    settings.rows
                )
                .into(),
            );
        }
        Ok(())
    };
    let config = || async {
        let value = spark.conf().get(CONF_KEY, None).await?;
        if value.is_empty() {
            return Err::<(), Error>(format!("{CONF_KEY} is empty").into());
        }
        Ok(())
    };
    select1().await?;
    collect().await?;
    config().await?;
    let metrics = targets.metrics(target);
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut counted = Vec::new();
    let mut cpu = [0.0; 3];
    for part in PARTS {
        let before = match metrics {
            Some(url) => Some(metrics_now(http, url).await?),
            None => None,
        };
        let cpu_before = cpu_ms(targets.cpu_pid(target));
        for _ in 0..part.count(settings) {
            let started = Instant::now();
            match part {
                Part::Collect => collect().await?,
                Part::Select => select1().await?,
                Part::Config => config().await?,
            }
            let took = started.elapsed().as_secs_f64();
            times[part as usize].push(if part == Part::Collect {
                took
            } else {
                took * 1000.0
            });
        }
        cpu[part as usize] = cpu_ms(targets.cpu_pid(target)) - cpu_before;
        if let (Some(url), Some(before)) = (metrics, before) {
            counted.push(metrics_now(http, url).await?.minus(before));
        }
    }
    Ok(Run {
        times,
        counted: counted.try_into().ok(),
        rpcs: None,
        cpu_ms: cpu,
    })
}

/// A target's numbers in one round: the median collect (s), and p50 and p99 of the `SELECT 1`
/// and `Config` calls (ms).
#[derive(Debug, Clone, Copy)]
struct Summary {
    collect: f64,
    select: (f64, f64),
    config: (f64, f64),
}

impl Summary {
    fn of(run: &Run) -> Summary {
        let p = |part: Part| {
            (
                percentile(run.times(part), 50.0),
                percentile(run.times(part), 99.0),
            )
        };
        Summary {
            collect: median(run.times(Part::Collect)),
            select: p(Part::Select),
            config: p(Part::Config),
        }
    }

    fn latency(&self, part: Part) -> (f64, f64) {
        match part {
            Part::Select => self.select,
            _ => self.config,
        }
    }
}

/// What one client measured of each of its targets, round by round.
struct Series {
    client: &'static str,
    targets: Vec<Target>,
    /// Per round: the order, and per target (in `targets` order) its run.
    rounds: Vec<(Vec<Target>, Vec<Run>)>,
}

impl Series {
    fn new(client: &'static str, targets: Vec<Target>) -> Self {
        Series {
            client,
            targets,
            rounds: Vec::new(),
        }
    }

    fn order(&self, round: usize) -> Vec<Target> {
        let n = self.targets.len();
        (0..n).map(|i| self.targets[(round + i) % n]).collect()
    }

    fn print(&self, settings: &Settings) {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
        let n = names.len();
        let per_round: Vec<Vec<Summary>> = self
            .rounds
            .iter()
            .map(|(_, runs)| runs.iter().map(Summary::of).collect())
            .collect();
        let order = |r: usize| {
            self.rounds[r]
                .0
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let table = |headers: Vec<String>, rows: Vec<Vec<String>>| {
            print_table(
                &headers.iter().map(String::as_str).collect::<Vec<_>>(),
                &rows,
            );
        };

        println!(
            "#### {}: collect of {} rows (s, median of {} per round)\n",
            self.client, settings.rows, settings.collects
        );
        let mut headers = vec!["round".to_owned(), "order".to_owned()];
        headers.extend(names.iter().map(|n| format!("{n} s")));
        headers.extend(names[1..].iter().map(|n| format!("{n} / direct")));
        let rows = per_round
            .iter()
            .enumerate()
            .map(|(r, values)| {
                let mut row = vec![(r + 1).to_string(), order(r)];
                row.extend(values.iter().map(|v| format!("{:.3}", v.collect)));
                row.extend(
                    values[1..]
                        .iter()
                        .map(|v| format!("{:.3}", v.collect / values[0].collect)),
                );
                row
            })
            .collect();
        table(headers, rows);

        for part in [Part::Select, Part::Config] {
            let what = match part {
                Part::Select => "sequential `SELECT 1`, each collected".to_owned(),
                _ => format!("sequential `Config` RPCs (`spark.conf.get(\"{CONF_KEY}\")`)"),
            };
            println!("\n#### {}: {} {what} (ms)\n", self.client, settings.calls);
            let mut headers = vec!["round".to_owned(), "order".to_owned()];
            headers.extend(names.iter().map(|n| format!("{n} p50")));
            headers.extend(names.iter().map(|n| format!("{n} p99")));
            headers.extend(names[1..].iter().map(|n| format!("{n} p50 added")));
            let rows =
                per_round
                    .iter()
                    .enumerate()
                    .map(|(r, values)| {
                        let mut row = vec![(r + 1).to_string(), order(r)];
                        row.extend(values.iter().map(|v| format!("{:.2}", v.latency(part).0)));
                        row.extend(values.iter().map(|v| format!("{:.2}", v.latency(part).1)));
                        row.extend(values[1..].iter().map(|v| {
                            format!("{:+.2}", v.latency(part).0 - values[0].latency(part).0)
                        }));
                        row
                    })
                    .collect();
            table(headers, rows);
        }

        println!("\n#### {}: medians of the rounds\n", self.client);
        let of_rounds = |t: usize, pick: &dyn Fn(&Summary) -> f64| -> f64 {
            median(
                &per_round
                    .iter()
                    .map(|values| pick(&values[t]))
                    .collect::<Vec<_>>(),
            )
        };
        let pooled = |t: usize, part: Part, p: f64| -> f64 {
            let all: Vec<f64> = self
                .rounds
                .iter()
                .flat_map(|(_, runs)| runs[t].times(part).iter().copied())
                .collect();
            percentile(&all, p)
        };
        let rounds = self.rounds.len() as f64;
        let counted = |t: usize, part: Part| -> Option<Counted> {
            let runs: Vec<Counted> = self
                .rounds
                .iter()
                .filter_map(|(_, runs)| runs[t].counted.map(|c| c[part as usize]))
                .collect();
            (!runs.is_empty()).then(|| {
                runs.iter().fold(Counted::default(), |acc, c| Counted {
                    calls: acc.calls + c.calls,
                    bytes_to_engine: acc.bytes_to_engine + c.bytes_to_engine,
                    bytes_to_client: acc.bytes_to_client + c.bytes_to_client,
                })
            })
        };
        let mut rows = Vec::new();
        let mut row = |label: String, cell: &dyn Fn(usize) -> String| {
            let mut row = vec![label];
            row.extend((0..n).map(cell));
            rows.push(row);
        };
        row("collect s (median of rounds)".into(), &|t| {
            format!("{:.3}", of_rounds(t, &|v| v.collect))
        });
        row("collect: ratio of the medians to direct".into(), &|t| {
            format!(
                "{:.3}",
                of_rounds(t, &|v| v.collect) / of_rounds(0, &|v| v.collect)
            )
        });
        row("collect: median of per-round ratios".into(), &|t| {
            let ratios: Vec<f64> = per_round
                .iter()
                .map(|values| values[t].collect / values[0].collect)
                .collect();
            format!("{:.3}", median(&ratios))
        });
        row("collect: million rows/s".into(), &|t| {
            format!(
                "{:.2}",
                settings.rows as f64 / of_rounds(t, &|v| v.collect) / 1e6
            )
        });
        for part in [Part::Select, Part::Config] {
            let label = part.label();
            row(format!("{label} p50 ms (median of rounds)"), &|t| {
                format!("{:.2}", of_rounds(t, &|v| v.latency(part).0))
            });
            row(format!("{label} p99 ms (median of rounds)"), &|t| {
                format!("{:.2}", of_rounds(t, &|v| v.latency(part).1))
            });
            row(
                format!("{label} p50 added ms (difference of the medians)"),
                &|t| {
                    format!(
                        "{:+.2}",
                        of_rounds(t, &|v| v.latency(part).0) - of_rounds(0, &|v| v.latency(part).0)
                    )
                },
            );
            row(
                format!("{label} p50 added ms (median of per-round differences)"),
                &|t| {
                    let added: Vec<f64> = per_round
                        .iter()
                        .map(|values| values[t].latency(part).0 - values[0].latency(part).0)
                        .collect();
                    format!("{:+.2}", median(&added))
                },
            );
            row(format!("{label} p50 / p99 ms over all calls"), &|t| {
                format!(
                    "{:.2} / {:.2}",
                    pooled(t, part, 50.0),
                    pooled(t, part, 99.0)
                )
            });
        }
        for part in PARTS {
            let label = part.label();
            let each = rounds * part.count(settings) as f64;
            row(format!("CPU ms of the proxy process per {label}"), &|t| {
                let total: f64 = self
                    .rounds
                    .iter()
                    .map(|(_, runs)| runs[t].cpu_ms[part as usize])
                    .sum();
                format!("{:.2}", total / each)
            });
            row(format!("calls the proxy forwarded per {label}"), &|t| {
                counted(t, part).map_or("—".to_owned(), |c| {
                    format!("{:.2}", c.calls as f64 / each)
                })
            });
            row(
                format!("bytes per {label} through the proxy (to engine / to client)"),
                &|t| {
                    counted(t, part).map_or("—".to_owned(), |c| {
                        format!(
                            "{:.0} / {:.0}",
                            c.bytes_to_engine as f64 / each,
                            c.bytes_to_client as f64 / each
                        )
                    })
                },
            );
        }
        let mut headers = vec![""];
        headers.extend(names.iter().copied());
        print_table(&headers, &rows);
        println!();

        for (t, name) in names.iter().enumerate() {
            let mut lines = Vec::new();
            for part in PARTS {
                let mut seen: std::collections::BTreeMap<&str, Vec<RpcStat>> = Default::default();
                for (_, runs) in &self.rounds {
                    for (method, stat) in runs[t].rpcs.iter().flat_map(|r| &r[part as usize]) {
                        seen.entry(method).or_default().push(*stat);
                    }
                }
                if seen.is_empty() {
                    continue;
                }
                let each = rounds * part.count(settings) as f64;
                let methods: Vec<String> = seen
                    .iter()
                    .map(|(method, stats)| {
                        let calls: u64 = stats.iter().map(|s| s.calls).sum();
                        let p50: Vec<f64> = stats.iter().filter_map(|s| s.p50_ms).collect();
                        let mean: Vec<f64> = stats.iter().filter_map(|s| s.mean_ms).collect();
                        let messages: Vec<f64> = stats.iter().filter_map(|s| s.messages).collect();
                        let mut text = format!("{method} {:.2}", calls as f64 / each);
                        if !p50.is_empty() {
                            text.push_str(&format!(
                                " (p50 {:.2} ms, mean {:.2} ms",
                                median(&p50),
                                median(&mean)
                            ));
                            if !messages.is_empty() {
                                text.push_str(&format!(
                                    ", {:.1} messages",
                                    messages.iter().sum::<f64>() / messages.len() as f64
                                ));
                            }
                            text.push(')');
                        }
                        text
                    })
                    .collect();
                lines.push(format!("per {}: {}", part.label(), methods.join(", ")));
            }
            if !lines.is_empty() {
                println!(
                    "- {name}: RPCs the client made, counted and timed in the client (calls per operation, time of one call: median over the rounds of its p50 and of its mean; a stream is timed to its last message) {}",
                    lines.join("; ")
                );
            }
        }
        println!();
    }
}

/// The Python of the virtualenv that holds `spark_home` (`<venv>/lib/python3.X/site-packages/
/// pyspark`), as `scripts/setup.sh` makes it.
fn venv_python(spark_home: &Path) -> Option<PathBuf> {
    spark_home
        .ancestors()
        .nth(4)
        .map(|venv| venv.join("bin").join("python"))
        .filter(|python| python.is_file())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let rounds: usize = flag("rounds", 5);
    let warmup_rounds: usize = flag("warmup-rounds", 1);
    let settings = Settings {
        rows: flag("rows", 1_000_000),
        collects: flag("collects", 2),
        calls: flag("calls", 200),
        reattach: flag("reattach", true),
    };
    let with_rust: bool = flag("rust", true);
    let settle = Duration::from_secs_f64(flag("settle-secs", 1.0));
    let spark_home = flag_str("spark-home")
        .or_else(|| std::env::var("SPARK_HOME").ok())
        .map(PathBuf::from)
        .ok_or("set SPARK_HOME or --spark-home (SPARK_HOME=$(bash scripts/setup.sh))")?;
    let python = flag_str("python")
        .map(PathBuf::from)
        .or_else(|| venv_python(&spark_home))
        .ok_or("no Python beside SPARK_HOME with PySpark: pass --python")?;
    let binary = rucat_binary()?;
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    let data_dir = dir.join("data");

    let (token, entry) = token_create(&binary)?;
    let (ca, cert, key) = tls_files(dir)?;
    let serve_config = dir.join("serve.toml");
    std::fs::write(&serve_config, &entry)?;
    let tls_config = dir.join("proxy-tls.toml");
    std::fs::write(
        &tls_config,
        format!("{entry}\n[proxy]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
    )?;

    let (api_port, proxy_port, tls_port) = (free_port()?, free_port()?, free_port()?);
    let mut serve = rucat_command(&binary, "serve");
    serve
        .arg("--listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--proxy-listen")
        .arg(format!("127.0.0.1:{proxy_port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--config")
        .arg(&serve_config)
        .arg("--spark-home")
        .arg(&spark_home);
    let mut serve = Group::spawn(serve, &dir.join("serve.log"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()?,
        base: format!("http://127.0.0.1:{api_port}"),
    };
    let metrics_http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut proxy_tls: Option<Group> = None;
    let mut engine_id: Option<String> = None;

    let outcome = async {
        serve
            .wait_listening(
                SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
                "rucat serve",
                READY_TIMEOUT,
            )
            .await?;
        let posted = post_engine(&api.http, &api.base, "4.3.0").await?;
        engine_id = Some(posted.id.clone());
        let id = posted.id;
        let engine = api
            .wait_for(&id, &[EngineState::Running], START_TIMEOUT)
            .await?;
        eprintln!(
            "engine {id} Running after {:.1} s",
            posted.sent.elapsed().as_secs_f64()
        );
        let endpoint = engine.endpoint.ok_or("a Running engine without endpoint")?;

        let mut tls = rucat_command(&binary, "proxy");
        tls.arg("--proxy-listen")
            .arg(format!("127.0.0.1:{tls_port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--config")
            .arg(&tls_config);
        let tls = proxy_tls.insert(Group::spawn(tls, &dir.join("proxy-tls.log"))?);
        tls.wait_listening(
            SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port)),
            "rucat proxy (TLS)",
            READY_TIMEOUT,
        )
        .await?;

        // The engine's own address and secret, as the store keeps them.
        let store = rucat::store::sqlite::SqliteStore::open(&format!(
            "sqlite://{}",
            data_dir.join("rucat.db").display()
        ))
        .await?;
        let stored = store
            .get(&EngineId::parse(&id).ok_or("a bad engine id")?)
            .await?
            .ok_or("the engine is not in the store")?;
        store.close().await;
        let own = stored.endpoint.ok_or("no engine address in the store")?;
        let own_port = own
            .trim_start_matches("sc://")
            .trim_end_matches('/')
            .parse::<SocketAddr>()?
            .port();
        let secret = stored.secret.ok_or("no engine secret in the store")?;

        let targets = Targets {
            direct: format!("sc://localhost:{own_port}/;token={}", secret.expose()),
            proxy: format!("{endpoint};token={token}"),
            proxy_tls: format!(
                "sc://localhost:{tls_port}/;use_ssl=true;x-rucat-engine={id};token={token}"
            ),
            proxy_metrics: format!("http://127.0.0.1:{proxy_port}/metrics"),
            proxy_tls_metrics: format!("https://localhost:{tls_port}/metrics"),
            ca: ca.clone(),
            serve_pid: serve.pgid,
            proxy_tls_pid: tls.pgid,
        };
        eprintln!(
            "direct: sc://localhost:{own_port}/;token=…, proxy: {endpoint};token=…, proxy-tls: sc://localhost:{tls_port}/;use_ssl=true;x-rucat-engine={id};token=…"
        );

        let mut pyspark = Series::new(
            "PySpark",
            vec![Target::Direct, Target::Proxy, Target::ProxyTls],
        );
        let mut rust = Series::new("spark-connect-rs", vec![Target::Direct, Target::Proxy]);
        for round in 0..warmup_rounds + rounds {
            let counted = round >= warmup_rounds;
            for series in [&mut pyspark, &mut rust] {
                if series.client == "spark-connect-rs" && !with_rust {
                    continue;
                }
                let order = series.order(round);
                let mut runs: Vec<Option<Run>> = series.targets.iter().map(|_| None).collect();
                for &target in &order {
                    let run = if series.client == "PySpark" {
                        let log = dir.join(format!("pyspark-{}-{}.log", round + 1, target.name()));
                        pyspark_run(&python, &targets, target, &settings, &log).await?
                    } else {
                        tokio::time::timeout(
                            RUN_TIMEOUT,
                            rust_run(&metrics_http, &targets, target, &settings),
                        )
                        .await
                        .map_err(|_| {
                            format!("spark-connect-rs ({}) did not finish", target.name())
                        })??
                    };
                    let summary = Summary::of(&run);
                    eprintln!(
                        "{} {} {} {}: collect {:.3} s, SELECT 1 p50 {:.2} ms p99 {:.2} ms, Config p50 {:.2} ms p99 {:.2} ms",
                        if counted { "round" } else { "warm-up round" },
                        round + 1,
                        series.client,
                        target.name(),
                        summary.collect,
                        summary.select.0,
                        summary.select.1,
                        summary.config.0,
                        summary.config.1,
                    );
                    let slot = series
                        .targets
                        .iter()
                        .position(|t| *t == target)
                        .ok_or("unknown target")?;
                    runs[slot] = Some(run);
                    tokio::time::sleep(settle).await;
                }
                let runs = runs.into_iter().collect::<Option<Vec<Run>>>();
                let runs = runs.ok_or("a target did not run")?;
                if counted {
                    series.rounds.push((order, runs));
                }
            }
        }
        // What every proxied call does that a direct one does not, measured on its own: the
        // engine's record read from the store (the proxy's `Store::get`), on the same file.
        let store = rucat::store::sqlite::SqliteStore::open(&format!(
            "sqlite://{}",
            data_dir.join("rucat.db").display()
        ))
        .await?;
        let engine = EngineId::parse(&id).ok_or("a bad engine id")?;
        for _ in 0..20 {
            store.get(&engine).await?;
        }
        let mut reads = Vec::new();
        for _ in 0..settings.calls * 5 {
            let started = Instant::now();
            store.get(&engine).await?.ok_or("the engine is gone")?;
            reads.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        store.close().await;
        Ok::<_, Error>((pyspark, rust, reads))
    }
    .await;

    // Clean up whatever happened: the engine, the TLS proxy, rucat serve, then any process left.
    if let Some(id) = &engine_id {
        if let Err(error) = api.stop_and_delete(id).await {
            eprintln!("warning: could not stop engine {id}: {error}");
        }
    }
    if let Some(mut tls) = proxy_tls.take() {
        tls.stop(Duration::from_secs(30)).await;
    }
    serve.stop(Duration::from_secs(30)).await;
    let marker = dir.to_string_lossy().into_owned();
    let left = processes_matching(&marker);
    for pid in &left {
        // SAFETY: kill(2) of a process whose command line names this run's scratch directory.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    let (pyspark, rust, reads) = outcome?;

    println!(
        "### proxy_overhead — {rounds} rounds (targets in rotating order) after {warmup_rounds} warm-up round(s), {} rows × {} collects, {} × SELECT 1 and {} × Config per target per round; PySpark reattachable execution {}; {}\n",
        settings.rows,
        settings.collects,
        settings.calls,
        settings.calls,
        if settings.reattach { "on" } else { "off" },
        machine_line()
    );
    pyspark.print(&settings);
    if with_rust {
        rust.print(&settings);
    }
    println!(
        "One `Store::get` of the engine (the read the proxy makes for every call), {} sequential reads in this process on the same SQLite file: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms.\n",
        reads.len(),
        percentile(&reads, 50.0),
        percentile(&reads, 90.0),
        percentile(&reads, 99.0)
    );
    println!(
        "Processes left under the scratch directory after the stop: {} (killed if any).",
        left.len()
    );
    Ok(())
}
