//! gRPC refusals: real gRPC statuses in a trailers-only response (HTTP 200, `content-type:
//! application/grpc`, `grpc-status` and `grpc-message` in the headers, no body), which every gRPC
//! client reads as the call's status.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The gRPC status codes the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidArgument = 3,
    NotFound = 5,
    Unimplemented = 12,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The name metrics and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// Why a call was refused, for metrics; each has its gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No `x-rucat-engine` parameter.
    NoEngineNamed,
    /// No credential, or one that is not accepted.
    Unauthenticated,
    /// The credentials cannot be checked now (an issuer's keys cannot be loaded).
    AuthUnavailable,
    /// No such engine, or another user's.
    NotFound,
    /// The store cannot be read.
    StoreUnavailable,
    /// The engine is not `Running`.
    NotRunning,
    /// The engine runs but has no address or secret yet, or a malformed one.
    NotReachable,
    /// The engine's Spark Connect server cannot be reached or did not answer.
    EngineUnreachable,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoEngineNamed,
        Reason::Unauthenticated,
        Reason::AuthUnavailable,
        Reason::NotFound,
        Reason::StoreUnavailable,
        Reason::NotRunning,
        Reason::NotReachable,
        Reason::EngineUnreachable,
    ];

    pub fn code(self) -> Code {
        match self {
            Reason::NoEngineNamed => Code::InvalidArgument,
            Reason::Unauthenticated => Code::Unauthenticated,
            Reason::NotFound => Code::NotFound,
            Reason::AuthUnavailable
            | Reason::StoreUnavailable
            | Reason::NotRunning
            | Reason::NotReachable
            | Reason::EngineUnreachable => Code::Unavailable,
        }
    }

    /// The name metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoEngineNamed => "no_engine_named",
            Reason::Unauthenticated => "unauthenticated",
            Reason::AuthUnavailable => "auth_unavailable",
            Reason::NotFound => "not_found",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::NotRunning => "not_running",
            Reason::NotReachable => "not_reachable",
            Reason::EngineUnreachable => "engine_unreachable",
        }
    }
}

/// A call refused before anything was forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            code: reason.code(),
            reason,
            message: message.into(),
        }
    }

    /// The trailers-only response.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.code as u16));
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&self.message)) {
            headers.insert("grpc-message", message);
        }
        response
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, everything else `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_trailers_only_grpc_statuses() {
        let response: Response<String> =
            Refusal::new(Reason::NotFound, "no engine with id \"x\" – 100%").into_response();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "5");
        assert_eq!(
            headers["grpc-message"],
            "no engine with id \"x\" %E2%80%93 100%25"
        );
        assert!(response.body().is_empty());
    }
}
