//! Requests held on their way and served late; objects whose deletion waits for their
//! finalizers; the record of DELETE options.

use std::time::Duration;

use kube_double::{Fault, KubeDouble};
use reqwest::StatusCode;
use serde_json::{json, Value};

const NS: &str = "spark";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

fn pods_url(double: &KubeDouble) -> String {
    format!("{}/api/v1/namespaces/{NS}/pods", double.url())
}

async fn create_pod(double: &KubeDouble, name: &str, metadata: Value) -> Value {
    let mut meta = json!({"name": name});
    if let (Some(meta), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
        meta.extend(extra.clone());
    }
    let response = http()
        .post(pods_url(double))
        .json(&json!({"metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("json")
}

async fn delete(double: &KubeDouble, name: &str, options: Value) -> (StatusCode, Value) {
    let response = http()
        .delete(format!("{}/{name}", pods_url(double)))
        .json(&options)
        .send()
        .await
        .expect("answer");
    (response.status(), response.json().await.expect("json"))
}

async fn wait_held(double: &KubeDouble, count: usize) {
    for _ in 0..500 {
        if double.held() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} requests held, not {count}", double.held());
}

#[tokio::test]
async fn a_held_delete_is_served_when_released_even_if_its_client_gave_up() {
    let double = KubeDouble::start().await;
    let old = create_pod(&double, "driver", json!({})).await;
    let uid = old["metadata"]["uid"].as_str().expect("uid").to_owned();
    double.hold_next(Fault::new("/pods/driver", 0).with_method("DELETE"));

    // The client gives up on the held request; the request stays on its way.
    let late = http()
        .delete(format!("{}/driver", pods_url(&double)))
        .json(&json!({"preconditions": {"uid": uid}}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(late.is_err(), "held, so no answer: {late:?}");
    assert_eq!(double.held(), 1);
    assert!(double.pod(NS, "driver").is_some(), "not served yet");

    // Meanwhile the pod is replaced by another of the same name.
    let (status, _) = delete(&double, "driver", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let new = create_pod(&double, "driver", json!({})).await;

    // Released, the late delete arrives: its precondition no longer holds, the new pod stays.
    double.release_held();
    wait_held(&double, 0).await;
    let pod = double.pod(NS, "driver").expect("the new pod");
    assert_eq!(pod["metadata"]["uid"], new["metadata"]["uid"]);

    // A held request whose client waits gets its answer once released.
    double.hold_next(Fault::new("/pods/driver", 0).with_method("DELETE"));
    let waiting = tokio::spawn({
        let double = double.clone();
        async move { delete(&double, "driver", json!({})).await }
    });
    wait_held(&double, 1).await;
    assert!(double.pod(NS, "driver").is_some());
    double.release_held();
    let (status, _) = waiting.await.expect("join");
    assert_eq!(status, StatusCode::OK);
    assert!(double.pod(NS, "driver").is_none());

    let deletes = double.delete_options();
    assert_eq!(deletes.len(), 3, "{deletes:?}");
    assert_eq!(deletes[0].1["preconditions"]["uid"], uid.as_str());
    assert!(deletes
        .iter()
        .all(|(path, _)| path == &format!("/api/v1/namespaces/{NS}/pods/driver")));
}

#[tokio::test]
async fn a_pod_with_finalizers_stays_terminating_until_they_are_removed() {
    let double = KubeDouble::start().await;
    double.set_deletion_delay(Duration::from_secs(30));
    create_pod(&double, "held", json!({"finalizers": ["example.com/keep"]})).await;

    let (status, pod) = delete(&double, "held", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);

    // Even a grace period of 0 only shortens the recorded one.
    let (status, pod) = delete(&double, "held", json!({"gracePeriodSeconds": 0})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 0);
    assert!(double.pod(NS, "held").is_some(), "kept for its finalizer");
    let options: Vec<Value> = double
        .delete_options()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(options, [json!({}), json!({"gracePeriodSeconds": 0})]);

    // The last finalizer removed: gone at once.
    assert!(double.update_pod(NS, "held", |pod| {
        pod["metadata"]["finalizers"] = json!([]);
    }));
    assert!(double.pod(NS, "held").is_none());

    // A pod with finalizers that is not being deleted just changes.
    create_pod(
        &double,
        "alive",
        json!({"finalizers": ["example.com/keep"]}),
    )
    .await;
    assert!(double.update_pod(NS, "alive", |pod| {
        pod["metadata"]["finalizers"] = Value::Null;
    }));
    assert!(double.pod(NS, "alive").is_some());
}
