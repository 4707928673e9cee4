//! The caller of a request: every engine handler takes a [`Caller`], so a route cannot be
//! reached without authentication (its extraction runs before the body is read).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use super::ApiContext;
use crate::auth::Identity;

/// The authenticated user making the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

impl FromRequestParts<ApiContext> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        context: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .map(|value| value.as_bytes());
        context
            .auth
            .authenticate(header)
            .await
            .map(Caller)
            .map_err(ApiError::from)
    }
}
