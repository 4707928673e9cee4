//! `kube_requests_per_pass`: Kubernetes API requests per monitor pass with `--engines` (1 000)
//! Running engines, against the in-process Kubernetes API double.
//!
//! Every engine is Running in a SQLite store and has a ready driver pod in the double. Before
//! each pass every engine is made due (outside the measurement), and the health check interval
//! is an hour, so a pass checks each engine's pod exactly once. Two platforms, side by side on
//! the same store and double:
//!
//! - `watch`: Rucat's Kubernetes platform (pod state from one watch);
//! - `get per check`: the same platform, but each check asks the API for the pod (what a
//!   platform without a watch would do).
//!
//! Per platform: one unmeasured pass (it starts the watch), then `--passes` (20) passes. Each
//! pass counts the state checks the monitor made, the API requests other than watches, and its
//! own time. Reported: medians per pass, and the watch requests (list and watch calls of the
//! reflector) over the whole run, the unmeasured pass included.
//!
//! Flags: `--engines N` (1000), `--passes N` (20).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_double::KubeDouble;
use rucat::engine::{Engine, EngineId, EngineState};
use rucat::monitor::{Monitor, MonitorConfig};
use rucat::platform::kubernetes::{
    objects, pod_state, DriverSpec, KubernetesConfig, KubernetesPlatform,
};
use rucat::platform::{Platform, PlatformError, ResourceState};
use rucat::store::conformance::sample_engine;
use rucat::store::sqlite::SqliteStore;
use rucat::store::{Reschedule, Store};
use rucat_bench::{flag, machine_line, median, ms, print_table};
use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

const NS: &str = "spark";
const VERSION: &str = "3.5.3";

fn config() -> KubernetesConfig {
    KubernetesConfig {
        versions: vec![VERSION.to_owned()],
        ..KubernetesConfig::default()
    }
}

/// Counts the monitor's state checks; with `get_each`, answers them with one GET per check.
struct Counting {
    inner: KubernetesPlatform,
    pods: kube::Api<Pod>,
    get_each: bool,
    checks: AtomicUsize,
}

#[async_trait]
impl Platform for Counting {
    fn versions(&self) -> &[String] {
        self.inner.versions()
    }
    async fn create(&self, engine: &Engine) -> Result<(), PlatformError> {
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
    /// Spark Connect checks are not Kubernetes API requests; no driver serves here.
    async fn probe(&self, _engine: &Engine, _endpoint: &str) -> Result<(), String> {
        Ok(())
    }
    async fn state(&self, engine: &Engine) -> Result<ResourceState, PlatformError> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if !self.get_each {
            return self.inner.state(engine).await;
        }
        let name = objects::object_name(&engine.id);
        match self.pods.get_opt(&name).await {
            Ok(Some(pod)) => Ok(pod_state(
                &pod,
                &objects::endpoint(&engine.id, NS, &config()),
            )),
            Ok(None) => Ok(ResourceState::Gone),
            Err(error) => Err(PlatformError::Inspect(error.to_string())),
        }
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

async fn client(double: &KubeDouble) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::from_yaml(&double.kubeconfig_yaml(NS))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

struct Row {
    checks: f64,
    requests: f64,
    pass_ms: f64,
    watches: usize,
}

/// Makes every engine due now.
async fn all_due(store: &dyn Store, ids: &[EngineId]) -> Result<(), Error> {
    for id in ids {
        store
            .reschedule(id, &Reschedule::new(EngineState::Running, Some(Utc::now())))
            .await?;
    }
    Ok(())
}

async fn measure(
    double: &KubeDouble,
    store: Arc<dyn Store>,
    ids: &[EngineId],
    get_each: bool,
    passes: usize,
) -> Result<Row, Error> {
    let client = client(double).await?;
    let platform = Arc::new(Counting {
        inner: KubernetesPlatform::new(client.clone(), NS.to_owned(), config()),
        pods: kube::Api::namespaced(client, NS),
        get_each,
        checks: AtomicUsize::new(0),
    });
    let monitor = Monitor::new(
        store.clone(),
        platform.clone(),
        MonitorConfig {
            health_check_interval: Duration::from_secs(3600),
            batch: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ..MonitorConfig::default()
        },
    );
    double.reset_requests();
    all_due(store.as_ref(), ids).await?;
    monitor.pass().await?;
    let (mut checks, mut requests, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..passes {
        all_due(store.as_ref(), ids).await?;
        let before = double.requests().len();
        platform.checks.store(0, Ordering::Relaxed);
        let started = Instant::now();
        monitor.pass().await?;
        times.push(ms(started.elapsed()));
        checks.push(platform.checks.load(Ordering::Relaxed) as f64);
        let during = double.requests();
        requests.push(during[before..].iter().filter(|r| !r.watch).count() as f64);
    }
    let all = double.requests();
    Ok(Row {
        checks: median(&checks),
        requests: median(&requests),
        pass_ms: median(&times),
        watches: all
            .iter()
            .filter(|r| r.watch || (r.method == "GET" && r.path.ends_with("/pods")))
            .count(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let engines: usize = flag("engines", 1000);
    let passes: usize = flag("passes", 20);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await?);
    let double = KubeDouble::start().await;

    let mut ids = Vec::new();
    let ready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    for i in 0..engines {
        let mut engine = sample_engine(&format!("e{i}"));
        engine.state = EngineState::Running;
        engine.endpoint = Some(objects::endpoint(&engine.id, NS, &config()));
        engine.next_update_time = Some(Utc::now());
        store.insert(&engine).await?;
        ids.push(engine.id.clone());
        let pod = objects::driver_pod(&DriverSpec::from(&engine), NS, &config());
        double.insert_pod(NS, serde_json::to_value(pod)?);
        double.set_pod_status(NS, &objects::object_name(&engine.id), ready.clone());
    }

    println!("{}", machine_line());
    println!(
        "{engines} Running engines, each with a ready driver pod; {passes} passes per platform\n"
    );
    let mut rows = Vec::new();
    for (label, get_each) in [("watch (Rucat)", false), ("GET per check", true)] {
        let row = measure(&double, store.clone(), &ids, get_each, passes).await?;
        rows.push(vec![
            label.to_owned(),
            format!("{:.0}", row.checks),
            format!("{:.0}", row.requests),
            format!("{}", row.watches),
            format!("{:.1}", row.pass_ms),
        ]);
    }
    print_table(
        &[
            "platform",
            "checks / pass (median)",
            "API requests / pass beyond watches (median)",
            "list + watch requests (whole run)",
            "pass time ms (median)",
        ],
        &rows,
    );
    Ok(())
}
