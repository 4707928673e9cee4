//! The simulated platform: engines that run nowhere, with every create and delete written down.
//!
//! It lets an operator try a deployment (servers, monitors, a shared store) without Spark, and
//! lets tests drive hundreds of engines through many monitor processes and then check what the
//! platform saw. Everything lives under `<data dir>/simulated/`, shared by every process that
//! uses that data directory:
//!
//! | file | what |
//! | --- | --- |
//! | `live/<engine id>` | exists while the engine's resource exists; holds its creation time (ms) |
//! | `journal` | one line per platform call that changed or found something: `<ms> <pid> <create\|adopt\|delete> <engine id>` |
//! | `lock` | `flock`ed around every create and delete, so that the journal and `live/` agree |
//!
//! A resource is `Starting` until `start_delay` has passed since its creation, then `Running` at
//! the endpoint `sc://simulated:15002` (nothing listens there). `create` returns only after
//! `create_delay`, as a slow platform API would, with the resource already made: a monitor killed
//! meanwhile leaves a resource that the next attempt must adopt, not duplicate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::io::AsyncWriteExt;

use super::flock::FileLock;
use super::{Platform, PlatformError, ResourceState};
use crate::engine::{Engine, EngineId};

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
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            versions: vec!["4.3.0".to_owned()],
            create_delay: Duration::ZERO,
            start_delay: Duration::ZERO,
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

    pub fn versions(&self) -> &[String] {
        &self.config.versions
    }

    fn live(&self, id: &str) -> PathBuf {
        self.dir.join(LIVE_DIR).join(id)
    }

    async fn lock(&self) -> Result<FileLock, PlatformError> {
        FileLock::acquire(&self.dir.join(LOCK), "the simulated platform", LOCK_TIMEOUT).await
    }

    async fn write_down(&self, event: JournalEvent, id: &EngineId) -> Result<(), PlatformError> {
        let line = format!(
            "{} {} {} {id}\n",
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
                let bad = || PlatformError::Inspect(format!("malformed journal line {line:?}"));
                let mut fields = line.split(' ');
                let time_ms = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
                let pid = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
                let event = match fields.next() {
                    Some("create") => JournalEvent::Create,
                    Some("adopt") => JournalEvent::Adopt,
                    Some("delete") => JournalEvent::Delete,
                    _ => return Err(bad()),
                };
                let engine = fields.next().ok_or_else(bad)?.to_owned();
                Ok(JournalEntry {
                    time_ms,
                    pid,
                    event,
                    engine,
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
    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        {
            let _lock = self.lock().await?;
            let live = self.live(engine.id.as_str());
            if tokio::fs::try_exists(&live)
                .await
                .map_err(PlatformError::io(format!("reading {}", live.display())))?
            {
                self.write_down(JournalEvent::Adopt, &engine.id).await?;
            } else {
                tokio::fs::write(&live, Utc::now().timestamp_millis().to_string())
                    .await
                    .map_err(PlatformError::io(format!("writing {}", live.display())))?;
                self.write_down(JournalEvent::Create, &engine.id).await?;
            }
        }
        tokio::time::sleep(self.config.create_delay).await;
        Ok(())
    }

    async fn delete(&self, id: &EngineId) -> Result<(), PlatformError> {
        let _lock = self.lock().await?;
        let live = self.live(id.as_str());
        match tokio::fs::remove_file(&live).await {
            Ok(()) => self.write_down(JournalEvent::Delete, id).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PlatformError::io(format!("removing {}", live.display()))(e)),
        }
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        let live = self.live(engine.id.as_str());
        let created = match tokio::fs::read_to_string(&live).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ResourceState::Gone),
            Err(e) => return Err(PlatformError::io(format!("reading {}", live.display()))(e)),
        };
        // A file caught half-written reads as just created.
        let created: i64 = created
            .trim()
            .parse()
            .unwrap_or_else(|_| Utc::now().timestamp_millis());
        let age = Utc::now().timestamp_millis().saturating_sub(created);
        if u128::try_from(age).unwrap_or(0) >= self.config.start_delay.as_millis() {
            Ok(ResourceState::Running {
                endpoint: ENDPOINT.to_owned(),
            })
        } else {
            Ok(ResourceState::Starting)
        }
    }

    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError> {
        let live = self.live(id.as_str());
        let exists = tokio::fs::try_exists(&live)
            .await
            .map_err(PlatformError::io(format!("reading {}", live.display())))?;
        let text = format!("simulated engine {id}: no driver runs, so there is no driver log\n");
        Ok(exists.then(|| crate::store::tail(&text, max_bytes).to_owned()))
    }

    async fn resources(&self) -> Result<Vec<EngineId>, PlatformError> {
        let ids = list_live(&self.dir)?;
        Ok(ids.iter().filter_map(|id| EngineId::parse(id)).collect())
    }

    /// Nothing but the resource is kept, so forgetting an engine deletes it.
    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        self.delete(id).await
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
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            other.state(&engine).await.expect("state"),
            ResourceState::Running {
                endpoint: ENDPOINT.to_owned()
            }
        );
        assert_eq!(
            other.resources().await.expect("resources"),
            vec![engine.id.clone()]
        );
        other.delete(&engine.id).await.expect("delete");
        platform.delete(&engine.id).await.expect("delete nothing");
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
