//! The HTTP front: one handler that records the request, applies injected faults, and routes
//! the core v1 paths to the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::select::Filter;
use crate::status::ApiError;
use crate::store::{DeleteOptions, Deletion, Kind, Preconditions, Store};
use crate::{Fault, Request};

/// Everything the server and the handles share.
pub(crate) struct Shared {
    store: Mutex<Store>,
    control: Mutex<Control>,
    /// Ticks after every change of the store, waking the watches.
    pub(crate) changed: watch::Sender<()>,
    /// Bumped to end every open watch.
    watch_epoch: AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Bumped to let the held requests go.
    released: watch::Sender<u64>,
}

/// Fault rules and the request record.
#[derive(Default)]
struct Control {
    faults: Vec<Rule>,
    requests: Vec<Request>,
    /// The path and `DeleteOptions` of every DELETE.
    deletes: Vec<(String, Value)>,
    /// Requests held now (see [`crate::KubeDouble::hold_next`]).
    held: usize,
}

struct Rule {
    fault: Fault,
    /// Serve the request (its change is made) and answer the fault anyway.
    after_commit: bool,
    /// Hold the request until released, then apply the fault.
    held: bool,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            store: Mutex::default(),
            control: Mutex::default(),
            changed: watch::channel(()).0,
            watch_epoch: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
            released: watch::channel(0).0,
        }
    }

    /// Reads the store. A panic elsewhere while holding the lock leaves consistent data (every
    /// mutation is completed before it could panic), so poisoning is ignored.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the store and wakes the watches.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Store) -> R) -> R {
        let result = change(&mut self.store());
        self.changed.send_replace(());
        result
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add_fault(&self, fault: Fault, after_commit: bool) {
        if fault.times > 0 {
            self.control().faults.push(Rule {
                fault,
                after_commit,
                held: false,
            });
        }
    }

    pub(crate) fn add_hold(&self, fault: Fault) {
        if fault.times > 0 {
            self.control().faults.push(Rule {
                fault,
                after_commit: false,
                held: true,
            });
        }
    }

    /// Lets every request held now go.
    pub(crate) fn release_held(&self) {
        self.released.send_modify(|epoch| *epoch += 1);
    }

    pub(crate) fn held(&self) -> usize {
        self.control().held
    }

    pub(crate) fn deletes(&self) -> Vec<(String, Value)> {
        self.control().deletes.clone()
    }

    /// Waits (holding the request) until the next release.
    async fn hold(&self) {
        let mut released = self.released.subscribe();
        released.mark_unchanged();
        self.control().held += 1;
        let mut stopped = self.shutdown.subscribe();
        tokio::select! {
            _ = released.changed() => {}
            _ = stopped.wait_for(|stopped| *stopped) => {}
        }
        self.control().held -= 1;
    }

    pub(crate) fn clear_faults(&self) {
        self.control().faults.clear();
    }

    pub(crate) fn requests(&self) -> Vec<Request> {
        self.control().requests.clone()
    }

    pub(crate) fn reset_requests(&self) {
        let mut control = self.control();
        control.requests.clear();
        control.deletes.clear();
    }

    /// Records the request and takes the first fault rule it matches, if any: the fault,
    /// whether it applies after commit, whether the request is held first.
    fn admit(&self, request: Request, target: &str, body: &Bytes) -> Option<(Fault, bool, bool)> {
        let mut control = self.control();
        if request.method == "DELETE" {
            let options = serde_json::from_slice(body).unwrap_or_else(|_| json!({}));
            control.deletes.push((request.path.clone(), options));
        }
        let matched = control.faults.iter().position(|rule| {
            rule.fault
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&request.method))
                && target.contains(&rule.fault.path_contains)
        });
        control.requests.push(request);
        let index = matched?;
        let rule = &mut control.faults[index];
        let taken = (rule.fault.clone(), rule.after_commit, rule.held);
        rule.fault.times -= 1;
        if rule.fault.times == 0 {
            control.faults.remove(index);
        }
        Some(taken)
    }

    pub(crate) fn watch_epoch(&self) -> u64 {
        self.watch_epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn close_watches(&self) {
        self.watch_epoch.fetch_add(1, Ordering::SeqCst);
        self.changed.send_replace(());
    }

    pub(crate) fn shut_down(&self) {
        self.shutdown.send_replace(true);
        self.close_watches();
    }

    /// Removes a terminating pod once its grace period is over.
    fn finish_deletion_later(
        self: &Arc<Self>,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: String,
        after: std::time::Duration,
        cascade: bool,
    ) {
        let (shared, namespace, name) = (self.clone(), namespace.to_owned(), name.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            shared.update(|s| s.finish_deletion(kind, &namespace, &name, &uid, cascade));
        });
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// The decoded query parameters.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(uri: &Uri) -> Result<Params, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map(|Query(pairs)| Params(pairs))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: `true` or `1`.
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{name}: invalid value {v:?}: not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let query = uri.query().unwrap_or_default();
    let request = Request {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        watch: Params::parse(&uri).is_ok_and(|p| p.flag("watch")),
    };
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let fault = shared.admit(request, &target, &body);
    let Some((fault, after_commit, held)) = fault else {
        return serve(&shared, &method, &uri, &headers, &body);
    };
    if held {
        // A request held up on its way: it reaches the store when released, whether or not
        // its client still waits for the answer (so it runs apart from this connection).
        let task = tokio::spawn(async move {
            shared.hold().await;
            answer(
                &shared,
                &method,
                &uri,
                &headers,
                &body,
                &target,
                fault,
                after_commit,
            )
            .await
        });
        return task.await.unwrap_or_else(|_| {
            ApiError::new(500, "kube-double: a held request failed").into_response()
        });
    }
    answer(
        &shared,
        &method,
        &uri,
        &headers,
        &body,
        &target,
        fault,
        after_commit,
    )
    .await
}

/// Serves the request as the API server would.
fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match Params::parse(uri) {
        Ok(params) => route(shared, method, uri.path(), &params, content_type, body)
            .unwrap_or_else(IntoResponse::into_response),
        Err(error) => error.into_response(),
    }
}

/// Serves, delays or refuses the request as the fault rule it matched says.
#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    target: &str,
    fault: Fault,
    after_commit: bool,
) -> Response {
    let failure = fault.status >= 400;
    let served = (after_commit || !failure).then(|| serve(shared, method, uri, headers, body));
    if let Some(delay) = fault.delay {
        tokio::time::sleep(delay).await;
    }
    match served {
        Some(response) if !failure => response,
        _ => ApiError::new(
            fault.status,
            format!("kube-double: injected fault ({} {target})", method.as_str()),
        )
        .into_response(),
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &Params,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if path == "/version" {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-double", "platform": "linux/amd64"}),
        ));
    }
    // `/api/v1/…` serves core v1, `/apis/{group}/{version}/…` the groups.
    let (api_version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("v1".to_owned(), rest)
    } else {
        let mut parts = path
            .strip_prefix("/apis/")
            .unwrap_or_default()
            .splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(group), Some(version), Some(rest)) => (format!("{group}/{version}"), rest),
            _ => return Err(ApiError::no_such_path()),
        }
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ApiError::no_such_path());
    }
    let kind_of = |plural: &str| Kind::from_path(&api_version, plural);
    let kind = |plural: &str| kind_of(plural).ok_or_else(ApiError::no_such_path);
    let is_pods = |plural: &str| kind_of(plural) == Some(Kind::Pod);
    let m = method.as_str();
    match (m, segments.as_slice()) {
        ("GET", [plural]) => collection(shared, kind(plural)?, None, params),
        ("GET", ["namespaces", ns, plural]) => collection(shared, kind(plural)?, Some(ns), params),
        ("POST", ["namespaces", ns, plural]) => create(shared, kind(plural)?, ns, params, body),
        ("GET", ["namespaces", ns, plural, name]) => get(shared, kind(plural)?, ns, name),
        ("DELETE", ["namespaces", ns, plural, name]) => {
            delete(shared, kind(plural)?, ns, name, params, body)
        }
        ("PATCH", ["namespaces", ns, plural, name]) => {
            patch(shared, kind(plural)?, ns, name, params, content_type, body)
        }
        ("GET", ["namespaces", ns, plural, name, "log"]) if is_pods(plural) => {
            log(shared, ns, name, params)
        }
        (_, [plural] | ["namespaces", _, plural] | ["namespaces", _, plural, _]) => {
            kind(plural)?;
            Err(ApiError::method_not_allowed(m))
        }
        (_, ["namespaces", _, plural, _, "log"]) if is_pods(plural) => {
            Err(ApiError::method_not_allowed(m))
        }
        _ => Err(ApiError::no_such_path()),
    }
}

/// GET on a collection: a list, or with `watch` a watch stream.
fn collection(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<&str>,
    params: &Params,
) -> Result<Response, ApiError> {
    let filter = Filter::new(
        kind,
        namespace,
        params.get("labelSelector"),
        params.get("fieldSelector"),
    )?;
    if params.flag("watch") {
        return crate::watch::respond(shared, filter, params);
    }
    let limit = params.number("limit")?.filter(|&l| l > 0);
    let after = params.get("continue").filter(|c| !c.is_empty());
    let store = shared.store();
    let mut items = Vec::new();
    let mut last = None;
    let mut more = false;
    for ((_, ns, name), object) in store.list(kind, namespace) {
        // The continue token is the position (namespace/name) of the last item returned.
        let position = format!("{ns}/{name}");
        if after.is_some_and(|after| position.as_str() <= after) || !filter.matches(object) {
            continue;
        }
        if limit.is_some_and(|limit| items.len() as u64 == limit) {
            more = true;
            break;
        }
        items.push(object);
        last = Some(position);
    }
    let mut metadata = json!({"resourceVersion": store.resource_version().to_string()});
    if let Some(last) = last.filter(|_| more) {
        metadata["continue"] = last.into();
    }
    let list = json!({
        "kind": format!("{}List", kind.name()),
        "apiVersion": kind.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

fn create(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    params: &Params,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    let dry_run = params.get("dryRun") == Some("All");
    let created = shared.update(|s| s.create(kind, namespace, object, dry_run))?;
    Ok(json_response(StatusCode::CREATED, &created))
}

fn get(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let store = shared.store();
    let object = store
        .get(kind, namespace, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    Ok(json_response(StatusCode::OK, object))
}

/// The patch types PATCH takes; both are applied as a JSON merge patch.
const PATCH_TYPES: [&str; 2] = [
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// PATCH: a JSON merge patch (or a strategic merge patch, applied the same way) with
/// `dryRun=All`; any other Content-Type is 415.
fn patch(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    name: &str,
    params: &Params,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    // Parameters such as "; charset=utf-8" do not matter, as in Kubernetes.
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| PATCH_TYPES.contains(&m)) {
        return Err(ApiError::unsupported_media_type(&PATCH_TYPES));
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
    let dry_run = params.get("dryRun") == Some("All");
    let patched = shared.update(|s| s.patch(kind, namespace, name, &patch, dry_run))?;
    Ok(json_response(StatusCode::OK, &patched))
}

/// DELETE with optional `DeleteOptions` in the body (`preconditions`, `gracePeriodSeconds`,
/// `propagationPolicy`, `dryRun`) or `dryRun=All` in the query.
fn delete(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    name: &str,
    params: &Params,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let grace = match &options["gracePeriodSeconds"] {
        Value::Null => None,
        value => Some(
            value
                .as_i64()
                .ok_or_else(|| ApiError::bad_request("gracePeriodSeconds is not an integer"))?
                .max(0) as u64,
        ),
    };
    let options = DeleteOptions {
        preconditions: preconditions(&options["preconditions"])?,
        grace,
        cascade: options["propagationPolicy"] != "Orphan",
        dry_run: params.get("dryRun") == Some("All")
            || options["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All")),
    };
    let deletion = shared.update(|s| s.delete(kind, namespace, name, &options))?;
    let object = match deletion {
        Deletion::Gone(object) => object,
        Deletion::Terminating { object, uid, after } => {
            if let Some(after) = after {
                shared.finish_deletion_later(kind, namespace, name, uid, after, options.cascade);
            }
            object
        }
    };
    Ok(json_response(StatusCode::OK, &object))
}

/// `DeleteOptions.preconditions`: absent or null, or an object with optional string `uid` and
/// `resourceVersion`.
fn preconditions(value: &Value) -> Result<Preconditions, ApiError> {
    let invalid = || ApiError::bad_request(format!("invalid DeleteOptions.preconditions: {value}"));
    let field = |name: &str| match &value[name] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(invalid()),
    };
    match value {
        Value::Null => Ok(Preconditions::default()),
        Value::Object(_) => Ok(Preconditions {
            uid: field("uid")?,
            resource_version: field("resourceVersion")?,
        }),
        _ => Err(invalid()),
    }
}

/// `pods/{name}/log`: the log set by `set_pod_log`; `tailLines` keeps the last lines, then
/// `limitBytes` the first bytes of those.
fn log(
    shared: &Arc<Shared>,
    namespace: &str,
    name: &str,
    params: &Params,
) -> Result<Response, ApiError> {
    let tail = params.number("tailLines")?;
    let limit = params.number("limitBytes")?;
    let store = shared.store();
    if store.get(Kind::Pod, namespace, name).is_none() {
        return Err(ApiError::not_found(Kind::Pod, name));
    }
    let log = store.log(namespace, name).unwrap_or_default();
    let mut text = match tail {
        Some(lines) => tail_lines(log, lines),
        None => log,
    }
    .as_bytes();
    if let Some(limit) = limit {
        text = &text[..text.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        text.to_vec(),
    )
        .into_response())
}

/// The last `lines` lines of `log` (a final newline does not start another line).
pub(crate) fn tail_lines(log: &str, lines: u64) -> &str {
    if lines == 0 {
        return "";
    }
    let body = log.strip_suffix('\n').unwrap_or(log);
    let skip = usize::try_from(lines - 1).unwrap_or(usize::MAX);
    match body.rmatch_indices('\n').nth(skip) {
        Some((at, _)) => &log[at + 1..],
        None => log,
    }
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail_lines("a\nb\nc\n", 9), "a\nb\nc\n");
        assert_eq!(tail_lines("a\nb\n", 0), "");
        assert_eq!(tail_lines("", 1), "");
    }
}
