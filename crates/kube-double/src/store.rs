//! The cluster state: the objects, the pods' logs, the global resourceVersion counter and the
//! history of changes the watches replay.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::meta;
use crate::status::ApiError;

/// The kinds the double serves: core v1 pods, services, secrets and configmaps, and
/// `networking.k8s.io/v1` networkpolicies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Pod,
    Service,
    Secret,
    ConfigMap,
    NetworkPolicy,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::Service,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::NetworkPolicy,
    ];

    /// The kind a path serves: `api_version` is `v1` for `/api/v1/…` and `group/version` for
    /// `/apis/group/version/…`.
    pub(crate) fn from_path(api_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.plural() == plural)
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    /// The `kind` field: `Pod`, `Service`…
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// The API group: "" for core.
    pub(crate) fn group(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Service | Kind::Secret | Kind::ConfigMap => "",
            Kind::NetworkPolicy => "networking.k8s.io",
        }
    }

    /// The `apiVersion` field of its objects and lists.
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Service | Kind::Secret | Kind::ConfigMap => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// The resource as the API server names it in messages: `pods`,
    /// `networkpolicies.networking.k8s.io`.
    pub(crate) fn resource(self) -> String {
        qualified(self.plural(), self.group())
    }

    /// The kind as the API server names it in validation messages: `Pod`,
    /// `NetworkPolicy.networking.k8s.io`.
    pub(crate) fn qualified_name(self) -> String {
        qualified(self.name(), self.group())
    }
}

fn qualified(name: &str, group: &str) -> String {
    if group.is_empty() {
        name.to_owned()
    } else {
        format!("{name}.{group}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One change, as watches replay it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) resource_version: u64,
    pub(crate) kind: Kind,
    pub(crate) change: ChangeType,
    /// The object after the change (for a deletion: its last state).
    pub(crate) object: Value,
    /// The object before a modification: a watch with a selector needs both to tell whether
    /// the object entered or left its selection.
    pub(crate) previous: Option<Value>,
}

/// How many changes are kept for watches to resume from; a watch from further back gets 410,
/// as after an etcd compaction.
const HISTORY: usize = 4096;

/// `(kind, namespace, name)`: objects iterate by namespace then name within a kind.
type Key = (Kind, String, String);

fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    (kind, namespace.to_owned(), name.to_owned())
}

/// What a DELETE did.
pub(crate) enum Deletion {
    /// The object is gone (or a dry run): here is its last state.
    Gone(Value),
    /// The pod is terminating: removed after `after` unless already due (`after == None`:
    /// it was terminating before this request).
    Terminating {
        object: Value,
        uid: String,
        after: Option<Duration>,
    },
}

/// What a DELETE asks (its `DeleteOptions` and `dryRun`).
#[derive(Debug)]
pub(crate) struct DeleteOptions {
    pub(crate) preconditions: Preconditions,
    /// `gracePeriodSeconds`.
    pub(crate) grace: Option<u64>,
    /// Delete what the object owns too (background propagation); false for `Orphan`.
    pub(crate) cascade: bool,
    pub(crate) dry_run: bool,
}

/// `DeleteOptions.preconditions`: what the object to delete must be.
#[derive(Debug, Default)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

impl Preconditions {
    /// Why `object` does not meet them, in the API server's words; `None` if it does.
    fn failure(&self, object: &Value) -> Option<String> {
        let actual = |field: &str| {
            object["metadata"][field]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let checks = [
            ("UID", &self.uid, actual("uid")),
            (
                "ResourceVersion",
                &self.resource_version,
                actual("resourceVersion"),
            ),
        ];
        checks.into_iter().find_map(|(what, expected, actual)| {
            let expected = expected.as_ref()?;
            (*expected != actual).then(|| {
                format!(
                    "Precondition failed: {what} in precondition: {expected}, {what} in object meta: {actual}"
                )
            })
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    logs: HashMap<(String, String), String>,
    history: VecDeque<Arc<Change>>,
    /// Watches must resume from this resourceVersion or later.
    compacted: u64,
    services_made: u32,
    pub(crate) deletion_delay: Duration,
}

impl Store {
    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    pub(crate) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(kind, namespace, name))
    }

    /// The objects of a kind, in one namespace or (`None`) all, ordered by namespace and name.
    pub(crate) fn list<'a>(
        &'a self,
        kind: Kind,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects
            .iter()
            .filter(move |((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns.as_str()))
    }

    /// The changes after `resource_version`, oldest first.
    pub(crate) fn changes_after(
        &self,
        resource_version: u64,
    ) -> impl Iterator<Item = &Arc<Change>> {
        let start = self
            .history
            .partition_point(|c| c.resource_version <= resource_version);
        self.history.range(start..)
    }

    pub(crate) fn log(&self, namespace: &str, name: &str) -> Option<&str> {
        self.logs
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(String::as_str)
    }

    /// Sets a pod's log; false if there is no such pod. Not a change of the pod: no event.
    pub(crate) fn set_log(&mut self, namespace: &str, name: &str, log: &str) -> bool {
        if self.get(Kind::Pod, namespace, name).is_none() {
            return false;
        }
        self.logs
            .insert((namespace.to_owned(), name.to_owned()), log.to_owned());
        true
    }

    /// Forgets the change history: watches from any resourceVersion up to now get 410 and
    /// must list again. The counter moves on so the next list's resourceVersion is valid.
    pub(crate) fn expire(&mut self) {
        self.resource_version += 1;
        self.compacted = self.resource_version;
        self.history.clear();
    }

    fn record(&mut self, kind: Kind, change: ChangeType, object: Value, previous: Option<Value>) {
        self.history.push_back(Arc::new(Change {
            resource_version: self.resource_version,
            kind,
            change,
            object,
            previous,
        }));
        while self.history.len() > HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.resource_version;
            }
        }
    }

    /// Moves the counter on and stamps `object` with the new resourceVersion.
    fn stamp(&mut self, object: &mut Value) {
        self.resource_version += 1;
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.insert(
                "resourceVersion".into(),
                self.resource_version.to_string().into(),
            );
        }
    }

    /// POST: validates `body` and stores it as a new object, filling in what the API server
    /// sets (uid, resourceVersion, creationTimestamp, namespace, initial status).
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let Some(object) = body.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        };
        for (field, expected) in [("kind", kind.name()), ("apiVersion", kind.api_version())] {
            match object.get(field) {
                None => {
                    object.insert(field.into(), expected.into());
                }
                Some(value) if value == expected => {}
                Some(value) => {
                    return Err(ApiError::bad_request(format!(
                        "{field} {value} does not match the resource: expected {expected:?}"
                    )))
                }
            }
        }
        decode(kind, object).map_err(|cause| {
            ApiError::bad_request(format!(
                "{name} in version {version:?} cannot be handled as a {name}: {cause}",
                name = kind.name(),
                version = kind.api_version().rsplit('/').next().unwrap_or_default(),
            ))
        })?;
        let meta = object
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata is not an object"))?;
        let name = match (meta.get("name"), meta.get("generateName")) {
            (Some(Value::String(name)), _) if !name.is_empty() => name.clone(),
            (_, Some(Value::String(prefix))) if !prefix.is_empty() => {
                format!("{prefix}{}", meta::name_suffix())
            }
            _ => {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        if let Some(cause) = meta::invalid_name(kind, &name) {
            return Err(ApiError::invalid(kind, &name, &cause));
        }
        match meta.get("namespace") {
            None => {}
            Some(Value::String(ns)) if ns == namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
        }
        if self.get(kind, namespace, &name).is_some() {
            return Err(ApiError::already_exists(kind, &name));
        }
        meta.insert("name".into(), name.clone().into());
        meta.insert("namespace".into(), namespace.into());
        meta.insert("uid".into(), meta::uid().into());
        meta.insert(
            "creationTimestamp".into(),
            meta::timestamp(SystemTime::now()).into(),
        );
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        self.initialize(kind, object);
        if dry_run {
            return Ok(body);
        }
        self.stamp(&mut body);
        self.objects
            .insert(key(kind, namespace, &name), body.clone());
        self.record(kind, ChangeType::Added, body.clone(), None);
        Ok(body)
    }

    /// What the API server sets on a new object: a pod's initial status, a service's clusterIP
    /// when it names none. No other defaulting: the spec stays as sent (a Secret's `type` is
    /// defaulted by [`decode`]).
    fn initialize(&mut self, kind: Kind, object: &mut Map<String, Value>) {
        match kind {
            Kind::Pod => {
                object.insert("status".into(), json!({"phase": "Pending"}));
            }
            Kind::Service => {
                let spec = object.entry("spec").or_insert_with(|| json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    if !spec.contains_key("clusterIP") {
                        self.services_made += 1;
                        let n = self.services_made;
                        let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                        spec.insert("clusterIP".into(), ip.into());
                    }
                }
                object.insert("status".into(), json!({"loadBalancer": {}}));
            }
            Kind::Secret | Kind::ConfigMap | Kind::NetworkPolicy => {}
        }
    }

    /// Puts `object` in as it is (filling in missing metadata; a Secret as [`decode`] makes
    /// it), as if another client made it: ADDED, or MODIFIED if it replaces an object of the
    /// same name. An error if it has no name or cannot be decoded.
    pub(crate) fn insert(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, String> {
        let fields = object
            .as_object_mut()
            .ok_or("an inserted object must be a JSON object")?;
        fields.entry("kind").or_insert_with(|| kind.name().into());
        fields
            .entry("apiVersion")
            .or_insert_with(|| kind.api_version().into());
        decode(kind, fields)?;
        let meta = fields.get_mut("metadata").and_then(Value::as_object_mut);
        let name = meta
            .as_ref()
            .and_then(|meta| meta.get("name")?.as_str())
            .map(str::to_owned);
        let (Some(meta), Some(name)) = (meta, name) else {
            return Err("an inserted object needs metadata.name".into());
        };
        meta.insert("namespace".into(), namespace.into());
        meta.entry("uid").or_insert_with(|| meta::uid().into());
        meta.entry("creationTimestamp")
            .or_insert_with(|| meta::timestamp(SystemTime::now()).into());
        self.stamp(&mut object);
        let previous = self
            .objects
            .insert(key(kind, namespace, &name), object.clone());
        let change = match previous {
            Some(_) => ChangeType::Modified,
            None => ChangeType::Added,
        };
        self.record(kind, change, object.clone(), previous);
        Ok(object)
    }

    /// Changes an object in place: MODIFIED. None if there is no such object. A change that
    /// breaks the object's shape (not an object, no metadata) is undone; the name, namespace
    /// and uid stay.
    pub(crate) fn modify(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let previous = self.get(kind, namespace, name)?.clone();
        let mut object = previous.clone();
        change(&mut object);
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Some(previous);
        };
        for field in ["name", "namespace", "uid"] {
            meta.insert(field.into(), previous["metadata"][field].clone());
        }
        self.stamp(&mut object);
        self.store_changed(kind, namespace, name, object.clone(), previous);
        Some(object)
    }

    /// PATCH with a JSON merge patch: MODIFIED with a new resourceVersion, or nothing when the
    /// patch changes nothing. The name and namespace cannot change (400); uid,
    /// creationTimestamp and the deletion fields keep their values whatever the patch says,
    /// and so does a pod's or service's status (a subresource); a `metadata.resourceVersion`
    /// in the patch other than the object's is a 409 Conflict.
    pub(crate) fn patch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let current = self
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if !patch.is_object() {
            return Err(ApiError::bad_request("Invalid JSON Patch"));
        }
        let mut object = current.clone();
        crate::patch::merge(&mut object, patch);
        let undecodable = |cause: String| ApiError::invalid(kind, name, &format!("patch: {cause}"));
        let fields = object
            .as_object_mut()
            .ok_or_else(|| undecodable("not a JSON object".into()))?;
        for (field, expected) in [("kind", kind.name()), ("apiVersion", kind.api_version())] {
            match fields.get(field) {
                None | Some(Value::Null) => {
                    fields.insert(field.into(), expected.into());
                }
                Some(value) if value == expected => {}
                Some(value) => {
                    return Err(undecodable(format!(
                        "{field}: {value} does not match the resource: expected {expected:?}"
                    )))
                }
            }
        }
        decode(kind, fields).map_err(undecodable)?;
        let meta = fields
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| undecodable("metadata: not an object".into()))?;
        match meta.get("namespace") {
            None | Some(Value::Null) => {}
            Some(Value::String(ns)) if ns.is_empty() || ns == namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
        }
        let patched_name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
        if patched_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({patched_name}) does not match the name on the URL ({name})"
            )));
        }
        let current_meta = &current["metadata"];
        match meta.get("resourceVersion") {
            None | Some(Value::Null) => {}
            Some(Value::String(rv)) if rv.is_empty() || *rv == current_meta["resourceVersion"] => {}
            Some(Value::String(_)) => {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ))
            }
            Some(other) => {
                return Err(undecodable(format!(
                    "metadata.resourceVersion: {other} is not a string"
                )))
            }
        }
        for field in [
            "namespace",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current_meta.get(field) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        if matches!(kind, Kind::Pod | Kind::Service) {
            match current.get("status") {
                Some(status) => fields.insert("status".into(), status.clone()),
                None => fields.remove("status"),
            };
        }
        if object == *current || dry_run {
            return Ok(object);
        }
        let previous = current.clone();
        self.stamp(&mut object);
        self.store_changed(kind, namespace, name, object.clone(), previous);
        Ok(object)
    }

    /// DELETE. With a deletion delay, a pod first terminates (`deletionTimestamp`, MODIFIED)
    /// and the caller removes it later; a grace period of 0 removes at once. An object that
    /// does not meet the preconditions is a 409 Conflict and stays, with what it owns.
    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deletion, ApiError> {
        let object = self
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if let Some(failure) = options.preconditions.failure(object) {
            return Err(ApiError::conflict(kind, name, &failure));
        }
        if options.dry_run {
            return Ok(Deletion::Gone(object.clone()));
        }
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let terminating = !object["metadata"]["deletionTimestamp"].is_null();
        if has_finalizers(object) {
            // Marked for deletion, kept until its finalizers are removed; a grace period given
            // now (0 included) shortens the one recorded.
            let grace = match (options.grace, kind) {
                (Some(grace), _) => grace,
                (None, Kind::Pod) => grace_seconds(self.deletion_delay),
                (None, _) => 0,
            };
            let recorded = object["metadata"]["deletionGracePeriodSeconds"].as_u64();
            let object = if !terminating || recorded.is_some_and(|r| grace < r) {
                let start = !terminating;
                self.modify(kind, namespace, name, |object| {
                    let meta = &mut object["metadata"];
                    if start {
                        meta["deletionTimestamp"] =
                            meta::timestamp(SystemTime::now() + Duration::from_secs(grace)).into();
                    }
                    meta["deletionGracePeriodSeconds"] = grace.into();
                })
                .unwrap_or_default()
            } else {
                object.clone()
            };
            return Ok(Deletion::Terminating {
                object,
                uid,
                after: None,
            });
        }
        let delay = self.deletion_delay;
        if kind == Kind::Pod && options.grace != Some(0) {
            if terminating {
                return Ok(Deletion::Terminating {
                    object: object.clone(),
                    uid,
                    after: None,
                });
            }
            if !delay.is_zero() {
                let grace_seconds = grace_seconds(delay);
                let object = self.modify(kind, namespace, name, |pod| {
                    pod["metadata"]["deletionTimestamp"] =
                        meta::timestamp(SystemTime::now() + delay).into();
                    pod["metadata"]["deletionGracePeriodSeconds"] = grace_seconds.into();
                });
                return Ok(Deletion::Terminating {
                    object: object.unwrap_or_default(),
                    uid,
                    after: Some(delay),
                });
            }
        }
        self.remove(kind, namespace, name, options.cascade)
            .map(Deletion::Gone)
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Removes an object at once (DELETED) and, with `cascade`, every object in its namespace
    /// whose `ownerReferences` name its uid, as the garbage collector would.
    pub(crate) fn remove(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        cascade: bool,
    ) -> Option<Value> {
        let mut object = self.objects.remove(&key(kind, namespace, name))?;
        self.stamp(&mut object);
        self.record(kind, ChangeType::Deleted, object.clone(), None);
        if kind == Kind::Pod {
            self.logs.remove(&(namespace.to_owned(), name.to_owned()));
        }
        if cascade {
            let uid = object["metadata"]["uid"].clone();
            let owned: Vec<Key> = self
                .objects
                .iter()
                .filter(|((_, ns, _), dependent)| {
                    ns == namespace
                        && dependent["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|owners| owners.iter().any(|o| o["uid"] == uid))
                })
                .map(|(key, _)| key.clone())
                .collect();
            for (kind, ns, name) in owned {
                self.remove(kind, &ns, &name, true);
            }
        }
        Some(object)
    }

    /// Ends a pod's termination: removes it if it is still the object `uid` names.
    pub(crate) fn finish_deletion(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: &str,
        cascade: bool,
    ) -> bool {
        // An object with finalizers goes when they are removed, not before.
        let same = self
            .get(kind, namespace, name)
            .is_some_and(|o| o["metadata"]["uid"] == uid && !has_finalizers(o));
        same && self.remove(kind, namespace, name, cascade).is_some()
    }

    /// After a change: an object marked for deletion whose last finalizer is gone is removed
    /// (DELETED, with what it owns), as the API server does; else the change is recorded
    /// (MODIFIED).
    fn store_changed(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: Value,
        previous: Value,
    ) {
        let released = has_finalizers(&previous)
            && !has_finalizers(&object)
            && !object["metadata"]["deletionTimestamp"].is_null();
        self.objects
            .insert(key(kind, namespace, name), object.clone());
        if released {
            // `remove` stamps a new resourceVersion and records the deletion.
            self.remove(kind, namespace, name, true);
        } else {
            self.record(kind, ChangeType::Modified, object, Some(previous));
        }
    }
}

/// Whether `object` has `metadata.finalizers` (a non-empty list): a delete only marks it.
fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// A grace period in whole seconds, rounded up.
fn grace_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// What decoding does to every object of a kind, whatever the request: a Secret's `stringData`
/// is folded into `data` and its `type` defaults to `Opaque`. An error says why the object
/// cannot be decoded.
fn decode(kind: Kind, object: &mut Map<String, Value>) -> Result<(), String> {
    match kind {
        Kind::Secret => crate::secret::normalize(object),
        Kind::Pod | Kind::Service | Kind::ConfigMap | Kind::NetworkPolicy => Ok(()),
    }
}
