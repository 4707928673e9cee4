//! One proxied call: the checks, then the bytes.
//!
//! Every request is checked before anything is forwarded: the engine it names, the caller's
//! credential, the engine's owner, the engine's state. Then the request goes to the engine over
//! the one pooled HTTP/2 connection to it, with the caller's `authorization` replaced by the
//! engine's secret and the routing header removed. Bodies and trailers pass through as frames,
//! never decoded: no message-size limit, flow control end to end.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::activity::{Activity, Call};
use super::grpc::{Reason, Refusal};
use crate::auth::{AuthError, Authenticator};
use crate::engine::{EngineId, EngineState, ENGINE_PARAMETER, REKEY_HEADER};
use crate::spark_connect::auth_headers;
use crate::store::Store;

/// How long opening a connection to an engine may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that belong to one hop, never forwarded (HTTP/2 forbids most of them anyway).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// A body passed through frame by frame, its bytes counted in `counter`; it may carry the call
/// it belongs to, which ends when the body does.
pub struct Passed<B> {
    inner: B,
    activity: Arc<Activity>,
    counter: fn(&Activity) -> &AtomicU64,
    call: Option<Call>,
}

impl<B> Passed<B> {
    fn new(
        inner: B,
        activity: &Arc<Activity>,
        counter: fn(&Activity) -> &AtomicU64,
        call: Option<Call>,
    ) -> Self {
        Passed {
            inner,
            activity: Arc::clone(activity),
            counter,
            call,
        }
    }
}

impl<B> Body for Passed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    (this.counter)(&this.activity).fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if frame.is_trailers() {
                    this.call.take();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.call.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the proxy answers: a refusal or health answer (empty or small), or an engine's
/// response passed through.
pub enum Answer {
    Full(Option<Bytes>),
    Passed(Passed<Incoming>),
}

impl Default for Answer {
    fn default() -> Self {
        Answer::Full(None)
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Answer::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Answer::Passed(passed) => Pin::new(passed).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Full(bytes) => bytes.is_none(),
            Answer::Passed(passed) => passed.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Answer::Full(None) => SizeHint::with_exact(0),
            Answer::Passed(passed) => passed.size_hint(),
        }
    }
}

type Sender = SendRequest<Passed<Incoming>>;

struct Connection {
    address: String,
    sender: Sender,
}

/// One HTTP/2 connection per engine, opened on first use and again when it closed or the
/// engine moved (a restart gives it a new address).
#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<EngineId, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
}

impl Pool {
    async fn sender(&self, id: &EngineId, address: &str) -> Result<Sender, String> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|_, slot| {
                // Drop slots whose connection closed, unless someone is opening one.
                slot.try_lock()
                    .map(|conn| conn.as_ref().is_some_and(|c| !c.sender.is_closed()))
                    .unwrap_or(true)
            });
            Arc::clone(slots.entry(id.clone()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.address == address && !conn.sender.is_closed() {
                return Ok(conn.sender.clone());
            }
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("no connection to {address} within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {address} failed: {e}"))?;
        let engine = id.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%engine, %error, "connection to the engine ended");
            }
        });
        *slot = Some(Connection {
            address: address.to_owned(),
            sender: sender.clone(),
        });
        Ok(sender)
    }

    fn forget(&self, id: &EngineId) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// What every call shares.
pub struct Router {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub activity: Arc<Activity>,
    pub pool: Pool,
    /// Whether `GET /metrics` (HTTP/1.1) answers the proxy's own counters on its port: only on
    /// a loopback listener (beyond it, the port faces every client; scrape the metrics
    /// listener instead).
    pub metrics_page: bool,
}

impl Router {
    /// Answers one request: a refusal, `/healthz` (HTTP/1.1, for probes), or the engine's
    /// response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Answer> {
        if request.version() != Version::HTTP_2 {
            return if request.uri().path() == "/healthz" {
                Response::new(Answer::Full(Some(Bytes::from_static(b"ok\n"))))
            } else if request.uri().path() == "/metrics" && self.metrics_page {
                let mut response = Response::new(Answer::Full(Some(Bytes::from(
                    self.activity.counters.prometheus(),
                ))));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE_TEXT),
                );
                response
            } else {
                let mut response = Response::new(Answer::Full(Some(Bytes::from_static(
                    b"this is a Spark Connect (gRPC over HTTP/2) proxy\n",
                ))));
                *response.status_mut() = hyper::StatusCode::HTTP_VERSION_NOT_SUPPORTED;
                response
            };
        }
        match self.forward(request).await {
            Ok(response) => response,
            Err(refusal) => {
                self.activity.counters.refused(refusal.reason);
                debug!(code = refusal.code.as_str(), reason = refusal.reason.as_str(), message = %refusal.message, "call refused");
                refusal.into_response()
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Answer>, Refusal> {
        let (mut parts, body) = request.into_parts();
        let engine = parts
            .headers
            .get(ENGINE_PARAMETER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Refusal::new(
                    Reason::NoEngineNamed,
                    format!(
                        "no engine named: add ;{ENGINE_PARAMETER}=<engine id> to the connection string"
                    ),
                )
            })?
            .to_owned();
        let caller = self
            .auth
            .authenticate(parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()))
            .await
            .map_err(|error| match error {
                AuthError::Unavailable(_) => {
                    Refusal::new(Reason::AuthUnavailable, error.to_string())
                }
                _ => Refusal::new(Reason::Unauthenticated, error.to_string()),
            })?;
        let not_found = || Refusal::new(Reason::NotFound, format!("no engine with id {engine:?}"));
        let id = EngineId::parse(&engine).ok_or_else(not_found)?;
        let record = self
            .store
            .get(&id)
            .await
            .map_err(|error| {
                warn!(%error, "cannot read an engine for a proxied call");
                Refusal::new(
                    Reason::StoreUnavailable,
                    "the store cannot serve the call; try again",
                )
            })?
            // A warm engine of a pool belongs to no one until a create takes it: no caller,
            // admins included, reaches it.
            .filter(|engine| engine.pool.is_none() && caller.may_use(&engine.owner))
            .ok_or_else(not_found)?;
        if record.state != EngineState::Running {
            return Err(Refusal::new(
                Reason::NotRunning,
                format!("engine {id} is {}, not Running", record.state),
            ));
        }
        let (Some(endpoint), Some(credentials)) = (&record.endpoint, record.credentials()) else {
            return Err(Refusal::new(
                Reason::NotReachable,
                format!("engine {id} is not reachable yet"),
            ));
        };
        let address = endpoint.trim_start_matches("sc://").trim_end_matches('/');

        // The engine's secret replaces the caller's credential; the routing header goes.
        parts.headers.remove(AUTHORIZATION);
        parts
            .headers
            .remove(HeaderName::from_static(ENGINE_PARAMETER));
        for header in HOP_BY_HOP {
            parts.headers.remove(header);
        }
        // A caller's own rekey header goes too: only Rucat hands an engine a new secret (an
        // engine taken from a warm pool learns it with the first calls after the take).
        parts.headers.remove(HeaderName::from_static(REKEY_HEADER));
        let headers = auth_headers(credentials)
            .map_err(|_| Refusal::new(Reason::NotReachable, "the engine's secret is malformed"))?;
        for (name, value) in headers {
            parts.headers.insert(name, value);
        }
        parts.headers.remove(HOST);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(address)
            .path_and_query(path)
            .build()
            .map_err(|_| {
                Refusal::new(
                    Reason::NotReachable,
                    format!("engine {id} has a bad address"),
                )
            })?;
        let call = self.activity.begin(&id);
        let upload = Passed::new(body, &self.activity, |a| &a.counters.bytes_to_engines, None);
        let mut sender = self.pool.sender(&id, address).await.map_err(|why| {
            Refusal::new(
                Reason::EngineUnreachable,
                format!("cannot reach engine {id}: {why}"),
            )
        })?;
        let response = match sender
            .send_request(Request::from_parts(parts, upload))
            .await
        {
            Ok(response) => response,
            Err(error) => {
                self.pool.forget(&id);
                return Err(Refusal::new(
                    Reason::EngineUnreachable,
                    format!("engine {id} did not answer: {error}"),
                ));
            }
        };
        let (parts, body) = response.into_parts();
        let download = Passed::new(
            body,
            &self.activity,
            |a| &a.counters.bytes_to_clients,
            Some(call),
        );
        Ok(Response::from_parts(parts, Answer::Passed(download)))
    }
}
