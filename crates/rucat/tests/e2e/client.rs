//! The `rucat-client` crate and `rucat engine sql` against the real `rucat serve` and real Spark
//! Connect engines: a session opened by the client reaches the engine through the proxy with the
//! client's token, and only its owner's token does.

use std::process::{Command, Stdio};

use rucat_client::arrow::array::{Array, Int64Array, StringArray};
use rucat_client::spark_connect_rs::errors::SparkError;
use rucat_client::spark_connect_rs::SparkSessionBuilder;
use rucat_client::{Client, ClientError, CreateRequest, EngineState};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::harness::{Options, Rucat, SPARK_VERSION};
use super::{token_create, START};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What a Spark Connect call with `connection` gets: `SELECT 1` must fail.
async fn refused(connection: &str) -> SparkError {
    let spark = match SparkSessionBuilder::remote(connection).build().await {
        Ok(spark) => spark,
        Err(error) => return error,
    };
    match spark.sql("SELECT 1 AS one").await {
        Ok(frame) => frame.collect().await.expect_err("a refused call"),
        Err(error) => error,
    }
}

/// Alice's client creates an engine, waits for it and queries it through `session()`; the
/// session carries her token through the proxy (without it, or with bob's, the proxy refuses);
/// `rucat engine sql` prints the same rows as a table and as JSON, to her only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crate_and_engine_sql_query_an_engine_for_its_owner_only() {
    let (alice, a) = token_create("alice", false);
    let (bob, b) = token_create("bob", false);
    let rucat = Rucat::start_with(Options {
        config: Some(format!("{a}{b}")),
        token: Some(alice.clone()),
        ..Options::default()
    })
    .await;
    let client = rucat.client();
    let engine = client
        .create_engine(&CreateRequest::new("client-crate", SPARK_VERSION))
        .await
        .expect("create");
    let running = engine
        .wait(EngineState::Running, START)
        .await
        .expect("the engine runs");
    let endpoint = running.endpoint.expect("an endpoint");

    let spark = engine.session().await.expect("a session through the proxy");
    let batch = spark
        .sql("SELECT id, CAST(id * id AS STRING) AS square FROM range(4)")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    let ids = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("a bigint column");
    let squares = batch
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("a string column");
    assert_eq!(ids.values().to_vec(), vec![0, 1, 2, 3]);
    assert_eq!(
        (0..squares.len())
            .map(|i| squares.value(i))
            .collect::<Vec<_>>(),
        vec!["0", "1", "4", "9"]
    );
    let connection = engine
        .connection_string()
        .await
        .expect("a connection string");
    assert_eq!(
        connection.expose_secret(),
        format!("{endpoint};token={alice}"),
        "the session's string is the endpoint plus the client's token"
    );

    // The token is what the proxy lets in: none is refused, bob's does not find alice's engine
    // (and bob's own client is refused by the REST API before any connection).
    let anonymous = Client::new(client.server(), None);
    let none = anonymous.connection_string(&endpoint).expect("a string");
    assert_eq!(none.expose_secret(), endpoint);
    let error = refused(none.expose_secret()).await;
    assert!(matches!(error, SparkError::Unauthenticated(_)), "{error:?}");
    let bobs = rucat.client_as(&bob);
    let string = bobs.connection_string(&endpoint).expect("a string");
    let error = refused(string.expose_secret()).await;
    assert!(matches!(error, SparkError::NotFound(_)), "{error:?}");
    match bobs.session(engine.id()).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!(
            "bob got a session on alice's engine: {:?}",
            other.map(|_| ())
        ),
    }

    // `rucat engine sql`: a table, or JSON rows; bob gets nothing.
    let table = rucat.cli(&[
        "engine",
        "sql",
        engine.id(),
        "SELECT 1 AS one, 'a b' AS two",
    ]);
    assert!(table.status.success(), "{}", stderr(&table));
    assert_eq!(stdout(&table), "one  two\n1    a b\n");
    let rows = rucat.cli(&[
        "engine",
        "sql",
        engine.id(),
        "SELECT id, IF(id = 1, NULL, id * 10) AS tens FROM range(3)",
        "--output",
        "json",
    ]);
    assert!(rows.status.success(), "{}", stderr(&rows));
    let rows: Value = serde_json::from_slice(&rows.stdout).expect("JSON rows");
    assert_eq!(
        rows,
        json!([{"id": 0, "tens": 0}, {"id": 1, "tens": null}, {"id": 2, "tens": 20}])
    );
    let wrong = rucat.cli(&["engine", "sql", engine.id(), "SELECT nope FROM nowhere"]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("the query failed") && stderr(&wrong).contains("nowhere"),
        "{}",
        stderr(&wrong)
    );
    // Spark's message is said once, not again as the error's cause.
    let spark_says = stderr(&wrong)
        .split("Spark Connect: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(!spark_says.is_empty(), "{}", stderr(&wrong));
    assert_eq!(
        stderr(&wrong).matches(spark_says.as_str()).count(),
        1,
        "{}",
        stderr(&wrong)
    );
    let bob_sql = rucat.cli_as(Some(&bob), &["engine", "sql", engine.id(), "SELECT 1"]);
    assert!(!bob_sql.status.success());
    assert!(
        stderr(&bob_sql).contains("no engine with id"),
        "{}",
        stderr(&bob_sql)
    );

    // A stopped engine has no session to give.
    engine.stop().await.expect("stop");
    engine
        .wait(EngineState::Terminated, START)
        .await
        .expect("stopped");
    match engine.session().await {
        Err(ClientError::NotRunning { state, .. }) => assert_eq!(state, EngineState::Terminated),
        other => panic!("a session on a stopped engine: {:?}", other.map(|_| ())),
    }
    let stopped = rucat.cli(&["engine", "sql", engine.id(), "SELECT 1"]);
    assert!(!stopped.status.success());
    assert!(
        stderr(&stopped).contains("not Running"),
        "{}",
        stderr(&stopped)
    );
    engine.delete().await.expect("delete");
}

/// The README's quick start with nothing configured: `create --wait`, then `rucat engine sql`
/// and the pyspark shell of scripts/setup.sh on `rucat engine connect`, then stop and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_queries_right_after_create() {
    let rucat = Rucat::start().await;
    let created = rucat.cli(&[
        "engine",
        "create",
        "--name",
        "demo",
        "--version",
        SPARK_VERSION,
        "--wait",
        "--timeout",
        &START.as_secs().to_string(),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let printed = stdout(&created);
    let mut lines = printed.lines();
    let id = lines.next().expect("the id").to_owned();
    let endpoint = lines.next().expect("the endpoint").to_owned();
    assert!(endpoint.starts_with("sc://localhost:"), "{printed}");

    let one = rucat.cli(&["engine", "sql", &id, "SELECT 1 AS one"]);
    assert!(one.status.success(), "{}", stderr(&one));
    assert_eq!(stdout(&one), "one\n1\n");

    // `~/.cache/rucat/spark-4.3.0/bin/pyspark --remote "$(rucat engine connect ID)"`: the shell
    // PySpark's Connect client starts there, fed one statement on its standard input.
    let connect = rucat.cli(&["engine", "connect", &id]);
    assert_eq!(stdout(&connect).trim(), endpoint);
    let pyspark = super::harness::spark_python().with_file_name("pyspark");
    let mut shell = Command::new(&pyspark)
        .args(["--remote", &endpoint])
        .env("PYSPARK_DRIVER_PYTHON_OPTS", "-i")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("run {}: {error}", pyspark.display()));
    {
        use std::io::Write;
        let mut input = shell.stdin.take().expect("the shell's stdin");
        input
            .write_all(b"print('answer=%d' % spark.sql('SELECT 41 + 1 AS x').first().x)\n")
            .expect("feed the shell");
    }
    let answered = shell.wait_with_output().expect("the pyspark shell");
    assert!(
        stdout(&answered).contains("answer=42"),
        "{}\n{}",
        stdout(&answered),
        stderr(&answered)
    );

    let stopped = rucat.cli(&["engine", "stop", &id, "--wait"]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let deleted = rucat.cli(&["engine", "delete", &id]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
}
