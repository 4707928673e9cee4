//! Watch streams: the answer to `?watch=true`, newline-delimited JSON watch events.
//!
//! From `resourceVersion` N the stream replays the changes after N, then follows live ones; from
//! none or "0" (or with `sendInitialEvents=true`) it starts with ADDED for every matching
//! object. A modification that moves an object into or out of the selection is sent as ADDED
//! or DELETED, as the real watch cache does. A resourceVersion older than the kept history
//! answers 200 with one ERROR event (410 Expired) and ends, like the real server; so does an
//! open stream whose position gets compacted away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::select::Filter;
use crate::server::{Params, Shared};
use crate::status::ApiError;
use crate::store::{Change, ChangeType};

/// How often an idle stream that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// A watch without `timeoutSeconds` (the real server picks 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Watch {
    shared: Arc<Shared>,
    changed: watch::Receiver<()>,
    filter: Filter,
    /// The resourceVersion the client has seen everything up to.
    position: u64,
    epoch: u64,
    deadline: Instant,
    bookmarks: bool,
    next_bookmark: Instant,
    /// What to send first (the initial events).
    first: Vec<u8>,
    ended: bool,
}

pub(crate) fn respond(
    shared: &Arc<Shared>,
    filter: Filter,
    params: &Params,
) -> Result<Response, ApiError> {
    let timeout = params
        .number("timeoutSeconds")?
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let bookmarks = params.flag("allowWatchBookmarks");
    let initial_events = params.flag("sendInitialEvents");
    let from = match params.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let changed = shared.changed.subscribe();
    let epoch = shared.watch_epoch();
    let mut first = Vec::new();
    let mut ended = false;
    let store = shared.store();
    let position = match from {
        Some(from) if !initial_events => {
            if from < store.compacted() {
                let error = ApiError::expired(from, store.compacted()).body();
                event_line(&mut first, "ERROR", &error);
                ended = true;
            }
            from
        }
        _ => {
            let position = store.resource_version();
            for (_, object) in store.list(filter.kind, filter.namespace.as_deref()) {
                if filter.matches(object) {
                    event_line(&mut first, "ADDED", object);
                }
            }
            if initial_events {
                let end = bookmark(&filter, position, true);
                event_line(&mut first, "BOOKMARK", &end);
            }
            position
        }
    };
    drop(store);
    let now = Instant::now();
    let watch = Watch {
        shared: shared.clone(),
        changed,
        filter,
        position,
        epoch,
        deadline: now + timeout,
        bookmarks,
        next_bookmark: now + BOOKMARK_EVERY,
        first,
        ended,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        let chunk = watch.next_chunk().await?;
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), watch))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(500, e.to_string()))
}

impl Watch {
    /// The next lines to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if !self.first.is_empty() {
            return Some(std::mem::take(&mut self.first));
        }
        if self.ended {
            return None;
        }
        loop {
            self.changed.borrow_and_update();
            let mut lines = Vec::new();
            {
                let store = self.shared.store();
                if self.shared.watch_epoch() != self.epoch {
                    return None;
                }
                if self.position < store.compacted() {
                    let error = ApiError::expired(self.position, store.compacted()).body();
                    event_line(&mut lines, "ERROR", &error);
                    self.ended = true;
                    return Some(lines);
                }
                for change in store.changes_after(self.position) {
                    if let Some((event, object)) = self.event(change) {
                        event_line(&mut lines, event, object);
                    }
                }
                self.position = self.position.max(store.resource_version());
            }
            if !lines.is_empty() {
                return Some(lines);
            }
            tokio::select! {
                changed = self.changed.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(self.deadline) => return None,
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.next_bookmark = Instant::now() + BOOKMARK_EVERY;
                    let mark = bookmark(&self.filter, self.position, false);
                    event_line(&mut lines, "BOOKMARK", &mark);
                    return Some(lines);
                }
            }
        }
    }

    /// What this watch sees of a change, if anything.
    fn event<'c>(&self, change: &'c Change) -> Option<(&'static str, &'c Value)> {
        if change.kind != self.filter.kind {
            return None;
        }
        let now = self.filter.matches(&change.object);
        let event = match change.change {
            ChangeType::Added => now.then_some("ADDED"),
            ChangeType::Deleted => now.then_some("DELETED"),
            ChangeType::Modified => {
                let before = change
                    .previous
                    .as_ref()
                    .is_some_and(|p| self.filter.matches(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some((event, &change.object))
    }
}

/// A BOOKMARK's object; `initial_end` marks the end of `sendInitialEvents`.
fn bookmark(filter: &Filter, position: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": position.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": filter.kind.name(), "apiVersion": filter.kind.api_version(), "metadata": metadata})
}

fn event_line(out: &mut Vec<u8>, event: &str, object: &Value) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut *out, object).expect("a JSON value serializes");
    out.extend_from_slice(b"}\n");
}
