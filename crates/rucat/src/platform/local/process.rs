//! The lifecycle of an engine's processes: starting the Spark Connect server in its own process
//! group, reaping it, adopting a process left without a record, and stopping whole groups with
//! signals.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::procfs::{all_processes, find_engine_processes, liveness, read_stat, Liveness};
use super::properties::{properties_file, spark_defaults};
use super::records::{
    last_log_lines, read_json, read_record, remove_dir_if_exists, remove_file_if_exists,
    write_json_atomic, write_private, ExitRecord, ProcessRecord, CONF_FILE, EXIT_FILE, LOG_FILE,
    SCRATCH_DIR, STATE_FILE, WORK_DIR,
};
use super::{blocking, LocalPlatform, HOST};
use crate::engine::{Engine, EngineId};
use crate::platform::{PlatformError, TokenCheck};

/// The Spark conf (unknown to Spark, harmless) that names the engine generation of a process.
const GENERATION_CONF: &str = "spark.rucat.generation";

pub use crate::platform::SECRET_ENV;

/// The main class of a Spark Connect server (what `sbin/start-connect-server.sh` submits).
pub const CONNECT_SERVER_CLASS: &str = "org.apache.spark.sql.connect.service.SparkConnectServer";

/// How long a process has between SIGTERM and SIGKILL when it must be gone before the engine
/// starts again (`create`).
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long a plain `delete` waits, after SIGTERM, for the processes to go (Spark stops in well
/// under a second) before it returns with the deletion under way. The monitor looks again, and
/// past its delete timeout deletes with `force`.
pub(super) const TERM_WAIT: Duration = Duration::from_secs(2);
/// How long a process may take to disappear after SIGKILL before `delete` gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// How long `state` waits for this process's reaper to record the exit status of a process
/// that just died.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// A child this Rucat process started and reaps.
pub(super) struct TrackedChild {
    pid: i32,
    proc_start_time: u64,
    exit: watch::Receiver<Option<ExitRecord>>,
}

impl LocalPlatform {
    /// Starts the engine's Spark Connect server; the caller holds the engine's lock.
    pub(super) async fn start(&self, engine: &Engine, dir: &Path) -> Result<(), PlatformError> {
        let id = &engine.id;
        let work = dir.join(WORK_DIR);
        let scratch = work.join(SCRATCH_DIR);
        fs::create_dir_all(&scratch).map_err(PlatformError::io(format!(
            "creating the work directory of engine {id}"
        )))?;
        let port = self.pick_port(id)?;

        let conf_path = dir.join(CONF_FILE);
        let conf = properties_file(id, &spark_defaults(&self.spark_home), &engine.configs);
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
        // A warm engine's secret is replaced when a create takes it: the handover interceptor
        // (`engine-auth/`, installed in SPARK_HOME's jars by the setup script) checks it instead
        // of Spark's fixed check.
        let token_check = TokenCheck::of(engine.pool.is_some());
        wiring.extend(token_check.conf);
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
            command.env(token_check.env, secret.expose());
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

    pub(super) async fn failure_message(
        &self,
        id: &EngineId,
        record: &ProcessRecord,
        dir: &Path,
    ) -> String {
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
    pub(super) async fn stop_processes(
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
    pub(super) async fn delete_locked(
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
    pub(super) async fn adopt_orphan(
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

pub(super) fn engine_process_name(id: &EngineId) -> String {
    format!("rucat-{id}")
}

fn own_process_group() -> i32 {
    // SAFETY: getpgrp cannot fail.
    unsafe { libc::getpgrp() }
}

/// Sends `signal` to process group `pgid`; never to group 0 or 1, nor to Rucat's own.
pub(super) fn signal_group(pgid: i32, signal: i32) {
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
pub(super) struct Group {
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
pub(super) enum Stop {
    /// SIGTERM, without waiting: the caller decides when to insist.
    Term,
    /// SIGKILL, and wait until they are gone.
    Kill,
    /// SIGTERM, SIGKILL after [`TERM_GRACE`], and wait until they are gone.
    TermThenKill,
}

/// Waits up to `within` until none of `groups` has a live member; whether none has.
pub(super) async fn wait_gone(groups: &[Group], within: Duration) -> Result<bool, PlatformError> {
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

/// The value after `option` (`--master local[*]`).
pub(super) fn option_arg(args: &[String], option: &str) -> Option<String> {
    args.windows(2)
        .find(|pair| pair[0] == option)
        .map(|pair| pair[1].clone())
}

/// The value of `--conf key=value`.
pub(super) fn conf_arg(args: &[String], key: &str) -> Option<String> {
    args.windows(2)
        .filter(|pair| pair[0] == "--conf")
        .find_map(|pair| {
            pair[1]
                .strip_prefix(key)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
}

/// The engine generation a process's command line names (0 for a process of an older Rucat).
fn generation_of(args: &[String]) -> u64 {
    conf_arg(args, GENERATION_CONF)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::procfs::{owner_uid, read_stat, settled_cmdline};
    use super::*;
    use crate::platform::{Platform, ResourceState};

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
        // Only once it has stopped: a SIGTERM sent while the SIGSTOP is still pending is taken
        // first (the lower number), and the process would end.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read_stat(record.pid).is_none_or(|stat| stat.state != 'T') {
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not stop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
}
