//! The double through kube-rs itself: `Api<Pod>`, `Api<Service>`, `Api<Secret>`,
//! `Api<ConfigMap>`, `Api<NetworkPolicy>` calls and the runtime watcher, unchanged, against the
//! kubeconfig the double writes.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::ByteString;
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube_double::{Fault, KubeDouble};
use serde_json::json;

const NS: &str = "spark";

async fn client(double: &KubeDouble) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(&double.kubeconfig_yaml(NS)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    assert_eq!(config.default_namespace, NS);
    kube::Client::try_from(config).expect("client")
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "rucat"}},
        "spec": {"containers": [{"name": "spark", "image": "apache/spark:4.0.1"}]},
    }))
    .expect("a pod")
}

/// The next pod the stream yields for which `wanted` holds; fails after 10 s.
async fn until(
    stream: &mut (impl Stream<Item = Result<Pod, watcher::Error>> + Unpin),
    wanted: impl Fn(&Pod) -> bool,
) -> Pod {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await.expect("the watcher goes on") {
                Ok(pod) if wanted(&pod) => return pod,
                Ok(_) => {}
                Err(error) => eprintln!("watcher error (it retries): {error}"),
            }
        }
    })
    .await
    .expect("the watcher saw it within 10 s")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

#[tokio::test]
async fn kube_api_creates_reads_lists_logs_and_deletes() {
    let double = KubeDouble::start().await;
    let client = client(&double).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    let created = pods
        .create(&PostParams::default(), &pod("driver"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert_eq!(phase(&created), Some("Pending"));
    let error = pods
        .create(&PostParams::default(), &pod("driver"))
        .await
        .expect_err("exists");
    match error {
        kube::Error::Api(status) => assert_eq!(
            (status.code, status.reason.as_str()),
            (409, "AlreadyExists")
        ),
        other => panic!("not an API error: {other}"),
    }

    let got = pods.get("driver").await.expect("get");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert!(pods.get_opt("nothing").await.expect("get_opt").is_none());
    let listed = pods
        .list(&ListParams::default().labels("app=rucat"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());
    assert!(pods
        .list(&ListParams::default().labels("app=other"))
        .await
        .expect("list")
        .items
        .is_empty());

    double.set_pod_log(NS, "driver", "a\nb\nc\n");
    let tail = LogParams {
        tail_lines: Some(2),
        container: Some("spark".into()),
        ..LogParams::default()
    };
    assert_eq!(pods.logs("driver", &tail).await.expect("logs"), "b\nc\n");

    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "driver", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
            "name": "driver", "uid": created.metadata.uid, "controller": true}]},
        "spec": {"clusterIP": "None", "selector": {"app": "rucat"}, "ports": [{"port": 15002}]},
    }))
    .expect("a service");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("service");

    let deleted = pods
        .delete("driver", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(deleted.is_left(), "the deleted object");
    assert!(pods.get_opt("driver").await.expect("get_opt").is_none());
    assert!(
        services.get_opt("driver").await.expect("get_opt").is_none(),
        "collected"
    );
    let error = pods
        .delete("driver", &DeleteParams::default())
        .await
        .expect_err("gone");
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404),
        "{error}"
    );

    // kube-rs retries a 503 by itself; a 403 reaches the caller.
    double.fail_next(Fault::new("/pods", 503).with_method("POST").with_times(2));
    double.reset_requests();
    pods.create(&PostParams::default(), &pod("retried"))
        .await
        .expect("created on the third try");
    assert_eq!(double.requests().len(), 3);
    double.fail_next(Fault::new("/pods", 403).with_method("POST"));
    let error = pods
        .create(&PostParams::default(), &pod("x"))
        .await
        .expect_err("403");
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.is_forbidden()),
        "{error}"
    );
}

#[tokio::test]
async fn the_watcher_sees_a_pod_start_and_survives_closed_and_expired_watches() {
    let double = KubeDouble::start().await;
    let client = client(&double).await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let mut stream = watcher(pods.clone(), watcher::Config::default().labels("app=rucat"))
        .default_backoff()
        .applied_objects()
        .boxed();

    pods.create(&PostParams::default(), &pod("driver"))
        .await
        .expect("create");
    until(&mut stream, |p| phase(p) == Some("Pending")).await;
    assert!(double.set_pod_status(NS, "driver", json!({"phase": "Running"})));
    until(&mut stream, |p| phase(p) == Some("Running")).await;

    // What kube-rs sent: a list, then a watch from its resourceVersion with bookmarks.
    let requests = double.requests();
    let list = requests
        .iter()
        .find(|r| r.method == "GET" && !r.watch)
        .expect("a list");
    assert!(list.query.contains("labelSelector=app%3Drucat"), "{list:?}");
    let watch = requests.iter().find(|r| r.watch).expect("a watch");
    assert!(
        watch.query.contains("allowWatchBookmarks=true"),
        "{watch:?}"
    );
    assert!(watch.query.contains("resourceVersion="), "{watch:?}");

    double.close_watches();
    double.set_pod_status(NS, "driver", json!({"phase": "Succeeded"}));
    until(&mut stream, |p| phase(p) == Some("Succeeded")).await;

    double.expire_resource_versions();
    double.set_pod_status(NS, "driver", json!({"phase": "Failed"}));
    until(&mut stream, |p| phase(p) == Some("Failed")).await;
    let lists = double
        .requests()
        .iter()
        .filter(|r| !r.watch && r.method == "GET")
        .count();
    assert!(lists >= 2, "the expiry made the watcher list again");
}

#[tokio::test]
async fn the_streaming_list_watcher_works_too() {
    let double = KubeDouble::start().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&double).await);
    pods.create(&PostParams::default(), &pod("early"))
        .await
        .expect("create");
    let mut events = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .expect("the watcher goes on")
            .expect("no error");
        match event {
            watcher::Event::InitApply(pod) => initial.push(pod.metadata.name.expect("name")),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["early"]);
    pods.create(&PostParams::default(), &pod("late"))
        .await
        .expect("create");
    let mut applied = events.applied_objects().boxed();
    let late = until(&mut applied, |p| p.metadata.name.as_deref() == Some("late")).await;
    assert_eq!(phase(&late), Some("Pending"));
}

/// An object of any kind, owned by `pod`.
fn owned<K: serde::de::DeserializeOwned>(name: &str, pod: &Pod, rest: serde_json::Value) -> K {
    let mut object = json!({"metadata": {"name": name, "labels": {"app": "rucat"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
            "uid": pod.metadata.uid, "controller": true}]}});
    if let (Some(object), Some(rest)) = (object.as_object_mut(), rest.as_object()) {
        object.extend(rest.clone());
    }
    serde_json::from_value(object).expect("an object")
}

#[tokio::test]
async fn kube_api_serves_secrets_configmaps_and_networkpolicies() {
    let double = KubeDouble::start().await;
    let client = client(&double).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let configs: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let policies: Api<NetworkPolicy> = Api::default_namespaced(client.clone());
    let driver = pods
        .create(&PostParams::default(), &pod("driver"))
        .await
        .expect("pod");

    let secret: Secret = owned(
        "driver-token",
        &driver,
        json!({"stringData": {"token": "s3cr3t"}}),
    );
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.string_data.is_none());
    let data = created.data.expect("data");
    assert_eq!(data["token"], ByteString(b"s3cr3t".to_vec()));
    assert_eq!(
        double.secret(NS, "driver-token").expect("stored")["data"]["token"],
        "czNjcjN0"
    );

    let config: ConfigMap = owned("driver-conf", &driver, json!({"data": {"k": "v"}}));
    configs
        .create(&PostParams::default(), &config)
        .await
        .expect("configmap");
    let got = configs.get("driver-conf").await.expect("get");
    assert_eq!(got.data.expect("data")["k"], "v");
    let error = configs
        .create(&PostParams::default(), &config)
        .await
        .expect_err("exists");
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{error}"
    );

    let policy: NetworkPolicy = owned(
        "driver-ingress",
        &driver,
        json!({"spec": {"podSelector": {"matchLabels": {"app": "rucat"}},
            "ingress": [{"ports": [{"port": 15002}]}]}}),
    );
    let created = policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("networkpolicy");
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.spec, policy.spec, "no defaulting");
    let everywhere: Api<NetworkPolicy> = Api::all(client.clone());
    let listed = everywhere
        .list(&ListParams::default().labels("app=rucat"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let error = policies.get("nothing").await.expect_err("missing");
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404),
        "{error}"
    );
    assert!(secrets
        .list(&ListParams::default().labels("app=other"))
        .await
        .expect("list")
        .items
        .is_empty());

    // Deleting the pod collects what it owns, of every kind.
    pods.delete("driver", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(secrets
        .get_opt("driver-token")
        .await
        .expect("get_opt")
        .is_none());
    assert!(configs
        .get_opt("driver-conf")
        .await
        .expect("get_opt")
        .is_none());
    assert!(policies
        .get_opt("driver-ingress")
        .await
        .expect("get_opt")
        .is_none());
}

#[tokio::test]
async fn the_watcher_follows_networkpolicies_and_secrets() {
    let double = KubeDouble::start().await;
    let client = client(&double).await;
    let policies: Api<NetworkPolicy> = Api::default_namespaced(client.clone());
    let mut names = watcher(policies.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map(|p| p.map(|p: NetworkPolicy| p.metadata.name.unwrap_or_default()))
        .boxed();
    let secrets: Api<Secret> = Api::all(client);
    let mut secret_events = watcher(secrets, watcher::Config::default().streaming_lists())
        .applied_objects()
        .boxed();

    double.insert_network_policy(
        NS,
        json!({"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}}}),
    );
    let name = tokio::time::timeout(Duration::from_secs(10), names.next())
        .await
        .expect("within 10 s")
        .expect("the watcher goes on")
        .expect("no error");
    assert_eq!(name, "deny-all");

    double.insert_secret(
        "elsewhere",
        json!({"metadata": {"name": "token"}, "stringData": {"t": "x"}}),
    );
    let secret = tokio::time::timeout(Duration::from_secs(10), secret_events.next())
        .await
        .expect("within 10 s")
        .expect("the watcher goes on")
        .expect("no error");
    assert_eq!(secret.metadata.namespace.as_deref(), Some("elsewhere"));
    assert_eq!(secret.data.expect("data")["t"], ByteString(b"x".to_vec()));
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result.expect_err("an API error") {
        kube::Error::Api(status) => *status,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn kube_api_patches_with_merge_and_refuses_stale_versions() {
    let double = KubeDouble::start().await;
    let client = client(&double).await;
    let configs: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "conf", "labels": {"app": "rucat"}},
        "data": {"a": "1", "b": "1"},
    }))
    .expect("a configmap");
    let created = configs
        .create(&PostParams::default(), &config)
        .await
        .expect("create");

    let patch = Patch::Merge(json!({
        "metadata": {"labels": {"patched": "yes"}},
        "data": {"a": null, "b": "2"},
    }));
    let patched = configs
        .patch("conf", &PatchParams::default(), &patch)
        .await
        .expect("patch");
    let labels = patched.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app"], "rucat");
    assert_eq!(labels["patched"], "yes");
    let data = patched.data.clone().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data["b"], "2");
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(patched.metadata.uid, created.metadata.uid);
    assert_eq!(configs.get("conf").await.expect("get"), patched);

    // Optimistic concurrency: a patch naming a resourceVersion that is no longer current.
    let stale = Patch::Merge(json!({"metadata": {
        "resourceVersion": created.metadata.resource_version,
        "labels": {"stale": "yes"},
    }}));
    let status = api_error(configs.patch("conf", &PatchParams::default(), &stale).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        configs.get("conf").await.expect("get"),
        patched,
        "unchanged"
    );
    let current = Patch::Merge(json!({"metadata": {
        "resourceVersion": patched.metadata.resource_version,
        "labels": {"current": "yes"},
    }}));
    configs
        .patch("conf", &PatchParams::default(), &current)
        .await
        .expect("a patch at the current resourceVersion");

    // A JSON patch is not served.
    let json_patch = Patch::Json::<()>(
        serde_json::from_value(json!([{"op": "add", "path": "/data/c", "value": "3"}]))
            .expect("a JSON patch"),
    );
    let status = api_error(
        configs
            .patch("conf", &PatchParams::default(), &json_patch)
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (415, "UnsupportedMediaType")
    );

    // Dry runs store nothing; strategic merge patches work on the other kinds too.
    let before = configs.get("conf").await.expect("get");
    let dry = configs
        .patch(
            "conf",
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"data": {"dry": "yes"}})),
        )
        .await
        .expect("a dry run");
    assert_eq!(dry.data.expect("data")["dry"], "yes");
    assert_eq!(configs.get("conf").await.expect("get"), before);

    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "token"}})).expect("a secret"),
        )
        .await
        .expect("create");
    let secret = secrets
        .patch(
            "token",
            &PatchParams::default(),
            &Patch::Strategic(json!({"stringData": {"token": "s3cr3t"}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        secret.data.expect("data")["token"],
        ByteString(b"s3cr3t".to_vec())
    );

    let policies: Api<NetworkPolicy> = Api::default_namespaced(client);
    double.insert_network_policy(
        NS,
        json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}),
    );
    let policy = policies
        .patch(
            "deny",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policyTypes": ["Ingress", "Egress"]}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        policy.spec.expect("spec").policy_types,
        Some(vec!["Ingress".into(), "Egress".into()])
    );
    let status = api_error(
        policies
            .patch("nothing", &PatchParams::default(), &Patch::Merge(json!({})))
            .await,
    );
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn kube_api_deletes_only_the_incarnation_its_preconditions_name() {
    let double = KubeDouble::start().await;
    let client = client(&double).await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "token"}})).expect("a secret");
    let first = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    secrets
        .delete("token", &DeleteParams::default())
        .await
        .expect("delete");
    let second = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create again");
    assert_ne!(first.metadata.uid, second.metadata.uid);

    let of = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        DeleteParams::default().preconditions(Preconditions {
            uid: meta.uid.clone(),
            resource_version: None,
        })
    };
    let status = api_error(secrets.delete("token", &of(&first.metadata)).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains(&format!(
            "Precondition failed: UID in precondition: {}, UID in object meta: {}",
            first.metadata.uid.clone().unwrap_or_default(),
            second.metadata.uid.clone().unwrap_or_default()
        )),
        "{}",
        status.message
    );
    assert_eq!(secrets.get("token").await.expect("still there"), second);

    let stale_version = DeleteParams::default().preconditions(Preconditions {
        uid: second.metadata.uid.clone(),
        resource_version: first.metadata.resource_version.clone(),
    });
    let status = api_error(secrets.delete("token", &stale_version).await);
    assert_eq!(status.code, 409);
    assert!(secrets.get_opt("token").await.expect("get_opt").is_some());

    let deleted = secrets
        .delete("token", &of(&second.metadata))
        .await
        .expect("delete");
    assert!(deleted.is_left(), "the deleted object");
    assert!(secrets.get_opt("token").await.expect("get_opt").is_none());

    // Pods too, where a controller needs it most.
    let pods: Api<Pod> = Api::default_namespaced(client);
    let driver = pods
        .create(&PostParams::default(), &pod("driver"))
        .await
        .expect("create");
    let wrong = DeleteParams::background().preconditions(Preconditions {
        uid: Some("not-the-uid".into()),
        resource_version: None,
    });
    assert_eq!(api_error(pods.delete("driver", &wrong).await).code, 409);
    assert!(double.pod(NS, "driver").is_some());
    pods.delete("driver", &of(&driver.metadata))
        .await
        .expect("delete");
    assert!(double.pod(NS, "driver").is_none());
}
