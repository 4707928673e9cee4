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
//!
//! Its parts: `process` (starting, reaping, adopting and stopping an engine's processes),
//! `records` (the files above), `procfs` (what is read from `/proc`), `probe` (whether the gRPC
//! server of Spark Connect answers) and `properties` (the `engine.conf` file).

mod probe;
mod process;
mod procfs;
mod properties;
mod records;
pub mod settings;

#[cfg(test)]
mod fixtures;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::{info, warn};

use self::probe::PROBE_TIMEOUT;
use self::process::{wait_gone, Stop, TrackedChild, TERM_WAIT};
use self::procfs::{ephemeral_floor, liveness, port_owner, Liveness, PortOwner};
use self::records::{
    lock_engine, read_record, read_tail, remove_dir_if_exists, remove_file_if_exists, ENGINES_DIR,
    EXIT_FILE, LOG_FILE, STATE_FILE, WORK_DIR,
};
use super::{Platform, PlatformError, ResourceState};
use crate::engine::{Engine, EngineId};

pub use probe::grpc_serves;
pub use process::{CONNECT_SERVER_CLASS, SECRET_ENV};

/// The address engines bind and clients reach them on.
const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// A port handed to an engine is not handed out again for this long (the engine binds it only
/// seconds after it was chosen).
const PORT_QUARANTINE: Duration = Duration::from_secs(300);
/// The lowest port handed to an engine.
const PORT_FLOOR: u16 = 20000;

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
}

#[async_trait]
impl Platform for LocalPlatform {
    /// The one Spark version of the distribution at `spark_home`.
    fn versions(&self) -> &[String] {
        std::slice::from_ref(&self.version)
    }

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

async fn blocking<T, F>(what: &str, f: F) -> Result<T, PlatformError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PlatformError::Inspect(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::process::{conf_arg, engine_process_name, option_arg, CONNECT_SERVER_CLASS};
    use super::procfs::read_cmdline;
    use super::records::{CONF_FILE, FAILURE_LOG_LINES};
    use super::*;

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
