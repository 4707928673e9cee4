//! An in-process Kubernetes API double: a fake API server on `127.0.0.1` that a real kube-rs
//! `Client` talks to over plain HTTP/1.1, for testing Kubernetes logic without a cluster.
//!
//! # What it simulates
//!
//! Core v1 pods, services, secrets and configmaps, and `networking.k8s.io/v1` networkpolicies,
//! as kube-rs's `Api<Pod>`, `Api<Service>`, `Api<Secret>`, `Api<ConfigMap>`,
//! `Api<NetworkPolicy>` and `kube::runtime::watcher` use them. Below, `{api}` is `/api/v1` and
//! `{plural}` one of `pods`, `services`, `secrets`, `configmaps`, or `{api}` is
//! `/apis/networking.k8s.io/v1` and `{plural}` is `networkpolicies`; every kind has the same
//! semantics:
//!
//! - `GET|POST {api}/namespaces/{ns}/{plural}`, `GET {api}/{plural}` (every namespace): lists
//!   (`PodList`, `NetworkPolicyList`… with the kind's `apiVersion` and
//!   `metadata.resourceVersion`; `labelSelector` with `=`, `==`, `!=`, `k`, `!k`, `in`,
//!   `notin`; `fieldSelector` on any dotted field with `=`, `==`, `!=`; `limit`/`continue`
//!   paging) and creation (uid, resourceVersion, creationTimestamp, namespace, `generateName`,
//!   name validation (a DNS-1035 label for services, a DNS-1123 subdomain for the rest), 409
//!   AlreadyExists, 422 Invalid, `dryRun=All`; a pod starts `{"phase":"Pending"}`, a service
//!   gets a clusterIP unless it names one, `None` for headless; a Secret's `stringData` is
//!   folded into its base64 `data` and dropped, and its `type` defaults to `Opaque`; no other
//!   defaulting, so a stored object is what was sent plus metadata and status).
//! - `?watch=true` on those lists: a stream of watch events after `resourceVersion` (ADDED for
//!   everything first when it is absent or "0"), `timeoutSeconds`, `allowWatchBookmarks`
//!   (a BOOKMARK every second when idle), `sendInitialEvents` (ends the initial ADDED events
//!   with the `k8s.io/initial-events-end` bookmark), selectors applied to every event (an
//!   object that stops matching is sent as DELETED), 410 Expired as an ERROR event for a
//!   resourceVersion older than the kept history (the last 4096 changes).
//! - `GET|DELETE {api}/namespaces/{ns}/{plural}/{name}`: 404 NotFound; a delete answers the
//!   object, honours `gracePeriodSeconds: 0`, `propagationPolicy: Orphan` and `dryRun`, and
//!   garbage-collects what the object owns (every object of any kind in the namespace whose
//!   `ownerReferences` name its uid), as background propagation does. `preconditions`
//!   (`uid`, `resourceVersion`) the object does not meet are a 409 Conflict (`Operation cannot
//!   be fulfilled on pods "x": Precondition failed: UID in precondition: A, UID in object
//!   meta: B`, the API server's message without the storage error text it wraps around the
//!   precondition) and nothing is deleted, dry run or not. An object with
//!   `metadata.finalizers` is only marked (`deletionTimestamp`, `deletionGracePeriodSeconds`,
//!   which a later delete with a shorter grace period, 0 included, shortens; MODIFIED) and
//!   stays, blocking its name, until its last finalizer is removed (a PATCH or
//!   [`KubeDouble::update_pod`]): then it goes at once (DELETED) with what it owns.
//! - `PATCH {api}/namespaces/{ns}/{plural}/{name}` with `Content-Type:
//!   application/merge-patch+json` (an RFC 7386 JSON merge patch, kube-rs's `Patch::Merge`) or
//!   `application/strategic-merge-patch+json` (applied as a merge patch too: lists are replaced
//!   whole, never merged by key, and `$patch` directives are not understood), and
//!   `dryRun=All`: the patched object gets a new resourceVersion and a MODIFIED event (a patch
//!   that changes nothing writes nothing, as in Kubernetes); a Secret's `stringData` is folded
//!   as on creation. A `metadata.resourceVersion` in the patch other than the object's is 409
//!   Conflict (optimistic concurrency); a changed name or namespace is 400 BadRequest, as
//!   Kubernetes answers; changes to uid, creationTimestamp, deletionTimestamp,
//!   deletionGracePeriodSeconds and a pod's or service's `status` (a subresource) are ignored
//!   (Kubernetes ignores the status, creationTimestamp and an existing deletionTimestamp
//!   likewise, but answers other changes to those fields, a different uid among them, with 422
//!   Invalid). Any other
//!   Content-Type (`application/json-patch+json`, `application/apply-patch+yaml`…) is 415
//!   UnsupportedMediaType; a missing object 404.
//! - `GET /api/v1/namespaces/{ns}/pods/{name}/log`: the text given to
//!   [`KubeDouble::set_pod_log`], with `tailLines` (the last lines) then `limitBytes` (the first
//!   bytes of those).
//! - `GET /version`. Everything else: 404 with a `Status`; a wrong method: 405.
//!
//! Errors are `Status` objects (`kind: Status`, `reason`, `code`, `details`) with
//! `application/json`, their messages naming the resource as Kubernetes does (`pods "x" not
//! found`, `networkpolicies.networking.k8s.io "x" not found`); resourceVersions come from one
//! global counter.
//!
//! # What it does not
//!
//! No scheduler, kubelet or controllers: pods stay `Pending` until the test calls
//! [`KubeDouble::set_pod_status`]; nothing runs containers, nothing is validated beyond names
//! and namespaces (a Secret's `data` is not checked to be base64), no admission, no
//! authentication (any token works), no PUT, no JSON patch or server-side apply, no
//! validation of what an update may change beyond the metadata above (a pod's spec can be
//! patched freely), no other kinds or API groups, no
//! discovery (`/api`, `/apis`), no `follow` for logs (the current log is answered and the
//! response ends), no HTTP/2, no TLS. Only pods have a deletion grace period
//! ([`KubeDouble::set_deletion_delay`]); every other kind goes at once, as in Kubernetes.
//! Setting a log is not a change of the pod (no watch event).
//!
//! # With kube-rs
//!
//! ```ignore
//! let double = kube_double::KubeDouble::start().await;
//! let kubeconfig = kube::config::Kubeconfig::from_yaml(&double.kubeconfig_yaml("spark"))?;
//! let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
//! let client = kube::Client::try_from(config)?;
//! ```
//!
//! Or [`KubeDouble::write_kubeconfig`] and `KUBECONFIG` for a child process; when the test
//! thread blocks on that child, start the double with [`KubeDouble::start_on_own_thread`]
//! (see [`KubeDouble::start`]). The kube-rs watcher's default (list, then watch from the
//! list's resourceVersion with bookmarks) and its streaming-list mode both work.
//!
//! A kube-rs 5 client retries 429, 503 and 504 answers itself (up to 15 times, exponential
//! back-off from 5 ms) unless `kube::Config::default_retry` is false: a [`Fault`] with those
//! codes reaches the caller only with `times` above 15 (each retry is a recorded request).
//! 403, 409, 500… reach it at once.

mod meta;
mod patch;
mod secret;
mod select;
mod server;
mod status;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use server::Shared;
use store::Kind;

/// A running double. Clones share it; the server stops when the last clone drops or on
/// [`KubeDouble::shutdown`].
#[derive(Clone)]
pub struct KubeDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _stop_on_drop: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}

impl std::fmt::Debug for KubeDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDouble")
            .field("url", &self.url())
            .finish()
    }
}

/// A request the double received (recorded before faults apply, so faulted ones too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, `DELETE`…
    pub method: String,
    /// E.g. `/api/v1/namespaces/spark/pods`.
    pub path: String,
    /// The raw (percent-encoded) query, without `?`; "" if none.
    pub query: String,
    /// Whether it is a watch (`watch=true` or `watch=1`).
    pub watch: bool,
}

/// A failure to inject (see [`KubeDouble::fail_next`]).
///
/// A request matches when its method equals `method` (any if `None`; case-insensitive) and
/// `path_contains` occurs in its path and query (`/api/v1/namespaces/ns/pods?watch=true&…`),
/// so `"watch=true"` targets watches. Each match uses one of `times` (a rule with `times: 0`
/// is ignored; `usize::MAX` is for ever, until [`KubeDouble::clear_faults`]).
///
/// - `status` 400 or more: after `delay`, if any, the request is answered with a `Status`
///   of that code (reason `Forbidden` for 403, `AlreadyExists` for 409, `InternalError` for
///   500, `ServiceUnavailable` for 503, `Timeout` for 504…) and not served: nothing changes.
/// - `status` below 400 (0 or 200, say): the request is served at once (its change is made)
///   but the answer is held back for `delay`: a slow or hung API server, for client
///   timeouts. A client that gives up meanwhile has still made the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub method: Option<String>,
    pub path_contains: String,
    pub status: u16,
    pub delay: Option<Duration>,
    pub times: usize,
}

impl Fault {
    /// Any method, once, at once.
    pub fn new(path_contains: &str, status: u16) -> Fault {
        Fault {
            method: None,
            path_contains: path_contains.to_owned(),
            status,
            delay: None,
            times: 1,
        }
    }

    pub fn with_method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_owned());
        self
    }

    pub fn with_times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Fault {
        self.delay = Some(delay);
        self
    }
}

impl KubeDouble {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    ///
    /// The double then runs only while that runtime gets to run: on a current-thread runtime
    /// (plain `#[tokio::test]`) a test that blocks its thread (a `std::process::Command`
    /// waiting for a child that talks to the double, `std::thread::sleep`, a blocking client)
    /// freezes the double too. Use [`KubeDouble::start_on_own_thread`] there, or a
    /// multi-thread runtime.
    ///
    /// # Panics
    ///
    /// If no local port can be bound.
    pub async fn start() -> KubeDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("kube-double: bind 127.0.0.1:0");
        let double = KubeDouble::new(listener.local_addr().expect("kube-double: local address"));
        tokio::spawn(serve(listener, double.shared.clone()));
        double
    }

    /// Binds `127.0.0.1:0` and serves from a thread of its own with its own tokio runtime:
    /// it keeps answering whatever the caller's thread does, and needs no runtime to start.
    ///
    /// # Panics
    ///
    /// If no local port can be bound or no thread started.
    pub fn start_on_own_thread() -> KubeDouble {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("kube-double: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("kube-double: a non-blocking socket");
        let double = KubeDouble::new(listener.local_addr().expect("kube-double: local address"));
        let shared = double.shared.clone();
        std::thread::Builder::new()
            .name("kube-double".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("kube-double: a tokio runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("kube-double: a tokio listener");
                    serve(listener, shared).await;
                });
            })
            .expect("kube-double: a thread");
        double
    }

    fn new(addr: SocketAddr) -> KubeDouble {
        let shared = Arc::new(Shared::new());
        KubeDouble {
            _stop_on_drop: Arc::new(StopOnDrop(shared.clone())),
            shared,
            addr,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context reaches the double (any bearer token works) with
    /// `namespace` as the default namespace.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        // JSON strings are YAML strings: quoting escapes whatever the namespace holds.
        let namespace = Value::from(namespace);
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kube-double
  cluster:
    server: {url}
    insecure-skip-tls-verify: true
users:
- name: kube-double
  user:
    token: kube-double-token
contexts:
- name: kube-double
  context:
    cluster: kube-double
    user: kube-double
    namespace: {namespace}
current-context: kube-double
preferences: {{}}
",
            url = self.url()
        )
    }

    /// Writes [`KubeDouble::kubeconfig_yaml`] to `path` (for `KUBECONFIG`).
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    /// Stops serving: open watches end, new connections are refused. Idempotent.
    pub fn shutdown(&self) {
        self.shared.shut_down();
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    fn objects(&self, kind: Kind, namespace: &str) -> Vec<Value> {
        self.shared
            .store()
            .list(kind, Some(namespace))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// The pods of a namespace, by name.
    pub fn pods(&self, namespace: &str) -> Vec<Value> {
        self.objects(Kind::Pod, namespace)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::Pod, namespace, name)
    }

    /// The services of a namespace, by name.
    pub fn services(&self, namespace: &str) -> Vec<Value> {
        self.objects(Kind::Service, namespace)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::Service, namespace, name)
    }

    /// The secrets of a namespace, by name (`data` base64, as the API serves them).
    pub fn secrets(&self, namespace: &str) -> Vec<Value> {
        self.objects(Kind::Secret, namespace)
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::Secret, namespace, name)
    }

    /// The configmaps of a namespace, by name.
    pub fn config_maps(&self, namespace: &str) -> Vec<Value> {
        self.objects(Kind::ConfigMap, namespace)
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::ConfigMap, namespace, name)
    }

    /// The networkpolicies (`networking.k8s.io/v1`) of a namespace, by name.
    pub fn network_policies(&self, namespace: &str) -> Vec<Value> {
        self.objects(Kind::NetworkPolicy, namespace)
    }

    pub fn network_policy(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::NetworkPolicy, namespace, name)
    }

    fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store().get(kind, namespace, name).cloned()
    }

    /// Replaces a pod's `.status`, as the kubelet would (MODIFIED). False if no such pod.
    pub fn set_pod_status(&self, namespace: &str, name: &str, status: Value) -> bool {
        self.update_pod(namespace, name, |pod| pod["status"] = status)
    }

    /// Changes a pod any way (labels, spec.nodeName…) as "the cluster" (MODIFIED); its name,
    /// namespace and uid stay. False if no such pod.
    pub fn update_pod(&self, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) -> bool {
        self.shared
            .update(|s| s.modify(Kind::Pod, namespace, name, change).is_some())
    }

    /// Sets what `pods/{name}/log` answers (not a change of the pod: no event). False if no
    /// such pod. The log goes with the pod.
    pub fn set_pod_log(&self, namespace: &str, name: &str, log: &str) -> bool {
        self.shared.update(|s| s.set_log(namespace, name, log))
    }

    /// The pod vanishes at once, grace period or not (a lost node, a force delete): DELETED,
    /// and what it owns is garbage-collected. False if no such pod.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .update(|s| s.remove(Kind::Pod, namespace, name, true).is_some())
    }

    /// Adds a pod as someone else would have made it (ADDED; MODIFIED if it replaces one of
    /// the same name). Kept as given: status included. Missing uid, creationTimestamp, kind
    /// and apiVersion are filled in; the namespace is set to `namespace`.
    ///
    /// # Panics
    ///
    /// If `pod` has no `metadata.name`.
    pub fn insert_pod(&self, namespace: &str, pod: Value) {
        self.insert(Kind::Pod, namespace, pod);
    }

    /// Adds a service as someone else would have made it; see [`KubeDouble::insert_pod`].
    pub fn insert_service(&self, namespace: &str, service: Value) {
        self.insert(Kind::Service, namespace, service);
    }

    /// Adds a secret as someone else would have made it; see [`KubeDouble::insert_pod`]. As
    /// every stored Secret, its `stringData` is folded into `data` (base64) and its `type`
    /// defaults to `Opaque`.
    ///
    /// # Panics
    ///
    /// If `secret` has no `metadata.name`, or a `stringData` that is not an object of strings.
    pub fn insert_secret(&self, namespace: &str, secret: Value) {
        self.insert(Kind::Secret, namespace, secret);
    }

    /// Adds a configmap as someone else would have made it; see [`KubeDouble::insert_pod`].
    pub fn insert_config_map(&self, namespace: &str, config_map: Value) {
        self.insert(Kind::ConfigMap, namespace, config_map);
    }

    /// Adds a networkpolicy as someone else would have made it (`apiVersion`
    /// `networking.k8s.io/v1` unless given); see [`KubeDouble::insert_pod`].
    pub fn insert_network_policy(&self, namespace: &str, network_policy: Value) {
        self.insert(Kind::NetworkPolicy, namespace, network_policy);
    }

    fn insert(&self, kind: Kind, namespace: &str, object: Value) {
        if let Err(why) = self.shared.update(|s| s.insert(kind, namespace, object)) {
            panic!("kube-double: cannot insert a {}: {why}", kind.name());
        }
    }

    /// Injects a failure for the next matching requests. Rules apply in the order given.
    pub fn fail_next(&self, rule: Fault) {
        self.shared.add_fault(rule, false);
    }

    /// Like [`KubeDouble::fail_next`], but the request is served first (its change is
    /// made) and then answered with the fault: a lost reply, as when the API server commits
    /// and the connection breaks.
    pub fn fail_after_commit(&self, rule: Fault) {
        self.shared.add_fault(rule, true);
    }

    /// Holds the next matching requests (`rule`'s `method`, `path_contains` and `times`) on
    /// their way until [`KubeDouble::release_held`]: then each is served, or faulted as
    /// [`KubeDouble::fail_next`] would with `rule` (so a `status` below 400 and no `delay`
    /// serves it as it is). A held request reaches the store when released even if its client
    /// has given up meanwhile: a request delayed in the network, arriving late.
    pub fn hold_next(&self, rule: Fault) {
        self.shared.add_hold(rule);
    }

    /// Lets every request held now go on (see [`KubeDouble::hold_next`]).
    pub fn release_held(&self) {
        self.shared.release_held();
    }

    /// How many requests are held now.
    pub fn held(&self) -> usize {
        self.shared.held()
    }

    /// The path and `DeleteOptions` body (`{}` when none) of every DELETE received since the
    /// start or [`KubeDouble::reset_requests`], in order (`gracePeriodSeconds`,
    /// `preconditions`, `propagationPolicy`…).
    pub fn delete_options(&self) -> Vec<(String, Value)> {
        self.shared.deletes()
    }

    /// Drops the fault rules not yet used up.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Every request received so far, in order, watches included.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests()
    }

    pub fn reset_requests(&self) {
        self.shared.reset_requests();
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would;
    /// clients watch again from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared.close_watches();
    }

    /// Forgets the change history, as an etcd compaction: open watches get an ERROR event
    /// 410 Expired and end, and watching from any resourceVersion up to now gets the same, so
    /// clients must list again (the next list's resourceVersion is watchable).
    pub fn expire_resource_versions(&self) {
        self.shared.update(store::Store::expire);
    }

    /// How long a deleted pod terminates before it is removed (default zero: at once). While
    /// terminating it has `deletionTimestamp` and `deletionGracePeriodSeconds` (a MODIFIED
    /// event) and still blocks its name; then it goes (DELETED) with what it owns.
    pub fn set_deletion_delay(&self, delay: Duration) {
        self.shared.update(|s| s.deletion_delay = delay);
    }
}

/// Serves until [`KubeDouble::shutdown`] or the last handle's drop.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let _ = axum::serve(listener, server::router(shared))
        .with_graceful_shutdown(stopped)
        .await;
}
