//! The Kubernetes objects of an engine: its driver pod and the headless Service in front of it.
//!
//! Everything here is pure: the same engine and settings always give the same objects, which is
//! what `rucat engine render` prints and what the platform creates.
//!
//! A warm engine (one a monitor starts for a pool, [`DriverSpec::pool`]) differs in three
//! things: its pod and Service carry [`POOL_LABEL`] (the pool's name), its Spark Connect server
//! checks clients with the handover interceptor ([`HANDOVER_INTERCEPTOR`] in
//! [`crate::platform::INTERCEPTOR_CONF`]; the image must hold
//! [`crate::platform::HANDOVER_JAR`] in its `jars/`, see `deploy/engine-image/`), and the driver reads its token from [`HANDOVER_SECRET_ENV`]
//! instead of [`SECRET_ENV`] (same Secret, same key). [`POOL_LABEL`] means "started warm for this
//! pool", not "still in the pool": a take is one compare-and-swap in the store, made by the server,
//! which never calls the platform. It changes the engine's owner, name and secret in the record,
//! not its id, so the pod's name, its engine-id label and its Secret stay as they are, and no
//! object names an owner (the owner is in the store only). The new secret reaches the running
//! server through the interceptor on the first call after the take; the Secret keeps the first
//! token, which the server then refuses, and is never read again (the pod is never restarted).
//! Likewise the `rucat.io/engine-name` annotation and the Spark application name keep the warm
//! engine's name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, LocalObjectReference, Pod,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::{KubernetesConfig, NetworkPolicyConfig};
use crate::engine::{Engine, EngineId};
use crate::platform::{TokenCheck, HANDOVER_INTERCEPTOR, HANDOVER_SECRET_ENV};

/// Labels every object Rucat creates carries; the watch and the orphan scan select on them.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rucat");
pub const ENGINE_ID_LABEL: &str = "rucat.io/engine-id";
/// The engine generation (the claim) that made an object: a delete for one generation never
/// touches a later one's pod or Secret.
pub const GENERATION_LABEL: &str = "rucat.io/generation";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The pool a warm engine's pod and Service were started for (pool names are valid label values).
/// Kept after a take: it says how the engine started, not who has it.
pub const POOL_LABEL: &str = "rucat.io/pool";

/// The Spark driver's ports, fixed inside the pod (each pod has its own network namespace).
pub const CONNECT_PORT: i32 = 15002;
pub const DRIVER_PORT: i32 = 7078;
pub const BLOCK_MANAGER_PORT: i32 = 7079;
pub const UI_PORT: i32 = 4040;

/// The driver container's name.
pub const CONTAINER: &str = "spark-connect";
/// The key of the engine's Secret that holds the token Spark Connect requires, and the
/// environment variable Spark reads it from.
pub const SECRET_KEY: &str = "token";
pub use crate::platform::SECRET_ENV;
/// Where the Spark images keep Spark.
pub const SPARK_HOME: &str = "/opt/spark";
/// Rucat's own API server address as seen from inside the cluster.
pub const IN_CLUSTER_MASTER: &str = "k8s://https://kubernetes.default.svc:443";
/// Where the driver container writes the executors' pod template before Spark starts (from
/// [`EXECUTOR_TEMPLATE_ENV`]), and the name of its one container.
pub const EXECUTOR_TEMPLATE_FILE: &str = "/tmp/rucat-executor-pod.json";
pub const EXECUTOR_TEMPLATE_ENV: &str = "RUCAT_EXECUTOR_POD_TEMPLATE";
pub const EXECUTOR_CONTAINER: &str = "spark-executor";

/// What the objects of one engine are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSpec<'a> {
    pub id: &'a EngineId,
    pub name: &'a str,
    pub version: &'a str,
    pub configs: &'a BTreeMap<String, String>,
    /// The engine generation this start belongs to (1 for an engine's first start).
    pub generation: u64,
    /// The pool of a warm engine (started ahead of any request, its secret handed over when a
    /// create takes it); `None` for every other engine.
    pub pool: Option<&'a str>,
}

impl<'a> From<&'a Engine> for DriverSpec<'a> {
    fn from(engine: &'a Engine) -> Self {
        DriverSpec {
            id: &engine.id,
            name: engine.name.as_str(),
            version: &engine.version,
            configs: &engine.configs,
            generation: engine.generation,
            pool: engine.pool.as_deref(),
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

/// Where Rucat (the monitor's check, the proxy) reaches the engine's Spark Connect server:
/// the driver's Service, or `[kubernetes] connect_address` with `{name}` and `{namespace}`
/// filled in.
pub fn endpoint(id: &EngineId, namespace: &str, config: &KubernetesConfig) -> String {
    match &config.connect_address {
        Some(template) => format!(
            "sc://{}",
            template
                .replace("{name}", &object_name(id))
                .replace("{namespace}", namespace)
        ),
        None => format!("sc://{}:{CONNECT_PORT}", driver_host(id, namespace, config)),
    }
}

/// The generation an object's labels name (0 for objects of older Rucats).
pub fn generation_of(meta: &ObjectMeta) -> u64 {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(GENERATION_LABEL))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
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
        // Executors run user code: an identity with no rights and no token of its own,
        // the security of Pod Security `restricted`, and the engine's label (which the
        // engine's NetworkPolicy selects on).
        format!(
            "spark.kubernetes.authenticate.executor.serviceAccountName={}",
            config.executor_service_account
        ),
        format!("spark.kubernetes.executor.podTemplateFile={EXECUTOR_TEMPLATE_FILE}"),
        format!("spark.kubernetes.executor.podTemplateContainerName={EXECUTOR_CONTAINER}"),
        format!(
            "spark.kubernetes.executor.label.{ENGINE_ID_LABEL}={}",
            spec.id
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
    // A warm engine's secret is replaced when a create takes it: the handover interceptor checks
    // it instead of Spark's fixed token (the policy reserves this key).
    wiring.extend(TokenCheck::of(spec.pool.is_some()).conf);
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

/// The executors' pod template (Spark fills in the rest): what Pod Security `restricted`
/// requires, and no service account token.
pub fn executor_pod_template(config: &KubernetesConfig) -> Pod {
    Pod {
        metadata: ObjectMeta::default(),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            security_context: Some(pod_security(config)),
            containers: vec![Container {
                name: EXECUTOR_CONTAINER.to_owned(),
                security_context: Some(container_security()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn pod_security(config: &KubernetesConfig) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(config.run_as_user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The driver container's command: write the executors' pod template where Spark reads it,
/// then run Spark Connect (the pod's arguments follow, as `"$@"`).
pub fn driver_command() -> Vec<String> {
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!(
            "umask 077 && printf '%s' \"${EXECUTOR_TEMPLATE_ENV}\" > {EXECUTOR_TEMPLATE_FILE} \
             && exec {SPARK_HOME}/sbin/start-connect-server.sh \"$@\""
        ),
        "rucat-driver".to_owned(),
    ]
}

/// The engine's Secret: the token its Spark Connect server requires (made anew at every
/// start). Owned by the driver pod once it exists (`owner`), so it goes with it.
pub fn engine_secret(
    id: &EngineId,
    generation: u64,
    namespace: &str,
    config: &KubernetesConfig,
    token: &str,
    owner: Option<(&str, &str)>,
) -> Secret {
    let mut labels = labels(id, config);
    labels.insert(GENERATION_LABEL.to_owned(), generation.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(object_name(id)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: owned_by(owner),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// The driver's token in `variable`, by reference to the engine's Secret (never its value): for
/// Spark's own check, or for the handover interceptor of a warm engine (see [`TokenCheck`]).
fn secret_env(id: &EngineId, variable: &str) -> EnvVar {
    EnvVar {
        name: variable.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: object_name(id),
                key: SECRET_KEY.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
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
        command: Some(driver_command()),
        args: Some(driver_args(spec, namespace, config)),
        env: Some(vec![
            env(
                EXECUTOR_TEMPLATE_ENV,
                &serde_json::to_string(&executor_pod_template(config)).unwrap_or_default(),
            ),
            // Run in the foreground, so the container lives exactly as long as the driver.
            env("SPARK_NO_DAEMONIZE", "true"),
            // Writable places for a non-root user on any image.
            env("SPARK_LOG_DIR", "/tmp/spark-logs"),
            env("SPARK_PID_DIR", "/tmp"),
            env("HOME", "/tmp"),
            secret_env(spec.id, TokenCheck::of(spec.pool.is_some()).env),
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
        security_context: Some(container_security()),
        ..Container::default()
    };
    let pull_secrets = (!config.image_pull_secrets.is_empty()).then(|| {
        config
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    });
    let mut pod_labels = labels(spec.id, config);
    pod_labels.insert(GENERATION_LABEL.to_owned(), spec.generation.to_string());
    if let Some(pool) = spec.pool {
        pod_labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(object_name(spec.id)),
            namespace: Some(namespace.to_owned()),
            labels: Some(pod_labels),
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
            security_context: Some(pod_security(config)),
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

/// What makes the driver pod (its name and uid) the owner of an object, so that deleting the
/// pod removes it.
fn owned_by(owner: Option<(&str, &str)>) -> Option<Vec<OwnerReference>> {
    owner.map(|(name, uid)| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }]
    })
}

fn engine_selector(id: &EngineId) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            ENGINE_ID_LABEL.to_owned(),
            id.to_string(),
        )])),
        ..LabelSelector::default()
    }
}

/// The engine's NetworkPolicy: its pods (the driver and its executors, which carry the
/// engine-id label) accept traffic from each other, and the driver's Spark Connect port from
/// the configured peers (the monitor and the proxy). Nothing else reaches them.
pub fn engine_network_policy(
    id: &EngineId,
    namespace: &str,
    config: &KubernetesConfig,
    policy: &NetworkPolicyConfig,
    owner: Option<(&str, &str)>,
) -> NetworkPolicy {
    let peers = policy
        .connect_from
        .iter()
        .map(|peer| NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    peer.namespace
                        .clone()
                        .unwrap_or_else(|| namespace.to_owned()),
                )])),
                ..LabelSelector::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(peer.pod_labels.clone()),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(object_name(id)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(id, config)),
            owner_references: owned_by(owner),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(engine_selector(id)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(engine_selector(id)),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(peers),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(CONNECT_PORT)),
                        protocol: Some("TCP".to_owned()),
                        ..NetworkPolicyPort::default()
                    }]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The headless Service that gives the driver its DNS name, labelled with the warm engine's
/// `pool` like its pod. With `owner` (the pod's name and uid), the pod owns it, so deleting the
/// pod removes it.
pub fn driver_service(
    id: &EngineId,
    namespace: &str,
    config: &KubernetesConfig,
    pool: Option<&str>,
    owner: Option<(&str, &str)>,
) -> Service {
    let owner_references = owned_by(owner);
    let selector = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (INSTANCE_LABEL.to_owned(), config.instance.clone()),
        (ENGINE_ID_LABEL.to_owned(), id.to_string()),
    ]);
    let mut service_labels = labels(id, config);
    if let Some(pool) = pool {
        service_labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
    }
    Service {
        metadata: ObjectMeta {
            name: Some(object_name(id)),
            namespace: Some(namespace.to_owned()),
            labels: Some(service_labels),
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
    let service = driver_service(spec.id, namespace, config, spec.pool, None);
    let mut out = format!(
        "# The objects Rucat creates for engine {id} in namespace {namespace}.\n\
         # At creation the objects after the pod also get an ownerReference to it (its uid is\n\
         # known only then), so that deleting the pod removes them. Before the pod, Rucat\n\
         # creates the Secret {name} (key \"{SECRET_KEY}\": the token the engine's Spark Connect\n\
         # server requires, new at every start), which the pod reads by reference only; its value\n\
         # is never shown.\n{warm}\
         ---\n{pod}\n---\n{service}\n",
        name = object_name(spec.id),
        id = spec.id,
        warm = match spec.pool {
            Some(pool) => format!(
                "# A warm engine of pool {pool}: the pod reads that token as {HANDOVER_SECRET_ENV}, for\n\
                 # the handover interceptor ({HANDOVER_INTERCEPTOR}), which the image must hold.\n"
            ),
            None => String::new(),
        },
        pod = pretty(&pod),
        service = pretty(&service),
    );
    if let Some(policy) = &config.network_policy {
        let policy = engine_network_policy(spec.id, namespace, config, policy, None);
        out.push_str(&format!("---\n{}\n", pretty(&policy)));
    }
    out
}

/// k8s-openapi's `Serialize` writes `apiVersion` and `kind` too. Serializing these plain
/// structs cannot fail; were it to, the output says so instead of an object.
fn pretty<T: serde::Serialize>(object: &T) -> String {
    serde_json::to_string_pretty(object).unwrap_or_else(|error| format!("# cannot render: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::INTERCEPTOR_CONF;

    fn spec<'a>(
        id: &'a EngineId,
        configs: &'a BTreeMap<String, String>,
        pool: Option<&'a str>,
    ) -> DriverSpec<'a> {
        DriverSpec {
            id,
            name: "warm-small",
            version: "4.3.0",
            configs,
            generation: 1,
            pool,
        }
    }

    fn env_names(pod: &Pod) -> Vec<String> {
        pod.spec.as_ref().expect("a spec").containers[0]
            .env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|var| var.name.clone())
            .collect()
    }

    #[test]
    fn a_warm_engine_runs_the_handover_check_and_carries_its_pool() {
        let (id, configs, config) = (
            EngineId::generate(),
            BTreeMap::new(),
            KubernetesConfig::default(),
        );
        let interceptor = format!("{INTERCEPTOR_CONF}={HANDOVER_INTERCEPTOR}");

        let warm = spec(&id, &configs, Some("small"));
        let pod = driver_pod(&warm, "spark", &config);
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get(POOL_LABEL).map(String::as_str), Some("small"));
        let env = env_names(&pod);
        assert!(env.contains(&HANDOVER_SECRET_ENV.to_owned()), "{env:?}");
        assert!(!env.contains(&SECRET_ENV.to_owned()), "{env:?}");
        assert!(driver_args(&warm, "spark", &config).contains(&interceptor));
        let service = driver_service(&id, "spark", &config, warm.pool, None);
        let labels = service.metadata.labels.expect("labels");
        assert_eq!(labels.get(POOL_LABEL).map(String::as_str), Some("small"));
        assert!(render(&warm, "spark", &config).contains("A warm engine of pool small"));

        let cold = spec(&id, &configs, None);
        let pod = driver_pod(&cold, "spark", &config);
        assert!(!pod
            .metadata
            .labels
            .as_ref()
            .expect("labels")
            .contains_key(POOL_LABEL));
        let env = env_names(&pod);
        assert!(!env.contains(&HANDOVER_SECRET_ENV.to_owned()), "{env:?}");
        assert!(env.contains(&SECRET_ENV.to_owned()), "{env:?}");
        assert!(!driver_args(&cold, "spark", &config)
            .iter()
            .any(|arg| arg.starts_with(INTERCEPTOR_CONF)));
        let service = driver_service(&id, "spark", &config, cold.pool, None);
        assert!(!service
            .metadata
            .labels
            .expect("labels")
            .contains_key(POOL_LABEL));
        assert!(!render(&cold, "spark", &config).contains("warm engine"));
    }
}
