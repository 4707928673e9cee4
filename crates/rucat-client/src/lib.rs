//! A typed async client of Rucat's REST API: create, list, stop, restart and delete Spark
//! Connect engines, read their logs and history, wait for a state, and (with the default `spark`
//! feature) open a spark-connect-rs `SparkSession` on an engine through Rucat's Spark Connect
//! proxy, with the client's own credential.
//!
//! ```no_run
//! use std::time::Duration;
//! use rucat_client::{Client, CreateRequest, EngineState};
//!
//! # async fn demo() -> Result<(), rucat_client::ClientError> {
//! // RUCAT_SERVER (default http://127.0.0.1:3000) and RUCAT_TOKEN.
//! let client = Client::from_env();
//! let engine = client
//!     .create_engine(&CreateRequest::new("reports", "4.3.0"))
//!     .await?;
//! engine.wait(EngineState::Running, Duration::from_secs(600)).await?;
//! # #[cfg(feature = "spark")] {
//! let spark = engine.session().await?;
//! let rows = spark.sql("SELECT 1 AS one").await?.collect().await?;
//! assert_eq!(rows.num_rows(), 1);
//! # }
//! engine.stop().await?;
//! engine.wait(EngineState::Terminated, Duration::from_secs(600)).await?;
//! engine.delete().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`ClientError`]s: what the server refused ([`ClientError::Api`], with the API's
//! error code and message), a server out of reach, an answer that is not the API's, or an
//! engine that did not get where it was awaited.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

mod types;

pub use reqwest::StatusCode;
pub use secrecy;
pub use types::{
    Actor, Cause, Created, Engine, EngineEvent, EnginePage, EngineState, EventType, Events, Logs,
    UnknownState,
};

/// The Arrow that [`SparkSession`]'s results (`RecordBatch`es) are made of.
#[cfg(feature = "spark")]
pub use arrow;
/// spark-connect-rs, the Spark Connect client [`EngineHandle::session`] connects with (use its
/// types, and its `arrow`, from here so that the versions match).
#[cfg(feature = "spark")]
pub use spark_connect_rs;
#[cfg(feature = "spark")]
pub use spark_connect_rs::SparkSession;

/// The server [`Client::from_env`] talks to when RUCAT_SERVER is not set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:3000";

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Client::wait`] looks at the engine.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error: its HTTP status and the API's `{"error": {"code",
    /// "message"}}`.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: StatusCode,
        /// The API's error code (`not_found`, `invalid_state`, `unauthorized`, …), or `unknown`
        /// when the answer was not the API's error shape.
        code: String,
        message: String,
    },
    /// The server could not be reached (or did not answer in time).
    #[error("cannot reach the Rucat server at {server}: {source}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server's answer is not what the API sends.
    #[error("unexpected answer from the Rucat server: {0}")]
    Decode(String),
    /// [`Client::wait`] gave up.
    #[error("engine {id} did not reach {wanted} within {timeout:?}; it is {state}")]
    Timeout {
        id: String,
        wanted: EngineState,
        state: EngineState,
        timeout: Duration,
    },
    /// [`Client::wait`] saw the engine fail, or settle where the awaited state cannot follow.
    #[error("engine {id} failed: it is {state}: {message}")]
    EngineFailed {
        id: String,
        state: EngineState,
        message: String,
    },
    /// A Spark Connect session was asked of an engine that is not running.
    #[error("engine {id} is {state}, not Running: no endpoint to connect to")]
    NotRunning { id: String, state: EngineState },
    /// The engine's endpoint wants TLS (`;use_ssl=true`) and this build of the client has no
    /// TLS for Spark Connect (the `spark-tls` feature).
    #[error(
        "the endpoint wants TLS (use_ssl=true), which this build's Spark Connect client lacks \
         (rucat-client's `spark-tls` feature)"
    )]
    TlsUnsupported,
    /// The client's token cannot go into a Spark Connect connection string.
    #[error("the token cannot be passed in a Spark Connect connection string: it holds a ';'")]
    UnusableToken,
    /// spark-connect-rs could not connect, or the engine refused the session.
    #[cfg(feature = "spark")]
    /// (Not a `source`: the message already holds it, and a report of the chain would say it
    /// twice.)
    #[error("Spark Connect: {0}")]
    Spark(spark_connect_rs::errors::SparkError),
}

#[cfg(feature = "spark")]
impl From<spark_connect_rs::errors::SparkError> for ClientError {
    fn from(error: spark_connect_rs::errors::SparkError) -> Self {
        ClientError::Spark(error)
    }
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code of an [`ClientError::Api`] error (`not_found`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A new engine.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// 1 to 128 letters, digits, '-', '_' or '.'.
    pub name: String,
    /// A Spark version the server offers ([`Client::versions`]).
    pub version: String,
    /// Spark configuration.
    pub configs: BTreeMap<String, String>,
    /// Minutes without a Spark Connect call before it is stopped (0: never; `None`: the
    /// server's default).
    pub idle_timeout_minutes: Option<u32>,
}

impl CreateRequest {
    /// An engine named `name` on Spark `version`, with no configuration of its own.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        CreateRequest {
            name: name.into(),
            version: version.into(),
            ..CreateRequest::default()
        }
    }

    /// With one more Spark configuration entry.
    pub fn conf(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// What a listing asks for; every field may be left out.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only engines in this state.
    pub state: Option<EngineState>,
    /// Only this owner's engines (an admin's filter; a user sees only their own anyway).
    pub owner: Option<String>,
    /// At most this many engines in the page (the server's default otherwise).
    pub limit: Option<u32>,
    /// The previous page's [`EnginePage::next_cursor`].
    pub cursor: Option<String>,
}

/// What a page of events asks for; every field may be left out.
#[derive(Debug, Clone, Default)]
pub struct EventsRequest {
    /// Only events of these types (`created`, `state_change`, `attempt_failed`).
    pub types: Vec<String>,
    /// Only events with a cause of these kinds (`user`, `monitor`, `timeout`, …).
    pub causes: Vec<String>,
    /// At most this many events in the page.
    pub limit: Option<u32>,
    /// The previous page's [`Events::next_cursor`].
    pub cursor: Option<String>,
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved
/// characters).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `path?key=value&…`, values encoded.
fn with_query(path: &str, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let encoded: Vec<String> = query
        .iter()
        .map(|(key, value)| format!("{key}={}", percent_encode(value)))
        .collect();
    format!("{path}?{}", encoded.join("&"))
}

/// `connection` with one more Spark Connect connection-string parameter.
fn with_parameter(connection: &str, parameter: &str) -> String {
    if connection.contains("/;") {
        format!("{connection};{parameter}")
    } else {
        format!("{}/;{parameter}", connection.trim_end_matches('/'))
    }
}

/// Whether a Spark Connect connection string asks for TLS (`;use_ssl=true`).
fn wants_tls(connection: &str) -> bool {
    let Some((_, parameters)) = connection.split_once("/;") else {
        return false;
    };
    parameters.split(';').any(|parameter| {
        parameter.split_once('=').is_some_and(|(key, value)| {
            key.eq_ignore_ascii_case("use_ssl") && value.eq_ignore_ascii_case("true")
        })
    })
}

/// A client of one Rucat server, with one credential. Cheap to clone (clones share their
/// connections).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<SecretString>,
}

impl Client {
    /// A client of `server` (`http://HOST:PORT` or `https://…`), sending `token` (an API token
    /// or an OIDC JWT), when given, as `Authorization: Bearer`.
    pub fn new(server: &str, token: Option<SecretString>) -> Self {
        Client {
            http: reqwest::Client::new(),
            server: server.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// A client of RUCAT_SERVER (else [`DEFAULT_SERVER`]) with RUCAT_TOKEN (if set and not
    /// empty), as the `rucat` command line uses them.
    pub fn from_env() -> Self {
        let server = std::env::var("RUCAT_SERVER")
            .ok()
            .filter(|server| !server.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let token = std::env::var("RUCAT_TOKEN")
            .ok()
            .filter(|token| !token.is_empty())
            .map(SecretString::from);
        Client::new(&server, token)
    }

    /// The server's address, as given (without a trailing '/').
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether requests carry a credential.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<T>, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server))
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                server: self.server.clone(),
                source,
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| ClientError::Decode(error.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api {
                    status,
                    code: body.error.code,
                    message: body.error.message,
                },
                Err(_) => ClientError::Api {
                    status,
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| ClientError::Decode(format!("{path}: {error}")))
    }

    async fn call_some<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        self.call(method, path, body)
            .await?
            .ok_or_else(|| ClientError::Decode(format!("empty answer to {path}")))
    }

    fn engine_path(id: &str, rest: &str) -> String {
        format!("/engines/{}{rest}", percent_encode(id))
    }

    /// A handle on engine `id` (nothing is asked of the server until it is used).
    pub fn engine(&self, id: &str) -> EngineHandle {
        EngineHandle {
            client: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Asks for a Spark engine named `name` on `version` with `configs`; its id.
    pub async fn create(
        &self,
        name: &str,
        version: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<String, ClientError> {
        self.create_with(&CreateRequest {
            name: name.to_owned(),
            version: version.to_owned(),
            configs: configs.clone(),
            idle_timeout_minutes: None,
        })
        .await
    }

    /// Asks for a Spark engine; its id. It starts in the background: [`Client::wait`] for
    /// [`EngineState::Running`].
    pub async fn create_with(&self, request: &CreateRequest) -> Result<String, ClientError> {
        let mut body = json!({"name": request.name, "engine_type": "Spark",
                              "version": request.version, "configs": request.configs});
        if let Some(minutes) = request.idle_timeout_minutes {
            body["idle_timeout_minutes"] = json!(minutes);
        }
        let created: Created = self.call_some(Method::POST, "/engines", Some(body)).await?;
        Ok(created.id)
    }

    /// [`Client::create_with`], as a handle on the new engine.
    pub async fn create_engine(
        &self,
        request: &CreateRequest,
    ) -> Result<EngineHandle, ClientError> {
        let id = self.create_with(request).await?;
        Ok(self.engine(&id))
    }

    /// The engine, as the server shows it now.
    pub async fn get(&self, id: &str) -> Result<Engine, ClientError> {
        self.call_some(Method::GET, &Self::engine_path(id, ""), None)
            .await
    }

    /// A page of engines in `state` (any if `None`), at most `limit`, after `cursor`.
    pub async fn list(
        &self,
        state: Option<EngineState>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<EnginePage, ClientError> {
        self.list_with(&ListRequest {
            state,
            limit,
            cursor: cursor.map(str::to_owned),
            owner: None,
        })
        .await
    }

    /// A page of engines: the caller's own, or (for an admin) everyone's or one owner's.
    pub async fn list_with(&self, request: &ListRequest) -> Result<EnginePage, ClientError> {
        let mut query = Vec::new();
        if let Some(state) = request.state {
            query.push(("state", state.to_string()));
        }
        if let Some(owner) = &request.owner {
            query.push(("owner", owner.clone()));
        }
        if let Some(limit) = request.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &request.cursor {
            query.push(("cursor", cursor.clone()));
        }
        self.call_some(Method::GET, &with_query("/engines", &query), None)
            .await
    }

    /// Every engine the request selects, page after page from `request.cursor` (pages of
    /// `request.limit`) to the last.
    pub async fn list_all(&self, request: &ListRequest) -> Result<Vec<Engine>, ClientError> {
        let mut request = request.clone();
        let mut engines = Vec::new();
        loop {
            let page = self.list_with(&request).await?;
            engines.extend(page.engines);
            match page.next_cursor {
                Some(cursor) if request.cursor.as_deref() != Some(cursor.as_str()) => {
                    request.cursor = Some(cursor)
                }
                _ => return Ok(engines),
            }
        }
    }

    /// Asks the engine to stop (its configuration is kept for a restart); the engine as the
    /// request left it.
    pub async fn stop(&self, id: &str) -> Result<Engine, ClientError> {
        self.call_some(Method::POST, &Self::engine_path(id, "/stop"), None)
            .await
    }

    /// Restarts a stopped engine with the same configuration (or cancels a pending stop).
    pub async fn restart(&self, id: &str) -> Result<Engine, ClientError> {
        self.call_some(Method::POST, &Self::engine_path(id, "/restart"), None)
            .await
    }

    /// Deletes a stopped (or failed) engine.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, &Self::engine_path(id, ""), None)
            .await
            .map(|_| ())
    }

    /// The engine's driver log: live while it runs, else the one kept when it stopped.
    pub async fn logs(&self, id: &str) -> Result<Logs, ClientError> {
        self.call_some(Method::GET, &Self::engine_path(id, "/logs"), None)
            .await
    }

    /// A page of the engine's history.
    pub async fn events_page(
        &self,
        id: &str,
        request: &EventsRequest,
    ) -> Result<Events, ClientError> {
        let mut query = Vec::new();
        if !request.types.is_empty() {
            query.push(("type", request.types.join(",")));
        }
        if !request.causes.is_empty() {
            query.push(("cause", request.causes.join(",")));
        }
        if let Some(limit) = request.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &request.cursor {
            query.push(("cursor", cursor.clone()));
        }
        let path = with_query(&Self::engine_path(id, "/events"), &query);
        self.call_some(Method::GET, &path, None).await
    }

    /// The engine's whole history, oldest first (every page).
    pub async fn events(&self, id: &str) -> Result<Vec<EngineEvent>, ClientError> {
        self.events_with(id, &EventsRequest::default()).await
    }

    /// Every event of the engine's history the request selects, oldest first, page after page
    /// from `request.cursor` to the last.
    pub async fn events_with(
        &self,
        id: &str,
        request: &EventsRequest,
    ) -> Result<Vec<EngineEvent>, ClientError> {
        let mut request = request.clone();
        let mut events = Vec::new();
        loop {
            let page = self.events_page(id, &request).await?;
            events.extend(page.events);
            match page.next_cursor {
                Some(cursor) if request.cursor.as_deref() != Some(cursor.as_str()) => {
                    request.cursor = Some(cursor)
                }
                _ => return Ok(events),
            }
        }
    }

    /// The Spark versions the server offers.
    pub async fn versions(&self) -> Result<Vec<String>, ClientError> {
        #[derive(Deserialize)]
        struct Versions {
            versions: Vec<String>,
        }
        let versions: Versions = self.call_some(Method::GET, "/versions", None).await?;
        Ok(versions.versions)
    }

    /// Polls the engine until it is in `wanted`, calling `progress` at each state it passes;
    /// the engine then. An engine that lands in an error state (unless `ErrorClean` is
    /// awaited), or settles while `Running` is awaited, is an [`ClientError::EngineFailed`];
    /// one still elsewhere after `timeout` a [`ClientError::Timeout`].
    pub async fn wait(
        &self,
        id: &str,
        wanted: EngineState,
        timeout: Duration,
        mut progress: impl FnMut(&Engine),
    ) -> Result<Engine, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let engine = self.get(id).await?;
            if last != Some(engine.state) {
                progress(&engine);
                last = Some(engine.state);
            }
            if engine.state == wanted {
                return Ok(engine);
            }
            let failed = engine.state.is_error() && wanted != EngineState::ErrorClean;
            if failed || (engine.state.is_settled() && wanted == EngineState::Running) {
                return Err(ClientError::EngineFailed {
                    id: id.to_owned(),
                    state: engine.state,
                    message: engine.error.unwrap_or_else(|| "no message".into()),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    id: id.to_owned(),
                    wanted,
                    state: engine.state,
                    timeout,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The Spark Connect connection string of a running engine: its `endpoint` (the proxy's
    /// address and the engine's id), plus `;token=…` when this client has a credential, so
    /// that the proxy lets its owner in. It holds the credential: mind where it goes.
    pub fn connection_string(&self, endpoint: &str) -> Result<SecretString, ClientError> {
        Ok(SecretString::from(match &self.token {
            Some(token) if token.expose_secret().contains(';') => {
                return Err(ClientError::UnusableToken)
            }
            Some(token) => with_parameter(endpoint, &format!("token={}", token.expose_secret())),
            None => endpoint.to_owned(),
        }))
    }

    /// The connection string ([`Client::connection_string`]) of engine `id`, which must be
    /// running.
    pub async fn engine_connection_string(&self, id: &str) -> Result<SecretString, ClientError> {
        let engine = self.get(id).await?;
        match (engine.state, &engine.endpoint) {
            (EngineState::Running, Some(endpoint)) => self.connection_string(endpoint),
            (state, _) => Err(ClientError::NotRunning {
                id: id.to_owned(),
                state,
            }),
        }
    }

    /// A Spark Connect session on engine `id`, which must be running, through the proxy with
    /// this client's credential (see [`Client::connection_string`]).
    #[cfg(feature = "spark")]
    pub async fn session(&self, id: &str) -> Result<SparkSession, ClientError> {
        let connection = self.engine_connection_string(id).await?;
        if !cfg!(feature = "spark-tls") && wants_tls(connection.expose_secret()) {
            // spark-connect-rs would panic.
            return Err(ClientError::TlsUnsupported);
        }
        let session = spark_connect_rs::SparkSessionBuilder::remote(connection.expose_secret())
            .build()
            .await?;
        Ok(session)
    }
}

/// One engine of a [`Client`]'s server: [`Client`]'s per-engine calls without repeating the id.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    client: Client,
    id: String,
}

impl EngineHandle {
    /// The engine's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client this handle calls through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// See [`Client::get`].
    pub async fn get(&self) -> Result<Engine, ClientError> {
        self.client.get(&self.id).await
    }

    /// See [`Client::stop`].
    pub async fn stop(&self) -> Result<Engine, ClientError> {
        self.client.stop(&self.id).await
    }

    /// See [`Client::restart`].
    pub async fn restart(&self) -> Result<Engine, ClientError> {
        self.client.restart(&self.id).await
    }

    /// See [`Client::delete`].
    pub async fn delete(&self) -> Result<(), ClientError> {
        self.client.delete(&self.id).await
    }

    /// See [`Client::logs`].
    pub async fn logs(&self) -> Result<Logs, ClientError> {
        self.client.logs(&self.id).await
    }

    /// See [`Client::events`].
    pub async fn events(&self) -> Result<Vec<EngineEvent>, ClientError> {
        self.client.events(&self.id).await
    }

    /// [`Client::wait`] without progress reports.
    pub async fn wait(
        &self,
        wanted: EngineState,
        timeout: Duration,
    ) -> Result<Engine, ClientError> {
        self.client.wait(&self.id, wanted, timeout, |_| {}).await
    }

    /// See [`Client::wait`].
    pub async fn wait_with(
        &self,
        wanted: EngineState,
        timeout: Duration,
        progress: impl FnMut(&Engine),
    ) -> Result<Engine, ClientError> {
        self.client.wait(&self.id, wanted, timeout, progress).await
    }

    /// See [`Client::engine_connection_string`].
    pub async fn connection_string(&self) -> Result<SecretString, ClientError> {
        self.client.engine_connection_string(&self.id).await
    }

    /// See [`Client::session`].
    #[cfg(feature = "spark")]
    pub async fn session(&self) -> Result<SparkSession, ClientError> {
        self.client.session(&self.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_are_encoded() {
        assert_eq!(
            Client::engine_path("a/b?c", "/logs"),
            "/engines/a%2Fb%3Fc/logs"
        );
        assert_eq!(
            with_query(
                "/engines",
                &[("owner", "a b&c".into()), ("limit", "5".into())]
            ),
            "/engines?owner=a%20b%26c&limit=5"
        );
        assert_eq!(with_query("/engines", &[]), "/engines");
    }

    #[test]
    fn tls_is_asked_by_use_ssl_true_only() {
        assert!(wants_tls("sc://h:443/;use_ssl=true;x-rucat-engine=1"));
        assert!(wants_tls("sc://h:443/;x-rucat-engine=1;USE_SSL=True"));
        assert!(!wants_tls("sc://h:443/;use_ssl=false;x-rucat-engine=1"));
        assert!(!wants_tls(
            "sc://h:15002/;x-rucat-engine=1;token=use_ssl=true"
        ));
        assert!(!wants_tls("sc://h:15002"));
    }

    #[test]
    fn the_connection_string_carries_the_token_when_there_is_one() {
        let endpoint = "sc://localhost:15002/;x-rucat-engine=0123";
        let anonymous = Client::new("http://127.0.0.1:3000/", None);
        assert_eq!(anonymous.server(), "http://127.0.0.1:3000");
        let plain = anonymous.connection_string(endpoint).expect("a string");
        assert_eq!(plain.expose_secret(), endpoint);
        let alice = Client::new("http://x", Some(SecretString::from("rucat_abc")));
        let string = alice.connection_string(endpoint).expect("a string");
        assert_eq!(
            string.expose_secret(),
            "sc://localhost:15002/;x-rucat-engine=0123;token=rucat_abc"
        );
        let bare = alice.connection_string("sc://h:1").expect("a string");
        assert_eq!(bare.expose_secret(), "sc://h:1/;token=rucat_abc");
        let odd = Client::new("http://x", Some(SecretString::from("a;b")));
        assert!(matches!(
            odd.connection_string(endpoint),
            Err(ClientError::UnusableToken)
        ));
    }
}
