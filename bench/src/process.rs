//! Child processes of the benchmarks, each leading its own process group so that everything it
//! starts (a JVM under a shell script, `rucat serve`'s engines) goes with it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often a stopping group is looked at.
const POLL: Duration = Duration::from_millis(50);

/// A child leading its own process group; the whole group is killed when this is dropped.
pub struct Group {
    pub child: Child,
    pub pgid: i32,
    log: PathBuf,
}

impl Group {
    pub fn spawn(mut command: Command, log: &Path) -> Result<Group, Error> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = command.spawn()?;
        let pgid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or("spawned child has no pid")?;
        Ok(Group {
            child,
            pgid,
            log: log.to_owned(),
        })
    }

    pub fn signal(&self, signal: i32) {
        if self.pgid > 1 {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-self.pgid, signal);
            }
        }
    }

    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the group exists.
        self.pgid > 1 && unsafe { libc::kill(-self.pgid, 0) } == 0
    }

    /// The end of the log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 10)
    }

    /// SIGTERM to the group, SIGKILL after `grace`; waits (bounded) for the leader and the group.
    pub async fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        }
        let gone_by = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < gone_by {
            tokio::time::sleep(POLL).await;
        }
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
    }

    /// Waits until `addr` accepts TCP connections (the process has bound its port).
    pub async fn wait_listening(
        &mut self,
        addr: SocketAddr,
        what: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("{what} ended ({status}):\n{}", self.log_tail()).into());
            }
            if started.elapsed() > timeout {
                return Err(format!("{what} not listening within {timeout:?}").into());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
    }
}

/// The last `lines` lines of the log file at `path` (empty if it cannot be read), for error
/// messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `rucat` child of a benchmark, configured by its flags and configuration file only (none
/// of the shell's `RUCAT_*` variables), its output in a log file; killed when dropped.
pub struct RucatProcess {
    pub name: String,
    pub child: Child,
    log: PathBuf,
}

impl RucatProcess {
    pub fn spawn(
        binary: &Path,
        name: impl Into<String>,
        args: &[&str],
        log: &Path,
    ) -> Result<RucatProcess, Error> {
        let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("duplicating {}: {e}", log.display()))?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RUCAT_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .env("RUCAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        Ok(RucatProcess {
            name: name.into(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 15)
    }

    /// An error naming how the process ended, if it has.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                Err(format!("rucat {} ended ({status}):\n{}", self.name, self.log_tail()).into())
            }
        }
    }

    /// SIGTERM (see [`RucatProcess::reap`]).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Waits for the process to end after [`RucatProcess::terminate`]; SIGKILL after 15 s.
    pub async fn reap(&mut self) {
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "rucat {} still running 15 s after SIGTERM; killing it",
                self.name
            );
            let _ = self.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        }
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub async fn stop(&mut self) {
        self.terminate();
        self.reap().await;
    }
}
