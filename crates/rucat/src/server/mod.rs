//! The REST API. It reads and writes the store; of the platform it only reads running engines'
//! driver logs ([`DriverLogs`]); monitors do the platform work.

mod auth;
mod body;
mod engines;
pub mod error;
mod openapi;
mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::engine::policy::ConfPolicy;
use crate::engine::pool::Pools;
use crate::engine::quota::Quotas;
use crate::engine::{IdleTimeouts, PublicUrl};
use crate::metrics::Metrics;
use crate::platform::DriverLogs;
use crate::shutdown::Shutdown;
use crate::store::Store;
use auth::Caller;
use error::ApiError;
pub use openapi::{document as openapi_document, openapi_json};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiContext {
    pub store: Arc<dyn Store>,
    /// Who is asking: every route but `/healthz`, `/readyz`, `/openapi.json` and the web
    /// console's files (`/ui`) requires a caller.
    pub auth: Arc<Authenticator>,
    pub policy: Arc<ConfPolicy>,
    pub quotas: Arc<Quotas>,
    /// Warm pools a fitting create takes its engine from.
    pub pools: Arc<Pools>,
    /// Where clients reach engines (the proxy): the endpoints users see.
    pub public_url: Arc<PublicUrl>,
    pub idle: IdleTimeouts,
    /// The Spark versions engines can be created with.
    pub versions: Arc<Vec<String>>,
    /// Where live driver logs are read from; without it, only kept logs are served.
    pub live_logs: Option<Arc<dyn DriverLogs>>,
    /// Where requests are counted, and what `GET /metrics` serves; `None`: metrics are off (no
    /// counting, no `/metrics`).
    pub metrics: Option<Arc<Metrics>>,
}

impl ApiContext {
    /// A context with everything but the store and the versions at its default: authentication
    /// off, the default policy, no quotas, the proxy at `sc://localhost:15002`, no idle timeout,
    /// kept logs only. For benchmarks and tests of the router itself; a process builds its
    /// context from its settings (see [`crate::app`]).
    pub fn new(store: Arc<dyn Store>, versions: Vec<String>) -> Self {
        ApiContext {
            store,
            auth: Arc::new(Authenticator::disabled()),
            policy: Arc::new(ConfPolicy::default()),
            quotas: Arc::default(),
            pools: Arc::default(),
            public_url: Arc::new(
                PublicUrl::parse(&format!("sc://localhost:{}", crate::proxy::DEFAULT_PORT))
                    .unwrap_or_else(|_| unreachable!("the default public URL parses")),
            ),
            idle: IdleTimeouts::default(),
            versions: Arc::new(versions),
            live_logs: None,
            metrics: None,
        }
    }
}

pub fn router(context: ApiContext) -> Router {
    let metrics = context.metrics.clone();
    if let Some(metrics) = &metrics {
        metrics.note_server();
    }
    let router = Router::new()
        .merge(engines::router())
        .merge(ui::router())
        .route("/versions", get(versions))
        .route("/me", get(me))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::openapi_json_route))
        .route("/metrics", get(metrics_page))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(body::read_whole));
    // Outermost: every request is counted, with the time its body took to read.
    match metrics {
        Some(metrics) => router.layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        )),
        None => router,
    }
    .with_state(context)
}

/// `GET /metrics`: Prometheus' text format. Open while authentication is off (Rucat then
/// listens on loopback only, and every caller is the anonymous admin); once it is on, for
/// admins only, as the page covers every user's engines. A scraper without a credential uses
/// the metrics listener of its own (`[metrics] listen`). 404 when metrics are off.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "service",
    responses(
        (status = 200, description = "The metrics, in Prometheus' text format", content_type = "text/plain", body = String),
        (status = 403, description = "Authentication is on and the caller is not an admin", body = error::Body),
        (status = 404, description = "Metrics are off", body = error::Body),
    ),
    security(("bearer" = [])),
)]
async fn metrics_page(
    State(context): State<ApiContext>,
    Caller(caller): Caller,
) -> Result<axum::response::Response, ApiError> {
    let Some(metrics) = &context.metrics else {
        return Err(ApiError::NotFound(
            "metrics are off ([metrics] enabled = false)".into(),
        ));
    };
    if !caller.is_admin() {
        return Err(ApiError::Forbidden(
            "the metrics are for admins (or scrape the metrics listener, [metrics] listen)".into(),
        ));
    }
    Ok(crate::metrics::page(metrics).await)
}

/// Serves the API on `listener` until `shutdown` fires; requests under way then finish.
pub async fn serve(
    listener: TcpListener,
    context: ApiContext,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(context))
        .with_graceful_shutdown(shutdown.wait())
        .await
}

/// A probe's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Status {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether the process is up. Public, for probes: it tells nothing but that.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "service",
    responses((status = 200, description = "The process is up (`ok`)", body = Status)),
)]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// The Spark versions engines can be created with.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Versions {
    #[schema(example = json!(["4.3.0"]))]
    versions: Vec<String>,
}

/// The Spark versions engines can be created with (what a create form offers).
#[utoipa::path(
    get,
    path = "/versions",
    operation_id = "listVersions",
    tag = "service",
    responses((status = 200, description = "The versions a create may name", body = Versions)),
    security(("bearer" = [])),
)]
async fn versions(State(context): State<ApiContext>, Caller(_): Caller) -> Json<Versions> {
    Json(Versions {
        versions: context.versions.to_vec(),
    })
}

/// Who the caller is, as Rucat sees them.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Me {
    /// The user name: the owner of the engines the caller creates (`anonymous` without
    /// authentication).
    #[schema(example = "alice")]
    user: String,
    /// `user`: their own engines only; `admin`: every engine.
    #[schema(example = "user")]
    role: crate::auth::Role,
}

/// Who the caller is: their user name and role (what the web console shows once signed in).
#[utoipa::path(
    get,
    path = "/me",
    operation_id = "whoAmI",
    tag = "service",
    responses((status = 200, description = "The caller's user name and role", body = Me)),
    security(("bearer" = [])),
)]
async fn me(Caller(caller): Caller) -> Json<Me> {
    Json(Me {
        user: caller.user,
        role: caller.role,
    })
}

/// Whether the store answers. Public, for probes: it tells nothing but that.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "service",
    responses(
        (status = 200, description = "The store answers (`ready`)", body = Status),
        (status = 503, description = "The store does not answer", body = error::Body),
    ),
)]
async fn readyz(State(context): State<ApiContext>) -> Result<Json<Status>, ApiError> {
    context.store.ping().await?;
    Ok(Json(Status { status: "ready" }))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    let error = ApiError::bad_request(
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    );
    // The error's whole response (its JSON content type included), with this status.
    let mut response = error.into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
