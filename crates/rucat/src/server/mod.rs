//! The REST API. It reads and writes the store only; monitors do the platform work.

mod auth;
mod body;
mod engines;
pub mod error;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::engine::policy::ConfPolicy;
use crate::engine::quota::Quotas;
use crate::engine::{IdleTimeouts, PublicUrl};
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::store::Store;
use error::ApiError;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiContext {
    pub store: Arc<dyn Store>,
    /// Who is asking: every route but `/healthz` and `/readyz` requires a caller.
    pub auth: Arc<Authenticator>,
    pub policy: Arc<ConfPolicy>,
    pub quotas: Arc<Quotas>,
    /// Where clients reach engines (the proxy): the endpoints users see.
    pub public_url: Arc<PublicUrl>,
    pub idle: IdleTimeouts,
    /// The Spark versions engines can be created with.
    pub versions: Arc<Vec<String>>,
    /// Where live driver logs are read from; without it, only kept logs are served.
    pub live_logs: Option<Arc<dyn Platform>>,
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
            public_url: Arc::new(
                PublicUrl::parse(&format!("sc://localhost:{}", crate::proxy::DEFAULT_PORT))
                    .unwrap_or_else(|_| unreachable!("the default public URL parses")),
            ),
            idle: IdleTimeouts::default(),
            versions: Arc::new(versions),
            live_logs: None,
        }
    }
}

pub fn router(context: ApiContext) -> Router {
    Router::new()
        .merge(engines::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(body::read_whole))
        .with_state(context)
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

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(context): State<ApiContext>) -> Result<impl IntoResponse, ApiError> {
    context.store.ping().await?;
    Ok((StatusCode::OK, Json(json!({"status": "ready"}))))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    let error = ApiError::bad_request(
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    );
    (
        StatusCode::METHOD_NOT_ALLOWED,
        error.into_response().into_body(),
    )
}
