//! The SQLite store (embedded default).
//!
//! One database file, opened in WAL mode so that readers never wait for the writer. Every write of
//! more than one statement runs in a `BEGIN IMMEDIATE` transaction: it takes the write lock first
//! (waiting up to the busy timeout), so that concurrent writers (in this process or another) queue
//! instead of failing when a deferred transaction tries to upgrade its read lock. A compare-and-swap
//! is one conditional `UPDATE`/`DELETE`; only when it changes nothing is the actual state read, in
//! the same transaction.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::rows::*;
use super::*;

/// The most connections the pool opens (SQLite has one writer at a time anyway).
const MAX_CONNECTIONS: u32 = 8;
/// How long a statement waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The statement that starts a write transaction.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

pub struct SqliteStore {
    pool: SqlitePool,
    wake_ups: Arc<Notify>,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database at `sqlite://PATH` and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// [`open`](Self::open) with pool options (`push_wake_ups` does not apply: wake-ups reach
    /// this process's monitors only).
    pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Open {
            url: url.to_owned(),
            reason,
        };
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| fail(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);

        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            let file = connect.get_filename();
            if file.as_os_str().is_empty() {
                return Err(fail(
                    "no database file given; expected sqlite://PATH".into(),
                ));
            }
            if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
            }
            make_private(file).map_err(|e| {
                fail(format!(
                    "cannot make {} readable by its owner only: {e}",
                    file.display()
                ))
            })?;
        }

        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(MAX_CONNECTIONS))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| fail(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        tracing::debug!(url, "opened the SQLite store");

        Ok(SqliteStore {
            pool,
            wake_ups: Arc::new(Notify::new()),
        })
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Wakes the monitors of this process if `next` is due.
    fn wake_if_due(&self, next: Option<DateTime<Utc>>) {
        if due_now(next) {
            self.wake_ups.notify_waiters();
        }
    }
}

/// Creates the database file with mode 0600 (engine records are nobody else's business), or
/// tightens an existing one and its WAL files. SQLite gives the WAL files it creates the
/// database file's mode.
fn make_private(file: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    let mut name = file.as_os_str().to_owned();
    for suffix in ["", "-wal", "-shm"] {
        name.push(suffix);
        let path = std::path::Path::new(&name);
        if suffix.is_empty() || path.exists() {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        name = file.as_os_str().to_owned();
    }
    Ok(())
}

/// Records an event and drops the oldest ones beyond [`MAX_EVENTS`].
async fn record_event(
    conn: &mut SqliteConnection,
    engine_seq: i64,
    time: DateTime<Utc>,
    from: Option<EngineState>,
    to: EngineState,
    message: Option<&str>,
    actor: Option<&Actor>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO engine_events (engine_seq, time, from_state, to_state, message, actor) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(engine_seq)
    .bind(time.timestamp_millis())
    .bind(from.map(EngineState::as_str))
    .bind(to.as_str())
    .bind(message)
    .bind(actor.map(Actor::to_text))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM engine_events WHERE engine_seq = ? AND seq <= \
         (SELECT seq FROM engine_events WHERE engine_seq = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
    )
    .bind(engine_seq)
    .bind(engine_seq)
    .bind(events_kept())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What a compare-and-swap that changed nothing reports: the actual state, or that there is no
/// such engine. Run inside the transaction of the failed change, so the answer is consistent.
async fn failed_cas(conn: &mut SqliteConnection, id: &EngineId) -> Result<Cas, StoreError> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM engines WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    match state {
        Some(state) => Ok(Cas::Conflict(state_from(id.as_str(), "state", &state)?)),
        None => Ok(Cas::NotFound),
    }
}

/// Checks `limits` for `owner` inside a write transaction (which SQLite serializes, so the
/// counts cannot change before the commit). `other_than` is the engine being changed.
async fn check_limits(
    conn: &mut SqliteConnection,
    owner: &str,
    other_than: &EngineId,
    limits: &Limits,
    adds_engine: bool,
    activates: bool,
) -> Result<(), StoreError> {
    if limits.is_unlimited() || !(adds_engine || activates) {
        return Ok(());
    }
    let (total, active): (i64, i64) = sqlx::query_as(QUOTA_COUNTS_SQL)
        .bind(owner)
        .bind(other_than.as_str())
        .fetch_one(&mut *conn)
        .await?;
    limits
        .check(count(total), count(active), adds_engine, activates)
        .map_err(StoreError::OverQuota)
}

/// The due engines, soonest first. `next_update_time IS NOT NULL` lets SQLite use the partial
/// index `engines_due`, so the cost grows with the due engines only.
fn list_due_sql() -> String {
    format!(
        "SELECT {ENGINE_COLUMNS} FROM engines \
         WHERE next_update_time IS NOT NULL AND next_update_time <= ? \
         ORDER BY next_update_time, seq LIMIT ?"
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_within(&self, engine: &Engine, limits: &Limits) -> Result<(), StoreError> {
        let configs = configs_json(engine)?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let activates = !engine.state.is_settled();
        check_limits(&mut tx, &engine.owner, &engine.id, limits, true, activates).await?;
        let inserted = sqlx::query(
            "INSERT INTO engines (id, name, owner, engine_type, version, configs, state, error, \
             endpoint, create_time, update_time, next_update_time, idle_timeout_minutes, secret) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(engine.id.as_str())
        .bind(&engine.name)
        .bind(&engine.owner)
        .bind(&engine.engine_type)
        .bind(&engine.version)
        .bind(configs)
        .bind(engine.state.as_str())
        .bind(engine.error.as_deref())
        .bind(engine.endpoint.as_deref())
        .bind(engine.create_time.timestamp_millis())
        .bind(engine.update_time.timestamp_millis())
        .bind(engine.next_update_time.map(|t| t.timestamp_millis()))
        .bind(i64::from(engine.idle_timeout_minutes))
        .bind(engine.secret.as_ref().map(EngineSecret::expose))
        .execute(&mut *tx)
        .await;
        let seq = match inserted {
            Ok(done) => done.last_insert_rowid(),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Duplicate(engine.id.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let actor = Actor::User(engine.owner.clone());
        record_event(
            &mut tx,
            seq,
            engine.create_time,
            None,
            engine.state,
            None,
            Some(&actor),
        )
        .await?;
        tx.commit().await?;
        self.wake_if_due(engine.next_update_time);
        Ok(())
    }

    async fn get(&self, id: &EngineId) -> Result<Option<Engine>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENGINE_COLUMNS} FROM engines WHERE id = ?"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(engine_from_row).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = page_size(query.limit);
        let after = query.cursor.as_deref().map(parse_cursor).transpose()?;

        let mut select = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {ENGINE_COLUMNS} FROM engines WHERE seq > "
        ));
        select.push_bind(after.unwrap_or(0));
        if let Some(owner) = &query.owner {
            select.push(" AND owner = ").push_bind(owner.as_str());
        }
        if let Some(state) = query.state {
            select.push(" AND state = ").push_bind(state.as_str());
        }
        // One more than asked, to know whether there is a next page.
        select
            .push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = select.build().fetch_all(&self.pool).await?;
        page_from_rows(&rows, limit)
    }

    async fn update_state(&self, id: &EngineId, t: &Transition) -> Result<Cas, StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        if let Some(limits) = &t.limits {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT owner FROM engines WHERE id = ?")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(owner) = owner {
                let activates = t.from.is_settled() && !t.to.is_settled();
                check_limits(&mut tx, &owner, id, limits, false, activates).await?;
            }
        }
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE engines SET state = ?, error = ?, endpoint = ?, next_update_time = ?, \
             secret = coalesce(?, secret), update_time = ? WHERE id = ? AND state = ? \
             AND (? IS NULL OR next_update_time <= ?) RETURNING seq",
        )
        .bind(t.to.as_str())
        .bind(t.error.as_deref())
        .bind(t.endpoint.as_deref())
        .bind(t.next_update_time.map(|t| t.timestamp_millis()))
        .bind(t.secret.as_ref().map(EngineSecret::expose))
        .bind(now.timestamp_millis())
        .bind(id.as_str())
        .bind(t.from.as_str())
        .bind(t.due_by.map(|t| t.timestamp_millis()))
        .bind(t.due_by.map(|t| t.timestamp_millis()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seq) = seq else {
            let cas = failed_cas(&mut tx, id).await?;
            tx.rollback().await?;
            return Ok(cas);
        };
        record_event(
            &mut tx,
            seq,
            now,
            Some(t.from),
            t.to,
            t.message.as_deref(),
            t.actor.as_ref(),
        )
        .await?;
        tx.commit().await?;
        self.wake_if_due(t.next_update_time);
        Ok(Cas::Done)
    }

    async fn reschedule(
        &self,
        id: &EngineId,
        state: EngineState,
        next_update_time: Option<DateTime<Utc>>,
    ) -> Result<Cas, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let changed =
            sqlx::query("UPDATE engines SET next_update_time = ? WHERE id = ? AND state = ?")
                .bind(next_update_time.map(|t| t.timestamp_millis()))
                .bind(id.as_str())
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed == 0 {
            let cas = failed_cas(&mut tx, id).await?;
            tx.rollback().await?;
            return Ok(cas);
        }
        tx.commit().await?;
        self.wake_if_due(next_update_time);
        Ok(Cas::Done)
    }

    async fn remove(&self, id: &EngineId, expected: EngineState) -> Result<Cas, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // Events and logs go with the engine (ON DELETE CASCADE).
        let removed = sqlx::query("DELETE FROM engines WHERE id = ? AND state = ?")
            .bind(id.as_str())
            .bind(expected.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            let cas = failed_cas(&mut tx, id).await?;
            tx.rollback().await?;
            return Ok(cas);
        }
        sqlx::query("DELETE FROM engine_activity WHERE engine_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Cas::Done)
    }

    async fn list_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Engine>, StoreError> {
        let rows = sqlx::query(&list_due_sql())
            .bind(now.timestamp_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(engine_from_row).collect()
    }

    async fn all_states(&self) -> Result<Vec<(EngineId, EngineState)>, StoreError> {
        let rows = sqlx::query("SELECT id, state FROM engines ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(id_and_state).collect()
    }

    async fn events(&self, id: &EngineId) -> Result<Option<Vec<EngineEvent>>, StoreError> {
        // One statement, so that the engine and its events are read from one snapshot. An engine
        // without events yields one row of NULLs.
        let rows = sqlx::query(
            "SELECT ev.time, ev.from_state, ev.to_state, ev.message, ev.actor \
             FROM engines e LEFT JOIN engine_events ev ON ev.engine_seq = e.seq \
             WHERE e.id = ? ORDER BY ev.seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let id = id.as_str();
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.extend(event_from_row(row, id)?);
        }
        Ok(Some(events))
    }

    /// Replaces the engine's saved log with the tail of `logs`. Does nothing when there is no
    /// such engine (it may just have been removed).
    async fn save_logs(&self, id: &EngineId, logs: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO engine_logs (engine_seq, text, time) \
             SELECT seq, ?, ? FROM engines WHERE id = ? \
             ON CONFLICT (engine_seq) DO UPDATE SET text = excluded.text, time = excluded.time",
        )
        .bind(kept_log(logs))
        .bind(Utc::now().timestamp_millis())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn logs(&self, id: &EngineId) -> Result<Option<String>, StoreError> {
        let text = sqlx::query_scalar(
            "SELECT l.text FROM engines e JOIN engine_logs l ON l.engine_seq = e.seq \
             WHERE e.id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(text)
    }

    async fn report_activity(
        &self,
        proxy: &str,
        reports: &[ActivityReport],
    ) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        for report in reports {
            sqlx::query(
                "INSERT INTO engine_activity (engine_id, proxy, in_flight, last_active, reported_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (engine_id, proxy) DO UPDATE SET \
                 in_flight = excluded.in_flight, reported_at = excluded.reported_at, \
                 last_active = max(coalesce(excluded.last_active, 0), \
                                   coalesce(engine_activity.last_active, 0))",
            )
            .bind(report.engine.as_str())
            .bind(proxy)
            .bind(i64::from(report.in_flight))
            .bind(report.last_active.map(|t| t.timestamp_millis()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn activity(
        &self,
        id: &EngineId,
        fresh_after: DateTime<Utc>,
    ) -> Result<Activity, StoreError> {
        let (in_flight, last_active): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(CASE WHEN reported_at >= ? THEN in_flight ELSE 0 END), \
             max(nullif(last_active, 0)) FROM engine_activity WHERE engine_id = ?",
        )
        .bind(fresh_after.timestamp_millis())
        .bind(id.as_str())
        .fetch_one(&self.pool)
        .await?;
        activity_from(in_flight, last_active, id.as_str())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn wake_ups(&self) -> Arc<Notify> {
        Arc::clone(&self.wake_ups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    async fn plan(store: &SqliteStore, sql: &str, binds: usize) -> String {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut explain_query = sqlx::query(&explain);
        for _ in 0..binds {
            explain_query = explain_query.bind(1_i64);
        }
        let rows = explain_query.fetch_all(&store.pool).await.expect("explain");
        rows.iter()
            .map(|row| row.try_get::<String, _>("detail").expect("detail"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn due_engines_and_filtered_listings_use_indexes() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
        let store = SqliteStore::open(&url).await.expect("open");

        let due = plan(&store, &list_due_sql(), 2).await;
        assert!(due.contains("engines_due"), "{due}");
        assert!(!due.contains("TEMP B-TREE"), "{due}");

        let by_state = format!(
            "SELECT {ENGINE_COLUMNS} FROM engines WHERE seq > ? AND state = ? ORDER BY seq LIMIT ?"
        );
        let by_state = plan(&store, &by_state, 3).await;
        assert!(by_state.contains("engines_state"), "{by_state}");
        assert!(!by_state.contains("TEMP B-TREE"), "{by_state}");

        let by_owner = format!(
            "SELECT {ENGINE_COLUMNS} FROM engines WHERE seq > ? AND owner = ? ORDER BY seq LIMIT ?"
        );
        let by_owner = plan(&store, &by_owner, 3).await;
        assert!(by_owner.contains("engines_owner"), "{by_owner}");
        assert!(!by_owner.contains("TEMP B-TREE"), "{by_owner}");
    }
}
