//! The Spark Connect calls Rucat makes itself: a `Config` request (reading `spark.app.id`),
//! with which the monitor decides that an engine is `Running` and stays healthy, and, for a
//! warm engine, one query (`SELECT 1` through `ExecutePlan`) before it counts as ready, so that
//! Spark's first-query costs are paid before a user takes it. Each is a real gRPC call over
//! HTTP/2 with the engine's secret, so it succeeds only when Spark Connect serves the engine's
//! sessions, not merely when a port accepts connections.
//!
//! The requests are written by hand (a few protobuf fields of `ConfigRequest` and
//! `ExecutePlanRequest` in Spark Connect's `base.proto` and `relations.proto`); the answer is
//! judged by its gRPC status alone.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, InvalidHeaderValue, AUTHORIZATION, CONTENT_TYPE, TE};
use hyper::{Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::engine::{Credentials, EngineId, REKEY_HEADER};

/// The user the monitor's calls name.
const USER: &str = "rucat-monitor";

/// Why a probe failed, in words.
pub type ProbeError = String;

/// Asks the Spark Connect server at `endpoint` (`sc://HOST:PORT`) for a configuration value in
/// the engine's own session, with its secret; `Ok` when it answers with gRPC status OK within
/// `timeout`.
pub async fn probe(
    endpoint: &str,
    engine: &EngineId,
    credentials: Option<Credentials<'_>>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let request = Call {
        method: "Config",
        message: config_request(engine),
    };
    match tokio::time::timeout(timeout, call(endpoint, request, credentials)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Spark Connect at {endpoint} did not answer within {timeout:?}"
        )),
    }
}

/// Runs `SELECT 1` in the engine's own session (the probes'), with its secret; `Ok` when the
/// query ends with gRPC status OK within `timeout`.
pub async fn warm_up(
    endpoint: &str,
    engine: &EngineId,
    credentials: Option<Credentials<'_>>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let request = Call {
        method: "ExecutePlan",
        message: select_one_request(engine),
    };
    match tokio::time::timeout(timeout, call(endpoint, request, credentials)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Spark Connect at {endpoint} did not run a query within {timeout:?}"
        )),
    }
}

/// The headers that authenticate a call to an engine's Spark Connect server (the monitor's, and
/// every call the proxy forwards): the secret as the bearer credential and, while a take's new
/// secret is being handed over, the new one as [`REKEY_HEADER`]. Marked sensitive, so that no
/// log shows them. `Err` when a secret is not a header value.
pub fn auth_headers(
    credentials: Credentials<'_>,
) -> Result<Vec<(HeaderName, HeaderValue)>, InvalidHeaderValue> {
    let sensitive = |text: &str| {
        HeaderValue::from_str(text).map(|mut value| {
            value.set_sensitive(true);
            value
        })
    };
    let mut headers = vec![(
        AUTHORIZATION,
        sensitive(&format!("Bearer {}", credentials.bearer.expose()))?,
    )];
    if let Some(new) = credentials.rekey {
        headers.push((
            HeaderName::from_static(REKEY_HEADER),
            sensitive(new.expose())?,
        ));
    }
    Ok(headers)
}

/// A unary or server-streaming call: the service's method and the request message.
struct Call {
    method: &'static str,
    message: Vec<u8>,
}

async fn call(
    endpoint: &str,
    request: Call,
    credentials: Option<Credentials<'_>>,
) -> Result<(), ProbeError> {
    let Call { method, message } = request;
    let address = endpoint
        .trim_start_matches("sc://")
        .split('/')
        .next()
        .unwrap_or_default();
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to Spark Connect at {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("no HTTP/2 from {address}: {e}"))?;
    let driver = tokio::spawn(connection);
    let uri: Uri = format!("http://{address}/spark.connect.SparkConnectService/{method}")
        .parse()
        .map_err(|e| format!("bad Spark Connect address {address}: {e}"))?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers");
    if let Some(credentials) = credentials {
        let headers = auth_headers(credentials)
            .map_err(|_| "the engine's secret is not a header value".to_owned())?;
        for (name, value) in headers {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Full::new(Bytes::from(grpc_frame(&message))))
        .map_err(|e| format!("cannot build the probe: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("Spark Connect at {address} failed the call: {e}"))?;
    let status_in_headers = grpc_status(response.headers());
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("Spark Connect at {address} broke off its answer: {e}"))?;
    let trailers = collected.trailers().cloned();
    driver.abort();
    let (code, message) = trailers
        .as_ref()
        .and_then(grpc_status)
        .or(status_in_headers)
        .ok_or_else(|| format!("Spark Connect at {address} answered without a gRPC status"))?;
    if code == 0 {
        Ok(())
    } else {
        Err(format!(
            "Spark Connect at {address} answered gRPC status {code}: {message}"
        ))
    }
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

/// The engine's session id: its id as a UUID (Spark wants one), the same at every probe, so
/// that probes reuse one session instead of making a new one each time.
fn session_id(engine: &EngineId) -> String {
    let id = engine.as_str();
    if id.len() == 32 {
        format!(
            "{}-{}-{}-{}-{}",
            &id[0..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..32]
        )
    } else {
        uuid::Uuid::nil().to_string()
    }
}

/// `ConfigRequest { session_id, user_context { user_id }, operation { get_option { keys:
/// ["spark.app.id"] } }, client_type }`, protobuf-encoded.
fn config_request(engine: &EngineId) -> Vec<u8> {
    let get_option = field(1, b"spark.app.id");
    let operation = field(4, &get_option);
    let user_context = field(1, USER.as_bytes());
    let mut message = field(1, session_id(engine).as_bytes());
    message.extend(field(2, &user_context));
    message.extend(field(3, &operation));
    message.extend(field(4, b"rucat"));
    message
}

/// `ExecutePlanRequest { session_id, user_context { user_id }, plan { root { sql { query:
/// "SELECT 1" } } }, client_type }`, protobuf-encoded.
fn select_one_request(engine: &EngineId) -> Vec<u8> {
    let sql = field(1, b"SELECT 1");
    let relation = field(10, &sql);
    let plan = field(1, &relation);
    let user_context = field(1, USER.as_bytes());
    let mut message = field(1, session_id(engine).as_bytes());
    message.extend(field(2, &user_context));
    message.extend(field(3, &plan));
    message.extend(field(4, b"rucat"));
    message
}

/// A length-delimited protobuf field (wire type 2).
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = varint(u64::from(number << 3 | 2));
    out.extend(varint(bytes.len() as u64));
    out.extend_from_slice(bytes);
    out
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A gRPC message frame: not compressed, its length (big-endian), the message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_fields_are_encoded_as_protoc_would() {
        assert_eq!(varint(1), [1]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(field(1, b"ab"), [0x0a, 2, b'a', b'b']);
        let id = EngineId::parse("0123456789abcdef0123456789abcdef").expect("id");
        assert_eq!(session_id(&id), "01234567-89ab-cdef-0123-456789abcdef");
        let request = config_request(&id);
        // session_id first: field 1, 36 bytes.
        assert_eq!(&request[..2], &[0x0a, 36]);
        let frame = grpc_frame(&request);
        assert_eq!(frame[0], 0);
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            request.len()
        );
    }
}
