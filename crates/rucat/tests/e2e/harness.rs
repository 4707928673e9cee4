//! Runs the real `rucat serve` on a temp data dir and a random port, and queries engines with
//! spark-connect-rs.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rucat_client::Client;
use spark_connect_rs::SparkSessionBuilder;
use tempfile::TempDir;

use crate::common::process::{cli, kill_matching, processes_matching, Process, Spawn};

/// The Spark version `scripts/setup.sh` installs.
pub const SPARK_VERSION: &str = "4.3.0";

/// How long `rucat serve` may take to listen and answer.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Rucat {
    pub dir: TempDir,
    pub addr: SocketAddr,
    /// The Spark Connect proxy's address.
    pub proxy: SocketAddr,
    server: Option<Process>,
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
            // Port 0: `rucat serve` binds free ports and reports them (a restart reuses them).
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            server: None,
            starts: 0,
            options,
        };
        rucat.spawn().await;
        rucat
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.path().join(format!("rucat-{}.log", self.starts));
        let mut spawn = Spawn::new("rucat serve", log)
            .args(["serve", "--listen", &self.addr.to_string()])
            .args(["--proxy-listen", &self.proxy.to_string(), "--data-dir"])
            .arg(self.dir.path().join("data"))
            .arg("--spark-home")
            .arg(spark_home())
            .env_remove("RUCAT_TOKEN");
        if let Some(platform) = &self.options.platform {
            spawn = spawn.args(["--platform", platform]);
        }
        if let Some(config) = &self.options.config {
            spawn = spawn.config(self.dir.path().join("rucat.toml"), config);
        }
        let server = self.server.insert(spawn.start());
        self.proxy = server
            .wait_listening("Spark Connect proxy", READY_WITHIN)
            .await;
        self.addr = server.wait_ready(READY_WITHIN).await;
    }

    /// The driver log the local platform writes for engine `id` (Spark's stdout and stderr).
    pub fn driver_log_path(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("data")
            .join("engines")
            .join(id)
            .join("driver.log")
    }

    /// What the driver log of engine `id` holds so far (empty if there is none).
    pub fn driver_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.driver_log_path(id)).unwrap_or_default()
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("rucat-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// The harness's credential.
    pub fn token(&self) -> Option<&str> {
        self.options.token.as_deref()
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
        let mut command = cli(args);
        command
            .env("RUCAT_SERVER", format!("http://{}", self.addr))
            .env_remove("RUCAT_TOKEN");
        if let Some(token) = token {
            command.env("RUCAT_TOKEN", token);
        }
        command.output().expect("run the rucat CLI")
    }

    /// `kill -9` of `rucat serve`.
    pub fn kill9(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill9();
        }
    }

    /// SIGTERM to `rucat serve`; its exit status once it stopped (within 30 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut server = self.server.take().expect("rucat serve is running");
        server
            .terminate_within(Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "rucat serve did not stop within 30 s of SIGTERM: {}",
                    self.server_log()
                )
            })
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// The engine as the store keeps it (its own address and secret included), read from the
    /// SQLite file beside the running `rucat serve`.
    pub async fn stored(&self, id: &str) -> rucat::engine::Engine {
        use rucat::store::Store;
        let url = format!(
            "sqlite://{}",
            self.dir.path().join("data").join("rucat.db").display()
        );
        let store = rucat::store::sqlite::SqliteStore::open(&url)
            .await
            .expect("open the store");
        let id = rucat::engine::EngineId::parse(id).expect("an engine id");
        let engine = store.get(&id).await.expect("read").expect("the engine");
        store.close().await;
        engine
    }
}

impl Drop for Rucat {
    /// `rucat serve` must stop cleanly on SIGTERM (part of what is tested); whatever a failed
    /// test left running under this data dir goes too.
    fn drop(&mut self) {
        let failed = self
            .server
            .as_mut()
            .and_then(|server| server.finish().err());
        kill_matching(&self.dir.path().to_string_lossy());
        if let Some(why) = failed {
            if !std::thread::panicking() {
                panic!("{why}");
            }
        }
    }
}

/// The live (non-zombie) processes that belong to an engine.
pub fn spark_processes(id: &str) -> Vec<i32> {
    processes_matching(id)
}

pub fn port_open(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("sc://");
    let addr = addr.split('/').next().unwrap_or(addr);
    let addr = addr.replace("localhost", "127.0.0.1");
    match addr.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
        Err(_) => false,
    }
}

/// `connection` with one more connection-string parameter.
pub fn with_parameter(connection: &str, parameter: &str) -> String {
    if connection.contains("/;") {
        format!("{connection};{parameter}")
    } else {
        format!("{connection}/;{parameter}")
    }
}

/// Runs `SELECT 1` and `range(1_000_000).count()` on the engine with spark-connect-rs, through
/// the connection string given (the proxy's endpoint of an engine, with `;token=` when the
/// server wants one).
pub async fn query(connection: &str) {
    use arrow::array::{Array, Int32Array};

    let spark = SparkSessionBuilder::remote(&with_parameter(connection, "user_id=rucat-e2e"))
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

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
}

/// The Python of the Spark virtualenv (PySpark's own Spark Connect client):
/// `RUCAT_SPARK_PYTHON`, else the one beside the tests' Spark.
pub fn spark_python() -> PathBuf {
    if let Some(python) = std::env::var_os("RUCAT_SPARK_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    // <venv>/lib/python3.X/site-packages/pyspark
    let home = spark_home();
    home.ancestors()
        .nth(4)
        .map(|venv| venv.join("bin").join("python"))
        .filter(|python| python.is_file())
        .expect("no Python for PySpark: run scripts/setup.sh, or set RUCAT_SPARK_PYTHON")
}

/// What `scripts/spark_client.py COMMAND ARGS…` (PySpark's Spark Connect client) printed last
/// (one JSON object), and whether it succeeded.
pub fn pyspark(args: &[&str]) -> (bool, serde_json::Value) {
    pyspark_with(args, &[])
}

/// [`pyspark`] with extra environment variables.
pub fn pyspark_with(args: &[&str], env: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let mut command = Command::new(spark_python());
    command
        .arg(repo_root().join("scripts").join("spark_client.py"))
        .args(args)
        .env_remove("SPARK_CONNECT_AUTHENTICATE_TOKEN")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run scripts/spark_client.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "spark_client.py {args:?} printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), value)
}

/// The gRPC status a failed [`pyspark`] call reports.
pub fn grpc_status(answer: &serde_json::Value) -> &str {
    answer["error"]["grpc_status"].as_str().unwrap_or("none")
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in `dir`:
/// (CA, certificate, key).
pub fn tls_files(dir: &std::path::Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("rucat test CA {prefix}"));
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params");
    leaf.use_authority_key_identifier_extension = true;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf certificate");
    let paths = (
        dir.join(format!("{prefix}-ca.pem")),
        dir.join(format!("{prefix}-cert.pem")),
        dir.join(format!("{prefix}-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

/// What `tools/sc-tls-query URL` (spark-connect-rs over TLS) printed, trusting only `ca`.
pub fn rust_tls_query(url: &str, ca: &std::path::Path) -> serde_json::Value {
    let tool = std::env::var_os("RUCAT_SC_TLS_QUERY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tools/sc-tls-query/target/release/sc-tls-query"));
    assert!(
        tool.is_file(),
        "no {}: scripts/test.sh builds it (or set RUCAT_SC_TLS_QUERY)",
        tool.display()
    );
    let output = Command::new("timeout")
        .arg("180")
        .arg(&tool)
        .arg(url)
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run sc-tls-query");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("sc-tls-query printed no JSON: {stdout}"))
}
