//! The reconciler: finds engines that need attention, claims them with a compare-and-swap, does
//! the platform work and records the result.
//!
//! Level-triggered: each pass reads what is due and drives every due engine one or more steps,
//! so a missed wake-up only delays work. Any number of monitors may share a store; the CAS on
//! each transition makes exactly one of them act.
//!
//! **Fencing.** A claim starts a new generation of the engine; every write a monitor makes
//! afterwards names that generation (the store refuses it otherwise), and every platform
//! resource carries the generation that made it: a delete made for one generation never touches
//! a resource of a later one. A monitor that overran its claim (paused, or slow past the trigger
//! timeout) can change nothing of what came after.
//!
//! **Convergence.** A failed step is retried with capped exponential back-off and jitter, per
//! engine, each failure an event, so that no engine spins and none starves the others. Deletes
//! have a deadline: then the resource is killed (SIGKILL, grace period 0), and if even that does
//! not remove it, the engine takes its error path naming the stuck resource while the orphan scan
//! keeps at it. A Running engine that stops answering Spark Connect for `health_timeout` fails.

mod pools;
mod settings;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::engine::pool::Pools;
use crate::engine::state::monitor_transition;
use crate::engine::{Actor, Cause, Engine, EngineId, EngineSecret, EngineState, MonitorStep};
use crate::metrics::{Metrics, StepFailure, StepKind};
use crate::platform::{Platform, PlatformError, ResourceState};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::{Cas, Failure, Reschedule, Store, StoreError, Transition, MAX_KEPT_LOG};
pub use settings::MonitorFile;

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
    /// How long a running engine may fail its checks before it is failed.
    pub health_timeout: Duration,
    /// How long a delete may take before the resource is killed (SIGKILL, grace period 0).
    pub delete_timeout: Duration,
    /// How long a killed resource may take to go before the engine takes its error path.
    pub kill_timeout: Duration,
    /// The first and the longest pause before a failed step is tried again.
    pub retry_initial: Duration,
    pub retry_max: Duration,
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
    /// The warm pools this monitor keeps filled (see [`crate::engine::pool`]).
    pub pools: Pools,
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
            health_timeout: Duration::from_secs(60),
            delete_timeout: Duration::from_secs(120),
            kill_timeout: Duration::from_secs(60),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            orphan_scan_interval: Duration::from_secs(60),
            concurrency: 16,
            batch: 256,
            name: default_name(),
            idle_minute: Duration::from_secs(60),
            activity_stale: Duration::from_secs(30),
            pools: Pools::default(),
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

impl MonitorError {
    /// What the step failed on, for metrics.
    fn failure(&self) -> StepFailure<'_> {
        match self {
            MonitorError::Store(_) => StepFailure::Store,
            MonitorError::Platform(error) => StepFailure::Platform(error),
        }
    }
}

/// A failure the platform reports of an engine, as the message and cause of its event.
fn platform_failure(message: String) -> (String, Cause) {
    let cause = Cause::PlatformError {
        reason: message.clone(),
    };
    (message, cause)
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
    finished: Mutex<Finished>,
    /// When steps asked to be looked at again, sooner than the next poll: each is a wake-up.
    next_wake: Mutex<BTreeSet<DateTime<Utc>>>,
    /// Where passes, steps, claims and transitions are counted (none: metrics are off).
    metrics: Option<Arc<Metrics>>,
    /// The warm pools whose engines failed, and when they may be refilled.
    pool_failures: pools::PoolFailures,
}

/// When each engine's last drive ended, counted in drives ended: a due engine read before its
/// last drive ended may be read as it was before that drive (stale), and is not driven from
/// that read.
#[derive(Default)]
struct Finished {
    count: u64,
    at: HashMap<EngineId, u64>,
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

/// How long ago `time` was (zero for a time to come).
fn since(time: DateTime<Utc>) -> Duration {
    (Utc::now() - time).to_std().unwrap_or_default()
}

impl Monitor {
    pub fn new(store: Arc<dyn Store>, platform: Arc<dyn Platform>, config: MonitorConfig) -> Self {
        Self::with_metrics(store, platform, config, None)
    }

    /// [`Monitor::new`], counting its passes, steps, claims and transitions in `metrics`.
    pub fn with_metrics(
        store: Arc<dyn Store>,
        platform: Arc<dyn Platform>,
        config: MonitorConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        if let Some(metrics) = &metrics {
            metrics.note_monitor();
        }
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Monitor {
            inner: Arc::new(Inner {
                store,
                platform,
                config,
                permits,
                in_flight: Mutex::new(HashSet::new()),
                finished: Mutex::new(Finished::default()),
                next_wake: Mutex::new(BTreeSet::new()),
                metrics,
                pool_failures: pools::PoolFailures::default(),
            }),
        }
    }

    /// Runs passes until `shutdown` fires, then lets the steps under way finish. The orphan
    /// scan runs beside, on its own schedule.
    pub async fn run(self, shutdown: Shutdown) {
        let config = &self.inner.config;
        let wake_ups = self.inner.store.wake_ups();
        let mut tasks = JoinSet::new();
        let orphans = tokio::spawn(self.clone().scan_orphans(shutdown.clone()));
        let pools = tokio::spawn(self.clone().keep_pools_loop(shutdown.clone()));
        // While the store is unreachable, passes are retried ever less often, up to this cap.
        let mut backoff = Backoff::new(
            Duration::from_millis(250).min(config.poll_interval),
            Duration::from_secs(30).max(config.poll_interval),
        );
        info!(
            poll_interval = ?config.poll_interval,
            concurrency = config.concurrency,
            name = %config.name,
            "monitor started"
        );
        loop {
            let notified = wake_ups.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let mut pause = match self.timed_dispatch(&mut tasks).await {
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
        orphans.abort();
        pools.abort();
    }

    /// The orphan scan's own loop: a slow scan (a slow platform API) holds up no step. The
    /// interval runs from the end of one scan to the start of the next.
    async fn scan_orphans(self, shutdown: Shutdown) {
        loop {
            if let Err(error) = self.clean_orphans().await {
                warn!(%error, "orphan clean-up failed; trying again later");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.orphan_scan_interval) => {}
                _ = shutdown.clone().wait() => return,
            }
        }
    }

    /// One pass: drives every due engine, and returns once all of them are handled.
    pub async fn pass(&self) -> Result<(), MonitorError> {
        let mut tasks = JoinSet::new();
        self.timed_dispatch(&mut tasks).await?;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// [`Monitor::dispatch`], counted and timed as a pass.
    async fn timed_dispatch(&self, tasks: &mut JoinSet<()>) -> Result<(), MonitorError> {
        let started = std::time::Instant::now();
        let result = self.dispatch(tasks).await;
        if let Some(metrics) = &self.inner.metrics {
            metrics.pass(started.elapsed(), result.is_ok());
        }
        result
    }

    /// [`Monitor::step`], counted and timed by kind and outcome.
    async fn timed_step(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let started = std::time::Instant::now();
        let result = self.step(engine).await;
        if let Some(metrics) = &self.inner.metrics {
            metrics.step(
                StepKind::of(engine.state),
                result.as_ref().err().map(MonitorError::failure),
                started.elapsed(),
            );
        }
        result
    }

    fn until_next_wake(&self) -> Duration {
        let poll = self.inner.config.poll_interval;
        match lock(&self.inner.next_wake).first() {
            Some(at) => (*at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(poll),
            None => poll,
        }
    }

    async fn dispatch(&self, tasks: &mut JoinSet<()>) -> Result<(), MonitorError> {
        // Hints already due are acted on by this pass; later ones (set by steps that just
        // finished, each engine its own) must all survive, or the loop would sleep the whole
        // poll interval after the first.
        let now = Utc::now();
        {
            let mut wake = lock(&self.inner.next_wake);
            let later = wake.split_off(&(now + chrono::Duration::milliseconds(1)));
            *wake = later;
        }
        let read_from = {
            // Drives that ended before this read cannot make what it returns stale.
            let mut finished = lock(&self.inner.finished);
            finished.at.clear();
            finished.count
        };
        let due = self
            .inner
            .store
            .list_due(now, self.inner.config.batch)
            .await?;
        for engine in due {
            if !lock(&self.inner.in_flight).insert(engine.id.clone()) {
                continue;
            }
            // Driven (by an earlier pass) while this pass read it: what was read may be from
            // before that drive, as if still due (a recorded failure's retry not seen yet).
            // The next pass, at once, reads it afresh.
            let stale = lock(&self.inner.finished)
                .at
                .get(&engine.id)
                .is_some_and(|&ended| ended > read_from);
            if stale {
                lock(&self.inner.in_flight).remove(&engine.id);
                self.wake_at(now);
                continue;
            }
            let monitor = self.clone();
            tasks.spawn(async move {
                let id = engine.id.clone();
                if let Ok(_permit) = monitor.inner.permits.clone().acquire_owned().await {
                    monitor.drive(engine).await;
                }
                {
                    let mut finished = lock(&monitor.inner.finished);
                    finished.count += 1;
                    let ended = finished.count;
                    finished.at.insert(id.clone(), ended);
                }
                lock(&monitor.inner.in_flight).remove(&id);
            });
        }
        Ok(())
    }

    fn wake_at(&self, at: DateTime<Utc>) {
        // One past the next poll is of no use: that poll finds the engine anyway.
        let poll = chrono::Duration::from_std(self.inner.config.poll_interval)
            .unwrap_or(chrono::Duration::MAX);
        if Utc::now()
            .checked_add_signed(poll)
            .is_none_or(|next_poll| at < next_poll)
        {
            lock(&self.inner.next_wake).insert(at);
        }
    }

    /// Steps one engine for as long as there is something to do right away.
    async fn drive(&self, mut engine: Engine) {
        for _ in 0..16 {
            let next = match self.timed_step(&engine).await {
                Ok(next) => next,
                Err(error) => {
                    self.failed(&engine, &error).await;
                    return;
                }
            };
            let Some(at) = next else { return };
            if at > Utc::now() {
                self.wake_at(at);
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

    /// A step failed: recorded as an event of the engine (in the generation the step worked
    /// on), and tried again after a capped exponential pause with jitter, per engine.
    async fn failed(&self, engine: &Engine, error: &MonitorError) {
        let config = &self.inner.config;
        let attempt = engine.failures.saturating_add(1);
        let wait = Backoff::nth(config.retry_initial, config.retry_max, engine.failures);
        warn!(engine = %engine.id, state = %engine.state, attempt, %error, retry_in = ?wait, "step failed");
        let failure = Failure {
            state: engine.state,
            fence: Some(engine.generation),
            message: format!(
                "step failed (attempt {attempt}): {error}; trying again in {:.1} s",
                wait.as_secs_f64()
            ),
            retry_at: later(wait),
            actor: Some(self.actor()),
            cause: Some(match error {
                MonitorError::Platform(error) => Cause::PlatformError {
                    reason: error.to_string(),
                },
                MonitorError::Store(error) => Cause::StoreError {
                    reason: error.to_string(),
                },
            }),
        };
        match self.inner.store.record_failure(&engine.id, &failure).await {
            Ok(Cas::Done) => self.wake_at(failure.retry_at),
            Ok(_) => {}
            Err(error) => {
                warn!(engine = %engine.id, %error, "cannot record the failure; the next pass retries")
            }
        }
    }

    fn actor(&self) -> Actor {
        Actor::Monitor(self.inner.config.name.clone())
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
                    .reschedule(
                        &engine.id,
                        &Reschedule::new(engine.state, None).fenced(engine.generation),
                    )
                    .await?;
                Ok(None)
            }
        }
    }

    /// Applies a monitor step as a CAS from `from` in the engine's generation (`generation`).
    /// `false` when another actor got there first, or a later generation exists.
    async fn advance(
        &self,
        engine: &Engine,
        from: EngineState,
        generation: u64,
        step: MonitorStep,
        shape: impl FnOnce(Transition) -> Transition,
    ) -> Result<bool, MonitorError> {
        let Some(to) = monitor_transition(from, step) else {
            warn!(engine = %engine.id, %from, ?step, "no such transition; ignoring");
            return Ok(false);
        };
        let mut transition = Transition::new(from, to)
            .by(self.actor())
            .fenced(generation);
        transition.error = engine.error.clone();
        let mut transition = shape(transition);
        if transition.cause.is_none() {
            transition.cause = Some(Cause::monitor(step.as_str()));
        }
        match self
            .inner
            .store
            .update_state(&engine.id, &transition)
            .await?
        {
            Cas::Done => {
                debug!(engine = %engine.id, %from, %to, generation, "transition");
                if let Some(metrics) = &self.inner.metrics {
                    metrics.transition(from, to);
                    if step == MonitorStep::Claim {
                        // From when the engine became due (a request, a retry) to its claim.
                        let due = engine.next_update_time.unwrap_or(engine.update_time);
                        metrics.claimed(since(due));
                    }
                }
                Ok(true)
            }
            Cas::Conflict(actual) => {
                debug!(engine = %engine.id, %from, %to, %actual, generation, "state or generation changed meanwhile; leaving it");
                Ok(false)
            }
            Cas::NotFound => Ok(false),
        }
    }

    /// Looks again at `at`, if the engine is still where this step found it.
    async fn reschedule(&self, engine: &Engine, at: DateTime<Utc>) -> Result<Next, MonitorError> {
        self.reschedule_with(engine, Reschedule::new(engine.state, Some(at)))
            .await
    }

    async fn reschedule_with(
        &self,
        engine: &Engine,
        reschedule: Reschedule,
    ) -> Result<Next, MonitorError> {
        let at = reschedule.next_update_time;
        let reschedule = reschedule.fenced(engine.generation);
        match self.inner.store.reschedule(&engine.id, &reschedule).await? {
            Cas::Done => Ok(at),
            Cas::Conflict(_) | Cas::NotFound => Ok(None),
        }
    }

    /// A claim outlived the trigger timeout (its monitor died or stalled), or the step it was
    /// for failed and its pause is over: give the work back, to be claimed anew.
    async fn retry_claim(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let timeout = self.inner.config.trigger_timeout;
        let (why, cause) = if engine.failures > 0 {
            (
                "retrying the failed step".to_owned(),
                Cause::monitor("retry"),
            )
        } else {
            (
                format!("claim timed out after {timeout:?}; retrying"),
                Cause::timeout("claim"),
            )
        };
        let advanced = self
            .advance(
                engine,
                engine.state,
                engine.generation,
                MonitorStep::TimedOut,
                |t| {
                    // Only the timed-out claim: a fresh one made meanwhile by another monitor
                    // is in a later generation, and due later. A failed step's count goes on,
                    // so that its next failure waits longer.
                    t.only_if_due_by(Utc::now())
                        .due_at(Utc::now())
                        .with_message(why)
                        .because(cause)
                        .keeping_failures()
                },
            )
            .await?;
        Ok(advanced.then(Utc::now))
    }

    /// Claims a `WaitTo*` engine for this monitor until the trigger timeout, in a new
    /// generation (giving it `secret` with the claim when there is one). Returns the engine as
    /// claimed (`Trigger*`, its new generation), or `None` when another actor got there first.
    async fn claim(
        &self,
        engine: &Engine,
        secret: Option<EngineSecret>,
    ) -> Result<Option<Engine>, MonitorError> {
        let Some(claimed) = monitor_transition(engine.state, MonitorStep::Claim) else {
            return Ok(None);
        };
        let claim_until = later(self.inner.config.trigger_timeout);
        let won = self
            .advance(
                engine,
                engine.state,
                engine.generation,
                MonitorStep::Claim,
                |t| {
                    let t = t.due_at(claim_until).claiming().keeping_failures();
                    match secret.clone() {
                        Some(secret) => t.with_secret(secret),
                        None => t,
                    }
                },
            )
            .await?;
        Ok(won.then(|| Engine {
            state: claimed,
            generation: engine.generation + 1,
            secret: secret.or_else(|| engine.secret.clone()),
            ..engine.clone()
        }))
    }

    async fn start(&self, engine: &Engine) -> Result<Next, MonitorError> {
        // Every start has a secret (the server makes one at create and restart; an engine
        // recorded before secrets existed gets one with its claim).
        let secret = engine.secret.is_none().then(EngineSecret::generate);
        let Some(claimed) = self.claim(engine, secret).await? else {
            return Ok(None);
        };
        let result = self.create_claimed(&claimed).await;
        self.after_claim(&claimed, result).await
    }

    /// What follows a claim: a failure there is the claimed engine's (its `Trigger*` state and
    /// new generation). Recorded against the engine as it was before the claim, it would find
    /// the store moved on and be lost: no event, and no retry before the claim timed out.
    async fn after_claim(
        &self,
        claimed: &Engine,
        result: Result<Next, MonitorError>,
    ) -> Result<Next, MonitorError> {
        match result {
            Ok(next) => Ok(next),
            Err(error) => {
                self.failed(claimed, &error).await;
                Ok(None)
            }
        }
    }

    async fn create_claimed(&self, claimed: &Engine) -> Result<Next, MonitorError> {
        match self.inner.platform.create(claimed).await {
            Ok(()) => {
                let advanced = self
                    .advance(
                        claimed,
                        claimed.state,
                        claimed.generation,
                        MonitorStep::Created,
                        |t| t.due_at(Utc::now()),
                    )
                    .await?;
                Ok(advanced.then(Utc::now))
            }
            Err(error) => {
                warn!(engine = %claimed.id, %error, "engine creation failed");
                // Whatever the failed attempt left behind goes, its log kept first (if the log
                // cannot be kept, the step fails and is retried: nothing is deleted unkept).
                self.keep_logs(&claimed.id).await?;
                self.inner
                    .platform
                    .delete(&claimed.id, claimed.generation, false)
                    .await
                    .map_err(|delete| {
                        warn!(engine = %claimed.id, error = %delete, "cannot remove what a failed creation left");
                        MonitorError::Platform(delete)
                    })?;
                self.advance(
                    claimed,
                    claimed.state,
                    claimed.generation,
                    MonitorStep::CreateFailed,
                    |t| {
                        t.with_error(error.to_string())
                            .because(Cause::PlatformError {
                                reason: error.to_string(),
                            })
                    },
                )
                .await?;
                Ok(None)
            }
        }
    }

    async fn check_start(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let config = &self.inner.config;
        let failure = match self.inner.platform.state(engine).await? {
            ResourceState::Running { endpoint } => {
                // Running means a Spark Connect request succeeded, not that a port opened.
                let mut ready = self.inner.platform.probe(engine, &endpoint).await;
                if ready.is_ok() && engine.pool.is_some() {
                    // A warm engine runs a first query before it can be taken.
                    ready = self.inner.platform.warm_up(engine, &endpoint).await;
                }
                match ready {
                    Ok(()) => {
                        let next = later(config.health_check_interval);
                        let advanced = self
                            .advance(
                                engine,
                                engine.state,
                                engine.generation,
                                MonitorStep::Ready,
                                |t| t.due_at(next).with_endpoint(Some(endpoint)),
                            )
                            .await?;
                        if advanced {
                            info!(engine = %engine.id, "engine is running");
                        }
                        return Ok(advanced.then_some(next));
                    }
                    Err(why) => self.still_starting(engine, &why).await,
                }
            }
            ResourceState::Starting => self.still_starting(engine, "not serving yet").await,
            ResourceState::Failed(message) => Err(platform_failure(message)),
            ResourceState::Gone => Err(platform_failure(
                "the engine's resource disappeared while starting".to_owned(),
            )),
        };
        match failure {
            Ok(result) => result,
            Err((message, cause)) => self.fail(engine, message, cause).await,
        }
    }

    /// A starting engine that does not serve yet: looked at again soon, or failed once the
    /// start timeout passed.
    async fn still_starting(
        &self,
        engine: &Engine,
        why: &str,
    ) -> Result<Result<Next, MonitorError>, (String, Cause)> {
        let config = &self.inner.config;
        if since(engine.update_time) < config.start_timeout {
            return Ok(self
                .reschedule(engine, later(config.start_check_interval))
                .await);
        }
        Err((
            format!(
                "the engine did not serve within the start timeout of {:?} ({why})",
                config.start_timeout
            ),
            Cause::timeout("start"),
        ))
    }

    async fn check_running(&self, engine: &Engine) -> Result<Next, MonitorError> {
        if let Some(idle) = self.idle_for(engine).await? {
            let minutes = engine.idle_timeout_minutes;
            let advanced = self
                .advance(
                    engine,
                    engine.state,
                    engine.generation,
                    MonitorStep::IdleStop,
                    |t| {
                        t.due_at(Utc::now())
                            .with_message(format!(
                                "stopped after {minutes} idle minute(s): no Spark Connect call for {idle:?}"
                            ))
                            .because(Cause::Idle { minutes })
                    },
                )
                .await?;
            if advanced {
                info!(engine = %engine.id, ?idle, "engine stopped for idleness");
            }
            return Ok(advanced.then(Utc::now));
        }
        let config = &self.inner.config;
        let unhealthy = match self.inner.platform.state(engine).await? {
            ResourceState::Running { endpoint } => {
                match self.inner.platform.probe(engine, &endpoint).await {
                    Ok(()) => {
                        // Healthy; and an engine whose endpoint was lost (a stop cancelled
                        // before it ran) gets it back.
                        let mut reschedule = Reschedule::new(
                            engine.state,
                            Some(later(config.health_check_interval)),
                        );
                        if engine.endpoint.as_deref() != Some(endpoint.as_str()) {
                            reschedule.endpoint = Some(endpoint);
                        }
                        return self.reschedule_with(engine, reschedule).await;
                    }
                    Err(why) => {
                        // A warm engine taken while it was probed has a new secret, which the
                        // old one may already have been handed over to: probe it again as the
                        // store has it now rather than count a failure against its new owner.
                        if let Some(now) = self.taken_meanwhile(engine).await? {
                            return self.reschedule(&now, Utc::now()).await;
                        }
                        why
                    }
                }
            }
            ResourceState::Starting => "its Spark Connect port does not answer".to_owned(),
            ResourceState::Failed(message) => {
                let (message, cause) = platform_failure(message);
                return self.fail(engine, message, cause).await;
            }
            ResourceState::Gone => {
                let (message, cause) =
                    platform_failure("the engine's resource disappeared while running".to_owned());
                return self.fail(engine, message, cause).await;
            }
        };
        // Failing checks: counted (each an event) until health_timeout, then the engine fails.
        let failing = engine.failing_since.map_or(Duration::ZERO, since);
        if failing >= config.health_timeout {
            return self
                .fail(
                    engine,
                    format!(
                        "the engine did not answer Spark Connect for {failing:?} (health timeout {:?}): {unhealthy}",
                        config.health_timeout
                    ),
                    Cause::timeout("health"),
                )
                .await;
        }
        let failure = Failure {
            state: engine.state,
            fence: Some(engine.generation),
            message: format!("health check failed: {unhealthy}"),
            retry_at: later(config.health_check_interval),
            actor: Some(self.actor()),
            cause: Some(Cause::HealthCheck { reason: unhealthy }),
        };
        match self
            .inner
            .store
            .record_failure(&engine.id, &failure)
            .await?
        {
            Cas::Done => Ok(Some(failure.retry_at)),
            Cas::Conflict(_) | Cas::NotFound => Ok(None),
        }
    }

    /// The engine as the store has it now, when it was a warm engine that a create has taken
    /// since `engine` was read.
    async fn taken_meanwhile(&self, engine: &Engine) -> Result<Option<Engine>, MonitorError> {
        if engine.pool.is_none() {
            return Ok(None);
        }
        Ok(self
            .inner
            .store
            .get(&engine.id)
            .await?
            .filter(|now| now.pool.is_none() && now.generation == engine.generation))
    }

    /// How long a Running engine with an idle timeout has been idle, when that is past its
    /// timeout: no call under way through any proxy, and none ended (nor the engine started)
    /// for that long.
    async fn idle_for(&self, engine: &Engine) -> Result<Option<Duration>, MonitorError> {
        if engine.idle_timeout_minutes == 0 {
            return Ok(None);
        }
        let config = &self.inner.config;
        let fresh_after = Utc::now()
            - chrono::Duration::from_std(config.activity_stale).unwrap_or(chrono::Duration::MAX);
        let activity = self.inner.store.activity(&engine.id, fresh_after).await?;
        if activity.in_flight > 0 {
            return Ok(None);
        }
        // Idle since the last call ended, or since the engine runs (its last update).
        let since_active = activity
            .last_active
            .map_or(engine.update_time, |last| last.max(engine.update_time));
        let idle = since(since_active);
        let timeout = config.idle_minute * engine.idle_timeout_minutes;
        Ok((idle >= timeout).then_some(idle))
    }

    async fn fail(
        &self,
        engine: &Engine,
        message: String,
        cause: Cause,
    ) -> Result<Next, MonitorError> {
        warn!(engine = %engine.id, %message, "engine failed");
        let advanced = self
            .advance(
                engine,
                engine.state,
                engine.generation,
                MonitorStep::Failed,
                |t| t.due_at(Utc::now()).with_error(message).because(cause),
            )
            .await?;
        Ok(advanced.then(Utc::now))
    }

    /// `WaitToTerminate` or `ErrorWaitToClean`: claim, keep the log, delete the resource.
    async fn terminate(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let Some(claimed) = self.claim(engine, None).await? else {
            return Ok(None);
        };
        let result = self.delete_claimed(&claimed).await;
        self.after_claim(&claimed, result).await
    }

    async fn delete_claimed(&self, claimed: &Engine) -> Result<Next, MonitorError> {
        // The log first: if it cannot be kept (the store is away), nothing is deleted and the
        // step is tried again.
        self.keep_logs(&claimed.id).await?;
        self.inner
            .platform
            .delete(&claimed.id, claimed.generation, false)
            .await?;
        let advanced = self
            .advance(
                claimed,
                claimed.state,
                claimed.generation,
                MonitorStep::DeleteRequested,
                |t| t.due_at(Utc::now()),
            )
            .await?;
        Ok(advanced.then(Utc::now))
    }

    /// `*InProgress` deletes: done once the resource is gone. Past `delete_timeout` the
    /// resource is killed; past `kill_timeout` more, the engine takes its error path naming
    /// the stuck resource (the orphan scan keeps trying to remove it).
    async fn check_deleted(&self, engine: &Engine) -> Result<Next, MonitorError> {
        let config = &self.inner.config;
        let platform = &self.inner.platform;
        if platform.state(engine).await? == ResourceState::Gone {
            let advanced = self
                .advance(
                    engine,
                    engine.state,
                    engine.generation,
                    MonitorStep::Gone,
                    |t| t,
                )
                .await?;
            if advanced {
                info!(engine = %engine.id, state = ?monitor_transition(engine.state, MonitorStep::Gone), "engine resource removed");
            }
            return Ok(None);
        }
        let waited = since(engine.update_time);
        if waited < config.delete_timeout {
            platform
                .delete(&engine.id, engine.generation, false)
                .await?;
            return self
                .reschedule(engine, later(config.start_check_interval))
                .await;
        }
        if waited < config.delete_timeout + config.kill_timeout {
            platform.delete(&engine.id, engine.generation, true).await?;
            let recheck = later(config.start_check_interval.max(Duration::from_millis(500)));
            if engine.failures == 0 {
                // Said once, in the history.
                let failure = Failure {
                    state: engine.state,
                    fence: Some(engine.generation),
                    message: format!(
                        "the resource was not gone after {:?}; killing it",
                        config.delete_timeout
                    ),
                    retry_at: recheck,
                    actor: Some(self.actor()),
                    cause: Some(Cause::timeout("delete")),
                };
                return match self
                    .inner
                    .store
                    .record_failure(&engine.id, &failure)
                    .await?
                {
                    Cas::Done => Ok(Some(recheck)),
                    _ => Ok(None),
                };
            }
            let mut keep = Reschedule::new(engine.state, Some(recheck));
            keep.keep_failures = true;
            return self.reschedule_with(engine, keep).await;
        }
        let stuck = platform
            .stuck(&engine.id)
            .await
            .unwrap_or_else(|error| format!("the engine's resource ({error})"));
        let message = format!(
            "{stuck} did not go within {:?} of its delete, even killed; the orphan scan keeps removing it",
            waited
        );
        warn!(engine = %engine.id, %message, "delete stuck");
        self.advance(
            engine,
            engine.state,
            engine.generation,
            MonitorStep::DeleteStuck,
            |t| t.with_error(message).because(Cause::timeout("kill")),
        )
        .await?;
        Ok(None)
    }

    /// Keeps the driver log's tail before the resource goes. A log that cannot be read is not
    /// there to keep; one that cannot be saved stops the step (to be tried again).
    async fn keep_logs(&self, id: &EngineId) -> Result<(), MonitorError> {
        match self.inner.platform.logs(id, MAX_KEPT_LOG).await {
            Ok(Some(text)) => self.inner.store.save_logs(id, &text).await?,
            Ok(None) => {}
            Err(error) => warn!(engine = %id, %error, "cannot read the driver log to keep it"),
        }
        Ok(())
    }

    /// Removes resources whose engine is gone, stops those of settled engines, and those left
    /// by an earlier generation of an engine. Returns how many resources were cleaned.
    pub async fn clean_orphans(&self) -> Result<usize, MonitorError> {
        // Resources first, then states: an engine created in between is not in the first list,
        // so it cannot be taken for an orphan.
        let resources = self.inner.platform.resources().await?;
        if resources.is_empty() {
            return Ok(0);
        }
        let engines: HashMap<EngineId, (EngineState, u64)> = self
            .inner
            .store
            .all_states()
            .await?
            .into_iter()
            .map(|(id, state, generation)| (id, (state, generation)))
            .collect();
        let mut cleaned = 0;
        for (id, resource_generation) in resources {
            if lock(&self.inner.in_flight).contains(&id) {
                continue;
            }
            let result = match engines.get(&id) {
                None => {
                    info!(engine = %id, "removing what is left of a deleted engine");
                    self.inner.platform.forget(&id).await.map(|()| true)
                }
                Some((state, generation)) if state.is_settled() => {
                    self.stop_orphan(&id, *state, *generation).await
                }
                // A resource of an earlier generation while the engine starts or runs on its
                // current one: nothing the engine uses (a delete of that generation touches
                // nothing later). In other states the claim holder is dealing with it (and
                // keeps its log first).
                Some((EngineState::StartInProgress | EngineState::Running, generation))
                    if resource_generation < *generation =>
                {
                    info!(engine = %id, resource_generation, generation, "removing a resource of an earlier generation");
                    self.inner
                        .platform
                        .delete(&id, resource_generation, true)
                        .await
                        .map(|()| true)
                }
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

    async fn stop_orphan(
        &self,
        id: &EngineId,
        state: EngineState,
        generation: u64,
    ) -> Result<bool, PlatformError> {
        let Some(engine) = self.inner.store.get(id).await.ok().flatten() else {
            return Ok(false);
        };
        if engine.state != state || self.inner.platform.state(&engine).await? == ResourceState::Gone
        {
            return Ok(false);
        }
        warn!(engine = %id, %state, "a resource runs for a settled engine; stopping it");
        // Fenced: a restart since then claims a later generation, which this delete leaves.
        self.inner.platform.delete(id, generation, true).await?;
        Ok(true)
    }
}
