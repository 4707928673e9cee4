//! A typed client of the REST API, used by the command line and by tests.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::engine::{Engine, EngineEvent, EngineState};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("cannot reach the Rucat server at {server}: {source}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from the Rucat server: {0}")]
    Decode(String),
    #[error("engine {id} did not reach {wanted} within {timeout:?}; it is {state}")]
    Timeout {
        id: String,
        wanted: EngineState,
        state: EngineState,
        timeout: Duration,
    },
    #[error("engine {id} failed: it is {state}: {message}")]
    EngineFailed {
        id: String,
        state: EngineState,
        message: String,
    },
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

#[derive(Debug, Clone, Deserialize)]
pub struct Created {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnginePage {
    pub engines: Vec<Engine>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Logs {
    pub source: String,
    pub log: String,
}

#[derive(Debug, Deserialize)]
struct Events {
    events: Vec<EngineEvent>,
}

/// A new engine.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub version: String,
    pub configs: BTreeMap<String, String>,
    /// Minutes without a Spark Connect call before it is stopped (0: never; `None`: the
    /// server's default).
    pub idle_timeout_minutes: Option<u32>,
}

/// What a listing asks for; every field may be left out.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub state: Option<EngineState>,
    /// Only this owner's engines (an admin's filter; a user sees only their own anyway).
    pub owner: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
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

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<SecretString>,
}

impl Client {
    pub fn new(server: &str, token: Option<SecretString>) -> Self {
        Client {
            http: reqwest::Client::new(),
            server: server.trim_end_matches('/').to_owned(),
            token,
        }
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
            .timeout(Duration::from_secs(30));
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
            .map_err(|error| ClientError::Decode(error.to_string()))
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

    /// Asks for a Spark engine; its id.
    pub async fn create_with(&self, request: &CreateRequest) -> Result<String, ClientError> {
        let mut body = json!({"name": request.name, "engine_type": "Spark",
                              "version": request.version, "configs": request.configs});
        if let Some(minutes) = request.idle_timeout_minutes {
            body["idle_timeout_minutes"] = json!(minutes);
        }
        let created: Created = self.call_some(Method::POST, "/engines", Some(body)).await?;
        Ok(created.id)
    }

    pub async fn get(&self, id: &str) -> Result<Engine, ClientError> {
        self.call_some(Method::GET, &format!("/engines/{id}"), None)
            .await
    }

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
        let path = if query.is_empty() {
            "/engines".to_owned()
        } else {
            let encoded: Vec<String> = query
                .iter()
                .map(|(key, value)| format!("{key}={}", percent_encode(value)))
                .collect();
            format!("/engines?{}", encoded.join("&"))
        };
        self.call_some(Method::GET, &path, None).await
    }

    pub async fn stop(&self, id: &str) -> Result<Engine, ClientError> {
        self.call_some(Method::POST, &format!("/engines/{id}/stop"), None)
            .await
    }

    pub async fn restart(&self, id: &str) -> Result<Engine, ClientError> {
        self.call_some(Method::POST, &format!("/engines/{id}/restart"), None)
            .await
    }

    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/engines/{id}"), None)
            .await
            .map(|_| ())
    }

    pub async fn logs(&self, id: &str) -> Result<Logs, ClientError> {
        self.call_some(Method::GET, &format!("/engines/{id}/logs"), None)
            .await
    }

    pub async fn events(&self, id: &str) -> Result<Vec<EngineEvent>, ClientError> {
        let events: Events = self
            .call_some(Method::GET, &format!("/engines/{id}/events"), None)
            .await?;
        Ok(events.events)
    }

    /// Polls the engine until it is in `wanted`, calling `progress` at each state it passes.
    /// An engine that lands in an error state, or settles elsewhere, is an error.
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
            let failed = matches!(
                engine.state,
                EngineState::ErrorWaitToClean
                    | EngineState::ErrorTriggerClean
                    | EngineState::ErrorCleanInProgress
                    | EngineState::ErrorClean
            ) && !matches!(wanted, EngineState::ErrorClean);
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
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
