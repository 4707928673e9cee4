//! `/metrics` on the real binary: `rucat serve` (the REST listener, for admins once
//! authentication is on, and the metrics listener of its own, for anyone), `rucat monitor` and
//! `rucat proxy` alone on their metrics listeners, each page read with prometheus_client's
//! text-format parser.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rucat::engine::EngineState;
use serde_json::Value;

use super::harness::{repo_root, spark_python, Options, Rucat, SPARK_VERSION};
use super::token_create;
use crate::common::process::{listening, OnDrop, Process, Spawn};

/// How long a role may take to say where it listens.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

/// A page as prometheus_client's parser read it.
struct Page {
    text: String,
    families: Value,
    samples: Vec<(String, serde_json::Map<String, Value>, f64)>,
}

impl Page {
    fn parse(text: String) -> Page {
        use std::io::Write;
        let mut child = Command::new(spark_python())
            .arg(repo_root().join("crates/rucat/tests/e2e/parse_metrics.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run parse_metrics.py");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write the page");
        let output = child.wait_with_output().expect("parse_metrics.py");
        assert!(
            output.status.success(),
            "the parser refused the page: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let samples = parsed["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| {
                (
                    s[0].as_str().expect("name").to_owned(),
                    s[1].as_object().expect("labels").clone(),
                    s[2].as_f64().expect("value"),
                )
            })
            .collect();
        Page {
            families: parsed["families"].clone(),
            samples,
            text,
        }
    }

    /// The type of family `name` (counters without `_total`).
    fn family(&self, name: &str) -> &str {
        self.families[name].as_str().unwrap_or("absent")
    }

    /// The value of sample `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }

    /// A counter's value, 0 when the page has no sample of it yet.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

async fn scrape(url: &str, token: Option<&str>) -> (reqwest::StatusCode, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /metrics");
    let status = response.status();
    if status.is_success() {
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
    (status, response.text().await.expect("text"))
}

async fn page(url: &str, token: Option<&str>) -> Page {
    let (status, text) = scrape(url, token).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{url}: {text}");
    Page::parse(text)
}

/// One gRPC call to a proxy over HTTP/2 (a Spark Connect `Config` call, empty), with these
/// headers; the `grpc-status` it was answered with.
async fn grpc_call(proxy: SocketAddr, headers: &[(&str, &str)]) -> String {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::post(format!(
        "http://{proxy}/spark.connect.SparkConnectService/Config"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("an answer");
    let status = response.headers().get("grpc-status").cloned();
    let _ = response.into_body().collect().await;
    status
        .and_then(|s| s.to_str().ok().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_counts_requests_transitions_steps_platform_calls_and_refusals() {
    let (alice, alice_entry) = token_create("alice", false);
    let (admin, admin_entry) = token_create("root", true);
    let rucat = Rucat::start_with(Options {
        platform: Some("simulated".to_owned()),
        config: Some(format!(
            "{alice_entry}{admin_entry}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
        )),
        token: Some(alice.clone()),
    })
    .await;
    let rest = format!("http://{}/metrics", rucat.addr);
    let listener = listening(&rucat.server_log(), "metrics").expect("the metrics listener");
    let open = format!("http://{listener}/metrics");

    // On the REST listener, with authentication on: admins only.
    let (status, body) = scrape(&rest, None).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = scrape(&rest, Some(&alice)).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");

    let client = rucat.client();
    let id = client
        .create("metered", SPARK_VERSION, &Default::default())
        .await
        .expect("create");
    client
        .wait(&id, EngineState::Running, Duration::from_secs(30), |_| {})
        .await
        .expect("the simulated engine runs");

    let before = page(&rest, Some(&admin)).await;
    let read = [
        ("route", "/engines/{id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    for _ in 0..3 {
        client.get(&id).await.expect("get");
    }
    let unknown = client.get("0123456789abcdef0123456789abcdef").await;
    assert!(unknown.is_err(), "an unknown engine is 404");
    // Two refusals by the proxy: no engine named, and no credential.
    assert_eq!(grpc_call(rucat.proxy, &[]).await, "3");
    assert_eq!(
        grpc_call(rucat.proxy, &[("x-rucat-engine", id.as_str())]).await,
        "16"
    );

    let after = page(&rest, Some(&admin)).await;
    assert_eq!(
        after.value("rucat_http_requests_total", &read)
            - before.value("rucat_http_requests_total", &read),
        3.0,
        "three reads of /engines/{{id}}"
    );
    assert_eq!(
        after.count(
            "rucat_http_requests_total",
            &[
                ("route", "/engines/{id}"),
                ("method", "GET"),
                ("status", "404")
            ]
        ),
        1.0
    );
    assert_eq!(after.family("rucat_http_requests"), "counter");
    assert_eq!(
        after.family("rucat_http_request_duration_seconds"),
        "histogram"
    );
    let reads = after.value(
        "rucat_http_request_duration_seconds_count",
        &[("route", "/engines/{id}"), ("method", "GET")],
    );
    assert!(reads >= 4.0, "{reads}");
    assert_eq!(
        after.value(
            "rucat_http_request_duration_seconds_bucket",
            &[
                ("route", "/engines/{id}"),
                ("method", "GET"),
                ("le", "+Inf")
            ]
        ),
        reads
    );
    // Routes are templates: no engine id anywhere on the page.
    assert!(!after.text.contains(&id), "{}", after.text);

    assert_eq!(after.family("rucat_engines"), "gauge");
    assert_eq!(after.value("rucat_engines", &[("state", "Running")]), 1.0);
    assert_eq!(
        after.value("rucat_engines", &[("state", "WaitToStart")]),
        0.0
    );
    assert_eq!(after.value("rucat_store_up", &[]), 1.0);
    for (from, to) in [
        ("WaitToStart", "TriggerStart"),
        ("TriggerStart", "StartInProgress"),
        ("StartInProgress", "Running"),
    ] {
        assert_eq!(
            after.value(
                "rucat_engine_transitions_total",
                &[("from", from), ("to", to)]
            ),
            1.0,
            "{from} -> {to}"
        );
    }
    assert!(
        after.value(
            "rucat_monitor_steps_total",
            &[("kind", "start"), ("result", "ok"), ("error", "none")]
        ) >= 1.0
    );
    assert!(after.value("rucat_monitor_claim_latency_seconds_count", &[]) >= 1.0);
    assert!(after.value("rucat_monitor_pass_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        after.value("rucat_platform_calls_total", &[("op", "create")]),
        1.0
    );
    assert!(after.value("rucat_platform_calls_total", &[("op", "state")]) >= 1.0);
    assert_eq!(
        after.value(
            "rucat_platform_call_duration_seconds_count",
            &[("op", "create")]
        ),
        1.0
    );
    for (code, reason) in [
        ("INVALID_ARGUMENT", "no_engine_named"),
        ("UNAUTHENTICATED", "unauthenticated"),
    ] {
        assert_eq!(
            after.value(
                "rucat_proxy_refusals_total",
                &[("code", code), ("reason", reason)]
            ) - before.value(
                "rucat_proxy_refusals_total",
                &[("code", code), ("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }

    // A stop is counted where the server applies it.
    client.stop(&id).await.expect("stop");
    let stopped = page(&open, None).await;
    assert_eq!(
        stopped.value(
            "rucat_engine_transitions_total",
            &[("from", "Running"), ("to", "WaitToTerminate")]
        ),
        1.0
    );
    // The metrics listener needs no credential and serves the same families.
    for family in [
        "rucat_engines",
        "rucat_engine_transitions",
        "rucat_http_requests",
        "rucat_monitor_steps",
        "rucat_platform_calls",
        "rucat_proxy_refusals",
    ] {
        assert_ne!(stopped.family(family), "absent", "{family}");
    }
}

/// A `rucat` role started alone on `DIR/data`; stopped (SIGTERM, then SIGKILL) when dropped.
fn start_role(dir: &std::path::Path, role: &str, args: &[&str]) -> Process {
    Spawn::new(role, dir.join(format!("{role}.log")))
        .arg(role)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .log_filter("info")
        .env_remove("RUCAT_TOKEN")
        .env_remove("RUCAT_METRICS_ENABLED")
        .on_drop(OnDrop::Stop)
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_and_proxy_alone_serve_metrics_on_their_own_listener() {
    use rucat::store::Store;

    let dir = tempfile::tempdir().expect("temp dir");
    let mut monitor = start_role(dir.path(), "monitor", &["--platform", "simulated"]);
    let monitor_metrics = monitor.wait_listening("metrics", LISTEN_WITHIN).await;
    let mut proxy = start_role(dir.path(), "proxy", &["--proxy-listen", "127.0.0.1:0"]);
    let proxy_metrics = proxy.wait_listening("metrics", LISTEN_WITHIN).await;
    let proxy_addr = proxy
        .wait_listening("Spark Connect proxy", LISTEN_WITHIN)
        .await;

    // No server: the engine goes into the store the monitor and the proxy share.
    let url = format!(
        "sqlite://{}",
        dir.path().join("data").join("rucat.db").display()
    );
    let store = rucat::store::sqlite::SqliteStore::open(&url)
        .await
        .expect("open the store");
    let now = chrono::Utc::now();
    let engine = rucat::engine::Engine {
        version: SPARK_VERSION.to_owned(),
        next_update_time: Some(now),
        create_time: now,
        update_time: now,
        ..rucat::store::conformance::sample_engine("alone")
    };
    store.insert(&engine).await.expect("insert");
    let mut running = false;
    for _ in 0..300 {
        let state = store
            .get(&engine.id)
            .await
            .expect("get")
            .expect("engine")
            .state;
        if state == EngineState::Running {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "the monitor runs the engine: {}", monitor.log());

    let page_of_monitor = page(&format!("http://{monitor_metrics}/metrics"), None).await;
    assert_eq!(
        page_of_monitor.value("rucat_engines", &[("state", "Running")]),
        1.0
    );
    assert_eq!(
        page_of_monitor.value(
            "rucat_engine_transitions_total",
            &[("from", "StartInProgress"), ("to", "Running")]
        ),
        1.0
    );
    assert_eq!(
        page_of_monitor.value("rucat_platform_calls_total", &[("op", "create")]),
        1.0
    );
    assert!(
        page_of_monitor.value(
            "rucat_monitor_steps_total",
            &[("kind", "check_start"), ("result", "ok"), ("error", "none")]
        ) >= 1.0
    );
    // Only the families of the parts a process runs.
    assert_eq!(page_of_monitor.family("rucat_proxy_streams"), "absent");
    assert_eq!(
        page_of_monitor.family("rucat_http_requests"),
        "absent",
        "a monitor answers no REST requests"
    );

    // The proxy (authentication off: everyone is the anonymous admin) refuses a call that
    // names no engine, and one for an engine that does not exist.
    assert_eq!(grpc_call(proxy_addr, &[]).await, "3");
    assert_eq!(
        grpc_call(
            proxy_addr,
            &[("x-rucat-engine", "0123456789abcdef0123456789abcdef")]
        )
        .await,
        "5"
    );
    let page_of_proxy = page(&format!("http://{proxy_metrics}/metrics"), None).await;
    assert_eq!(
        page_of_proxy.value(
            "rucat_proxy_refusals_total",
            &[("code", "INVALID_ARGUMENT"), ("reason", "no_engine_named")]
        ),
        1.0
    );
    assert_eq!(
        page_of_proxy.value(
            "rucat_proxy_refusals_total",
            &[("code", "NOT_FOUND"), ("reason", "not_found")]
        ),
        1.0
    );
    assert_eq!(page_of_proxy.value("rucat_proxy_streams_total", &[]), 0.0);
    for family in [
        "rucat_engines",
        "rucat_engine_transitions",
        "rucat_http_requests",
        "rucat_monitor_steps",
        "rucat_platform_calls",
    ] {
        assert_eq!(page_of_proxy.family(family), "absent", "{family}");
    }
    // Its own port (on loopback) answers its counters too, over HTTP/1.1.
    let own = page(&format!("http://{proxy_addr}/metrics"), None).await;
    assert_eq!(
        own.value(
            "rucat_proxy_refusals_total",
            &[("code", "NOT_FOUND"), ("reason", "not_found")]
        ),
        1.0
    );
    store.close().await;
}
