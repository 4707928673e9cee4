//! `claim_latency`: how long from `POST /engines` being sent until the monitor has claimed the
//! new engine (the `WaitToStart → TriggerStart` compare-and-swap) and calls the platform's
//! `create`.
//!
//! In process: a real SQLite store in a temporary directory, the real REST server
//! (`rucat::server::serve`) on 127.0.0.1, and a real `Monitor` with the default configuration
//! (2 s safety-net poll), over an in-memory platform that records the instant `create` is called.
//! Requests are sequential: each waits for its claim, then the engine is stopped and deleted
//! (also waited for) so that every request starts from an idle monitor.
//!
//! A second, smaller part measures how promptly the monitor comes back to an engine it
//! rescheduled: the platform answers `Starting` to the first `--cadence-checks` state checks (3)
//! of each new engine, then `Running`; `POST` → `Running` should then take about
//! `checks × start_check_interval` (200 ms by default), not `checks × poll_interval` (2 s).
//!
//! Flags: `--requests N` (default 500), `--warmup N` (20), `--budget-secs S` (300),
//! `--cadence-requests N` (5), `--cadence-checks N` (3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rucat::engine::{Engine, EngineId, EngineState};
use rucat::monitor::{Monitor, MonitorConfig};
use rucat::platform::memory::MemoryPlatform;
use rucat::platform::{Platform, PlatformError, ResourceState};
use rucat::server::{self, ApiContext};
use rucat::shutdown;
use rucat::store::sqlite::SqliteStore;
use rucat::store::Store;
use rucat_bench::{flag, machine_line, ms, percentile, post_engine, print_table, Posted};
use tokio::sync::mpsc;

const VERSION: &str = "4.3.0";
/// How long one request may wait for its claim.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an engine of the cadence part may take to be `Running`.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the clean-up of one engine may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The in-memory platform, recording when `create` is called for which engine.
struct Recording {
    inner: MemoryPlatform,
    created: mpsc::UnboundedSender<(EngineId, Instant)>,
}

#[async_trait]
impl Platform for Recording {
    fn versions(&self) -> &[String] {
        self.inner.versions()
    }

    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
        let _ = self.created.send((engine.id.clone(), Instant::now()));
        self.inner.create(engine).await
    }

    async fn delete(
        &self,
        id: &EngineId,
        generation: u64,
        force: bool,
    ) -> Result<(), PlatformError> {
        self.inner.delete(id, generation, force).await
    }

    async fn probe(&self, engine: &Engine, endpoint: &str) -> Result<(), String> {
        self.inner.probe(engine, endpoint).await
    }

    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        self.inner.state(engine).await
    }

    async fn logs(&self, id: &EngineId, max_bytes: usize) -> Result<Option<String>, PlatformError> {
        self.inner.logs(id, max_bytes).await
    }

    async fn resources(&self) -> Result<Vec<(EngineId, u64)>, PlatformError> {
        self.inner.resources().await
    }

    async fn forget(&self, id: &EngineId) -> Result<(), PlatformError> {
        self.inner.forget(id).await
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Sample {
    /// POST sent → `create` called.
    claim: Duration,
    /// POST sent → 201 received.
    response: Duration,
}

struct Bench {
    http: reqwest::Client,
    base: String,
    store: Arc<dyn Store>,
    created: mpsc::UnboundedReceiver<(EngineId, Instant)>,
}

impl Bench {
    async fn one(&mut self) -> Result<Sample, Error> {
        let Posted { id, sent, answered } = post_engine(&self.http, &self.base, VERSION).await?;
        let id = EngineId::parse(&id).ok_or("POST /engines answered a malformed id")?;

        let claimed = tokio::time::timeout(CLAIM_TIMEOUT, async {
            while let Some((created, at)) = self.created.recv().await {
                if created == id {
                    return Some(at);
                }
            }
            None
        })
        .await
        .map_err(|_| format!("engine {id} not claimed within {CLAIM_TIMEOUT:?}"))?
        .ok_or("the platform went away")?;

        tokio::time::timeout(CLEANUP_TIMEOUT, self.clean_up(&id))
            .await
            .map_err(|_| format!("engine {id} not cleaned up within {CLEANUP_TIMEOUT:?}"))??;
        Ok(Sample {
            claim: claimed.saturating_duration_since(sent),
            response: answered - sent,
        })
    }

    /// POST sent → the engine is `Running` (read from the store every millisecond).
    async fn until_running(&mut self) -> Result<Duration, Error> {
        let Posted { id, sent, .. } = post_engine(&self.http, &self.base, VERSION).await?;
        let id = EngineId::parse(&id).ok_or("POST /engines answered a malformed id")?;
        let running = tokio::time::timeout(RUNNING_TIMEOUT, async {
            loop {
                let engine = self.store.get(&id).await?.ok_or("engine vanished")?;
                if engine.state == EngineState::Running {
                    return Ok::<_, Error>(sent.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .map_err(|_| format!("engine {id} not Running within {RUNNING_TIMEOUT:?}"))??;
        while self.created.try_recv().is_ok() {}
        tokio::time::timeout(CLEANUP_TIMEOUT, self.clean_up(&id))
            .await
            .map_err(|_| format!("engine {id} not cleaned up within {CLEANUP_TIMEOUT:?}"))??;
        Ok(running)
    }

    /// Stops the engine, waits until it is `Terminated`, deletes it.
    async fn clean_up(&self, id: &EngineId) -> Result<(), Error> {
        let url = format!("{}/engines/{id}", self.base);
        // The monitor may still hold the claim (409): try again.
        loop {
            let status = self.http.post(format!("{url}/stop")).send().await?.status();
            if status == reqwest::StatusCode::ACCEPTED {
                break;
            }
            if status != reqwest::StatusCode::CONFLICT {
                return Err(format!("stop answered {status}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        loop {
            let engine = self.store.get(id).await?.ok_or("engine vanished")?;
            if engine.state == EngineState::Terminated {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let status = self.http.delete(&url).send().await?.status();
        if status != reqwest::StatusCode::NO_CONTENT {
            return Err(format!("delete answered {status}").into());
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let requests: usize = flag("requests", 500);
    let warmup: usize = flag("warmup", 20);
    let budget = Duration::from_secs(flag("budget-secs", 300));
    let cadence_requests: usize = flag("cadence-requests", 5);
    let cadence_checks: u32 = flag("cadence-checks", 3);

    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
    let (tx, created) = mpsc::unbounded_channel();
    let memory = MemoryPlatform::new();
    let platform = Arc::new(Recording {
        inner: memory.clone(),
        created: tx,
    });
    let config = MonitorConfig::default();
    let poll_interval = config.poll_interval;
    let start_check_interval = config.start_check_interval;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let context = ApiContext::new(store.clone(), vec![VERSION.to_owned()]);
    let (trigger, shutdown) = shutdown::channel();
    let server = tokio::spawn(server::serve(listener, context, shutdown.clone()));
    let monitor = tokio::spawn(Monitor::new(store.clone(), platform, config).run(shutdown));

    let mut bench = Bench {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: format!("http://{addr}"),
        store,
        created,
    };

    let started = Instant::now();
    for _ in 0..warmup {
        bench.one().await?;
    }
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        if started.elapsed() > budget {
            eprintln!("time budget of {budget:?} spent; stopping early");
            break;
        }
        samples.push(bench.one().await?);
    }
    let elapsed = started.elapsed();

    memory.set_polls_until_ready(cadence_checks);
    let cadence_started = Instant::now();
    let mut cadence = Vec::with_capacity(cadence_requests);
    for _ in 0..cadence_requests {
        if cadence_started.elapsed() > budget {
            eprintln!("time budget of {budget:?} spent; stopping the cadence part early");
            break;
        }
        cadence.push(ms(bench.until_running().await?));
    }

    trigger.fire();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(40), monitor).await;

    let claims: Vec<f64> = samples.iter().map(|s| ms(s.claim)).collect();
    let responses: Vec<f64> = samples.iter().map(|s| ms(s.response)).collect();
    let over_50 = claims.iter().filter(|&&c| c > 50.0).count();
    let polled = claims
        .iter()
        .filter(|&&c| c >= ms(poll_interval) / 2.0)
        .count();

    println!(
        "### claim_latency — {} sequential requests ({} warm-up), {}; monitor poll interval {:?}; took {:.1} s\n",
        samples.len(),
        warmup,
        machine_line(),
        poll_interval,
        elapsed.as_secs_f64()
    );
    let row = |name: &str, v: &[f64]| {
        vec![
            name.to_owned(),
            format!("{:.2}", percentile(v, 50.0)),
            format!("{:.2}", percentile(v, 90.0)),
            format!("{:.2}", percentile(v, 99.0)),
            format!("{:.2}", percentile(v, 100.0)),
        ]
    };
    print_table(
        &["ms", "p50", "p90", "p99", "max"],
        &[
            row("POST sent → create called (claim)", &claims),
            row("POST sent → 201 received", &responses),
        ],
    );
    println!(
        "\nclaims over 50 ms: {over_50}; claims over half the poll interval (found by polling, not by a wake-up): {polled}"
    );
    println!(
        "\n#### start-check cadence — {} engines, each `Starting` for its first {cadence_checks} checks; start_check_interval {:?}, poll_interval {:?}\n",
        cadence.len(),
        start_check_interval,
        poll_interval
    );
    let expected = ms(start_check_interval) * f64::from(cadence_checks);
    print_table(
        &[
            "ms",
            "p50",
            "max",
            "expected ≈ checks × start_check_interval",
        ],
        &[vec![
            "POST sent → Running".to_owned(),
            format!("{:.0}", percentile(&cadence, 50.0)),
            format!("{:.0}", percentile(&cadence, 100.0)),
            format!("{expected:.0}"),
        ]],
    );
    Ok(())
}
