//! What a restarted engine keeps, logs served bounded, and an operator's policy, checked on the real binary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rucat::engine::EngineState;
use rucat::store::MAX_KEPT_LOG;
use rucat_client::ClientError;

use super::harness::{port_open, pyspark, with_parameter, Options, Rucat, SPARK_VERSION};
use super::START;

/// How long a condition polled for may take to come true.
const DEADLINE: Duration = Duration::from_secs(120);

/// Polls `check` until it holds; fails naming `what` after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not so within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A unique word to find in a driver log.
fn marker(what: &str) -> String {
    format!("rucat-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// `spark.conf.get(key)` through the proxy with PySpark's own client.
fn conf_get(connection: &str, key: &str) -> serde_json::Value {
    let (ok, answer) = pyspark(&["conf-get", connection, "--key", key]);
    assert!(ok, "conf-get {key}: {answer}");
    answer["value"].clone()
}

/// Opens a session named `user` on the engine and runs one query: Spark's driver log names the
/// user id of every session it serves, so `user` is then the newest word of the log.
fn leave_a_mark(endpoint: &str, user: &str) {
    let (ok, answer) = pyspark(&[
        "select1",
        &with_parameter(endpoint, &format!("user_id={user}")),
    ]);
    assert!(ok, "{answer}");
}

/// Asserts that `served` is the tail of the driver log, cut to the kept-log bound: the last
/// bytes of `file` (the whole log, read after the request) as it was when it held at least
/// `written` bytes, starting past the log's first line.
fn assert_tail(what: &str, served: &str, file: &str, written: usize) {
    assert!(
        served.len() <= MAX_KEPT_LOG,
        "{what}: {} bytes served, more than the bound {MAX_KEPT_LOG}",
        served.len()
    );
    assert!(
        file.len() > MAX_KEPT_LOG && served.len() + 3 >= MAX_KEPT_LOG,
        "{what}: the log ({} bytes) is over the bound, so the tail fills it: {} bytes served",
        file.len(),
        served.len()
    );
    let at = file
        .rfind(served)
        .unwrap_or_else(|| panic!("{what}: what was served is no piece of the driver log"));
    assert!(
        at + served.len() >= written,
        "{what}: the piece served ends at byte {}, before the {written} bytes the driver had \
         written when it was asked for: not the tail",
        at + served.len()
    );
    let first_line = file.lines().next().expect("a first line");
    assert!(
        !served.contains(first_line),
        "{what}: the head of the log was served"
    );
}

/// Restart keeps the engine's configuration (Spark reads it back through the proxy, before and
/// after), the connection string users were given stays the one to use, and the engine's own
/// address is the new start's, kept in the store and never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_configuration_and_the_endpoint() {
    let rucat = Rucat::start().await;
    let client = rucat.client();
    let wanted = configs(&[
        ("spark.sql.shuffle.partitions", "7"),
        ("spark.rucat.e2e.kept", "across-restarts"),
    ]);
    let id = client
        .create("e2e-restart-conf", SPARK_VERSION, &wanted)
        .await
        .expect("create");
    let engine = client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running");
    let endpoint = engine.endpoint.expect("a running engine has an endpoint");
    assert_eq!(
        endpoint,
        format!("sc://localhost:{}/;x-rucat-engine={id}", rucat.proxy.port()),
        "the proxy's connection string for the engine"
    );
    assert_eq!(conf_get(&endpoint, "spark.sql.shuffle.partitions"), "7");
    assert_eq!(
        conf_get(&endpoint, "spark.rucat.e2e.kept"),
        "across-restarts"
    );
    let first = rucat
        .stored(&id)
        .await
        .endpoint
        .expect("the engine's own address is stored");
    assert!(first.starts_with("sc://127.0.0.1:"), "{first}");

    client.stop(&id).await.expect("stop");
    let stopped = client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("stopped");
    assert_eq!(
        stopped.endpoint, None,
        "no endpoint while nobody can connect"
    );
    assert_eq!(rucat.stored(&id).await.endpoint, None);
    assert_eq!(stopped.configs, wanted);

    client.restart(&id).await.expect("restart");
    let engine = client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running again");
    assert_eq!(
        engine.endpoint.as_deref(),
        Some(endpoint.as_str()),
        "the connection string users hold is the same after a restart"
    );
    assert_eq!(engine.configs, wanted, "the record keeps the configs");
    // Through the very connection string given before the restart, Spark has the configs.
    assert_eq!(conf_get(&endpoint, "spark.sql.shuffle.partitions"), "7");
    assert_eq!(
        conf_get(&endpoint, "spark.rucat.e2e.kept"),
        "across-restarts"
    );

    // The engine's own address is the new start's (where it serves now), kept in the store and
    // in no answer.
    let second = rucat
        .stored(&id)
        .await
        .endpoint
        .expect("the engine's own address is stored");
    assert!(second.starts_with("sc://127.0.0.1:"), "{second}");
    assert!(port_open(&second), "the engine serves at {second}");
    eprintln!("own address: {first} before the restart, {second} after");
    let record = client.get(&id).await.expect("get");
    let text = serde_json::to_string(&record).expect("json");
    let own = second.trim_start_matches("sc://");
    assert!(!text.contains(own), "the own address is shown: {text}");

    client.stop(&id).await.expect("stop");
    client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("stopped again");
}

/// `GET /engines/{id}/logs`: a live driver log bigger than the bound is served as its newest
/// bytes, bounded; once the engine is stopped, the tail kept in the store is served (even with
/// the log file gone), bounded, ending with what the driver wrote last before the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_served_as_a_bounded_tail_live_and_kept() {
    let rucat = Rucat::start().await;
    let client = rucat.client();
    let id = client
        .create("e2e-logs", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    let endpoint = client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running")
        .endpoint
        .expect("endpoint");

    // Grow the driver log well past the bound: each Thread.dumpStack() prints a stack trace to
    // the driver's stderr (local mode: the tasks run in the driver's JVM).
    let grow = "SELECT reflect('java.lang.Thread', 'dumpStack') AS s FROM range(0, 200, 1, 4)";
    for _ in 0..10 {
        if rucat.driver_log(&id).len() > 2 * MAX_KEPT_LOG {
            break;
        }
        let (ok, answer) = pyspark(&["sql", &endpoint, "--query", grow]);
        assert!(ok, "{answer}");
    }
    let first_line = rucat
        .driver_log(&id)
        .lines()
        .next()
        .expect("a first line")
        .to_owned();
    assert!(
        first_line.contains(&format!("starting the Spark Connect server of engine {id}")),
        "{first_line}"
    );
    assert!(
        rucat.driver_log(&id).len() > 2 * MAX_KEPT_LOG,
        "the driver log did not grow past twice the bound"
    );

    // Live: the newest lines, bounded.
    let live = marker("live");
    leave_a_mark(&endpoint, &live);
    eventually("the driver log names the live marker", || {
        rucat.driver_log(&id).contains(&live)
    })
    .await;
    let written = rucat.driver_log(&id).len();
    let logs = client.logs(&id).await.expect("logs");
    let file = rucat.driver_log(&id);
    assert_eq!(logs.source, "live");
    assert_tail("live log", &logs.log, &file, written);
    assert!(logs.log.contains(&live), "the newest lines are served");

    // Kept: the tail as it was when the engine was stopped, served from the store.
    let last = marker("last");
    leave_a_mark(&endpoint, &last);
    eventually("the driver log names the last marker", || {
        rucat.driver_log(&id).contains(&last)
    })
    .await;
    let written = rucat.driver_log(&id).len();
    client.stop(&id).await.expect("stop");
    client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("stopped");
    let file = rucat.driver_log(&id);
    // The file stays on disk; moved away, it cannot be what is served.
    let moved = rucat.driver_log_path(&id).with_extension("moved");
    std::fs::rename(rucat.driver_log_path(&id), &moved).expect("move the driver log");
    let logs = client.logs(&id).await.expect("logs");
    assert_eq!(logs.source, "kept");
    assert_tail("kept log", &logs.log, &file, written);
    assert!(
        logs.log.contains(&last),
        "the kept tail ends with the newest lines"
    );
    assert!(
        !logs.log.contains(&live) || logs.log.find(&live) < logs.log.find(&last),
        "in the order written"
    );
    let printed = rucat.cli(&["engine", "logs", &id]);
    assert!(printed.status.success(), "{printed:?}");
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains(&last),
        "`rucat engine logs` prints the kept log"
    );
}

/// An operator's `[policy]` (its own deny list, allow list and images), loaded by the real
/// `rucat serve`, decides what users may create through REST; the keys Rucat sets itself stay
/// refused whatever the operator's lists name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_policy_decides_what_users_may_set() {
    let config = format!(
        r#"
[simulated]
versions = ["{SPARK_VERSION}"]

[policy]
deny = ["spark.sql.shuffle.*", "spark.executor.memoryOverhead"]
allow = [
    "spark.sql.*",
    "spark.executor.*",
    "spark.jars.packages",
    "spark.kubernetes.container.image",
    "spark.master",
    "spark.connect.authenticate.token",
    "spark.driver.port",
]
allowed_images = ["apache/spark:4.0.0"]
"#
    );
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        config: Some(config),
        token: None,
    })
    .await;
    let client = rucat.client();

    let refused = |key: &str, value: &str, says: &[&str]| {
        let client = client.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        let says: Vec<String> = says.iter().map(|s| (*s).to_owned()).collect();
        async move {
            match client
                .create("refused", SPARK_VERSION, &configs(&[(&key, &value)]))
                .await
            {
                Err(ClientError::Api {
                    status,
                    code,
                    message,
                }) => {
                    assert_eq!(status.as_u16(), 400, "{key}: {message}");
                    assert_eq!(code, "config_not_allowed", "{key}: {message}");
                    assert!(
                        message.contains(&format!("{key:?}")),
                        "{key}: the error names it: {message}"
                    );
                    for word in &says {
                        assert!(message.contains(word.as_str()), "{key}: {message}");
                    }
                }
                other => panic!("{key}={value}: expected a 400 refusal, got {other:?}"),
            }
        }
    };

    // The operator's deny list: refused, naming the key and the pattern, though the allow list
    // matches it; in any case.
    refused(
        "spark.sql.shuffle.partitions",
        "7",
        &["\"spark.sql.shuffle.*\""],
    )
    .await;
    refused(
        "spark.SQL.Shuffle.Partitions",
        "7",
        &["\"spark.sql.shuffle.*\""],
    )
    .await;
    refused(
        "spark.executor.memoryOverhead",
        "1g",
        &["\"spark.executor.memoryOverhead\""],
    )
    .await;
    // The allow list: nothing else.
    refused("spark.driver.memory", "64g", &["none of the allowed"]).await;
    // Images: only the listed ones.
    refused(
        "spark.kubernetes.container.image",
        "evil/spark:latest",
        &["evil/spark:latest", "apache/spark:4.0.0"],
    )
    .await;
    // Keys Rucat sets itself, though the allow list names them.
    for (key, value) in [
        ("spark.master", "yarn"),
        ("spark.connect.authenticate.token", "guessed"),
        ("spark.driver.port", "4040"),
        ("spark.Master", "yarn"),
    ] {
        refused(key, value, &["set by Rucat"]).await;
    }
    // The command line shows the same refusal.
    let cli = rucat.cli(&[
        "engine",
        "create",
        "--name",
        "cli-refused",
        "--version",
        SPARK_VERSION,
        "--conf",
        "spark.sql.shuffle.partitions=7",
    ]);
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains("spark.sql.shuffle.partitions"), "{stderr}");
    let page = client.list(None, None, None).await.expect("list");
    assert!(
        page.engines.is_empty(),
        "nothing refused was stored: {:?}",
        page.engines
    );

    // What the operator allowed, though the default policy denies it (the operator's deny list
    // replaces the default one), and a listed image.
    let allowed = configs(&[
        ("spark.jars.packages", "org.example:lib:1.0"),
        ("spark.executor.extraJavaOptions", "-Dexample=1"),
        ("spark.sql.adaptive.enabled", "false"),
    ]);
    let image = configs(&[("spark.kubernetes.container.image", "apache/spark:4.0.0")]);
    let mut accepted = Vec::new();
    for wanted in [&allowed, &image] {
        let id = client
            .create("allowed", SPARK_VERSION, wanted)
            .await
            .expect("an allowed create");
        let engine = client
            .wait(&id, EngineState::Running, START, |_| {})
            .await
            .expect("running");
        assert_eq!(&engine.configs, wanted);
        accepted.push(id);
    }
    let mut listed: Vec<String> = client
        .list(None, None, None)
        .await
        .expect("list")
        .engines
        .into_iter()
        .map(|e| e.id.as_str().to_owned())
        .collect();
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted, "exactly the allowed creates are stored");
}
