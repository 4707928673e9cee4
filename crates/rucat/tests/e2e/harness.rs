//! Runs the real `rucat serve` on a temp data dir and a random port, and queries engines with
//! spark-connect-rs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rucat::client::Client;
use spark_connect_rs::SparkSessionBuilder;
use tempfile::TempDir;

/// The Spark version `scripts/setup.sh` installs.
pub const SPARK_VERSION: &str = "4.3.0";

pub struct Rucat {
    pub dir: TempDir,
    pub addr: SocketAddr,
    child: Option<Child>,
    starts: u32,
    options: Options,
}

/// How `rucat serve` is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--platform` (default local, with the tests' Spark).
    pub platform: Option<String>,
    /// The configuration file's text (`--config`).
    pub config: Option<String>,
    /// The credential the harness's client and CLI use.
    pub token: Option<String>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The Spark the tests use: `SPARK_HOME`, else the one `scripts/setup.sh` installed.
pub fn spark_home() -> PathBuf {
    std::env::var_os("SPARK_HOME")
        .map(PathBuf::from)
        .or_else(rucat::config::installed_spark_home)
        .expect("no Spark: run scripts/setup.sh (or set SPARK_HOME) before the end-to-end tests")
}

impl Rucat {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let mut rucat = Rucat {
            dir: tempfile::tempdir().expect("temp dir"),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
            starts: 0,
            options,
        };
        rucat.spawn().await;
        rucat
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("rucat-{}.log", self.starts)))
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rucat"));
        command
            .args(["serve", "--listen", &self.addr.to_string(), "--data-dir"])
            .arg(self.dir.path().join("data"))
            .arg("--spark-home")
            .arg(spark_home());
        if let Some(platform) = &self.options.platform {
            command.args(["--platform", platform]);
        }
        if let Some(config) = &self.options.config {
            let path = self.dir.path().join("rucat.toml");
            std::fs::write(&path, config).expect("write rucat.toml");
            command.arg("--config").arg(path);
        }
        let child = command
            .env("RUCAT_LOG", "info,rucat=debug")
            .env_remove("RUCAT_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start rucat serve");
        self.child = Some(child);
        let ready = format!("http://{}/readyz", self.addr);
        let http = reqwest::Client::new();
        for _ in 0..300 {
            let answered = http.get(&ready).send().await;
            if answered.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("rucat serve exited with {status}: {}", self.server_log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "rucat serve did not answer within 30 s: {}",
            self.server_log()
        );
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("rucat-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// A client with the harness's credential.
    pub fn client(&self) -> Client {
        match &self.options.token {
            Some(token) => self.client_as(token),
            None => Client::new(&format!("http://{}", self.addr), None),
        }
    }

    pub fn client_as(&self, token: &str) -> Client {
        Client::new(
            &format!("http://{}", self.addr),
            Some(secrecy::SecretString::from(token.to_owned())),
        )
    }

    /// Runs `rucat <args>` against this server, with the harness's credential in RUCAT_TOKEN.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(self.options.token.as_deref(), args)
    }

    /// Runs `rucat <args>` against this server with `token` in RUCAT_TOKEN (none: unset).
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rucat"));
        command
            .args(args)
            .env("RUCAT_SERVER", format!("http://{}", self.addr))
            .env_remove("RUCAT_TOKEN");
        if let Some(token) = token {
            command.env("RUCAT_TOKEN", token);
        }
        command
            .stdin(Stdio::null())
            .output()
            .expect("run the rucat CLI")
    }

    /// `kill -9` of `rucat serve`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to `rucat serve`; its exit status once it stopped (within 30 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("rucat serve is running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!(
            "rucat serve did not stop within 30 s of SIGTERM: {}",
            self.server_log()
        );
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

impl Drop for Rucat {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: a graceful stop is part of what is tested.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever a failed test left running under this data dir goes too.
        let marker = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_matching(&marker) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
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

/// The live (non-zombie) processes that belong to an engine.
pub fn spark_processes(id: &str) -> Vec<i32> {
    processes_matching(id)
}

pub fn port_open(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("sc://");
    let addr = addr.split('/').next().unwrap_or(addr);
    match addr.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
        Err(_) => false,
    }
}

/// Runs `SELECT 1` and `range(1_000_000).count()` on the engine with spark-connect-rs.
pub async fn query(endpoint: &str) {
    use arrow::array::{Array, Int32Array};

    let spark = SparkSessionBuilder::remote(&format!("{endpoint}/;user_id=rucat-e2e"))
        .build()
        .await
        .expect("connect with spark-connect-rs");
    let batch = spark
        .sql("SELECT 1 AS one")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    let column = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("an int column");
    assert_eq!((column.len(), column.value(0)), (1, 1));
    let count = spark
        .range(None, 1_000_000, 1, None)
        .count()
        .await
        .expect("count");
    assert_eq!(count, 1_000_000);
}
