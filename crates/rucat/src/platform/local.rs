//! The local platform: each engine is a Spark Connect server process on this machine.
//!
//! Everything Rucat needs to find, adopt or clean an engine's process after Rucat itself died
//! (even by SIGKILL) is on disk, under `<data dir>/engines/<engine id>/`:
//!
//! | file | what |
//! | --- | --- |
//! | `process.json` | pid, process group, port, start time (ours and the kernel's, from `/proc/<pid>/stat` field 22, so that a reused pid is never mistaken for the engine's process) |
//! | `exit_status.json` | how the process ended, when this Rucat process reaped it |
//! | `driver.log` | stdout and stderr of Spark, appended across restarts of the engine; kept after `delete` |
//! | `engine.conf` | Spark's defaults and the engine's configs, given to `spark-submit --properties-file` (mode 0600: configs may hold secrets, which must not show in `ps`) |
//! | `work/` | the process's current directory; `work/tmp` is its `spark.local.dir` |
//! | `lock` | `flock`ed while an engine is created, deleted or forgotten |
//!
//! The process leads its own process group, so that it outlives Rucat and is stopped as a whole
//! (with the Python workers Spark may start). Its command line names the engine
//! (`--name rucat-<id>`), so that a process started just before Rucat died, before its
//! `process.json` was written, is still found.
//!
//! Linux only: liveness, ownership of the port and orphans are read from `/proc`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::flock::FileLock;
use super::{Platform, PlatformError, ResourceState};
use crate::engine::{Engine, EngineId};

/// The Spark conf (unknown to Spark, harmless) that names the engine generation of a process.
const GENERATION_CONF: &str = "spark.rucat.generation";

/// The environment variable through which Spark 4's Connect server takes the pre-shared token
/// it requires of every client.
pub const SECRET_ENV: &str = "SPARK_CONNECT_AUTHENTICATE_TOKEN";

/// The main class of a Spark Connect server (what `sbin/start-connect-server.sh` submits).
pub const CONNECT_SERVER_CLASS: &str = "org.apache.spark.sql.connect.service.SparkConnectServer";

const ENGINES_DIR: &str = "engines";
const STATE_FILE: &str = "process.json";
const EXIT_FILE: &str = "exit_status.json";
const LOG_FILE: &str = "driver.log";
const CONF_FILE: &str = "engine.conf";
const LOCK_FILE: &str = "lock";
const WORK_DIR: &str = "work";
const SCRATCH_DIR: &str = "tmp";

/// The address engines bind and clients reach them on.
const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long a process has between SIGTERM and SIGKILL when it must be gone before the engine
/// starts again (`create`).
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long a plain `delete` waits, after SIGTERM, for the processes to go (Spark stops in well
/// under a second) before it returns with the deletion under way. The monitor looks again, and
/// past its delete timeout deletes with `force`.
const TERM_WAIT: Duration = Duration::from_secs(2);
/// How long a process may take to disappear after SIGKILL before `delete` gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// How long the gRPC probe waits for the server's SETTINGS frame.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `create`, `delete` and `forget` wait for another one on the same engine.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `state` waits for this process's reaper to record the exit status of a process
/// that just died.
const REAP_WAIT: Duration = Duration::from_secs(1);
/// A port handed to an engine is not handed out again for this long (the engine binds it only
/// seconds after it was chosen).
const PORT_QUARANTINE: Duration = Duration::from_secs(300);
/// The lowest port handed to an engine.
const PORT_FLOOR: u16 = 20000;
/// Lines of the driver log quoted in a failure message, and their bounds.
const FAILURE_LOG_LINES: usize = 5;
const FAILURE_LOG_LINE_CHARS: usize = 400;
const FAILURE_LOG_BYTES: usize = 64 * 1024;

/// The HTTP/2 client connection preface, followed by an empty SETTINGS frame.
const H2_CLIENT_HELLO: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A SETTINGS acknowledgement, then a GOAWAY (last stream 0, NO_ERROR): a polite goodbye.
const H2_SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
const H2_GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const H2_FRAME_SETTINGS: u8 = 0x4;

/// What `process.json` holds: enough to find the engine's process again, and to never mistake
/// another process (after pid reuse) for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProcessRecord {
    pid: i32,
    /// The process group (the process leads its own: equal to `pid`).
    pgid: i32,
    /// The Spark Connect port on 127.0.0.1.
    port: u16,
    /// The process's start time in clock ticks after boot: field 22 of `/proc/<pid>/stat`.
    proc_start_time: u64,
    started_at: DateTime<Utc>,
    master: String,
    spark_home: PathBuf,
    /// The engine's generation that started the process (0 in records of older Rucats).
    #[serde(default)]
    generation: u64,
}

impl ProcessRecord {
    fn is_valid(&self) -> bool {
        // Never let a damaged file make us signal pid 0, 1 or -1 (everything).
        self.pid > 1 && self.pgid > 1 && self.port != 0
    }
}

/// What `exit_status.json` holds: how a process started by this Rucat process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ExitRecord {
    pid: i32,
    proc_start_time: u64,
    code: Option<i32>,
    signal: Option<i32>,
    exited_at: DateTime<Utc>,
}

impl ExitRecord {
    fn is_of(&self, record: &ProcessRecord) -> bool {
        self.pid == record.pid && self.proc_start_time == record.proc_start_time
    }

    fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}{}", signal_name(signal)),
            (None, None) => "ended, how is unknown".to_owned(),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

/// A child this Rucat process started and reaps.
struct TrackedChild {
    pid: i32,
    proc_start_time: u64,
    exit: watch::Receiver<Option<ExitRecord>>,
}

/// Each engine is a Spark Connect server (`spark-submit --class SparkConnectServer`) on this
/// machine, listening on its own port on 127.0.0.1.
pub struct LocalPlatform {
    spark_home: PathBuf,
    data_dir: PathBuf,
    default_master: String,
    version: String,
    children: Arc<Mutex<HashMap<EngineId, TrackedChild>>>,
    /// Ports recently handed out, not to be handed out again while their engine starts.
    reserved_ports: Mutex<HashMap<u16, Instant>>,
    /// Processes (pid, start time) whose listening socket on their port was seen to be theirs.
    verified_ports: Mutex<HashSet<(i32, u64)>>,
}

impl std::fmt::Debug for LocalPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPlatform")
            .field("spark_home", &self.spark_home)
            .field("data_dir", &self.data_dir)
            .field("default_master", &self.default_master)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl LocalPlatform {
    /// A local platform running Spark from `spark_home`, keeping engines under
    /// `data_dir/engines`, with Spark master `default_master` (e.g. `local[*]`) for every engine.
    pub fn new(
        spark_home: PathBuf,
        data_dir: PathBuf,
        default_master: String,
    ) -> Result<Self, PlatformError> {
        // Absolute: engines start in their own work directories.
        let spark_home = fs::canonicalize(&spark_home).unwrap_or(spark_home);
        let submit = spark_home.join("bin").join("spark-submit");
        let executable = fs::metadata(&submit)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(PlatformError::Inspect(format!(
                "{} is not a Spark distribution: {} is missing or not executable",
                spark_home.display(),
                submit.display()
            )));
        }
        let version = Self::spark_version(&spark_home)?;
        if !has_connect_jar(&spark_home) {
            warn!(
                spark_home = %spark_home.display(),
                "no jars/spark-connect_*.jar in SPARK_HOME; engines will fail unless Spark \
                 finds the Spark Connect server another way"
            );
        }
        if default_master.trim().is_empty() {
            return Err(PlatformError::Inspect(
                "the local platform's Spark master must not be empty".to_owned(),
            ));
        }
        let engines = data_dir.join(ENGINES_DIR);
        fs::create_dir_all(&engines).map_err(PlatformError::io(format!(
            "creating the engines directory {}",
            engines.display()
        )))?;
        let data_dir = fs::canonicalize(&data_dir).map_err(PlatformError::io(format!(
            "resolving the data directory {}",
            data_dir.display()
        )))?;
        Ok(LocalPlatform {
            spark_home,
            data_dir,
            default_master,
            version,
            children: Arc::default(),
            reserved_ports: Mutex::default(),
            verified_ports: Mutex::default(),
        })
    }

    /// The Spark version of the distribution at `spark_home`, read from the name of its
    /// `jars/spark-core_<scala>-<version>.jar` (e.g. `4.3.0`).
    pub fn spark_version(spark_home: &Path) -> Result<String, PlatformError> {
        let jars = spark_home.join("jars");
        let entries = fs::read_dir(&jars).map_err(PlatformError::io(format!(
            "listing the jars of Spark at {}",
            spark_home.display()
        )))?;
        let mut versions: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str().and_then(version_of_core_jar))
            .collect();
        versions.sort();
        versions.dedup();
        match versions.as_slice() {
            [version] => Ok(version.clone()),
            [] => Err(PlatformError::Inspect(format!(
                "{} is not a Spark distribution: no spark-core_*.jar in {}",
                spark_home.display(),
                jars.display()
            ))),
            many => Err(PlatformError::Inspect(format!(
                "{} holds several Spark versions ({}); which one to run is unclear",
                jars.display(),
                many.join(", ")
            ))),
        }
    }

    /// The Spark version engines run.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn spark_home(&self) -> &Path {
        &self.spark_home
    }

    /// The directory of an engine: its work directory, state file and driver log.
    pub fn engine_dir(&self, id: &EngineId) -> PathBuf {
        self.data_dir.join(ENGINES_DIR).join(id.as_str())
    }

    fn children(&self) -> MutexGuard<'_, HashMap<EngineId, TrackedChild>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free port on 127.0.0.1, not one handed out lately, chosen at random below the
    /// kernel's ephemeral range: the engine binds it only seconds later, and a port from that
    /// range could meanwhile be handed to any process's `bind(0)`, such as another engine's
    /// driver or block manager port.
    fn pick_port(&self, id: &EngineId) -> Result<u16, PlatformError> {
        let mut reserved = self
            .reserved_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        reserved.retain(|_, at| at.elapsed() < PORT_QUARANTINE);
        let range = PORT_FLOOR..ephemeral_floor().max(PORT_FLOOR + 1024);
        for _ in 0..256 {
            let random = uuid::Uuid::new_v4().as_u128();
            let port = range.start + (random % u128::from(range.end - range.start)) as u16;
            if reserved.contains_key(&port)
                || std::net::TcpListener::bind(SocketAddrV4::new(HOST, port)).is_err()
            {
                continue;
            }
            reserved.insert(port, Instant::now());
            return Ok(port);
        }
        Err(PlatformError::Create(format!(
            "no free port on {HOST} for engine {id} in {}..{}",
            range.start, range.end
        )))
    }

    /// Starts the engine's Spark Connect server; the caller holds the engine's lock.
    async fn start(&self, engine: &Engine, dir: &Path) -> Result<(), PlatformError> {
        let id = &engine.id;
        let work = dir.join(WORK_DIR);
        let scratch = work.join(SCRATCH_DIR);
        fs::create_dir_all(&scratch).map_err(PlatformError::io(format!(
            "creating the work directory of engine {id}"
        )))?;
        let port = self.pick_port(id)?;

        let conf_path = dir.join(CONF_FILE);
        let conf = properties_file(id, &self.spark_defaults(), &engine.configs);
        write_private(&conf_path, conf.as_bytes()).map_err(PlatformError::io(format!(
            "writing the Spark configuration of engine {id}"
        )))?;

        let log_path = dir.join(LOG_FILE);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(PlatformError::io(format!(
                "opening the driver log of engine {id}"
            )))?;
        writeln!(
            log,
            "----- rucat: {} starting the Spark Connect server of engine {id} (Spark {}, master {}, port {HOST}:{port}) -----",
            Utc::now().to_rfc3339(),
            self.version,
            self.default_master,
        )
        .map_err(PlatformError::io(format!(
            "writing the driver log of engine {id}"
        )))?;
        let stderr = log.try_clone().map_err(PlatformError::io(format!(
            "opening the driver log of engine {id}"
        )))?;

        let mut command = Command::new(self.spark_home.join("bin").join("spark-submit"));
        command
            .arg("--class")
            .arg(CONNECT_SERVER_CLASS)
            .arg("--name")
            .arg(format!("rucat-{id}"))
            .arg("--master")
            .arg(&self.default_master)
            .arg("--properties-file")
            .arg(&conf_path);
        let mut wiring = vec![
            // The generation this start belongs to: on the command line, so that the process
            // is told apart from another start's even without its record.
            format!("{GENERATION_CONF}={}", engine.generation),
            format!("spark.connect.grpc.binding.port={port}"),
            format!("spark.connect.grpc.binding.address={HOST}"),
            format!("spark.driver.host={HOST}"),
            format!("spark.driver.bindAddress={HOST}"),
        ];
        if !engine.configs.contains_key("spark.ui.enabled") {
            wiring.push("spark.ui.enabled=false".to_owned());
        }
        let mut local_dir = OsString::from("spark.local.dir=");
        local_dir.push(&scratch);
        for conf in wiring {
            command.arg("--conf").arg(conf);
        }
        command.arg("--conf").arg(local_dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RUCAT_") {
                // Rucat's own settings (credentials, database URL) are not the engine's business:
                // the engine runs users' code.
                command.env_remove(key);
            }
        }
        // Spark Connect then requires the engine's secret of every client: only the proxy
        // has it. Through the environment, so that it is in neither `ps` nor a file.
        if let Some(secret) = &engine.secret {
            command.env(SECRET_ENV, secret.expose());
        }
        command
            .env("SPARK_HOME", &self.spark_home)
            .env("SPARK_LOCAL_IP", HOST.to_string())
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(false);

        let mut child = command.spawn().map_err(|e| {
            PlatformError::Create(format!(
                "starting {} for engine {id}: {e}",
                self.spark_home.join("bin").join("spark-submit").display()
            ))
        })?;
        let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return Err(PlatformError::Create(format!(
                "the Spark process of engine {id} has no pid right after its start"
            )));
        };
        let proc_start_time = match read_stat(pid) {
            Some(stat) => stat.start_time,
            None => {
                signal_group(pid, libc::SIGKILL);
                return Err(PlatformError::Create(format!(
                    "cannot read /proc/{pid}/stat of the Spark process of engine {id}"
                )));
            }
        };
        let record = ProcessRecord {
            pid,
            pgid: pid,
            port,
            proc_start_time,
            started_at: Utc::now(),
            master: self.default_master.clone(),
            spark_home: self.spark_home.clone(),
            generation: engine.generation,
        };
        if let Err(e) = write_json_atomic(&dir.join(STATE_FILE), &record) {
            signal_group(pid, libc::SIGKILL);
            return Err(PlatformError::Io {
                what: format!("writing the state file of engine {id}"),
                source: e,
            });
        }

        // Reap the child, or it stays a zombie that looks alive; and keep how it ended.
        let (tx, rx) = watch::channel(None);
        let exit_path = dir.join(EXIT_FILE);
        let engine_id = id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = ExitRecord {
                pid,
                proc_start_time,
                code: status.as_ref().ok().and_then(|s| s.code()),
                signal: status.as_ref().ok().and_then(|s| s.signal()),
                exited_at: Utc::now(),
            };
            match &status {
                Ok(_) => info!(engine = %engine_id, pid, "Spark process {}", exit.describe()),
                Err(e) => {
                    warn!(engine = %engine_id, pid, error = %e, "waiting for the Spark process failed")
                }
            }
            if let Err(e) = write_json_atomic(&exit_path, &exit) {
                debug!(engine = %engine_id, error = %e, "cannot record the exit status");
            }
            tx.send_replace(Some(exit));
        });
        self.children().insert(
            id.clone(),
            TrackedChild {
                pid,
                proc_start_time,
                exit: rx,
            },
        );
        info!(engine = %id, pid, port, "started the Spark Connect server");
        Ok(())
    }

    /// The text of Spark's `spark-defaults.conf`, if any: a properties file replaces it, so its
    /// content goes first into the engine's.
    fn spark_defaults(&self) -> String {
        let conf_dir = std::env::var_os("SPARK_CONF_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.spark_home.join("conf"));
        fs::read_to_string(conf_dir.join("spark-defaults.conf")).unwrap_or_default()
    }

    /// How the recorded process ended, if known: from this process's reaper (waiting briefly
    /// for it) or from the exit status file.
    async fn exit_of(
        &self,
        id: &EngineId,
        record: &ProcessRecord,
        dir: &Path,
    ) -> Option<ExitRecord> {
        let rx = self
            .children()
            .get(id)
            .filter(|c| c.pid == record.pid && c.proc_start_time == record.proc_start_time)
            .map(|c| c.exit.clone());
        if let Some(mut rx) = rx {
            let waited = tokio::time::timeout(REAP_WAIT, rx.wait_for(Option::is_some)).await;
            if let Ok(Ok(exit)) = waited {
                let exit: Option<ExitRecord> = (*exit).clone();
                if exit.is_some() {
                    return exit;
                }
            }
        }
        let exit: ExitRecord = read_json(&dir.join(EXIT_FILE)).ok().flatten()?;
        exit.is_of(record).then_some(exit)
    }

    async fn failure_message(&self, id: &EngineId, record: &ProcessRecord, dir: &Path) -> String {
        let pid = record.pid;
        let what = match self.exit_of(id, record, dir).await {
            Some(exit) => format!(
                "Spark process of engine {id} (pid {pid}) {}",
                exit.describe()
            ),
            None => format!(
                "Spark process of engine {id} (pid {pid}) is no longer running (its exit status is \
                 unknown: it was not started by this Rucat process)"
            ),
        };
        let log = dir.join(LOG_FILE);
        let tail = blocking("reading the driver log", move || last_log_lines(&log))
            .await
            .unwrap_or_default();
        if tail.is_empty() {
            format!("{what}; see the engine's logs")
        } else {
            format!("{what}; see the engine's logs. Last lines of its driver log:\n{tail}")
        }
    }

    /// Stops every process of the engine of generation `up_to` or earlier (the recorded one,
    /// and any found by its command line; never one of a later generation) as `stop` says.
    /// Returns the process groups still alive: only after [`Stop::Term`], which does not wait.
    async fn stop_processes(
        &self,
        id: &EngineId,
        record: Option<&ProcessRecord>,
        up_to: u64,
        stop: Stop,
    ) -> Result<Vec<Group>, PlatformError> {
        let mut groups: Vec<Group> = Vec::new();
        if let Some(record) = record.filter(|r| r.generation <= up_to) {
            match read_stat(record.pgid) {
                // The leader, or its zombie: ours.
                Some(stat) if stat.start_time == record.proc_start_time => groups.push(Group {
                    pgid: record.pgid,
                    leader_start: Some(record.proc_start_time),
                }),
                // The pid was reused: our group is long gone (a group keeps its id taken).
                Some(_) => {}
                // The leader is gone; members may remain.
                None => groups.push(Group {
                    pgid: record.pgid,
                    leader_start: None,
                }),
            }
        }
        let name = engine_process_name(id);
        let found = blocking("looking for the engine's processes", move || {
            find_engine_processes(&name)
        })
        .await?;
        for (pid, stat, args) in found {
            if groups.iter().any(|g| g.pgid == stat.pgrp) || generation_of(&args) > up_to {
                continue;
            }
            if stat.pgrp <= 1 || stat.pgrp == own_process_group() {
                // Not in a group of its own (not started by us): end it alone.
                warn!(engine = %id, pid, "ending a process of the engine outside its own process group");
                signal_process(pid, stat.start_time, libc::SIGKILL);
                continue;
            }
            groups.push(Group {
                pgid: stat.pgrp,
                leader_start: read_stat(stat.pgrp).map(|s| s.start_time),
            });
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }

        let signals: &[(i32, Duration)] = match stop {
            Stop::Term => {
                let live = live_groups(&groups).await?;
                for group in &live {
                    debug!(engine = %id, pgid = group.pgid, "sending SIGTERM to the engine's process group");
                    signal_group(group.pgid, libc::SIGTERM);
                }
                return Ok(live);
            }
            Stop::Kill => &[(libc::SIGKILL, KILL_WAIT)],
            Stop::TermThenKill => &[(libc::SIGTERM, TERM_GRACE), (libc::SIGKILL, KILL_WAIT)],
        };
        for &(signal, wait) in signals {
            let live = live_groups(&groups).await?;
            if live.is_empty() {
                return Ok(Vec::new());
            }
            for group in &live {
                debug!(engine = %id, pgid = group.pgid, signal, "signalling the engine's process group");
                signal_group(group.pgid, signal);
            }
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
                if live_groups(&groups).await?.is_empty() {
                    return Ok(Vec::new());
                }
            }
            if signal == libc::SIGTERM {
                warn!(engine = %id, "the Spark process did not stop within {TERM_GRACE:?} of SIGTERM; sending SIGKILL");
            }
        }
        let live = live_groups(&groups).await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let pgids: Vec<String> = live.iter().map(|g| g.pgid.to_string()).collect();
        Err(PlatformError::Delete(format!(
            "processes of engine {id} (process group {}) are still alive {KILL_WAIT:?} after SIGKILL",
            pgids.join(", ")
        )))
    }

    /// Stops the engine's processes of generation `up_to` or earlier and, once they are gone,
    /// removes their state; the caller holds the engine's lock when the engine directory
    /// exists. A later generation's process and state are left alone. Returns the process
    /// groups still alive (after [`Stop::Term`]): then the state stays, and `state` still sees
    /// the engine.
    async fn delete_locked(
        &self,
        id: &EngineId,
        dir: &Path,
        up_to: u64,
        stop: Stop,
    ) -> Result<Vec<Group>, PlatformError> {
        let record = match read_record(dir) {
            Ok(record) => record,
            Err(e) => {
                warn!(engine = %id, error = %e, "ignoring a damaged state file; looking for the engine's processes by name");
                None
            }
        };
        let live = self
            .stop_processes(id, record.as_ref(), up_to, stop)
            .await?;
        if !live.is_empty() {
            debug!(engine = %id, "the engine's processes are stopping; its state stays until they are gone");
            return Ok(live);
        }
        if let Some(record) = record.as_ref().filter(|r| r.generation > up_to) {
            debug!(engine = %id, generation = record.generation, up_to, "leaving a later start of the engine alone");
            return Ok(live);
        }

        // Let our reaper record the end of our child before its state goes.
        let rx = self.children().remove(id).map(|c| c.exit);
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(REAP_WAIT, rx.wait_for(Option::is_some)).await;
        }
        if let Some(record) = &record {
            self.verified_ports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(record.pid, record.proc_start_time));
        }
        for file in [STATE_FILE, EXIT_FILE, CONF_FILE] {
            remove_file_if_exists(&dir.join(file))
                .map_err(PlatformError::io(format!("removing {file} of engine {id}")))?;
        }
        let scratch = dir.join(WORK_DIR).join(SCRATCH_DIR);
        let removed = blocking("removing the scratch directory", move || {
            remove_dir_if_exists(&scratch)
        })
        .await?;
        removed.map_err(PlatformError::io(format!(
            "removing the scratch directory of engine {id}"
        )))?;
        Ok(live)
    }

    /// Adopts a process of this start of the engine (`generation`) that has no record yet
    /// (Rucat died between starting it and writing its record).
    async fn adopt_orphan(
        &self,
        id: &EngineId,
        dir: &Path,
        generation: u64,
    ) -> Result<bool, PlatformError> {
        let name = engine_process_name(id);
        let found = blocking("looking for the engine's processes", move || {
            find_engine_processes(&name)
        })
        .await?;
        let leader = found.into_iter().find_map(|(pid, stat, args)| {
            if pid != stat.pgrp || generation_of(&args) != generation {
                return None;
            }
            let port = conf_arg(&args, "spark.connect.grpc.binding.port")?
                .parse::<u16>()
                .ok()?;
            let master = option_arg(&args, "--master").unwrap_or_default();
            Some(ProcessRecord {
                pid,
                pgid: pid,
                port,
                proc_start_time: stat.start_time,
                started_at: Utc::now(),
                master,
                spark_home: self.spark_home.clone(),
                generation,
            })
        });
        let Some(record) = leader.filter(ProcessRecord::is_valid) else {
            return Ok(false);
        };
        write_json_atomic(&dir.join(STATE_FILE), &record).map_err(PlatformError::io(format!(
            "writing the state file of engine {id}"
        )))?;
        info!(engine = %id, pid = record.pid, port = record.port, "adopted a Spark process of the engine that had no state file");
        Ok(true)
    }
}

#[async_trait]
impl Platform for LocalPlatform {
    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        let id = &engine.id;
        let dir = self.engine_dir(id);
        fs::create_dir_all(dir.join(WORK_DIR)).map_err(PlatformError::io(format!(
            "creating the directory of engine {id}"
        )))?;
        let _lock = lock_engine(&dir, id).await?;

        let record = match read_record(&dir) {
            Ok(record) => record,
            Err(e) => {
                warn!(engine = %id, error = %e, "ignoring a damaged state file");
                None
            }
        };
        let generation = engine.generation;
        if let Some(record) = &record {
            if record.generation > generation {
                return Err(PlatformError::Create(format!(
                    "a later start of engine {id} exists (generation {} after {generation}): this one is stale",
                    record.generation
                )));
            }
            if record.generation == generation
                && liveness(record.pid, record.proc_start_time) == Liveness::Alive
            {
                info!(engine = %id, pid = record.pid, generation, "adopting the engine's running Spark process");
                return Ok(());
            }
        }
        if record.is_none() && self.adopt_orphan(id, &dir, generation).await? {
            return Ok(());
        }
        // Whatever is left of an earlier run goes before a new one starts.
        self.stop_processes(id, record.as_ref(), generation, Stop::TermThenKill)
            .await?;
        for file in [STATE_FILE, EXIT_FILE] {
            remove_file_if_exists(&dir.join(file)).map_err(PlatformError::io(format!(
                "removing the stale {file} of engine {id}"
            )))?;
        }
        self.start(engine, &dir).await
    }

    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError> {
        // Without `force`, SIGTERM, and the deletion is under way: the caller (the monitor)
        // escalates to `force` past its own deadline.
        let stop = if force { Stop::Kill } else { Stop::Term };
        let dir = self.engine_dir(id);
        if !dir.is_dir() {
            // Nothing on disk; a process of the engine may still exist if its directory was
            // removed by hand.
            let live = self.stop_processes(id, None, generation, stop).await?;
            wait_gone(&live, TERM_WAIT).await?;
            return Ok(());
        }
        let live = {
            let _lock = lock_engine(&dir, id).await?;
            self.delete_locked(id, &dir, generation, stop).await?
        };
        // A Spark that stops promptly is gone in a moment, and then its state goes too. Waited
        // for without the engine's lock: a Rucat process frozen while it waits (a long pause)
        // must hold up no other one's work on the engine.
        if !live.is_empty() && wait_gone(&live, TERM_WAIT).await? {
            let _lock = lock_engine(&dir, id).await?;
            self.delete_locked(id, &dir, generation, stop).await?;
        }
        Ok(())
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        let id = &engine.id;
        let dir = self.engine_dir(id);
        let Some(record) = read_record(&dir)? else {
            return Ok(ResourceState::Gone);
        };
        if record.generation > engine.generation {
            // A later start's process: nothing of the generation asked about is left.
            return Ok(ResourceState::Gone);
        }
        if liveness(record.pid, record.proc_start_time) != Liveness::Alive {
            return Ok(ResourceState::Failed(
                self.failure_message(id, &record, &dir).await,
            ));
        }
        let key = (record.pid, record.proc_start_time);
        let verified = self
            .verified_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key);
        if !verified {
            let (pid, port) = (record.pid, record.port);
            match blocking("inspecting the engine's port", move || {
                port_owner(pid, port)
            })
            .await?
            {
                PortOwner::Nobody => return Ok(ResourceState::Starting),
                PortOwner::Other => {
                    return Ok(ResourceState::Failed(format!(
                        "port {port} given to engine {id} is held by another process; the \
                         engine's Spark process (pid {pid}) could not listen on it"
                    )))
                }
                PortOwner::Engine => {
                    self.verified_ports
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key);
                }
            }
        }
        let addr = SocketAddr::V4(SocketAddrV4::new(HOST, record.port));
        if grpc_serves(addr, PROBE_TIMEOUT).await {
            Ok(ResourceState::Running {
                endpoint: format!("sc://{HOST}:{}", record.port),
            })
        } else {
            Ok(ResourceState::Starting)
        }
    }

    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError> {
        let path = self.engine_dir(id).join(LOG_FILE);
        blocking("reading the driver log", move || {
            read_tail(&path, max_bytes)
        })
        .await?
        .map_err(PlatformError::io(format!(
            "reading the driver log of engine {id}"
        )))
    }

    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError> {
        let engines = self.data_dir.join(ENGINES_DIR);
        let entries = match fs::read_dir(&engines) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(PlatformError::Io {
                    what: format!("listing the engines in {}", engines.display()),
                    source: e,
                })
            }
        };
        let mut ids: Vec<(EngineId, u64)> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|entry| entry.file_name().to_str().and_then(EngineId::parse))
            .map(|id| {
                let generation = read_record(&self.engine_dir(&id))
                    .ok()
                    .flatten()
                    .map_or(0, |record| record.generation);
                (id, generation)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn stuck(&self, id: &EngineId) -> Result<String, PlatformError> {
        let record = read_record(&self.engine_dir(id))?;
        Ok(match record {
            Some(record) => format!(
                "the Spark process of engine {id} (pid {}, process group {})",
                record.pid, record.pgid
            ),
            None => format!("a Spark process of engine {id} (found by its command line)"),
        })
    }

    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        let dir = self.engine_dir(id);
        if !dir.is_dir() {
            return self
                .stop_processes(id, None, u64::MAX, Stop::Kill)
                .await
                .map(drop);
        }
        let _lock = lock_engine(&dir, id).await?;
        self.delete_locked(id, &dir, u64::MAX, Stop::Kill).await?;
        let target = dir.clone();
        blocking("removing the engine directory", move || {
            remove_dir_if_exists(&target)
        })
        .await?
        .map_err(PlatformError::io(format!(
            "removing the directory of engine {id}"
        )))
    }
}

/// Whether a gRPC (HTTP/2) server serves at `addr`: it accepts a connection and answers the
/// HTTP/2 client preface with its SETTINGS frame within `timeout`. Stronger than a TCP accept:
/// Spark Connect answers only once its gRPC server runs.
pub async fn grpc_serves(addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_http2(addr))
        .await
        .unwrap_or(false)
}

async fn probe_http2(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(H2_CLIENT_HELLO).await.is_err() {
        return false;
    }
    // The server's connection preface starts with a SETTINGS frame: 3 bytes of length, its
    // type, flags, and stream 0.
    let mut header = [0u8; 9];
    if stream.read_exact(&mut header).await.is_err() {
        return false;
    }
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let serves = header[3] == H2_FRAME_SETTINGS && stream_id == 0 && length.is_multiple_of(6);
    if serves {
        let mut bye = H2_SETTINGS_ACK.to_vec();
        bye.extend_from_slice(&H2_GOAWAY);
        let _ = stream.write_all(&bye).await;
        let _ = stream.shutdown().await;
    }
    serves
}

/// The part of a `spark-core_<scala>-<version>.jar` name that is the version.
fn version_of_core_jar(name: &str) -> Option<String> {
    let rest = name.strip_prefix("spark-core_")?.strip_suffix(".jar")?;
    let (_scala, version) = rest.split_once('-')?;
    let starts_with_digit = version.chars().next().is_some_and(|c| c.is_ascii_digit());
    (starts_with_digit && !version.ends_with("-tests") && !version.ends_with("-sources"))
        .then(|| version.to_owned())
}

fn has_connect_jar(spark_home: &Path) -> bool {
    fs::read_dir(spark_home.join("jars"))
        .map(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("spark-connect_") && n.ends_with(".jar"))
            })
        })
        .unwrap_or(false)
}

fn engine_process_name(id: &EngineId) -> String {
    format!("rucat-{id}")
}

/// The engine's properties file: Spark's defaults, then the engine's configs (later keys win).
fn properties_file(
    id: &EngineId,
    defaults: &str,
    configs: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut out = format!("# Written by Rucat for engine {id}.\n");
    if !defaults.is_empty() {
        out.push_str("# From spark-defaults.conf:\n");
        out.push_str(defaults);
        if !defaults.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str("# The engine's configs:\n");
    for (key, value) in configs {
        out.push_str(&escape_property(key, true));
        out.push('=');
        out.push_str(&escape_property(value, false));
        out.push('\n');
    }
    out
}

/// Escapes a key or value for a Java properties file (read by `Properties.load`).
fn escape_property(text: &str, is_key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            '=' | ':' | '#' | '!' if is_key || i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

// ----- files -----

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` whole or not at all (a temporary file renamed over it).
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fn write(tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(tmp, path)
    }
    let written = write(&tmp, path, &data);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(data)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_record(dir: &Path) -> Result<Option<ProcessRecord>, PlatformError> {
    let path = dir.join(STATE_FILE);
    let record: Option<ProcessRecord> = read_json(&path).map_err(PlatformError::io(format!(
        "reading the state file {}",
        path.display()
    )))?;
    match record {
        Some(record) if !record.is_valid() => Err(PlatformError::Inspect(format!(
            "the state file {} names no valid process (pid {}, process group {}, port {})",
            path.display(),
            record.pid,
            record.pgid,
            record.port
        ))),
        record => Ok(record),
    }
}

fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The last `max_bytes` (at most) of a file, starting at a character boundary; `None` if there
/// is no such file.
fn read_tail(path: &Path, max_bytes: usize) -> io::Result<Option<String>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let max = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    file.take(max).read_to_end(&mut data)?;
    // Skip a character cut by the start (UTF-8 continuation bytes are 0b10xx_xxxx).
    let skip = if start > 0 {
        data.iter()
            .take(3)
            .take_while(|&&b| b & 0xc0 == 0x80)
            .count()
    } else {
        0
    };
    Ok(Some(String::from_utf8_lossy(&data[skip..]).into_owned()))
}

/// The last few meaningful lines of a driver log, for a failure message: stack frames are left
/// out (the exception's message says more), lines are bounded. When Spark logged an error
/// before the last lines (it logs its whole shutdown after the error that ended it), the error
/// and the line after it (usually the exception) come first.
fn last_log_lines(path: &Path) -> String {
    let Ok(Some(tail)) = read_tail(path, FAILURE_LOG_BYTES) else {
        return String::new();
    };
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim_end)
        .filter(|line| {
            let trimmed = line.trim_start();
            let stack_frame = trimmed.starts_with("at ")
                || (trimmed.starts_with("... ") && trimmed.ends_with(" more"));
            !trimmed.is_empty() && !stack_frame
        })
        .collect();
    let first = lines.len().saturating_sub(FAILURE_LOG_LINES);
    let mut picked: Vec<&str> = Vec::new();
    if let Some(error) = lines[..first]
        .iter()
        .rposition(|line| line.contains(" ERROR "))
    {
        picked.extend(&lines[error..(error + 2).min(first)]);
        picked.push("…");
    }
    let rest = FAILURE_LOG_LINES
        .saturating_sub(picked.len().saturating_sub(1))
        .max(1);
    picked.extend(&lines[lines.len().saturating_sub(rest)..]);
    picked
        .iter()
        .map(|line| {
            if line.chars().count() > FAILURE_LOG_LINE_CHARS {
                let cut: String = line.chars().take(FAILURE_LOG_LINE_CHARS).collect();
                format!("{cut}…")
            } else {
                (*line).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Holds the engine's lock file while an engine is created, deleted or forgotten.
async fn lock_engine(dir: &Path, id: &EngineId) -> Result<FileLock, PlatformError> {
    FileLock::acquire(
        &dir.join(LOCK_FILE),
        &format!("engine {id} (another create, delete or forget)"),
        LOCK_TIMEOUT,
    )
    .await
}

async fn blocking<T, F>(what: &str, f: F) -> Result<T, PlatformError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PlatformError::Inspect(format!("{what}: {e}")))
}

// ----- processes (/proc) -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    pgrp: i32,
    /// Field 9: the kernel's flags for the process.
    flags: u64,
    /// Clock ticks after boot: field 22.
    start_time: u64,
}

impl ProcStat {
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    fn is_kernel_thread(&self) -> bool {
        const PF_KTHREAD: u64 = 0x0020_0000;
        self.flags & PF_KTHREAD != 0
    }
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of stat(5).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    /// Exited, not reaped yet.
    Zombie,
    /// No such process, or the pid now names another process.
    Gone,
}

fn liveness(pid: i32, start_time: u64) -> Liveness {
    if pid <= 1 {
        return Liveness::Gone;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return Liveness::Gone;
    }
    match read_stat(pid) {
        Some(stat) if stat.start_time != start_time => Liveness::Gone,
        Some(stat) if stat.is_dead() => Liveness::Zombie,
        Some(_) => Liveness::Alive,
        None => Liveness::Gone,
    }
}

fn own_process_group() -> i32 {
    // SAFETY: getpgrp cannot fail.
    unsafe { libc::getpgrp() }
}

/// Sends `signal` to process group `pgid`; never to group 0 or 1, nor to Rucat's own.
fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 1 || pgid == own_process_group() {
        return;
    }
    // SAFETY: kill has no memory effects; the group was checked above.
    unsafe { libc::kill(-pgid, signal) };
}

/// Sends `signal` to one process, if it is still the one that started at `start_time`.
fn signal_process(pid: i32, start_time: u64, signal: i32) {
    if pid > 1 && liveness(pid, start_time) == Liveness::Alive {
        // SAFETY: kill has no memory effects; the pid was checked above.
        unsafe { libc::kill(pid, signal) };
    }
}

/// A process group of an engine. `leader_start`: the leader's start time, `None` if the
/// leader was already gone when the group was found.
#[derive(Debug, Clone, Copy)]
struct Group {
    pgid: i32,
    leader_start: Option<u64>,
}

impl Group {
    /// Whether the group id still names the engine's group. A group id stays taken while any
    /// member lives, so it names another group only if a new process took the leader's pid.
    fn is_ours(&self) -> bool {
        read_stat(self.pgid).map(|s| s.start_time) == self.leader_start
            || read_stat(self.pgid).is_none()
    }
}

/// How the processes of an engine are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM, without waiting: the caller decides when to insist.
    Term,
    /// SIGKILL, and wait until they are gone.
    Kill,
    /// SIGTERM, SIGKILL after [`TERM_GRACE`], and wait until they are gone.
    TermThenKill,
}

/// Waits up to `within` until none of `groups` has a live member; whether none has.
async fn wait_gone(groups: &[Group], within: Duration) -> Result<bool, PlatformError> {
    let deadline = Instant::now() + within;
    loop {
        if live_groups(groups).await?.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The groups that still have a live (non-zombie) member.
async fn live_groups(groups: &[Group]) -> Result<Vec<Group>, PlatformError> {
    let groups = groups.to_vec();
    blocking("checking the engine's processes", move || {
        let candidates: Vec<Group> = groups
            .into_iter()
            .filter(|g| {
                // SAFETY: signal 0 only checks that the group has a member.
                g.is_ours() && unsafe { libc::kill(-g.pgid, 0) } == 0
            })
            .collect();
        if candidates.is_empty() {
            return candidates;
        }
        let alive: HashSet<i32> = all_processes()
            .into_iter()
            .filter(|(_, stat)| !stat.is_dead())
            .map(|(_, stat)| stat.pgrp)
            .collect();
        candidates
            .into_iter()
            .filter(|g| alive.contains(&g.pgid))
            .collect()
    })
    .await
}

fn all_processes() -> Vec<(i32, ProcStat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

fn read_cmdline(pid: i32) -> Option<Vec<String>> {
    let data = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        data.split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// The value after `option` (`--master local[*]`).
fn option_arg(args: &[String], option: &str) -> Option<String> {
    args.windows(2)
        .find(|pair| pair[0] == option)
        .map(|pair| pair[1].clone())
}

/// The value of `--conf key=value`.
fn conf_arg(args: &[String], key: &str) -> Option<String> {
    args.windows(2)
        .filter(|pair| pair[0] == "--conf")
        .find_map(|pair| {
            pair[1]
                .strip_prefix(key)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
}

/// Live processes whose command line holds `--name <name>`: the engine's Spark process, and
/// its launcher while it starts.
fn find_engine_processes(name: &str) -> Vec<(i32, ProcStat, Vec<String>)> {
    let me = std::process::id();
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    all_processes()
        .into_iter()
        .filter(|(pid, stat)| {
            u32::try_from(*pid).ok() != Some(me) && !stat.is_dead() && !stat.is_kernel_thread()
        })
        // Only Rucat's own user's processes: on a shared host another user's process may carry
        // an engine's name, and is never the engine's.
        .filter(|(pid, _)| owner_uid(*pid) == Some(uid))
        .filter_map(|(pid, stat)| {
            let args = settled_cmdline(pid)?;
            args.windows(2)
                .any(|pair| pair[0] == "--name" && pair[1] == name)
                .then_some((pid, stat, args))
        })
        .collect()
}

/// The user that owns process `pid`.
fn owner_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// The engine generation a process's command line names (0 for a process of an older Rucat).
fn generation_of(args: &[String]) -> u64 {
    conf_arg(args, GENERATION_CONF)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The command line of a user process. It reads empty for an instant while the process
/// `exec`s (the launcher scripts of Spark exec several times): read it again then.
fn settled_cmdline(pid: i32) -> Option<Vec<String>> {
    for _ in 0..20 {
        let args = read_cmdline(pid)?;
        if !args.is_empty() {
            return Some(args);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortOwner {
    /// Nothing listens on the port yet.
    Nobody,
    /// The engine's process listens on it.
    Engine,
    /// Another process does.
    Other,
}

/// Who listens on `port`, as seen from process `pid`'s network namespace.
/// The first port of the kernel's ephemeral range (from which `bind(0)` picks).
fn ephemeral_floor() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn port_owner(pid: i32, port: u16) -> PortOwner {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return PortOwner::Nobody;
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.filter_map(Result::ok).map(|fd| fd.path()));
    listener_among(fds, &inodes)
}

/// Whether one of a process's open files (`fds`: the links of its `/proc/PID/fd`) is one of
/// the listening sockets `inodes`. Files that cannot be listed (no permission: the process is
/// not Rucat's user's) cannot tell, and are never taken for the engine's.
fn listener_among(
    fds: std::io::Result<impl Iterator<Item = PathBuf>>,
    inodes: &HashSet<u64>,
) -> PortOwner {
    let Ok(mut fds) = fds else {
        return PortOwner::Other;
    };
    let owns = fds.any(|fd| {
        fs::read_link(fd).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    });
    if owns {
        PortOwner::Engine
    } else {
        PortOwner::Other
    }
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp{,6}` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, local_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port && *fields.get(3)? == LISTEN)
                .then(|| fields.get(9)?.parse::<u64>().ok())
                .flatten()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::net::TcpListener;

    use super::*;
    use crate::engine::EngineState;

    const FAKE_SUBMIT: &str = include_str!("../../tests/fixtures/local_platform/spark-submit");
    const FAKE_SERVER: &str = include_str!("../../tests/fixtures/local_platform/fake_connect.py");

    fn engine(configs: &[(&str, &str)]) -> Engine {
        let now = Utc::now();
        Engine {
            id: EngineId::generate(),
            name: "test".to_owned(),
            owner: "tester".to_owned(),
            engine_type: "Spark".to_owned(),
            version: "4.3.0".to_owned(),
            state: EngineState::TriggerStart,
            error: None,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            endpoint: None,
            create_time: now,
            update_time: now,
            next_update_time: None,
            idle_timeout_minutes: 0,
            secret: None,
            generation: 0,
            failures: 0,
            failing_since: None,
        }
    }

    /// A fake Spark distribution whose spark-submit runs tests/fixtures/local_platform.
    fn fake_spark_home(core_jar: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().expect("temp dir");
        let bin = home.path().join("bin");
        let jars = home.path().join("jars");
        fs::create_dir_all(&bin).expect("bin");
        fs::create_dir_all(&jars).expect("jars");
        let submit = bin.join("spark-submit");
        fs::write(&submit, FAKE_SUBMIT).expect("spark-submit");
        fs::set_permissions(&submit, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(bin.join("fake_connect.py"), FAKE_SERVER).expect("fake server");
        fs::write(jars.join(core_jar), b"").expect("core jar");
        fs::write(jars.join("spark-connect_2.13-4.3.0.jar"), b"").expect("connect jar");
        home
    }

    struct Fixture {
        home: tempfile::TempDir,
        data: tempfile::TempDir,
        platform: LocalPlatform,
    }

    impl Fixture {
        fn new() -> Self {
            let home = fake_spark_home("spark-core_2.13-4.3.0.jar");
            let data = tempfile::tempdir().expect("temp dir");
            let platform = Self::platform_on(&home, &data);
            Fixture {
                home,
                data,
                platform,
            }
        }

        fn platform_on(home: &tempfile::TempDir, data: &tempfile::TempDir) -> LocalPlatform {
            LocalPlatform::new(
                home.path().to_owned(),
                data.path().to_owned(),
                "local[2]".to_owned(),
            )
            .expect("platform")
        }

        /// Another platform on the same data directory: Rucat after a restart.
        fn restarted(&self) -> LocalPlatform {
            Self::platform_on(&self.home, &self.data)
        }

        fn record(&self, id: &EngineId) -> ProcessRecord {
            read_record(&self.platform.engine_dir(id))
                .expect("state file readable")
                .expect("state file present")
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            kill_leftovers(self.data.path());
        }
    }

    /// Ends whatever engine processes a failed test left behind under `data_dir`.
    fn kill_leftovers(data_dir: &Path) {
        let Ok(entries) = fs::read_dir(data_dir.join(ENGINES_DIR)) else {
            return;
        };
        for id in entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(EngineId::parse))
        {
            if let Ok(Some(record)) = read_record(&data_dir.join(ENGINES_DIR).join(id.as_str())) {
                if liveness(record.pid, record.proc_start_time) != Liveness::Gone {
                    signal_group(record.pgid, libc::SIGKILL);
                }
            }
            for (_, stat, _) in find_engine_processes(&engine_process_name(&id)) {
                signal_group(stat.pgrp, libc::SIGKILL);
            }
        }
    }

    struct KillLeftovers<'a>(&'a Path);

    impl Drop for KillLeftovers<'_> {
        fn drop(&mut self) {
            kill_leftovers(self.0);
        }
    }

    async fn wait_for_state(
        platform: &LocalPlatform,
        engine: &Engine,
        timeout: Duration,
        done: impl Fn(&ResourceState) -> bool,
    ) -> ResourceState {
        let deadline = Instant::now() + timeout;
        loop {
            let state = platform.state(engine).await.expect("state");
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "engine still {state:?} after {timeout:?}; log:\n{}",
                platform
                    .logs(&engine.id, 4000)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn is_running(state: &ResourceState) -> bool {
        matches!(state, ResourceState::Running { .. })
    }

    fn group_members(pgid: i32) -> Vec<i32> {
        all_processes()
            .into_iter()
            .filter(|(_, stat)| stat.pgrp == pgid && !stat.is_dead())
            .map(|(pid, _)| pid)
            .collect()
    }

    fn engine_leaders(id: &EngineId) -> Vec<i32> {
        find_engine_processes(&engine_process_name(id))
            .into_iter()
            .filter(|(pid, stat, _)| *pid == stat.pgrp)
            .map(|(pid, _, _)| pid)
            .collect()
    }

    fn port_of(state: &ResourceState) -> u16 {
        let ResourceState::Running { endpoint } = state else {
            panic!("not running: {state:?}");
        };
        endpoint
            .strip_prefix("sc://127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected endpoint {endpoint}"))
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(HOST, port))
    }

    /// `sh -c 'sleep 60' --name NAME`: a process whose command line carries an engine's name,
    /// run as `uid` when given (the tests run as root, which may start processes of any user).
    fn impostor(name: &str, uid: Option<u32>) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("/bin/sh");
        // Two commands, so that the shell stays (it would exec a single one, losing the name).
        command
            .args(["-c", "sleep 60; true", "--name", name])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command
            .spawn()
            .expect("start a process (as another user: the tests must run as root)")
    }

    #[tokio::test]
    async fn another_users_process_carrying_an_engines_name_is_never_the_engine() {
        let fx = Fixture::new();
        let engine = engine(&[]);
        let name = engine_process_name(&engine.id);
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test starts a process as another user, so it runs as root"
        );
        let mut foreign = impostor(&name, Some(65534));
        let foreign_pid = foreign.id() as i32;
        // Seen as the engine's before the fix: only the command line was looked at.
        for _ in 0..100 {
            if settled_cmdline(foreign_pid).is_some_and(|args| args.contains(&name)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(owner_uid(foreign_pid), Some(65534));
        assert!(find_engine_processes(&name).is_empty());
        // Neither a state, nor something a delete (even forced) or the orphan scan kills.
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
        fx.platform
            .delete(&engine.id, u64::MAX, true)
            .await
            .unwrap();
        assert!(
            foreign.try_wait().unwrap().is_none(),
            "another user's process was killed"
        );

        // Our own user's process with that name is one (the check can fail).
        let mut own = impostor(&name, None);
        let own_pid = own.id() as i32;
        let mut found = Vec::new();
        for _ in 0..100 {
            found = find_engine_processes(&name);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            found.iter().map(|(pid, _, _)| *pid).collect::<Vec<_>>(),
            vec![own_pid]
        );
        for child in [&mut foreign, &mut own] {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    #[test]
    fn a_process_whose_files_cannot_be_listed_does_not_own_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let table = fs::read_to_string(format!("/proc/{me}/net/tcp")).unwrap();
        let inodes: HashSet<u64> = listening_inodes(&table, port).into_iter().collect();
        assert!(!inodes.is_empty());
        let own_fds = || {
            fs::read_dir(format!("/proc/{me}/fd"))
                .map(|dir| dir.filter_map(Result::ok).map(|fd| fd.path()))
        };
        assert_eq!(listener_among(own_fds(), &inodes), PortOwner::Engine);
        assert_eq!(port_owner(me, port), PortOwner::Engine);
        // Before the fix, a /proc/PID/fd that could not be read counted as the engine's.
        let denied: std::io::Result<std::iter::Empty<PathBuf>> =
            Err(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(listener_among(denied, &inodes), PortOwner::Other);
        drop(listener);
    }

    #[test]
    fn version_comes_from_the_core_jar() {
        let home = fake_spark_home("spark-core_2.13-4.3.0.jar");
        assert_eq!(LocalPlatform::spark_version(home.path()).unwrap(), "4.3.0");
        let preview = fake_spark_home("spark-core_2.13-4.0.0-preview2.jar");
        assert_eq!(
            LocalPlatform::spark_version(preview.path()).unwrap(),
            "4.0.0-preview2"
        );
        assert_eq!(
            version_of_core_jar("spark-core_2.12-3.5.1.jar").as_deref(),
            Some("3.5.1")
        );
        assert_eq!(version_of_core_jar("spark-core_2.13-4.3.0-tests.jar"), None);
        assert_eq!(version_of_core_jar("spark-sql_2.13-4.3.0.jar"), None);

        let data = tempfile::tempdir().unwrap();
        let platform = LocalPlatform::new(
            home.path().to_owned(),
            data.path().to_owned(),
            "local[*]".to_owned(),
        )
        .unwrap();
        assert_eq!(platform.version(), "4.3.0");
    }

    #[test]
    fn ports_come_from_below_the_ephemeral_range_and_are_not_reused() {
        let home = fake_spark_home("spark-core_2.13-4.3.0.jar");
        let data = tempfile::tempdir().unwrap();
        let platform = LocalPlatform::new(
            home.path().to_owned(),
            data.path().to_owned(),
            "local[*]".to_owned(),
        )
        .unwrap();
        let id = EngineId::generate();
        let floor = ephemeral_floor().max(PORT_FLOOR + 1024);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = platform.pick_port(&id).unwrap();
            assert!((PORT_FLOOR..floor).contains(&port), "{port}");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn a_spark_home_without_spark_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let err = LocalPlatform::new(
            empty.path().to_owned(),
            data.path().to_owned(),
            "local[*]".to_owned(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bin/spark-submit"), "{err}");

        let no_jar = fake_spark_home("spark-sql_2.13-4.3.0.jar");
        let err = LocalPlatform::new(
            no_jar.path().to_owned(),
            data.path().to_owned(),
            "local[*]".to_owned(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("spark-core_"), "{err}");
        assert!(LocalPlatform::spark_version(empty.path()).is_err());
    }

    #[test]
    fn stat_lines_are_parsed_whatever_the_command_name() {
        let line =
            "4242 (java (x) y) S 1 4242 4242 0 -1 2097152 1 2 3 4 5 6 7 8 20 0 40 0 987654 1 2";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(stat.is_kernel_thread());
        let me = read_stat(std::process::id() as i32).unwrap();
        assert!(!me.is_kernel_thread());
        assert_eq!(
            liveness(std::process::id() as i32, me.start_time),
            Liveness::Alive
        );
        assert_eq!(
            liveness(std::process::id() as i32, me.start_time + 1),
            Liveness::Gone
        );
    }

    #[test]
    fn listening_sockets_are_found_in_proc_net_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0 100 0 0 10 0\n\
   1: 0100007F:3A98 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 15000), vec![123456]);
        assert!(listening_inodes(table, 15001).is_empty());
    }

    #[test]
    fn properties_are_escaped_for_java() {
        assert_eq!(
            escape_property("spark.executor.memory", true),
            "spark.executor.memory"
        );
        assert_eq!(escape_property("2g", false), "2g");
        assert_eq!(escape_property(" a=b:c\\d", false), "\\ a=b:c\\\\d");
        assert_eq!(escape_property("a b=c", true), "a\\ b\\=c");
        assert_eq!(escape_property("é", false), "\\u00e9");
        assert_eq!(escape_property("😀", false), "\\ud83d\\ude00");
        let id = EngineId::generate();
        let configs = BTreeMap::from([("spark.x".to_owned(), "=1".to_owned())]);
        let text = properties_file(&id, "spark.a 1", &configs);
        assert!(
            text.contains("spark.a 1\n# The engine's configs:\nspark.x=\\=1\n"),
            "{text}"
        );
    }

    #[test]
    fn log_tails_start_at_a_character_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert_eq!(read_tail(&path, 10).unwrap(), None);
        fs::write(&path, "ééééé").unwrap(); // 10 bytes
        assert_eq!(read_tail(&path, 100).unwrap().unwrap(), "ééééé");
        assert_eq!(read_tail(&path, 5).unwrap().unwrap(), "éé");
        assert_eq!(read_tail(&path, 4).unwrap().unwrap(), "éé");
        assert_eq!(read_tail(&path, 0).unwrap().unwrap(), "");

        let log = "INFO starting\nException in thread \"main\" java.lang.IllegalStateException: boom\n\
\tat org.apache.spark.Foo.bar(Foo.scala:1)\n\tat org.apache.spark.Foo.baz(Foo.scala:2)\n\t... 3 more\n";
        fs::write(&path, log).unwrap();
        assert_eq!(
            last_log_lines(&path),
            "INFO starting\nException in thread \"main\" java.lang.IllegalStateException: boom"
        );

        // What Spark Connect logs when it cannot bind: the error, then its whole shutdown.
        let mut log =
            String::from("26/11/23 09:36:30 INFO SparkContext: Running Spark version 4.3.0\n");
        log.push_str(
            "26/11/23 09:36:41 ERROR SparkConnectServer: Error starting Spark Connect server\n",
        );
        log.push_str("java.net.BindException: Failed to bind to address 999.1.1.1:15997\n");
        log.push_str("\tat org.sparkproject.connect.grpc.Foo.bar(Foo.java:1)\n");
        for i in 0..30 {
            log.push_str(&format!(
                "26/11/23 09:36:41 INFO ShutdownHookManager: step {i}\n"
            ));
        }
        fs::write(&path, &log).unwrap();
        let lines = last_log_lines(&path);
        assert_eq!(
            lines.lines().collect::<Vec<_>>(),
            vec![
                "26/11/23 09:36:41 ERROR SparkConnectServer: Error starting Spark Connect server",
                "java.net.BindException: Failed to bind to address 999.1.1.1:15997",
                "…",
                "26/11/23 09:36:41 INFO ShutdownHookManager: step 27",
                "26/11/23 09:36:41 INFO ShutdownHookManager: step 28",
                "26/11/23 09:36:41 INFO ShutdownHookManager: step 29",
            ]
        );
    }

    #[tokio::test]
    async fn grpc_probe_needs_an_http2_settings_frame() {
        // A closed port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(!grpc_serves(closed_addr, Duration::from_secs(1)).await);

        // A TCP server that accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let silent_task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        // Given up after its own timeout (the outer one only keeps a broken probe from hanging
        // the test).
        let probed = tokio::time::timeout(
            Duration::from_secs(30),
            grpc_serves(silent_addr, Duration::from_millis(500)),
        )
        .await;
        assert_eq!(probed, Ok(false));

        // An HTTP/1 server.
        let http1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http1_addr = http1.local_addr().unwrap();
        let http1_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = http1.accept().await {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        assert!(!grpc_serves(http1_addr, Duration::from_secs(1)).await);

        // A server that speaks HTTP/2.
        let h2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h2_addr = h2.local_addr().unwrap();
        let h2_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = h2.accept().await {
                let mut preface = [0u8; 24];
                if stream.read_exact(&mut preface).await.is_ok()
                    && &preface == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                {
                    let _ = stream
                        .write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
                        .await;
                }
            }
        });
        assert!(grpc_serves(h2_addr, Duration::from_secs(1)).await);
        assert_eq!(H2_CLIENT_HELLO.len(), 24 + 9);

        silent_task.abort();
        http1_task.abort();
        h2_task.abort();
    }

    #[tokio::test]
    async fn an_engine_starts_serves_and_is_deleted() {
        let fx = Fixture::new();
        let engine = engine(&[("spark.fake.delay", "1.5"), ("spark.executor.memory", "1g")]);
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );

        fx.platform.create(&engine).await.unwrap();
        let record = fx.record(&engine.id);
        assert_eq!(record.pgid, record.pid);
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Starting
        );

        let running =
            wait_for_state(&fx.platform, &engine, Duration::from_secs(20), is_running).await;
        let port = port_of(&running);
        assert_eq!(port, record.port);
        assert!(grpc_serves(loopback(port), Duration::from_secs(1)).await);
        assert_eq!(
            group_members(record.pgid).len(),
            2,
            "the server and its helper"
        );

        // What Spark was given.
        let log = fx
            .platform
            .logs(&engine.id, 64 * 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(log.contains(&format!("port={port} mode=serve")), "{log}");
        assert!(log.contains("SPARK_LOCAL_IP=127.0.0.1"), "{log}");
        let work = fs::canonicalize(fx.platform.engine_dir(&engine.id).join("work")).unwrap();
        assert!(log.contains(&format!("cwd={}", work.display())), "{log}");
        let args = read_cmdline(record.pid).unwrap();
        assert_eq!(option_arg(&args, "--master").as_deref(), Some("local[2]"));
        assert_eq!(
            option_arg(&args, "--class").as_deref(),
            Some(CONNECT_SERVER_CLASS)
        );
        assert_eq!(
            conf_arg(&args, "spark.ui.enabled").as_deref(),
            Some("false")
        );
        assert_eq!(
            conf_arg(&args, "spark.driver.host").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            conf_arg(&args, "spark.local.dir"),
            Some(work.join("tmp").display().to_string())
        );
        assert!(
            !args.iter().any(|a| a.contains("spark.executor.memory")),
            "user configs stay off the command line: {args:?}"
        );
        let conf_path = fx.platform.engine_dir(&engine.id).join(CONF_FILE);
        let conf = fs::read_to_string(&conf_path).unwrap();
        assert!(conf.contains("spark.executor.memory=1g\n"), "{conf}");
        assert_eq!(
            fs::metadata(&conf_path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        fx.platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
        assert!(
            group_members(record.pgid).is_empty(),
            "the whole group is gone"
        );
        assert!(!grpc_serves(loopback(port), Duration::from_secs(1)).await);
        assert!(tokio::net::TcpStream::connect(loopback(port))
            .await
            .is_err());
        // The log stays readable; deleting again is fine.
        let log = fx
            .platform
            .logs(&engine.id, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert!(log.contains("rucat:"), "{log}");
        fx.platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        assert_eq!(
            fx.platform.resources().await.unwrap(),
            vec![(engine.id.clone(), engine.generation)]
        );
    }

    #[tokio::test]
    async fn create_is_idempotent() {
        let fx = Fixture::new();
        let engine = engine(&[]);
        fx.platform.create(&engine).await.unwrap();
        let first = fx.record(&engine.id);
        fx.platform.create(&engine).await.unwrap();
        assert_eq!(
            fx.record(&engine.id),
            first,
            "the running process was adopted"
        );
        // Concurrent creates, too.
        let (a, b) = tokio::join!(fx.platform.create(&engine), fx.platform.create(&engine));
        a.unwrap();
        b.unwrap();
        assert_eq!(fx.record(&engine.id), first);
        assert_eq!(engine_leaders(&engine.id), vec![first.pid]);
        wait_for_state(&fx.platform, &engine, Duration::from_secs(20), is_running).await;
        fx.platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        assert!(engine_leaders(&engine.id).is_empty());
    }

    #[tokio::test]
    async fn a_process_that_exits_is_failed_with_its_status_and_log() {
        let fx = Fixture::new();
        let engine = engine(&[("spark.fake.mode", "exit"), ("spark.fake.exit_code", "3")]);
        fx.platform.create(&engine).await.unwrap();
        let state = wait_for_state(&fx.platform, &engine, Duration::from_secs(20), |s| {
            matches!(s, ResourceState::Failed(_))
        })
        .await;
        let ResourceState::Failed(message) = state else {
            unreachable!()
        };
        assert!(message.contains(engine.id.as_str()), "{message}");
        assert!(message.contains("exited with status 3"), "{message}");
        assert!(message.contains("see the engine's logs"), "{message}");
        assert!(
            message.contains("fatal error: cannot start the fake engine"),
            "{message}"
        );
        assert!(
            message.lines().count() <= 2 + FAILURE_LOG_LINES,
            "{message}"
        );

        // A restarted Rucat did not reap it, but finds how it ended on disk.
        let restarted = fx.restarted();
        let ResourceState::Failed(again) = restarted.state(&engine).await.unwrap() else {
            panic!("not failed")
        };
        assert!(again.contains("exited with status 3"), "{again}");

        // create starts it again; delete cleans.
        fx.platform.create(&engine).await.unwrap();
        assert_ne!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
        fx.platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
    }

    #[tokio::test]
    async fn a_killed_process_is_failed_and_its_group_is_cleaned() {
        let fx = Fixture::new();
        let engine = engine(&[]);
        fx.platform.create(&engine).await.unwrap();
        wait_for_state(&fx.platform, &engine, Duration::from_secs(20), is_running).await;
        let record = fx.record(&engine.id);
        // SAFETY: the test's own child.
        unsafe { libc::kill(record.pid, libc::SIGKILL) };
        let state = wait_for_state(&fx.platform, &engine, Duration::from_secs(10), |s| {
            matches!(s, ResourceState::Failed(_))
        })
        .await;
        let ResourceState::Failed(message) = state else {
            unreachable!()
        };
        assert!(
            message.contains("killed by signal 9 (SIGKILL)"),
            "{message}"
        );
        assert!(
            message.contains("fake connect server: serving"),
            "{message}"
        );
        // The leader is gone, its helper is not: delete ends the group.
        assert_eq!(group_members(record.pgid).len(), 1);
        fx.platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        assert!(group_members(record.pgid).is_empty());
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_stays_until_a_forced_delete() {
        let fx = Fixture::new();
        let engine = engine(&[]);
        fx.platform.create(&engine).await.unwrap();
        wait_for_state(&fx.platform, &engine, Duration::from_secs(20), is_running).await;
        let record = fx.record(&engine.id);
        // Stopped, the process keeps SIGTERM pending: a hung Spark that ignores it.
        // SAFETY: the test's own child.
        unsafe { libc::kill(record.pid, libc::SIGSTOP) };
        // A plain delete returns once under way (the outer timeout only keeps a delete that
        // waits for the process from hanging the test).
        tokio::time::timeout(
            TERM_WAIT + Duration::from_secs(60),
            fx.platform.delete(&engine.id, engine.generation, false),
        )
        .await
        .expect("a plain delete returns while the process lives")
        .unwrap();
        // Under way, not done: the process and its state stay.
        assert_eq!(
            liveness(record.pid, record.proc_start_time),
            Liveness::Alive
        );
        assert_eq!(fx.record(&engine.id), record);
        assert_ne!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
        fx.platform
            .delete(&engine.id, engine.generation, true)
            .await
            .unwrap();
        assert!(group_members(record.pgid).is_empty());
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
    }

    #[tokio::test]
    async fn a_restarted_rucat_adopts_its_engines() {
        let fx = Fixture::new();
        let engine = engine(&[]);
        fx.platform.create(&engine).await.unwrap();
        let record = fx.record(&engine.id);
        wait_for_state(&fx.platform, &engine, Duration::from_secs(20), is_running).await;

        let restarted = fx.restarted();
        assert!(is_running(&restarted.state(&engine).await.unwrap()));
        restarted.create(&engine).await.unwrap();
        assert_eq!(fx.record(&engine.id), record);
        assert_eq!(engine_leaders(&engine.id), vec![record.pid]);
        assert_eq!(
            restarted.resources().await.unwrap(),
            vec![(engine.id.clone(), engine.generation)]
        );

        // Rucat died after starting the process, before writing its state file.
        fs::remove_file(fx.platform.engine_dir(&engine.id).join(STATE_FILE)).unwrap();
        assert_eq!(restarted.state(&engine).await.unwrap(), ResourceState::Gone);
        let again = fx.restarted();
        again.create(&engine).await.unwrap();
        let adopted = fx.record(&engine.id);
        assert_eq!(
            (adopted.pid, adopted.port, adopted.proc_start_time),
            (record.pid, record.port, record.proc_start_time)
        );
        assert_eq!(adopted.master, "local[2]");
        assert!(is_running(&again.state(&engine).await.unwrap()));
        assert_eq!(engine_leaders(&engine.id), vec![record.pid]);

        again
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        assert!(group_members(record.pgid).is_empty());
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
    }

    #[tokio::test]
    async fn a_stale_pid_is_never_taken_for_the_engine() {
        let fx = Fixture::new();
        let engine = engine(&[]);
        let dir = fx.platform.engine_dir(&engine.id);
        fs::create_dir_all(&dir).unwrap();
        // Our own pid with another start time: a pid reused since the engine died.
        let me = std::process::id() as i32;
        let start = read_stat(me).unwrap().start_time;
        let record = ProcessRecord {
            pid: me,
            pgid: me,
            port: 1,
            proc_start_time: start + 1,
            started_at: Utc::now(),
            master: "local[2]".to_owned(),
            spark_home: fx.home.path().to_owned(),
            generation: 0,
        };
        write_json_atomic(&dir.join(STATE_FILE), &record).unwrap();
        let ResourceState::Failed(message) = fx.platform.state(&engine).await.unwrap() else {
            panic!("not failed");
        };
        assert!(message.contains("no longer running"), "{message}");
        fx.platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap(); // and it does not kill us
        assert_eq!(
            fx.platform.state(&engine).await.unwrap(),
            ResourceState::Gone
        );
    }

    #[tokio::test]
    async fn resources_list_engine_directories_and_forget_removes_them() {
        let fx = Fixture::new();
        assert!(fx.platform.resources().await.unwrap().is_empty());
        let a = engine(&[]);
        let b = engine(&[("spark.fake.mode", "exit")]);
        fx.platform.create(&a).await.unwrap();
        fx.platform.create(&b).await.unwrap();
        fs::create_dir_all(fx.data.path().join("engines").join("not-an-engine")).unwrap();
        fs::write(fx.data.path().join("engines").join("0123"), b"").unwrap();
        let mut expected = vec![(a.id.clone(), a.generation), (b.id.clone(), b.generation)];
        expected.sort();
        assert_eq!(fx.platform.resources().await.unwrap(), expected);

        let pgid = fx.record(&a.id).pgid;
        fx.platform.forget(&a.id).await.unwrap();
        assert!(!fx.platform.engine_dir(&a.id).exists());
        assert!(group_members(pgid).is_empty());
        assert_eq!(fx.platform.state(&a).await.unwrap(), ResourceState::Gone);
        assert_eq!(fx.platform.logs(&a.id, 100).await.unwrap(), None);
        assert_eq!(
            fx.platform.resources().await.unwrap(),
            vec![(b.id.clone(), b.generation)]
        );

        let tail = fx.platform.logs(&b.id, 10).await.unwrap().unwrap();
        assert!(tail.len() <= 10, "{tail:?}");
        fx.platform.forget(&b.id).await.unwrap();
        assert!(fx.platform.resources().await.unwrap().is_empty());

        // Nothing to delete or forget.
        let nobody = EngineId::generate();
        fx.platform.delete(&nobody, 0, false).await.unwrap();
        fx.platform.forget(&nobody).await.unwrap();
        assert_eq!(fx.platform.logs(&nobody, 100).await.unwrap(), None);
    }

    /// Against the real Spark (SPARK_HOME, else the one the setup script installs).
    #[tokio::test]
    async fn a_real_spark_connect_server_starts_serves_and_stops() {
        let spark_home = std::env::var_os("SPARK_HOME")
            .map(PathBuf::from)
            .or_else(crate::config::installed_spark_home)
            .expect(
                "this test needs a Spark distribution: run scripts/setup.sh, or set SPARK_HOME",
            );
        assert!(
            spark_home.join("bin").join("spark-submit").is_file(),
            "this test needs a Spark distribution: {} has no bin/spark-submit",
            spark_home.display()
        );
        let data = tempfile::tempdir().unwrap();
        let _cleanup = KillLeftovers(data.path());
        let platform =
            LocalPlatform::new(spark_home, data.path().to_owned(), "local[2]".to_owned()).unwrap();
        let engine = engine(&[("spark.sql.shuffle.partitions", "4")]);
        let started = Instant::now();
        platform.create(&engine).await.unwrap();
        let record = read_record(&platform.engine_dir(&engine.id))
            .unwrap()
            .unwrap();
        let running =
            wait_for_state(&platform, &engine, Duration::from_secs(120), is_running).await;
        eprintln!(
            "real Spark Connect server serving after {:?}",
            started.elapsed()
        );
        let port = port_of(&running);
        assert!(grpc_serves(loopback(port), Duration::from_secs(1)).await);
        let args = read_cmdline(record.pid).unwrap();
        assert!(
            args.iter().any(|a| a == &engine_process_name(&engine.id)),
            "{args:?}"
        );

        let stopping = Instant::now();
        platform
            .delete(&engine.id, engine.generation, false)
            .await
            .unwrap();
        eprintln!(
            "real Spark Connect server stopped in {:?}",
            stopping.elapsed()
        );
        assert_eq!(platform.state(&engine).await.unwrap(), ResourceState::Gone);
        assert!(group_members(record.pgid).is_empty());
        assert!(tokio::net::TcpStream::connect(loopback(port))
            .await
            .is_err());
        let log = platform.logs(&engine.id, 1 << 20).await.unwrap().unwrap();
        assert!(log.contains("Spark Connect server started"), "{log}");
    }
}
