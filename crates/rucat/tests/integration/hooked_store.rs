//! A store wrapper with hooks, shared by the monitor's and the pools' tests.

use std::sync::Arc;

use rucat::engine::{EngineId, EngineState};
use rucat::store::StoreError;

/// The real store, seen by a test: `save_logs` fails while `refuse_logs` is set (an outage of
/// the store while the monitor keeps a driver log); every `list_due` that returned is counted in
/// `due_reads` (a monitor's pass has read its due list); a read of the pools
/// ([`Store::warm_engines`](rucat::store::Store::warm_engines)) waits, once it has read them,
/// on `warm_gate` when one is set (what it read is then stale: the test sends on the first
/// half when the read is done and goes on when the second half is sent to); and every warm
/// engine added is counted in `warm_inserted`. Everything else goes to the real store.
pub struct HookedStore {
    inner: Arc<dyn rucat::store::Store>,
    pub refuse_logs: std::sync::atomic::AtomicBool,
    pub due_reads: tokio::sync::watch::Sender<usize>,
    pub warm_gate: std::sync::Mutex<Option<Gate>>,
    pub warm_inserted: std::sync::atomic::AtomicUsize,
}

/// What a read of the pools tells when it has read them, and waits for before it returns.
pub type Gate = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

impl HookedStore {
    pub fn new(inner: Arc<dyn rucat::store::Store>) -> Self {
        HookedStore {
            inner,
            refuse_logs: std::sync::atomic::AtomicBool::new(false),
            due_reads: tokio::sync::watch::Sender::new(0),
            warm_gate: std::sync::Mutex::new(None),
            warm_inserted: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl rucat::store::Store for HookedStore {
    async fn insert_within(
        &self,
        engine: &rucat::engine::Engine,
        limits: &rucat::engine::quota::Limits,
    ) -> Result<(), StoreError> {
        self.inner.insert_within(engine, limits).await
    }
    async fn get(&self, id: &EngineId) -> Result<Option<rucat::engine::Engine>, StoreError> {
        self.inner.get(id).await
    }
    async fn insert_warm(
        &self,
        engine: &rucat::engine::Engine,
        size: u32,
        actor: &rucat::engine::Actor,
    ) -> Result<bool, StoreError> {
        let added = self.inner.insert_warm(engine, size, actor).await;
        if matches!(added, Ok(true)) {
            self.warm_inserted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        added
    }
    async fn take_warm(
        &self,
        take: &rucat::store::Take,
    ) -> Result<Option<rucat::engine::Engine>, StoreError> {
        self.inner.take_warm(take).await
    }
    async fn warm_engines(&self) -> Result<Vec<rucat::engine::Engine>, StoreError> {
        let warm = self.inner.warm_engines().await;
        let gate = self
            .warm_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some((read, go)) = gate {
            let _ = read.send(());
            let _ = go.await;
        }
        warm
    }
    async fn list(
        &self,
        query: &rucat::store::ListQuery,
    ) -> Result<rucat::store::Page, StoreError> {
        self.inner.list(query).await
    }
    async fn update_state(
        &self,
        id: &EngineId,
        transition: &rucat::store::Transition,
    ) -> Result<rucat::store::Cas, StoreError> {
        self.inner.update_state(id, transition).await
    }
    async fn reschedule(
        &self,
        id: &EngineId,
        reschedule: &rucat::store::Reschedule,
    ) -> Result<rucat::store::Cas, StoreError> {
        self.inner.reschedule(id, reschedule).await
    }
    async fn record_failure(
        &self,
        id: &EngineId,
        failure: &rucat::store::Failure,
    ) -> Result<rucat::store::Cas, StoreError> {
        self.inner.record_failure(id, failure).await
    }
    async fn remove(
        &self,
        id: &EngineId,
        expected: EngineState,
    ) -> Result<rucat::store::Cas, StoreError> {
        self.inner.remove(id, expected).await
    }
    async fn remove_warm(
        &self,
        id: &EngineId,
        expected: EngineState,
    ) -> Result<rucat::store::Cas, StoreError> {
        self.inner.remove_warm(id, expected).await
    }
    async fn list_due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<Vec<rucat::engine::Engine>, StoreError> {
        let due = self.inner.list_due(now, limit).await;
        self.due_reads.send_modify(|n| *n += 1);
        due
    }
    async fn all_states(&self) -> Result<Vec<(EngineId, EngineState, u64)>, StoreError> {
        self.inner.all_states().await
    }
    async fn count_by_state(&self) -> Result<Vec<(EngineState, u64)>, StoreError> {
        self.inner.count_by_state().await
    }
    async fn events(
        &self,
        id: &EngineId,
    ) -> Result<Option<Vec<rucat::engine::EngineEvent>>, StoreError> {
        self.inner.events(id).await
    }
    async fn save_logs(&self, id: &EngineId, logs: &str) -> Result<(), StoreError> {
        if self.refuse_logs.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unreachable {
                url: "sqlite://test".into(),
                reason: "disk I/O error while keeping the log".into(),
            });
        }
        self.inner.save_logs(id, logs).await
    }
    async fn logs(&self, id: &EngineId) -> Result<Option<String>, StoreError> {
        self.inner.logs(id).await
    }
    async fn report_activity(
        &self,
        proxy: &str,
        reports: &[rucat::store::ActivityReport],
    ) -> Result<(), StoreError> {
        self.inner.report_activity(proxy, reports).await
    }
    async fn activity(
        &self,
        id: &EngineId,
        fresh_after: chrono::DateTime<chrono::Utc>,
    ) -> Result<rucat::store::Activity, StoreError> {
        self.inner.activity(id, fresh_after).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn wake_ups(&self) -> Arc<tokio::sync::Notify> {
        self.inner.wake_ups()
    }
}
