//! Where engines run. A platform creates and deletes an engine's resource (a process, a pod),
//! tells what state it is in, and gives its driver log.

mod flock;
pub mod kubernetes;
pub mod local;
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

#[async_trait]
pub trait Platform: Send + Sync + 'static {
    /// Creates the engine's resource. Idempotent: a resource left by an earlier attempt for the
    /// same engine is adopted, never duplicated.
    async fn create(&self, engine: &Engine) -> Result<(), PlatformError>;

    /// Deletes the engine's resource and waits until it is gone. Deleting nothing succeeds.
    async fn delete(&self, id: &EngineId) -> Result<(), PlatformError>;

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError>;

    /// The tail (at most `max_bytes`) of the engine's driver log, if there is one.
    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError>;

    /// The engines that have something on this platform (running or left behind).
    async fn resources(&self) -> Result<Vec<EngineId>, PlatformError>;

    /// Removes whatever is left of an engine that no longer exists (after `delete`).
    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError>;
}
