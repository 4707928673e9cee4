//! An in-memory platform double, for tests of the logic around a platform (the monitor), with
//! faults that a test injects: creation fails or hangs, a resource dies or will not go, an
//! engine stops answering, calls about some engines fail, the orphan scan's listing hangs.
//!
//! Test support: built only with the crate's `testing` feature.

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
    /// Deletes do nothing (a resource that will not go, even killed).
    stuck_deletes: bool,
    /// Engines whose Spark Connect check fails (a hung engine).
    unhealthy: std::collections::HashSet<EngineId>,
    polls_until_ready: u32,
    creates: Vec<EngineId>,
    deletes: Vec<EngineId>,
    /// Every platform call, per engine.
    calls: HashMap<EngineId, u32>,
    /// Deletes asked with `force`.
    forced: Vec<EngineId>,
    /// Name prefixes whose engines' creates and deletes fail, with the message.
    refused_names: Vec<(String, String)>,
    /// Name prefixes whose engines' state cannot be read, with the message.
    unreadable_names: Vec<(String, String)>,
    /// The name of every engine a create was asked for (deletes name only the id).
    names: HashMap<EngineId, String>,
    /// `resources` never returns (a platform API that hangs the orphan scan).
    hang_resources: bool,
}

impl Inner {
    /// The message of the first rule in `rules` whose prefix the engine's name has.
    fn failing(&self, rules: &[(String, String)], id: &EngineId) -> Option<String> {
        let name = self.names.get(id)?;
        rules
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, message)| message.clone())
    }
}

#[derive(Debug)]
struct Resource {
    generation: u64,
    polls_left: u32,
    failed: Option<String>,
}

/// The Spark version the memory platform offers.
pub const VERSION: &str = "4.3.0";

/// Resources live in a map; every create and delete is recorded.
#[derive(Debug, Clone)]
pub struct MemoryPlatform {
    inner: Arc<Mutex<Inner>>,
    /// The versions it offers: [`VERSION`].
    versions: Vec<String>,
}

impl Default for MemoryPlatform {
    fn default() -> Self {
        MemoryPlatform {
            inner: Arc::default(),
            versions: vec![VERSION.to_owned()],
        }
    }
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

    /// Deletes from now on remove nothing (`false` heals it).
    pub fn stuck_deletes(&self, stuck: bool) {
        self.lock().stuck_deletes = stuck;
    }

    /// The engine's Spark Connect check fails from now on (`false` heals it), while its
    /// resource looks alive.
    pub fn set_unhealthy(&self, id: &EngineId, unhealthy: bool) {
        let mut inner = self.lock();
        if unhealthy {
            inner.unhealthy.insert(id.clone());
        } else {
            inner.unhealthy.remove(id);
        }
    }

    /// From now on, creates and deletes of every engine whose name starts with `prefix` fail
    /// with `message` (an API refusing everything about these engines): their start fails,
    /// and so does removing what it left, so the step is retried rather than the engine
    /// failed.
    pub fn refuse_named(&self, prefix: &str, message: &str) {
        self.lock()
            .refused_names
            .push((prefix.to_owned(), message.to_owned()));
    }

    /// From now on, the state of every engine whose name starts with `prefix` cannot be read
    /// (fails with `message`), while creating it works: its checks fail and are retried.
    pub fn fail_state_named(&self, prefix: &str, message: &str) {
        self.lock()
            .unreadable_names
            .push((prefix.to_owned(), message.to_owned()));
    }

    /// `resources` (the orphan scan's listing) never returns from now on (`false` heals it; a
    /// call already hanging stays hung).
    pub fn hang_resources(&self, hang: bool) {
        self.lock().hang_resources = hang;
    }

    /// How many platform calls (create, delete, state, probe) concerned the engine.
    pub fn calls(&self, id: &EngineId) -> u32 {
        self.lock().calls.get(id).copied().unwrap_or(0)
    }

    /// The engines a delete with `force` was asked for.
    pub fn forced(&self) -> Vec<EngineId> {
        self.lock().forced.clone()
    }

    /// The generation of the engine's resource, if it has one.
    pub fn generation(&self, id: &EngineId) -> Option<u64> {
        self.lock().resources.get(id).map(|r| r.generation)
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
                generation: 0,
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

impl MemoryPlatform {
    fn count(&self, id: &EngineId) {
        *self.lock().calls.entry(id.clone()).or_default() += 1;
    }
}

#[async_trait]
impl Platform for MemoryPlatform {
    fn versions(&self) -> &[String] {
        &self.versions
    }

    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        self.count(&engine.id);
        let refused = {
            let mut inner = self.lock();
            inner
                .names
                .insert(engine.id.clone(), engine.name.to_string());
            inner.failing(&inner.refused_names, &engine.id)
        };
        if let Some(message) = refused {
            return Err(PlatformError::Create(message));
        }
        let hang = self.lock().hang_creates;
        if hang {
            std::future::pending::<()>().await;
        }
        let mut inner = self.lock();
        if let Some(message) = &inner.fail_creates {
            return Err(PlatformError::Create(message.clone()));
        }
        match inner.resources.get(&engine.id).map(|r| r.generation) {
            Some(generation) if generation == engine.generation => return Ok(()),
            Some(generation) if generation > engine.generation => {
                return Err(PlatformError::Create(format!(
                    "a later start of engine {} exists: this one is stale",
                    engine.id
                )))
            }
            _ => {}
        }
        let polls_left = inner.polls_until_ready;
        inner.resources.insert(
            engine.id.clone(),
            Resource {
                generation: engine.generation,
                polls_left,
                failed: None,
            },
        );
        inner.creates.push(engine.id.clone());
        Ok(())
    }

    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError> {
        self.count(id);
        let mut inner = self.lock();
        if let Some(message) = inner.failing(&inner.refused_names, id) {
            return Err(PlatformError::Delete(message));
        }
        if force {
            inner.forced.push(id.clone());
        }
        if inner.stuck_deletes {
            return Ok(());
        }
        if inner
            .resources
            .get(id)
            .is_some_and(|r| r.generation <= generation)
        {
            inner.resources.remove(id);
            inner.deletes.push(id.clone());
        }
        Ok(())
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        self.count(&engine.id);
        let mut inner = self.lock();
        if let Some(message) = inner.failing(&inner.unreadable_names, &engine.id) {
            return Err(PlatformError::Inspect(message));
        }
        let Some(resource) = inner
            .resources
            .get_mut(&engine.id)
            .filter(|r| r.generation <= engine.generation)
        else {
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

    /// A warm engine's first query answers as its probe does.
    async fn warm_up(&self, engine: &Engine, endpoint: &str) -> Result<(), String> {
        self.probe(engine, endpoint).await
    }

    async fn probe(&self, engine: &Engine, _endpoint: &str) -> Result<(), String> {
        self.count(&engine.id);
        if self.lock().unhealthy.contains(&engine.id) {
            return Err("Spark Connect did not answer (a hung engine)".to_owned());
        }
        Ok(())
    }

    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError> {
        let hang = self.lock().hang_resources;
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(self
            .lock()
            .resources
            .iter()
            .map(|(id, r)| (id.clone(), r.generation))
            .collect())
    }

    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        self.delete(id, u64::MAX, true).await
    }
}
