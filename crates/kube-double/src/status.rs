//! Kubernetes `Status` objects: how the API server answers a failure.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::store::Kind;

/// A failed request, answered as a `Status` object with its HTTP code.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    details: Option<Value>,
}

impl ApiError {
    /// An error with the reason Kubernetes gives for `code`.
    pub(crate) fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason_for(code),
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// The answer to a path the API does not serve.
    pub(crate) fn no_such_path() -> ApiError {
        ApiError::new(404, "the server could not find the requested resource")
    }

    pub(crate) fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub(crate) fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::new(404, format!("{} \"{name}\" not found", kind.resource())).about(
            kind,
            kind.plural(),
            name,
        )
    }

    pub(crate) fn already_exists(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            format!("{} \"{name}\" already exists", kind.resource()),
        )
        .about(kind, kind.plural(), name)
    }

    /// 422: the object fails validation; `cause` says which field and why.
    pub(crate) fn invalid(kind: Kind, name: &str, cause: &str) -> ApiError {
        ApiError::new(
            422,
            format!("{} \"{name}\" is invalid: {cause}", kind.qualified_name()),
        )
        .about(kind, kind.name(), name)
    }

    /// 409 Conflict: the object is not the one the request expects (a stale resourceVersion, a
    /// failed precondition); `cause` says how.
    pub(crate) fn conflict(kind: Kind, name: &str, cause: &str) -> ApiError {
        ApiError {
            reason: "Conflict",
            ..ApiError::new(
                409,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {cause}",
                    kind.resource()
                ),
            )
        }
        .about(kind, kind.plural(), name)
    }

    /// 415 for a PATCH whose Content-Type is not one of `accepted`.
    pub(crate) fn unsupported_media_type(accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 410 for a watch from a resourceVersion older than the history kept.
    pub(crate) fn expired(from: u64, oldest: u64) -> ApiError {
        ApiError {
            reason: "Expired",
            ..ApiError::new(410, format!("too old resource version: {from} ({oldest})"))
        }
    }

    /// The `details` of a Status about one object: `what` is the resource for most errors,
    /// the kind for Invalid, as in Kubernetes.
    fn about(mut self, kind: Kind, what: &str, name: &str) -> ApiError {
        let mut details = json!({"name": name, "kind": what});
        if !kind.group().is_empty() {
            details["group"] = kind.group().into();
        }
        self.details = Some(details);
        self
    }

    /// The `Status` object.
    pub(crate) fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

/// The `reason` Kubernetes gives with an HTTP code (`metav1.StatusReason`).
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "AlreadyExists",
        410 => "Gone",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
