//! End to end: the real `rucat` binary, the local platform, real Spark Connect servers, and a
//! real Spark Connect client (spark-connect-rs) running queries on them.

mod harness;

use std::time::Duration;

use harness::{query, spark_processes, Rucat, SPARK_VERSION};
use rucat::engine::EngineState;

const START: Duration = Duration::from_secs(240);

#[tokio::test]
async fn rest_lifecycle_with_queries() {
    let rucat = Rucat::start().await;
    let client = rucat.client();

    let id = client
        .create("e2e-rest", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    let engine = client
        .wait(&id, EngineState::Running, START, |e| {
            eprintln!("{id}: {}", e.state)
        })
        .await
        .expect("engine runs");
    let endpoint = engine.endpoint.expect("a running engine has an endpoint");
    assert!(endpoint.starts_with("sc://127.0.0.1:"), "{endpoint}");
    query(&endpoint).await;
    assert_eq!(spark_processes(&id).len(), 1, "exactly one Spark process");

    client.stop(&id).await.expect("stop");
    let engine = client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("engine stops");
    assert_eq!(engine.endpoint, None);
    assert!(spark_processes(&id).is_empty(), "the Spark process is gone");
    assert!(
        !harness::port_open(&endpoint),
        "the Spark Connect port is closed"
    );
    let logs = client.logs(&id).await.expect("logs");
    assert_eq!(logs.source, "kept");
    assert!(
        logs.log.contains("SparkConnectServer") || logs.log.contains("Spark Connect"),
        "{}",
        logs.log
    );

    client.restart(&id).await.expect("restart");
    let engine = client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("engine runs again");
    let endpoint = engine.endpoint.expect("endpoint");
    query(&endpoint).await;

    client.stop(&id).await.expect("stop");
    client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("engine stops again");
    client.delete(&id).await.expect("delete");
    match client.get(&id).await {
        Err(rucat::client::ClientError::Api { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    assert!(spark_processes(&id).is_empty());
}

#[tokio::test]
async fn cli_lifecycle() {
    let mut rucat = Rucat::start().await;

    let created = rucat.cli(&[
        "engine",
        "create",
        "--name",
        "e2e-cli",
        "--version",
        SPARK_VERSION,
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--wait",
    ]);
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8_lossy(&created.stdout);
    let mut lines = stdout.lines();
    let id = lines.next().expect("the id").trim().to_owned();
    let endpoint = lines.next().expect("the endpoint").trim().to_owned();
    assert!(endpoint.starts_with("sc://"), "{stdout}");
    let progress = String::from_utf8_lossy(&created.stderr);
    assert!(progress.contains("Running"), "progress shown: {progress}");
    query(&endpoint).await;

    let listed = rucat.cli(&["engine", "list"]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&id) && l.contains("Running")),
        "{listed}"
    );

    let connect = rucat.cli(&["engine", "connect", &id]);
    assert_eq!(String::from_utf8_lossy(&connect.stdout).trim(), endpoint);

    let stopped = rucat.cli(&["engine", "stop", &id, "--wait"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(spark_processes(&id).is_empty());
    let logs = rucat.cli(&["engine", "logs", &id]);
    assert!(logs.status.success() && !logs.stdout.is_empty());

    let deleted = rucat.cli(&["engine", "delete", &id]);
    assert!(deleted.status.success(), "{deleted:?}");
    let gone = rucat.cli(&["engine", "get", &id]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no engine"),
        "{gone:?}"
    );

    // Bad input: a clear message and a non-zero exit, nothing stored.
    let bad = rucat.cli(&["engine", "create", "--name", "x", "--version", "9.9.9"]);
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("9.9.9") && message.contains(SPARK_VERSION),
        "{message}"
    );
    let bad = rucat.cli(&[
        "engine",
        "create",
        "--name",
        "x",
        "--version",
        SPARK_VERSION,
        "--conf",
        "spark.master=yarn",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spark.master"));
    let listed = rucat.cli(&["engine", "list", "--json"]);
    let page: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(page["engines"].as_array().map(Vec::len), Some(0));

    // SIGTERM: a graceful stop, exit status 0.
    let status = rucat.terminate();
    assert!(status.success(), "{status}: {}", rucat.server_log());
}

/// `kill -9` of `rucat serve`: a Running engine whose Spark process survived is adopted (still
/// Running and usable); one whose process died too is cleaned up and marked failed. Never a
/// leaked process, never a record that says Running over a dead one.
#[tokio::test]
async fn killed_rucat_adopts_or_cleans_its_engines() {
    let mut rucat = Rucat::start().await;
    let client = rucat.client();
    let survivor = client
        .create("survivor", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    let victim = client
        .create("victim", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    for id in [&survivor, &victim] {
        client
            .wait(id, EngineState::Running, START, |_| {})
            .await
            .expect("running");
    }

    rucat.kill9();
    // The victim's Spark dies while Rucat is down.
    for pid in spark_processes(&victim) {
        // SAFETY-free: plain kill(2) on a pid we just read from /proc.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    rucat.restart().await;
    let client = rucat.client();

    let engine = client.get(&survivor).await.expect("get");
    assert_eq!(engine.state, EngineState::Running);
    query(&engine.endpoint.expect("endpoint")).await;
    assert_eq!(
        spark_processes(&survivor).len(),
        1,
        "adopted, not started twice"
    );

    let engine = client
        .wait(&victim, EngineState::ErrorClean, START, |e| {
            eprintln!("victim: {}", e.state)
        })
        .await
        .expect("the dead engine is cleaned and marked");
    assert!(engine.error.is_some(), "{engine:?}");
    assert!(spark_processes(&victim).is_empty());

    client.stop(&survivor).await.expect("stop");
    client
        .wait(&survivor, EngineState::Terminated, START, |_| {})
        .await
        .expect("stops");
    assert!(spark_processes(&survivor).is_empty());
}
