//! The SQLite store (embedded default).
use super::*;
pub struct SqliteStore;
impl SqliteStore {
    pub async fn open(_url: &str) -> Result<Self, StoreError> {
        todo!()
    }
}
#[async_trait]
impl Store for SqliteStore {
    async fn insert(&self, _engine: &Engine) -> Result<(), StoreError> {
        todo!()
    }
    async fn get(&self, _id: &EngineId) -> Result<Option<Engine>, StoreError> {
        todo!()
    }
    async fn list(&self, _query: &ListQuery) -> Result<Page, StoreError> {
        todo!()
    }
    async fn update_state(&self, _id: &EngineId, _t: &Transition) -> Result<Cas, StoreError> {
        todo!()
    }
    async fn reschedule(
        &self,
        _id: &EngineId,
        _s: EngineState,
        _n: Option<DateTime<Utc>>,
    ) -> Result<Cas, StoreError> {
        todo!()
    }
    async fn remove(&self, _id: &EngineId, _e: EngineState) -> Result<Cas, StoreError> {
        todo!()
    }
    async fn list_due(&self, _now: DateTime<Utc>, _limit: u32) -> Result<Vec<Engine>, StoreError> {
        todo!()
    }
    async fn all_states(&self) -> Result<Vec<(EngineId, EngineState)>, StoreError> {
        todo!()
    }
    async fn events(&self, _id: &EngineId) -> Result<Option<Vec<EngineEvent>>, StoreError> {
        todo!()
    }
    async fn save_logs(&self, _id: &EngineId, _logs: &str) -> Result<(), StoreError> {
        todo!()
    }
    async fn logs(&self, _id: &EngineId) -> Result<Option<String>, StoreError> {
        todo!()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        todo!()
    }
    fn wake_ups(&self) -> Arc<Notify> {
        todo!()
    }
}
