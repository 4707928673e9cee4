//! The Kubernetes platform: each engine is a Spark Connect server running as the Spark driver
//! (client mode) in its own pod, creating its executors itself, behind a headless Service that
//! the pod owns.
//!
//! Pod state comes from one watch (a kube-rs reflector on Rucat's labels) per process, started
//! on first use, so checking a thousand running engines costs no API request. Only a pod the
//! watch has not seen (just created, or gone) is looked up directly.

pub mod objects;
mod settings;
mod status;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

pub use objects::DriverSpec;
pub use settings::{is_dns_label, KubernetesFile};
pub use status::pod_state;

use super::{Platform, PlatformError, ResourceState};
use crate::engine::{Engine, EngineId};
use crate::retry::Backoff;
use crate::text::tail;

/// The Kubernetes platform's settings: the `[kubernetes]` table of the configuration file.
/// Everything about where and how drivers run comes from here, never from users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Where driver pods go; `None`: the namespace of the kubeconfig context, or Rucat's own
    /// in a cluster.
    pub namespace: Option<String>,
    /// Tells this Rucat's pods from another's in the same namespace.
    pub instance: String,
    /// The drivers' service account (it creates their executors).
    pub service_account: String,
    /// The executors' service account: without one, Spark gives executors the driver's, and
    /// with it the right to create pods to the code users run there.
    pub executor_service_account: String,
    /// The Spark versions users may ask for.
    pub versions: Vec<String>,
    /// The image of a version: `{version}` is replaced.
    pub image: String,
    pub image_pull_policy: String,
    pub image_pull_secrets: Vec<String>,
    /// The driver container's cpu request.
    pub driver_cpu: String,
    /// The driver container's memory request and limit.
    pub driver_memory: String,
    /// The user id drivers run as (185 is `spark` in the Apache Spark images).
    pub run_as_user: i64,
    pub cluster_domain: String,
    /// How Rucat reaches a driver's Spark Connect port, `HOST:PORT` with `{name}` (the pod's
    /// and Service's name) and `{namespace}`; `None`: the Service's DNS name, port 15002.
    pub connect_address: Option<String>,
    /// How long one API request may take.
    pub api_timeout: Duration,
    /// When set, each engine gets a NetworkPolicy (owned by its driver pod): its pods accept
    /// traffic from each other, and the driver's Spark Connect port from these peers only.
    pub network_policy: Option<NetworkPolicyConfig>,
}

/// Who may reach engines' Spark Connect port (the monitor and the proxy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyConfig {
    pub connect_from: Vec<Peer>,
}

/// Pods with these labels, in `namespace` (default: the engines' own).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub namespace: Option<String>,
    pub pod_labels: std::collections::BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: None,
            instance: "rucat".to_owned(),
            service_account: "rucat-spark".to_owned(),
            executor_service_account: "default".to_owned(),
            versions: vec!["4.0.1".to_owned()],
            image: "apache/spark:{version}".to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            image_pull_secrets: Vec::new(),
            driver_cpu: "1".to_owned(),
            driver_memory: "2Gi".to_owned(),
            run_as_user: 185,
            cluster_domain: "cluster.local".to_owned(),
            connect_address: None,
            api_timeout: Duration::from_secs(30),
            network_policy: None,
        }
    }
}

impl KubernetesConfig {
    pub fn image_for(&self, version: &str) -> String {
        self.image.replace("{version}", version)
    }
}

/// The first pause before a transient API failure is asked again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Lines of driver log read before the tail is cut to size.
const LOG_LINES: i64 = 20_000;

pub struct KubernetesPlatform {
    namespace: String,
    config: KubernetesConfig,
    pods: Api<Pod>,
    services: Api<Service>,
    network_policies: Api<NetworkPolicy>,
    secrets: Api<Secret>,
    watched: OnceCell<Store<Pod>>,
    watch_task: Mutex<Option<AbortHandle>>,
}

impl Drop for KubernetesPlatform {
    fn drop(&mut self) {
        let task = self
            .watch_task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// A kube-rs error in words, with the API's status code and reason when there is one.
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "the Kubernetes API answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => format!("cannot reach the Kubernetes API: {other}"),
    }
}

impl KubernetesPlatform {
    /// Connects with the kubeconfig (`KUBECONFIG`, else `~/.kube/config`) or, inside a pod,
    /// the pod's service account.
    pub async fn connect(config: KubernetesConfig) -> Result<Self, PlatformError> {
        let kube_config = kube::Config::infer().await.map_err(|error| {
            PlatformError::Setup(format!(
                "no Kubernetes configuration (no kubeconfig, not in a cluster): {error}"
            ))
        })?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| kube_config.default_namespace.clone());
        let client = Client::try_from(kube_config).map_err(|error| {
            PlatformError::Setup(format!("cannot build the Kubernetes client: {error}"))
        })?;
        info!(%namespace, "Kubernetes platform ready");
        Ok(Self::new(client, namespace, config))
    }

    pub fn new(client: Client, namespace: String, config: KubernetesConfig) -> Self {
        KubernetesPlatform {
            pods: Api::namespaced(client.clone(), &namespace),
            services: Api::namespaced(client.clone(), &namespace),
            network_policies: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client, &namespace),
            namespace,
            config,
            watched: OnceCell::new(),
            watch_task: Mutex::new(None),
        }
    }

    /// One API request, bounded by the configured timeout.
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, RequestError> {
        match tokio::time::timeout(self.config.api_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RequestError::Api(error)),
            Err(_) => Err(RequestError::Timeout(self.config.api_timeout)),
        }
    }

    /// Like `call`, asking again (up to three times, after short jittered pauses) while the
    /// failure is transient.
    async fn call_retrying<T, F, Fut>(&self, mut request: F) -> Result<T, RequestError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = Backoff::new(RETRY_PAUSE, RETRY_PAUSE * 4);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.call(request()).await {
                Err(error) if attempts < 3 && error.is_transient() => {
                    debug!(%error, "transient Kubernetes API failure; asking again");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                result => return result,
            }
        }
    }

    /// The pod watch, started on first use; waits (up to the API timeout) for its first list.
    async fn watched(&self) -> Result<&Store<Pod>, PlatformError> {
        let store = self
            .watched
            .get_or_init(|| async {
                let (reader, writer) = reflector::store();
                let config = watcher::Config::default().labels(&objects::selector(&self.config));
                let stream = reflector::reflector(writer, watcher(self.pods.clone(), config))
                    .default_backoff();
                let task = tokio::spawn(async move {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(event) = stream.next().await {
                        if let Err(error) = event {
                            warn!(%error, "driver pod watch failed; it resumes with back-off");
                        }
                    }
                });
                *self
                    .watch_task
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task.abort_handle());
                reader
            })
            .await;
        match tokio::time::timeout(self.config.api_timeout, store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(_)) => Err(PlatformError::Inspect("the driver pod watch stopped".into())),
            Err(_) => Err(PlatformError::Inspect(format!(
                "the driver pod watch has not listed the pods within {:?}: is the Kubernetes API reachable?",
                self.config.api_timeout
            ))),
        }
    }

    /// The engine's pod: from the watch, else (not seen yet, or gone) from the API.
    async fn pod(&self, name: &str) -> Result<Option<std::sync::Arc<Pod>>, PlatformError> {
        let store = self.watched().await?;
        if let Some(pod) = store.get(&ObjectRef::new(name).within(&self.namespace)) {
            return Ok(Some(pod));
        }
        self.call_retrying(|| self.pods.get_opt(name))
            .await
            .map(|pod| pod.map(std::sync::Arc::new))
            .map_err(|error| PlatformError::Inspect(format!("driver pod {name}: {error}")))
    }

    /// Creates the engine's Secret (before its pod, which reads it), holding `token`. One left
    /// by an earlier attempt of this start (same token) is kept; one of an earlier start is
    /// replaced.
    async fn create_secret(&self, engine: &Engine) -> Result<(), PlatformError> {
        let name = objects::object_name(&engine.id);
        let token = engine.secret.as_ref().ok_or_else(|| {
            PlatformError::Create(format!("engine {} has no secret to start with", engine.id))
        })?;
        let secret = objects::engine_secret(
            &engine.id,
            engine.generation,
            &self.namespace,
            &self.config,
            token.expose(),
            None,
        );
        let post = PostParams::default();
        let create = || async {
            self.call_retrying(|| self.secrets.create(&post, &secret))
                .await
                .map(drop)
        };
        match create().await {
            Ok(()) => return Ok(()),
            Err(error) if error.code() != Some(409) => {
                return Err(PlatformError::Create(format!("secret {name}: {error}")))
            }
            Err(_) => {}
        }
        let existing = self
            .call_retrying(|| self.secrets.get(&name))
            .await
            .map_err(|error| PlatformError::Create(format!("secret {name}: {error}")))?;
        let existing_generation = objects::generation_of(&existing.metadata);
        if existing_generation > engine.generation {
            return Err(PlatformError::Create(format!(
                "secret {name} belongs to a later start (generation {existing_generation} after {}): this one is stale",
                engine.generation
            )));
        }
        let current = existing
            .data
            .as_ref()
            .and_then(|data| data.get(objects::SECRET_KEY))
            .is_some_and(|value| value.0 == token.expose().as_bytes());
        if current {
            return Ok(());
        }
        info!(engine = %engine.id, "replacing the Secret of an earlier start");
        let background = exactly(&existing.metadata, false);
        self.call_retrying(|| self.secrets.delete(&name, &background))
            .await
            .map(drop)
            .or_else(RequestError::not_found_is_ok)
            .map_err(|error| PlatformError::Create(format!("stale secret {name}: {error}")))?;
        create()
            .await
            .map_err(|error| PlatformError::Create(format!("secret {name}: {error}")))
    }

    /// Creates the objects the driver pod owns: the headless Service, and the NetworkPolicy
    /// when configured; and makes the pod the owner of the engine's Secret.
    async fn create_owned_objects(&self, engine: &Engine, pod: &Pod) -> Result<(), PlatformError> {
        let id = &engine.id;
        let name = objects::object_name(id);
        let uid = pod
            .metadata
            .uid
            .as_deref()
            .ok_or_else(|| PlatformError::Create(format!("driver pod {name} has no uid")))?;
        let owner = Some((name.as_str(), uid));
        let owned = serde_json::json!({"metadata": {"ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": false,
        }]}});
        let (params, merge) = (PatchParams::default(), Patch::Merge(&owned));
        self.call_retrying(|| self.secrets.patch(&name, &params, &merge))
            .await
            .map_err(|error| PlatformError::Create(format!("owner of secret {name}: {error}")))?;
        let service = objects::driver_service(
            id,
            &self.namespace,
            &self.config,
            engine.pool.as_deref(),
            owner,
        );
        self.create_owned(&self.services, "service", &name, &service, uid)
            .await?;
        if let Some(policy) = &self.config.network_policy {
            let policy =
                objects::engine_network_policy(id, &self.namespace, &self.config, policy, owner);
            self.create_owned(
                &self.network_policies,
                "network policy",
                &name,
                &policy,
                uid,
            )
            .await?;
        }
        Ok(())
    }

    /// Creates an object owned by the pod with `uid`; one left by an earlier pod of the same
    /// engine (its garbage collection still pending) is replaced.
    async fn create_owned<K>(
        &self,
        api: &Api<K>,
        what: &str,
        name: &str,
        object: &K,
        uid: &str,
    ) -> Result<(), PlatformError>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let post = PostParams::default();
        let create = || async {
            self.call_retrying(|| api.create(&post, object))
                .await
                .map(drop)
                .map_err(|error| PlatformError::Create(format!("{what} {name}: {error}")))
        };
        let existing = match create().await {
            Ok(()) => return Ok(()),
            Err(error) => match self.call(api.get_opt(name)).await {
                Ok(Some(existing)) => existing,
                _ => return Err(error),
            },
        };
        let owned = existing
            .meta()
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|owner| owner.uid == uid);
        if owned {
            return Ok(());
        }
        info!(object = %name, what, "replacing an object left by an earlier driver pod");
        let background = DeleteParams::background();
        self.call_retrying(|| api.delete(name, &background))
            .await
            .map(drop)
            .or_else(RequestError::not_found_is_ok)
            .map_err(|error| PlatformError::Create(format!("stale {what} {name}: {error}")))?;
        create().await
    }

    /// Deletes the engine's pod if it belongs to `generation` or earlier (with its uid as a
    /// precondition: a pod made meanwhile by a later start is never the one deleted), and the
    /// engine's Secret likewise when no pod owns it. The pod's Service, NetworkPolicy and Secret
    /// go with it (ownerReferences).
    async fn delete_generation(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError> {
        let name = objects::object_name(id);
        let pod = self
            .call_retrying(|| self.pods.get_opt(&name))
            .await
            .map_err(|error| PlatformError::Delete(format!("driver pod {name}: {error}")))?;
        if let Some(pod) = &pod {
            let pod_generation = objects::generation_of(&pod.metadata);
            if pod_generation > generation {
                debug!(engine = %id, pod_generation, generation, "leaving a later start's pod alone");
                return Ok(());
            }
            // A pod already terminating is asked again only to shorten its grace period.
            if pod.metadata.deletion_timestamp.is_none() || force {
                let params = exactly(&pod.metadata, force);
                self.call_retrying(|| self.pods.delete(&name, &params))
                    .await
                    .map(drop)
                    .or_else(RequestError::gone_is_ok)
                    .map_err(|error| {
                        PlatformError::Delete(format!("driver pod {name}: {error}"))
                    })?;
            }
        }
        let secret = self
            .call_retrying(|| self.secrets.get_opt(&name))
            .await
            .map_err(|error| PlatformError::Delete(format!("secret {name}: {error}")))?;
        if let Some(secret) = secret {
            let owned = secret
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|owners| !owners.is_empty());
            if !owned && objects::generation_of(&secret.metadata) <= generation {
                let params = exactly(&secret.metadata, false);
                self.call_retrying(|| self.secrets.delete(&name, &params))
                    .await
                    .map(drop)
                    .or_else(RequestError::gone_is_ok)
                    .map_err(|error| PlatformError::Delete(format!("secret {name}: {error}")))?;
            }
        }
        Ok(())
    }
}

/// Delete options that apply only to the object as it was read (its uid), in the background
/// (owned objects follow), at once when `force`.
fn exactly(meta: &kube::api::ObjectMeta, force: bool) -> DeleteParams {
    let mut params = DeleteParams::background();
    params.preconditions = Some(kube::api::Preconditions {
        uid: meta.uid.clone(),
        resource_version: None,
    });
    if force {
        params.grace_period_seconds = Some(0);
    }
    params
}

/// Why one API request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("{}", describe(.0))]
    Api(kube::Error),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
}

impl RequestError {
    /// Worth asking again: the API was unreachable, slow, overloaded or failing inside.
    fn is_transient(&self) -> bool {
        match self.code() {
            Some(code) => code == 429 || code >= 500,
            None => true,
        }
    }

    /// The API's status code, when it answered.
    fn code(&self) -> Option<u16> {
        match self {
            RequestError::Api(kube::Error::Api(status)) => Some(status.code),
            RequestError::Api(_) | RequestError::Timeout(_) => None,
        }
    }

    fn not_found_is_ok(self) -> Result<(), RequestError> {
        if self.code() == Some(404) {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// For a delete with a uid precondition: the object is gone (404), or it is another
    /// object by now (409, the precondition failed): either way, nothing left to delete.
    fn gone_is_ok(self) -> Result<(), RequestError> {
        if matches!(self.code(), Some(404 | 409)) {
            Ok(())
        } else {
            Err(self)
        }
    }
}

#[async_trait]
impl Platform for KubernetesPlatform {
    fn versions(&self) -> &[String] {
        &self.config.versions
    }

    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        let name = objects::object_name(&engine.id);
        let spec = DriverSpec::from(engine);
        let pod = objects::driver_pod(&spec, &self.namespace, &self.config);
        self.create_secret(engine).await?;
        let post = PostParams::default();
        let created = match self.call_retrying(|| self.pods.create(&post, &pod)).await {
            Ok(created) => created,
            Err(error) if error.code() == Some(409) => {
                // An earlier attempt of this start made it: adopt it. One of an earlier start
                // goes first (and this attempt is retried); one of a later start means this
                // claim is stale.
                let existing =
                    self.call_retrying(|| self.pods.get(&name))
                        .await
                        .map_err(|error| {
                            PlatformError::Create(format!("driver pod {name}: {error}"))
                        })?;
                let existing_generation = objects::generation_of(&existing.metadata);
                if existing_generation > engine.generation {
                    return Err(PlatformError::Create(format!(
                        "driver pod {name} belongs to a later start (generation {existing_generation} after {}): this one is stale",
                        engine.generation
                    )));
                }
                if existing_generation < engine.generation {
                    self.delete_generation(&engine.id, existing_generation, false)
                        .await?;
                    return Err(PlatformError::Create(format!(
                        "driver pod {name} of an earlier start (generation {existing_generation}) is being deleted first"
                    )));
                }
                if existing.metadata.deletion_timestamp.is_some() {
                    return Err(PlatformError::Create(format!(
                        "driver pod {name} from an earlier attempt is still being deleted"
                    )));
                }
                info!(engine = %engine.id, "adopting the driver pod of an earlier attempt");
                existing
            }
            Err(error) => return Err(PlatformError::Create(format!("driver pod {name}: {error}"))),
        };
        self.create_owned_objects(engine, &created).await
    }

    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError> {
        self.delete_generation(id, generation, force).await
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        let name = objects::object_name(&engine.id);
        Ok(match self.pod(&name).await? {
            // A later start's pod is none of this generation's.
            Some(pod) if objects::generation_of(&pod.metadata) > engine.generation => {
                ResourceState::Gone
            }
            Some(pod) => pod_state(
                &pod,
                &objects::endpoint(&engine.id, &self.namespace, &self.config),
            ),
            None => ResourceState::Gone,
        })
    }

    async fn stuck(&self, id: &EngineId) -> Result<String, PlatformError> {
        let name = objects::object_name(id);
        Ok(match self.pod(&name).await? {
            Some(pod) => {
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.node_name.clone())
                    .unwrap_or_else(|| "no node".to_owned());
                let finalizers = pod.metadata.finalizers.as_deref().unwrap_or_default();
                match &pod.metadata.deletion_timestamp {
                    // What holds it: its finalizers (until their controller removes them), or
                    // else a kubelet that does not confirm the end of its containers.
                    Some(since) if !finalizers.is_empty() => format!(
                        "driver pod {name} (on {node}, terminating since {}, held by its finalizers {})",
                        since.0,
                        finalizers.join(", ")
                    ),
                    Some(since) => format!(
                        "driver pod {name} (on {node}, terminating since {}; is its node down?)",
                        since.0
                    ),
                    None => format!("driver pod {name} (on {node})"),
                }
            }
            None => format!("driver pod {name}"),
        })
    }

    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError> {
        let name = objects::object_name(id);
        let params = LogParams {
            container: Some(objects::CONTAINER.to_owned()),
            tail_lines: Some(LOG_LINES),
            ..LogParams::default()
        };
        match self.call_retrying(|| self.pods.logs(&name, &params)).await {
            Ok(text) => Ok(Some(tail(&text, max_bytes).to_owned())),
            // No pod, or a container that has not started: no log.
            Err(error) if matches!(error.code(), Some(400 | 404)) => {
                debug!(engine = %id, %error, "no driver log");
                Ok(None)
            }
            Err(error) => Err(PlatformError::Inspect(format!(
                "driver log of pod {name}: {error}"
            ))),
        }
    }

    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError> {
        let store = self.watched().await?;
        let mut ids: Vec<(EngineId, u64)> = store
            .state()
            .iter()
            .filter_map(|pod| {
                let labels = pod.metadata.labels.as_ref()?;
                let id = EngineId::parse(labels.get(objects::ENGINE_ID_LABEL)?)?;
                Some((id, objects::generation_of(&pod.metadata)))
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        self.delete_generation(id, u64::MAX, true).await
    }
}
