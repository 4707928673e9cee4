//! The reconciler: finds engines that need attention, claims them with a compare-and-swap, does
//! the platform work and records the result.
//!
//! Level-triggered: each pass reads what is due and drives every due engine one or more steps,
//! so a missed wake-up only delays work. Any number of monitors may share a store; the CAS on
//! each transition makes exactly one of them act.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::engine::state::monitor_transition;
use crate::engine::{Actor, Engine, EngineId, EngineSecret, EngineState, MonitorStep};
use crate::platform::{Platform, PlatformError, ResourceState};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::{Cas, Store, StoreError, Transition, MAX_KEPT_LOG};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// The safety net: how often the store is read even without a wake-up.
    pub poll_interval: Duration,
    /// How long a claim (`Trigger*`) may last before another pass takes the work over.
    pub trigger_timeout: Duration,
    /// How long an engine may take to serve before it is failed.
    pub start_timeout: Duration,
    /// How often a starting engine is checked.
    pub start_check_interval: Duration,
    /// How often a running engine is checked.
    pub health_check_interval: Duration,
    /// How often resources left without an engine are looked for.
    pub orphan_scan_interval: Duration,
    /// How many engines are handled at once.
    pub concurrency: usize,
    /// How many due engines one pass reads.
    pub batch: u32,
    /// The name this monitor records in the events it causes (default: host name and pid).
    pub name: String,
    /// How long one minute of an engine's `idle_timeout_minutes` lasts (a minute; tests
    /// shorten it).
    pub idle_minute: Duration,
    /// A proxy's report of calls under way older than this no longer counts (the proxy died).
    pub activity_stale: Duration,
}

/// `HOST-PID`: on Kubernetes the host name is the pod's name.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "monitor".to_owned());
    format!("{host}-{}", std::process::id())
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            poll_interval: Duration::from_secs(2),
            trigger_timeout: Duration::from_secs(120),
            start_timeout: Duration::from_secs(300),
            start_check_interval: Duration::from_millis(200),
            health_check_interval: Duration::from_secs(5),
            orphan_scan_interval: Duration::from_secs(60),
            concurrency: 16,
            batch: 256,
            name: default_name(),
            idle_minute: Duration::from_secs(60),
            activity_stale: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// When to look at an engine again: `None` when it waits for a user.
type Next = Option<DateTime<Utc>>;

#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    platform: Arc<dyn Platform>,
    config: MonitorConfig,
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashSet<EngineId>>,
    next_wake: Mutex<Option<DateTime<Utc>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every await-free step, so a poisoned lock is usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn later(duration: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl Monitor {
    pub fn new(store: Arc<dyn Store>, platform: Arc<dyn Platform>, config: MonitorConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Monitor {
            inner: Arc::new(Inner {
                store,
                platform,
                config,
                permits,
                in_flight: Mutex::new(HashSet::new()),
                next_wake: Mutex::new(None),
            }),
        }
    }

    /// Runs passes until `shutdown` fires, then lets the steps under way finish.
    pub async fn run(self, shutdown: Shutdown) {
        let config = &self.inner.config;
        let wake_ups = self.inner.store.wake_ups();
        let mut tasks = JoinSet::new();
        let mut last_orphan_scan: Option<tokio::time::Instant> = None;
        // While the store is unreachable, passes are retried ever less often, up to this cap.
        let mut backoff = Backoff::new(
            Duration::from_millis(250).min(config.poll_interval),
            Duration::from_secs(30).max(config.poll_interval),
        );
        info!(
            poll_interval = ?config.poll_interval,
            concurrency = config.concurrency,
            "monitor started"
        );
        loop {
            let notified = wake_ups.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if last_orphan_scan.is_none_or(|at| at.elapsed() >= config.orphan_scan_interval) {
                last_orphan_scan = Some(tokio::time::Instant::now());
                if let Err(error) = self.clean_orphans().await {
                    warn!(%error, "orphan clean-up failed; trying again later");
                }
            }
            let mut pause = match self.dispatch(&mut tasks).await {
                Ok(()) => {
                    backoff.reset();
                    self.until_next_wake()
                }
                Err(error) => {
                    let wait = backoff.next_wait();
                    warn!(%error, retry_in = ?wait, "cannot read due engines; retrying");
                    wait
                }
            };
            while tasks.try_join_next().is_some() {}
            if pause.is_zero() {
                pause = Duration::from_millis(1);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(pause) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.clone().wait() => break,
            }
        }
        info!(
            in_flight = tasks.len(),
            "monitor stopping; finishing the steps under way"
        );
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            warn!("steps still under way after 30 s; their claims time out and are retried");
        }
    }

    /// One pass: drives every due engine, and returns once all of them are handled.
    pub async fn pass(&self) -> Result<(), MonitorError> {
        let mut tasks = JoinSet::new();
        self.dispatch(&mut tasks).await?;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    fn until_next_wake(&self) -> Duration {
        let poll = self.inner.config.poll_interval;
        match *lock(&self.inner.next_wake) {
            Some(at) => (at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(poll),
            None => poll,
        }
    }

    async fn dispatch(&self, tasks: &mut JoinSet<()>) -> Result<(), MonitorError> {
        // A hint already due is acted on by this pass; a later one (set by a step that just
        // finished) must survive, or the loop would sleep the whole poll interval.
        let now = Utc::now();
        {
            let mut wake = lock(&self.inner.next_wake);
            if wake.is_some_and(|at| at <= now) {
                *wake = None;
            }
        }
        let due = self
            .inner
            .store
            .list_due(now, self.inner.config.batch)
            .await?;
        for engine in due {
            if !lock(&self.inner.in_flight).insert(engine.id.clone()) {
                continue;
            }
            let monitor = self.clone();
            tasks.spawn(async move {
                let id = engine.id.clone();
                if let Ok(_permit) = monitor.inner.permits.clone().acquire_owned().await {
                    monitor.drive(engine).await;
                }
                lock(&monitor.inner.in_flight).remove(&id);
            });
        }
        Ok(())
    }

    /// Steps one engine for as long as there is something to do right away.
    async fn drive(&self, mut engine: Engine) {
        for _ in 0..16 {
            let next = match self.step(&engine).await {
                Ok(next) => next,
                Err(error) => {
                    warn!(engine = %engine.id, state = %engine.state, %error, "step failed; retrying later");
                    return;
                }
            };
            let Some(at) = next else { return };
            if at > Utc::now() {
                let mut wake = lock(&self.inner.next_wake);
                *wake = Some(wake.map_or(at, |current| current.min(at)));
                return;
            }
            engine = match self.inner.store.get(&engine.id).await {
                Ok(Some(engine)) => engine,
                Ok(None) => return,
                Err(error) => {
                    warn!(engine = %engine.id, %error, "cannot re-read engine; retrying later");
                    return;
                }
            };
        }
    }

    async fn step(&self, engine: &Engine) -> Result<Next, MonitorError> {
        use EngineState::*;
        match engine.state {
            TriggerStart | TriggerTermination | ErrorTriggerClean => self.retry_claim(engine).await,
            WaitToStart => self.start(engine).await,
            StartInProgress => self.check_start(engine).await,
            Running => self.check_running(engine).await,
            WaitToTerminate | ErrorWaitToClean => self.terminate(engine).await,
            TerminateInProgress | ErrorCleanInProgress => self.check_deleted(engine).await,
            Terminated | ErrorClean => {
                self.inner
                    .store
                    .reschedule(&engine.id, engine.state, None)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Applies a monitor step as a CAS from `from`. `false` when another actor got there first.
    async fn advance(
        &self,
        engine: &Engine,
        from: EngineState,
        step: MonitorStep,
        shape: impl FnOnce(Transition) -> Transition,
    ) -> Result<bool, MonitorError> {
        let Some(to) = monitor_transition(from, step) else {
            warn!(engine = %engine.id, %from, ?step, "no such transition; ignoring");
            return Ok(false);
        };
        let mut transition =
            Transition::new(from, to).by(Actor::Monitor(self.inner.config.name.clone()));
        transition.error = engine.error.clone();
        let transition = shape(transition);
        match self
            .inner
            .store
            .update_state(&engine.id, &transition)
            .await?
        {
            Cas::Done => {
                debug!(engine = %engine.id, %from, %to, "transition");
                Ok(true)
            }
            Cas::Conflict(actual) => {
                debug!(engine = %engine.id, %from, %to, %actual, "state changed meanwhile; leaving it");
                Ok(false)
            }
            Cas::NotFound => Ok(false),
        }
    }

    async fn reschedule(&self, engine: &Engine, at: DateTime<Utc>) -> Result<Next, MonitorError> {
        match self
            .inner
            .store
            .reschedule(&engine.id, engine.state, Some(at))
            .await?
        {
            Cas::Done => Ok(Some(at)),
            Cas::Conflict(_) | Cas::NotFound => Ok(None),
        }
    }

    /// A claim outlived the trigger timeout: the monitor holding it died. Give the work back.
    async fn retry_claim(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let timeout = self.inner.config.trigger_timeout;
        let advanced = self
            .advance(engine, engine.state, MonitorStep::TimedOut, |t| {
                // Only the timed-out claim: a fresh one made meanwhile by another monitor is
                // in the same state but due later.
                t.only_if_due_by(Utc::now())
                    .due_at(Utc::now())
                    .with_message(format!("claim timed out after {timeout:?}; retrying"))
            })
            .await?;
        Ok(advanced.then(Utc::now))
    }

    /// Claims a `WaitTo*` engine for this monitor until the trigger timeout. Returns the claimed
    /// (`Trigger*`) state, or `None` when another actor got there first.
    async fn claim(&self, engine: &Engine) -> Result<Option<EngineState>, MonitorError> {
        self.claim_with(engine, None).await
    }

    /// [`Monitor::claim`], giving the engine `secret` with the claim when there is one.
    async fn claim_with(
        &self,
        engine: &Engine,
        secret: Option<EngineSecret>,
    ) -> Result<Option<EngineState>, MonitorError> {
        let Some(claimed) = monitor_transition(engine.state, MonitorStep::Claim) else {
            return Ok(None);
        };
        let claim_until = later(self.inner.config.trigger_timeout);
        let won = self
            .advance(engine, engine.state, MonitorStep::Claim, |t| {
                let t = t.due_at(claim_until);
                match secret {
                    Some(secret) => t.with_secret(secret),
                    None => t,
                }
            })
            .await?;
        Ok(won.then_some(claimed))
    }

    async fn start(&self, engine: &Engine) -> Result<Next, MonitorError> {
        // Every start has a secret (the server makes one at create and restart; an engine
        // recorded before secrets existed gets one with its claim).
        let mut engine = engine.clone();
        let secret = engine.secret.is_none().then(EngineSecret::generate);
        let Some(claimed) = self.claim_with(&engine, secret.clone()).await? else {
            return Ok(None);
        };
        if secret.is_some() {
            engine.secret = secret;
        }
        let engine = &engine;
        match self.inner.platform.create(engine).await {
            Ok(()) => {
                let advanced = self
                    .advance(engine, claimed, MonitorStep::Created, |t| {
                        t.due_at(Utc::now())
                    })
                    .await?;
                Ok(advanced.then(Utc::now))
            }
            Err(error) => {
                warn!(engine = %engine.id, %error, "engine creation failed");
                // Whatever the failed attempt left behind goes, its log kept first.
                self.keep_logs(&engine.id).await;
                if let Err(error) = self.inner.platform.delete(&engine.id).await {
                    warn!(engine = %engine.id, %error, "cannot remove what a failed creation left; the claim times out and is retried");
                    return Ok(None);
                }
                self.advance(engine, claimed, MonitorStep::CreateFailed, |t| {
                    t.with_error(error.to_string())
                })
                .await?;
                Ok(None)
            }
        }
    }

    async fn check_start(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let config = &self.inner.config;
        let failure = match self.inner.platform.state(engine).await? {
            ResourceState::Running { endpoint } => {
                let next = later(config.health_check_interval);
                self.advance(engine, engine.state, MonitorStep::Ready, |t| {
                    t.due_at(next).with_endpoint(Some(endpoint))
                })
                .await?;
                info!(engine = %engine.id, "engine is running");
                return Ok(Some(next));
            }
            ResourceState::Starting => {
                let waited = (Utc::now() - engine.update_time)
                    .to_std()
                    .unwrap_or_default();
                if waited < config.start_timeout {
                    return self
                        .reschedule(engine, later(config.start_check_interval))
                        .await;
                }
                format!(
                    "the engine did not serve within the start timeout of {:?}",
                    config.start_timeout
                )
            }
            ResourceState::Failed(message) => message,
            ResourceState::Gone => "the engine's resource disappeared while starting".to_owned(),
        };
        self.fail(engine, failure).await
    }

    async fn check_running(&self, engine: &Engine) -> Result<Next, MonitorError> {
        if let Some(idle) = self.idle_for(engine).await? {
            let minutes = engine.idle_timeout_minutes;
            let advanced = self
                .advance(engine, engine.state, MonitorStep::IdleStop, |t| {
                    t.due_at(Utc::now()).with_message(format!(
                        "stopped after {minutes} idle minute(s): no Spark Connect call for {idle:?}"
                    ))
                })
                .await?;
            if advanced {
                info!(engine = %engine.id, ?idle, "engine stopped for idleness");
            }
            return Ok(advanced.then(Utc::now));
        }
        let failure = match self.inner.platform.state(engine).await? {
            // Serving, or alive but briefly not answering: look again later.
            ResourceState::Running { .. } | ResourceState::Starting => {
                return self
                    .reschedule(engine, later(self.inner.config.health_check_interval))
                    .await;
            }
            ResourceState::Failed(message) => message,
            ResourceState::Gone => "the engine's resource disappeared while running".to_owned(),
        };
        self.fail(engine, failure).await
    }

    /// How long a Running engine with an idle timeout has been idle, when that is past its
    /// timeout: no call under way through any proxy, and none ended (nor the engine started)
    /// for that long.
    async fn idle_for(&self, engine: &Engine) -> Result<Option<Duration>, MonitorError> {
        if engine.idle_timeout_minutes == 0 {
            return Ok(None);
        }
        let config = &self.inner.config;
        let now = Utc::now();
        let fresh_after = now
            - chrono::Duration::from_std(config.activity_stale).unwrap_or(chrono::Duration::MAX);
        let activity = self.inner.store.activity(&engine.id, fresh_after).await?;
        if activity.in_flight > 0 {
            return Ok(None);
        }
        // Idle since the last call ended, or since the engine runs (its last update).
        let since = activity
            .last_active
            .map_or(engine.update_time, |last| last.max(engine.update_time));
        let idle = (now - since).to_std().unwrap_or_default();
        let timeout = config.idle_minute * engine.idle_timeout_minutes;
        Ok((idle >= timeout).then_some(idle))
    }

    async fn fail(&self, engine: &Engine, message: String) -> Result<Next, MonitorError> {
        warn!(engine = %engine.id, %message, "engine failed");
        let advanced = self
            .advance(engine, engine.state, MonitorStep::Failed, |t| {
                t.due_at(Utc::now()).with_error(message)
            })
            .await?;
        Ok(advanced.then(Utc::now))
    }

    /// `WaitToTerminate` or `ErrorWaitToClean`: claim, keep the log, delete the resource.
    async fn terminate(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let Some(claimed) = self.claim(engine).await? else {
            return Ok(None);
        };
        self.keep_logs(&engine.id).await;
        if let Err(error) = self.inner.platform.delete(&engine.id).await {
            warn!(engine = %engine.id, %error, "delete failed; the claim times out and is retried");
            return Ok(None);
        }
        let advanced = self
            .advance(engine, claimed, MonitorStep::DeleteRequested, |t| {
                t.due_at(Utc::now())
            })
            .await?;
        Ok(advanced.then(Utc::now))
    }

    async fn check_deleted(&self, engine: &Engine) -> Result<Next, MonitorError> {
        if self.inner.platform.state(engine).await? == ResourceState::Gone {
            self.advance(engine, engine.state, MonitorStep::Gone, |t| t)
                .await?;
            info!(engine = %engine.id, state = ?monitor_transition(engine.state, MonitorStep::Gone), "engine resource removed");
            return Ok(None);
        }
        self.inner.platform.delete(&engine.id).await?;
        self.reschedule(engine, later(self.inner.config.start_check_interval))
            .await
    }

    async fn keep_logs(&self, id: &EngineId) {
        match self.inner.platform.logs(id, MAX_KEPT_LOG).await {
            Ok(Some(text)) => {
                if let Err(error) = self.inner.store.save_logs(id, &text).await {
                    warn!(engine = %id, %error, "cannot keep the driver log");
                }
            }
            Ok(None) => {}
            Err(error) => warn!(engine = %id, %error, "cannot read the driver log to keep it"),
        }
    }

    /// Removes resources whose engine is gone, and stops those of settled engines. Returns how
    /// many resources were cleaned.
    pub async fn clean_orphans(&self) -> Result<usize, MonitorError> {
        // Resources first, then states: an engine created in between is not in the first list,
        // so it cannot be taken for an orphan.
        let resources = self.inner.platform.resources().await?;
        if resources.is_empty() {
            return Ok(0);
        }
        let states: HashMap<EngineId, EngineState> =
            self.inner.store.all_states().await?.into_iter().collect();
        let mut cleaned = 0;
        for id in resources {
            if lock(&self.inner.in_flight).contains(&id) {
                continue;
            }
            let result = match states.get(&id) {
                None => {
                    info!(engine = %id, "removing what is left of a deleted engine");
                    self.inner.platform.forget(&id).await.map(|()| true)
                }
                Some(state) if state.is_settled() => self.stop_orphan(&id, *state).await,
                Some(_) => Ok(false),
            };
            match result {
                Ok(true) => cleaned += 1,
                Ok(false) => {}
                Err(error) => warn!(engine = %id, %error, "orphan clean-up failed"),
            }
        }
        Ok(cleaned)
    }

    async fn stop_orphan(&self, id: &EngineId, state: EngineState) -> Result<bool, PlatformError> {
        let Some(engine) = self.inner.store.get(id).await.ok().flatten() else {
            return Ok(false);
        };
        if engine.state != state || self.inner.platform.state(&engine).await? == ResourceState::Gone
        {
            return Ok(false);
        }
        // Another monitor may have restarted the engine and created its resource since the
        // first read: only an engine still settled, unchanged, has an orphan.
        match self.inner.store.get(id).await {
            Ok(Some(again))
                if again.state == engine.state && again.update_time == engine.update_time => {}
            _ => return Ok(false),
        }
        warn!(engine = %id, %state, "a resource runs for a settled engine; stopping it");
        self.inner.platform.delete(id).await?;
        Ok(true)
    }
}
