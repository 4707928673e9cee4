//! Prometheus metrics: counters and histograms kept in atomics, written out in Prometheus' text
//! format (version 0.0.4) when `/metrics` is read.
//!
//! Recording costs a few relaxed atomic additions: no lock on the monitor's or the platform's
//! paths, and for an HTTP request one shared read lock (taken for writing only the first time a
//! route, method and status are seen); warm pools' figures, counted per refill and take, share
//! one mutex. The engines by state are read from the store when the
//! page is read, with one `GROUP BY` query. Nothing recorded names an engine, a user or a raw
//! path: HTTP requests are labelled with the route's template (`/engines/{id}`), pools with their
//! configured names.

mod settings;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use crate::engine::{Engine, EngineId, EngineState};
use crate::platform::{Platform, PlatformError, ResourceState};
use crate::proxy::activity::Activity;
use crate::shutdown::Shutdown;
use crate::store::Store;
pub use settings::{MetricsArgs, MetricsConfig, MetricsFile};

/// The content type of the text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) of request, call and step durations.
static LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds (seconds) of the time an engine waits to be claimed.
static CLAIM_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations: a count per bucket (not cumulative; summed when written), and the
/// sum in nanoseconds.
struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the one above every bound.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's values at one moment (several may be added up).
#[derive(Clone, Default)]
struct Snapshot {
    counts: Vec<u64>,
    sum_nanos: u64,
}

impl Snapshot {
    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, other: &Snapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_nanos += other.sum_nanos;
    }
}

/// Writes Prometheus' text format.
struct Page {
    out: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (name, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(name);
            self.out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, bounds: &[f64], labels: &[(&str, &str)], s: &Snapshot) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += s.counts.get(i).copied().unwrap_or(0);
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, s.count());
        self.sample(
            &format!("{name}_sum"),
            labels,
            s.sum_nanos as f64 / 1_000_000_000.0,
        );
        self.sample(&format!("{name}_count"), labels, s.count());
    }
}

const STATES: usize = EngineState::ALL.len();

/// HTTP methods as labels: the standard ones, every other one as `other` (a client cannot grow
/// the page with made-up methods).
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "other",
];

fn method_index(method: &Method) -> u8 {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1) as u8
}

/// The route label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

struct RequestSeries {
    method: u8,
    status: u16,
    duration: Histogram,
}

/// What the monitor's step did, for `rucat_monitor_steps_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Give back a claim that timed out, or whose step failed (`Trigger*`).
    RetryClaim,
    /// Claim and create (`WaitToStart`).
    Start,
    /// Check a starting engine (`StartInProgress`).
    CheckStart,
    /// Check a running engine's health and idleness (`Running`).
    CheckRunning,
    /// Claim, keep the log, delete (`WaitToTerminate`, `ErrorWaitToClean`).
    Terminate,
    /// Check that a delete is done (`*InProgress`).
    CheckDeleted,
    /// Nothing to do but stop looking (`Terminated`, `ErrorClean`).
    Settle,
}

impl StepKind {
    const ALL: [StepKind; 7] = [
        StepKind::RetryClaim,
        StepKind::Start,
        StepKind::CheckStart,
        StepKind::CheckRunning,
        StepKind::Terminate,
        StepKind::CheckDeleted,
        StepKind::Settle,
    ];

    pub fn of(state: EngineState) -> StepKind {
        use EngineState::*;
        match state {
            TriggerStart | TriggerTermination | ErrorTriggerClean => StepKind::RetryClaim,
            WaitToStart => StepKind::Start,
            StartInProgress => StepKind::CheckStart,
            Running => StepKind::CheckRunning,
            WaitToTerminate | ErrorWaitToClean => StepKind::Terminate,
            TerminateInProgress | ErrorCleanInProgress => StepKind::CheckDeleted,
            Terminated | ErrorClean => StepKind::Settle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::RetryClaim => "retry_claim",
            StepKind::Start => "start",
            StepKind::CheckStart => "check_start",
            StepKind::CheckRunning => "check_running",
            StepKind::Terminate => "terminate",
            StepKind::CheckDeleted => "check_deleted",
            StepKind::Settle => "settle",
        }
    }
}

/// The error label of a failed step: `none` when it succeeded.
const STEP_ERRORS: [&str; 7] = [
    "none",
    "store",
    "platform_create",
    "platform_delete",
    "platform_inspect",
    "platform_setup",
    "platform_io",
];

/// What a failed monitor step failed on (its `error` label).
#[derive(Debug, Clone, Copy)]
pub enum StepFailure<'a> {
    Store,
    Platform(&'a PlatformError),
}

fn step_error_index(error: Option<StepFailure<'_>>) -> usize {
    match error {
        None => 0,
        Some(StepFailure::Store) => 1,
        Some(StepFailure::Platform(error)) => match error {
            PlatformError::Create(_) => 2,
            PlatformError::Delete(_) => 3,
            PlatformError::Inspect(_) => 4,
            PlatformError::Setup(_) => 5,
            PlatformError::Io { .. } => 6,
        },
    }
}

/// The platform calls, as `op` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlatformOp {
    Create,
    Delete,
    State,
    Probe,
    Logs,
    Resources,
    Forget,
    Stuck,
}

const PLATFORM_OPS: [PlatformOp; 8] = [
    PlatformOp::Create,
    PlatformOp::Delete,
    PlatformOp::State,
    PlatformOp::Probe,
    PlatformOp::Logs,
    PlatformOp::Resources,
    PlatformOp::Forget,
    PlatformOp::Stuck,
];

impl PlatformOp {
    fn as_str(self) -> &'static str {
        match self {
            PlatformOp::Create => "create",
            PlatformOp::Delete => "delete",
            PlatformOp::State => "state",
            PlatformOp::Probe => "probe",
            PlatformOp::Logs => "logs",
            PlatformOp::Resources => "resources",
            PlatformOp::Forget => "forget",
            PlatformOp::Stuck => "stuck",
        }
    }
}

/// One warm pool's figures.
#[derive(Debug, Clone, Default)]
struct PoolSeries {
    refills: u64,
    taken: u64,
    empty: u64,
    /// Running and starting engines at the last look (none yet: not written).
    seen: Option<(u64, u64)>,
}

struct PlatformCalls {
    errors: AtomicU64,
    duration: Histogram,
}

/// Every metric of one process.
pub struct Metrics {
    /// Where the engines by state are read from (processes that run a server or a monitor).
    store: Option<Arc<dyn Store>>,
    /// Route template → the series of its requests by method and status.
    requests: RwLock<std::collections::HashMap<String, Vec<RequestSeries>>>,
    /// Transitions applied, by `[from][to]`.
    transitions: Vec<AtomicU64>,
    pass_duration: Histogram,
    pass_errors: AtomicU64,
    /// By `[kind][error]`.
    steps: Vec<AtomicU64>,
    step_duration: Vec<Histogram>,
    claim_latency: Histogram,
    platform: Vec<PlatformCalls>,
    /// The proxy's counters, when this process runs one.
    proxy: OnceLock<Arc<Activity>>,
    /// Warm pools, by name: refills, takes, and the engines seen at the last look.
    pools: Mutex<BTreeMap<String, PoolSeries>>,
    /// Which parts record here: only their families are written.
    has_server: AtomicBool,
    has_monitor: AtomicBool,
    has_platform: AtomicBool,
    started: Instant,
}

impl Metrics {
    /// Metrics of a process; `store` is where the engines by state are read from (none: the
    /// page has no `rucat_engines`).
    pub fn new(store: Option<Arc<dyn Store>>) -> Self {
        Metrics {
            store,
            requests: RwLock::default(),
            transitions: (0..STATES * STATES).map(|_| AtomicU64::new(0)).collect(),
            pass_duration: Histogram::new(&LATENCY_BUCKETS),
            pass_errors: AtomicU64::new(0),
            steps: (0..StepKind::ALL.len() * STEP_ERRORS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            step_duration: StepKind::ALL
                .iter()
                .map(|_| Histogram::new(&LATENCY_BUCKETS))
                .collect(),
            claim_latency: Histogram::new(&CLAIM_BUCKETS),
            platform: PLATFORM_OPS
                .iter()
                .map(|_| PlatformCalls {
                    errors: AtomicU64::new(0),
                    duration: Histogram::new(&LATENCY_BUCKETS),
                })
                .collect(),
            proxy: OnceLock::new(),
            pools: Mutex::default(),
            has_server: AtomicBool::new(false),
            has_monitor: AtomicBool::new(false),
            has_platform: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// A REST router records here: the page gets the HTTP families.
    pub fn note_server(&self) {
        self.has_server.store(true, Ordering::Relaxed);
    }

    /// A monitor records here: the page gets the monitor's families.
    pub fn note_monitor(&self) {
        self.has_monitor.store(true, Ordering::Relaxed);
    }

    /// Adds the proxy's counters (streams, bytes, refusals) to the page.
    pub fn attach_proxy(&self, activity: Arc<Activity>) {
        let _ = self.proxy.set(activity);
    }

    /// A state change applied (its compare-and-swap succeeded).
    pub fn transition(&self, from: EngineState, to: EngineState) {
        self.transitions[from as usize * STATES + to as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One HTTP request answered.
    pub fn request(&self, route: &str, method: &Method, status: u16, duration: Duration) {
        let method = method_index(method);
        {
            let requests = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some(series) = requests.get(route).and_then(|all| {
                all.iter()
                    .find(|s| s.method == method && s.status == status)
            }) {
                series.duration.observe(duration);
                return;
            }
        }
        let mut requests = self.requests.write().unwrap_or_else(|p| p.into_inner());
        let all = requests.entry(route.to_owned()).or_default();
        let series = match all
            .iter()
            .position(|s| s.method == method && s.status == status)
        {
            Some(i) => &all[i],
            None => {
                all.push(RequestSeries {
                    method,
                    status,
                    duration: Histogram::new(&LATENCY_BUCKETS),
                });
                &all[all.len() - 1]
            }
        };
        series.duration.observe(duration);
    }

    /// One monitor pass (reading the due engines and handing them to steps).
    pub fn pass(&self, duration: Duration, ok: bool) {
        self.pass_duration.observe(duration);
        if !ok {
            self.pass_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One monitor step, and how it ended.
    pub fn step(&self, kind: StepKind, error: Option<StepFailure<'_>>, duration: Duration) {
        let k = kind as usize;
        self.steps[k * STEP_ERRORS.len() + step_error_index(error)].fetch_add(1, Ordering::Relaxed);
        self.step_duration[k].observe(duration);
    }

    /// A claim won, `waited` after the engine became due.
    pub fn claimed(&self, waited: Duration) {
        self.claim_latency.observe(waited);
    }

    /// A monitor added a warm engine to `pool`.
    pub fn pool_refill(&self, pool: &str) {
        self.pool_series(pool, |series| series.refills += 1);
    }

    /// A create fitting `pool` took a warm engine (`taken`), or found none ready and started
    /// cold.
    pub fn pool_take(&self, pool: &str, taken: bool) {
        self.pool_series(pool, |series| {
            if taken {
                series.taken += 1;
            } else {
                series.empty += 1;
            }
        });
    }

    /// What a monitor's last look at `pool` found: engines serving and engines starting.
    pub fn pool_seen(&self, pool: &str, running: u64, starting: u64) {
        self.pool_series(pool, |series| series.seen = Some((running, starting)));
    }

    fn pool_series(&self, pool: &str, change: impl FnOnce(&mut PoolSeries)) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        change(pools.entry(pool.to_owned()).or_default());
    }

    fn render_pools(&self, page: &mut Page) {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if pools.is_empty() {
            return;
        }
        page.family(
            "rucat_pool_refills_total",
            "counter",
            "Warm engines this process's monitor added to each pool.",
        );
        for (pool, series) in &pools {
            page.sample(
                "rucat_pool_refills_total",
                &[("pool", pool)],
                series.refills,
            );
        }
        page.family(
            "rucat_pool_takes_total",
            "counter",
            "Creates fitting each pool: result taken (a warm engine, Running at once) or empty (none was Running; started cold).",
        );
        for (pool, series) in &pools {
            page.sample(
                "rucat_pool_takes_total",
                &[("pool", pool), ("result", "taken")],
                series.taken,
            );
            page.sample(
                "rucat_pool_takes_total",
                &[("pool", pool), ("result", "empty")],
                series.empty,
            );
        }
        page.family(
            "rucat_pool_engines",
            "gauge",
            "Warm engines of each pool at this process's monitor's last look, running or starting.",
        );
        for (pool, series) in &pools {
            if let Some((running, starting)) = series.seen {
                page.sample(
                    "rucat_pool_engines",
                    &[("pool", pool), ("state", "running")],
                    running,
                );
                page.sample(
                    "rucat_pool_engines",
                    &[("pool", pool), ("state", "starting")],
                    starting,
                );
            }
        }
    }

    fn platform_call(&self, op: PlatformOp, ok: bool, duration: Duration) {
        let calls = &self.platform[op as usize];
        calls.duration.observe(duration);
        if !ok {
            calls.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The page (the engines by state read from the store now).
    pub async fn render(&self) -> String {
        let counts = match &self.store {
            Some(store) => Some(store.count_by_state().await),
            None => None,
        };
        let mut page = Page {
            out: String::with_capacity(16 * 1024),
        };
        page.family(
            "rucat_uptime_seconds",
            "gauge",
            "How long this process has been running.",
        );
        page.sample(
            "rucat_uptime_seconds",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        if let Some(counts) = counts {
            page.family(
                "rucat_store_up",
                "gauge",
                "Whether the store answered the engines-by-state query of this scrape (1) or not (0).",
            );
            page.sample("rucat_store_up", &[], u8::from(counts.is_ok()));
            match counts {
                Ok(counts) => {
                    page.family(
                        "rucat_engines",
                        "gauge",
                        "Engines in the store, by state (the same in every process sharing the store).",
                    );
                    for state in EngineState::ALL {
                        let n = counts
                            .iter()
                            .find(|(s, _)| *s == state)
                            .map_or(0, |(_, n)| *n);
                        page.sample("rucat_engines", &[("state", state.as_str())], n);
                    }
                }
                Err(error) => warn!(%error, "metrics: cannot count the engines by state"),
            }
        }
        if self.has_server.load(Ordering::Relaxed) || self.has_monitor.load(Ordering::Relaxed) {
            self.render_transitions(&mut page);
        }
        if self.has_server.load(Ordering::Relaxed) {
            self.render_requests(&mut page);
        }
        if self.has_monitor.load(Ordering::Relaxed) {
            self.render_monitor(&mut page);
        }
        if self.has_platform.load(Ordering::Relaxed) {
            self.render_platform(&mut page);
        }
        self.render_pools(&mut page);
        if let Some(activity) = self.proxy.get() {
            page.out.push_str(&activity.counters.prometheus());
            page.family(
                "rucat_proxy_calls_in_flight",
                "gauge",
                "Spark Connect calls under way through this proxy.",
            );
            page.sample(
                "rucat_proxy_calls_in_flight",
                &[],
                activity.total_in_flight(),
            );
        }
        page.out
    }

    fn render_transitions(&self, page: &mut Page) {
        page.family(
            "rucat_engine_transitions_total",
            "counter",
            "Engine state changes this process applied (its compare-and-swap succeeded), by from and to state.",
        );
        for from in EngineState::ALL {
            for to in EngineState::ALL {
                let n =
                    self.transitions[from as usize * STATES + to as usize].load(Ordering::Relaxed);
                if n > 0 {
                    page.sample(
                        "rucat_engine_transitions_total",
                        &[("from", from.as_str()), ("to", to.as_str())],
                        n,
                    );
                }
            }
        }
    }

    fn render_requests(&self, page: &mut Page) {
        // (route, method, status, snapshot), sorted for a stable page.
        let mut rows: Vec<(String, u8, u16, Snapshot)> = {
            let requests = self.requests.read().unwrap_or_else(|p| p.into_inner());
            requests
                .iter()
                .flat_map(|(route, all)| {
                    all.iter()
                        .map(move |s| (route.clone(), s.method, s.status, s.duration.snapshot()))
                })
                .collect()
        };
        rows.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        page.family(
            "rucat_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for (route, method, status, snapshot) in &rows {
            let status = status.to_string();
            page.sample(
                "rucat_http_requests_total",
                &[
                    ("route", route),
                    ("method", METHODS[usize::from(*method)]),
                    ("status", &status),
                ],
                snapshot.count(),
            );
        }
        page.family(
            "rucat_http_request_duration_seconds",
            "histogram",
            "How long HTTP requests took to answer, by route template and method.",
        );
        let mut i = 0;
        while i < rows.len() {
            let (route, method) = (&rows[i].0, rows[i].1);
            let mut total = Snapshot::default();
            while i < rows.len() && rows[i].0 == *route && rows[i].1 == method {
                total.add(&rows[i].3);
                i += 1;
            }
            page.histogram(
                "rucat_http_request_duration_seconds",
                &LATENCY_BUCKETS,
                &[("route", route), ("method", METHODS[usize::from(method)])],
                &total,
            );
        }
    }

    fn render_monitor(&self, page: &mut Page) {
        page.family(
            "rucat_monitor_pass_duration_seconds",
            "histogram",
            "How long the monitor's passes took: reading the due engines and handing them to steps.",
        );
        page.histogram(
            "rucat_monitor_pass_duration_seconds",
            &LATENCY_BUCKETS,
            &[],
            &self.pass_duration.snapshot(),
        );
        page.family(
            "rucat_monitor_pass_errors_total",
            "counter",
            "Monitor passes that could not read the due engines.",
        );
        page.sample(
            "rucat_monitor_pass_errors_total",
            &[],
            self.pass_errors.load(Ordering::Relaxed),
        );
        page.family(
            "rucat_monitor_steps_total",
            "counter",
            "Monitor steps, by kind, result (ok or error) and error (none, store, platform_*).",
        );
        for kind in StepKind::ALL {
            for (e, error) in STEP_ERRORS.iter().enumerate() {
                let n = self.steps[kind as usize * STEP_ERRORS.len() + e].load(Ordering::Relaxed);
                if n > 0 || e == 0 {
                    page.sample(
                        "rucat_monitor_steps_total",
                        &[
                            ("kind", kind.as_str()),
                            ("result", if e == 0 { "ok" } else { "error" }),
                            ("error", error),
                        ],
                        n,
                    );
                }
            }
        }
        page.family(
            "rucat_monitor_step_duration_seconds",
            "histogram",
            "How long monitor steps took, by kind.",
        );
        for kind in StepKind::ALL {
            page.histogram(
                "rucat_monitor_step_duration_seconds",
                &LATENCY_BUCKETS,
                &[("kind", kind.as_str())],
                &self.step_duration[kind as usize].snapshot(),
            );
        }
        page.family(
            "rucat_monitor_claim_latency_seconds",
            "histogram",
            "How long engines waited to be claimed by this monitor, from when they became due (a create, stop or restart) to the claim.",
        );
        page.histogram(
            "rucat_monitor_claim_latency_seconds",
            &CLAIM_BUCKETS,
            &[],
            &self.claim_latency.snapshot(),
        );
    }

    fn render_platform(&self, page: &mut Page) {
        let snapshots: Vec<Snapshot> = self
            .platform
            .iter()
            .map(|c| c.duration.snapshot())
            .collect();
        page.family(
            "rucat_platform_calls_total",
            "counter",
            "Platform calls, by operation.",
        );
        for op in PLATFORM_OPS {
            page.sample(
                "rucat_platform_calls_total",
                &[("op", op.as_str())],
                snapshots[op as usize].count(),
            );
        }
        page.family(
            "rucat_platform_call_errors_total",
            "counter",
            "Platform calls that failed, by operation (a probe fails while an engine does not answer).",
        );
        for op in PLATFORM_OPS {
            page.sample(
                "rucat_platform_call_errors_total",
                &[("op", op.as_str())],
                self.platform[op as usize].errors.load(Ordering::Relaxed),
            );
        }
        page.family(
            "rucat_platform_call_duration_seconds",
            "histogram",
            "How long platform calls took, by operation.",
        );
        for op in PLATFORM_OPS {
            page.histogram(
                "rucat_platform_call_duration_seconds",
                &LATENCY_BUCKETS,
                &[("op", op.as_str())],
                &snapshots[op as usize],
            );
        }
    }
}

/// The answer to `GET /metrics`.
pub async fn page(metrics: &Metrics) -> Response {
    let mut response = metrics.render().await.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response
}

/// Serves `GET /metrics` (and nothing else) on `listener`, without authentication, until
/// `shutdown` fires: the metrics listener of its own, for scrapers without a credential.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    async fn metrics_page(State(metrics): State<Arc<Metrics>>) -> Response {
        page(&metrics).await
    }
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_page))
        .with_state(metrics);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait())
        .await
}

/// Middleware counting every request by route template, method and status, with its duration.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    metrics.request(
        route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A platform whose every call is counted and timed.
pub struct InstrumentedPlatform {
    inner: Arc<dyn Platform>,
    metrics: Arc<Metrics>,
}

impl InstrumentedPlatform {
    pub fn wrap(inner: Arc<dyn Platform>, metrics: Arc<Metrics>) -> Arc<dyn Platform> {
        metrics.has_platform.store(true, Ordering::Relaxed);
        Arc::new(InstrumentedPlatform { inner, metrics })
    }

    fn record<T, E>(&self, op: PlatformOp, started: Instant, result: &Result<T, E>) {
        self.metrics
            .platform_call(op, result.is_ok(), started.elapsed());
    }
}

#[async_trait]
impl Platform for InstrumentedPlatform {
    fn versions(&self) -> &[String] {
        self.inner.versions()
    }

    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        let started = Instant::now();
        let result = self.inner.create(engine).await;
        self.record(PlatformOp::Create, started, &result);
        result
    }

    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError> {
        let started = Instant::now();
        let result = self.inner.delete(id, generation, force).await;
        self.record(PlatformOp::Delete, started, &result);
        result
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        let started = Instant::now();
        let result = self.inner.state(engine).await;
        self.record(PlatformOp::State, started, &result);
        result
    }

    async fn probe(&self, engine: &Engine, endpoint: &str) -> Result<(), String> {
        let started = Instant::now();
        let result = self.inner.probe(engine, endpoint).await;
        self.record(PlatformOp::Probe, started, &result);
        result
    }

    /// Not counted: one per warm engine, and a query's time is not a probe's.
    async fn warm_up(&self, engine: &Engine, endpoint: &str) -> Result<(), String> {
        self.inner.warm_up(engine, endpoint).await
    }

    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError> {
        let started = Instant::now();
        let result = self.inner.logs(id, max_bytes).await;
        self.record(PlatformOp::Logs, started, &result);
        result
    }

    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError> {
        let started = Instant::now();
        let result = self.inner.resources().await;
        self.record(PlatformOp::Resources, started, &result);
        result
    }

    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        let started = Instant::now();
        let result = self.inner.forget(id).await;
        self.record(PlatformOp::Forget, started, &result);
        result
    }

    async fn stuck(&self, id: &EngineId) -> Result<String, PlatformError> {
        let started = Instant::now();
        let result = self.inner.stuck(id).await;
        self.record(PlatformOp::Stuck, started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_requests_keyed_by_route() {
        let metrics = Metrics::new(None);
        metrics.note_server();
        metrics.request("/engines/{id}", &Method::GET, 200, Duration::from_millis(2));
        metrics.request(
            "/engines/{id}",
            &Method::GET,
            404,
            Duration::from_millis(20),
        );
        metrics.request(
            "/engines/{id}",
            &Method::from_bytes(b"BREW").expect("method"),
            405,
            Duration::ZERO,
        );
        metrics.transition(EngineState::WaitToStart, EngineState::TriggerStart);
        let page = futures_util::FutureExt::now_or_never(metrics.render()).expect("no store");
        assert!(page.contains(
            "rucat_http_requests_total{route=\"/engines/{id}\",method=\"GET\",status=\"404\"} 1\n"
        ));
        assert!(page.contains(
            "rucat_http_requests_total{route=\"/engines/{id}\",method=\"other\",status=\"405\"} 1\n"
        ));
        assert!(page.contains(
            "rucat_http_request_duration_seconds_bucket{route=\"/engines/{id}\",method=\"GET\",le=\"0.0025\"} 1\n"
        ));
        assert!(page.contains(
            "rucat_http_request_duration_seconds_bucket{route=\"/engines/{id}\",method=\"GET\",le=\"+Inf\"} 2\n"
        ));
        assert!(page.contains(
            "rucat_http_request_duration_seconds_count{route=\"/engines/{id}\",method=\"GET\"} 2\n"
        ));
        assert!(page.contains(
            "rucat_engine_transitions_total{from=\"WaitToStart\",to=\"TriggerStart\"} 1\n"
        ));
        assert!(!page.contains("rucat_engines{"), "no store, no engines");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut page = Page { out: String::new() };
        page.sample("m", &[("a", "x\"y\\z\nw")], 1);
        assert_eq!(page.out, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }
}
