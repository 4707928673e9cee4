//! `/engines`: create, read, list, stop, restart, delete, logs, events.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use tracing::{info, warn};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiContext;
use crate::auth::Identity;
use crate::engine::admission::Admission;
use crate::engine::state::{user_transition, CREATED};
use crate::engine::{
    Actor, Cause, Engine, EngineEvent, EngineId, EngineRequest, EngineSecret, EngineState,
    EventType, SparkConf, UserOp, UserTarget,
};
use crate::store::{Cas, ListQuery, Take, Transition, MAX_EVENTS, MAX_KEPT_LOG};

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/engines", post(create).get(list))
        .route("/engines/{id}", get(read).delete(delete))
        .route("/engines/{id}/stop", post(stop))
        .route("/engines/{id}/restart", post(restart))
        .route("/engines/{id}/logs", get(logs))
        .route("/engines/{id}/events", get(events))
}

// The wire types the client reads too, holding the server's own types. The annotations name
// them by these aliases, without type arguments, so that the document calls them `Created`,
// `EnginePage`, `Logs` and `Events` and refers to `Engine`, `EngineEvent` and `LogSource` (which
// the document registers: see `openapi.rs`).
type Created = rucat_client::Created<EngineId>;
type EnginePage = rucat_client::EnginePage<Engine>;
type Logs = rucat_client::Logs<LogSource>;
type Events = rucat_client::Events<EngineEvent>;

/// The `{id}` of a route. One that is not even UTF-8 names no engine: it is answered as any
/// unknown id (axum's own rejection would be a plain-text 400).
struct IdPath(String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(IdPath(id)),
            Err(rejection) => Err(ApiError::NotFound(format!(
                "no engine with such an id ({})",
                rejection.body_text()
            ))),
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no engine with id {id:?}"))
}

fn parse_id(id: &str) -> Result<EngineId, ApiError> {
    EngineId::parse(id).ok_or_else(|| not_found(id))
}

/// The engine, if the caller may see it: another user's engine is answered exactly as an
/// unknown id, so that its existence is not revealed.
async fn load(context: &ApiContext, caller: &Identity, id: &str) -> Result<Engine, ApiError> {
    let id = parse_id(id)?;
    match context.store.get(&id).await? {
        Some(engine) if caller.may_use(&engine.owner) => Ok(engine),
        _ => Err(not_found(id.as_str())),
    }
}

/// The engine as users see it: reachable at the proxy's public address (never at its own), and
/// without its secret (which is never serialized anyway).
fn shown(context: &ApiContext, mut engine: Engine) -> Engine {
    engine.endpoint = engine
        .endpoint
        .is_some()
        .then(|| context.public_url.endpoint(&engine.id));
    engine.secret = None;
    engine
}

/// What engines are admitted under: today's policy and versions, checked at create and again at
/// each restart.
fn admission(context: &ApiContext) -> Admission<'_> {
    Admission {
        policy: &context.policy,
        versions: &context.versions,
    }
}

fn parse_request(body: Result<Bytes, BytesRejection>) -> Result<EngineRequest, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            ))
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request("invalid_body", format!("invalid request body: {error}"))
    })
}

/// Create an engine, owned by the caller.
///
/// A create that fits a warm pool (the pool's version, and only configs the pool's engines run
/// with, at the same values) takes one of the pool's warm engines and is `Running` at once.
#[utoipa::path(
    post,
    path = "/engines",
    operation_id = "createEngine",
    tag = "engines",
    request_body = EngineRequest,
    responses(
        (status = 201, description = "Created: the new engine's id", body = Created),
        (status = 400, description = "A bad body, name, type or config key, or a config the policy denies", body = super::error::Body),
        (status = 403, description = "Over one of the caller's quotas", body = super::error::Body),
        (status = 413, description = "A body over 64 KiB", body = super::error::Body),
        (status = 422, description = "A version the server does not offer (the message lists those it does)", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn create(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let request = parse_request(body)?;
    admission(&context).admit(&request)?;
    let idle_timeout_minutes = context.idle.resolve(request.idle_timeout_minutes)?;
    let limits = context.quotas.for_owner(&caller.user);
    // The first pool that fits and has an engine Running gives it.
    for pool in context.pools.fitting(&request) {
        let take = Take {
            pool: pool.name.clone(),
            owner: caller.user.clone(),
            name: request.name.clone(),
            secret: EngineSecret::generate(),
            idle_timeout_minutes,
            limits,
        };
        let taken = context.store.take_warm(&take).await?;
        if let Some(metrics) = &context.metrics {
            metrics.pool_take(&pool.name, taken.is_some());
        }
        match taken {
            Some(engine) => {
                info!(engine = %engine.id, name = %engine.name, owner = %engine.owner, pool = %pool.name, "engine created from a warm pool");
                return Ok((StatusCode::CREATED, Json(Created { id: engine.id })));
            }
            None => {
                info!(pool = %pool.name, "no warm engine ready in the pool");
            }
        }
    }
    let now = Utc::now();
    let engine = Engine {
        id: EngineId::generate(),
        name: request.name,
        owner: caller.user.clone(),
        engine_type: request.engine_type,
        version: request.version,
        state: CREATED,
        error: None,
        configs: request
            .configs
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        endpoint: None,
        create_time: now,
        update_time: now,
        next_update_time: Some(now),
        idle_timeout_minutes,
        // What its Spark Connect server will require; a new one at every restart.
        secret: Some(EngineSecret::generate()),
        generation: 0,
        failures: 0,
        failing_since: None,
        pool: None,
        handover_secret: None,
    };
    context.store.insert_within(&engine, &limits).await?;
    info!(engine = %engine.id, name = %engine.name, owner = %engine.owner, "engine created");
    Ok((StatusCode::CREATED, Json(Created { id: engine.id })))
}

/// An engine's record.
#[utoipa::path(
    get,
    path = "/engines/{id}",
    operation_id = "getEngine",
    tag = "engines",
    params(("id" = EngineId, Path, description = "The engine's id (another user's engine is answered as an unknown id)")),
    responses(
        (status = 200, description = "The engine", body = Engine),
        (status = 404, description = "No such engine (or not the caller's)", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn read(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<Json<Engine>, ApiError> {
    let engine = load(&context, &caller, &id).await?;
    Ok(Json(shown(&context, engine)))
}

/// The query of `GET /engines` (any other parameter is answered 400).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by hand from the query, so that unknown parameters are refused
struct ListParams {
    /// Only engines in this state.
    state: Option<EngineState>,
    /// Only this user's engines: an admin's choice (a user may name only themselves).
    owner: Option<String>,
    /// Engines per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Where the page starts: a previous page's `next_cursor`.
    cursor: Option<String>,
}

const DEFAULT_PAGE: u32 = 50;

/// A page of the caller's engines (an admin's: everyone's, or `owner`'s), in creation order.
#[utoipa::path(
    get,
    path = "/engines",
    operation_id = "listEngines",
    tag = "engines",
    params(ListParams),
    responses(
        (status = 200, description = "A page of engines", body = EnginePage),
        (status = 400, description = "A bad or unknown query parameter, or a bad cursor", body = super::error::Body),
        (status = 403, description = "`owner` names another user and the caller is not an admin", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn list(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EnginePage>, ApiError> {
    let Query(params) = params.map_err(|rejection| invalid_query(rejection.body_text()))?;
    let mut query = ListQuery {
        owner: None,
        state: None,
        limit: DEFAULT_PAGE,
        cursor: None,
    };
    for (key, value) in params {
        match key.as_str() {
            "state" => {
                let state = value
                    .parse::<EngineState>()
                    .map_err(|error| invalid_query(error.to_string()))?;
                query.state = Some(state);
            }
            "limit" => query.limit = parse_limit(&value, crate::store::MAX_PAGE)?,
            "cursor" => query.cursor = Some(value),
            "owner" => query.owner = Some(value),
            other => {
                return Err(invalid_query(format!(
                    "unknown query parameter {other:?}; known: state, owner, limit, cursor"
                )))
            }
        }
    }
    // A user lists their own engines; an admin everyone's, or one owner's.
    if !caller.is_admin() {
        match &query.owner {
            Some(owner) if *owner != caller.user => {
                return Err(ApiError::Forbidden(
                    "listing another user's engines (owner=) needs an admin".into(),
                ))
            }
            _ => query.owner = Some(caller.user.clone()),
        }
    }
    let page = context.store.list(&query).await?;
    Ok(Json(EnginePage {
        engines: page
            .engines
            .into_iter()
            .map(|engine| shown(&context, engine))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Applies a user operation as a CAS, re-reading and retrying if the state moved meanwhile.
async fn apply(
    context: &ApiContext,
    caller: &Identity,
    id: &str,
    op: UserOp,
) -> Result<Option<Engine>, ApiError> {
    let id = parse_id(id)?;
    for _ in 0..5 {
        let engine = load(context, caller, id.as_str()).await?;
        let Some(target) = user_transition(engine.state, op) else {
            return Err(ApiError::Conflict(format!(
                "cannot {} engine {id}: it is {}",
                op.as_str(),
                engine.state
            )));
        };
        let outcome = match target {
            UserTarget::Removed => context.store.remove(&id, engine.state).await?,
            UserTarget::State(to) => {
                let mut transition = Transition::new(engine.state, to)
                    .with_message(format!("{} requested by {}", op.as_str(), caller.user))
                    .by(Actor::User(caller.user.clone()))
                    .because(Cause::user(op.as_str()));
                if to == EngineState::WaitToStart {
                    // A restart starts the engine again: under today's policy, versions and
                    // quota, not those of its creation.
                    readmit(context, &engine)?;
                    transition = transition
                        .within(context.quotas.for_owner(&engine.owner))
                        .with_secret(EngineSecret::generate());
                }
                if !to.is_settled() {
                    transition = transition.due_at(Utc::now());
                }
                // The engine keeps serving while a stop waits, and again when it is cancelled.
                if matches!(to, EngineState::WaitToTerminate | EngineState::Running) {
                    transition.endpoint = engine.endpoint.clone();
                }
                context.store.update_state(&id, &transition).await?
            }
        };
        match outcome {
            Cas::Done => {
                info!(engine = %id, op = op.as_str(), from = %engine.state, "user operation");
                if let (UserTarget::State(to), Some(metrics)) = (target, &context.metrics) {
                    metrics.transition(engine.state, to);
                }
                return match target {
                    UserTarget::Removed => Ok(None),
                    UserTarget::State(_) => Ok(context
                        .store
                        .get(&id)
                        .await?
                        .map(|engine| shown(context, engine))),
                };
            }
            Cas::Conflict(actual) => {
                warn!(engine = %id, expected = %engine.state, %actual, "state moved during a user operation; retrying");
            }
            Cas::NotFound => return Err(not_found(id.as_str())),
        }
    }
    Err(ApiError::Conflict(format!(
        "engine {id} keeps changing state; try again"
    )))
}

/// [`admission`] for a stored engine about to start again.
fn readmit(context: &ApiContext, engine: &Engine) -> Result<(), ApiError> {
    let configs = SparkConf::parse(engine.configs.clone())?;
    Ok(admission(context).admit_start(engine.engine_type, &engine.version, &configs)?)
}

/// Stop an engine (`WaitToStart`, `StartInProgress` or `Running`).
#[utoipa::path(
    post,
    path = "/engines/{id}/stop",
    operation_id = "stopEngine",
    tag = "engines",
    params(("id" = EngineId, Path, description = "The engine's id (another user's engine is answered as an unknown id)")),
    responses(
        (status = 202, description = "Accepted: the engine, stopping", body = Engine),
        (status = 404, description = "No such engine (or not the caller's)", body = super::error::Body),
        (status = 409, description = "Its state does not allow a stop (the message names it)", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn stop(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    // None: deleted between the change and the read that shows it.
    let engine = apply(&context, &caller, &id, UserOp::Stop)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok((StatusCode::ACCEPTED, Json(engine)))
}

/// Restart a `Terminated` engine (or cancel the pending stop of a `WaitToTerminate` one).
#[utoipa::path(
    post,
    path = "/engines/{id}/restart",
    operation_id = "restartEngine",
    tag = "engines",
    params(("id" = EngineId, Path, description = "The engine's id (another user's engine is answered as an unknown id)")),
    responses(
        (status = 202, description = "Accepted: the engine, starting again", body = Engine),
        (status = 400, description = "A config today's policy denies", body = super::error::Body),
        (status = 403, description = "Over one of the owner's quotas", body = super::error::Body),
        (status = 404, description = "No such engine (or not the caller's)", body = super::error::Body),
        (status = 409, description = "Its state does not allow a restart (the message names it)", body = super::error::Body),
        (status = 422, description = "A version no longer offered", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn restart(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    // None: deleted between the change and the read that shows it.
    let engine = apply(&context, &caller, &id, UserOp::Restart)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok((StatusCode::ACCEPTED, Json(engine)))
}

/// Delete a `WaitToStart`, `Terminated` or `ErrorClean` engine.
#[utoipa::path(
    delete,
    path = "/engines/{id}",
    operation_id = "deleteEngine",
    tag = "engines",
    params(("id" = EngineId, Path, description = "The engine's id (another user's engine is answered as an unknown id)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such engine (or not the caller's)", body = super::error::Body),
        (status = 409, description = "Its state does not allow a delete (the message names it)", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn delete(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    apply(&context, &caller, &id, UserOp::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where a log comes from.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum LogSource {
    /// The running driver's.
    Live,
    /// What was kept when the engine stopped.
    Kept,
    /// There is none (yet).
    None,
}

/// The tail of an engine's driver log: live while it runs, kept after a stop.
#[utoipa::path(
    get,
    path = "/engines/{id}/logs",
    operation_id = "getEngineLogs",
    tag = "engines",
    params(("id" = EngineId, Path, description = "The engine's id (another user's engine is answered as an unknown id)")),
    responses(
        (status = 200, description = "The log's tail", body = Logs),
        (status = 404, description = "No such engine (or not the caller's)", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn logs(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<Json<Logs>, ApiError> {
    let engine = load(&context, &caller, &id).await?;
    if let (Some(live_logs), true) = (&context.live_logs, engine.state.may_have_resource()) {
        match live_logs.driver_log(&engine.id, MAX_KEPT_LOG).await {
            Ok(Some(log)) => {
                return Ok(Json(Logs {
                    source: LogSource::Live,
                    log,
                }))
            }
            Ok(None) => {}
            Err(error) => {
                warn!(engine = %engine.id, %error, "cannot read the live log; serving the kept one")
            }
        }
    }
    Ok(Json(match context.store.logs(&engine.id).await? {
        Some(log) => Logs {
            source: LogSource::Kept,
            log,
        },
        None => Logs {
            source: LogSource::None,
            log: String::new(),
        },
    }))
}

/// What an events request asks for: oldest first, after `cursor`, of these types and causes.
struct EventQuery {
    types: Option<Vec<EventType>>,
    causes: Option<Vec<String>>,
    after: u64,
    limit: usize,
}

fn invalid_query(message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

/// A page size: a whole number from 1 to `most`.
fn parse_limit(value: &str, most: u32) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=most).contains(limit))
        .ok_or_else(|| {
            invalid_query(format!(
                "limit must be a whole number from 1 to {most}, not {value:?}"
            ))
        })
}

/// A comma-separated list of non-empty values.
fn listed(key: &str, value: &str) -> Result<Vec<String>, ApiError> {
    let items: Vec<String> = value
        .split(',')
        .map(|item| item.trim().to_owned())
        .collect();
    if items.iter().any(String::is_empty) {
        return Err(invalid_query(format!(
            "{key} must be a comma-separated list of values, not {value:?}"
        )));
    }
    Ok(items)
}

impl EventQuery {
    fn parse(params: HashMap<String, String>) -> Result<Self, ApiError> {
        let mut query = EventQuery {
            types: None,
            causes: None,
            after: 0,
            limit: MAX_EVENTS,
        };
        for (key, value) in params {
            match key.as_str() {
                "type" => {
                    let types = listed("type", &value)?
                        .iter()
                        .map(|text| text.parse::<EventType>().map_err(invalid_query))
                        .collect::<Result<_, _>>()?;
                    query.types = Some(types);
                }
                "cause" => {
                    let causes = listed("cause", &value)?;
                    if let Some(unknown) =
                        causes.iter().find(|c| !Cause::KINDS.contains(&c.as_str()))
                    {
                        return Err(invalid_query(format!(
                            "unknown cause {unknown:?}; expected one of: {}",
                            Cause::KINDS.join(", ")
                        )));
                    }
                    query.causes = Some(causes);
                }
                "limit" => {
                    let most = u32::try_from(MAX_EVENTS).unwrap_or(u32::MAX);
                    query.limit = parse_limit(&value, most)? as usize;
                }
                "cursor" => {
                    query.after = value.parse::<u64>().map_err(|_| {
                        invalid_query(format!(
                            "invalid cursor {value:?}: pass the next_cursor of the previous page"
                        ))
                    })?;
                }
                other => {
                    return Err(invalid_query(format!(
                        "unknown query parameter {other:?}; known: type, cause, limit, cursor"
                    )))
                }
            }
        }
        Ok(query)
    }

    fn wants(&self, event: &EngineEvent) -> bool {
        event.id > self.after
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.contains(&event.event_type))
            && self.causes.as_ref().is_none_or(|causes| {
                event
                    .cause
                    .as_ref()
                    .is_some_and(|cause| causes.iter().any(|kind| kind == cause.kind()))
            })
    }
}

/// An engine's history (its last 100 events), oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/engines/{id}/events",
    operation_id = "getEngineEvents",
    tag = "engines",
    params(
        ("id" = EngineId, Path, description = "The engine's id (another user's engine is answered as an unknown id)"),
        ("type" = Option<String>, Query, description = "Only events of these types, comma-separated: `created`, `state_change`, `attempt_failed`",
            pattern = "^(created|state_change|attempt_failed)(,(created|state_change|attempt_failed))*$"),
        ("cause" = Option<String>, Query, description = "Only events whose cause is of these kinds, comma-separated: `user`, `monitor`, `timeout`, `idle`, `platform_error`, `health_check`, `store_error`",
            pattern = "^(user|monitor|timeout|idle|platform_error|health_check|store_error)(,(user|monitor|timeout|idle|platform_error|health_check|store_error))*$"),
        ("limit" = Option<u32>, Query, description = "Events per page (default 100)", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "Where the page starts: a previous page's `next_cursor`", pattern = "^[0-9]+$"),
    ),
    responses(
        (status = 200, description = "A page of the engine's events", body = Events),
        (status = 400, description = "A bad or unknown query parameter", body = super::error::Body),
        (status = 404, description = "No such engine (or not the caller's)", body = super::error::Body),
    ),
    security(("bearer" = [])),
)]
async fn events(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Events>, ApiError> {
    let Query(params) = params.map_err(|rejection| invalid_query(rejection.body_text()))?;
    let query = EventQuery::parse(params)?;
    let id = load(&context, &caller, &id).await?.id;
    // An engine keeps at most MAX_EVENTS events: a page is cut from all of them.
    let mut events: Vec<EngineEvent> = context
        .store
        .events(&id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?
        .into_iter()
        .filter(|event| query.wants(event))
        .collect();
    let more = events.len() > query.limit;
    events.truncate(query.limit);
    let next_cursor = more
        .then(|| events.last().map(|event| event.id.to_string()))
        .flatten();
    Ok(Json(Events {
        events,
        next_cursor,
    }))
}
