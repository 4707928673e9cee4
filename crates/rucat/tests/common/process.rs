//! The real `rucat` binary run by a test: a long-running role ([`Spawn`], [`Process`]) started
//! with its arguments, environment and configuration file, its output in a log file; ready once
//! its log names the addresses it listens on; stopped with SIGTERM (a clean stop checked) or
//! SIGKILL; paused and resumed. And a CLI command run to completion ([`cli`]).

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `rucat` binary Cargo built for these tests.
pub const RUCAT: &str = env!("CARGO_BIN_EXE_rucat");

/// How long a process has to stop after SIGTERM, at the end of a test.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);

/// `rucat ARGS…` as a CLI command, to run to completion: standard input closed, the environment
/// the test's own (the caller adds and removes variables).
pub fn cli<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(RUCAT);
    command.args(args).stdin(Stdio::null());
    command
}

/// What happens to a process still running when its [`Process`] is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// It is stopped as an operator would (SIGTERM, SIGKILL after [`STOP_WITHIN`]) and must
    /// stop cleanly: exit 0 within that time, or the test fails (unless it is failing already).
    StopCleanly,
    /// SIGTERM, then SIGKILL after [`STOP_WITHIN`], however it ends.
    Stop,
    /// SIGKILL.
    Kill,
}

/// How a [`Process`] is started: `rucat ARGS…` with `RUCAT_LOG=info,rucat=debug`, standard input
/// closed, standard output and error in a log file; stopped cleanly when dropped.
pub struct Spawn {
    command: Command,
    name: String,
    log: PathBuf,
    log_filter: String,
    on_drop: OnDrop,
}

impl Spawn {
    /// `rucat`, called `name` in failure messages, writing its output to the file `log`.
    pub fn new(name: &str, log: impl Into<PathBuf>) -> Spawn {
        Spawn {
            command: Command::new(RUCAT),
            name: name.to_owned(),
            log: log.into(),
            log_filter: "info,rucat=debug".to_owned(),
            on_drop: OnDrop::StopCleanly,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Spawn {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Spawn {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Spawn {
        self.command.env_remove(key);
        self
    }

    /// None of the `RUCAT_*` variables of the test's own environment (the test runner's); those
    /// given by [`Spawn::env`] afterwards are set.
    pub fn without_rucat_env(mut self) -> Spawn {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RUCAT_") {
                self.command.env_remove(&key);
            }
        }
        self
    }

    /// `RUCAT_LOG` (`info,rucat=debug` unless set here).
    pub fn log_filter(mut self, filter: &str) -> Spawn {
        filter.clone_into(&mut self.log_filter);
        self
    }

    /// Writes `text` to the file `path` and gives it with `--config`.
    pub fn config(mut self, path: impl AsRef<Path>, text: &str) -> Spawn {
        let path = path.as_ref();
        std::fs::write(path, text).expect("write the configuration file");
        self.command.arg("--config").arg(path);
        self
    }

    pub fn on_drop(mut self, on_drop: OnDrop) -> Spawn {
        self.on_drop = on_drop;
        self
    }

    pub fn start(mut self) -> Process {
        let file = std::fs::File::create(&self.log).expect("create the process's log file");
        let child = self
            .command
            .env("RUCAT_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", self.name));
        Process {
            name: self.name,
            addr: None,
            log: self.log,
            child: Some(child),
            on_drop: self.on_drop,
        }
    }
}

/// One running `rucat` process, with its log file.
pub struct Process {
    pub name: String,
    /// The address it was last seen listening on ([`Process::wait_listening`],
    /// [`Process::wait_ready`]).
    pub addr: Option<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
    on_drop: OnDrop,
}

impl Process {
    /// Its pid, until it is stopped or killed through this value.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it wrote so far (standard output and error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The address its log says its `what` ("REST API", "Spark Connect proxy", "metrics")
    /// listens on.
    pub fn listening(&self, what: &str) -> Option<SocketAddr> {
        listening(&self.log(), what)
    }

    /// How it ended, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Fails the test if it exited, or if `deadline` passed while waiting for `what`.
    fn still_waiting(&mut self, what: &str, deadline: Instant, within: Duration) {
        if let Some(status) = self.exited() {
            panic!("{} exited with {status}: {}", self.name, self.log());
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what} not within {within:?}: {}",
            self.name,
            self.log()
        );
    }

    /// Waits until its log names the address its `what` listens on and that address accepts
    /// connections; fails the test if it exits first or after `within`.
    pub async fn wait_listening(&mut self, what: &str, within: Duration) -> SocketAddr {
        let deadline = Instant::now() + within;
        loop {
            if let Some(addr) = self.listening(what) {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    self.addr = Some(addr);
                    return addr;
                }
            }
            self.still_waiting(&format!("its {what} listening"), deadline, within);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until its REST API, at the address its log names, answers `GET /readyz` with 200;
    /// fails the test if it exits first or after `within`.
    pub async fn wait_ready(&mut self, within: Duration) -> SocketAddr {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        let deadline = Instant::now() + within;
        loop {
            if let Some(addr) = self.listening("REST API") {
                let ready = http.get(format!("http://{addr}/readyz")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    self.addr = Some(addr);
                    return addr;
                }
            }
            self.still_waiting("ready", deadline, within);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its exit status, once it exits (within `within`, or the test fails).
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (unless it exited already); its exit status, once it exits (within `within`, or
    /// the test fails).
    pub async fn stop(&mut self, within: Duration) -> ExitStatus {
        if self.exited().is_none() {
            self.signal(libc::SIGTERM);
        }
        self.exit(within).await
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGSTOP: the process is frozen (as by a long GC pause or a suspended VM) until
    /// [`Process::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGSTOP, then waits until every thread of the process is stopped (see [`freeze`]).
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            freeze(pid as i32);
        }
    }

    /// Whether the process holds an flock on `file` (see [`holds_flock`]).
    pub fn holds_flock(&self, file: &Path) -> bool {
        self.pid().is_some_and(|pid| holds_flock(pid, file))
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (to a paused process too), then SIGKILL after [`STOP_WITHIN`]; the exit status of
    /// a graceful stop.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.terminate_within(STOP_WITHIN)
    }

    /// SIGTERM (to a paused process too), then SIGKILL after `within`; the exit status of a
    /// graceful stop.
    pub fn terminate_within(&mut self, within: Duration) -> Option<ExitStatus> {
        self.resume();
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Ends the process as [`OnDrop`] says, if this value still holds it; with
    /// [`OnDrop::StopCleanly`], why it did not stop cleanly.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.child.is_none() {
            return Ok(());
        }
        match self.on_drop {
            OnDrop::Kill => {
                self.kill9();
                Ok(())
            }
            OnDrop::Stop => {
                self.terminate();
                Ok(())
            }
            OnDrop::StopCleanly => match self.terminate() {
                Some(status) if status.success() => Ok(()),
                Some(status) => Err(format!(
                    "{} exited with {status} on SIGTERM: {}",
                    self.name,
                    self.log()
                )),
                None => Err(format!(
                    "{} did not stop within {STOP_WITHIN:?} of SIGTERM: {}",
                    self.name,
                    self.log()
                )),
            },
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(why) = self.finish() {
            if !std::thread::panicking() {
                panic!("{why}");
            }
        }
    }
}

/// The address a `rucat` process's log says its `what` ("REST API", "Spark Connect proxy")
/// listens on: `… {what} listening addr=HOST:PORT …`.
pub fn listening(log: &str, what: &str) -> Option<SocketAddr> {
    let marker = format!("{what} listening addr=");
    log.lines().find_map(|line| {
        let (_, rest) = line.split_once(&marker)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A free TCP port on 127.0.0.1, for a program that cannot bind port 0 and report it (Spark,
/// PostgreSQL): another process may take it before that program binds it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The live (non-zombie) processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
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

/// SIGKILL to every live process whose command line contains `needle` (what a failed test left
/// running under its directory).
pub fn kill_matching(needle: &str) {
    for pid in processes_matching(needle) {
        // SAFETY: sending a signal by pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// SIGSTOP to `pid`, then waits until every one of its threads is stopped: a frozen process (as
/// by a long GC pause or a suspended VM), not one still finishing what it was doing.
pub fn freeze(pid: i32) {
    // SAFETY: signalling a process of the test's own by pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads: Vec<char> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|task| {
                        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                        stat.rsplit_once(')')?.1.trim_start().chars().next()
                    })
                    .collect()
            })
            .unwrap_or_default();
        if threads.iter().all(|&state| state == 'T' || state == 't') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether process `pid` holds an flock on `file` (from `/proc/locks`).
pub fn holds_flock(pid: u32, file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(file).map(|m| m.ino()) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2f:56789 0 EOF"; waiters have "->" after the
        // number, and so do not match.
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(4).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            && fields
                .get(5)
                .and_then(|device_inode| device_inode.rsplit(':').next())
                .and_then(|i| i.parse::<u64>().ok())
                == Some(inode)
    })
}
