//! What the proxy sees of each engine's use: the Spark Connect calls under way and when the last
//! one ended, kept in memory and written to the store in batches (every `interval`, not once per
//! call), one row per engine and proxy, so that several proxies' counts add up. The monitor's
//! idle auto-stop reads them; so do the proxy's counters of streams, bytes and refusals.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::warn;

use super::grpc::Reason;
use crate::engine::EngineId;
use crate::shutdown::Shutdown;
use crate::store::{ActivityReport, Store};

#[derive(Debug, Default)]
struct EngineUse {
    in_flight: u32,
    last_active: Option<DateTime<Utc>>,
    /// Changed since the last report.
    dirty: bool,
}

/// Counters of what went through the proxy since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls forwarded to an engine.
    pub streams: AtomicU64,
    /// Bytes from clients to engines (message bodies).
    pub bytes_to_engines: AtomicU64,
    /// Bytes from engines to clients.
    pub bytes_to_clients: AtomicU64,
    /// Refusals, by [`Reason`] (in the order of [`Reason::ALL`]).
    refusals: [AtomicU64; Reason::ALL.len()],
}

impl Counters {
    pub fn refused(&self, reason: Reason) {
        self.refusals[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals by gRPC status and reason.
    pub fn refusals(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|reason| {
                (
                    *reason,
                    self.refusals[*reason as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The counters in Prometheus' text format (no engine ids: nothing to protect).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, lines: Vec<(String, u64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (labels, value) in lines {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        counter(
            "rucat_proxy_streams_total",
            "Spark Connect calls forwarded to engines.",
            vec![(String::new(), self.streams.load(Ordering::Relaxed))],
        );
        counter(
            "rucat_proxy_bytes_total",
            "Bytes of message bodies forwarded, by direction.",
            vec![
                (
                    "{direction=\"to_engine\"}".to_owned(),
                    self.bytes_to_engines.load(Ordering::Relaxed),
                ),
                (
                    "{direction=\"to_client\"}".to_owned(),
                    self.bytes_to_clients.load(Ordering::Relaxed),
                ),
            ],
        );
        counter(
            "rucat_proxy_refusals_total",
            "Calls refused before anything was forwarded, by gRPC status and reason.",
            self.refusals()
                .into_iter()
                .map(|(reason, n)| {
                    let mut labels = String::new();
                    let _ = write!(
                        labels,
                        "{{code=\"{}\",reason=\"{}\"}}",
                        reason.code().as_str(),
                        reason.as_str()
                    );
                    (labels, n)
                })
                .collect(),
        );
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-engine use through this proxy.
#[derive(Debug, Default)]
pub struct Activity {
    engines: Mutex<HashMap<EngineId, EngineUse>>,
    pub counters: Counters,
}

/// One call under way: it ends when this is dropped (the response's last frame was sent, or
/// the call failed or was abandoned).
#[derive(Debug)]
pub struct Call {
    activity: Arc<Activity>,
    engine: EngineId,
}

impl Activity {
    pub fn begin(self: &Arc<Self>, engine: &EngineId) -> Call {
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let mut engines = lock(&self.engines);
        let entry = engines.entry(engine.clone()).or_default();
        entry.in_flight += 1;
        entry.dirty = true;
        Call {
            activity: Arc::clone(self),
            engine: engine.clone(),
        }
    }

    /// Calls under way through this proxy, per engine (for tests and metrics).
    pub fn in_flight(&self, engine: &EngineId) -> u32 {
        lock(&self.engines)
            .get(engine)
            .map_or(0, |entry| entry.in_flight)
    }

    /// Calls under way through this proxy, over every engine.
    pub fn total_in_flight(&self) -> u64 {
        lock(&self.engines)
            .values()
            .map(|entry| u64::from(entry.in_flight))
            .sum()
    }

    /// The reports to write: every engine that changed, or has calls under way (so that its
    /// row stays fresh). Engines with nothing under way and nothing new are forgotten once
    /// reported.
    fn take_reports(&self) -> Vec<ActivityReport> {
        let mut engines = lock(&self.engines);
        let reports = engines
            .iter_mut()
            .filter(|(_, entry)| entry.dirty || entry.in_flight > 0)
            .map(|(id, entry)| {
                entry.dirty = false;
                ActivityReport {
                    engine: id.clone(),
                    in_flight: entry.in_flight,
                    last_active: entry.last_active,
                }
            })
            .collect();
        engines.retain(|_, entry| entry.in_flight > 0);
        reports
    }

    /// Puts reports that could not be written back, to be written next time.
    fn restore(&self, reports: Vec<ActivityReport>) {
        let mut engines = lock(&self.engines);
        for report in reports {
            let entry = engines.entry(report.engine).or_default();
            entry.dirty = true;
            entry.last_active = entry.last_active.max(report.last_active);
        }
    }

    /// Writes the reports every `interval` until `shutdown`, then once more.
    pub async fn report(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        proxy: String,
        interval: Duration,
        shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.clone().wait() => true,
            };
            let reports = self.take_reports();
            if let Err(error) = store.report_activity(&proxy, &reports).await {
                warn!(%error, engines = reports.len(), "cannot record engine activity; trying again later");
                self.restore(reports);
            }
            if stopping {
                return;
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut engines = lock(&self.activity.engines);
        let entry = engines.entry(self.engine.clone()).or_default();
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_active = Some(Utc::now());
        entry.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_until_they_end_and_reported_once_changed() {
        let activity = Arc::new(Activity::default());
        let (a, b) = (EngineId::generate(), EngineId::generate());
        let first = activity.begin(&a);
        let second = activity.begin(&a);
        let other = activity.begin(&b);
        assert_eq!(activity.in_flight(&a), 2);
        drop(other);

        let mut reports = activity.take_reports();
        reports.sort_by_key(|r| r.engine == b);
        assert_eq!(reports.len(), 2);
        assert_eq!((reports[0].in_flight, reports[0].last_active), (2, None));
        assert_eq!(reports[1].in_flight, 0);
        assert!(reports[1].last_active.is_some());

        // Calls under way are reported again (their row stays fresh); an idle engine is not.
        let again = activity.take_reports();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].engine, a);

        drop(first);
        drop(second);
        let last = activity.take_reports();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].in_flight, 0);
        assert!(last[0].last_active.is_some());
        assert!(activity.take_reports().is_empty());
        assert_eq!(activity.counters.streams.load(Ordering::Relaxed), 3);
    }
}
