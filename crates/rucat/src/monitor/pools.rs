//! Keeping warm pools at their size: a task of each monitor, beside its passes.
//!
//! Each round reads the engines still in a pool (one indexed query) and, for every pool:
//!
//! - removes its engines that ended (`Terminated`, `ErrorClean`): a warm engine that stopped is
//!   not kept;
//! - stops the engines beyond the pool's size, and those that no longer match its configuration
//!   (version or configs changed, or the pool is gone from the configuration), the starting ones
//!   before the serving ones; each stop applies only while the engine is still warm, so a create
//!   that took it meanwhile keeps it;
//! - adds engines up to the size, each insert checking the pool's count in the same transaction,
//!   so that monitors refilling one pool together never overfill it. A pool whose engines fail
//!   (end in `ErrorClean`: the platform refused them, or they died) is refilled with capped
//!   exponential back-off (`retry_initial` doubled per failure in a row, up to `retry_max`),
//!   kept by each monitor, until one of its engines serves again.
//!
//! A round runs when an engine becomes due anywhere (a take wakes the monitors, as does a warm
//! engine's start), and at least every poll interval; without pools configured, every orphan
//! scan interval only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{info, warn};

use super::{Monitor, MonitorError};
use crate::engine::pool::Pool;
use crate::engine::state::CREATED;
use crate::engine::{Cause, Engine, EngineId, EngineName, EngineSecret, EngineState, EngineType};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::{Cas, Transition, WARM_STATES};

/// The least time between two rounds, however often monitors are woken.
const MIN_ROUND_GAP: Duration = Duration::from_millis(50);

/// What a monitor remembers of its pools' failures: per pool, the warm engines that failed in a
/// row, and when the pool may be refilled again.
#[derive(Default)]
pub(super) struct PoolFailures(Mutex<HashMap<String, (u32, Instant)>>);

impl PoolFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `failed` more engines of `pool` failed: its refills wait longer.
    fn failed(&self, pool: &str, failed: u32, initial: Duration, max: Duration) -> Duration {
        let mut pools = self.lock();
        let entry = pools.entry(pool.to_owned()).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(failed);
        let wait = Backoff::nth(initial, max, entry.0 - 1);
        entry.1 = Instant::now() + wait;
        wait
    }

    /// An engine of `pool` serves: its refills wait no more.
    fn served(&self, pool: &str) {
        self.lock().remove(pool);
    }

    /// Whether `pool` may be refilled now.
    fn may_refill(&self, pool: &str) -> bool {
        self.lock()
            .get(pool)
            .is_none_or(|(_, not_before)| Instant::now() >= *not_before)
    }
}

impl Monitor {
    /// The pool keeper's own loop (see the module documentation).
    pub(super) async fn keep_pools_loop(self, shutdown: Shutdown) {
        let wake_ups = self.inner.store.wake_ups();
        loop {
            let notified = wake_ups.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Err(error) = self.keep_pools().await {
                warn!(%error, "cannot keep the warm pools; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(MIN_ROUND_GAP) => {}
                _ = shutdown.clone().wait() => return,
            }
            // Without pools configured, a round only removes what pools dropped from the
            // configuration left: now and then is enough.
            let config = &self.inner.config;
            let (woken, every) = if config.pools.is_empty() {
                (false, config.orphan_scan_interval)
            } else {
                (true, config.poll_interval)
            };
            tokio::select! {
                _ = &mut notified, if woken => {}
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.clone().wait() => return,
            }
        }
    }

    /// One round of the pool keeper: every configured pool brought toward its size, and the
    /// engines of pools no longer configured stopped and removed.
    pub async fn keep_pools(&self) -> Result<(), MonitorError> {
        let mut by_pool: BTreeMap<String, Vec<Engine>> = self
            .inner
            .config
            .pools
            .iter()
            .map(|pool| (pool.name.clone(), Vec::new()))
            .collect();
        for engine in self.inner.store.warm_engines().await? {
            if let Some(pool) = engine.pool.clone() {
                by_pool.entry(pool).or_default().push(engine);
            }
        }
        for (name, engines) in by_pool {
            let pool = self.inner.config.pools.get(&name);
            self.keep_pool(&name, pool, engines).await?;
        }
        Ok(())
    }

    async fn keep_pool(
        &self,
        name: &str,
        pool: Option<&Pool>,
        engines: Vec<Engine>,
    ) -> Result<(), MonitorError> {
        let store = &self.inner.store;
        let config = &self.inner.config;
        let failures = &self.inner.pool_failures;
        let mut live = Vec::new();
        let mut failed = 0;
        for engine in engines {
            if matches!(
                engine.state,
                EngineState::Terminated | EngineState::ErrorClean
            ) {
                if store.remove_warm(&engine.id, engine.state).await? == Cas::Done {
                    info!(engine = %engine.id, pool = name, state = %engine.state, "warm engine ended; removed");
                    if engine.state == EngineState::ErrorClean {
                        failed += 1;
                    }
                }
            } else if WARM_STATES.contains(&engine.state) {
                live.push(engine);
            }
        }
        if live
            .iter()
            .any(|engine| engine.state == EngineState::Running)
        {
            failures.served(name);
        }
        if failed > 0 {
            let wait = failures.failed(name, failed, config.retry_initial, config.retry_max);
            warn!(pool = name, failed, retry_in = ?wait, "warm engines failed; refilling the pool later");
        }
        let (mut kept, stale): (Vec<Engine>, Vec<Engine>) = live
            .into_iter()
            .partition(|engine| pool.is_some_and(|pool| matches(engine, pool)));
        // Serving engines first, oldest first: those are kept, the rest stopped.
        kept.sort_by_key(|engine| (engine.state != EngineState::Running, engine.create_time));
        let size = pool.map_or(0, |pool| pool.size as usize);
        let extra = kept.split_off(size.min(kept.len()));
        for engine in stale {
            let why = format!("pool {name} no longer runs this version and configs");
            self.stop_warm(&engine, &why).await?;
        }
        for engine in extra {
            let why = format!("pool {name} keeps {size} engine(s)");
            self.stop_warm(&engine, &why).await?;
        }
        let running = kept
            .iter()
            .filter(|engine| engine.state == EngineState::Running)
            .count() as u64;
        let mut starting = kept.len() as u64 - running;
        if let Some(pool) = pool.filter(|_| failures.may_refill(name)) {
            for _ in kept.len()..size {
                let engine = warm_engine(pool);
                if store.insert_warm(&engine, pool.size, &self.actor()).await? {
                    starting += 1;
                    info!(engine = %engine.id, pool = name, "warm engine added");
                    if let Some(metrics) = &self.inner.metrics {
                        metrics.pool_refill(name);
                    }
                } else {
                    // Another monitor filled the pool first.
                    break;
                }
            }
        }
        if let Some(metrics) = &self.inner.metrics {
            metrics.pool_seen(name, running, starting);
        }
        Ok(())
    }

    /// Stops a warm engine the pool no longer wants, if it is still warm.
    async fn stop_warm(&self, engine: &Engine, why: &str) -> Result<(), MonitorError> {
        let now = Utc::now();
        let transition = match engine.state {
            EngineState::WaitToStart => {
                Transition::new(EngineState::WaitToStart, EngineState::Terminated)
            }
            EngineState::StartInProgress | EngineState::Running => {
                Transition::new(engine.state, EngineState::WaitToTerminate).due_at(now)
            }
            // Claimed by a monitor: stopped by a later round, once it is not.
            _ => return Ok(()),
        }
        .only_warm()
        .by(self.actor())
        .because(Cause::monitor("pool_shrink"))
        .with_message(why);
        if self
            .inner
            .store
            .update_state(&engine.id, &transition)
            .await?
            == Cas::Done
        {
            info!(engine = %engine.id, reason = why, "warm engine stopped");
            if let Some(metrics) = &self.inner.metrics {
                metrics.transition(transition.from, transition.to);
            }
        }
        Ok(())
    }
}

/// Whether a warm engine runs what its pool now asks for.
fn matches(engine: &Engine, pool: &Pool) -> bool {
    engine.version == pool.version && engine.configs == pool.config_map()
}

/// A new warm engine of `pool`: owned by no one, with no idle timeout, and its own secret.
fn warm_engine(pool: &Pool) -> Engine {
    let now = Utc::now();
    Engine {
        id: EngineId::generate(),
        // Pool names are lowercase letters, digits and '-', at most 40 long.
        name: EngineName::parse(&format!("warm-{}", pool.name))
            .unwrap_or_else(|_| unreachable!("a pool name makes a valid engine name")),
        owner: String::new(),
        engine_type: EngineType::Spark,
        version: pool.version.clone(),
        state: CREATED,
        error: None,
        configs: pool.config_map(),
        endpoint: None,
        create_time: now,
        update_time: now,
        next_update_time: Some(now),
        idle_timeout_minutes: 0,
        secret: Some(EngineSecret::generate()),
        generation: 0,
        failures: 0,
        failing_since: None,
        pool: Some(pool.name.clone()),
        handover_secret: None,
    }
}
