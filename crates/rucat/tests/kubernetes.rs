//! The Kubernetes platform through a real kube-rs client against an in-process Kubernetes API
//! double (`kube-double`): the objects it creates, how pod states map to engine states, what
//! the watch spares, deletion, orphans, and API failures. The double plays the cluster: tests
//! set pod statuses as a kubelet would.

mod common;
#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod e2e;

use std::sync::Arc;
use std::time::Duration;

use common::fake_connect::FakeSparkConnect;
use common::process::{cli, OnDrop, Process, Spawn};
use common::{
    assert_delete_escalated, assert_failed_after_health_timeout, engine_events, run, spawn_api,
    stop_monitor, until, TestApp, VERSION,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_double::{Fault, KubeDouble};
use rucat::engine::{Engine, EngineId, EngineState};
use rucat::monitor::{Monitor, MonitorConfig};
use rucat::platform::kubernetes::{
    objects, DriverSpec, KubernetesConfig, KubernetesPlatform, NetworkPolicyConfig, Peer,
};
use rucat::platform::{Platform, ResourceState};
use rucat::store::conformance::sample_engine;
use serde_json::{json, Value};

const NS: &str = "spark";

fn config() -> KubernetesConfig {
    KubernetesConfig {
        versions: vec![VERSION.to_owned()],
        api_timeout: Duration::from_secs(2),
        ..KubernetesConfig::default()
    }
}

async fn client(double: &KubeDouble) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(&double.kubeconfig_yaml(NS)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

async fn platform_with(double: &KubeDouble, config: KubernetesConfig) -> KubernetesPlatform {
    KubernetesPlatform::new(client(double).await, NS.to_owned(), config)
}

async fn platform(double: &KubeDouble) -> KubernetesPlatform {
    platform_with(double, config()).await
}

fn engine(configs: &[(&str, &str)]) -> Engine {
    Engine {
        version: VERSION.into(),
        state: EngineState::StartInProgress,
        // As the claim of its first start made it.
        generation: 1,
        secret: Some(rucat::engine::EngineSecret::generate()),
        configs: configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..sample_engine("etl")
    }
}

fn name(engine: &Engine) -> String {
    objects::object_name(&engine.id)
}

fn ready() -> Value {
    json!({"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Ready", "status": "True"}]})
}

fn container_waiting(reason: &str, message: &str) -> Value {
    json!({"phase": "Pending", "containerStatuses": [{"name": "spark-connect", "image": "i",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}}}]})
}

/// What a test expects of a state.
type Expect = Box<dyn Fn(&ResourceState) -> bool>;

/// Waits (the watch is asynchronous) until the platform reports what `wanted` accepts.
async fn state_becomes(
    platform: &KubernetesPlatform,
    engine: &Engine,
    wanted: impl Fn(&ResourceState) -> bool,
) -> ResourceState {
    let mut last = None;
    for _ in 0..200 {
        let state = platform.state(engine).await.expect("state");
        if wanted(&state) {
            return state;
        }
        last = Some(state);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the engine's state never matched; last {last:?}");
}

/// The object without what the API server adds (uid, resourceVersion, times, status).
fn as_sent(mut object: Value) -> Value {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for key in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
            meta.remove(key);
        }
    }
    if let Some(object) = object.as_object_mut() {
        object.remove("status");
    }
    object
}

#[tokio::test]
async fn create_makes_exactly_the_rendered_pod_and_an_owned_headless_service() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[("spark.executor.instances", "3")]);
    platform.create(&engine).await.expect("create");

    let pods = double.pods(NS);
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    let spec = DriverSpec::from(&engine);
    let expected = serde_json::to_value(objects::driver_pod(&spec, NS, &config())).expect("json");
    assert_eq!(as_sent(pod.clone()), expected);

    // What matters in it, spelled out.
    let id = engine.id.to_string();
    assert_eq!(pod["metadata"]["name"], name(&engine));
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "rucat"
    );
    assert_eq!(pod["metadata"]["labels"]["rucat.io/engine-id"], id.as_str());
    let pod_spec = &pod["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Never");
    assert_eq!(pod_spec["serviceAccountName"], "rucat-spark");
    let container = &pod_spec["containers"][0];
    assert_eq!(container["image"], format!("apache/spark:{VERSION}"));
    let command = container["command"].as_array().expect("command");
    assert_eq!(command[0], "/bin/sh");
    let script = command[2].as_str().expect("the script");
    assert!(
        script.ends_with("exec /opt/spark/sbin/start-connect-server.sh \"$@\""),
        "{script}"
    );
    assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], 15002);
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let host = format!("rucat-{id}.{NS}.svc.cluster.local");
    for wanted in [
        "k8s://https://kubernetes.default.svc:443".to_owned(),
        "client".to_owned(),
        format!("spark.driver.host={host}"),
        format!("spark.kubernetes.namespace={NS}"),
        format!("spark.kubernetes.driver.pod.name=rucat-{id}"),
        format!("spark.kubernetes.executor.podNamePrefix=rucat-{id}"),
        format!("spark.app.id=rucat-{id}"),
        "spark.executor.instances=3".to_owned(),
        // Executors: their own identity, the restricted pod template, the engine's label.
        "spark.kubernetes.authenticate.executor.serviceAccountName=default".to_owned(),
        format!(
            "spark.kubernetes.executor.podTemplateFile={}",
            objects::EXECUTOR_TEMPLATE_FILE
        ),
        format!("spark.kubernetes.executor.label.rucat.io/engine-id={id}"),
    ] {
        assert!(args.contains(&wanted.as_str()), "{wanted} not in {args:?}");
    }
    let env = container["env"].as_array().expect("env");
    assert!(env.iter().any(|e| e["name"] == "SPARK_NO_DAEMONIZE"));
    let template = env
        .iter()
        .find(|e| e["name"] == objects::EXECUTOR_TEMPLATE_ENV)
        .and_then(|e| e["value"].as_str())
        .expect("the executors' pod template");
    let template: Value = serde_json::from_str(template).expect("JSON");
    assert_eq!(template["spec"]["automountServiceAccountToken"], false);
    assert_eq!(template["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        template["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    // No NetworkPolicy unless configured.
    assert!(double.network_policies(NS).is_empty());
    // The token Spark Connect requires: by reference to the engine's Secret, which the pod owns.
    let token = env
        .iter()
        .find(|e| e["name"] == objects::SECRET_ENV)
        .expect("the token variable");
    assert!(
        token.get("value").is_none(),
        "never the value itself: {token}"
    );
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        json!({"name": name(&engine), "key": "token", "optional": false})
    );
    let secret = double
        .secret(NS, &name(&engine))
        .expect("the engine's Secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        pod["metadata"]["uid"]
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Pod");
    let stored = secret["data"]["token"].as_str().expect("base64 data");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .expect("base64");
    assert_eq!(
        decoded,
        engine.secret.as_ref().expect("secret").expose().as_bytes()
    );
    assert!(
        !serde_json::to_string(&pod)
            .expect("json")
            .contains(engine.secret.as_ref().expect("secret").expose()),
        "the pod never holds the secret itself"
    );

    let services = double.services(NS);
    assert_eq!(services.len(), 1);
    let service = &services[0];
    assert_eq!(service["metadata"]["name"], name(&engine));
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(
        service["spec"]["selector"]["rucat.io/engine-id"],
        id.as_str()
    );
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, [15002, 7078, 7079, 4040]);
    let owner = &service["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Pod");
    assert_eq!(owner["name"], name(&engine));
    assert_eq!(owner["uid"], pod["metadata"]["uid"]);
}

/// A warm engine of pool `pool`, as a monitor's pool keeper starts it: owned by no user, named
/// after its pool, never idle-stopped.
fn warm_engine(pool: &str, configs: &[(&str, &str)]) -> Engine {
    Engine {
        owner: String::new(),
        name: rucat::engine::EngineName::parse(&format!("warm-{pool}")).expect("a name"),
        idle_timeout_minutes: 0,
        pool: Some(pool.to_owned()),
        ..engine(configs)
    }
}

fn container_args(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect()
}

fn container_env<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
}

fn label_names(object: &Value) -> Vec<String> {
    object["metadata"]["labels"]
        .as_object()
        .expect("labels")
        .keys()
        .cloned()
        .collect()
}

/// A warm engine's pod is labelled with its pool and runs the handover interceptor, which reads
/// the engine's Secret from RUCAT_ENGINE_TOKEN (Spark's own check, SPARK_CONNECT_AUTHENTICATE_TOKEN,
/// is off: it would require the first token for ever); a normal engine's pod has none of this.
/// Neither names an owner.
#[tokio::test]
async fn a_warm_engine_pod_carries_its_pool_and_the_handover_token_check() {
    use rucat::platform::{HANDOVER_INTERCEPTOR, HANDOVER_SECRET_ENV, INTERCEPTOR_CONF};
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let warm = warm_engine("small-2", &[("spark.executor.instances", "2")]);
    let normal = engine(&[("spark.executor.instances", "2")]);
    platform
        .create(&warm)
        .await
        .expect("create the warm engine");
    platform
        .create(&normal)
        .await
        .expect("create the normal engine");
    let interceptor = format!("{INTERCEPTOR_CONF}={HANDOVER_INTERCEPTOR}");
    let engine_labels = [
        "app.kubernetes.io/component",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/name",
        "rucat.io/engine-id",
        "rucat.io/generation",
    ];

    // The warm engine: exactly the rendered pod.
    let pod = double.pod(NS, &name(&warm)).expect("the warm engine's pod");
    let expected =
        serde_json::to_value(objects::driver_pod(&DriverSpec::from(&warm), NS, &config()))
            .expect("json");
    assert_eq!(as_sent(pod.clone()), expected);
    assert_eq!(pod["metadata"]["labels"][objects::POOL_LABEL], "small-2");
    let mut wanted: Vec<String> = engine_labels.iter().map(|l| (*l).to_owned()).collect();
    wanted.push(objects::POOL_LABEL.to_owned());
    wanted.sort();
    assert_eq!(label_names(&pod), wanted, "no owner label, nothing else");
    let token = container_env(&pod, HANDOVER_SECRET_ENV).expect("the handover token variable");
    assert!(
        token.get("value").is_none(),
        "never the value itself: {token}"
    );
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        json!({"name": name(&warm), "key": "token", "optional": false})
    );
    assert!(
        container_env(&pod, objects::SECRET_ENV).is_none(),
        "Spark's own token check is off for a warm engine"
    );
    let args = container_args(&pod);
    assert_eq!(
        args.iter().filter(|a| **a == interceptor).count(),
        1,
        "{interceptor} once in {args:?}"
    );
    assert!(args.contains(&"spark.executor.instances=2".to_owned()));
    // The Secret the variable names holds the warm engine's (first) token.
    assert_eq!(
        secret_token(&double, &warm),
        warm.secret.as_ref().expect("secret").expose().as_bytes()
    );
    let service = double
        .service(NS, &name(&warm))
        .expect("the warm engine's Service");
    assert_eq!(
        service["metadata"]["labels"][objects::POOL_LABEL],
        "small-2"
    );
    assert!(
        service["spec"]["selector"]
            .get(objects::POOL_LABEL)
            .is_none(),
        "the Service selects by engine id only"
    );

    // The normal engine: none of it.
    let pod = double
        .pod(NS, &name(&normal))
        .expect("the normal engine's pod");
    let mut wanted: Vec<String> = engine_labels.iter().map(|l| (*l).to_owned()).collect();
    wanted.sort();
    assert_eq!(label_names(&pod), wanted);
    assert!(container_env(&pod, HANDOVER_SECRET_ENV).is_none());
    assert_eq!(
        container_env(&pod, objects::SECRET_ENV).expect("Spark's token variable")["valueFrom"]
            ["secretKeyRef"],
        json!({"name": name(&normal), "key": "token", "optional": false})
    );
    let args = container_args(&pod);
    assert!(
        !args.iter().any(|a| a.starts_with(INTERCEPTOR_CONF)),
        "{args:?}"
    );
    let service = double
        .service(NS, &name(&normal))
        .expect("the normal engine's Service");
    assert!(service["metadata"]["labels"]
        .get(objects::POOL_LABEL)
        .is_none());
}

#[tokio::test]
async fn every_pod_phase_maps_to_its_engine_state_through_the_watch() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[]);
    platform.create(&engine).await.expect("create");
    let pod = name(&engine);
    let endpoint = format!("sc://rucat-{}.{NS}.svc.cluster.local:15002", engine.id);

    assert_eq!(
        platform.state(&engine).await.expect("state"),
        ResourceState::Starting
    );
    let steps: Vec<(Value, Expect)> = vec![
        (
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}),
            Box::new(|s| *s == ResourceState::Starting),
        ),
        (
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}),
            Box::new(|s| *s == ResourceState::Starting),
        ),
        (
            ready(),
            Box::new(move |s| {
                *s == ResourceState::Running {
                    endpoint: endpoint.clone(),
                }
            }),
        ),
        (
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}),
            Box::new(|s| *s == ResourceState::Starting),
        ),
        (
            container_waiting("ImagePullBackOff", "Back-off pulling image \"nope\""),
            Box::new(
                |s| matches!(s, ResourceState::Failed(m) if m.contains("ImagePullBackOff") && m.contains("nope")),
            ),
        ),
        (
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
            Box::new(|s| matches!(s, ResourceState::Failed(m) if m.contains("Evicted"))),
        ),
        (
            json!({"phase": "Failed", "containerStatuses": [{"name": "spark-connect", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
            Box::new(
                |s| matches!(s, ResourceState::Failed(m) if m.contains("OOMKilled, exit code 137")),
            ),
        ),
        (
            json!({"phase": "Succeeded"}),
            Box::new(|s| matches!(s, ResourceState::Failed(m) if m.contains("driver exited"))),
        ),
    ];
    for (status, wanted) in steps {
        assert!(double.set_pod_status(NS, &pod, status.clone()));
        let got = state_becomes(&platform, &engine, wanted).await;
        println!("{status} -> {got:?}");
    }

    // Deleted behind Rucat's back (a node lost, say): gone, and so is its Service.
    assert!(double.remove_pod(NS, &pod));
    state_becomes(&platform, &engine, |s| *s == ResourceState::Gone).await;
    assert!(
        double.service(NS, &pod).is_none(),
        "the owned Service went with the pod"
    );
}

#[tokio::test]
async fn checking_running_engines_costs_no_request_beyond_the_watch() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engines: Vec<Engine> = (0..50).map(|_| engine(&[])).collect();
    for engine in &engines {
        platform.create(engine).await.expect("create");
        double.set_pod_status(NS, &name(engine), ready());
    }
    for engine in &engines {
        state_becomes(&platform, engine, |s| {
            matches!(s, ResourceState::Running { .. })
        })
        .await;
    }
    double.reset_requests();
    for _ in 0..10 {
        for engine in &engines {
            assert!(matches!(
                platform.state(engine).await.expect("state"),
                ResourceState::Running { .. }
            ));
        }
        assert_eq!(platform.resources().await.expect("resources").len(), 50);
    }
    let requests: Vec<_> = double.requests().into_iter().filter(|r| !r.watch).collect();
    assert!(
        requests.is_empty(),
        "500 state checks and 10 resource listings asked the API: {:?}",
        requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn delete_removes_pod_and_what_it_owns() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[]);
    platform.create(&engine).await.expect("create");
    double.set_deletion_delay(Duration::from_millis(600));

    // The delete is asked (once, for exactly this pod); the pod terminates, then goes with
    // what it owns.
    double.reset_requests();
    platform
        .delete(&engine.id, engine.generation, false)
        .await
        .expect("delete");
    let uid = double.pod(NS, &name(&engine)).expect("terminating")["metadata"]["uid"].clone();
    let deletes: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        deletes,
        vec![format!("/api/v1/namespaces/{NS}/pods/{}", name(&engine))]
    );
    assert!(uid.is_string());
    state_becomes(&platform, &engine, |s| *s == ResourceState::Gone).await;
    assert!(double.pod(NS, &name(&engine)).is_none());
    assert!(double.service(NS, &name(&engine)).is_none());
    assert!(double.secret(NS, &name(&engine)).is_none());

    // Deleting nothing succeeds.
    platform
        .delete(&engine.id, engine.generation, false)
        .await
        .expect("delete again");
}

fn secret_token(double: &KubeDouble, engine: &Engine) -> Vec<u8> {
    use base64::Engine as _;
    let secret = double
        .secret(NS, &name(engine))
        .expect("the engine's Secret");
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().expect("data"))
        .expect("base64")
}

#[tokio::test]
async fn each_start_has_its_own_secret_and_a_stale_one_is_replaced() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[]);
    // A Secret left by an earlier start of this engine (its pod never made, so no owner).
    use base64::Engine as _;
    double.insert_secret(
        NS,
        json!({"metadata": {"name": name(&engine)},
               "data": {"token": base64::engine::general_purpose::STANDARD.encode("old")}}),
    );
    platform.create(&engine).await.expect("create");
    let token = engine
        .secret
        .as_ref()
        .expect("secret")
        .expose()
        .as_bytes()
        .to_vec();
    assert_eq!(
        secret_token(&double, &engine),
        token,
        "replaced by this start's"
    );
    let pod = double.pod(NS, &name(&engine)).expect("pod");
    let owner = |double: &KubeDouble| {
        double.secret(NS, &name(&engine)).expect("secret")["metadata"]["ownerReferences"][0]["uid"]
            .clone()
    };
    assert_eq!(owner(&double), pod["metadata"]["uid"]);

    // Another attempt of the same start (the monitor died after creating): everything is
    // adopted, the Secret kept as it is.
    platform.create(&engine).await.expect("create again");
    assert_eq!(secret_token(&double, &engine), token);
    assert_eq!(owner(&double), pod["metadata"]["uid"]);
    assert_eq!(double.pods(NS).len(), 1);

    // The next start (a restart) has a new secret.
    platform
        .delete(&engine.id, engine.generation, false)
        .await
        .expect("delete");
    let restarted = Engine {
        secret: Some(rucat::engine::EngineSecret::generate()),
        ..engine.clone()
    };
    platform.create(&restarted).await.expect("restart");
    assert_eq!(
        secret_token(&double, &restarted),
        restarted
            .secret
            .as_ref()
            .expect("secret")
            .expose()
            .as_bytes()
    );
    assert_ne!(secret_token(&double, &restarted), token);
}

fn with_network_policy() -> KubernetesConfig {
    KubernetesConfig {
        network_policy: Some(NetworkPolicyConfig {
            connect_from: vec![Peer {
                namespace: Some("rucat".into()),
                pod_labels: [("rucat.io/engine-access".to_owned(), "true".to_owned())].into(),
            }],
        }),
        ..config()
    }
}

#[tokio::test]
async fn each_engine_gets_a_network_policy_owned_by_its_pod() {
    let double = KubeDouble::start().await;
    let config = with_network_policy();
    let platform = platform_with(&double, config.clone()).await;
    let engine = engine(&[]);
    platform.create(&engine).await.expect("create");

    let pod = double.pod(NS, &name(&engine)).expect("pod");
    let policy = double
        .network_policy(NS, &name(&engine))
        .expect("a network policy");
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let policy_config = config.network_policy.as_ref().expect("configured");
    let expected = serde_json::to_value(objects::engine_network_policy(
        &engine.id,
        NS,
        &config,
        policy_config,
        Some((&name(&engine), uid)),
    ))
    .expect("json");
    assert_eq!(as_sent(policy.clone()), expected);
    // Spelled out: the engine's pods (driver and executors) reach each other; the peers reach
    // the Spark Connect port only; nothing else is admitted.
    let id = engine.id.to_string();
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["rucat.io/engine-id"],
        id.as_str()
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    let rules = spec["ingress"].as_array().expect("rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0]["from"],
        json!([{"podSelector": {"matchLabels": {"rucat.io/engine-id": id}}}])
    );
    assert_eq!(
        rules[1]["ports"],
        json!([{"port": 15002, "protocol": "TCP"}])
    );
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "rucat"
    );
    assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], uid);

    // Deleted with the engine.
    platform
        .delete(&engine.id, engine.generation, false)
        .await
        .expect("delete");
    assert!(double.network_policy(NS, &name(&engine)).is_none());

    // Owned by the pod: a pod that vanishes takes its policy along.
    let other = self::engine(&[]);
    platform.create(&other).await.expect("create");
    assert!(double.network_policy(NS, &name(&other)).is_some());
    assert!(double.remove_pod(NS, &name(&other)));
    assert!(double.network_policy(NS, &name(&other)).is_none());
}

#[tokio::test]
async fn create_adopts_what_an_earlier_attempt_left() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[]);
    platform.create(&engine).await.expect("create");
    let uid = double.pod(NS, &name(&engine)).expect("pod")["metadata"]["uid"].clone();

    // The monitor died after creating; the next attempt finds the pod (409) and adopts it.
    platform
        .create(&engine)
        .await
        .expect("second create adopts");
    assert_eq!(double.pods(NS).len(), 1);
    assert_eq!(
        double.pod(NS, &name(&engine)).expect("pod")["metadata"]["uid"],
        uid
    );
    assert_eq!(double.services(NS).len(), 1);

    // A pod without its Service (the attempt died in between): the Service is made.
    let other = self::engine(&[]);
    let pod = serde_json::to_value(objects::driver_pod(
        &DriverSpec::from(&other),
        NS,
        &config(),
    ))
    .expect("json");
    double.insert_pod(NS, pod);
    platform.create(&other).await.expect("create adopts");
    let service = double.service(NS, &name(&other)).expect("service made");
    assert_eq!(
        service["metadata"]["ownerReferences"][0]["uid"],
        double.pod(NS, &name(&other)).expect("pod")["metadata"]["uid"]
    );
}

#[tokio::test]
async fn api_errors_are_named_and_transient_ones_retried() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;

    // Forbidden: not retried, named, nothing made.
    double.fail_next(Fault::new("/pods", 403).with_method("POST"));
    let refused = engine(&[]);
    let error = platform
        .create(&refused)
        .await
        .expect_err("403")
        .to_string();
    assert!(
        error.contains("403") && error.contains("Forbidden"),
        "{error}"
    );
    assert!(double.pods(NS).is_empty());

    // Two internal errors: asked again, created once.
    double.fail_next(Fault::new("/pods", 500).with_method("POST").with_times(2));
    let flaky = engine(&[]);
    platform
        .create(&flaky)
        .await
        .expect("created on the third try");
    assert_eq!(double.pods(NS).len(), 1);

    // An API that keeps failing: the error says so.
    double.fail_next(Fault::new("/pods", 500).with_method("POST").with_times(100));
    let error = platform
        .create(&engine(&[]))
        .await
        .expect_err("500")
        .to_string();
    assert!(error.contains("500"), "{error}");
    double.clear_faults();

    // An API that does not answer: bounded by the timeout.
    double.fail_next(
        Fault::new("/log", 200)
            .with_method("GET")
            .with_times(3)
            .with_delay(Duration::from_secs(10)),
    );
    double.reset_requests();
    let error = platform
        .logs(&flaky.id, 1024)
        .await
        .expect_err("timeout")
        .to_string();
    // Each attempt was cut at the API timeout (2 s; the answer would have come after 10 s),
    // and the slow requests were asked again a bounded number of times.
    assert!(error.contains("did not answer within 2s"), "{error}");
    let asked = double
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/log"))
        .count();
    assert_eq!(asked, 3, "{:?}", double.requests());
}

#[tokio::test]
async fn logs_are_a_bounded_tail() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[]);
    assert_eq!(platform.logs(&engine.id, 100).await.expect("no pod"), None);
    platform.create(&engine).await.expect("create");
    let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
    double.set_pod_log(NS, &name(&engine), &log);
    let tail = platform
        .logs(&engine.id, 16)
        .await
        .expect("logs")
        .expect("a log");
    assert_eq!(tail, "line 98\nline 99\n");
}

#[tokio::test]
async fn the_watch_survives_dropped_streams_and_expired_versions() {
    let double = KubeDouble::start().await;
    let platform = platform(&double).await;
    let engine = engine(&[]);
    platform.create(&engine).await.expect("create");
    state_becomes(&platform, &engine, |s| *s == ResourceState::Starting).await;

    double.close_watches();
    double.set_pod_status(NS, &name(&engine), ready());
    state_becomes(&platform, &engine, |s| {
        matches!(s, ResourceState::Running { .. })
    })
    .await;

    double.expire_resource_versions();
    double.close_watches();
    double.set_pod_status(
        NS,
        &name(&engine),
        json!({"phase": "Failed", "reason": "Evicted"}),
    );
    state_becomes(&platform, &engine, |s| {
        matches!(s, ResourceState::Failed(_))
    })
    .await;
}

fn fast_monitor() -> MonitorConfig {
    MonitorConfig {
        poll_interval: Duration::from_millis(50),
        trigger_timeout: Duration::from_secs(5),
        start_check_interval: Duration::from_millis(20),
        health_check_interval: Duration::from_millis(20),
        ..MonitorConfig::default()
    }
}

/// The monitor with the Kubernetes platform, reaching every driver's Spark Connect port at a
/// stand-in server (nothing runs in the double's pods).
async fn setup(
    double: &KubeDouble,
) -> (TestApp, Arc<KubernetesPlatform>, Monitor, FakeSparkConnect) {
    setup_with(double, fast_monitor()).await
}

async fn setup_with(
    double: &KubeDouble,
    monitor: MonitorConfig,
) -> (TestApp, Arc<KubernetesPlatform>, Monitor, FakeSparkConnect) {
    let connect = FakeSparkConnect::start().await;
    let config = KubernetesConfig {
        connect_address: Some(connect.addr.to_string()),
        ..config()
    };
    let platform = Arc::new(platform_with(double, config).await);
    let app = spawn_api(Some(platform.clone() as Arc<dyn Platform>)).await;
    let monitor = Monitor::new(app.store.clone(), platform.clone(), monitor);
    (app, platform, monitor, connect)
}

async fn drive_until(app: &TestApp, monitor: &Monitor, id: &str, wanted: EngineState) {
    for _ in 0..300 {
        if app.client.get(id).await.expect("get").state == wanted {
            return;
        }
        monitor.pass().await.expect("pass");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let engine = app.client.get(id).await.expect("get");
    panic!("engine {id} never reached {wanted}: {engine:?}");
}

async fn create(app: &TestApp) -> String {
    app.client
        .create("etl", VERSION, &Default::default())
        .await
        .expect("create")
}

#[tokio::test]
async fn the_monitor_runs_an_engine_on_kubernetes_from_create_to_stop() {
    let double = KubeDouble::start().await;
    let (app, _platform, monitor, connect) = setup(&double).await;
    let id = create(&app).await;
    let pod = format!("rucat-{id}");

    drive_until(&app, &monitor, &id, EngineState::StartInProgress).await;
    assert!(double.pod(NS, &pod).is_some());
    for _ in 0..5 {
        monitor.pass().await.expect("pass");
    }
    assert_eq!(
        app.client.get(&id).await.expect("get").state,
        EngineState::StartInProgress,
        "not Running before the pod is ready"
    );
    // Ready (its TCP readiness probe passed) is not Running: Spark Connect must answer.
    connect.set_healthy(false);
    double.set_pod_status(NS, &pod, ready());
    for _ in 0..300 {
        monitor.pass().await.expect("pass");
        if connect.calls() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.client.get(&id).await.expect("get").state,
        EngineState::StartInProgress,
        "a ready pod whose Spark Connect does not answer is not Running"
    );
    assert!(connect.calls() > 0, "the monitor asked Spark Connect");
    connect.set_healthy(true);
    drive_until(&app, &monitor, &id, EngineState::Running).await;
    // The proxy (and the monitor) reach the engine where [kubernetes] connect_address says
    // (by default its Service's DNS name); users see the proxy.
    let stored = app
        .store
        .get(&EngineId::parse(&id).expect("id"))
        .await
        .expect("get")
        .expect("engine");
    assert_eq!(stored.endpoint, Some(format!("sc://{}", connect.addr)));
    let dns = objects::endpoint(&stored.id, NS, &config());
    assert_eq!(dns, format!("sc://{pod}.{NS}.svc.cluster.local:15002"));
    let engine = app.client.get(&id).await.expect("get");
    assert_eq!(
        engine.endpoint,
        Some(format!("sc://localhost:15002/;x-rucat-engine={id}"))
    );

    double.set_pod_log(NS, &pod, "Spark Connect server started\nbye\n");
    app.client.stop(&id).await.expect("stop");
    drive_until(&app, &monitor, &id, EngineState::Terminated).await;
    assert!(double.pod(NS, &pod).is_none());
    assert!(double.service(NS, &pod).is_none());
    let logs = app.client.logs(&id).await.expect("logs");
    assert_eq!(logs.source, "kept");
    assert!(
        logs.log.contains("Spark Connect server started"),
        "{logs:?}"
    );
}

/// A pool on Kubernetes: the monitor starts its warm engine as a pod labelled with the pool; a
/// take (one change in the store, as the server makes it) leaves that pod, its Service and its
/// Secret exactly as they were (no request writes them: the engine keeps its id, and its owner is
/// in the store only); the monitor then refills the pool with a new labelled pod.
#[tokio::test]
async fn a_take_leaves_the_warm_pod_as_it_is_and_the_pool_is_refilled() {
    use rucat::engine::policy::ConfPolicy;
    use rucat::engine::pool::{PoolFile, Pools};
    let double = KubeDouble::start().await;
    let pools = Pools::from_file(
        &[PoolFile {
            name: "small".into(),
            version: VERSION.into(),
            size: 1,
            configs: [("spark.executor.instances".to_owned(), "2".to_owned())].into(),
        }],
        &ConfPolicy::default(),
    )
    .expect("a valid pool");
    let (app, _platform, monitor, _connect) = setup_with(
        &double,
        MonitorConfig {
            pools,
            ..fast_monitor()
        },
    )
    .await;
    monitor.keep_pools().await.expect("fill the pool");
    let warm = app.store.warm_engines().await.expect("warm engines");
    assert_eq!(warm.len(), 1, "{warm:?}");
    let id = warm[0].id.to_string();
    let pod_name = name(&warm[0]);
    until(Duration::from_secs(10), "the warm driver pod", || async {
        monitor.pass().await.expect("pass");
        double.pod(NS, &pod_name).is_some()
    })
    .await;
    double.set_pod_status(NS, &pod_name, ready());
    drive_until(&app, &monitor, &id, EngineState::Running).await;
    let before = double.pod(NS, &pod_name).expect("the warm pod");
    assert_eq!(before["metadata"]["labels"][objects::POOL_LABEL], "small");
    let service_before = double.service(NS, &pod_name).expect("its Service");
    let token_before = secret_token(&double, &warm[0]);

    double.reset_requests();
    let taken = app
        .store
        .take_warm(&rucat::store::Take {
            pool: "small".into(),
            owner: "alice".into(),
            name: rucat::engine::EngineName::parse("etl").expect("a name"),
            secret: rucat::engine::EngineSecret::generate(),
            idle_timeout_minutes: 0,
            limits: Default::default(),
        })
        .await
        .expect("take")
        .expect("a Running warm engine to take");
    assert_eq!(taken.id, warm[0].id, "a take keeps the engine's id");
    assert_eq!(taken.owner, "alice");
    assert_eq!(taken.pool, None);
    // The monitor goes on checking the taken engine (handing its new secret over).
    for _ in 0..5 {
        monitor.pass().await.expect("pass");
    }
    assert_eq!(
        app.client.get(&id).await.expect("get").state,
        EngineState::Running
    );
    let after = double.pod(NS, &pod_name).expect("the taken engine's pod");
    assert_eq!(
        after, before,
        "the pod is untouched: same labels, same resourceVersion"
    );
    assert_eq!(
        double.service(NS, &pod_name).expect("its Service"),
        service_before
    );
    assert_eq!(
        secret_token(&double, &warm[0]),
        token_before,
        "the Secret keeps the first token"
    );
    let writes: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        writes.is_empty(),
        "a take writes nothing to the cluster: {writes:?}"
    );

    // The pool is refilled with a new warm engine, in a new labelled pod.
    monitor.keep_pools().await.expect("refill the pool");
    let refill = app.store.warm_engines().await.expect("warm engines");
    assert_eq!(refill.len(), 1, "{refill:?}");
    assert_ne!(refill[0].id, taken.id);
    let refill_pod = name(&refill[0]);
    until(
        Duration::from_secs(10),
        "the refill's driver pod",
        || async {
            monitor.pass().await.expect("pass");
            double.pod(NS, &refill_pod).is_some()
        },
    )
    .await;
    let pods = double.pods(NS);
    assert_eq!(pods.len(), 2, "{pods:?}");
    for pod in &pods {
        assert_eq!(pod["metadata"]["labels"][objects::POOL_LABEL], "small");
    }
}

#[tokio::test]
async fn a_failing_pod_fails_its_engine_with_the_reason_and_is_cleaned() {
    let double = KubeDouble::start().await;
    let (app, _platform, monitor, _connect) = setup(&double).await;
    let id = create(&app).await;
    let pod = format!("rucat-{id}");
    drive_until(&app, &monitor, &id, EngineState::StartInProgress).await;
    double.set_pod_status(
        NS,
        &pod,
        container_waiting("ErrImagePull", "manifest unknown: apache/spark:9.9.9"),
    );
    drive_until(&app, &monitor, &id, EngineState::ErrorClean).await;
    let engine = app.client.get(&id).await.expect("get");
    let error = engine.error.unwrap_or_default();
    assert!(
        error.contains("ErrImagePull") && error.contains("manifest unknown"),
        "{error}"
    );
    assert!(double.pod(NS, &pod).is_none(), "the failed pod is deleted");
}

#[tokio::test]
async fn an_api_refusing_creates_fails_the_engine_but_keeps_it() {
    let double = KubeDouble::start().await;
    let (app, _platform, monitor, _connect) = setup(&double).await;
    double.fail_next(Fault::new("/pods", 403).with_method("POST"));
    let id = create(&app).await;
    drive_until(&app, &monitor, &id, EngineState::ErrorClean).await;
    let engine = app.client.get(&id).await.expect("get");
    assert!(
        engine.error.as_deref().unwrap_or_default().contains("403"),
        "{engine:?}"
    );
    assert!(double.pods(NS).is_empty());
    // The engine is kept with its error until its user deletes it; the next engine runs once
    // the API lets it.
    app.client
        .delete(&id)
        .await
        .expect("delete the failed engine");
    let next = create(&app).await;
    drive_until(&app, &monitor, &next, EngineState::StartInProgress).await;
    double.set_pod_status(NS, &format!("rucat-{next}"), ready());
    drive_until(&app, &monitor, &next, EngineState::Running).await;
}

#[tokio::test]
async fn orphan_pods_are_deleted_and_foreign_pods_left_alone() {
    let double = KubeDouble::start().await;
    let (app, _platform, monitor, _connect) = setup(&double).await;
    let spec_pod = |id: &EngineId, instance: &str| {
        let config = KubernetesConfig {
            instance: instance.to_owned(),
            ..config()
        };
        let configs = Default::default();
        serde_json::to_value(objects::driver_pod(
            &DriverSpec {
                id,
                name: "x",
                version: VERSION,
                configs: &configs,
                // As planted engines have it.
                generation: 0,
                pool: None,
            },
            NS,
            &config,
        ))
        .expect("json")
    };
    // A pod whose engine was deleted, one whose engine is stopped, one of another Rucat
    // instance, and one nobody labelled.
    let deleted = EngineId::generate();
    double.insert_pod(NS, spec_pod(&deleted, "rucat"));
    let stopped = app.plant(EngineState::Terminated).await;
    double.insert_pod(NS, spec_pod(&stopped.id, "rucat"));
    let foreign = EngineId::generate();
    double.insert_pod(NS, spec_pod(&foreign, "other-team"));
    double.insert_pod(
        NS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unrelated"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    let running = app.plant(EngineState::Running).await;
    double.insert_pod(NS, spec_pod(&running.id, "rucat"));

    let cleaned = monitor.clean_orphans().await.expect("scan");
    assert_eq!(cleaned, 2);
    let left: Vec<String> = double
        .pods(NS)
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let mut left = left;
    left.sort();
    let mut expected = vec![
        objects::object_name(&foreign),
        objects::object_name(&running.id),
        "unrelated".to_owned(),
    ];
    expected.sort();
    assert_eq!(left, expected);
}

/// The real `rucat` binary with `--platform kubernetes`, its kubeconfig pointing at the double;
/// killed when dropped.
struct Binary {
    process: Process,
    dir: tempfile::TempDir,
    server: String,
    proxy: u16,
}

impl Binary {
    /// `rucat serve --platform kubernetes` on the double, reaching drivers' Spark Connect at
    /// `connect`.
    async fn serve(double: &KubeDouble, connect: &FakeSparkConnect) -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        double
            .write_kubeconfig(&dir.path().join("kubeconfig"), NS)
            .expect("kubeconfig");
        // Port 0: rucat binds free ports and names them in its log.
        let mut process = Spawn::new("rucat serve", dir.path().join("rucat.log"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .config(
                dir.path().join("rucat.toml"),
                &format!(
                    "platform = \"kubernetes\"\n\
                     [kubernetes]\nversions = [\"{VERSION}\"]\nconnect_address = \"{}\"\n\
                     [kubernetes.network_policy]\n\
                     connect_from = [{{ namespace = \"rucat\", pod_labels = {{ \"rucat.io/engine-access\" = \"true\" }} }}]\n\
                     [monitor]\npoll_interval_ms = 100\nstart_check_interval_ms = 50\n",
                    connect.addr
                ),
            )
            .env("KUBECONFIG", dir.path().join("kubeconfig"))
            .on_drop(OnDrop::Kill)
            .start();
        let proxy = process
            .wait_listening("Spark Connect proxy", Duration::from_secs(30))
            .await;
        let server = process.wait_ready(Duration::from_secs(30)).await;
        Binary {
            process,
            dir,
            server: format!("http://{server}"),
            proxy: proxy.port(),
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(args)
            .arg("--config")
            .arg(self.dir.path().join("rucat.toml"))
            .env("RUCAT_SERVER", &self.server)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .output()
            .expect("run the rucat CLI")
    }
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "rucat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The JSON documents of `rucat engine render`'s YAML stream.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| {
            doc.lines()
                .filter(|line| !line.starts_with('#') && *line != "---")
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_json::from_str(&doc).expect("each document is JSON"))
        .collect()
}

// The CLI runs as a blocking child process: the double needs a runtime thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_an_engine_on_kubernetes_and_renders_what_it_creates() {
    let double = KubeDouble::start().await;
    let connect = FakeSparkConnect::start().await;
    let rucat = Binary::serve(&double, &connect).await;

    let id = stdout(&rucat.cli(&[
        "engine",
        "create",
        "--name",
        "etl",
        "--version",
        VERSION,
        "--conf",
        "spark.executor.instances=2",
    ]))
    .trim()
    .to_owned();
    let pod_name = format!("rucat-{id}");
    let mut created = None;
    for _ in 0..100 {
        created = double.pod(NS, &pod_name);
        if created.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = created.unwrap_or_else(|| panic!("no pod created: {}", rucat.log()));

    // `render` prints exactly what the monitor created.
    let rendered = documents(&stdout(&rucat.cli(&[
        "engine",
        "render",
        "--name",
        "etl",
        "--version",
        VERSION,
        "--conf",
        "spark.executor.instances=2",
        "--id",
        &id,
    ])));
    assert_eq!(rendered.len(), 3);
    assert_eq!(rendered[0], as_sent(created));
    assert_eq!(rendered[1]["kind"], "Service");
    let mut service = as_sent(double.service(NS, &pod_name).expect("service"));
    if let Some(meta) = service["metadata"].as_object_mut() {
        meta.remove("ownerReferences");
    }
    assert_eq!(rendered[1], service);
    assert_eq!(rendered[2]["kind"], "NetworkPolicy");
    let mut policy = as_sent(
        double
            .network_policy(NS, &pod_name)
            .expect("network policy"),
    );
    if let Some(meta) = policy["metadata"].as_object_mut() {
        meta.remove("ownerReferences");
    }
    assert_eq!(rendered[2], policy);

    double.set_pod_status(NS, &pod_name, ready());
    let waited = rucat.cli(&["engine", "wait", &id, "--timeout", "30"]);
    assert!(waited.status.success(), "{}", rucat.log());
    let endpoint = stdout(&waited);
    assert_eq!(
        endpoint.trim(),
        format!("sc://localhost:{}/;x-rucat-engine={id}", rucat.proxy),
        "users reach engines through the proxy"
    );
    // The proxy reaches the engine at its Service's address; render shows only a reference to
    // the engine's Secret.
    let secret = double.secret(NS, &pod_name).expect("the engine's Secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["name"],
        pod_name.as_str()
    );

    stdout(&rucat.cli(&["engine", "stop", &id, "--wait", "--timeout", "30"]));
    assert!(double.pod(NS, &pod_name).is_none());
    assert!(double.service(NS, &pod_name).is_none());
    assert!(double.network_policy(NS, &pod_name).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_refuses_what_a_create_would() {
    let double = KubeDouble::start().await;
    let connect = FakeSparkConnect::start().await;
    let rucat = Binary::serve(&double, &connect).await;
    for (args, needle) in [
        (
            vec!["--conf", "spark.kubernetes.driver.podTemplateFile=/tmp/x"],
            "\"spark.kubernetes.driver.podTemplateFile\"",
        ),
        (
            vec!["--conf", "spark.kubernetes.namespace=kube-system"],
            "\"spark.kubernetes.namespace\"",
        ),
        (vec!["--namespace", "Kube_System"], "not a namespace name"),
        (vec!["--id", "../x"], "not an engine id"),
    ] {
        let mut full = vec!["engine", "render", "--name", "etl", "--version", VERSION];
        full.extend(args);
        let output = rucat.cli(&full);
        assert!(!output.status.success(), "{full:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{full:?}: {stderr}");
    }
    // The server offers the configured versions only.
    let output = rucat.cli(&["engine", "create", "--name", "etl", "--version", "9.9.9"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("422") && stderr.contains(&format!("available: {VERSION}")),
        "{stderr}"
    );
    let output = rucat.cli(&["engine", "render", "--name", "etl", "--version", "9.9.9"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown version \"9.9.9\""));
    assert!(double.pods(NS).is_empty(), "render creates nothing");
}

/// The driver container of `engine`'s pod, run here as a kubelet would run it (its command,
/// arguments and environment), with what only a cluster has swapped for local stand-ins: Spark
/// under `SPARK_HOME` instead of `/opt/spark`, a local master instead of the API server,
/// 127.0.0.1 instead of the Service's DNS name, free ports instead of the pod's own, a directory
/// of the test's own as the pod's `/tmp`. Stopped (its process group) when dropped.
struct LocalDriver {
    child: std::process::Child,
    /// Where it serves Spark Connect (the port its readiness probe checks, moved).
    endpoint: String,
    home: tempfile::TempDir,
}

impl LocalDriver {
    /// Starts it and waits until it serves (panicking with its log if it does not).
    async fn start(engine: &Engine) -> LocalDriver {
        let spark_home = e2e::spark_home();
        let spec = DriverSpec::from(engine);
        let pod = serde_json::to_value(objects::driver_pod(&spec, NS, &config())).expect("json");
        let container = &pod["spec"]["containers"][0];
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .expect("a list")
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        // `/bin/sh -c SCRIPT rucat-driver ARGS…`: the script writes the executors' pod template,
        // then runs Spark Connect from /opt/spark (here: SPARK_HOME) in the pod's /tmp (here: a
        // directory of the test's own).
        let home = tempfile::tempdir().expect("a home");
        let command = strings(&container["command"]);
        assert_eq!(command.len(), 4, "{command:?}");
        let program = command[0].clone();
        let script = command[2]
            .replace("/opt/spark", &spark_home.to_string_lossy())
            .replace("/tmp", &home.path().to_string_lossy());
        let probe_port = container["readinessProbe"]["tcpSocket"]["port"]
            .as_i64()
            .expect("a probe port");
        let connect_port = common::process::free_port();
        let swaps = [
            (
                "k8s://https://kubernetes.default.svc:443".to_owned(),
                "local[1]".to_owned(),
            ),
            (
                format!(
                    "spark.driver.host=rucat-{}.{NS}.svc.cluster.local",
                    engine.id
                ),
                "spark.driver.host=127.0.0.1".to_owned(),
            ),
            (
                format!("spark.connect.grpc.binding.port={probe_port}"),
                format!("spark.connect.grpc.binding.port={connect_port}"),
            ),
            (
                "spark.driver.port=7078".to_owned(),
                "spark.driver.port=0".to_owned(),
            ),
            (
                "spark.driver.blockManager.port=7079".to_owned(),
                "spark.driver.blockManager.port=0".to_owned(),
            ),
            (
                "spark.ui.port=4040".to_owned(),
                "spark.ui.enabled=false".to_owned(),
            ),
        ];
        let mut args = vec!["-c".to_owned(), script, command[3].clone()];
        let pod_args = args.len();
        args.extend(strings(&container["args"]));
        for (from, to) in &swaps {
            let at = args
                .iter()
                .position(|a| a == from)
                .unwrap_or_else(|| panic!("{from} not in the pod's arguments {args:?}"));
            args[at] = to.clone();
        }
        assert!(args.len() > pod_args);
        let mut process = std::process::Command::new(&program);
        process
            .args(&args)
            .env("SPARK_HOME", &spark_home)
            // Only what the pod's environment names.
            .env_remove(objects::SECRET_ENV)
            .env_remove(rucat::platform::HANDOVER_SECRET_ENV);
        // The engine's Secret, as the kubelet would put it in the variable its reference names.
        let token = engine.secret.as_ref().expect("secret").expose().to_owned();
        for var in container["env"].as_array().expect("env") {
            let name = var["name"].as_str().expect("a name");
            let value = match var["value"].as_str() {
                // The pod's writable /tmp, here a directory of the test's own.
                Some(value) => value.replacen("/tmp", &home.path().to_string_lossy(), 1),
                None => {
                    assert_eq!(
                        var["valueFrom"]["secretKeyRef"]["name"],
                        objects::object_name(&engine.id)
                    );
                    token.clone()
                }
            };
            process.env(name, value);
        }
        use std::os::unix::process::CommandExt;
        let log = home.path().join("driver.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = process
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start the driver command");
        let mut driver = LocalDriver {
            child,
            endpoint: format!("sc://127.0.0.1:{connect_port}"),
            home,
        };
        for _ in 0..1200 {
            if e2e::port_open(&driver.endpoint) {
                return driver;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "the driver command exited with {status} before serving:\n{}",
                    driver.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver.stop();
        panic!("the Spark Connect port never opened:\n{}", driver.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("driver.log")).unwrap_or_default()
    }

    /// In the foreground (SPARK_NO_DAEMONIZE), the whole driver is this process group.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }

    /// `SELECT 1` at this driver with these connection-string parameters, or why not.
    async fn select(&self, parameters: &[String]) -> Result<(), String> {
        let mut connection = self.endpoint.clone();
        for parameter in parameters {
            connection = e2e::with_parameter(&connection, parameter);
        }
        let attempt = async {
            let spark = spark_connect_rs::SparkSessionBuilder::remote(&connection)
                .build()
                .await?;
            spark.sql("SELECT 1").await?.collect().await
        };
        match tokio::time::timeout(Duration::from_secs(120), attempt).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 120 s".to_owned()),
        }
    }
}

impl Drop for LocalDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The driver container of a normal engine's pod serves Spark Connect on the port its readiness
/// probe checks, requires the engine's secret, and answers queries from a real Spark Connect
/// client.
#[tokio::test]
async fn the_driver_container_command_starts_a_real_spark_connect_server() {
    let engine = engine(&[("spark.sql.shuffle.partitions", "4")]);
    let token = engine.secret.as_ref().expect("secret").expose().to_owned();
    let mut driver = LocalDriver::start(&engine).await;
    // It requires the engine's secret: without it Spark refuses; with it, it serves.
    let denied = driver.select(&["user_id=nobody".to_owned()]).await;
    assert!(denied.is_err(), "served a client without the secret");
    let with_token = e2e::with_parameter(&driver.endpoint, &format!("token={token}"));
    let result = tokio::time::timeout(Duration::from_secs(120), e2e::query(&with_token))
        .await
        .map_err(|_| "the query did not finish within 120 s".to_owned());
    driver.stop();
    if let Err(why) = result {
        panic!("{why}:\n{}", driver.log());
    }
    // The executors' pod template is where Spark is told to read it, private, and as rendered.
    let template = driver.home.path().join(
        objects::EXECUTOR_TEMPLATE_FILE
            .strip_prefix("/tmp/")
            .expect("under /tmp"),
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&template).expect("template written"))
            .expect("JSON");
    assert_eq!(
        written,
        serde_json::to_value(objects::executor_pod_template(&config())).expect("json")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&template)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "only the driver's user reads it");
}

/// The driver container of a warm engine's pod, with the handover interceptor in Spark's jars
/// (as the engine image of `deploy/engine-image/` has it; here the setup script put it in
/// SPARK_HOME): it serves the first token from its Secret, and after a take's handover (the
/// first token with `x-rucat-rekey`, as the monitor and the proxy send it) only the new one.
#[tokio::test]
async fn a_warm_driver_container_command_on_real_spark_hands_its_secret_over() {
    let jar = e2e::spark_home()
        .join("jars")
        .join(rucat::platform::HANDOVER_JAR);
    assert!(
        jar.is_file(),
        "{} is missing: run scripts/setup.sh",
        jar.display()
    );
    let engine = warm_engine("small", &[("spark.sql.shuffle.partitions", "4")]);
    let first = engine.secret.as_ref().expect("secret").expose().to_owned();
    let new = rucat::engine::EngineSecret::generate().expose().to_owned();
    let mut driver = LocalDriver::start(&engine).await;
    let token = |t: &str| format!("token={t}");
    let rekey = |t: &str| format!("{}={t}", rucat::engine::REKEY_HEADER);
    let steps: [(&str, Vec<String>, bool); 6] = [
        ("no token", vec![], false),
        ("the first token", vec![token(&first)], true),
        (
            "the new token before the handover",
            vec![token(&new)],
            false,
        ),
        (
            "the first token handing the new one over",
            vec![token(&first), rekey(&new)],
            true,
        ),
        (
            "the first token after the handover",
            vec![token(&first)],
            false,
        ),
        ("the new token after the handover", vec![token(&new)], true),
    ];
    let mut wrong = Vec::new();
    for (what, parameters, serves) in steps {
        let result = driver.select(&parameters).await;
        println!("{what}: {result:?}");
        if result.is_ok() != serves {
            wrong.push(format!("{what}: {result:?}"));
        }
    }
    driver.stop();
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", driver.log());
    let log = driver.log();
    assert!(
        !log.contains(&first) && !log.contains(&new),
        "no token in the driver's log"
    );
}

// ---------------------------------------------------------------------------------------------
// Convergence on Kubernetes: stuck deletes, fencing against a late DELETE, hung drivers.

/// Runs the monitor until the engine is Running on its (ready) pod.
async fn running_engine(app: &TestApp, double: &KubeDouble) -> (String, String) {
    let id = create(app).await;
    let pod = format!("rucat-{id}");
    until(Duration::from_secs(10), "the driver pod", || async {
        double.pod(NS, &pod).is_some()
    })
    .await;
    double.set_pod_status(NS, &pod, ready());
    app.client
        .wait(&id, EngineState::Running, Duration::from_secs(10), |_| {})
        .await
        .expect("running");
    (id, pod)
}

/// Item 2 (a). A driver pod whose deletion never finishes (a finalizer nobody removes): after
/// `delete_timeout` the monitor deletes it again with `gracePeriodSeconds: 0`, after
/// `kill_timeout` more the engine is `ErrorClean` with a message naming the pod and what holds
/// it; the orphan scan keeps deleting it, and it goes once its finalizer does.
///
/// Before the delete deadlines, the engine stayed in `TerminateInProgress` for ever and the
/// pod was never deleted with grace period 0.
#[tokio::test]
async fn a_pod_that_will_not_go_is_forced_then_its_engine_fails_naming_it() {
    let double = KubeDouble::start().await;
    let (delete_timeout, kill_timeout) = (Duration::from_millis(500), Duration::from_millis(500));
    let config = MonitorConfig {
        delete_timeout,
        kill_timeout,
        orphan_scan_interval: Duration::from_millis(200),
        ..fast_monitor()
    };
    let check = config.start_check_interval;
    let (app, _platform, monitor, _connect) = setup_with(&double, config).await;
    let running = run(monitor);
    let (id, pod) = running_engine(&app, &double).await;
    let uid = double.pod(NS, &pod).expect("pod")["metadata"]["uid"].clone();
    assert!(double.update_pod(NS, &pod, |pod| {
        pod["metadata"]["finalizers"] = json!(["example.com/protect"]);
    }));

    double.reset_requests();
    app.client.stop(&id).await.expect("stop");
    until(Duration::from_secs(15), "ErrorClean", || async {
        app.client.get(&id).await.expect("get").state == EngineState::ErrorClean
    })
    .await;
    assert!(double.pod(NS, &pod).is_some(), "still there");

    // Deleted gracefully first, then with grace period 0; each time that very pod (its uid).
    let path = format!("/api/v1/namespaces/{NS}/pods/{pod}");
    let deletes: Vec<Value> = double
        .delete_options()
        .into_iter()
        .filter(|(p, _)| *p == path)
        .map(|(_, options)| options)
        .collect();
    assert!(deletes[0]["gracePeriodSeconds"].is_null(), "{deletes:?}");
    assert!(
        deletes.iter().any(|d| d["gracePeriodSeconds"] == 0),
        "{deletes:?}"
    );
    assert!(
        deletes.iter().all(|d| d["preconditions"]["uid"] == uid),
        "{deletes:?}"
    );

    let events = engine_events(&app, &id).await;
    assert_delete_escalated(&events, delete_timeout, kill_timeout, check);
    let error = app
        .client
        .get(&id)
        .await
        .expect("get")
        .error
        .unwrap_or_default();
    assert!(
        error.contains(&format!("driver pod {pod} "))
            && error.contains("held by its finalizers example.com/protect"),
        "{error}"
    );

    // The orphan scan keeps deleting it (grace period 0)...
    let forced = |double: &KubeDouble| {
        double
            .delete_options()
            .iter()
            .filter(|(p, d)| *p == path && d["gracePeriodSeconds"] == 0)
            .count()
    };
    let before = forced(&double);
    until(
        Duration::from_secs(10),
        "the orphan scan deletes it again",
        || async { forced(&double) > before },
    )
    .await;
    // ...and it goes, with what it owns, once its finalizer is removed.
    double.update_pod(NS, &pod, |pod| pod["metadata"]["finalizers"] = json!([]));
    assert!(double.pod(NS, &pod).is_none());
    assert!(double.service(NS, &pod).is_none());
    assert_eq!(
        app.client.get(&id).await.expect("get").state,
        EngineState::ErrorClean
    );
    stop_monitor(running).await;
}

/// Item 3. Monitor A claims a stop (generation g) and reads the driver pod, but its DELETE is
/// held up on the way. Its claim times out; monitor B takes the stop over, deletes the pod,
/// and the engine is restarted: B makes a new pod (generation g + 2, a new uid) that runs.
/// Then A's DELETE arrives: it names the old pod's uid as a precondition, so the API refuses
/// it (409) and the new pod stays; A's store writes name generation g and change nothing.
///
/// Without fencing (a DELETE by name, as before), A's late DELETE would remove the new pod,
/// and the Running engine would lose its driver (and fail at B's next check); and A, taking
/// its stale claim for current, would record its delete as done.
#[tokio::test]
async fn a_late_delete_from_a_monitor_that_overran_its_claim_spares_the_next_pod() {
    let double = KubeDouble::start().await;
    let connect = FakeSparkConnect::start().await;
    let kube = KubernetesConfig {
        connect_address: Some(connect.addr.to_string()),
        ..config()
    };
    // A waits for its held DELETE as long as it takes.
    let platform_a = Arc::new(
        platform_with(
            &double,
            KubernetesConfig {
                api_timeout: Duration::from_secs(60),
                ..kube.clone()
            },
        )
        .await,
    );
    let platform_b = Arc::new(platform_with(&double, kube).await);
    let app = spawn_api(Some(platform_b.clone() as Arc<dyn Platform>)).await;
    let monitor = |name: &str, platform: Arc<KubernetesPlatform>| {
        let config = MonitorConfig {
            name: name.to_owned(),
            trigger_timeout: Duration::from_millis(500),
            ..fast_monitor()
        };
        Monitor::new(app.store.clone(), platform, config)
    };
    let (a, b) = (
        monitor("monitor-a", platform_a),
        monitor("monitor-b", platform_b),
    );
    let id = create(&app).await;
    let pod = format!("rucat-{id}");
    let engine_id = EngineId::parse(&id).expect("id");
    drive_until(&app, &b, &id, EngineState::StartInProgress).await;
    double.set_pod_status(NS, &pod, ready());
    drive_until(&app, &b, &id, EngineState::Running).await;
    let old_uid = double.pod(NS, &pod).expect("pod")["metadata"]["uid"].clone();

    // A claims the stop and sends its DELETE, which is held up.
    double.hold_next(Fault::new(&format!("/pods/{pod}"), 0).with_method("DELETE"));
    app.client.stop(&id).await.expect("stop");
    let late = tokio::spawn({
        let a = a.clone();
        async move { a.pass().await }
    });
    until(Duration::from_secs(10), "A's DELETE held", || async {
        double.held() == 1
    })
    .await;
    let claimed = app
        .store
        .get(&engine_id)
        .await
        .expect("get")
        .expect("engine");
    assert_eq!(claimed.state, EngineState::TriggerTermination);
    let a_generation = claimed.generation;

    // B takes the stop over once A's claim timed out, and the engine is restarted.
    drive_until(&app, &b, &id, EngineState::Terminated).await;
    assert!(double.pod(NS, &pod).is_none());
    app.client.restart(&id).await.expect("restart");
    drive_until(&app, &b, &id, EngineState::StartInProgress).await;
    double.set_pod_status(NS, &pod, ready());
    drive_until(&app, &b, &id, EngineState::Running).await;
    let new_pod = double.pod(NS, &pod).expect("the new pod");
    let new_uid = new_pod["metadata"]["uid"].clone();
    assert_ne!(new_uid, old_uid);
    let generation = app
        .store
        .get(&engine_id)
        .await
        .expect("get")
        .expect("engine")
        .generation;
    assert_eq!(
        generation,
        a_generation + 2,
        "B's stop claim, then B's start claim"
    );
    assert_eq!(
        new_pod["metadata"]["labels"][objects::GENERATION_LABEL],
        generation.to_string()
    );

    // A's DELETE arrives, late.
    double.release_held();
    tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("A's pass ends")
        .expect("join")
        .expect("pass");
    let pod_now = double.pod(NS, &pod).expect("the new pod survives");
    assert_eq!(pod_now["metadata"]["uid"], new_uid);
    assert!(double.service(NS, &pod).is_some());
    assert!(double.secret(NS, &pod).is_some());
    let path = format!("/api/v1/namespaces/{NS}/pods/{pod}");
    let first = double
        .delete_options()
        .into_iter()
        .find(|(p, _)| *p == path)
        .expect("A's DELETE");
    assert_eq!(
        first.1["preconditions"]["uid"], old_uid,
        "for the old pod only"
    );

    // A changed nothing in the store: its only event is its claim; the engine runs on.
    let events = engine_events(&app, &id).await;
    let by_a: Vec<_> = events
        .iter()
        .filter(|e| e.actor == Some(rucat::engine::Actor::Monitor("monitor-a".into())))
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        by_a,
        [(
            Some(EngineState::WaitToTerminate),
            EngineState::TriggerTermination
        )]
    );
    for _ in 0..10 {
        b.pass().await.expect("pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let engine = app
        .store
        .get(&engine_id)
        .await
        .expect("get")
        .expect("engine");
    assert_eq!(
        (engine.state, engine.generation),
        (EngineState::Running, generation)
    );
    assert_eq!(engine.endpoint, Some(format!("sc://{}", connect.addr)));
    assert!(double.pod(NS, &pod).is_some());
}

/// Item 4 on Kubernetes. A Running engine whose driver stops answering Spark Connect (its
/// pod still ready) fails after `health_timeout`, with the reason, and its pod is deleted.
///
/// Before health checks, a ready pod kept its engine Running whatever Spark Connect did.
#[tokio::test]
async fn a_driver_that_stops_answering_fails_after_the_health_timeout_and_is_deleted() {
    let double = KubeDouble::start().await;
    let (interval, timeout) = (Duration::from_millis(100), Duration::from_millis(600));
    let config = MonitorConfig {
        health_check_interval: interval,
        health_timeout: timeout,
        ..fast_monitor()
    };
    let (app, _platform, monitor, connect) = setup_with(&double, config).await;
    let running = run(monitor);
    let (id, pod) = running_engine(&app, &double).await;

    connect.set_healthy(false);
    until(Duration::from_secs(10), "the engine fails", || async {
        app.client.get(&id).await.expect("get").state != EngineState::Running
    })
    .await;
    let engine = app
        .client
        .wait(
            &id,
            EngineState::ErrorClean,
            Duration::from_secs(10),
            |_| {},
        )
        .await
        .expect("cleaned");
    let error = engine.error.unwrap_or_default();
    assert!(error.contains("did not answer Spark Connect"), "{error}");
    assert!(double.pod(NS, &pod).is_none(), "the pod is deleted");

    let events = engine_events(&app, &id).await;
    assert_failed_after_health_timeout(&events, timeout, interval);
    stop_monitor(running).await;
}
