//! `/engines`: create, read, list, stop, restart, delete, logs, events.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiContext;
use crate::auth::Identity;
use crate::engine::state::{user_transition, CREATED};
use crate::engine::{
    Actor, Engine, EngineEvent, EngineId, EngineRequest, EngineSecret, EngineState, EngineType,
    SparkConf, UserOp, UserTarget,
};
use crate::store::{Cas, ListQuery, Transition, MAX_KEPT_LOG};

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/engines", post(create).get(list))
        .route("/engines/{id}", get(read).delete(delete))
        .route("/engines/{id}/stop", post(stop))
        .route("/engines/{id}/restart", post(restart))
        .route("/engines/{id}/logs", get(logs))
        .route("/engines/{id}/events", get(events))
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

/// Whether an engine may start with these configs and this version under today's policy and
/// versions: checked at create, and again at each restart.
fn admit(
    context: &ApiContext,
    engine_type: EngineType,
    version: &str,
    configs: &SparkConf,
) -> Result<(), ApiError> {
    context.policy.check(configs)?;
    if !context.versions.iter().any(|v| v == version) {
        return Err(ApiError::Unprocessable(format!(
            "{} version {version:?} is not available; available: {}",
            engine_type.as_str(),
            context.versions.join(", ")
        )));
    }
    Ok(())
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

#[derive(Serialize)]
struct Created {
    id: EngineId,
}

async fn create(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let request = parse_request(body)?;
    admit(
        &context,
        request.engine_type,
        &request.version,
        &request.configs,
    )?;
    let idle_timeout_minutes = context.idle.resolve(request.idle_timeout_minutes)?;
    let now = Utc::now();
    let engine = Engine {
        id: EngineId::generate(),
        name: request.name.as_str().to_owned(),
        owner: caller.user.clone(),
        engine_type: request.engine_type.as_str().to_owned(),
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
    };
    let limits = context.quotas.for_owner(&caller.user);
    context.store.insert_within(&engine, &limits).await?;
    info!(engine = %engine.id, name = %engine.name, owner = %engine.owner, "engine created");
    Ok((StatusCode::CREATED, Json(Created { id: engine.id })))
}

async fn read(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Engine>, ApiError> {
    let engine = load(&context, &caller, &id).await?;
    Ok(Json(shown(&context, engine)))
}

#[derive(Serialize)]
struct EnginePage {
    engines: Vec<Engine>,
    next_cursor: Option<String>,
}

const DEFAULT_PAGE: u32 = 50;

async fn list(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EnginePage>, ApiError> {
    let Query(params) = params
        .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
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
                    .map_err(|error| ApiError::bad_request("invalid_query", error.to_string()))?;
                query.state = Some(state);
            }
            "limit" => {
                query.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=crate::store::MAX_PAGE).contains(limit))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!(
                                "limit must be a whole number from 1 to {}, not {value:?}",
                                crate::store::MAX_PAGE
                            ),
                        )
                    })?;
            }
            "cursor" => query.cursor = Some(value),
            "owner" => query.owner = Some(value),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter {other:?}; known: state, owner, limit, cursor"
                    ),
                ))
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
                    .by(Actor::User(caller.user.clone()));
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

/// [`admit`] for a stored engine about to start again.
fn readmit(context: &ApiContext, engine: &Engine) -> Result<(), ApiError> {
    let engine_type = engine
        .engine_type
        .parse::<EngineType>()
        .map_err(|error| ApiError::Unprocessable(format!("cannot restart: {error}")))?;
    let configs = SparkConf::parse(engine.configs.clone())?;
    admit(context, engine_type, &engine.version, &configs)
}

async fn stop(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let engine = apply(&context, &caller, &id, UserOp::Stop).await?;
    Ok((StatusCode::ACCEPTED, Json(engine)))
}

async fn restart(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let engine = apply(&context, &caller, &id, UserOp::Restart).await?;
    Ok((StatusCode::ACCEPTED, Json(engine)))
}

async fn delete(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    apply(&context, &caller, &id, UserOp::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logs(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let engine = load(&context, &caller, &id).await?;
    if let (Some(platform), true) = (&context.live_logs, engine.state.may_have_resource()) {
        match platform.logs(&engine.id, MAX_KEPT_LOG).await {
            Ok(Some(log)) => return Ok(Json(json!({"source": "live", "log": log}))),
            Ok(None) => {}
            Err(error) => {
                warn!(engine = %engine.id, %error, "cannot read the live log; serving the kept one")
            }
        }
    }
    let kept = context.store.logs(&engine.id).await?;
    let source = if kept.is_some() { "kept" } else { "none" };
    Ok(Json(
        json!({"source": source, "log": kept.unwrap_or_default()}),
    ))
}

#[derive(Serialize)]
struct Events {
    events: Vec<EngineEvent>,
}

async fn events(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Events>, ApiError> {
    let id = load(&context, &caller, &id).await?.id;
    let events = context
        .store
        .events(&id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    Ok(Json(Events { events }))
}
