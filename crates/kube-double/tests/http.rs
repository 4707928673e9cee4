//! The double over real HTTP from a plain client: the requests and answers kube-rs relies on.

use std::time::Duration;

use kube_double::{Fault, KubeDouble, Request};
use reqwest::StatusCode;
use serde_json::{json, Value};

const NS: &str = "spark";

/// A plain HTTP client on the double.
struct Api {
    double: KubeDouble,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> Api {
        Api {
            double: KubeDouble::start().await,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.double.url())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("the double answers");
        let status = response.status();
        let content_type = response.headers()["content-type"].clone();
        assert_eq!(content_type, "application/json");
        (status, response.json().await.expect("a JSON body"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    async fn delete(&self, path: &str, options: Option<Value>) -> (StatusCode, Value) {
        let request = self.http.delete(self.url(path));
        let request = match options {
            Some(options) => request.json(&options),
            None => request,
        };
        self.send(request).await
    }

    async fn create_pod(&self, name: &str, labels: Value) -> Value {
        let (status, pod) = self
            .post(&format!("/api/v1/namespaces/{NS}/pods"), &pod(name, labels))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{pod}");
        pod
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the double answers");
        (response.status(), response.text().await.expect("text"))
    }

    async fn watch(&self, path_and_query: &str) -> Events {
        let response = self
            .http
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("the double answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        Events {
            response,
            buffer: Vec::new(),
        }
    }
}

/// A watch stream, event by event.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    /// The next event; `None` when the stream ends. Fails after 5 s of silence.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("a JSON event"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("an event within 5 s")
                .expect("the stream reads");
            self.buffer.extend_from_slice(&chunk?);
        }
    }

    /// The next event's type and object name (or resourceVersion, for a bookmark).
    async fn next_brief(&mut self) -> (String, String) {
        let event = self.next().await.expect("an event");
        let object = &event["object"];
        let what = match &object["metadata"]["name"] {
            Value::String(name) => name.clone(),
            _ => object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        };
        (event["type"].as_str().expect("a type").to_owned(), what)
    }
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "spark", "image": "apache/spark:4.0.1"}]},
    })
}

fn pods_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods")
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| o["metadata"]["name"].as_str().expect("name"))
        .collect()
}

#[tokio::test]
async fn create_get_delete_and_the_errors_kubernetes_gives() {
    let api = Api::start().await;
    let created = api.create_pod("driver", json!({"app": "rucat"})).await;
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], NS);
    assert_eq!(meta["uid"].as_str().expect("uid").len(), 36);
    assert!(meta["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse::<u64>()
        .is_ok());
    assert!(meta["creationTimestamp"]
        .as_str()
        .expect("time")
        .ends_with('Z'));
    assert_eq!(created["status"], json!({"phase": "Pending"}));
    assert_eq!(api.double.pod(NS, "driver"), Some(created.clone()));

    let (status, got) = api.get(&format!("{}/driver", pods_path())).await;
    assert_eq!((status, &got), (StatusCode::OK, &created));

    let (status, conflict) = api.post(&pods_path(), &pod("driver", json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["kind"], "Status");
    assert_eq!(conflict["apiVersion"], "v1");
    assert_eq!(conflict["status"], "Failure");
    assert_eq!(conflict["reason"], "AlreadyExists");
    assert_eq!(conflict["code"], 409);
    assert_eq!(conflict["message"], "pods \"driver\" already exists");

    let (status, invalid) = api.post(&pods_path(), &json!({"metadata": {}})).await;
    assert_eq!(
        (status, &invalid["reason"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("Invalid"))
    );
    let (status, _) = api.post(&pods_path(), &pod("Not_A_Name", json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, generated) = api
        .post(
            &pods_path(),
            &json!({"metadata": {"generateName": "exec-"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(generated["metadata"]["name"]
        .as_str()
        .expect("name")
        .starts_with("exec-"));
    let (status, _) = api
        .post(
            &format!("{}?dryRun=All", pods_path()),
            &pod("dry", json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        api.double.pod(NS, "dry").is_none(),
        "a dry run stores nothing"
    );

    let (status, deleted) = api.delete(&format!("{}/driver", pods_path()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["metadata"]["uid"], created["metadata"]["uid"]);
    let (status, missing) = api.get(&format!("{}/driver", pods_path())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["reason"], "NotFound");
    assert_eq!(missing["message"], "pods \"driver\" not found");
    let (status, _) = api.delete(&format!("{}/driver", pods_path()), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, unknown) = api.get("/apis/apps/v1/namespaces/spark/deployments").await;
    assert_eq!(
        (status, &unknown["kind"]),
        (StatusCode::NOT_FOUND, &json!("Status"))
    );
    for unserved in [
        "/api/v1/namespaces/spark/endpoints",
        "/api/v1/namespaces/spark/networkpolicies",
        "/apis/networking.k8s.io/v1/namespaces/spark/pods",
        "/apis/networking.k8s.io/v2/namespaces/spark/networkpolicies",
        "/apis/networking.k8s.io/v1",
    ] {
        assert_eq!(
            api.get(unserved).await.0,
            StatusCode::NOT_FOUND,
            "{unserved}"
        );
    }
    let (status, bad) = api
        .send(api.http.put(api.url(&format!("{}/x", pods_path()))))
        .await;
    assert_eq!(
        (status, &bad["reason"]),
        (StatusCode::METHOD_NOT_ALLOWED, &json!("MethodNotAllowed"))
    );
}

#[tokio::test]
async fn lists_select_by_label_and_field_and_page() {
    let api = Api::start().await;
    api.create_pod("a", json!({"app": "rucat", "tier": "driver"}))
        .await;
    api.create_pod("b", json!({"app": "rucat"})).await;
    api.create_pod("c", json!({"app": "other"})).await;
    let (status, other_ns) = api
        .post(
            "/api/v1/namespaces/elsewhere/pods",
            &pod("d", json!({"app": "rucat"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other_ns}");

    let list = |query: &str| api.get_owned(format!("{}?{query}", pods_path()));
    let (status, all) = list("").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["kind"], "PodList");
    assert_eq!(all["apiVersion"], "v1");
    assert_eq!(
        all["metadata"]["resourceVersion"],
        api.double.resource_version().to_string()
    );
    assert_eq!(names(&all), ["a", "b", "c"]);
    assert_eq!(
        names(&list("labelSelector=app%3Drucat").await.1),
        ["a", "b"]
    );
    assert_eq!(names(&list("labelSelector=app!%3Drucat").await.1), ["c"]);
    assert_eq!(names(&list("labelSelector=tier").await.1), ["a"]);
    assert_eq!(
        names(&list("labelSelector=app%3Drucat%2C!tier").await.1),
        ["b"]
    );
    assert_eq!(
        names(&list("labelSelector=app+in+(other%2Cx)").await.1),
        ["c"]
    );
    assert_eq!(
        names(&list("fieldSelector=metadata.name%3Db").await.1),
        ["b"]
    );
    let (status, bad) = list("labelSelector=%3Dx").await;
    assert_eq!(
        (status, &bad["reason"]),
        (StatusCode::BAD_REQUEST, &json!("BadRequest"))
    );

    let (_, everywhere) = api.get("/api/v1/pods?labelSelector=app%3Drucat").await;
    assert_eq!(
        names(&everywhere),
        ["d", "a", "b"],
        "by namespace, then name"
    );

    // kube-rs's watcher lists with limit=500&resourceVersion=0&resourceVersionMatch=NotOlderThan.
    let (_, first) = list("limit=2&resourceVersion=0&resourceVersionMatch=NotOlderThan").await;
    assert_eq!(names(&first), ["a", "b"]);
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("a continue token");
    let (_, rest) = list(&format!("limit=2&continue={token}")).await;
    assert_eq!(names(&rest), ["c"]);
    assert!(rest["metadata"].get("continue").is_none());
}

impl Api {
    async fn get_owned(&self, path: String) -> (StatusCode, Value) {
        self.get(&path).await
    }
}

#[tokio::test]
async fn services_are_created_listed_and_deleted() {
    let api = Api::start().await;
    let path = format!("/api/v1/namespaces/{NS}/services");
    let headless = json!({"metadata": {"name": "driver"}, "spec": {"clusterIP": "None", "ports": [{"port": 15002}]}});
    let (status, created) = api.post(&path, &headless).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["kind"], "Service");
    assert_eq!(created["spec"]["clusterIP"], "None");
    let (_, plain) = api.post(&path, &json!({"metadata": {"name": "ui"}})).await;
    assert!(plain["spec"]["clusterIP"]
        .as_str()
        .expect("ip")
        .starts_with("10.96."));
    let (status, _) = api
        .post(&path, &json!({"metadata": {"name": "9-not-a-label"}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (_, list) = api.get(&path).await;
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(names(&list), ["driver", "ui"]);
    let (status, _) = api.get(&format!("{path}/driver")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.delete(&format!("{path}/driver"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(api.double.service(NS, "driver").is_none());
    assert_eq!(api.double.services(NS).len(), 1);
}

#[tokio::test]
async fn a_watch_follows_changes_after_its_resource_version() {
    let api = Api::start().await;
    api.create_pod("before", json!({"app": "rucat"})).await;
    let (_, list) = api
        .get(&format!("{}?labelSelector=app%3Drucat", pods_path()))
        .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();

    // What kube-rs's watcher asks after its list.
    let mut events = api
        .watch(&format!(
            "{}?watch=true&timeoutSeconds=290&labelSelector=app%3Drucat&allowWatchBookmarks=true&resourceVersion={rv}",
            pods_path()
        ))
        .await;
    api.create_pod("other", json!({"app": "other"})).await;
    api.create_pod("driver", json!({"app": "rucat"})).await;
    assert_eq!(events.next_brief().await, ("ADDED".into(), "driver".into()));

    assert!(api
        .double
        .set_pod_status(NS, "driver", json!({"phase": "Running"})));
    let modified = events.next().await.expect("an event");
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["status"]["phase"], "Running");
    assert_eq!(
        modified["object"]["metadata"]["resourceVersion"],
        api.double.resource_version().to_string()
    );

    // Leaving the selection is a deletion to this watch; entering it an addition.
    api.double.update_pod(NS, "driver", |p| {
        p["metadata"]["labels"]["app"] = "gone".into()
    });
    assert_eq!(
        events.next_brief().await,
        ("DELETED".into(), "driver".into())
    );
    api.double.update_pod(NS, "other", |p| {
        p["metadata"]["labels"]["app"] = "rucat".into()
    });
    assert_eq!(events.next_brief().await, ("ADDED".into(), "other".into()));

    let (status, _) = api.delete(&format!("{}/before", pods_path()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        events.next_brief().await,
        ("DELETED".into(), "before".into())
    );

    // Idle: a bookmark at the current resourceVersion.
    let (kind, rv) = events.next_brief().await;
    assert_eq!(
        (kind.as_str(), rv),
        ("BOOKMARK", api.double.resource_version().to_string())
    );

    // The request log marks watches.
    let watches: Vec<Request> = api
        .double
        .requests()
        .into_iter()
        .filter(|r| r.watch)
        .collect();
    assert_eq!(watches.len(), 1);
    assert_eq!(watches[0].path, pods_path());
    assert!(watches[0].query.contains("allowWatchBookmarks=true"));
}

#[tokio::test]
async fn a_watch_from_zero_starts_with_everything_and_ends_on_timeout() {
    let api = Api::start().await;
    api.create_pod("a", json!({})).await;
    api.create_pod("b", json!({})).await;
    let mut events = api
        .watch(&format!(
            "{}?watch=1&resourceVersion=0&timeoutSeconds=1",
            pods_path()
        ))
        .await;
    assert_eq!(events.next_brief().await, ("ADDED".into(), "a".into()));
    assert_eq!(events.next_brief().await, ("ADDED".into(), "b".into()));
    assert!(
        events.next().await.is_none(),
        "ends after timeoutSeconds, no bookmarks asked"
    );

    // Streaming list: initial events, then the bookmark that marks their end.
    let mut events = api
        .watch(&format!(
            "{}?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0",
            pods_path()
        ))
        .await;
    assert_eq!(events.next_brief().await, ("ADDED".into(), "a".into()));
    assert_eq!(events.next_brief().await, ("ADDED".into(), "b".into()));
    let end = events.next().await.expect("the end bookmark");
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["kind"], "Pod");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn expired_versions_and_closed_watches() {
    let api = Api::start().await;
    let created = api.create_pod("a", json!({})).await;
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let watch_from = |rv: String| format!("{}?watch=true&resourceVersion={rv}", pods_path());

    let mut open = api.watch(&watch_from(rv.clone())).await;
    api.double.expire_resource_versions();
    let error = open.next().await.expect("an error event");
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(open.next().await.is_none());

    // Resuming from before the expiry: 200, one ERROR 410, the end (as the real watch cache).
    let mut stale = api.watch(&watch_from(rv)).await;
    assert_eq!(
        stale.next().await.expect("an error event")["object"]["code"],
        410
    );
    assert!(stale.next().await.is_none());

    // A fresh list's resourceVersion is watchable.
    let (_, list) = api.get(&pods_path()).await;
    let fresh = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let mut events = api.watch(&watch_from(fresh.clone())).await;
    api.double
        .set_pod_status(NS, "a", json!({"phase": "Running"}));
    assert_eq!(events.next_brief().await, ("MODIFIED".into(), "a".into()));

    api.double.close_watches();
    assert!(events.next().await.is_none(), "closed by the server");
}

#[tokio::test]
async fn logs_keep_the_last_lines_then_the_first_bytes() {
    let api = Api::start().await;
    let log_path = format!("{}/driver/log", pods_path());
    let (status, _) = api.text(&log_path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!api.double.set_pod_log(NS, "driver", "no pod"));

    api.create_pod("driver", json!({})).await;
    assert_eq!(api.text(&log_path).await, (StatusCode::OK, String::new()));
    assert!(api.double.set_pod_log(NS, "driver", "one\ntwo\nthree\n"));
    let response = api.http.get(api.url(&log_path)).send().await.expect("log");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.expect("text"), "one\ntwo\nthree\n");
    let log = |query: &str| api.text_owned(format!("{log_path}?{query}"));
    assert_eq!(log("tailLines=2").await.1, "two\nthree\n");
    assert_eq!(log("limitBytes=5").await.1, "one\nt");
    assert_eq!(
        log("container=spark&tailLines=2&limitBytes=5").await.1,
        "two\nt"
    );
    assert_eq!(log("tailLines=0").await.1, "");
    assert_eq!(log("tailLines=-1").await.0, StatusCode::BAD_REQUEST);

    assert!(api.double.remove_pod(NS, "driver"));
    assert_eq!(api.text(&log_path).await.0, StatusCode::NOT_FOUND);
}

impl Api {
    async fn text_owned(&self, path: String) -> (StatusCode, String) {
        self.text(&path).await
    }

    async fn create_owned_service(&self, name: &str, owner: &Value) {
        let service = json!({"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": true}]},
            "spec": {"clusterIP": "None"}});
        let (status, body) = self
            .post(&format!("/api/v1/namespaces/{NS}/services"), &service)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test]
async fn deleting_a_pod_collects_the_services_it_owns() {
    let api = Api::start().await;
    let driver = api.create_pod("driver", json!({})).await;
    api.create_owned_service("driver", &driver).await;
    let (_, unowned) = api
        .post(
            &format!("/api/v1/namespaces/{NS}/services"),
            &json!({"metadata": {"name": "unowned"}}),
        )
        .await;
    assert_eq!(unowned["kind"], "Service");
    let mut service_events = api
        .watch(&format!(
            "/api/v1/namespaces/{NS}/services?watch=true&resourceVersion={}",
            api.double.resource_version()
        ))
        .await;

    api.delete(
        &format!("{}/driver", pods_path()),
        Some(json!({"propagationPolicy": "Background"})),
    )
    .await;
    assert!(api.double.service(NS, "driver").is_none());
    assert!(api.double.service(NS, "unowned").is_some());
    assert_eq!(
        service_events.next_brief().await,
        ("DELETED".into(), "driver".into())
    );

    // The cluster losing the pod collects the same way; an orphaning delete does not.
    let lost = api.create_pod("lost", json!({})).await;
    api.create_owned_service("lost", &lost).await;
    assert!(api.double.remove_pod(NS, "lost"));
    assert!(api.double.service(NS, "lost").is_none());
    let kept = api.create_pod("kept", json!({})).await;
    api.create_owned_service("kept", &kept).await;
    api.delete(
        &format!("{}/kept", pods_path()),
        Some(json!({"propagationPolicy": "Orphan"})),
    )
    .await;
    assert!(api.double.pod(NS, "kept").is_none());
    assert!(api.double.service(NS, "kept").is_some());
}

#[tokio::test]
async fn faults_answer_a_status_in_order_and_are_used_up() {
    let api = Api::start().await;
    api.double.fail_next(Fault {
        method: Some("POST".into()),
        path_contains: "/pods".into(),
        status: 403,
        delay: None,
        times: 1,
    });
    api.double
        .fail_next(Fault::new("/pods", 500).with_method("post").with_times(2));
    let (status, forbidden) = api.post(&pods_path(), &pod("a", json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden["kind"], "Status");
    assert_eq!(forbidden["reason"], "Forbidden");
    assert_eq!(forbidden["code"], 403);
    // A GET does not match the POST rules.
    assert_eq!(api.get(&pods_path()).await.0, StatusCode::OK);
    for _ in 0..2 {
        let (status, error) = api.post(&pods_path(), &pod("a", json!({}))).await;
        assert_eq!(
            (status, &error["reason"]),
            (StatusCode::INTERNAL_SERVER_ERROR, &json!("InternalError"))
        );
    }
    assert!(
        api.double.pods(NS).is_empty(),
        "failed requests change nothing"
    );
    api.create_pod("a", json!({})).await;

    // A lost reply: the change is made, the answer is an error.
    api.double
        .fail_after_commit(Fault::new("/pods", 503).with_method("POST"));
    assert_eq!(
        api.post(&pods_path(), &pod("b", json!({}))).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(api.double.pod(NS, "b").is_some());

    // A slow server: served, answered late.
    api.double
        .fail_next(Fault::new("/pods/a", 0).with_delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    assert_eq!(
        api.get(&format!("{}/a", pods_path())).await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Watches can be targeted by their query; faulted requests are recorded too.
    api.double.fail_next(Fault::new("watch=true", 500));
    api.double.reset_requests();
    let response = api
        .http
        .get(api.url(&format!("{}?watch=true", pods_path())))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        api.double.requests(),
        [Request {
            method: "GET".into(),
            path: pods_path(),
            query: "watch=true".into(),
            watch: true,
        }]
    );

    api.double
        .fail_next(Fault::new("/pods", 500).with_times(usize::MAX));
    assert_eq!(
        api.get(&pods_path()).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    api.double.clear_faults();
    assert_eq!(api.get(&pods_path()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_deletion_delay_makes_pods_terminate_first() {
    let api = Api::start().await;
    let driver = api.create_pod("driver", json!({})).await;
    api.create_owned_service("driver", &driver).await;
    let mut events = api
        .watch(&format!(
            "{}?watch=true&resourceVersion={}",
            pods_path(),
            api.double.resource_version()
        ))
        .await;
    api.double.set_deletion_delay(Duration::from_millis(400));

    let (status, terminating) = api.delete(&format!("{}/driver", pods_path()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 1);
    let modified = events.next().await.expect("an event");
    assert_eq!(modified["type"], "MODIFIED");
    assert!(modified["object"]["metadata"]["deletionTimestamp"].is_string());

    // Still there meanwhile: it can be read, and its name is taken.
    assert_eq!(
        api.get(&format!("{}/driver", pods_path())).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.post(&pods_path(), &pod("driver", json!({}))).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.delete(&format!("{}/driver", pods_path()), None).await.0,
        StatusCode::OK
    );
    assert!(api.double.service(NS, "driver").is_some());

    assert_eq!(
        events.next_brief().await,
        ("DELETED".into(), "driver".into())
    );
    assert!(api.double.pod(NS, "driver").is_none());
    assert!(
        api.double.service(NS, "driver").is_none(),
        "collected with its pod"
    );

    // gracePeriodSeconds 0 does not wait.
    api.create_pod("forced", json!({})).await;
    api.delete(
        &format!("{}/forced", pods_path()),
        Some(json!({"gracePeriodSeconds": 0})),
    )
    .await;
    assert!(api.double.pod(NS, "forced").is_none());
}

#[tokio::test]
async fn kubeconfig_and_shutdown() {
    let api = Api::start().await;
    let yaml = api.double.kubeconfig_yaml("spark");
    assert!(yaml.contains(&format!("server: {}", api.double.url())));
    assert!(yaml.contains("namespace: \"spark\""));
    assert!(yaml.contains("current-context: kube-double"));
    let (status, version) = api.get("/version").await;
    assert_eq!((status, &version["major"]), (StatusCode::OK, &json!("1")));

    let copy = api.double.clone();
    copy.shutdown();
    until_refused(&api.double.url(), "no longer serving").await;

    // Dropping the last handle stops it too.
    let double = KubeDouble::start().await;
    let url = double.url();
    drop(double);
    until_refused(&url, "stopped with its last handle").await;
}

/// Waits until nothing accepts connections at the double's address `url` (a stopped server
/// closes its listener; how soon is not what these tests check).
async fn until_refused(url: &str, what: &str) {
    let address = url.trim_start_matches("http://").to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still serving"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// On its own thread the double answers while the caller's thread blocks, with no runtime.
#[test]
fn on_its_own_thread_it_answers_a_blocked_caller() {
    use std::io::{Read, Write};
    let double = KubeDouble::start_on_own_thread();
    let address = double.url().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    stream
        .write_all(
            b"GET /api/v1/namespaces/spark/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("\"kind\":\"PodList\""), "{answer}");
    assert_eq!(double.requests().len(), 1);
    drop(double);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still serving after its last handle"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn path(plural: &str) -> String {
    match plural {
        "networkpolicies" => format!("/apis/networking.k8s.io/v1/namespaces/{NS}/{plural}"),
        _ => format!("/api/v1/namespaces/{NS}/{plural}"),
    }
}

fn owned_by(pod: &Value) -> Value {
    json!([{"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
        "uid": pod["metadata"]["uid"], "controller": true}])
}

impl Api {
    /// POSTs `body` to a collection of the `spark` namespace; asserts 201.
    async fn create(&self, plural: &str, body: Value) -> Value {
        let (status, created) = self.post(&path(plural), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    async fn get_path(&self, path: String) -> (StatusCode, Value) {
        self.get(&path).await
    }
}

#[tokio::test]
async fn secrets_are_stored_as_the_api_server_stores_them() {
    let api = Api::start().await;
    let created = api
        .create(
            "secrets",
            json!({"metadata": {"name": "spark-conf", "labels": {"app": "rucat"}},
                "data": {"kept": "a2VwdA==", "both": "b2xk"},
                "stringData": {"both": "new", "token": "s3cr3t"}}),
        )
        .await;
    assert_eq!(created["kind"], "Secret");
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["type"], "Opaque");
    assert_eq!(
        created["data"],
        json!({"kept": "a2VwdA==", "both": "bmV3", "token": "czNjcjN0"}),
        "stringData folded into base64 data, over data of the same key"
    );
    assert!(created.get("stringData").is_none());
    assert!(created.get("status").is_none());
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], NS);
    assert_eq!(meta["uid"].as_str().expect("uid").len(), 36);
    assert!(meta["creationTimestamp"].is_string());
    assert_eq!(
        meta["resourceVersion"],
        api.double.resource_version().to_string()
    );
    assert_eq!(api.double.secret(NS, "spark-conf"), Some(created.clone()));
    let (status, got) = api
        .get_path(format!("{}/spark-conf", path("secrets")))
        .await;
    assert_eq!((status, &got), (StatusCode::OK, &created));

    let tls = api
        .create(
            "secrets",
            json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
                "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
        )
        .await;
    assert_eq!(tls["type"], "kubernetes.io/tls");
    let (_, typed) = api
        .get_path(format!(
            "{}?fieldSelector=type%3Dkubernetes.io%2Ftls",
            path("secrets")
        ))
        .await;
    assert_eq!(typed["kind"], "SecretList");
    assert_eq!(names(&typed), ["tls"]);

    let (status, bad) = api
        .post(
            &path("secrets"),
            &json!({"metadata": {"name": "bad"}, "stringData": {"n": 1}}),
        )
        .await;
    assert_eq!(
        (status, &bad["reason"]),
        (StatusCode::BAD_REQUEST, &json!("BadRequest"))
    );
    assert!(bad["message"]
        .as_str()
        .expect("message")
        .starts_with("Secret in version \"v1\" cannot be handled as a Secret"));
    assert!(api.double.secret(NS, "bad").is_none());

    // Inserted as every stored Secret is.
    api.double.insert_secret(
        "elsewhere",
        json!({"metadata": {"name": "inserted"}, "stringData": {"a": "b"}}),
    );
    let inserted = api
        .double
        .secret("elsewhere", "inserted")
        .expect("inserted");
    assert_eq!(
        (
            &inserted["data"],
            &inserted["type"],
            &inserted["apiVersion"]
        ),
        (&json!({"a": "Yg=="}), &json!("Opaque"), &json!("v1"))
    );
    assert!(inserted.get("stringData").is_none());
    let (_, everywhere) = api.get("/api/v1/secrets").await;
    assert_eq!(names(&everywhere), ["inserted", "spark-conf", "tls"]);
}

#[tokio::test]
async fn configmaps_and_networkpolicies_are_served_like_pods() {
    let api = Api::start().await;
    let config = api
        .create(
            "configmaps",
            json!({"metadata": {"name": "spark.conf", "labels": {"app": "rucat"}},
                "data": {"spark.master": "k8s://x"}}),
        )
        .await;
    assert_eq!(
        (&config["kind"], &config["apiVersion"]),
        (&json!("ConfigMap"), &json!("v1"))
    );
    assert_eq!(config["data"], json!({"spark.master": "k8s://x"}));
    assert_eq!(api.double.config_map(NS, "spark.conf"), Some(config));
    let (status, conflict) = api
        .post(
            &path("configmaps"),
            &json!({"metadata": {"name": "spark.conf"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (&conflict["reason"], &conflict["message"]),
        (
            &json!("AlreadyExists"),
            &json!("configmaps \"spark.conf\" already exists")
        )
    );
    let (status, invalid) = api
        .post(
            &path("configmaps"),
            &json!({"metadata": {"name": "Not_A_Name"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid["message"]
        .as_str()
        .expect("message")
        .starts_with("ConfigMap \"Not_A_Name\" is invalid: metadata.name"));
    api.create("configmaps", json!({"metadata": {"name": "other"}}))
        .await;

    let policy = json!({
        "metadata": {"name": "driver-ingress", "labels": {"app": "rucat"}},
        "spec": {"podSelector": {"matchLabels": {"app": "rucat"}}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 15002, "protocol": "TCP"}]}]},
    });
    let created = api.create("networkpolicies", policy.clone()).await;
    assert_eq!(created["kind"], "NetworkPolicy");
    assert_eq!(created["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(created["spec"], policy["spec"], "no defaulting");
    assert!(created.get("status").is_none());
    assert_eq!(
        api.double.network_policy(NS, "driver-ingress"),
        Some(created.clone())
    );
    let (status, wrong_version) = api
        .post(
            &path("networkpolicies"),
            &json!({"apiVersion": "v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}}),
        )
        .await;
    assert_eq!(
        (status, &wrong_version["reason"]),
        (StatusCode::BAD_REQUEST, &json!("BadRequest"))
    );
    let (status, _) = api
        .post(
            &format!("{}?dryRun=All", path("networkpolicies")),
            &json!({"metadata": {"name": "dry"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(api.double.network_policy(NS, "dry").is_none());
    let (status, elsewhere) = api
        .post(
            "/apis/networking.k8s.io/v1/namespaces/elsewhere/networkpolicies",
            &json!({"metadata": {"name": "deny-all", "labels": {"app": "rucat"}}, "spec": {"podSelector": {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{elsewhere}");
    api.double.insert_network_policy(
        NS,
        json!({"metadata": {"name": "inserted"}, "spec": {"podSelector": {}}}),
    );
    assert_eq!(
        api.double.network_policy(NS, "inserted").expect("inserted")["apiVersion"],
        "networking.k8s.io/v1"
    );

    let (status, list) = api
        .get_path(format!(
            "{}?labelSelector=app%3Drucat",
            path("networkpolicies")
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["kind"], "NetworkPolicyList");
    assert_eq!(list["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        api.double.resource_version().to_string()
    );
    assert_eq!(names(&list), ["driver-ingress"]);
    let (_, all) = api.get("/apis/networking.k8s.io/v1/networkpolicies").await;
    assert_eq!(names(&all), ["deny-all", "driver-ingress", "inserted"]);
    let (_, first) = api
        .get("/apis/networking.k8s.io/v1/networkpolicies?limit=2")
        .await;
    assert_eq!(names(&first), ["deny-all", "driver-ingress"]);
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("a continue token");
    let (_, rest) = api
        .get_path(format!(
            "/apis/networking.k8s.io/v1/networkpolicies?limit=2&continue={token}"
        ))
        .await;
    assert_eq!(names(&rest), ["inserted"]);
    let (_, by_name) = api
        .get_path(format!(
            "{}?fieldSelector=metadata.name%3Dother",
            path("configmaps")
        ))
        .await;
    assert_eq!(by_name["kind"], "ConfigMapList");
    assert_eq!(names(&by_name), ["other"]);

    let item = format!("{}/driver-ingress", path("networkpolicies"));
    let (status, deleted) = api.delete(&item, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["metadata"]["uid"], created["metadata"]["uid"]);
    let (status, missing) = api.get(&item).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing["message"],
        "networkpolicies.networking.k8s.io \"driver-ingress\" not found"
    );
    assert_eq!(
        missing["details"],
        json!({"name": "driver-ingress", "group": "networking.k8s.io", "kind": "networkpolicies"})
    );
    let (status, _) = api
        .delete(&format!("{}/spark.conf", path("configmaps")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(api.double.config_map(NS, "spark.conf").is_none());
    assert_eq!(api.double.config_maps(NS).len(), 1);
    let (status, bad) = api.send(api.http.put(api.url(&item))).await;
    assert_eq!(
        (status, &bad["reason"]),
        (StatusCode::METHOD_NOT_ALLOWED, &json!("MethodNotAllowed"))
    );
}

#[tokio::test]
async fn watches_follow_each_kind_on_its_own() {
    let api = Api::start().await;
    api.create("configmaps", json!({"metadata": {"name": "early"}}))
        .await;
    let rv = api.double.resource_version();
    let mut policies = api
        .watch(&format!(
            "{}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}",
            path("networkpolicies")
        ))
        .await;
    let mut configs = api
        .watch(&format!(
            "/api/v1/configmaps?watch=true&labelSelector=app%3Drucat&resourceVersion={rv}"
        ))
        .await;
    let mut secrets = api
        .watch(&format!("{}?watch=true&resourceVersion=0", path("secrets")))
        .await;

    api.create_pod("driver", json!({"app": "rucat"})).await;
    api.create("secrets", json!({"metadata": {"name": "token"}}))
        .await;
    api.create(
        "networkpolicies",
        json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}),
    )
    .await;
    api.create(
        "configmaps",
        json!({"metadata": {"name": "conf", "labels": {"app": "rucat"}}}),
    )
    .await;
    let added = policies.next().await.expect("an event");
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["kind"], "NetworkPolicy");
    assert_eq!(added["object"]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(secrets.next_brief().await, ("ADDED".into(), "token".into()));
    assert_eq!(configs.next_brief().await, ("ADDED".into(), "conf".into()));

    api.double.insert_config_map(
        NS,
        json!({"metadata": {"name": "conf", "labels": {"app": "rucat"}}, "data": {"k": "v"}}),
    );
    let modified = configs.next().await.expect("an event");
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["data"], json!({"k": "v"}));
    api.delete(&format!("{}/token", path("secrets")), None)
        .await;
    assert_eq!(
        secrets.next_brief().await,
        ("DELETED".into(), "token".into())
    );
    api.delete(&format!("{}/deny", path("networkpolicies")), None)
        .await;
    assert_eq!(
        policies.next_brief().await,
        ("DELETED".into(), "deny".into())
    );

    // Idle: the bookmark names the kind and its group.
    let bookmark = policies.next().await.expect("a bookmark");
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        (
            &bookmark["object"]["kind"],
            &bookmark["object"]["apiVersion"]
        ),
        (&json!("NetworkPolicy"), &json!("networking.k8s.io/v1"))
    );

    api.double.expire_resource_versions();
    let error = configs.next().await.expect("an error event");
    assert_eq!(
        (&error["type"], &error["object"]["code"]),
        (&json!("ERROR"), &json!(410))
    );
}

#[tokio::test]
async fn deleting_a_pod_collects_what_it_owns_of_every_kind() {
    let api = Api::start().await;
    let driver = api.create_pod("driver", json!({})).await;
    let owners = owned_by(&driver);
    api.create_owned_service("driver", &driver).await;
    let secret = api
        .create(
            "secrets",
            json!({"metadata": {"name": "driver-token", "ownerReferences": owners}}),
        )
        .await;
    api.create(
        "configmaps",
        json!({"metadata": {"name": "driver-conf", "ownerReferences": owners}}),
    )
    .await;
    api.create(
        "networkpolicies",
        json!({"metadata": {"name": "driver-ingress", "ownerReferences": owners},
            "spec": {"podSelector": {}}}),
    )
    .await;
    // Owned by the secret: collected with it.
    api.create(
        "configmaps",
        json!({"metadata": {"name": "token-conf", "ownerReferences": [{"apiVersion": "v1",
            "kind": "Secret", "name": "driver-token", "uid": secret["metadata"]["uid"]}]}}),
    )
    .await;
    api.create("configmaps", json!({"metadata": {"name": "unowned"}}))
        .await;
    let rv = api.double.resource_version();
    let mut secrets = api
        .watch(&format!(
            "{}?watch=true&resourceVersion={rv}",
            path("secrets")
        ))
        .await;
    let mut configs = api
        .watch(&format!(
            "{}?watch=true&resourceVersion={rv}",
            path("configmaps")
        ))
        .await;
    let mut policies = api
        .watch(&format!(
            "{}?watch=true&resourceVersion={rv}",
            path("networkpolicies")
        ))
        .await;

    let (status, _) = api
        .delete(
            &format!("{}/driver", pods_path()),
            Some(json!({"propagationPolicy": "Background"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(api.double.service(NS, "driver").is_none());
    assert!(api.double.secrets(NS).is_empty());
    assert!(api.double.network_policies(NS).is_empty());
    let left: Vec<Value> = api.double.config_maps(NS);
    assert_eq!(
        left.iter()
            .map(|c| c["metadata"]["name"].as_str().expect("name"))
            .collect::<Vec<_>>(),
        ["unowned"]
    );
    assert_eq!(
        secrets.next_brief().await,
        ("DELETED".into(), "driver-token".into())
    );
    let mut deleted = vec![configs.next_brief().await, configs.next_brief().await];
    deleted.sort();
    assert_eq!(
        deleted,
        [
            ("DELETED".into(), "driver-conf".into()),
            ("DELETED".into(), "token-conf".into())
        ]
    );
    assert_eq!(
        policies.next_brief().await,
        ("DELETED".into(), "driver-ingress".into())
    );

    // An orphaning delete leaves them.
    let kept = api.create_pod("kept", json!({})).await;
    api.create(
        "secrets",
        json!({"metadata": {"name": "kept-token", "ownerReferences": owned_by(&kept)}}),
    )
    .await;
    api.delete(
        &format!("{}/kept", pods_path()),
        Some(json!({"propagationPolicy": "Orphan"})),
    )
    .await;
    assert!(api.double.secret(NS, "kept-token").is_some());
}

const MERGE: &str = "application/merge-patch+json";

impl Api {
    async fn patch(&self, path: &str, content_type: &str, body: &Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .patch(self.url(path))
                .header("content-type", content_type)
                .body(body.to_string()),
        )
        .await
    }
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn a_merge_patch_changes_the_object_but_not_what_the_server_owns() {
    let api = Api::start().await;
    let created = api
        .create_pod("driver", json!({"app": "rucat", "tier": "driver"}))
        .await;
    let item = format!("{}/driver", pods_path());
    let mut events = api
        .watch(&format!(
            "{}?watch=true&resourceVersion={}",
            pods_path(),
            api.double.resource_version()
        ))
        .await;

    let (status, patched) = api
        .patch(
            &item,
            "application/merge-patch+json; charset=utf-8",
            &json!({
                "metadata": {
                    "labels": {"tier": null, "patched": "yes"},
                    "annotations": {"note": "a"},
                    "uid": "not-the-uid",
                    "creationTimestamp": "2000-01-01T00:00:00Z",
                    "namespace": NS,
                },
                "spec": {"nodeName": "node-1"},
                "status": {"phase": "Running"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let meta = &patched["metadata"];
    assert_eq!(meta["labels"], json!({"app": "rucat", "patched": "yes"}));
    assert_eq!(meta["annotations"], json!({"note": "a"}));
    assert_eq!(meta["uid"], created["metadata"]["uid"], "uid ignored");
    assert_eq!(
        meta["creationTimestamp"], created["metadata"]["creationTimestamp"],
        "creationTimestamp ignored"
    );
    assert_eq!(patched["spec"]["nodeName"], "node-1");
    assert_eq!(
        patched["spec"]["containers"], created["spec"]["containers"],
        "the rest kept"
    );
    assert_eq!(
        patched["status"],
        json!({"phase": "Pending"}),
        "status is a subresource"
    );
    assert!(rv(&patched) > rv(&created));
    assert_eq!(rv(&patched), api.double.resource_version());
    assert_eq!(api.double.pod(NS, "driver"), Some(patched.clone()));
    let modified = events.next().await.expect("an event");
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"], patched);

    // A patch that changes nothing writes nothing: no resourceVersion, no event.
    let (status, same) = api
        .patch(
            &item,
            MERGE,
            &json!({"metadata": {"labels": {"app": "rucat"}}}),
        )
        .await;
    assert_eq!((status, &same), (StatusCode::OK, &patched));
    assert_eq!(api.double.resource_version(), rv(&patched));
    // A dry run answers the change and stores nothing.
    let (status, dry) = api
        .patch(
            &format!("{item}?dryRun=All"),
            MERGE,
            &json!({"metadata": {"labels": {"dry": "yes"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dry["metadata"]["labels"]["dry"], "yes");
    assert_eq!(api.double.pod(NS, "driver"), Some(patched.clone()));
    // So the next event is the next real change.
    api.patch(
        &item,
        MERGE,
        &json!({"metadata": {"labels": {"next": "1"}}}),
    )
    .await;
    let next = events.next().await.expect("an event");
    assert_eq!(next["type"], "MODIFIED");
    assert_eq!(next["object"]["metadata"]["labels"]["next"], "1");
    assert!(next["object"]["metadata"]["labels"].get("dry").is_none());
}

#[tokio::test]
async fn a_patch_is_refused_as_kubernetes_refuses_it() {
    let api = Api::start().await;
    let created = api.create_pod("driver", json!({"app": "rucat"})).await;
    let item = format!("{}/driver", pods_path());
    let stale = created["metadata"]["resourceVersion"].clone();
    let (status, current) = api
        .patch(
            &item,
            MERGE,
            &json!({"metadata": {"resourceVersion": stale, "labels": {"n": "1"}}}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the current resourceVersion: {current}"
    );

    // Optimistic concurrency: a resourceVersion that is no longer the object's.
    let (status, conflict) = api
        .patch(
            &item,
            MERGE,
            &json!({"metadata": {"resourceVersion": stale, "labels": {"n": "2"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(conflict["code"], 409);
    assert_eq!(
        conflict["message"],
        "Operation cannot be fulfilled on pods \"driver\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(
        conflict["details"],
        json!({"name": "driver", "kind": "pods"})
    );
    assert_eq!(
        api.double.pod(NS, "driver"),
        Some(current.clone()),
        "unchanged"
    );

    let (status, renamed) = api
        .patch(&item, MERGE, &json!({"metadata": {"name": "other"}}))
        .await;
    assert_eq!(
        (status, &renamed["reason"], &renamed["message"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("BadRequest"),
            &json!("the name of the object (other) does not match the name on the URL (driver)")
        )
    );
    let (status, _) = api
        .patch(&item, MERGE, &json!({"metadata": {"namespace": "other"}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(api.double.pod(NS, "other").is_none());

    for content_type in [
        "application/json-patch+json",
        "application/apply-patch+yaml",
        "application/json",
    ] {
        let (status, unsupported) = api
            .patch(
                &item,
                content_type,
                &json!([{"op": "add", "path": "/x", "value": 1}]),
            )
            .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert_eq!(unsupported["reason"], "UnsupportedMediaType");
        assert_eq!(unsupported["code"], 415);
        assert_eq!(
            unsupported["message"],
            "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json"
        );
    }
    let (status, _) = api.send(api.http.patch(api.url(&item)).body("{}")).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no Content-Type"
    );
    let (status, _) = api
        .send(
            api.http
                .patch(api.url(&item))
                .header("content-type", MERGE)
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, missing) = api
        .patch(&format!("{}/nothing", pods_path()), MERGE, &json!({}))
        .await;
    assert_eq!(
        (status, &missing["reason"]),
        (StatusCode::NOT_FOUND, &json!("NotFound"))
    );
    let (status, _) = api.patch(&pods_path(), MERGE, &json!({})).await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "not on a collection"
    );
    assert_eq!(api.double.pod(NS, "driver"), Some(current), "unchanged");
}

#[tokio::test]
async fn every_kind_takes_a_patch() {
    let api = Api::start().await;
    let driver = api.create_pod("driver", json!({})).await;
    let policy = api
        .create(
            "networkpolicies",
            json!({"metadata": {"name": "ingress"}, "spec": {"podSelector": {}}}),
        )
        .await;
    api.create(
        "configmaps",
        json!({"metadata": {"name": "conf"}, "data": {"a": "1", "b": "2"}}),
    )
    .await;
    api.create(
        "secrets",
        json!({"metadata": {"name": "token"}, "data": {"a": "YQ=="}}),
    )
    .await;
    let mut policies = api
        .watch(&format!(
            "/apis/networking.k8s.io/v1/networkpolicies?watch=true&resourceVersion={}",
            api.double.resource_version()
        ))
        .await;

    // A strategic merge patch is applied as a merge patch.
    let (status, conf) = api
        .patch(
            &format!("{}/conf", path("configmaps")),
            "application/strategic-merge-patch+json",
            &json!({"data": {"a": null, "b": "3", "c": "4"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{conf}");
    assert_eq!(conf["data"], json!({"b": "3", "c": "4"}));
    assert_eq!(api.double.config_map(NS, "conf"), Some(conf));

    // A patched Secret's stringData is folded into data like a created one's.
    let (_, token) = api
        .patch(
            &format!("{}/token", path("secrets")),
            MERGE,
            &json!({"stringData": {"b": "b"}, "metadata": {"ownerReferences": owned_by(&driver)}}),
        )
        .await;
    assert_eq!(token["data"], json!({"a": "YQ==", "b": "Yg=="}));
    assert!(token.get("stringData").is_none());
    assert_eq!(token["type"], "Opaque");

    let (status, patched) = api
        .patch(
            &format!("{}/ingress", path("networkpolicies")),
            MERGE,
            &json!({"metadata": {"ownerReferences": owned_by(&driver)},
                "spec": {"policyTypes": ["Ingress"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        patched["spec"],
        json!({"podSelector": {}, "policyTypes": ["Ingress"]})
    );
    assert_eq!(patched["metadata"]["uid"], policy["metadata"]["uid"]);
    assert_eq!(
        policies.next_brief().await,
        ("MODIFIED".into(), "ingress".into())
    );
    let (status, _) = api
        .patch(
            &format!("{}/ingress", path("networkpolicies")),
            MERGE,
            &json!({"apiVersion": "v1"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Ownership given by patches is honoured by the garbage collector.
    api.delete(&format!("{}/driver", pods_path()), None).await;
    assert!(api.double.secret(NS, "token").is_none());
    assert_eq!(
        policies.next_brief().await,
        ("DELETED".into(), "ingress".into())
    );
}

#[tokio::test]
async fn faults_and_the_request_log_cover_patches() {
    let api = Api::start().await;
    let created = api.create_pod("driver", json!({})).await;
    let item = format!("{}/driver", pods_path());
    api.double
        .fail_next(Fault::new("/pods/driver", 500).with_method("PATCH"));
    api.double.reset_requests();
    let (status, error) = api
        .patch(&item, MERGE, &json!({"metadata": {"labels": {"a": "b"}}}))
        .await;
    assert_eq!(
        (status, &error["reason"]),
        (StatusCode::INTERNAL_SERVER_ERROR, &json!("InternalError"))
    );
    assert_eq!(api.double.pod(NS, "driver"), Some(created), "not served");
    assert_eq!(
        api.double.requests(),
        [Request {
            method: "PATCH".into(),
            path: item.clone(),
            query: String::new(),
            watch: false,
        }]
    );
    api.double
        .fail_after_commit(Fault::new("/pods/driver", 503).with_method("PATCH"));
    let (status, _) = api
        .patch(&item, MERGE, &json!({"metadata": {"labels": {"a": "b"}}}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api.double.pod(NS, "driver").expect("pod")["metadata"]["labels"]["a"],
        "b",
        "served, then answered with the fault"
    );
}

#[tokio::test]
async fn delete_preconditions_name_the_incarnation_to_delete() {
    let api = Api::start().await;
    let first = api.create_pod("driver", json!({})).await;
    let item = format!("{}/driver", pods_path());
    api.delete(&item, None).await;
    let second = api.create_pod("driver", json!({})).await;
    let conf = api
        .create(
            "configmaps",
            json!({"metadata": {"name": "driver-conf", "ownerReferences": owned_by(&second)}}),
        )
        .await;
    let mut events = api
        .watch(&format!(
            "/api/v1/namespaces/{NS}/pods?watch=true&resourceVersion={}",
            api.double.resource_version()
        ))
        .await;

    // The uid of the pod that was: the one there now stays, with what it owns.
    let (old_uid, uid) = (&first["metadata"]["uid"], &second["metadata"]["uid"]);
    let (status, conflict) = api
        .delete(&item, Some(json!({"preconditions": {"uid": old_uid}})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["kind"], "Status");
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(conflict["code"], 409);
    assert_eq!(
        conflict["message"],
        format!(
            "Operation cannot be fulfilled on pods \"driver\": Precondition failed: UID in precondition: {}, UID in object meta: {}",
            old_uid.as_str().expect("uid"),
            uid.as_str().expect("uid")
        )
    );
    assert_eq!(api.double.pod(NS, "driver"), Some(second.clone()));
    assert_eq!(api.double.config_map(NS, "driver-conf"), Some(conf));
    // A dry run checks them too.
    let (status, _) = api
        .delete(
            &format!("{item}?dryRun=All"),
            Some(json!({"preconditions": {"uid": old_uid}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A stale resourceVersion fails the same way.
    let stale = first["metadata"]["resourceVersion"].as_str().expect("rv");
    let (status, conflict) = api
        .delete(
            &item,
            Some(json!({"preconditions": {"uid": uid, "resourceVersion": stale}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(conflict["message"]
        .as_str()
        .expect("message")
        .ends_with(&format!(
            "Precondition failed: ResourceVersion in precondition: {stale}, ResourceVersion in object meta: {}",
            rv(&second)
        )));
    let (status, bad) = api
        .delete(&item, Some(json!({"preconditions": {"uid": 7}})))
        .await;
    assert_eq!(
        (status, &bad["reason"]),
        (StatusCode::BAD_REQUEST, &json!("BadRequest"))
    );
    assert!(api.double.pod(NS, "driver").is_some());

    // The right incarnation goes, with what it owns; nothing happened to it before.
    let (status, deleted) = api
        .delete(
            &item,
            Some(json!({"preconditions": {"uid": uid, "resourceVersion": second["metadata"]["resourceVersion"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["metadata"]["uid"], *uid);
    assert!(api.double.pod(NS, "driver").is_none());
    assert!(api.double.config_map(NS, "driver-conf").is_none());
    assert_eq!(
        events.next_brief().await,
        ("DELETED".into(), "driver".into())
    );

    // Every kind.
    let policy = api
        .create(
            "networkpolicies",
            json!({"metadata": {"name": "ingress"}, "spec": {"podSelector": {}}}),
        )
        .await;
    let policy_item = format!("{}/ingress", path("networkpolicies"));
    let (status, conflict) = api
        .delete(
            &policy_item,
            Some(json!({"preconditions": {"uid": "another"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(conflict["message"]
        .as_str()
        .expect("message")
        .starts_with(
            "Operation cannot be fulfilled on networkpolicies.networking.k8s.io \"ingress\": Precondition failed: UID in precondition: another"
        ));
    let (status, _) = api
        .delete(
            &policy_item,
            Some(json!({"preconditions": {"uid": policy["metadata"]["uid"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(api.double.network_policy(NS, "ingress").is_none());
}
