//! Several real `rucat server` and `rucat monitor` processes on one store and one data
//! directory, as a cluster deployment runs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e::free_port;
use tempfile::TempDir;

/// One child process of the real binary, with its log file.
pub struct Process {
    pub name: String,
    pub addr: Option<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

    /// SIGTERM (to a paused process too), then SIGKILL after 10 s; the exit status of a
    /// graceful stop.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.resume();
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// How the process ended, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Process {
    /// A process still running at the end of a test is stopped as an operator would, and must
    /// stop cleanly: exit 0 within 10 s of SIGTERM (unless the test is failing already).
    fn drop(&mut self) {
        let running = self.child.is_some();
        let status = self.terminate();
        if running && !std::thread::panicking() {
            match status {
                Some(status) if status.success() => {}
                Some(status) => panic!(
                    "{} exited with {status} on SIGTERM: {}",
                    self.name,
                    self.log()
                ),
                None => panic!(
                    "{} did not stop within 10 s of SIGTERM: {}",
                    self.name,
                    self.log()
                ),
            }
        }
    }
}

pub struct Cluster {
    pub dir: TempDir,
    pub database_url: String,
    pub servers: Vec<Process>,
    pub monitors: Vec<Process>,
    pub http: reqwest::Client,
    platform: String,
    config: String,
    spark_home: Option<PathBuf>,
}

impl Cluster {
    /// A cluster on `database_url`, every process with `--platform platform` and the TOML
    /// `config` (plus what each process adds).
    pub fn new(database_url: &str, platform: &str, config: &str) -> Self {
        Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            database_url: database_url.to_owned(),
            servers: Vec::new(),
            monitors: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            platform: platform.to_owned(),
            config: config.to_owned(),
            spark_home: None,
        }
    }

    pub fn with_spark(mut self, spark_home: PathBuf) -> Self {
        self.spark_home = Some(spark_home);
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(
        &self,
        role: &str,
        name: &str,
        extra_config: &str,
        addr: Option<SocketAddr>,
    ) -> Process {
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("{}\n{extra_config}\n", self.config)).expect("config");
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rucat"));
        command
            .arg(role)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--database-url", &self.database_url])
            .args(["--platform", &self.platform])
            .env("RUCAT_LOG", "info,rucat=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        if let Some(addr) = addr {
            let flag = if role == "proxy" {
                "--proxy-listen"
            } else {
                "--listen"
            };
            command.args([flag, &addr.to_string()]);
        }
        if let Some(spark) = &self.spark_home {
            command.arg("--spark-home").arg(spark);
        }
        let child = command.spawn().expect("start rucat");
        Process {
            name: name.to_owned(),
            addr,
            log,
            child: Some(child),
        }
    }

    /// Starts one more `rucat server` and waits until it is ready. Returns its index.
    pub async fn add_server(&mut self) -> usize {
        let name = format!("server-{}", self.servers.len());
        // Port 0: the server binds a free port and says which in its log.
        let mut process = self.spawn(
            "server",
            &name,
            "",
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = crate::e2e::listening(&process.log(), "REST API") {
                process.addr = Some(addr);
                let ready = self.http.get(format!("http://{addr}/readyz")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
            }
            if let Some(status) = process.exited() {
                panic!("{name} exited with {status}: {}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready in 60 s: {}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.servers.push(process);
        self.servers.len() - 1
    }

    /// Starts a `rucat proxy` on a port it picks (named in its log), waits until it accepts
    /// connections, and makes every process started afterwards give it as the engines'
    /// endpoint (`[proxy] public_url`; the configuration must have no `[proxy]` table).
    pub fn start_proxy(&mut self) -> Process {
        let mut process = self.spawn(
            "proxy",
            "proxy",
            "",
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = crate::e2e::listening(&process.log(), "Spark Connect proxy") {
                if std::net::TcpStream::connect(addr).is_ok() {
                    process.addr = Some(addr);
                    self.config.push_str(&format!(
                        "\n[proxy]\npublic_url = \"sc://localhost:{}\"\n",
                        addr.port()
                    ));
                    return process;
                }
            }
            if let Some(status) = process.exited() {
                panic!("the proxy exited with {status}: {}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not listen: {}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts one more `rucat monitor` with `extra_config` appended to its configuration.
    pub fn add_monitor(&mut self, extra_config: &str) -> usize {
        let name = format!("monitor-{}", self.monitors.len());
        let process = self.spawn("monitor", &name, extra_config, None);
        self.monitors.push(process);
        self.monitors.len() - 1
    }

    /// Starts a `rucat monitor` that the caller keeps, not one of [`Cluster::monitors`]: for a
    /// test that pauses, kills and replaces monitors while the cluster is shared. `name` must
    /// be new (it names the configuration and log files); its log is in [`Cluster::logs`]
    /// and [`Cluster::history`] all the same, even after it is killed.
    pub fn spawn_monitor(&self, name: &str, extra_config: &str) -> Process {
        assert!(
            !self.dir.path().join(format!("{name}.log")).exists(),
            "a process named {name} ran already"
        );
        self.spawn("monitor", name, extra_config, None)
    }

    /// Every process's log file, by process name: the servers, monitors and proxies this
    /// cluster started, whoever holds them now, and those that were killed.
    fn log_files(&self) -> Vec<(String, PathBuf)> {
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                    .filter_map(|path| {
                        let name = path.file_stem()?.to_string_lossy().into_owned();
                        Some((name, path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    pub fn url(&self, server: usize, path: &str) -> String {
        let addr = self.servers[server].addr.expect("a server has an address");
        format!("http://{addr}{path}")
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (name, path) in self.log_files() {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            all.push_str(&format!("\n===== {name} (last 40 lines) =====\n{tail}\n"));
        }
        all
    }

    /// `POST /engines` on `server`; the new engine's id.
    pub async fn create(&self, server: usize, name: &str, version: &str) -> String {
        let response = self
            .http
            .post(self.url(server, "/engines"))
            .json(&serde_json::json!({"name": name, "engine_type": "Spark", "version": version}))
            .send()
            .await
            .expect("POST /engines");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// The engine's state on `server`; `None` once it is deleted.
    pub async fn state(&self, server: usize, id: &str) -> Option<String> {
        let response = self
            .http
            .get(self.url(server, &format!("/engines/{id}")))
            .send()
            .await
            .expect("GET /engines/{id}");
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET answered {}",
            response.status()
        );
        let body: Value = response.json().await.expect("JSON body");
        Some(body["state"].as_str().expect("a state").to_owned())
    }

    /// The engine as JSON.
    pub async fn engine(&self, server: usize, id: &str) -> Value {
        self.http
            .get(self.url(server, &format!("/engines/{id}")))
            .send()
            .await
            .expect("GET /engines/{id}")
            .json()
            .await
            .expect("JSON body")
    }

    /// The ids of every engine the store holds in `state`, read page by page.
    pub async fn ids_in_state(&self, state: &str) -> std::collections::HashSet<String> {
        let mut ids = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(0, &format!("/engines?state={state}&limit=500"));
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page: Value = self
                .http
                .get(url)
                .send()
                .await
                .expect("GET /engines")
                .json()
                .await
                .expect("JSON page");
            for engine in page["engines"].as_array().expect("engines") {
                ids.insert(engine["id"].as_str().expect("an id").to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
    }

    /// An engine's state history and every process's log lines that name it, for failure
    /// messages.
    pub async fn history(&self, id: &str) -> String {
        let events = match self
            .http
            .get(self.url(0, &format!("/engines/{id}/events")))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(error) => format!("(no events: {error})"),
        };
        let mut text = format!("\n===== engine {id}: events =====\n{events}\n");
        for (name, path) in self.log_files() {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|line| line.contains(id)).collect();
            text.push_str(&format!(
                "===== engine {id} in {name} =====\n{}\n",
                lines.join("\n")
            ));
        }
        text
    }

    /// Every process's log lines that name `what` (an engine id), for failure messages.
    pub fn log_lines(&self, what: &str) -> String {
        let mut text = String::new();
        for (name, path) in self.log_files() {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            for line in log.lines().filter(|line| line.contains(what)) {
                text.push_str(&format!("{name}: {line}\n"));
            }
        }
        text
    }

    /// The engine's events (oldest first), as JSON.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let body: Value = self
            .http
            .get(self.url(0, &format!("/engines/{id}/events")))
            .send()
            .await
            .expect("GET /engines/{id}/events")
            .json()
            .await
            .expect("JSON body");
        body["events"].as_array().expect("events").clone()
    }

    /// Waits until every engine is in the state `expected` gives it (`None`: deleted).
    pub async fn settle(&self, expected: &[(String, Option<&str>)], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut wrong = Vec::new();
            for (i, (id, want)) in expected.iter().enumerate() {
                let got = self.state(i % self.servers.len(), id).await;
                if got.as_deref() != *want {
                    wrong.push(format!("{id}: {got:?} (want {want:?})"));
                }
            }
            if wrong.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let mut history = String::new();
                for line in wrong.iter().take(3) {
                    let id = line.split(':').next().unwrap_or_default();
                    history.push_str(&self.history(id).await);
                }
                panic!(
                    "{} engines not settled after {within:?}, e.g. {:?}{history}{}",
                    wrong.len(),
                    &wrong[..wrong.len().min(5)],
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        self.monitors.clear();
        // Whatever a failed test left running under this directory (Spark processes) goes too.
        kill_matching(self.dir.path());
    }
}

fn kill_matching(dir: &Path) {
    for pid in crate::e2e::processes_matching(&dir.to_string_lossy()) {
        // SAFETY: sending a signal by pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, on a free port), so
/// that it can be stopped and started under load without disturbing anything else.
pub struct PrivatePostgres {
    dir: TempDir,
    pub port: u16,
    /// Run the PostgreSQL tools as this user (`postgres` when the tests run as root, which
    /// PostgreSQL refuses to run as).
    run_as: Option<String>,
}

fn pg_tool(name: &str) -> PathBuf {
    // Debian keeps the server tools out of PATH; prefer PATH, then the newest version there.
    if let Some(found) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }) {
        return found;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.is_file());
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("{name} not found: install the PostgreSQL server package"))
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_owned());
        if root {
            let uid = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .expect("id -u postgres");
            let gid = Command::new("id")
                .args(["-g", "postgres"])
                .output()
                .expect("id -g postgres");
            let parse = |out: &[u8]| {
                String::from_utf8_lossy(out)
                    .trim()
                    .parse::<u32>()
                    .expect("a numeric id for the postgres user")
            };
            std::os::unix::fs::chown(
                dir.path(),
                Some(parse(&uid.stdout)),
                Some(parse(&gid.stdout)),
            )
            .expect("hand the directory to postgres");
        }
        let server = PrivatePostgres {
            dir,
            port: free_port(),
            run_as,
        };
        let data = server.data();
        server.run(
            &pg_tool("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        server.pg_ctl_start();
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn command(&self, tool: &Path) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(tool);
                c
            }
            None => Command::new(tool),
        }
    }

    fn run(&self, tool: &Path, args: &[&str]) {
        let mut command = self.command(tool);
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}",
            tool.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            &pg_tool("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "start",
            ],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open transactions are rolled back, clients cut off).
    pub fn stop(&self) {
        self.run(
            &pg_tool("pg_ctl"),
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts it again; returns once it accepts connections.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command(&pg_tool("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
