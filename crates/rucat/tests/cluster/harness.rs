//! Several real `rucat server` and `rucat monitor` processes on one store and one data
//! directory, as a cluster deployment runs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::process::{free_port, kill_matching, Spawn};
pub use crate::common::process::{freeze, holds_flock, Process};
use tempfile::TempDir;

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
        let mut spawn = Spawn::new(name, self.dir.path().join(format!("{name}.log")))
            .arg(role)
            .config(
                self.dir.path().join(format!("{name}.toml")),
                &format!("{}\n{extra_config}\n", self.config),
            )
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--database-url", &self.database_url])
            .args(["--platform", &self.platform]);
        if let Some(addr) = addr {
            let flag = if role == "proxy" {
                "--proxy-listen"
            } else {
                "--listen"
            };
            spawn = spawn.args([flag, &addr.to_string()]);
        }
        if let Some(spark) = &self.spark_home {
            spawn = spawn.arg("--spark-home").arg(spark);
        }
        spawn.start()
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
        process.wait_ready(Duration::from_secs(60)).await;
        self.servers.push(process);
        self.servers.len() - 1
    }

    /// Starts a `rucat proxy` on a port it picks (named in its log), waits until it accepts
    /// connections, and makes every process started afterwards give it as the engines'
    /// endpoint (`[proxy] public_url`; the configuration must have no `[proxy]` table).
    pub async fn start_proxy(&mut self) -> Process {
        let mut process = self.spawn(
            "proxy",
            "proxy",
            "",
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        );
        let addr = process
            .wait_listening("Spark Connect proxy", Duration::from_secs(60))
            .await;
        self.config.push_str(&format!(
            "\n[proxy]\npublic_url = \"sc://localhost:{}\"\n",
            addr.port()
        ));
        process
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
        kill_matching(&self.dir.path().to_string_lossy());
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
