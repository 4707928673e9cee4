//! The API contract: `rucat openapi` and `GET /openapi.json` serve one OpenAPI 3.1 document that
//! covers every route of the router with its security, and the real server keeps to it under
//! schemathesis' generated requests (positive, negative and stateful, with and without a
//! credential).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::harness::{Options, Rucat, SPARK_VERSION};
use super::token_create;
use crate::common::process::cli;

/// What schemathesis checks on every response: no 5xx, and nothing the document does not say
/// (status codes, content types, headers, bodies).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// The fewest generated cases the runs must add up to.
const MIN_CASES: u64 = 2000;

/// The most stateful runs made until one of them has seen every step of an engine's life.
const STATEFUL_RUNS: u32 = 4;

/// The public operations: everything else requires a credential.
const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// A user (alice), an admin (root) and the simulated platform offering the version the
/// document's examples name.
struct Server {
    rucat: Rucat,
    alice: String,
    root: String,
}

async fn server() -> Server {
    let (alice, alice_entry) = token_create("alice", false);
    let (root, root_entry) = token_create("root", true);
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".into()),
        config: Some(format!(
            "{alice_entry}{root_entry}\n[simulated]\nversions = [\"{SPARK_VERSION}\"]\n"
        )),
        token: Some(alice.clone()),
    })
    .await;
    Server { rucat, alice, root }
}

/// The (path, method) pairs the router serves, read from the router's sources (every
/// `.route("PATH", get(..).post(..))` under src/server), without the web console's HTML pages.
fn routed() -> BTreeSet<(String, String)> {
    let mut files = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/server")];
    let mut routes = BTreeSet::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read src/server") {
                files.push(entry.expect("dir entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read a source file");
        for (_, rest) in source
            .match_indices(".route(\"")
            .map(|(i, _)| source.split_at(i + 8))
        {
            let Some((route, rest)) = rest.split_once('"') else {
                continue;
            };
            // The method routers: `get(x)`, `.post(y)`, … up to the `.route(` call's end.
            let call = &rest[..rest.find("\n        .").unwrap_or(rest.len()).min(200)];
            for method in METHODS {
                let used = call
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !call.as_bytes()[i - 1].is_ascii_alphanumeric());
                if used && !(route == "/ui" || route.starts_with("/ui/")) {
                    routes.insert((route.to_owned(), method.to_owned()));
                }
            }
        }
    }
    routes
}

/// Every (path, method, operation) of the document.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((path.clone(), method.to_owned(), operation.clone()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_route_with_its_security() {
    let Server { rucat, .. } = server().await;

    // `rucat openapi` needs no server nor configuration (not even a readable one), and prints
    // what the server serves to anyone (no credential).
    let printed = cli(["openapi"])
        .env("RUCAT_CONFIG", rucat.dir.path().join("no-such-rucat.toml"))
        .output()
        .expect("run rucat openapi");
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).expect("utf-8");
    let response = reqwest::get(format!("http://{}/openapi.json", rucat.addr))
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the document's content type"
    );
    let served = response.text().await.expect("body");
    assert_eq!(printed.trim_end(), served.trim_end());
    let document: Value = serde_json::from_str(&served).expect("the document is JSON");

    // A valid OpenAPI 3.1 document, by openapi-spec-validator.
    let path = rucat.dir.path().join("openapi.json");
    std::fs::write(&path, &served).expect("write the document");
    let validated = Command::new(tools().join("bin/python"))
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import OpenAPIV31SpecValidator, validate\n\
             validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)",
        ])
        .arg(&path)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        validated.status.success(),
        "not a valid OpenAPI 3.1 document: {}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // OpenAPI 3.1, with the bearer scheme (API token or OIDC JWT).
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        document["openapi"]
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        serde_json::json!({
            "type": "http",
            "scheme": "bearer",
            "description": document["components"]["securitySchemes"]["bearer"]["description"],
        })
    );

    // Every route the router serves is documented, and every documented operation is routed.
    let documented: BTreeSet<(String, String)> = operations(&document)
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect();
    let routed = routed();
    for route in [
        "/engines",
        "/engines/{id}/events",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(
            routed.iter().any(|(path, _)| path == route),
            "the router's sources were not read: {routed:?}"
        );
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    let http = reqwest::Client::new();
    for (path, method, operation) in operations(&document) {
        let url = format!(
            "http://{}{}",
            rucat.addr,
            path.replace("{id}", "0123456789abcdef0123456789abcdef")
        );
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let response = http
            .request(method.clone(), &url)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status != 405 && !body.contains("no route for"),
            "{method} {path} is documented but not routed: {status} {body}"
        );

        // Authenticated operations say so, and answer 401 without a credential, as documented
        // (with the error body and the Bearer challenge); the public ones need none.
        let responses = &operation["responses"];
        if PUBLIC.contains(&path.as_str()) {
            assert!(operation.get("security").is_none(), "{method} {path}");
            assert!(
                (200..300).contains(&status),
                "{method} {path}: {status} {body}"
            );
        } else {
            assert_eq!(
                operation["security"],
                serde_json::json!([{"bearer": []}]),
                "{method} {path}"
            );
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(
                responses["401"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{method} {path}"
            );
            assert!(
                responses["401"]["headers"]
                    .get("WWW-Authenticate")
                    .is_some(),
                "{method} {path}"
            );
            let error: Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(error["error"]["code"], "unauthenticated");
        }
    }

    // The stateful flow's links: create → get → stop → restart → delete.
    let links = |path: &str, method: &str, status: &str| {
        document["paths"][path][method]["responses"][status]["links"].clone()
    };
    let created = links("/engines", "post", "201");
    for (name, target) in [
        ("GetEngine", "getEngine"),
        ("StopEngine", "stopEngine"),
        ("RestartEngine", "restartEngine"),
        ("DeleteEngine", "deleteEngine"),
    ] {
        assert_eq!(created[name]["operationId"], target, "{created}");
        assert_eq!(created[name]["parameters"]["id"], "$response.body#/id");
    }
    assert_eq!(
        links("/engines/{id}/stop", "post", "202")["RestartEngine"]["parameters"]["id"],
        "$request.path.id"
    );
    let ids: BTreeSet<String> = operations(&document)
        .iter()
        .filter_map(|(_, _, operation)| operation["operationId"].as_str().map(str::to_owned))
        .collect();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                for link in response["links"].as_object().into_iter().flatten() {
                    let target = link.1["operationId"].as_str().unwrap_or_default();
                    assert!(ids.contains(target), "{method} {path} {status}: {target}");
                }
            }
        }
    }
}

/// The virtualenv scripts/setup.sh --schemathesis makes: schemathesis and
/// openapi-spec-validator.
fn tools() -> PathBuf {
    let venv = std::env::var_os("RUCAT_SCHEMATHESIS")
        .map(PathBuf::from)
        .expect(
            "RUCAT_SCHEMATHESIS is not set: run scripts/setup.sh --schemathesis and point it \
             at ~/.cache/rucat/schemathesis (scripts/test.sh does)",
        );
    assert!(
        venv.join("bin/st").is_file(),
        "no schemathesis in {}",
        venv.display()
    );
    venv
}

/// schemathesis' `st`.
fn schemathesis() -> PathBuf {
    tools().join("bin/st")
}

/// Where the reports go: target/schemathesis (kept as the run's artifacts).
fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("schemathesis");
    std::fs::create_dir_all(&dir).expect("create target/schemathesis");
    dir
}

/// What one schemathesis run did: its cases, and the statuses each phase got per operation.
struct Run {
    cases: u64,
    /// (phase, "METHOD /path", status)
    seen: BTreeSet<(String, String, u16)>,
}

/// Every phase.
const ALL_PHASES: &str = "examples,coverage,fuzzing,stateful";

/// Runs schemathesis against the server's own document: the `phases` (examples, coverage,
/// fuzzing, stateful), positive and negative data, `max_examples` per operation (and, with
/// `max_time`, fuzzing and stateful scenarios repeated for that many seconds), with
/// `authorization` or without a credential. Fails on any failure or error it reports.
async fn run_schemathesis(
    rucat: &Rucat,
    name: &str,
    authorization: Option<&str>,
    phases: &str,
    max_examples: u32,
    max_time: Option<u32>,
) -> Run {
    let reports = report_dir();
    let junit = reports.join(format!("{name}.junit.xml"));
    let ndjson = reports.join(format!("{name}.ndjson"));
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .arg("run")
        .arg(format!("http://{}/openapi.json", rucat.addr))
        .args(["--checks", CHECKS, "--mode", "all"])
        .args(["--phases", phases])
        .args(["--max-examples", &max_examples.to_string()])
        // One worker: hypothesis' lambda introspection is not thread-safe on Python 3.11.
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "junit,ndjson"])
        .arg("--report-junit-path")
        .arg(&junit)
        .arg("--report-ndjson-path")
        .arg(&ndjson)
        .current_dir(rucat.dir.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    if let Some(value) = authorization {
        command.args(["-H", &format!("Authorization: {value}")]);
    }
    if let Some(seconds) = max_time {
        command.args(["--max-time", &seconds.to_string()]);
    }
    let output = command.output().await.expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    std::fs::write(reports.join(format!("{name}.txt")), &stdout).expect("write the output");
    eprintln!("schemathesis ({name}):\n{stdout}");
    assert!(
        output.status.success(),
        "schemathesis ({name}) failed; reports in {}:\n{stdout}\n{stderr}",
        reports.display()
    );
    // "Test cases:\n  1234 generated, 1234 passed"
    let cases = stdout
        .split_once("Test cases:")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no case count in schemathesis' output:\n{stdout}"));
    let summary = stdout.rsplit_once("SUMMARY").map_or("", |(_, s)| s);
    for problem in ["Failures:", "Errors:"] {
        assert!(
            !summary.contains(problem),
            "schemathesis ({name}) reports {problem}:\n{stdout}"
        );
    }

    // The events file: every check of every case passed, and which statuses each phase saw.
    let mut seen = BTreeSet::new();
    let mut checked = 0u64;
    let events = std::fs::read_to_string(&ndjson).expect("schemathesis' events file");
    for line in events.lines() {
        let event: Value = serde_json::from_str(line).expect("an event");
        let Some(finished) = event.get("ScenarioFinished") else {
            continue;
        };
        let phase = finished["phase"].as_str().unwrap_or_default().to_owned();
        let recorder = &finished["recorder"];
        for (id, interaction) in recorder["interactions"].as_object().into_iter().flatten() {
            let case = &recorder["cases"][id]["value"];
            let operation = format!(
                "{} {}",
                case["method"].as_str().unwrap_or_default(),
                case["path"].as_str().unwrap_or_default()
            );
            if let Some(status) = interaction["response"]["status_code"].as_u64() {
                seen.insert((phase.clone(), operation, status as u16));
            }
        }
        for (_, checks) in recorder["checks"].as_object().into_iter().flatten() {
            for check in checks.as_array().into_iter().flatten() {
                checked += 1;
                assert_eq!(check["status"], "success", "schemathesis ({name}): {check}");
            }
        }
    }
    assert!(checked >= cases, "{checked} checks for {cases} cases");
    Run { cases, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_departure_from_the_document() {
    let Server { rucat, alice, root } = server().await;

    // A user: the bulk of the cases (300 examples an operation gave 2,515 to 3,231 of them;
    // 400 leave a margin over the 2,000 asked for).
    let user = run_schemathesis(
        &rucat,
        "user",
        Some(&format!("Bearer {alice}")),
        ALL_PHASES,
        400,
        None,
    )
    .await;
    // The stateful phase follows the links through an engine's life. Its scenarios are drawn
    // at random, and a run of all phases makes only a score of them (once none happened to
    // delete an engine it could delete): a stateful run of its own repeats them for 20 s. Even
    // that once drew no valid create in 561 scenarios, so further runs (each checked in full)
    // are added until every step of the life has been seen, at most STATEFUL_RUNS in all.
    let lifecycle = [
        ("POST /engines", 201),
        ("GET /engines/{id}", 200),
        ("POST /engines/{id}/stop", 202),
        ("POST /engines/{id}/restart", 202),
        ("DELETE /engines/{id}", 204),
    ];
    let mut stateful = BTreeSet::new();
    for round in 1..=STATEFUL_RUNS {
        let run = run_schemathesis(
            &rucat,
            &format!("stateful-{round}"),
            Some(&format!("Bearer {alice}")),
            "stateful",
            400,
            Some(20),
        )
        .await;
        stateful.extend(run.seen);
        let missing: Vec<_> = lifecycle
            .iter()
            .filter(|(operation, status)| {
                !stateful.contains(&("stateful".to_owned(), (*operation).to_owned(), *status))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            round < STATEFUL_RUNS,
            "{STATEFUL_RUNS} stateful runs never got {missing:?}: {stateful:?}"
        );
        eprintln!("stateful run {round} never got {missing:?}; another run");
    }
    // Negative data was sent, and refused as documented.
    assert!(user
        .seen
        .iter()
        .any(|(_, op, status)| op == "POST /engines" && *status == 400));
    assert!(user
        .seen
        .iter()
        .any(|(_, op, status)| op == "GET /engines" && *status == 403));

    // An admin: /metrics and other owners answer.
    let admin = run_schemathesis(
        &rucat,
        "admin",
        Some(&format!("Bearer {root}")),
        ALL_PHASES,
        25,
        None,
    )
    .await;
    assert!(admin
        .seen
        .iter()
        .any(|(_, op, status)| op == "GET /metrics" && *status == 200));

    // No credential, then a refused one: 401 everywhere but the public routes, never a 5xx.
    let anonymous = run_schemathesis(&rucat, "anonymous", None, ALL_PHASES, 25, None).await;
    let refused = run_schemathesis(
        &rucat,
        "refused",
        Some("Bearer rucat_not-a-token"),
        ALL_PHASES,
        25,
        None,
    )
    .await;
    for run in [&anonymous, &refused] {
        assert!(run
            .seen
            .iter()
            .all(|(_, op, status)| PUBLIC.iter().any(|p| op.ends_with(p))
                || *status == 401
                || *status == 405));
    }

    let total = user.cases + admin.cases + anonymous.cases + refused.cases;
    eprintln!(
        "schemathesis: {total} cases (user {}, admin {}, anonymous {}, refused {})",
        user.cases, admin.cases, anonymous.cases, refused.cases
    );
    assert!(
        total >= MIN_CASES,
        "only {total} cases, fewer than {MIN_CASES}"
    );
    assert!(
        user.cases >= MIN_CASES,
        "only {} authenticated cases",
        user.cases
    );
    assert!(
        !rucat.server_log().contains("panicked"),
        "{}",
        rucat.server_log()
    );
}
