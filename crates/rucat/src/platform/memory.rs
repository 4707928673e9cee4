//! An in-memory platform double, for tests of the logic around a platform (the monitor), with
//! faults that a test injects: creation fails or hangs, a resource dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Platform, PlatformError, ResourceState};
use crate::engine::{Engine, EngineId};

#[derive(Debug, Default)]
struct Inner {
    resources: HashMap<EngineId, Resource>,
    fail_creates: Option<String>,
    hang_creates: bool,
    polls_until_ready: u32,
    creates: Vec<EngineId>,
    deletes: Vec<EngineId>,
}

#[derive(Debug)]
struct Resource {
    polls_left: u32,
    failed: Option<String>,
}

/// Resources live in a map; every create and delete is recorded.
#[derive(Debug, Clone, Default)]
pub struct MemoryPlatform {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryPlatform {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock has failed already; keep the data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every create from now on fails with `message` (`None` heals it).
    pub fn fail_creates(&self, message: Option<&str>) {
        self.lock().fail_creates = message.map(str::to_owned);
    }

    /// Every create from now on never returns (as if the monitor died mid-operation).
    pub fn hang_creates(&self, hang: bool) {
        self.lock().hang_creates = hang;
    }

    /// A new resource reports `Starting` this many times before `Running`.
    pub fn set_polls_until_ready(&self, polls: u32) {
        self.lock().polls_until_ready = polls;
    }

    /// The resource dies with `message`.
    pub fn kill(&self, id: &EngineId, message: &str) {
        if let Some(resource) = self.lock().resources.get_mut(id) {
            resource.failed = Some(message.to_owned());
        }
    }

    /// A resource appears that no engine asked for (as left by a crash).
    pub fn plant(&self, id: &EngineId) {
        self.lock().resources.insert(
            id.clone(),
            Resource {
                polls_left: 0,
                failed: None,
            },
        );
    }

    /// The engines whose resources were created, one entry per real creation.
    pub fn creates(&self) -> Vec<EngineId> {
        self.lock().creates.clone()
    }

    pub fn deletes(&self) -> Vec<EngineId> {
        self.lock().deletes.clone()
    }

    pub fn exists(&self, id: &EngineId) -> bool {
        self.lock().resources.contains_key(id)
    }

    pub fn endpoint(id: &EngineId) -> String {
        format!("sc://memory.invalid:15002/{id}")
    }
}

#[async_trait]
impl Platform for MemoryPlatform {
    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        let hang = self.lock().hang_creates;
        if hang {
            std::future::pending::<()>().await;
        }
        let mut inner = self.lock();
        if let Some(message) = &inner.fail_creates {
            return Err(PlatformError::Create(message.clone()));
        }
        if inner.resources.contains_key(&engine.id) {
            return Ok(());
        }
        let polls_left = inner.polls_until_ready;
        inner.resources.insert(
            engine.id.clone(),
            Resource {
                polls_left,
                failed: None,
            },
        );
        inner.creates.push(engine.id.clone());
        Ok(())
    }

    async fn delete(&self, id: &EngineId) -> Result<(), PlatformError> {
        let mut inner = self.lock();
        if inner.resources.remove(id).is_some() {
            inner.deletes.push(id.clone());
        }
        Ok(())
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        let mut inner = self.lock();
        let Some(resource) = inner.resources.get_mut(&engine.id) else {
            return Ok(ResourceState::Gone);
        };
        if let Some(message) = &resource.failed {
            return Ok(ResourceState::Failed(message.clone()));
        }
        if resource.polls_left > 0 {
            resource.polls_left -= 1;
            return Ok(ResourceState::Starting);
        }
        Ok(ResourceState::Running {
            endpoint: Self::endpoint(&engine.id),
        })
    }

    async fn logs(
        &self,
        id: &EngineId,
        _max_bytes: usize,
    ) -> Result<Option<String>, PlatformError> {
        Ok(self
            .lock()
            .resources
            .contains_key(id)
            .then(|| format!("driver log of {id}\n")))
    }

    async fn resources(&self) -> Result<Vec<EngineId>, PlatformError> {
        Ok(self.lock().resources.keys().cloned().collect())
    }

    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        self.delete(id).await
    }
}
