//! The README's promises about running Rucat, checked on the real binary.
//!
//! Every test here uses the simulated platform (no Spark): what is checked is how the `rucat`
//! process resolves its settings, refuses to start, waits for its database, sheds load and stops.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rucat::engine::EngineState;
use rucat::platform::simulated::{JournalEvent, SimulatedPlatform};
use rucat::store::postgres::ScratchDatabase;
use rucat_client::Actor;
use serde_json::Value;
use sqlx::Connection;

use super::harness::{Options, Rucat, SPARK_VERSION};
use super::token_create;
use crate::common::process::{free_port, OnDrop, Process, Spawn};

/// How long anything a test waits for may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// The `[simulated]` table every process here runs with.
fn simulated() -> String {
    format!("[simulated]\nversions = [\"{SPARK_VERSION}\"]\n")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `rucat ARGS…` of a test's own with `env`, and none of the `RUCAT_*` variables the test runner
/// may have; its output in `DIR/NAME.log`; killed if the test ends first.
fn start(dir: &Path, name: &str, args: &[String], env: &[(&str, String)]) -> Process {
    let mut spawn = Spawn::new(name, dir.join(format!("{name}.log")))
        .without_rucat_env()
        .log_filter("info")
        .args(args)
        .on_drop(OnDrop::Kill);
    for (key, value) in env {
        spawn = spawn.env(key, value);
    }
    spawn.start()
}

/// Writes a configuration file and gives the `--config` arguments naming it.
fn config_file(dir: &Path, name: &str, text: &str) -> [String; 2] {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write the configuration file");
    ["--config".to_owned(), path.display().to_string()]
}

fn http(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

/// Whether `GET http://ADDR/healthz` answers 200.
async fn healthy(addr: SocketAddr) -> bool {
    http(Duration::from_secs(2))
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}

/// Whether nothing accepts connections at `addr`.
fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

/// Polls `check` until it holds, failing the test after `limit` with `what`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a process did with the addresses it was expected to listen on.
enum Listening {
    /// Its log names the address(es) and `/healthz` answers there.
    Yes,
    /// It exited first.
    Exited(ExitStatus),
}

/// Waits until the process serves its REST API at `rest` and its proxy at `proxy` (when given),
/// as its log says and `/healthz` on each shows; or until it exits.
async fn listening(
    process: &mut Process,
    rest: SocketAddr,
    proxy: Option<SocketAddr>,
) -> Listening {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = process.log();
        // An address of every interface is reached on loopback.
        let probe = match rest.ip().is_unspecified() {
            true => loopback(rest.port()),
            false => rest,
        };
        let rest_up =
            log.contains(&format!("REST API listening addr={rest}")) && healthy(probe).await;
        let proxy_up = match proxy {
            Some(proxy) => {
                log.contains(&format!("Spark Connect proxy listening addr={proxy}"))
                    && healthy(proxy).await
            }
            None => true,
        };
        if rest_up && proxy_up {
            return Listening::Yes;
        }
        // Listening somewhere else is a wrong answer at once, not a wait.
        let wanted = [
            ("REST API listening addr=", Some(rest)),
            ("Spark Connect proxy listening addr=", proxy),
        ];
        for (said, addr) in wanted {
            if let (Some(addr), Some(line)) = (addr, log.lines().find(|l| l.contains(said))) {
                assert!(
                    line.contains(&format!("{said}{addr} "))
                        || line.ends_with(&format!("{said}{addr}")),
                    "rucat listens elsewhere than {addr}: {line}\n{log}"
                );
            }
        }
        if let Some(status) = process.exited() {
            return Listening::Exited(status);
        }
        assert!(
            Instant::now() < deadline,
            "rucat did not listen at {rest} (proxy {proxy:?}) within {PATIENCE:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`listening`], failing the test when the process exits instead.
async fn serves_at(process: &mut Process, rest: SocketAddr, proxy: Option<SocketAddr>) {
    if let Listening::Exited(status) = listening(process, rest, proxy).await {
        panic!(
            "rucat exited with {status} instead of listening at {rest} (proxy {proxy:?}):\n{}",
            process.log()
        );
    }
}

/// `rucat serve` on the simulated platform with its own data directory, `args` and `env` added,
/// and a configuration file of `file` (plus the `[simulated]` table).
fn serve(dir: &Path, name: &str, args: &[String], env: &[(&str, String)], file: &str) -> Process {
    let mut all: Vec<String> = ["serve", "--platform", "simulated", "--data-dir"]
        .map(String::from)
        .to_vec();
    all.push(dir.join(name).display().to_string());
    all.extend(config_file(dir, name, &format!("{file}{}", simulated())));
    all.extend(args.iter().cloned());
    start(dir, name, &all, env)
}

/// A process expected at a default address, which something else on this machine may hold
/// (another Rucat with its defaults): then it must have exited saying it cannot listen on
/// exactly that address, because it is in use, which shows the address it chose as well.
async fn at_default(
    process: &mut Process,
    rest: SocketAddr,
    proxy: Option<SocketAddr>,
    default: SocketAddr,
) {
    if let Listening::Exited(status) = listening(process, rest, proxy).await {
        let log = process.log();
        assert!(
            !status.success()
                && log.contains(&format!("cannot listen on {default}"))
                && log.contains("in use"),
            "rucat exited with {status}:\n{log}"
        );
        eprintln!("{default} is taken on this machine: rucat tried it and said so");
    }
}

/// Settings come from flags, then environment variables, then the configuration file, then
/// defaults (README, "Configuration"): the REST and the proxy listen addresses, as the ports
/// that answer `/healthz` show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_come_from_flag_then_environment_then_file_then_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let port = || loopback(free_port());
    let file = |rest: SocketAddr, proxy: SocketAddr| {
        format!("listen = \"{rest}\"\n[proxy]\nlisten = \"{proxy}\"\n")
    };

    // Each layer gets addresses of its own, so that no process can answer for another.
    let (flag_rest, env_rest, file_rest) = (port(), port(), port());
    let (flag_proxy, env_proxy, file_proxy) = (port(), port(), port());
    let mut by_flag = serve(
        dir,
        "flag",
        &[
            "--listen".into(),
            flag_rest.to_string(),
            "--proxy-listen".into(),
            flag_proxy.to_string(),
        ],
        &[
            ("RUCAT_LISTEN", env_rest.to_string()),
            ("RUCAT_PROXY_LISTEN", env_proxy.to_string()),
        ],
        &file(file_rest, file_proxy),
    );
    let (env_rest2, file_rest2, env_proxy2, file_proxy2) = (port(), port(), port(), port());
    let mut by_env = serve(
        dir,
        "env",
        &[],
        &[
            ("RUCAT_LISTEN", env_rest2.to_string()),
            ("RUCAT_PROXY_LISTEN", env_proxy2.to_string()),
        ],
        &file(file_rest2, file_proxy2),
    );
    let (file_rest3, file_proxy3) = (port(), port());
    let mut by_file = serve(dir, "file", &[], &[], &file(file_rest3, file_proxy3));

    // The README's defaults, one setting at a time (the other one pinned, so that the two
    // processes do not meet).
    let (default_rest, default_proxy) = (loopback(3000), loopback(15002));
    let pinned_proxy = port();
    let mut rest_default = serve(
        dir,
        "default-rest",
        &["--proxy-listen".into(), pinned_proxy.to_string()],
        &[],
        "",
    );
    let pinned_rest = port();
    let mut proxy_default = serve(
        dir,
        "default-proxy",
        &["--listen".into(), pinned_rest.to_string()],
        &[],
        "",
    );

    serves_at(&mut by_flag, flag_rest, Some(flag_proxy)).await;
    serves_at(&mut by_env, env_rest2, Some(env_proxy2)).await;
    serves_at(&mut by_file, file_rest3, Some(file_proxy3)).await;
    at_default(
        &mut rest_default,
        default_rest,
        Some(pinned_proxy),
        default_rest,
    )
    .await;
    at_default(
        &mut proxy_default,
        pinned_rest,
        Some(default_proxy),
        default_proxy,
    )
    .await;

    // The settings that lost are not listened on.
    for (layer, addr) in [
        ("flag", env_rest),
        ("flag", file_rest),
        ("flag", env_proxy),
        ("flag", file_proxy),
        ("env", file_rest2),
        ("env", file_proxy2),
    ] {
        assert!(
            refused(addr),
            "the {layer} layer's process also listens at {addr}, which lost"
        );
    }

    for process in [
        &mut by_flag,
        &mut by_env,
        &mut by_file,
        &mut rest_default,
        &mut proxy_default,
    ] {
        let status = process.stop(PATIENCE).await;
        assert!(
            status.success() || process.log().contains("cannot listen on"),
            "{status}:\n{}",
            process.log()
        );
    }
}

/// A bad setting stops the process at once with a non-zero status and a message that names the
/// setting and the bad value; a flag beats a bad environment variable, which is then not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_stop_the_process_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let flag = |name: &str| [format!("--{name}"), loopback(free_port()).to_string()];
    let env = |name: &'static str, value: &str| vec![(name, value.to_owned())];
    // (case, flags, environment, file, what the message must say); whatever else a case needs
    // is given by flags, on ports of its own.
    type Case = (
        &'static str,
        Vec<String>,
        Vec<(&'static str, String)>,
        &'static str,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "env-listen",
            flag("proxy-listen").to_vec(),
            env("RUCAT_LISTEN", "no-port-here"),
            "",
            &["invalid listen address", "\"no-port-here\"", "HOST:PORT"],
        ),
        (
            "file-listen",
            flag("proxy-listen").to_vec(),
            vec![],
            "listen = \"127.0.0.1:not-a-port\"\n",
            &["invalid listen address", "\"127.0.0.1:not-a-port\""],
        ),
        (
            "env-proxy-listen",
            flag("listen").to_vec(),
            env("RUCAT_PROXY_LISTEN", "nowhere"),
            "",
            &["proxy.listen", "\"nowhere\"", "HOST:PORT"],
        ),
        (
            "file-proxy-listen",
            flag("listen").to_vec(),
            vec![],
            "[proxy]\nlisten = \"127.0.0.1\"\n",
            &["proxy.listen", "\"127.0.0.1\""],
        ),
        (
            "env-max-connections-text",
            [flag("listen"), flag("proxy-listen")].concat(),
            env("RUCAT_DATABASE_MAX_CONNECTIONS", "many"),
            "",
            &["--database-max-connections", "'many'"],
        ),
        (
            "env-max-connections-zero",
            [flag("listen"), flag("proxy-listen")].concat(),
            env("RUCAT_DATABASE_MAX_CONNECTIONS", "0"),
            "",
            &["database.max_connections", "greater than 0"],
        ),
        (
            "file-max-connections-zero",
            [flag("listen"), flag("proxy-listen")].concat(),
            vec![],
            "[database]\nmax_connections = 0\n",
            &["database.max_connections", "greater than 0"],
        ),
    ];
    let mut started = Vec::new();
    for (name, args, env, file, _) in &cases {
        started.push(serve(dir, name, args, env, file));
    }
    for (mut process, (name, args, _, _, wanted)) in started.into_iter().zip(cases) {
        let status = process.exit(PATIENCE).await;
        let log = process.log();
        assert!(!status.success(), "{name}: exited with {status}:\n{log}");
        for text in wanted {
            assert!(log.contains(text), "{name}: no {text:?} in\n{log}");
        }
        // Nothing was left listening at the addresses it was given.
        for addr in args.iter().filter_map(|arg| arg.parse::<SocketAddr>().ok()) {
            assert!(refused(addr), "{name}: something listens at {addr}");
        }
    }

    // The flag is taken; the malformed variable under it is never read.
    let rest = loopback(free_port());
    let mut flagged = serve(
        dir,
        "flag-over-bad-env",
        &[
            "--listen".into(),
            rest.to_string(),
            "--proxy-listen".into(),
            loopback(free_port()).to_string(),
            "--database-max-connections".into(),
            "3".into(),
        ],
        &[
            ("RUCAT_LISTEN", "no-port-here".to_owned()),
            ("RUCAT_DATABASE_MAX_CONNECTIONS", "many".to_owned()),
        ],
        "",
    );
    serves_at(&mut flagged, rest, None).await;
    assert!(flagged.stop(PATIENCE).await.success(), "{}", flagged.log());
}

/// The PostgreSQL server the tests make scratch databases on (as `tests/common` does).
fn postgres_admin_url() -> String {
    std::env::var("RUCAT_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn scratch_database(prefix: &str) -> ScratchDatabase {
    ScratchDatabase::create(&postgres_admin_url(), prefix)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "no PostgreSQL for the test at {} (set RUCAT_TEST_POSTGRES_URL): {error}",
                rucat::store::redact(&postgres_admin_url())
            )
        })
}

async fn connect(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|error| panic!("connect to {}: {error}", rucat::store::redact(url)))
}

/// How many connections `rucat` processes hold to `database` (Rucat names its connections).
async fn rucat_connections(admin: &mut sqlx::PgConnection, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'rucat'",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .expect("count connections in pg_stat_activity")
}

/// `rucat server` on `database`, on the simulated platform, with `args`, `env` and the
/// configuration `file` added; once it is ready.
async fn server_on(
    dir: &Path,
    name: &str,
    database: &str,
    args: &[String],
    env: &[(&str, String)],
    file: &str,
) -> (Process, SocketAddr) {
    let rest = loopback(free_port());
    let mut all: Vec<String> = vec![
        "server".into(),
        "--platform".into(),
        "simulated".into(),
        "--listen".into(),
        rest.to_string(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--database-url".into(),
        database.to_owned(),
    ];
    all.extend(config_file(dir, name, &format!("{file}{}", simulated())));
    all.extend(args.iter().cloned());
    let mut process = start(dir, name, &all, env);
    let client = http(Duration::from_secs(5));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = client.get(format!("http://{rest}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return (process, rest);
        }
        if let Some(status) = process.exited() {
            panic!("rucat server exited with {status}:\n{}", process.log());
        }
        assert!(
            Instant::now() < deadline,
            "rucat server not ready:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `[database] max_connections` (`--database-max-connections`, `RUCAT_DATABASE_MAX_CONNECTIONS`)
/// follows the same order, and bounds the connections a process opens: with the engines table
/// locked, more requests than connections wait, and the process holds exactly that many
/// connections in `pg_stat_activity`. The winning value of each layer is the largest of the
/// values given, so a wrong pick never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_max_connections_come_from_flag_then_environment_then_file_then_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    // More requests than any limit below, each waiting for the lock or for a connection.
    const REQUESTS: usize = 16;
    // (layer, flag, environment, file, the connections expected)
    type Layer = (&'static str, Option<u32>, Option<u32>, Option<u32>, i64);
    let layers: [Layer; 4] = [
        ("flag", Some(13), Some(12), Some(11), 13),
        ("env", None, Some(12), Some(11), 12),
        ("file", None, None, Some(11), 11),
        ("default", None, None, None, 10),
    ];
    let mut admin = connect(&postgres_admin_url()).await;
    for (name, flag, env, file, expected) in layers {
        let database = scratch_database("maxconn").await;
        let mut args = Vec::new();
        if let Some(flag) = flag {
            args.extend(["--database-max-connections".to_owned(), flag.to_string()]);
        }
        let env: Vec<(&str, String)> = env
            .map(|n| ("RUCAT_DATABASE_MAX_CONNECTIONS", n.to_string()))
            .into_iter()
            .collect();
        // Requests wait for a connection far longer than the test takes.
        let mut text = "[database]\nacquire_timeout_ms = 120000\n".to_owned();
        if let Some(file) = file {
            text.push_str(&format!("max_connections = {file}\n"));
        }
        let (mut server, rest) = server_on(dir, name, database.url(), &args, &env, &text).await;

        let mut locker = connect(database.url()).await;
        let mut lock = locker.begin().await.expect("begin");
        sqlx::query("LOCK TABLE engines IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .expect("lock the engines table");
        let client = http(Duration::from_secs(150));
        let requests: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let request = client.get(format!("http://{rest}/engines"));
                tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let held = rucat_connections(&mut admin, database.name()).await;
            assert!(
                held <= expected,
                "{name}: {held} connections, over the {expected} this layer sets:\n{}",
                server.log()
            );
            if held == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {held} connections, never the {expected} this layer sets:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lock.rollback().await.expect("release the lock");
        for request in requests {
            let status = request
                .await
                .expect("request task")
                .expect("every waiting request is answered");
            assert_eq!(status, 200, "{name}: a waiting request, once the lock went");
        }
        assert!(server.stop(PATIENCE).await.success(), "{}", server.log());
        assert!(
            rucat_connections(&mut admin, database.name()).await <= expected,
            "{name}"
        );
    }
}

/// Without authentication, `rucat serve` refuses to listen beyond loopback: it exits non-zero
/// saying authentication is not configured, and nothing listens on the port. With a token
/// configured, or `--allow-unauthenticated`, the same address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_without_authentication_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let everywhere = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
    let (port, proxy) = (free_port(), loopback(free_port()));
    let mut refusing = serve(
        dir,
        "no-auth",
        &[
            "--listen".into(),
            everywhere(port).to_string(),
            "--proxy-listen".into(),
            proxy.to_string(),
        ],
        &[],
        "",
    );
    let (authenticated_port, authenticated_proxy) = (free_port(), loopback(free_port()));
    let (alice, entry) = token_create("alice", false);
    let mut authenticated = serve(
        dir,
        "auth",
        &[
            "--listen".into(),
            everywhere(authenticated_port).to_string(),
            "--proxy-listen".into(),
            authenticated_proxy.to_string(),
        ],
        &[],
        &entry,
    );
    let (allowed_port, allowed_proxy) = (free_port(), loopback(free_port()));
    let mut allowed = serve(
        dir,
        "allowed",
        &[
            "--listen".into(),
            everywhere(allowed_port).to_string(),
            "--proxy-listen".into(),
            allowed_proxy.to_string(),
            "--allow-unauthenticated".into(),
        ],
        &[],
        "",
    );

    // The refusing one must never answer, and must exit.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        assert!(
            !healthy(loopback(port)).await,
            "rucat serves {} without authentication:\n{}",
            everywhere(port),
            refusing.log()
        );
        if let Some(status) = refusing.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "rucat neither served nor exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = refusing.log();
    assert!(!status.success(), "{status}:\n{log}");
    assert!(
        log.contains(&format!("refusing to listen on {}", everywhere(port)))
            && log.contains("authentication is not configured"),
        "{log}"
    );
    assert!(refused(loopback(port)), "something listens at port {port}");
    assert!(refused(proxy), "something listens at {proxy}");

    // The same kind of address, with a credential configured: served, and it wants the token.
    serves_at(
        &mut authenticated,
        everywhere(authenticated_port),
        Some(authenticated_proxy),
    )
    .await;
    let engines = format!("http://{}/engines", loopback(authenticated_port));
    let client = http(Duration::from_secs(30));
    let anonymous = client.get(&engines).send().await.expect("GET /engines");
    assert_eq!(anonymous.status().as_u16(), 401);
    let owner = client
        .get(&engines)
        .bearer_auth(&alice)
        .send()
        .await
        .expect("GET /engines");
    assert_eq!(owner.status().as_u16(), 200);

    // And without one, only when explicitly allowed (and said loudly).
    serves_at(&mut allowed, everywhere(allowed_port), Some(allowed_proxy)).await;
    assert!(
        allowed.log().contains("AUTHENTICATION IS OFF"),
        "{}",
        allowed.log()
    );

    for process in [&mut authenticated, &mut allowed] {
        assert!(process.stop(PATIENCE).await.success(), "{}", process.log());
    }
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Reads from `stream` up to and including the blank line that ends a response head.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => panic!(
                "the connection closed in a response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Err(error) => panic!(
                "reading a response head after {:?}: {error}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// SIGTERM lets a request under way get its answer and the monitor finish its step under way,
/// exits 0, and leaves running engines running: the next `rucat serve` on the same data
/// directory finds them Running without making them again.
///
/// The request is under way for sure: it is sent with `Expect: 100-continue`, and only when the
/// server has asked for its body (the `100 Continue`, so the request is in a handler) does the
/// test send SIGTERM; the rest of the body goes only once the process logged the shutdown and
/// the monitor finished its step, so the request outlasts everything else in the process. The
/// step is under way for sure: the simulated delete takes 10 s, and the engine is seen in
/// `TriggerTermination` (claimed, its delete called) before SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_steps_and_leaves_engines_running() {
    let config = format!(
        "{}delete_delay_ms = 10000\n[monitor]\npoll_interval_ms = 500\nhealth_check_interval_ms = 500\n",
        simulated()
    );
    let mut rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        config: Some(config),
        token: None,
    })
    .await;
    let data = rucat.dir.path().join("data");
    let log_path = rucat.dir.path().join("rucat-1.log");
    let client = rucat.client();
    let mut ids = Vec::new();
    for name in ["stays-running", "stopping"] {
        let id = client
            .create(name, SPARK_VERSION, &Default::default())
            .await
            .expect("create");
        client
            .wait(&id, EngineState::Running, PATIENCE, |_| {})
            .await
            .expect("the engine runs");
        ids.push(id);
    }
    let (running, stopping) = (ids[0].clone(), ids[1].clone());

    // A step under way: the stop is claimed and its (slow) delete called.
    client.stop(&stopping).await.expect("stop");
    eventually("the stop is claimed", PATIENCE, || {
        let (client, stopping) = (client.clone(), stopping.clone());
        async move {
            let engine = client.get(&stopping).await.expect("get");
            assert!(
                matches!(
                    engine.state,
                    EngineState::WaitToTerminate | EngineState::TriggerTermination
                ),
                "the delete finished before SIGTERM: {engine:?}"
            );
            engine.state == EngineState::TriggerTermination
        }
    })
    .await;

    // A request under way: its head is read and its body asked for.
    let mut stream = TcpStream::connect(rucat.addr).expect("connect to the REST API");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    let body = format!(
        r#"{{"name": "in-flight", "engine_type": "Spark", "version": "{SPARK_VERSION}", "configs": {{}}}}"#
    );
    let (first, rest) = body.split_at(body.len() / 2);
    write!(
        stream,
        "POST /engines HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        rucat.addr,
        body.len()
    )
    .expect("send the request head");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream
        .write_all(first.as_bytes())
        .expect("send half the body");

    // The rest of the body goes once the process has begun to shut down, the monitor's step
    // has finished and nothing but the request keeps the process: it must wait for it.
    let first_pid = SimulatedPlatform::journal(&data).expect("journal")[0].pid;
    let rest = rest.to_owned();
    let (journal_of, deleting) = (data.clone(), stopping.clone());
    let finish = std::thread::spawn(move || -> Result<String, String> {
        // The server waits 30 s for a body: all of this must happen within that (the delete
        // takes 10 s of it).
        let limit = Duration::from_secs(25);
        let deadline = Instant::now() + limit;
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            while !done() {
                if Instant::now() > deadline {
                    return Err(format!("{what}: not within {limit:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        wait_for("SIGTERM logged", &|| {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("shutdown requested")
        })?;
        wait_for("the monitor's delete done", &|| {
            SimulatedPlatform::journal(&journal_of)
                .unwrap_or_default()
                .iter()
                .any(|entry| entry.engine == deleting && entry.event == JournalEvent::Delete)
        })?;
        // Connections are served by tasks of their own, so a server that did not wait for
        // them would answer the request anyway if the process lived on; what it must not do
        // is exit under it. With the monitor done, such a process exits at once: a short
        // look at it tells.
        let look = Instant::now() + Duration::from_secs(2);
        while Instant::now() < look {
            if !alive(first_pid) {
                return Err("rucat exited with a request under way".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stream
            .write_all(rest.as_bytes())
            .map_err(|error| format!("sending the rest of the body after SIGTERM: {error}"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|error| format!("reading the answer after SIGTERM: {error}"))?;
        Ok(answer)
    });
    let status = tokio::task::block_in_place(|| rucat.terminate());
    let log = rucat.server_log();
    let answer = finish
        .join()
        .expect("the request's thread")
        .unwrap_or_else(|why| panic!("{why}:\n{log}"));
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "the request under way at SIGTERM got {answer:?}:\n{log}"
    );
    let created: Value = serde_json::from_str(
        answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body.trim()),
    )
    .expect("a JSON body");
    let in_flight = created["id"]
        .as_str()
        .expect("the new engine's id")
        .to_owned();
    let stopping_line = log
        .lines()
        .find(|line| line.contains("monitor stopping"))
        .unwrap_or_else(|| panic!("the monitor did not stop:\n{log}"));
    assert!(
        !stopping_line.contains("in_flight=0"),
        "no step was under way at SIGTERM: {stopping_line}"
    );

    // What the stopped process left: the step finished, nothing claimed, the running engine
    // still running, and the request's engine recorded.
    let stopped = rucat.stored(&stopping).await;
    assert!(
        matches!(
            stopped.state,
            EngineState::TerminateInProgress | EngineState::Terminated
        ),
        "the step under way at SIGTERM did not finish: {stopped:?}"
    );
    let journal = SimulatedPlatform::journal(&data).expect("journal");
    assert!(
        journal.iter().any(|entry| entry.engine == stopping
            && entry.event == JournalEvent::Delete
            && entry.pid == first_pid),
        "the stopped process did not delete what it was deleting: {journal:?}"
    );
    let kept = rucat.stored(&running).await;
    assert_eq!(kept.state, EngineState::Running, "{kept:?}");
    assert!(
        SimulatedPlatform::live_resources(&data)
            .expect("live resources")
            .contains(&running),
        "the running engine's resource is gone"
    );
    assert_eq!(
        rucat.stored(&in_flight).await.state,
        EngineState::WaitToStart
    );
    let checked_before = kept.next_update_time;

    // The next process adopts the running engine (it checks it, finds it Running, and makes
    // nothing), and carries on with the rest.
    rucat.restart().await;
    let client = rucat.client();
    client
        .wait(&in_flight, EngineState::Running, PATIENCE, |_| {})
        .await
        .expect("the request's engine starts after the restart");
    let deadline = Instant::now() + PATIENCE;
    while rucat.stored(&running).await.next_update_time <= checked_before {
        assert!(
            Instant::now() < deadline,
            "the new monitor never checked the running engine:\n{}",
            rucat.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let engine = client.get(&running).await.expect("get");
    assert_eq!(engine.state, EngineState::Running, "{engine:?}");
    let journal = SimulatedPlatform::journal(&data).expect("journal");
    let lines: Vec<_> = journal
        .iter()
        .filter(|entry| entry.engine == running)
        .map(|entry| (entry.event, entry.pid))
        .collect();
    assert_eq!(
        lines,
        [(JournalEvent::Create, first_pid)],
        "the running engine was made once, by the first process, and never touched again"
    );
    let deletes = journal
        .iter()
        .filter(|entry| entry.engine == stopping)
        .filter(|entry| entry.event == JournalEvent::Delete)
        .count();
    assert_eq!(deletes, 1, "{journal:?}");
    let events = client.events(&stopping).await.expect("events");
    let finished = events
        .iter()
        .find(|event| {
            event.from == Some(EngineState::TriggerTermination)
                && event.to == EngineState::TerminateInProgress
        })
        .unwrap_or_else(|| panic!("no end of the claim: {events:?}"));
    assert!(
        matches!(&finished.actor, Some(Actor::Monitor(name)) if name.ends_with(&format!("-{first_pid}"))),
        "the first process's monitor finished its step: {finished:?}"
    );
    assert_eq!(
        client.get(&stopping).await.expect("get").state,
        EngineState::Terminated
    );
}

/// A forwarder from `listener` to `to`: the database "appears" at the listener's port.
async fn forward(listener: tokio::net::TcpListener, to: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// A password put in the database URLs below: it must never be printed.
const PASSWORD: &str = "Sesame-0pen-s3cret";

/// How many times the process said it waits for the store.
fn waits(process: &Process) -> usize {
    process.log().matches("waiting for the store").count()
}

/// "A process started before its database waits for it": `rucat server` on a port where
/// nothing listens keeps waiting (alive, not serving), then serves once the database appears
/// there; the password in its URL is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_before_its_database_waits_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let database = scratch_database("late").await;
    let admin = sqlx::postgres::PgConnectOptions::from_str(&postgres_admin_url())
        .expect("the PostgreSQL URL");
    let postgres: SocketAddr = tokio::net::lookup_host((admin.get_host(), admin.get_port()))
        .await
        .expect("resolve PostgreSQL")
        .next()
        .expect("an address of PostgreSQL");
    let late = free_port();
    let url = format!(
        "postgres://{}:{PASSWORD}@127.0.0.1:{late}/{}",
        admin.get_username(),
        database.name()
    );
    let rest = loopback(free_port());
    let mut server = start(
        dir,
        "late",
        &[
            "server".into(),
            "--platform".into(),
            "simulated".into(),
            "--listen".into(),
            rest.to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
        ],
        &[("RUCAT_DATABASE_URL", url)],
    );
    // It waits: alive, retrying, serving nothing.
    let deadline = Instant::now() + PATIENCE;
    while waits(&server) < 3 {
        assert!(
            server.exited().is_none(),
            "rucat server did not wait for its database:\n{}",
            server.log()
        );
        assert!(
            refused(rest),
            "rucat server listens before its store is open"
        );
        assert!(
            Instant::now() < deadline,
            "no wait logged:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.exited().is_none(), "{}", server.log());

    // The database appears; the server opens it and serves.
    let listener = tokio::net::TcpListener::bind(loopback(late))
        .await
        .expect("listen where the database appears");
    let forwarder = tokio::spawn(forward(listener, postgres));
    serves_at(&mut server, rest, None).await;
    let client = http(Duration::from_secs(30));
    let ready = client
        .get(format!("http://{rest}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status().as_u16(), 200);
    assert!(server.stop(PATIENCE).await.success(), "{}", server.log());
    forwarder.abort();
    let log = server.log();
    assert!(!log.contains(PASSWORD), "the password was printed:\n{log}");
    assert!(
        log.contains(&format!(":***@127.0.0.1:{late}/")),
        "the database is named, redacted:\n{log}"
    );
}

/// "…up to 60 s, then exits with the error": a database that never comes makes `rucat server`
/// wait (alive, not serving), then exit non-zero naming the database, without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_database_never_comes_gives_up_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let nowhere = free_port();
    let rest = loopback(free_port());
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{nowhere}/test");
    let mut server = start(
        dir,
        "never",
        &[
            "server".into(),
            "--platform".into(),
            "simulated".into(),
            "--listen".into(),
            rest.to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--database-url".into(),
            url,
        ],
        &[],
    );
    let started = Instant::now();
    // Up to 60 s of waiting, then the error: never serving meanwhile.
    let deadline = started + rucat::app::STORE_WAIT + PATIENCE;
    let mut waits_while_alive = 0;
    let status = loop {
        if let Some(status) = server.exited() {
            break status;
        }
        waits_while_alive = waits(&server);
        assert!(refused(rest), "rucat server listens without its store");
        assert!(
            Instant::now() < deadline,
            "rucat server never gave up:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "gave up after {:?} and {waits_while_alive} waits",
        started.elapsed()
    );
    let log = server.log();
    assert!(!status.success(), "{status}:\n{log}");
    // 0.5 s doubling to 5 s: five waits are 12.5 s of waiting before giving up.
    assert!(
        waits_while_alive >= 5,
        "it gave up after {waits_while_alive} waits, not waiting for its database:\n{log}"
    );
    let error = log
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error printed:\n{log}"));
    assert!(
        error.contains(&format!(
            "cannot reach the store at postgres://postgres:***@127.0.0.1:{nowhere}/test"
        )),
        "{error}"
    );
    assert!(!log.contains(PASSWORD), "the password was printed:\n{log}");
}

/// A request that waits for a store connection longer than `[database] acquire_timeout_ms` is
/// answered 503 `unavailable` (never 500, never with the database's details), and the server
/// carries on once connections are free again. The only connection of the pool is kept busy by
/// a request blocked on a lock of the engines table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_too_long_for_a_connection_is_answered_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let database = scratch_database("busy").await;
    // One connection, and no LISTEN holding it: requests get it in turn.
    let config =
        "[database]\nmax_connections = 1\nacquire_timeout_ms = 500\npush_wake_ups = false\n";
    let (mut server, rest) = server_on(dir, "busy", database.url(), &[], &[], config).await;
    let client = http(Duration::from_secs(60));
    let base = format!("http://{rest}");
    let create = serde_json::json!({"name": "before", "engine_type": "Spark", "version": SPARK_VERSION, "configs": {}});
    let made = client
        .post(format!("{base}/engines"))
        .json(&create)
        .send()
        .await
        .expect("POST /engines");
    assert_eq!(made.status().as_u16(), 201);
    let id = made.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("an id")
        .to_owned();

    let mut locker = connect(database.url()).await;
    let mut lock = locker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE engines IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock the engines table");
    // This one takes the connection and waits for the lock.
    let blocked = tokio::spawn(client.get(format!("{base}/engines")).send());
    let mut admin = connect(&postgres_admin_url()).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'rucat' AND wait_event_type = 'Lock'",
        )
        .bind(database.name())
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity");
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server's connection never waited for the lock:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // These find no connection within acquire_timeout_ms.
    let requests = [
        client.get(format!("{base}/engines")),
        client.get(format!("{base}/engines/{id}")),
        client.post(format!("{base}/engines")).json(&create),
        client.post(format!("{base}/engines/{id}/stop")),
        client.get(format!("{base}/readyz")),
    ];
    for request in requests {
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_object().expect("the error shape");
        assert_eq!(error.len(), 2, "{body}");
        assert_eq!(error["code"], "unavailable", "{body}");
        let message = error["message"].as_str().expect("a message");
        assert!(
            !message.contains(database.name()) && !message.contains("postgres"),
            "the store's details are answered: {message}"
        );
    }
    assert!(
        !blocked.is_finished(),
        "the request holding the connection was answered under the lock"
    );

    // The lock goes: the blocked request is answered, and the server works again.
    lock.rollback().await.expect("release the lock");
    let answered = blocked
        .await
        .expect("request task")
        .expect("the blocked request is answered");
    assert_eq!(answered.status().as_u16(), 200);
    let page: Value = client
        .get(format!("{base}/engines"))
        .send()
        .await
        .expect("GET /engines")
        .json()
        .await
        .expect("json");
    assert_eq!(page["engines"].as_array().map(Vec::len), Some(1), "{page}");
    let again = client
        .post(format!("{base}/engines"))
        .json(&serde_json::json!({"name": "after", "engine_type": "Spark", "version": SPARK_VERSION, "configs": {}}))
        .send()
        .await
        .expect("POST /engines");
    assert_eq!(again.status().as_u16(), 201);
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status().as_u16(), 200);
    assert!(server.stop(PATIENCE).await.success(), "{}", server.log());
}

/// Only a process that runs a monitor listens for wake-ups: `rucat server` with a single
/// PostgreSQL connection serves requests on it (the listener would hold it for ever), and a
/// monitor that would be left with none beside its listener is refused at start, naming the
/// setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_a_server_and_is_refused_to_a_monitor() {
    let db = scratch_database("one_connection").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let one = ["--database-max-connections".to_owned(), "1".to_owned()];
    let (mut server, rest) = server_on(dir.path(), "server", db.url(), &one, &[], "").await;
    let client = http(Duration::from_secs(30));
    let created = client
        .post(format!("http://{rest}/engines"))
        .json(&serde_json::json!({"name": "one", "engine_type": "Spark", "version": SPARK_VERSION}))
        .send()
        .await
        .expect("POST /engines");
    assert_eq!(created.status().as_u16(), 201, "{}", server.log());
    let listed = client
        .get(format!("http://{rest}/engines"))
        .send()
        .await
        .expect("GET /engines");
    assert_eq!(listed.status().as_u16(), 200, "{}", server.log());
    assert!(server.stop(PATIENCE).await.success(), "{}", server.log());

    let mut args: Vec<String> = vec![
        "monitor".into(),
        "--platform".into(),
        "simulated".into(),
        "--data-dir".into(),
        dir.path().join("monitor").display().to_string(),
        "--database-url".into(),
        db.url().to_owned(),
    ];
    args.extend(one.iter().cloned());
    args.extend(config_file(dir.path(), "monitor", &simulated()));
    let mut monitor = start(dir.path(), "monitor", &args, &[]);
    let status = monitor.exit(PATIENCE).await;
    let log = monitor.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("database.max_connections") && log.contains("at least 2"),
        "{log}"
    );

    // With wake-ups off, a monitor may have one connection.
    let mut args: Vec<String> = vec![
        "monitor".into(),
        "--platform".into(),
        "simulated".into(),
        "--data-dir".into(),
        dir.path().join("polling").display().to_string(),
        "--database-url".into(),
        db.url().to_owned(),
    ];
    args.extend(one.iter().cloned());
    args.extend(config_file(
        dir.path(),
        "polling",
        &format!("[database]\npush_wake_ups = false\n{}", simulated()),
    ));
    let mut polling = start(dir.path(), "polling", &args, &[]);
    eventually("the polling monitor starts", PATIENCE, || {
        let log = polling.log();
        async move { log.contains("monitor started") }
    })
    .await;
    assert!(polling.exited().is_none(), "{}", polling.log());
    assert!(polling.stop(PATIENCE).await.success(), "{}", polling.log());
}
