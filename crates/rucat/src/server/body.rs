//! Request bodies are read whole before a handler runs (and before the credential is looked at),
//! so every answer — a 413 for a body over the limit first of all — is given after the client has
//! finished sending. Answering while a client is still writing, then closing, makes it see a broken pipe
//! (Python's `urllib` and `requests` do) instead of the answer.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;

use super::error::ApiError;
use super::MAX_BODY_BYTES;

/// The most of an oversized body read (and dropped) so that its client can read the 413; past
/// this the connection is closed without waiting for the rest.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// How long reading a body may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "request body is larger than {MAX_BODY_BYTES} bytes"
    ))
}

fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Middleware: reads the request body (at most [`MAX_BODY_BYTES`]) before the handler runs.
pub async fn read_whole(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > DRAIN_BYTES) {
        return closing(too_large());
    }
    let (parts, mut body) = request.into_parts();
    let read = async {
        let mut kept = BytesMut::new();
        let mut dropped: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                Some(ApiError::bad_request(
                    "invalid_body",
                    format!("cannot read request body: {error}"),
                ))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if dropped == 0 && kept.len() + data.len() <= MAX_BODY_BYTES {
                kept.extend_from_slice(&data);
            } else {
                dropped += (kept.len() + data.len()) as u64;
                kept.clear();
                if dropped > DRAIN_BYTES {
                    return Err(Some(too_large()));
                }
            }
        }
        if dropped > 0 {
            Err(None)
        } else {
            Ok(kept.freeze())
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        // Read to its end: the connection stays usable.
        Ok(Err(None)) => too_large().into_response(),
        Ok(Err(Some(error))) => closing(error),
        Err(_) => closing(ApiError::bad_request(
            "invalid_body",
            format!(
                "request body not received within {}s",
                READ_TIMEOUT.as_secs()
            ),
        )),
    }
}
