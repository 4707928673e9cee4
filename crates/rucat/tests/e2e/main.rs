//! End to end: the real `rucat` binary, the local platform, real Spark Connect servers, and a
//! real Spark Connect client (spark-connect-rs) running queries on them.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod client;
mod harness;
mod kept;
mod metrics;
mod openapi;
mod pools;
mod promises;
mod proxy;
mod ui;

use std::time::Duration;

use common::process::cli;
use harness::{query, spark_processes, with_parameter, Options, Rucat, SPARK_VERSION};
use rucat::engine::EngineState;
use serde_json::Value;

const START: Duration = Duration::from_secs(240);

/// `rucat token create --user USER [--admin] --json`: the token and its configuration entry.
fn token_create(user: &str, admin: bool) -> (String, String) {
    let mut command = cli(["token", "create", "--user", user, "--json"]);
    if admin {
        command.arg("--admin");
    }
    let output = command.output().expect("run rucat token create");
    assert!(output.status.success(), "{output:?}");
    let made: Value = serde_json::from_slice(&output.stdout).expect("json");
    let token = made["token"].as_str().expect("token").to_owned();
    let entry = format!(
        "[[auth.tokens]]\nuser = {:?}\nrole = {}\nhash = {}\n",
        user, made["role"], made["hash"]
    );
    (token, entry)
}

/// Authentication on, with one user (alice) whose token the harness uses.
fn alice_only() -> Options {
    let (token, entry) = token_create("alice", false);
    Options {
        config: Some(entry),
        token: Some(token),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_lifecycle_with_queries() {
    let rucat = Rucat::start_with(alice_only()).await;
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
    assert!(endpoint.starts_with("sc://localhost:"), "{endpoint}");
    let token = rucat.token().expect("alice's token");
    query(&with_parameter(&endpoint, &format!("token={token}"))).await;
    assert_eq!(spark_processes(&id).len(), 1, "exactly one Spark process");
    let own = rucat
        .stored(&id)
        .await
        .endpoint
        .expect("the engine's own address");

    client.stop(&id).await.expect("stop");
    let engine = client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("engine stops");
    assert_eq!(engine.endpoint, None);
    assert!(spark_processes(&id).is_empty(), "the Spark process is gone");
    assert!(
        !harness::port_open(&own),
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
    query(&with_parameter(&endpoint, &format!("token={token}"))).await;

    client.stop(&id).await.expect("stop");
    client
        .wait(&id, EngineState::Terminated, START, |_| {})
        .await
        .expect("engine stops again");
    client.delete(&id).await.expect("delete");
    match client.get(&id).await {
        Err(rucat_client::ClientError::Api { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    assert!(spark_processes(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lifecycle() {
    let mut rucat = Rucat::start_with(alice_only()).await;

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
    let token = rucat.token().expect("alice's token");
    query(&with_parameter(&endpoint, &format!("token={token}"))).await;

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
    assert!(logs.status.success(), "{logs:?}");
    let log = String::from_utf8_lossy(&logs.stdout);
    assert!(
        log.contains("SparkConnectServer") || log.contains("Spark Connect"),
        "the kept log is the engine's driver log: {log}"
    );

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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

    // Once the victim has settled, the survivor is still the adopted engine, untouched: Running,
    // serving, one process, and not one failure or error in its history.
    let engine = client.get(&survivor).await.expect("get");
    assert_eq!(engine.state, EngineState::Running);
    assert_eq!(engine.error, None);
    query(&engine.endpoint.expect("endpoint")).await;
    assert_eq!(
        spark_processes(&survivor).len(),
        1,
        "adopted, not started twice"
    );
    let events = client.events(&survivor).await.expect("events");
    let troubled: Vec<_> = events
        .iter()
        .filter(|e| e.to.as_str().starts_with("Error") || e.from == Some(e.to))
        .collect();
    assert!(
        troubled.is_empty(),
        "the survivor had trouble: {troubled:?}"
    );

    client.stop(&survivor).await.expect("stop");
    client
        .wait(&survivor, EngineState::Terminated, START, |_| {})
        .await
        .expect("stops");
    assert!(spark_processes(&survivor).is_empty());
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Two users and an admin share one real `rucat serve` (engines on the simulated platform),
/// through REST and the CLI: each user sees and changes only their own engines, the admin sees
/// and changes all, quotas are refused with the limit named, and refused credentials get one
/// line saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_and_an_admin_share_one_server() {
    let (alice, alice_entry) = token_create("alice", false);
    let (bob, bob_entry) = token_create("bob", false);
    let (root, root_entry) = token_create("root", true);
    let config = format!(
        "{alice_entry}{bob_entry}{root_entry}\n[quota]\nmax_active_engines = 2\n\
         [simulated]\nversions = [\"{SPARK_VERSION}\"]\n"
    );
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        config: Some(config),
        token: None,
    })
    .await;

    // The text form of `token create` shows the token once and an entry that parses.
    let text = cli(["token", "create", "--user", "zoe"])
        .output()
        .expect("token create");
    let text = stdout(&text);
    let token_line = text.lines().nth(1).expect("the token line");
    assert!(
        token_line.starts_with("rucat_") && token_line.len() >= 6 + 43,
        "{text}"
    );
    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[[tokens]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed: toml::Value = toml::from_str(&entry).expect("the entry is TOML");
    assert_eq!(parsed["tokens"][0]["user"].as_str(), Some("zoe"));
    assert!(!entry.contains(token_line), "the entry holds only the hash");

    // Alice creates two engines through REST and waits for them; the third is over quota.
    let client = rucat.client_as(&alice);
    let mut mine = Vec::new();
    for name in ["a1", "a2"] {
        let id = client
            .create(name, SPARK_VERSION, &Default::default())
            .await
            .expect("create");
        client
            .wait(&id, EngineState::Running, START, |_| {})
            .await
            .expect("running");
        mine.push(id);
    }
    let over = rucat.cli_as(
        Some(&alice),
        &[
            "engine",
            "create",
            "--name",
            "a3",
            "--version",
            SPARK_VERSION,
        ],
    );
    assert!(!over.status.success());
    assert!(
        stderr(&over).contains("max_active_engines is 2"),
        "{}",
        stderr(&over)
    );

    // Bob creates one through the CLI.
    let created = rucat.cli_as(
        Some(&bob),
        &[
            "engine",
            "create",
            "--name",
            "b1",
            "--version",
            SPARK_VERSION,
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let bobs = stdout(&created)
        .lines()
        .next()
        .expect("id")
        .trim()
        .to_owned();

    let listed = |token: &str, extra: &[&str]| {
        let mut args = vec!["engine", "list", "--json"];
        args.extend_from_slice(extra);
        let output = rucat.cli_as(Some(token), &args);
        assert!(output.status.success(), "{}", stderr(&output));
        let page: Value = serde_json::from_slice(&output.stdout).expect("json");
        let mut ids: Vec<String> = page["engines"]
            .as_array()
            .expect("engines")
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(listed(&alice, &[]), sorted(mine.clone()));
    assert_eq!(listed(&bob, &[]), vec![bobs.clone()]);
    let mut everyone = mine.clone();
    everyone.push(bobs.clone());
    assert_eq!(listed(&root, &[]), sorted(everyone));
    assert_eq!(listed(&root, &["--owner", "alice"]), sorted(mine.clone()));
    let table = stdout(&rucat.cli_as(Some(&root), &["engine", "list"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains(&bobs) && l.contains("bob")),
        "{table}"
    );

    // Bob cannot see or touch alice's engine: as if it did not exist.
    for args in [
        vec!["engine", "get", &mine[0]],
        vec!["engine", "stop", &mine[0]],
        vec!["engine", "delete", &mine[0]],
        vec!["engine", "logs", &mine[0]],
        vec!["engine", "events", &mine[0]],
    ] {
        let output = rucat.cli_as(Some(&bob), &args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("no engine with id"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let engine = client.get(&mine[0]).await.expect("alice's engine");
    assert_eq!(engine.state, EngineState::Running, "untouched by bob");
    let refused = rucat.cli_as(Some(&bob), &["engine", "list", "--owner", "alice"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("admin"), "{}", stderr(&refused));

    // The admin stops alice's engine; the history names him.
    let stopped = rucat.cli_as(
        Some(&root),
        &["engine", "stop", &mine[0], "--wait", "--timeout", "60"],
    );
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let events = stdout(&rucat.cli_as(Some(&alice), &["engine", "events", &mine[0]]));
    assert!(events.contains("user root"), "{events}");
    assert!(events.contains("user alice"), "{events}");
    assert!(events.contains("monitor "), "{events}");

    // Refused credentials: a non-zero exit and one line on what to do.
    for token in [None, Some("rucat_not-a-real-token")] {
        let output = rucat.cli_as(token, &["engine", "list"]);
        assert!(!output.status.success());
        let message = stderr(&output);
        assert!(message.contains("HTTP 401"), "{message}");
        assert!(
            message.contains("hint:") && message.contains("--token"),
            "{message}"
        );
    }
}

/// A body over the limit is answered after it has been read, so Python's urllib and requests
/// read the 413 and its JSON instead of a broken pipe, with a credential or without one (the size
/// is judged first); nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_read_the_refusal_of_an_oversized_body() {
    let options = Options {
        platform: Some("simulated".to_owned()),
        ..alice_only()
    };
    let rucat = Rucat::start_with(options).await;
    let token = rucat.token().expect("token").to_owned();
    let url = format!("http://{}/engines", rucat.addr);
    // 6 MB: far more than the socket buffers take, so a server answering before reading the
    // body closes the connection on a client still writing.
    let output = std::process::Command::new(harness::spark_python())
        .arg(harness::repo_root().join("crates/rucat/tests/e2e/oversized_body.py"))
        .args([&url, &token, "6000000"])
        .output()
        .expect("run oversized_body.py");
    assert!(output.status.success(), "{output:?}");
    let answers: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for (case, status, code) in [
        ("urllib_too_large", 413, "payload_too_large"),
        ("urllib_unauthenticated", 413, "payload_too_large"),
        ("requests_too_large", 413, "payload_too_large"),
        ("requests_chunked_too_large", 413, "payload_too_large"),
        ("requests_unauthenticated", 413, "payload_too_large"),
    ] {
        let answer = &answers[case];
        assert_eq!(answer["status"], status, "{case}: {answer}");
        assert_eq!(answer["body"]["error"]["code"], code, "{case}: {answer}");
    }
    assert!(answers["urllib_too_large"]["body"]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("65536 bytes")));
    let listed = rucat.client().list(None, None, None).await.expect("list");
    assert!(listed.engines.is_empty(), "nothing was stored: {listed:?}");
}
