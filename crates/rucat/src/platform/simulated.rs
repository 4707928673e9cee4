//! The simulated platform: engines that run nowhere, with every create and delete written down.
//!
//! It lets an operator try a deployment (servers, monitors, a shared store) without Spark, and
//! lets tests drive hundreds of engines through many monitor processes and then check what the
//! platform saw. Everything lives under `<data dir>/simulated/`, shared by every process that
//! uses that data directory:
//!
//! | file | what |
//! | --- | --- |
//! | `live/<engine id>` | exists while the engine's resource exists; holds its creation time (ms) and the engine generation that made it |
//! | `journal` | one line per platform call that changed or found something: `<ms> <pid> <create\|adopt\|delete> <engine id> <generation>` |
//! | `lock` | `flock`ed around every create and delete, so that the journal and `live/` agree |
//!
//! A resource is `Starting` until `start_delay` has passed since its creation, then `Running` at
//! the endpoint `sc://simulated:15002` (nothing listens there). `create` returns only after
//! `create_delay`, as a slow platform API would, with the resource already made: a monitor killed
//! meanwhile leaves a resource that the next attempt must adopt, not duplicate. `delete` waits
//! `delete_delay` before it acts (a monitor paused meanwhile acts late), and every call may wait
//! a random `latency` first.

mod settings;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::io::AsyncWriteExt;

use super::flock::FileLock;
use super::{Platform, PlatformError, ResourceState};
use crate::engine::{Engine, EngineId};
pub use settings::SimulatedFile;

/// The endpoint a simulated engine reports.
pub const ENDPOINT: &str = "sc://simulated:15002";

const DIR: &str = "simulated";
const LIVE_DIR: &str = "live";
const JOURNAL: &str = "journal";
const LOCK: &str = "lock";
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// How the simulated platform behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedConfig {
    /// The versions engines can ask for.
    pub versions: Vec<String>,
    /// How long `create` takes after making the resource.
    pub create_delay: Duration,
    /// How long a resource is `Starting` before it is `Running`.
    pub start_delay: Duration,
    /// How long `delete` waits before it acts.
    pub delete_delay: Duration,
    /// Every call first waits a random time in this range (a slow platform API).
    pub latency: (Duration, Duration),
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            versions: vec!["4.3.0".to_owned()],
            create_delay: Duration::ZERO,
            start_delay: Duration::ZERO,
            delete_delay: Duration::ZERO,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }
}

/// What the journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalEvent {
    /// A resource was made.
    Create,
    /// A create found the resource an earlier attempt made, and took it over.
    Adopt,
    /// A resource was deleted.
    Delete,
}

impl JournalEvent {
    fn as_str(self) -> &'static str {
        match self {
            JournalEvent::Create => "create",
            JournalEvent::Adopt => "adopt",
            JournalEvent::Delete => "delete",
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub time_ms: i64,
    pub pid: u32,
    pub event: JournalEvent,
    pub engine: String,
    /// The engine generation of the resource the line is about.
    pub generation: u64,
}

impl JournalEntry {
    /// One journal line, `TIME_MS PID EVENT ENGINE [GENERATION]` (without a generation: 0, as
    /// written before generations were); `None` when it is malformed.
    pub fn parse(line: &str) -> Option<JournalEntry> {
        let mut fields = line.trim_end().split(' ');
        let time_ms = fields.next()?.parse().ok()?;
        let pid = fields.next()?.parse().ok()?;
        let event = match fields.next()? {
            "create" => JournalEvent::Create,
            "adopt" => JournalEvent::Adopt,
            "delete" => JournalEvent::Delete,
            _ => return None,
        };
        let engine = fields.next()?.to_owned();
        let generation = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        Some(JournalEntry {
            time_ms,
            pid,
            event,
            engine,
            generation,
        })
    }
}

pub struct SimulatedPlatform {
    dir: PathBuf,
    config: SimulatedConfig,
}

impl SimulatedPlatform {
    pub fn new(data_dir: &Path, config: SimulatedConfig) -> Result<Self, PlatformError> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(dir.join(LIVE_DIR))
            .map_err(PlatformError::io(format!("creating {}", dir.display())))?;
        Ok(SimulatedPlatform { dir, config })
    }

    fn live(&self, id: &str) -> PathBuf {
        self.dir.join(LIVE_DIR).join(id)
    }

    async fn lock(&self) -> Result<FileLock, PlatformError> {
        FileLock::acquire(&self.dir.join(LOCK), "the simulated platform", LOCK_TIMEOUT).await
    }

    /// Waits as a slow platform API would (the configured latency).
    async fn latency(&self) {
        let (min, max) = self.config.latency;
        if max.is_zero() {
            return;
        }
        let spread = max.saturating_sub(min).as_millis() as u64;
        let random = uuid::Uuid::new_v4().as_u128() as u64;
        let extra = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        tokio::time::sleep(min + Duration::from_millis(extra)).await;
    }

    /// The generation of the engine's live resource, if there is one.
    async fn live_generation(&self, id: &EngineId) -> Result<Option<(i64, u64)>, PlatformError> {
        let live = self.live(id.as_str());
        match tokio::fs::read_to_string(&live).await {
            Ok(text) => {
                // "<created ms> <generation>"; a file caught half-written reads as just
                // created, generation 0.
                let mut fields = text.split_whitespace();
                let created = fields
                    .next()
                    .and_then(|f| f.parse().ok())
                    .unwrap_or_else(|| Utc::now().timestamp_millis());
                let generation = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
                Ok(Some((created, generation)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PlatformError::io(format!("reading {}", live.display()))(e)),
        }
    }

    async fn write_down(
        &self,
        event: JournalEvent,
        id: &EngineId,
        generation: u64,
    ) -> Result<(), PlatformError> {
        let line = format!(
            "{} {} {} {id} {generation}\n",
            Utc::now().timestamp_millis(),
            std::process::id(),
            event.as_str()
        );
        let path = self.dir.join(JOURNAL);
        let mut journal = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(PlatformError::io(format!("opening {}", path.display())))?;
        journal
            .write_all(line.as_bytes())
            .await
            .map_err(PlatformError::io(format!("writing {}", path.display())))?;
        journal
            .sync_data()
            .await
            .map_err(PlatformError::io(format!("syncing {}", path.display())))
    }

    /// Every journal line so far, oldest first.
    pub fn journal(data_dir: &Path) -> Result<Vec<JournalEntry>, PlatformError> {
        let path = data_dir.join(DIR).join(JOURNAL);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(PlatformError::io(format!("reading {}", path.display()))(e)),
        };
        text.lines()
            .map(|line| {
                JournalEntry::parse(line).ok_or_else(|| {
                    PlatformError::Inspect(format!("malformed journal line {line:?}"))
                })
            })
            .collect()
    }

    /// The engines whose resources exist now.
    pub fn live_resources(data_dir: &Path) -> Result<Vec<String>, PlatformError> {
        list_live(&data_dir.join(DIR))
    }
}

fn list_live(dir: &Path) -> Result<Vec<String>, PlatformError> {
    {
        let dir = dir.join(LIVE_DIR);
        let entries = std::fs::read_dir(&dir)
            .map_err(PlatformError::io(format!("listing {}", dir.display())))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(PlatformError::io(format!("listing {}", dir.display())))?;
            if let Some(name) = entry.file_name().to_str() {
                ids.push(name.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[async_trait]
impl Platform for SimulatedPlatform {
    fn versions(&self) -> &[String] {
        &self.config.versions
    }

    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        self.latency().await;
        {
            let _lock = self.lock().await?;
            let live = self.live(engine.id.as_str());
            match self.live_generation(&engine.id).await? {
                Some((_, generation)) if generation == engine.generation => {
                    self.write_down(JournalEvent::Adopt, &engine.id, generation)
                        .await?;
                }
                Some((_, generation)) if generation > engine.generation => {
                    return Err(PlatformError::Create(format!(
                        "a later start of engine {} exists (generation {generation} after {}): this one is stale",
                        engine.id, engine.generation
                    )));
                }
                earlier => {
                    if let Some((_, generation)) = earlier {
                        // What an earlier start left goes first.
                        self.write_down(JournalEvent::Delete, &engine.id, generation)
                            .await?;
                    }
                    let content =
                        format!("{} {}", Utc::now().timestamp_millis(), engine.generation);
                    tokio::fs::write(&live, content)
                        .await
                        .map_err(PlatformError::io(format!("writing {}", live.display())))?;
                    self.write_down(JournalEvent::Create, &engine.id, engine.generation)
                        .await?;
                }
            }
        }
        tokio::time::sleep(self.config.create_delay).await;
        Ok(())
    }

    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        _force: bool,
    ) -> Result<(), PlatformError> {
        self.latency().await;
        tokio::time::sleep(self.config.delete_delay).await;
        let _lock = self.lock().await?;
        // Looked at only now: a delete that comes late finds a later start's resource, and
        // leaves it.
        let Some((_, live_generation)) = self.live_generation(id).await? else {
            return Ok(());
        };
        if live_generation > generation {
            return Ok(());
        }
        let live = self.live(id.as_str());
        match tokio::fs::remove_file(&live).await {
            Ok(()) => {
                self.write_down(JournalEvent::Delete, id, live_generation)
                    .await
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PlatformError::io(format!("removing {}", live.display()))(e)),
        }
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        self.latency().await;
        let Some((created, generation)) = self.live_generation(&engine.id).await? else {
            return Ok(ResourceState::Gone);
        };
        if generation > engine.generation {
            return Ok(ResourceState::Gone);
        }
        let age = Utc::now().timestamp_millis().saturating_sub(created);
        if u128::try_from(age).unwrap_or(0) >= self.config.start_delay.as_millis() {
            Ok(ResourceState::Running {
                endpoint: ENDPOINT.to_owned(),
            })
        } else {
            Ok(ResourceState::Starting)
        }
    }

    /// Nothing serves a simulated engine: it is taken to answer.
    async fn probe(&self, _engine: &Engine, _endpoint: &str) -> Result<(), String> {
        self.latency().await;
        Ok(())
    }

    /// Nor runs a query: a warm engine's first one is taken to succeed.
    async fn warm_up(&self, _engine: &Engine, _endpoint: &str) -> Result<(), String> {
        self.latency().await;
        Ok(())
    }

    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError> {
        let live = self.live(id.as_str());
        let exists = tokio::fs::try_exists(&live)
            .await
            .map_err(PlatformError::io(format!("reading {}", live.display())))?;
        let text = format!("simulated engine {id}: no driver runs, so there is no driver log\n");
        Ok(exists.then(|| crate::text::tail(&text, max_bytes).to_owned()))
    }

    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError> {
        let mut out = Vec::new();
        for id in list_live(&self.dir)?
            .iter()
            .filter_map(|id| EngineId::parse(id))
        {
            if let Some((_, generation)) = self.live_generation(&id).await? {
                out.push((id, generation));
            }
        }
        Ok(out)
    }

    /// Nothing but the resource is kept, so forgetting an engine deletes it.
    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        self.delete(id, u64::MAX, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::sample_engine;

    #[tokio::test]
    async fn creates_are_adopted_and_journaled() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let config = SimulatedConfig {
            start_delay: Duration::from_millis(200),
            ..SimulatedConfig::default()
        };
        let platform = SimulatedPlatform::new(dir.path(), config.clone()).expect("platform");
        // A second process's view of the same data directory.
        let other = SimulatedPlatform::new(dir.path(), config).expect("platform");
        let engine = sample_engine("sim");

        assert_eq!(
            platform.state(&engine).await.expect("state"),
            ResourceState::Gone
        );
        platform.create(&engine).await.expect("create");
        assert_eq!(
            other.state(&engine).await.expect("state"),
            ResourceState::Starting
        );
        other.create(&engine).await.expect("create again");
        // Starting until its start delay has passed, then Running.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while other.state(&engine).await.expect("state") == ResourceState::Starting {
            assert!(std::time::Instant::now() < deadline, "never Running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            other.state(&engine).await.expect("state"),
            ResourceState::Running {
                endpoint: ENDPOINT.to_owned()
            }
        );
        assert_eq!(
            other.resources().await.expect("resources"),
            vec![(engine.id.clone(), engine.generation)]
        );
        other
            .delete(&engine.id, engine.generation, false)
            .await
            .expect("delete");
        platform
            .delete(&engine.id, engine.generation, false)
            .await
            .expect("delete nothing");
        assert_eq!(
            platform.state(&engine).await.expect("state"),
            ResourceState::Gone
        );

        let events: Vec<JournalEvent> = SimulatedPlatform::journal(dir.path())
            .expect("journal")
            .into_iter()
            .map(|entry| {
                assert_eq!(entry.engine, engine.id.as_str());
                assert_eq!(entry.pid, std::process::id());
                entry.event
            })
            .collect();
        assert_eq!(
            events,
            [
                JournalEvent::Create,
                JournalEvent::Adopt,
                JournalEvent::Delete
            ]
        );
    }
}
