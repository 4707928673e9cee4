//! The REST API against a real SQLite store, as a user's session would use it.

use crate::common::{spawn_api, TestApp, VERSION};
use reqwest::StatusCode;
use rucat::engine::state::user_transition;
use rucat::engine::{EngineState, UserOp, UserTarget};
use serde_json::{json, Value};

async fn post_json(app: &TestApp, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_raw(app: &TestApp, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Asserts the JSON error shape and returns its message.
fn error_message(body: &Value) -> String {
    let code = body["error"]["code"].as_str();
    let message = body["error"]["message"].as_str();
    assert!(
        code.is_some() && message.is_some(),
        "not the error shape: {body}"
    );
    message.unwrap_or_default().to_owned()
}

fn spark(name: &str) -> Value {
    json!({"name": name, "engine_type": "Spark", "version": VERSION, "configs": {"spark.executor.memory": "1g"}})
}

#[tokio::test]
async fn create_read_list_and_events() {
    let app = spawn_api(None).await;
    let (status, body) = post_json(&app, "/engines", &spark("etl")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();

    let engine: Value = app
        .http
        .get(app.url(&format!("/engines/{id}")))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(engine["id"], id.as_str());
    assert_eq!(engine["name"], "etl");
    assert_eq!(engine["owner"], "anonymous");
    assert_eq!(engine["engine_type"], "Spark");
    assert_eq!(engine["version"], VERSION);
    assert_eq!(engine["state"], "WaitToStart");
    assert_eq!(engine["configs"]["spark.executor.memory"], "1g");
    assert!(engine.get("endpoint").is_none());
    for time in ["create_time", "update_time"] {
        let text = engine[time].as_str().expect("time");
        assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "{text}");
    }

    let events = app.client.events(&id).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].to, EngineState::WaitToStart);
    let logs = app.client.logs(&id).await.expect("logs");
    assert_eq!((logs.source.as_str(), logs.log.as_str()), ("none", ""));
}

#[tokio::test]
async fn listing_is_paginated_and_filtered() {
    let app = spawn_api(None).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = post_json(&app, "/engines", &spark(&format!("e{i}"))).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    app.client.stop(&ids[1]).await.expect("stop");

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = None;
    loop {
        let page = app
            .client
            .list(None, Some(2), cursor.as_deref())
            .await
            .expect("page");
        sizes.push(page.engines.len());
        seen.extend(page.engines.into_iter().map(|e| e.id.to_string()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every engine once, in creation order");
    assert_eq!(sizes, vec![2, 2, 1], "full pages of 2, then the rest");

    let stopped = app
        .client
        .list(Some(EngineState::Terminated), None, None)
        .await
        .expect("filtered");
    let stopped: Vec<_> = stopped.engines.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(stopped, vec![ids[1].clone()]);
}

#[tokio::test]
async fn bad_create_requests_are_refused_and_store_nothing() {
    let app = spawn_api(None).await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("malformed JSON", b"{\"name\": ".to_vec(), StatusCode::BAD_REQUEST, "invalid request body"),
        ("not an object", b"[1, 2]".to_vec(), StatusCode::BAD_REQUEST, "invalid request body"),
        ("missing name", br#"{"engine_type": "Spark", "version": "4.3.0"}"#.to_vec(), StatusCode::BAD_REQUEST, "missing field `name`"),
        ("missing version", br#"{"name": "a", "engine_type": "Spark"}"#.to_vec(), StatusCode::BAD_REQUEST, "missing field `version`"),
        ("empty name", br#"{"name": "", "engine_type": "Spark", "version": "4.3.0"}"#.to_vec(), StatusCode::BAD_REQUEST, "must not be empty"),
        ("long name", format!(r#"{{"name": "{}", "engine_type": "Spark", "version": "4.3.0"}}"#, "n".repeat(129)).into_bytes(), StatusCode::BAD_REQUEST, "at most 128"),
        ("odd name", br#"{"name": "a/b", "engine_type": "Spark", "version": "4.3.0"}"#.to_vec(), StatusCode::BAD_REQUEST, "may only hold"),
        ("unknown engine type", br#"{"name": "a", "engine_type": "Flink", "version": "4.3.0"}"#.to_vec(), StatusCode::BAD_REQUEST, "unknown engine type \"Flink\""),
        ("unknown field", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "owner": "root"}"#.to_vec(), StatusCode::BAD_REQUEST, "unknown field `owner`"),
        ("unknown version", br#"{"name": "a", "engine_type": "Spark", "version": "3.1.0"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "available: 4.3.0"),
        ("reserved conf", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {"spark.master": "yarn"}}"#.to_vec(), StatusCode::BAD_REQUEST, "\"spark.master\""),
        ("token conf", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {"spark.connect.authenticate.token": "x"}}"#.to_vec(), StatusCode::BAD_REQUEST, "\"spark.connect.authenticate.token\""),
        ("escaping conf", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {"spark.kubernetes.namespace": "kube-system"}}"#.to_vec(), StatusCode::BAD_REQUEST, "\"spark.kubernetes.namespace\""),
        ("host volume conf", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {"spark.kubernetes.driver.volumes.hostPath.root.mount.path": "/"}}"#.to_vec(), StatusCode::BAD_REQUEST, "spark.kubernetes.driver.volumes.hostPath.root.mount.path"),
        ("non-Spark conf", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {"hadoop.x": "1"}}"#.to_vec(), StatusCode::BAD_REQUEST, "\"hadoop.x\""),
        ("non-string conf", br#"{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {"spark.x": 1}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid request body"),
        ("oversized body", format!(r#"{{"name": "a", "engine_type": "Spark", "version": "4.3.0", "configs": {{"spark.x": "{}"}}}}"#, "v".repeat(70 * 1024)).into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, "larger than"),
    ];
    for (what, body, status, needle) in cases {
        let (got, body) = post_raw(&app, "/engines", body).await;
        assert_eq!(got, status, "{what}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains(needle),
            "{what}: {message:?} lacks {needle:?}"
        );
    }
    assert_eq!(app.count().await, 0, "nothing stored");
}

/// Keys that would let a user out of their engine's sandbox, one per escape route.
const ESCAPING: &[&str] = &[
    "spark.kubernetes.namespace",
    "spark.kubernetes.context",
    "spark.kubernetes.driver.master",
    "spark.kubernetes.authenticate.driver.serviceAccountName",
    "spark.kubernetes.authenticate.executor.serviceAccountName",
    "spark.kubernetes.authenticate.serviceAccountName",
    "spark.kubernetes.authenticate.caCertFile",
    "spark.kubernetes.authenticate.oauthToken",
    "spark.kubernetes.authenticate.driver.mounted.oauthTokenFile",
    "spark.kubernetes.authenticate.submission.clientKeyFile",
    "spark.kubernetes.trust.certificates",
    "spark.kubernetes.driver.podTemplateFile",
    "spark.kubernetes.executor.podTemplateFile",
    "spark.kubernetes.executor.podTemplateContainerName",
    "spark.kubernetes.driver.pod.featureSteps",
    "spark.kubernetes.executor.pod.featureSteps",
    "spark.kubernetes.driver.volumes.hostPath.data.mount.path",
    "spark.kubernetes.executor.volumes.hostPath.root.options.path",
    "spark.kubernetes.executor.volumes.persistentVolumeClaim.c.options.claimName",
    "spark.kubernetes.file.upload.path",
    "spark.kubernetes.driver.secrets.db",
    "spark.kubernetes.executor.secrets.db",
    "spark.kubernetes.driver.secretKeyRef.PASSWORD",
    "spark.kubernetes.executor.secretKeyRef.PASSWORD",
    "spark.kubernetes.kerberos.tokenSecret.name",
    "spark.kubernetes.kerberos.krb5.configMapName",
    "spark.kubernetes.hadoop.configMapName",
    "spark.kubernetes.driver.label.app.kubernetes.io/managed-by",
    "spark.kubernetes.executor.label.rucat.io/engine-id",
    "spark.kubernetes.driver.annotation.x",
    "spark.kubernetes.executor.annotation.x",
    "spark.kubernetes.driver.service.label.x",
    "spark.kubernetes.executor.decommissionLabel",
    "spark.kubernetes.driverEnv.SPARK_USER",
    "spark.kubernetes.container.image",
    "spark.kubernetes.driver.container.image",
    "spark.kubernetes.executor.container.image",
    "spark.kubernetes.container.image.pullSecrets",
    "spark.kubernetes.container.image.pullPolicy",
    "spark.kubernetes.driver.pod.name",
    "spark.kubernetes.executor.podNamePrefix",
    "spark.kubernetes.executor.deleteOnTermination",
];

#[tokio::test]
async fn every_escaping_kubernetes_key_is_refused_by_name() {
    let app = spawn_api(None).await;
    for key in ESCAPING {
        let mut request = spark("escape");
        request["configs"] = json!({ *key: "x", "spark.executor.memory": "1g" });
        let (status, body) = post_json(&app, "/engines", &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
        assert_eq!(body["error"]["code"], "config_not_allowed", "{key}: {body}");
        let message = error_message(&body);
        assert!(message.contains(&format!("{key:?}")), "{key}: {message}");
    }
    assert_eq!(app.count().await, 0, "nothing stored");
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404_json() {
    let app = spawn_api(None).await;
    for path in [
        "/engines/0123456789abcdef0123456789abcdef",
        "/engines/not-an-id",
        "/engines/0123456789abcdef0123456789abcdef/events",
        "/engines/0123456789abcdef0123456789abcdef/logs",
        "/nowhere",
    ] {
        let response = app.http.get(app.url(path)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        error_message(&response.json().await.expect("json"));
    }
    for path in ["stop", "restart"] {
        let (status, body) = post_json(
            &app,
            &format!("/engines/0123456789abcdef0123456789abcdef/{path}"),
            &json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        error_message(&body);
    }
    let response = app
        .http
        .delete(app.url("/engines/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let response = app.http.put(app.url("/engines")).send().await.expect("put");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    error_message(&response.json().await.expect("json"));
}

#[tokio::test]
async fn bad_list_queries_are_400() {
    let app = spawn_api(None).await;
    for query in [
        "state=running",
        "limit=0",
        "limit=x",
        "limit=100000",
        "cursor=zz",
        "color=red",
    ] {
        let response = app
            .http
            .get(app.url(&format!("/engines?{query}")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        error_message(&response.json().await.expect("json"));
    }
}

/// Every (state, user operation) pair through the API: the allowed ones lead where the state
/// machine says, the others are 409 naming the current state and change nothing.
#[tokio::test]
async fn every_state_and_user_operation_pair() {
    let app = spawn_api(None).await;
    for state in EngineState::ALL {
        for op in UserOp::ALL {
            let engine = app.plant(state).await;
            let id = engine.id.as_str();
            let response = match op {
                UserOp::Stop => app.http.post(app.url(&format!("/engines/{id}/stop"))),
                UserOp::Restart => app.http.post(app.url(&format!("/engines/{id}/restart"))),
                UserOp::Delete => app.http.delete(app.url(&format!("/engines/{id}"))),
            }
            .send()
            .await
            .expect("request");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let after = app.store.get(&engine.id).await.expect("store");
            match user_transition(state, op) {
                Some(UserTarget::State(to)) => {
                    assert_eq!(status, StatusCode::ACCEPTED, "{state} {op:?}: {body}");
                    assert_eq!(body["state"], to.as_str());
                    assert_eq!(after.map(|e| e.state), Some(to), "{state} {op:?}");
                }
                Some(UserTarget::Removed) => {
                    assert_eq!(status, StatusCode::NO_CONTENT, "{state} {op:?}");
                    assert_eq!(after, None, "{state} {op:?}");
                    assert!(app
                        .store
                        .events(&engine.id)
                        .await
                        .expect("events")
                        .is_none());
                }
                None => {
                    assert_eq!(status, StatusCode::CONFLICT, "{state} {op:?}: {body}");
                    let message = error_message(&body);
                    assert!(message.contains(state.as_str()), "{message}");
                    assert_eq!(
                        after,
                        Some(engine.clone()),
                        "{state} {op:?} changed nothing"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn stop_keeps_the_endpoint_until_the_monitor_acts_and_restart_cancels() {
    let app = spawn_api(None).await;
    let engine = app.plant(EngineState::Running).await;
    let id = engine.id.as_str();
    // Users see the proxy's address for the engine, never the engine's own.
    let public = Some(format!("sc://localhost:15002/;x-rucat-engine={id}"));
    assert_eq!(app.client.get(id).await.expect("get").endpoint, public);
    let stopped = app.client.stop(id).await.expect("stop");
    assert_eq!(stopped.state, EngineState::WaitToTerminate);
    assert_eq!(stopped.endpoint, public);
    let restarted = app.client.restart(id).await.expect("restart");
    assert_eq!(restarted.state, EngineState::Running);
    assert_eq!(restarted.endpoint, public);
    // The store still knows where the engine itself is.
    let stored = app
        .store
        .get(&engine.id)
        .await
        .expect("get")
        .expect("engine");
    assert_eq!(stored.endpoint, engine.endpoint);
    let events = app.client.events(id).await.expect("events");
    let path: Vec<_> = events.iter().map(|e| e.to).collect();
    assert_eq!(
        path,
        vec![
            EngineState::Running,
            EngineState::WaitToTerminate,
            EngineState::Running
        ]
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_api(None).await;
    for path in ["/healthz", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn versions_are_what_a_create_accepts() {
    let app = spawn_api(None).await;
    let response = app
        .http
        .get(app.url("/versions"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"versions": [VERSION]}));
    // Each listed version is accepted by a create; another is refused naming the listed ones.
    for version in body["versions"].as_array().expect("versions") {
        let mut request = spark("listed");
        request["version"] = version.clone();
        let (status, body) = post_json(&app, "/engines", &request).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut request = spark("unlisted");
    request["version"] = json!("0.0.1");
    let (status, body) = post_json(&app, "/engines", &request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_message(&body).contains(VERSION), "{body}");
}

/// The web console's files: public (they hold no data), with their content types, a strict
/// Content-Security-Policy, `nosniff` and cache validators; unknown files are the JSON 404.
#[tokio::test]
async fn the_web_console_is_served_with_strict_headers() {
    let app = spawn_api(None).await;
    let page = app.http.get(app.url("/ui")).send().await.expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("cache-control"), "no-cache");
    let etag = header("etag");
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let html = page.text().await.expect("text");
    assert!(html.contains("<title>Rucat</title>"), "{html}");
    assert!(!html.contains("<script>"), "no inline script");

    // The same page at /ui/, and a 304 for a client that has it.
    let again = app.http.get(app.url("/ui/")).send().await.expect("get");
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.text().await.expect("text"), html);
    let cached = app
        .http
        .get(app.url("/ui"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // The assets the page names, by digest: cached for good; without the digest, revalidated.
    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let start = html
            .find(&format!("/ui/{name}?v="))
            .unwrap_or_else(|| panic!("the page names {name}: {html}"));
        let url = &html[start..];
        let url = &url[..url.find('"').expect("a quoted URL")];
        let response = app.http.get(app.url(url)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{url}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{url}");
        assert!(headers.contains_key("content-security-policy"), "{url}");
        assert_eq!(
            headers["cache-control"], "public, max-age=31536000, immutable",
            "{url}"
        );
        assert!(!response.bytes().await.expect("body").is_empty());
        let plain = app
            .http
            .get(app.url(&format!("/ui/{name}")))
            .send()
            .await
            .expect("get");
        assert_eq!(plain.headers()["cache-control"], "no-cache", "{name}");
        let stale = app
            .http
            .get(app.url(&format!("/ui/{name}?v=0123")))
            .send()
            .await
            .expect("get");
        assert_eq!(stale.headers()["cache-control"], "no-cache", "{name}");
    }

    let (status, body) = {
        let response = app
            .http
            .get(app.url("/ui/secrets.txt"))
            .send()
            .await
            .expect("get");
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_message(&body);
}

/// GET and the JSON answer.
async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = app.http.get(app.url(path)).send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn events_name_their_cause_and_are_filtered_and_paginated() {
    let app = spawn_api(None).await;
    let (status, body) = post_json(&app, "/engines", &spark("events")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    // Created, then stopped and restarted twice: five events, all the owner's doing.
    for op in ["stop", "restart", "stop", "restart"] {
        let (status, body) = post_json(&app, &format!("/engines/{id}/{op}"), &json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{op}: {body}");
    }
    let path = format!("/engines/{id}/events");
    let (status, all) = get_json(&app, &path).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let events = all["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 5, "{all}");
    assert!(all.get("next_cursor").is_none(), "one page: {all}");
    let causes: Vec<&Value> = events.iter().map(|e| &e["cause"]).collect();
    let operations = ["create", "stop", "restart", "stop", "restart"];
    for (cause, operation) in causes.iter().zip(operations) {
        assert_eq!(**cause, json!({"kind": "user", "operation": operation}));
    }
    for event in &events {
        assert_eq!(event["actor"], json!({"kind": "user", "name": "anonymous"}));
    }
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "created",
            "state_change",
            "state_change",
            "state_change",
            "state_change"
        ]
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // Filtered by type, and by cause.
    let (_, created) = get_json(&app, &format!("{path}?type=created")).await;
    assert_eq!(
        created["events"].as_array().map(Vec::len),
        Some(1),
        "{created}"
    );
    assert_eq!(created["events"][0]["to"], "WaitToStart");
    let (_, changes) = get_json(&app, &format!("{path}?type=state_change,attempt_failed")).await;
    assert_eq!(
        changes["events"].as_array().map(Vec::len),
        Some(4),
        "{changes}"
    );
    let (_, by_users) = get_json(&app, &format!("{path}?cause=user")).await;
    assert_eq!(by_users["events"].as_array().map(Vec::len), Some(5));
    let (_, by_monitors) = get_json(&app, &format!("{path}?cause=monitor,timeout")).await;
    assert_eq!(by_monitors["events"], json!([]), "{by_monitors}");

    // Pages of 2: [2, 2, 1], in order, each event once.
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("{path}?limit=2&cursor={cursor}"),
            None => format!("{path}?limit=2"),
        };
        let (status, page) = get_json(&app, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().expect("events");
        pages.push(events.len());
        seen.extend(events.iter().map(|e| e["id"].as_u64().expect("id")));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, ids);

    // Bad queries: 400 naming the problem.
    for (query, names) in [
        ("type=started", "started"),
        ("type=", "type"),
        ("cause=robot", "robot"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=abc", "cursor"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = get_json(&app, &format!("{path}?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
        assert!(error_message(&body).contains(names), "{query}: {body}");
    }
}

#[tokio::test]
async fn without_authentication_everyone_is_the_anonymous_admin() {
    let app = spawn_api(None).await;
    let (status, me) = get_json(&app, "/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me, json!({"user": "anonymous", "role": "admin"}));
}
