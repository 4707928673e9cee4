//! The Spark Connect proxy end to end: the real `rucat serve` (its proxy inside) and a separate
//! `rucat proxy`, real Spark Connect engines, and both real clients (PySpark's own and
//! spark-connect-rs), in plaintext on loopback and over TLS.

use std::time::Duration;

use rucat::engine::EngineState;
use serde_json::Value;

use super::harness::{
    grpc_status, pyspark, pyspark_with, query, rust_tls_query, tls_files, with_parameter, Options,
    Rucat, SPARK_VERSION,
};
use super::{token_create, START};
use crate::common::process::{OnDrop, Spawn};

/// Alice and bob with tokens, as the harness's configuration; alice's token is the harness's.
struct Users {
    alice: String,
    bob: String,
}

fn two_users(extra: &str) -> (Options, Users) {
    let (alice, a) = token_create("alice", false);
    let (bob, b) = token_create("bob", false);
    (
        Options {
            config: Some(format!("{a}{b}\n{extra}")),
            token: Some(alice.clone()),
            ..Options::default()
        },
        Users { alice, bob },
    )
}

async fn running(rucat: &Rucat, name: &str) -> (String, String) {
    let client = rucat.client();
    let id = client
        .create(name, SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    let engine = client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running");
    (id, engine.endpoint.expect("an endpoint"))
}

/// A PySpark call that must be refused with `status`, and that the engine must never see (its
/// log names every session's user id; this call's is unique).
fn refused(rucat: &Rucat, id: &str, connection: &str, probe: &str, status: &str) {
    let url = with_parameter(connection, &format!("user_id={probe}"));
    let (ok, answer) = pyspark(&["select1", &url, "--max-retries", "0"]);
    assert!(!ok, "{probe}: {answer}");
    assert_eq!(grpc_status(&answer), status, "{probe}: {answer}");
    assert!(
        !rucat.driver_log(id).contains(probe),
        "{probe}: the engine saw the refused call"
    );
}

/// The core: only the owner reaches an engine, through the proxy, with either client;
/// every other caller gets the right gRPC status and the engine never sees them; the engine
/// itself refuses anyone without its secret, never shows it, and a restart changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_lets_the_owner_in_and_refuses_everyone_else() {
    let (options, users) = two_users("");
    let rucat = Rucat::start_with(options).await;
    let (id, endpoint) = running(&rucat, "owned").await;
    assert_eq!(
        endpoint,
        format!("sc://localhost:{}/;x-rucat-engine={id}", rucat.proxy.port()),
        "users see the proxy, never the engine"
    );
    let alice = with_parameter(&endpoint, &format!("token={}", users.alice));

    // The owner, with PySpark's own client and with spark-connect-rs.
    let probe = with_parameter(&alice, "user_id=alice-probe");
    let (ok, answer) = pyspark(&["select1", &probe]);
    assert!(ok, "{answer}");
    assert_eq!(answer["value"], 1);
    assert!(
        rucat.driver_log(&id).contains("alice-probe"),
        "the engine's log names the sessions it serves (else the refusal checks prove nothing)"
    );
    query(&alice).await;
    // `connect --with-token` prints a string that works as printed.
    let printed = rucat.cli(&["engine", "connect", &id, "--with-token"]);
    let printed = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
    assert_eq!(printed, alice);

    // Everyone else.
    let stopped = {
        let client = rucat.client();
        let (other, _) = running(&rucat, "stopped").await;
        client.stop(&other).await.expect("stop");
        client
            .wait(&other, EngineState::Terminated, START, |_| {})
            .await
            .expect("stopped");
        other
    };
    let proxy = format!("sc://localhost:{}", rucat.proxy.port());
    let cases = [
        (endpoint.clone(), "probe-no-token", "UNAUTHENTICATED"),
        (
            with_parameter(&endpoint, "token=rucat_not-a-real-token"),
            "probe-bad-token",
            "UNAUTHENTICATED",
        ),
        (
            with_parameter(&endpoint, &format!("token={}", users.bob)),
            "probe-bob",
            "NOT_FOUND",
        ),
        (
            format!(
                "{proxy}/;x-rucat-engine=0123456789abcdef0123456789abcdef;token={}",
                users.alice
            ),
            "probe-unknown",
            "NOT_FOUND",
        ),
        (
            format!("{proxy}/;x-rucat-engine={stopped};token={}", users.alice),
            "probe-terminated",
            "UNAVAILABLE",
        ),
        (
            format!("{proxy}/;token={}", users.alice),
            "probe-no-engine",
            "INVALID_ARGUMENT",
        ),
    ];
    for (connection, probe, status) in &cases {
        refused(&rucat, &id, connection, probe, status);
    }
    // The proxy counts what it forwarded and what it refused (plain HTTP/1.1 on its port).
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", rucat.proxy.port()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    assert!(value("rucat_proxy_streams_total ") > 0);
    assert!(value("rucat_proxy_bytes_total{direction=\"to_client\"} ") > 0);
    let refused = |code: &str, reason: &str| {
        value(&format!(
            "rucat_proxy_refusals_total{{code=\"{code}\",reason=\"{reason}\"}} "
        ))
    };
    assert!(refused("UNAUTHENTICATED", "unauthenticated") >= 2);
    assert!(refused("NOT_FOUND", "not_found") >= 2);
    assert!(refused("UNAVAILABLE", "not_running") >= 1);
    assert!(refused("INVALID_ARGUMENT", "no_engine_named") >= 1);
    assert!(!metrics.contains(&id), "no engine ids in the counters");

    let (_, answer) = pyspark(&[
        "select1",
        &format!("{proxy}/;x-rucat-engine={stopped};token={}", users.alice),
        "--max-retries",
        "0",
    ]);
    assert!(
        answer["error"]["grpc_details"]
            .as_str()
            .unwrap_or_default()
            .contains("Terminated"),
        "the refusal gives the state: {answer}"
    );

    // The engine itself: its own address refuses anyone without its secret, takes the secret,
    // and never tells it.
    let stored = rucat.stored(&id).await;
    let own = stored.endpoint.expect("the engine's own address");
    let port = own.rsplit(':').next().expect("a port");
    let direct = format!("sc://localhost:{port}");
    let (ok, answer) = pyspark(&["select1", &direct, "--max-retries", "0"]);
    assert!(!ok);
    assert_eq!(grpc_status(&answer), "UNAUTHENTICATED", "{answer}");
    let secret = stored.secret.expect("a secret");
    let (ok, answer) = pyspark(&["select1", &format!("{direct}/;token={}", secret.expose())]);
    assert!(ok, "the secret opens the engine: {answer}");
    let (ok, answer) = pyspark(&[
        "conf-get",
        &alice,
        "--key",
        "spark.connect.authenticate.token",
    ]);
    assert!(ok, "{answer}");
    assert_eq!(answer["value"], Value::Null, "{answer}");
    assert!(!answer.to_string().contains(secret.expose()));
    // Nowhere in what users or operators see: the record, the events, the server's log.
    let record = rucat.client().get(&id).await.expect("get");
    let shown = serde_json::to_string(&record).expect("json");
    let events =
        serde_json::to_string(&rucat.client().events(&id).await.expect("events")).expect("json");
    for (what, text) in [
        ("record", shown),
        ("events", events),
        ("server log", rucat.server_log()),
    ] {
        assert!(
            !text.contains(secret.expose()),
            "the secret is in the {what}"
        );
    }
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(secret.expose()),
        "the secret is on a command line"
    );

    // A restart makes a new secret; the old one no longer opens the engine.
    let client = rucat.client();
    client.stop(&id).await.expect("stop");
    client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("stopped");
    client.restart(&id).await.expect("restart");
    client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running again");
    let again = rucat.stored(&id).await;
    let new_secret = again.secret.expect("a secret");
    assert_ne!(new_secret, secret, "a new secret at every start");
    let own = again.endpoint.expect("address");
    let direct = format!("sc://localhost:{}", own.rsplit(':').next().expect("port"));
    let (ok, answer) = pyspark(&[
        "select1",
        &format!("{direct}/;token={}", secret.expose()),
        "--max-retries",
        "0",
    ]);
    assert!(!ok);
    assert_eq!(grpc_status(&answer), "UNAUTHENTICATED", "{answer}");
    let (ok, answer) = pyspark(&["select1", &alice]);
    assert!(ok, "the owner goes on through the proxy: {answer}");
}

/// Big results, long queries and interrupts pass through the proxy (streams both ways, no
/// message-size limit, nothing timing out on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_results_long_queries_and_interrupts_pass_through() {
    let (options, users) = two_users("");
    let rucat = Rucat::start_with(options).await;
    let (id, endpoint) = running(&rucat, "heavy").await;
    let alice = with_parameter(&endpoint, &format!("token={}", users.alice));

    let (ok, answer) = pyspark(&["collect", &alice, "--rows", "1000000"]);
    assert!(ok, "{answer}");
    assert_eq!(answer["rows"], 1_000_000);
    assert_eq!(answer["sum_id"], 499_999_500_000_i64);
    assert_eq!(answer["text_ok"], true);

    let (ok, answer) = pyspark(&["sleep", &alice, "--seconds", "65", "--timeout", "240"]);
    assert!(ok, "a query longer than a minute finishes: {answer}");
    assert!(
        answer["seconds"].as_f64().unwrap_or_default() >= 65.0,
        "{answer}"
    );

    let (ok, answer) = pyspark(&["interrupt", &alice, "--seconds", "3"]);
    assert!(ok, "{answer}");
    assert_eq!(answer["interrupted"], true);
    assert_eq!(answer["error_class"], "OPERATION_CANCELED", "{answer}");

    let engine = rucat.client().get(&id).await.expect("get");
    assert_eq!(engine.state, EngineState::Running);
}

/// Idle auto-stop: an engine with no call for its idle timeout is stopped, with an event saying
/// why; one running a long query is not. (Here an idle "minute" lasts one second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_engines_stop_and_busy_ones_do_not() {
    let (options, users) = two_users("[monitor]\nidle_minute_ms = 1000\nhealth_check_interval_ms = 500\n[proxy]\nactivity_interval_ms = 300\n");
    let rucat = Rucat::start_with(options).await;
    let client = rucat.client();
    let id = client
        .create_with(&rucat_client::CreateRequest {
            name: "idle".into(),
            version: SPARK_VERSION.into(),
            idle_timeout_minutes: Some(4),
            ..Default::default()
        })
        .await
        .expect("create");
    let engine = client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running");
    assert_eq!(engine.idle_timeout_minutes, 4);
    let alice = with_parameter(
        &engine.endpoint.expect("endpoint"),
        &format!("token={}", users.alice),
    );

    // A 12 s query: three idle timeouts long, yet the engine stays up while it runs.
    let long = {
        let alice = alice.clone();
        std::thread::spawn(move || pyspark(&["sleep", &alice, "--seconds", "12"]))
    };
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(11) && !long.is_finished() {
        let engine = client.get(&id).await.expect("get");
        assert_eq!(
            engine.state,
            EngineState::Running,
            "stopped during a query, after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, answer) = long.join().expect("the query thread");
    assert!(ok, "{answer}");

    // Then idle: stopped within the timeout plus a few checks.
    let stopped = client
        .wait(
            &id,
            EngineState::Terminated,
            Duration::from_secs(60),
            |_| {},
        )
        .await
        .expect("stopped for idleness");
    assert_eq!(stopped.state, EngineState::Terminated);
    let events = client.events(&id).await.expect("events");
    let idle = events
        .iter()
        .find(|e| e.to == EngineState::WaitToTerminate)
        .expect("a stop");
    assert!(
        idle.message.as_deref().unwrap_or_default().contains("idle"),
        "{idle:?}"
    );
    assert!(matches!(idle.actor, Some(rucat_client::Actor::Monitor(_))));
    assert_eq!(
        idle.cause,
        Some(rucat_client::Cause::Idle { minutes: 4 }),
        "{idle:?}"
    );
}

/// A proxy killed under a connected client: the client gets UNAVAILABLE, works again through
/// a restarted proxy (same session), and no engine changes state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_comes_back_and_engines_never_notice() {
    use rucat::engine::EngineId;
    use spark_connect_rs::SparkSessionBuilder;

    let (options, users) = two_users("");
    let rucat = Rucat::start_with(options).await;
    let (id, _) = running(&rucat, "steady").await;
    let before = rucat.stored(&id).await;

    // A proxy of its own, on the same store (rucat serve's SQLite file): first on a port it
    // picks and names in its log, then again on that port.
    let config = rucat.dir.path().join("rucat.toml");
    let start_proxy = |port: u16| {
        Spawn::new("rucat proxy", rucat.dir.path().join("proxy.log"))
            .args(["proxy", "--proxy-listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(rucat.dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .log_filter("info")
            .on_drop(OnDrop::Kill)
            .start()
    };
    let within = Duration::from_secs(30);
    let mut proxy = start_proxy(0);
    let port = proxy
        .wait_listening("Spark Connect proxy", within)
        .await
        .port();
    let url = format!(
        "sc://localhost:{port}/;x-rucat-engine={id};token={};user_id=steady",
        users.alice
    );
    let spark = SparkSessionBuilder::remote(&url)
        .build()
        .await
        .expect("connect through the proxy");
    let count = |spark: &spark_connect_rs::SparkSession| {
        let spark = spark.clone();
        async move { spark.range(None, 1000, 1, None).count().await }
    };
    assert_eq!(count(&spark).await.expect("count"), 1000);

    proxy.kill9();
    let error = count(&spark).await.expect_err("no proxy, no answer");
    let message = format!("{error:?}");
    assert!(
        message.contains("Unavailable") || message.contains("transport"),
        "{message}"
    );

    let mut proxy = start_proxy(port);
    let back = proxy.wait_listening("Spark Connect proxy", within).await;
    assert_eq!(back.port(), port, "the proxy is back on its port");
    let mut answered = None;
    for _ in 0..50 {
        match count(&spark).await {
            Ok(n) => {
                answered = Some(n);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(answered, Some(1000), "the same session works again");
    proxy.kill9();

    let after = rucat.stored(&id).await;
    assert_eq!(after.state, EngineState::Running);
    assert_eq!(after.update_time, before.update_time, "no state change");
    assert_eq!(after.secret, before.secret);
    assert!(EngineId::parse(&id).is_some());
}

/// TLS: the proxy serves rustls with the configured certificate (ALPN h2); PySpark trusts the
/// test CA through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH and spark-connect-rs (with its `tls`
/// feature) through SSL_CERT_FILE. A renewed certificate is served without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_tls_and_follows_a_renewed_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = tls_files(dir.path(), "first");
    let (options, users) = two_users(&format!(
        "[proxy]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
    ));
    let rucat = Rucat::start_with(options).await;
    let (id, endpoint) = running(&rucat, "secure").await;
    assert_eq!(
        endpoint,
        format!(
            "sc://localhost:{}/;use_ssl=true;x-rucat-engine={id}",
            rucat.proxy.port()
        )
    );
    let alice = with_parameter(&endpoint, &format!("token={}", users.alice));
    let ca_text = ca.to_string_lossy().into_owned();

    let (ok, answer) = pyspark(&["select1", &alice, "--tls-root", &ca_text]);
    assert!(ok, "PySpark over TLS: {answer}");
    let (ok, answer) = pyspark(&[
        "collect",
        &alice,
        "--rows",
        "200000",
        "--tls-root",
        &ca_text,
    ]);
    assert!(ok, "{answer}");
    assert_eq!(answer["rows"], 200_000);
    let answer = rust_tls_query(&alice, &ca);
    assert_eq!(answer["one"], 1, "spark-connect-rs over TLS: {answer}");
    assert_eq!(answer["count"], 1_000_000);

    // Without trusting the CA, no connection.
    let (other_ca, _, _) = tls_files(dir.path(), "stranger");
    let other = other_ca.to_string_lossy().into_owned();
    let (ok, answer) = pyspark(&[
        "select1",
        &alice,
        "--tls-root",
        &other,
        "--max-retries",
        "0",
    ]);
    assert!(!ok, "{answer}");

    // Renewed: new certificate and key (from another CA) in place; the proxy follows.
    let (new_ca, new_cert, new_key) = tls_files(dir.path(), "second");
    std::fs::copy(&new_key, &key).expect("replace the key");
    std::fs::copy(&new_cert, &cert).expect("replace the certificate");
    let new_ca_text = new_ca.to_string_lossy().into_owned();
    let mut renewed = false;
    for _ in 0..40 {
        let (ok, _) = pyspark_with(
            &[
                "select1",
                &alice,
                "--tls-root",
                &new_ca_text,
                "--max-retries",
                "0",
            ],
            &[],
        );
        if ok {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(renewed, "the renewed certificate is served");
    let (ok, _) = pyspark(&[
        "select1",
        &alice,
        "--tls-root",
        &ca_text,
        "--max-retries",
        "0",
    ]);
    assert!(!ok, "the old certificate is no longer served");
}
