//! The HTTP layer's one error type: every failure becomes `{"error": {"code", "message"}}`
//! with a conventional status code, here and nowhere else.

use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tracing::{error, warn};

use crate::auth::AuthError;
use crate::engine::admission::Inadmissible;
use crate::engine::policy::Refused;
use crate::engine::quota::QuotaExceeded;
use crate::engine::InvalidEngine;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// No credential, or one that is not accepted (401 with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// An authenticated user asking for something their role does not allow.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    OverQuota(QuotaExceeded),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Every error answer's body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(super) struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
struct Detail<'a> {
    /// What went wrong, for programs: `invalid_body`, `invalid_engine`, `config_not_allowed`,
    /// `invalid_query`, `invalid_cursor`, `method_not_allowed`, `unauthenticated`, `forbidden`,
    /// `quota_exceeded`, `not_found`, `conflict`, `payload_too_large`, `unprocessable`,
    /// `unavailable`, …
    #[schema(example = "not_found")]
    code: &'a str,
    /// What went wrong, for people.
    message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(AuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::OverQuota(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthenticated(AuthError::Unavailable(_)) => "unavailable",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::OverQuota(_) => "quota_exceeded",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status_code(), Json(body)).into_response();
        if let ApiError::Unauthenticated(reason) = &self {
            // RFC 6750: a challenge; `invalid_token` when a credential was given but refused.
            let challenge = match reason {
                AuthError::Missing => "Bearer realm=\"rucat\"",
                AuthError::Unavailable(_) => return response,
                _ => "Bearer realm=\"rucat\", error=\"invalid_token\"",
            };
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match &error {
            AuthError::Unavailable(reason) => warn!(%reason, "cannot authenticate a request"),
            other => tracing::debug!(reason = %other, "request not authenticated"),
        }
        ApiError::Unauthenticated(error)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidCursor(cursor) => {
                ApiError::bad_request("invalid_cursor", format!("invalid cursor {cursor:?}"))
            }
            StoreError::OverQuota(exceeded) => ApiError::OverQuota(exceeded),
            // The detail may name the database, its host or a query: it goes to the log only.
            other => {
                error!(error = %other, "store failure");
                ApiError::Unavailable("the store cannot serve the request; try again".into())
            }
        }
    }
}

impl From<InvalidEngine> for ApiError {
    fn from(error: InvalidEngine) -> Self {
        ApiError::bad_request("invalid_engine", error.to_string())
    }
}

impl From<Refused> for ApiError {
    fn from(error: Refused) -> Self {
        ApiError::bad_request("config_not_allowed", error.to_string())
    }
}

impl From<Inadmissible> for ApiError {
    fn from(error: Inadmissible) -> Self {
        match error {
            Inadmissible::Refused(refused) => refused.into(),
            version @ Inadmissible::Version { .. } => ApiError::Unprocessable(version.to_string()),
        }
    }
}
