//! The Kubernetes objects of an engine: its driver pod and the headless Service in front of it.
//!
//! Everything here is pure: the same engine and settings always give the same objects, which is
//! what `rucat engine render` prints and what the platform creates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, LocalObjectReference, Pod, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::KubernetesConfig;
use crate::engine::{Engine, EngineId};

/// Labels every object Rucat creates carries; the watch and the orphan scan select on them.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rucat");
pub const ENGINE_ID_LABEL: &str = "rucat.io/engine-id";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// The Spark driver's ports, fixed inside the pod (each pod has its own network namespace).
pub const CONNECT_PORT: i32 = 15002;
pub const DRIVER_PORT: i32 = 7078;
pub const BLOCK_MANAGER_PORT: i32 = 7079;
pub const UI_PORT: i32 = 4040;

/// The driver container's name.
pub const CONTAINER: &str = "spark-connect";
/// Where the Spark images keep Spark.
pub const SPARK_HOME: &str = "/opt/spark";
/// Rucat's own API server address as seen from inside the cluster.
pub const IN_CLUSTER_MASTER: &str = "k8s://https://kubernetes.default.svc:443";

/// What the objects of one engine are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSpec<'a> {
    pub id: &'a EngineId,
    pub name: &'a str,
    pub version: &'a str,
    pub configs: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Engine> for DriverSpec<'a> {
    fn from(engine: &'a Engine) -> Self {
        DriverSpec {
            id: &engine.id,
            name: &engine.name,
            version: &engine.version,
            configs: &engine.configs,
        }
    }
}

/// The pod's name (also the Service's): a DNS-1035 label, as Services require.
pub fn object_name(id: &EngineId) -> String {
    format!("rucat-{id}")
}

/// The label selector that finds the pods of this Rucat instance.
pub fn selector(config: &KubernetesConfig) -> String {
    format!(
        "{}={},{}={},{ENGINE_ID_LABEL}",
        MANAGED_BY.0, MANAGED_BY.1, INSTANCE_LABEL, config.instance
    )
}

/// The driver's DNS name: the headless Service's.
pub fn driver_host(id: &EngineId, namespace: &str, config: &KubernetesConfig) -> String {
    format!(
        "{}.{namespace}.svc.{}",
        object_name(id),
        config.cluster_domain
    )
}

/// Where Spark Connect clients reach the engine, from inside the cluster.
pub fn endpoint(id: &EngineId, namespace: &str, config: &KubernetesConfig) -> String {
    format!("sc://{}:{CONNECT_PORT}", driver_host(id, namespace, config))
}

/// The driver container's image: one the user picked from the allowed list with
/// `spark.kubernetes.driver.container.image` or `spark.kubernetes.container.image` (the policy
/// has checked it), else the configured image of the engine's version.
pub fn driver_image(spec: &DriverSpec<'_>, config: &KubernetesConfig) -> String {
    spec.configs
        .get("spark.kubernetes.driver.container.image")
        .or_else(|| spec.configs.get("spark.kubernetes.container.image"))
        .cloned()
        .unwrap_or_else(|| config.image_for(spec.version))
}

fn labels(id: &EngineId, config: &KubernetesConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (INSTANCE_LABEL.to_owned(), config.instance.clone()),
        (ENGINE_ID_LABEL.to_owned(), id.to_string()),
        (
            "app.kubernetes.io/name".to_owned(),
            "spark-connect".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "driver".to_owned(),
        ),
    ])
}

/// `spark-submit` arguments: Rucat's wiring first, then the user's configs (the policy has
/// refused every key that would override the wiring).
pub fn driver_args(
    spec: &DriverSpec<'_>,
    namespace: &str,
    config: &KubernetesConfig,
) -> Vec<String> {
    let name = object_name(spec.id);
    let mut wiring = vec![
        format!("spark.app.id={name}"),
        format!(
            "spark.driver.host={}",
            driver_host(spec.id, namespace, config)
        ),
        "spark.driver.bindAddress=0.0.0.0".to_owned(),
        format!("spark.driver.port={DRIVER_PORT}"),
        format!("spark.driver.blockManager.port={BLOCK_MANAGER_PORT}"),
        format!("spark.ui.port={UI_PORT}"),
        format!("spark.connect.grpc.binding.port={CONNECT_PORT}"),
        format!("spark.kubernetes.namespace={namespace}"),
        format!("spark.kubernetes.driver.pod.name={name}"),
        format!("spark.kubernetes.executor.podNamePrefix={name}"),
        "spark.kubernetes.executor.deleteOnTermination=true".to_owned(),
        format!(
            "spark.kubernetes.authenticate.driver.serviceAccountName={}",
            config.service_account
        ),
        format!(
            "spark.kubernetes.container.image={}",
            config.image_for(spec.version)
        ),
        format!(
            "spark.kubernetes.container.image.pullPolicy={}",
            config.image_pull_policy
        ),
    ];
    if !config.image_pull_secrets.is_empty() {
        wiring.push(format!(
            "spark.kubernetes.container.image.pullSecrets={}",
            config.image_pull_secrets.join(",")
        ));
    }
    let mut args = vec![
        "--master".to_owned(),
        IN_CLUSTER_MASTER.to_owned(),
        "--deploy-mode".to_owned(),
        "client".to_owned(),
        "--name".to_owned(),
        spec.name.to_owned(),
    ];
    let user = spec.configs.iter().map(|(k, v)| format!("{k}={v}"));
    for conf in wiring.into_iter().chain(user) {
        args.push("--conf".to_owned());
        args.push(conf);
    }
    args
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// The driver pod: Spark Connect in the foreground, Spark in client mode creating its own
/// executors, ready when the Spark Connect port accepts connections.
pub fn driver_pod(spec: &DriverSpec<'_>, namespace: &str, config: &KubernetesConfig) -> Pod {
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(config.driver_cpu.clone())),
            ("memory".to_owned(), Quantity(config.driver_memory.clone())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(config.driver_memory.clone()),
        )])),
        ..ResourceRequirements::default()
    };
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(driver_image(spec, config)),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec![format!("{SPARK_HOME}/sbin/start-connect-server.sh")]),
        args: Some(driver_args(spec, namespace, config)),
        env: Some(vec![
            // Run in the foreground, so the container lives exactly as long as the driver.
            env("SPARK_NO_DAEMONIZE", "true"),
            // Writable places for a non-root user on any image.
            env("SPARK_LOG_DIR", "/tmp/spark-logs"),
            env("SPARK_PID_DIR", "/tmp"),
            env("HOME", "/tmp"),
        ]),
        ports: Some(vec![
            port("spark-connect", CONNECT_PORT),
            port("driver-rpc", DRIVER_PORT),
            port("blockmanager", BLOCK_MANAGER_PORT),
            port("spark-ui", UI_PORT),
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(CONNECT_PORT),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pull_secrets = (!config.image_pull_secrets.is_empty()).then(|| {
        config
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(object_name(spec.id)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(spec.id, config)),
            annotations: Some(BTreeMap::from([
                ("rucat.io/engine-name".to_owned(), spec.name.to_owned()),
                ("rucat.io/spark-version".to_owned(), spec.version.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".to_owned()),
            service_account_name: Some(config.service_account.clone()),
            // The driver creates its executors through the API with this identity.
            automount_service_account_token: Some(true),
            // One Service per engine: environment variables for each would grow without bound.
            enable_service_links: Some(false),
            image_pull_secrets: pull_secrets,
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(config.run_as_user),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn service_port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// The headless Service that gives the driver its DNS name. With `owner` (the pod's name and
/// uid), the pod owns it, so deleting the pod removes it.
pub fn driver_service(
    id: &EngineId,
    namespace: &str,
    config: &KubernetesConfig,
    owner: Option<(&str, &str)>,
) -> Service {
    let owner_references = owner.map(|(name, uid)| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }]
    });
    let selector = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (INSTANCE_LABEL.to_owned(), config.instance.clone()),
        (ENGINE_ID_LABEL.to_owned(), id.to_string()),
    ]);
    Service {
        metadata: ObjectMeta {
            name: Some(object_name(id)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(id, config)),
            owner_references,
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector),
            // Executors reach the driver before Spark Connect serves (before the pod is ready).
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![
                service_port("spark-connect", CONNECT_PORT),
                service_port("driver-rpc", DRIVER_PORT),
                service_port("blockmanager", BLOCK_MANAGER_PORT),
                service_port("spark-ui", UI_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The objects of one engine as a YAML stream (one JSON document per object, which YAML
/// reads as is; `kubectl apply -f` takes it), with comments on what is decided only at
/// creation.
pub fn render(spec: &DriverSpec<'_>, namespace: &str, config: &KubernetesConfig) -> String {
    let pod = driver_pod(spec, namespace, config);
    let service = driver_service(spec.id, namespace, config, None);
    format!(
        "# The objects Rucat creates for engine {id} in namespace {namespace}.\n\
         # At creation the Service also gets an ownerReference to the pod (its uid is known only\n\
         # then), so that deleting the pod removes it.\n\
         ---\n{pod}\n---\n{service}\n",
        id = spec.id,
        pod = pretty(&pod),
        service = pretty(&service),
    )
}

/// k8s-openapi's `Serialize` writes `apiVersion` and `kind` too. Serializing these plain
/// structs cannot fail; were it to, the output says so instead of an object.
fn pretty<T: serde::Serialize>(object: &T) -> String {
    serde_json::to_string_pretty(object).unwrap_or_else(|error| format!("# cannot render: {error}"))
}
