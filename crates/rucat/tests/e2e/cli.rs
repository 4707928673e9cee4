//! The command line's habits on the real binary (engines on the simulated platform): flags
//! before the subcommand, shell completions, `--output json|table` on every read command, and a
//! clear refusal of an unknown format.

use std::process::Output;

use rucat::engine::EngineState;
use serde_json::Value;

use super::harness::{Options, Rucat, SPARK_VERSION};
use super::{token_create, START};
use crate::common::process::cli;

/// `rucat ARGS` with no RUCAT_* variable from the environment (and `env` added).
fn bare(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = cli(args);
    for key in ["RUCAT_SERVER", "RUCAT_TOKEN", "RUCAT_CONFIG"] {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run the rucat CLI")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Alice's `rucat serve` on the simulated platform, and one running engine of hers.
async fn alice_with_an_engine() -> (Rucat, String, String) {
    let (alice, entry) = token_create("alice", false);
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        config: Some(format!(
            "{entry}\n[simulated]\nversions = [\"{SPARK_VERSION}\"]\n"
        )),
        token: Some(alice.clone()),
    })
    .await;
    let client = rucat.client();
    let id = client
        .create("habits", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    client
        .wait(&id, EngineState::Running, START, |_| {})
        .await
        .expect("running");
    (rucat, alice, id)
}

/// `--server` and `--token` are accepted before the subcommand, after `engine`, and after the
/// engine command alike, and beat the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_token_flags_go_anywhere_on_the_line() {
    let (rucat, alice, id) = alice_with_an_engine().await;
    let server = format!("http://{}", rucat.addr);
    let listed = |output: &Output| -> Vec<String> {
        assert!(output.status.success(), "{}", stderr(output));
        let page: Value = serde_json::from_slice(&output.stdout).expect("a JSON page");
        page["engines"]
            .as_array()
            .expect("engines")
            .iter()
            .map(|engine| engine["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    let lines: [Vec<&str>; 3] = [
        vec![
            "--server", &server, "--token", &alice, "engine", "list", "--json",
        ],
        vec![
            "engine", "--server", &server, "--token", &alice, "list", "--json",
        ],
        vec![
            "engine", "list", "--json", "--server", &server, "--token", &alice,
        ],
    ];
    for args in lines {
        assert_eq!(listed(&bare(&args, &[])), vec![id.clone()], "{args:?}");
    }
    // The flags beat RUCAT_SERVER and RUCAT_TOKEN.
    let wrong = [
        ("RUCAT_SERVER", "http://127.0.0.1:9"),
        ("RUCAT_TOKEN", "rucat_not-a-real-token"),
    ];
    let args = [
        "--server", &server, "--token", &alice, "engine", "list", "--json",
    ];
    assert_eq!(listed(&bare(&args, &wrong)), vec![id.clone()]);
    // The token flag is what let alice in: without it the same line is refused.
    let refused = bare(&["--server", &server, "engine", "list"], &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("HTTP 401"),
        "{}",
        stderr(&refused)
    );
}

/// `rucat completions SHELL` prints a script for each shell, naming the subcommands, without a
/// server or a readable configuration.
#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = bare(
            &["completions", shell],
            &[("RUCAT_CONFIG", "/nonexistent/rucat.toml")],
        );
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        assert!(script.len() > 1000, "{shell}: {script}");
        for word in ["engine", "sql", "completions", "--output"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let bad = bare(&["completions", "tcsh"], &[]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&bad)
    );
}

/// Every read command prints JSON with `--output json` and a table with `--output table`; an
/// unknown format is refused before anything is asked of the server, naming the formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_print_json_or_tables() {
    let (rucat, _alice, id) = alice_with_an_engine().await;
    let json = |args: &[&str]| -> Value {
        let output = rucat.cli(args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("{args:?}: {error}: {}", stdout(&output)))
    };

    // The client knows every field the server shows (none is left over in `other`).
    let known = rucat.client().get(&id).await.expect("get");
    assert!(
        known.other.is_empty(),
        "fields the client lacks: {:?}",
        known.other
    );

    let engine = json(&["engine", "get", &id, "--output", "json"]);
    assert_eq!(
        (engine["id"].as_str(), engine["state"].as_str()),
        (Some(id.as_str()), Some("Running"))
    );
    assert_eq!(
        json(&["engine", "get", &id]),
        engine,
        "get prints JSON by default"
    );
    let page = json(&["engine", "list", "--output", "json"]);
    assert_eq!(page["engines"][0]["id"].as_str(), Some(id.as_str()));
    assert!(page.get("next_cursor").is_some(), "{page}");
    let logs = json(&["engine", "logs", &id, "--output", "json"]);
    assert!(
        logs["source"].is_string() && logs["log"].is_string(),
        "{logs}"
    );
    let events = json(&["engine", "events", &id, "--output", "json"]);
    let first = &events.as_array().expect("an array of events")[0];
    assert_eq!(first["type"], "created", "{events}");
    assert_eq!(first["cause"]["kind"], "user", "{events}");
    assert_eq!(
        first["actor"],
        serde_json::json!({"kind": "user", "name": "alice"})
    );
    let waited = json(&["engine", "wait", &id, "--output", "json", "--timeout", "10"]);
    assert_eq!(waited["state"], "Running");
    let made = bare(
        &["token", "create", "--user", "zoe", "--output", "json"],
        &[],
    );
    let made: Value = serde_json::from_slice(&made.stdout).expect("token JSON");
    assert!(
        made["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("rucat_")),
        "{made}"
    );

    // Tables: a header, then aligned rows.
    let table = stdout(&rucat.cli(&["engine", "list", "--output", "table"]));
    let header = table.lines().next().expect("a header");
    assert!(
        header.starts_with("ID ") && header.ends_with("ENDPOINT"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("Running")),
        "{table}"
    );
    let shown = stdout(&rucat.cli(&["engine", "get", &id, "--output", "table"]));
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("state ") && l.ends_with("Running")),
        "{shown}"
    );
    let history = stdout(&rucat.cli(&["engine", "events", &id]));
    let mut lines = history.lines();
    let header = lines.next().expect("a header");
    let column = header.find("CAUSE").expect("a CAUSE column");
    assert!(
        header.contains("BY") && header.ends_with("MESSAGE"),
        "{history}"
    );
    let created = lines.next().expect("the creation");
    assert!(created[column..].starts_with("user create"), "{history}");
    assert!(created.contains("user alice"), "{history}");

    // An unknown format: exit status 2, the formats named, nothing printed or asked.
    for args in [
        vec!["engine", "get", &id],
        vec!["engine", "list"],
        vec!["engine", "logs", &id],
        vec!["engine", "events", &id],
        vec!["engine", "wait", &id],
        vec!["engine", "sql", &id, "SELECT 1"],
        vec!["token", "create", "--user", "zoe"],
    ] {
        let mut args = args.clone();
        args.extend(["--output", "yaml"]);
        let output = rucat.cli(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let message = stderr(&output);
        assert!(
            message.contains("invalid value 'yaml' for '--output <FORMAT>'")
                && message.contains("[possible values: table, json]"),
            "{args:?}: {message}"
        );
    }
}
