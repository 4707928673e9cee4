//! Where engines run. A platform creates and deletes an engine's resource (a process, a pod),
//! tells what state it is in, and gives its driver log.

mod flock;
pub mod kubernetes;
pub mod local;
#[cfg(feature = "testing")]
pub mod memory;
pub mod simulated;

use async_trait::async_trait;

use crate::engine::{Engine, EngineId};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("failed to create the engine's resource: {0}")]
    Create(String),
    #[error("failed to delete the engine's resource: {0}")]
    Delete(String),
    #[error("failed to read the engine's resource: {0}")]
    Inspect(String),
    #[error("cannot use the platform: {0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl PlatformError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlatformError {
        let what = what.into();
        move |source| PlatformError::Io { what, source }
    }
}

/// The platform's view of an engine's resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceState {
    /// Created, not serving yet.
    Starting,
    /// Clients can connect at `endpoint` (`sc://host:port`).
    Running { endpoint: String },
    /// The resource is in an error state or died; the message says why.
    Failed(String),
    /// There is no resource.
    Gone,
}

/// How long the monitor's Spark Connect request may take.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a warm engine's first query may take.
pub const WARM_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The Spark conf naming Spark Connect's extra gRPC interceptors (Rucat's alone: see the policy).
pub const INTERCEPTOR_CONF: &str = "spark.connect.grpc.interceptor.classes";
/// The interceptor a warm engine authenticates its clients with: it takes the secret the engine
/// starts with from [`HANDOVER_SECRET_ENV`], and a new one when a create takes the engine (see
/// [`crate::engine::REKEY_HEADER`] and `engine-auth/`).
pub const HANDOVER_INTERCEPTOR: &str = "io.rucat.engine.HandoverTokenInterceptor";
/// Where a warm engine's first secret is, instead of Spark's own `SPARK_CONNECT_AUTHENTICATE_TOKEN`.
pub const HANDOVER_SECRET_ENV: &str = "RUCAT_ENGINE_TOKEN";
/// The environment variable through which Spark 4's Connect server takes the pre-shared token
/// it requires of every client.
pub const SECRET_ENV: &str = "SPARK_CONNECT_AUTHENTICATE_TOKEN";

/// How a start of an engine has its Spark Connect server check its clients, on every platform:
/// Spark's own fixed check of [`SECRET_ENV`], or for a warm engine (whose secret is replaced when
/// a create takes it) the handover interceptor with [`HANDOVER_SECRET_ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCheck {
    /// The environment variable that holds the engine's secret.
    pub env: &'static str,
    /// The Spark conf (`KEY=VALUE`) that loads the interceptor; `None` for Spark's own check.
    pub conf: Option<String>,
}

impl TokenCheck {
    pub fn of(engine_is_warm: bool) -> Self {
        if engine_is_warm {
            TokenCheck {
                env: HANDOVER_SECRET_ENV,
                conf: Some(format!("{INTERCEPTOR_CONF}={HANDOVER_INTERCEPTOR}")),
            }
        } else {
            TokenCheck {
                env: SECRET_ENV,
                conf: None,
            }
        }
    }
}

/// The jar that holds [`HANDOVER_INTERCEPTOR`], in a Spark distribution's `jars/` (the setup
/// script builds and installs it; images for warm pools on Kubernetes must hold it too).
pub const HANDOVER_JAR: &str = "rucat-engine-auth.jar";

/// What the REST API reads of a platform: a running engine's driver log. Every [`Platform`]
/// gives it (and is one), so that the API holds this and not the platform's operations.
#[async_trait]
pub trait DriverLogs: Send + Sync + 'static {
    /// The tail (at most `max_bytes`) of the engine's driver log, if there is one.
    async fn driver_log(
        &self,
        id: &EngineId,
        max_bytes: usize,
    ) -> Result<Option<String>, PlatformError>;
}

#[async_trait]
impl<P: Platform> DriverLogs for P {
    async fn driver_log(
        &self,
        id: &EngineId,
        max_bytes: usize,
    ) -> Result<Option<String>, PlatformError> {
        Platform::logs(self, id, max_bytes).await
    }
}

/// Every resource carries the engine generation that made it (the generation of the claim that
/// started it): a delete names the generation it is for and removes only resources of that
/// generation or earlier, never a later one, so that a monitor that overran its claim cannot
/// touch what a later claim started.
#[async_trait]
pub trait Platform: DriverLogs {
    /// The Spark versions engines on this platform can run: the versions users may ask for.
    fn versions(&self) -> &[String];

    /// Creates the engine's resource for its generation (`engine.generation`). Idempotent: a
    /// resource left by an earlier attempt of the same generation is adopted, never
    /// duplicated; one of an earlier generation is removed first.
    async fn create(&self, engine: &Engine) -> Result<(), PlatformError>;

    /// Deletes the engine's resources of `generation` or earlier; with `force`, at once
    /// (SIGKILL, grace period 0). Deleting nothing succeeds. Returns once the deletion is
    /// under way (or done); `state` tells when the resource is gone.
    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError>;

    /// The state of the engine's resource of its generation or earlier (a later generation's is
    /// none of this engine view's business: `Gone`).
    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError>;

    /// Whether Spark Connect serves the engine at `endpoint`: a real request with the engine's
    /// secret (see [`crate::spark_connect`]).
    async fn probe(&self, engine: &Engine, endpoint: &str) -> Result<(), String> {
        crate::spark_connect::probe(endpoint, &engine.id, engine.credentials(), PROBE_TIMEOUT).await
    }

    /// Runs one query on a warm engine serving at `endpoint` before it counts as ready, so that
    /// Spark's first-query costs are not its user's (see [`crate::spark_connect::warm_up`]).
    async fn warm_up(&self, engine: &Engine, endpoint: &str) -> Result<(), String> {
        crate::spark_connect::warm_up(endpoint, &engine.id, engine.credentials(), WARM_UP_TIMEOUT)
            .await
    }

    /// The tail (at most `max_bytes`) of the engine's driver log, if there is one.
    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError>;

    /// The engines that have something on this platform (running or left behind), each with
    /// the generation that made it.
    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError>;

    /// Removes whatever is left of an engine that no longer exists, of any generation.
    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError>;

    /// The engine's resource in words, for a message saying it is stuck.
    async fn stuck(&self, id: &EngineId) -> Result<String, PlatformError> {
        Ok(format!("the resource of engine {id}"))
    }
}
