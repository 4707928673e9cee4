//! The PostgreSQL store, shared by any number of servers and monitors.
//!
//! A compare-and-swap is one conditional `UPDATE`/`DELETE` at READ COMMITTED: a writer racing
//! another on the same row waits for it to commit, then re-checks the condition against the new
//! row, so exactly one wins. When it changes nothing, the actual state is read in the same
//! transaction.
//!
//! Wake-ups are pushed with LISTEN/NOTIFY: every write that makes an engine due sends a
//! notification on [`CHANNEL`] in its transaction (delivered when it commits), and each store
//! keeps one connection listening, which wakes the monitors of its process. The listener
//! reconnects with back-off after the database goes away, and wakes the monitors once it is
//! back, so that nothing sent meanwhile waits for the poll.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::rows::*;
use super::*;
use crate::retry::Backoff;

/// The channel due engines are announced on.
pub const CHANNEL: &str = "rucat_engines_due";

/// The pool size when the options name none.
const DEFAULT_MAX_CONNECTIONS: u32 = 10;

pub struct PostgresStore {
    pool: PgPool,
    wake_ups: Arc<Notify>,
    listener: Option<JoinHandle<()>>,
}

impl PostgresStore {
    /// Connects to `postgres://…`, brings the schema up to date (several processes may do so at
    /// once: the migrations take an advisory lock), and starts listening for wake-ups unless
    /// `options.push_wake_ups` is off.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Open {
            url: redact(url),
            reason,
        };
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| fail(e.to_string()))?
            .application_name("rucat");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| match e {
                // The server is down or not there yet: worth waiting for.
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => StoreError::Unreachable {
                    url: redact(url),
                    reason: e.to_string(),
                },
                other => fail(other.to_string()),
            })?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        debug!(url = %redact(url), "opened the PostgreSQL store");

        let wake_ups = Arc::new(Notify::new());
        let listener = options
            .push_wake_ups
            .then(|| tokio::spawn(listen(pool.clone(), Arc::clone(&wake_ups))));
        Ok(PostgresStore {
            pool,
            wake_ups,
            listener,
        })
    }

    /// Stops listening and closes every connection.
    pub async fn close(&self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        self.pool.close().await;
    }

    /// Wakes the monitors of this process at once (others hear the notification).
    fn wake_if_due(&self, next: Option<DateTime<Utc>>) {
        if due_now(next) {
            self.wake_ups.notify_waiters();
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Keeps one connection listening on [`CHANNEL`] for as long as the store lives.
async fn listen(pool: PgPool, wake_ups: Arc<Notify>) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut lost = false;
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(mut listener) => {
                if lost {
                    info!("listening for wake-ups again");
                }
                backoff.reset();
                // Anything announced while nobody listened is due now.
                wake_ups.notify_waiters();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake_ups.notify_waiters(),
                        // The connection was lost; listen again on a new one.
                        Ok(None) => break,
                        Err(error) => {
                            warn!(%error, "wake-up listener failed");
                            break;
                        }
                    }
                }
                lost = true;
            }
            Err(error) => {
                if !lost {
                    warn!(%error, "cannot listen for wake-ups; monitors poll until it is back");
                }
                lost = true;
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Announces that an engine is due, to every listening store, when the transaction commits.
async fn announce(conn: &mut PgConnection, next: Option<DateTime<Utc>>) -> Result<(), StoreError> {
    if due_now(next) {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Records an event and drops the oldest ones beyond [`MAX_EVENTS`].
async fn record_event(
    conn: &mut PgConnection,
    engine_seq: i64,
    time: DateTime<Utc>,
    from: Option<EngineState>,
    to: EngineState,
    message: Option<&str>,
    actor: Option<&Actor>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO engine_events (engine_seq, time, from_state, to_state, message, actor) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(engine_seq)
    .bind(time.timestamp_millis())
    .bind(from.map(EngineState::as_str))
    .bind(to.as_str())
    .bind(message.map(without_nul))
    .bind(actor.map(|a| without_nul(&a.to_text())))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM engine_events WHERE engine_seq = $1 AND seq <= \
         (SELECT seq FROM engine_events WHERE engine_seq = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
    )
    .bind(engine_seq)
    .bind(events_kept())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What a compare-and-swap that changed nothing reports, read in its transaction.
async fn failed_cas(conn: &mut PgConnection, id: &EngineId) -> Result<Cas, StoreError> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM engines WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    match state {
        Some(state) => Ok(Cas::Conflict(state_from(id.as_str(), "state", &state)?)),
        None => Ok(Cas::NotFound),
    }
}

/// The advisory lock class of quota checks (the second key is the owner's hash): every change
/// checked against one owner's limits takes it, so their counts cannot interleave.
const QUOTA_LOCK_CLASS: i32 = 0x7275_6361; // "ruca"

/// Checks `limits` for `owner` inside a transaction, holding the owner's quota lock until it
/// ends. `other_than` is the engine being changed.
async fn check_limits(
    conn: &mut PgConnection,
    owner: &str,
    other_than: &EngineId,
    limits: &Limits,
    adds_engine: bool,
    activates: bool,
) -> Result<(), StoreError> {
    if limits.is_unlimited() || !(adds_engine || activates) {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(QUOTA_LOCK_CLASS)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    let (total, active): (i64, i64) = sqlx::query_as(QUOTA_COUNTS_SQL)
        .bind(owner)
        .bind(other_than.as_str())
        .fetch_one(&mut *conn)
        .await?;
    limits
        .check(count(total), count(active), adds_engine, activates)
        .map_err(StoreError::OverQuota)
}

/// PostgreSQL text cannot hold NUL characters; they are dropped from free text.
fn without_nul(text: &str) -> String {
    text.replace('\0', "")
}

/// The due engines, soonest first, read through the partial index `engines_due`.
pub(crate) fn list_due_sql() -> String {
    format!(
        "SELECT {ENGINE_COLUMNS} FROM engines \
         WHERE next_update_time IS NOT NULL AND next_update_time <= $1 \
         ORDER BY next_update_time, seq LIMIT $2"
    )
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_within(&self, engine: &Engine, limits: &Limits) -> Result<(), StoreError> {
        let configs = configs_json(engine)?;
        let mut tx = self.pool.begin().await?;
        let activates = !engine.state.is_settled();
        check_limits(&mut tx, &engine.owner, &engine.id, limits, true, activates).await?;
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO engines (id, name, owner, engine_type, version, configs, state, error, \
             endpoint, create_time, update_time, next_update_time, idle_timeout_minutes, secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING seq",
        )
        .bind(engine.id.as_str())
        .bind(&engine.name)
        .bind(&engine.owner)
        .bind(&engine.engine_type)
        .bind(&engine.version)
        .bind(configs)
        .bind(engine.state.as_str())
        .bind(engine.error.as_deref().map(without_nul))
        .bind(engine.endpoint.as_deref())
        .bind(engine.create_time.timestamp_millis())
        .bind(engine.update_time.timestamp_millis())
        .bind(engine.next_update_time.map(|t| t.timestamp_millis()))
        .bind(i64::from(engine.idle_timeout_minutes))
        .bind(engine.secret.as_ref().map(EngineSecret::expose))
        .fetch_one(&mut *tx)
        .await;
        let seq = match inserted {
            Ok(seq) => seq,
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
        announce(&mut tx, engine.next_update_time).await?;
        tx.commit().await?;
        self.wake_if_due(engine.next_update_time);
        Ok(())
    }

    async fn get(&self, id: &EngineId) -> Result<Option<Engine>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENGINE_COLUMNS} FROM engines WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(engine_from_row).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = page_size(query.limit);
        let after = query.cursor.as_deref().map(parse_cursor).transpose()?;

        let mut select = QueryBuilder::<Postgres>::new(format!(
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
        let mut tx = self.pool.begin().await?;
        if let Some(limits) = &t.limits {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT owner FROM engines WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(owner) = owner {
                let activates = t.from.is_settled() && !t.to.is_settled();
                check_limits(&mut tx, &owner, id, limits, false, activates).await?;
            }
        }
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE engines SET state = $1, error = $2, endpoint = $3, next_update_time = $4, \
             update_time = $5, secret = coalesce($9, secret) WHERE id = $6 AND state = $7 \
             AND ($8::BIGINT IS NULL OR next_update_time <= $8) RETURNING seq",
        )
        .bind(t.to.as_str())
        .bind(t.error.as_deref().map(without_nul))
        .bind(t.endpoint.as_deref())
        .bind(t.next_update_time.map(|t| t.timestamp_millis()))
        .bind(now.timestamp_millis())
        .bind(id.as_str())
        .bind(t.from.as_str())
        .bind(t.due_by.map(|t| t.timestamp_millis()))
        .bind(t.secret.as_ref().map(EngineSecret::expose))
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
        announce(&mut tx, t.next_update_time).await?;
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
        let mut tx = self.pool.begin().await?;
        let changed =
            sqlx::query("UPDATE engines SET next_update_time = $1 WHERE id = $2 AND state = $3")
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
        announce(&mut tx, next_update_time).await?;
        tx.commit().await?;
        self.wake_if_due(next_update_time);
        Ok(Cas::Done)
    }

    async fn remove(&self, id: &EngineId, expected: EngineState) -> Result<Cas, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Events and logs go with the engine (ON DELETE CASCADE).
        let removed = sqlx::query("DELETE FROM engines WHERE id = $1 AND state = $2")
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
        sqlx::query("DELETE FROM engine_activity WHERE engine_id = $1")
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
             WHERE e.id = $1 ORDER BY ev.seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.extend(event_from_row(row, id.as_str())?);
        }
        Ok(Some(events))
    }

    /// Replaces the engine's saved log with the tail of `logs`. Does nothing when there is no
    /// such engine (it may just have been removed).
    async fn save_logs(&self, id: &EngineId, logs: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO engine_logs (engine_seq, text, time) \
             SELECT seq, $1, $2 FROM engines WHERE id = $3 \
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
             WHERE e.id = $1",
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
        let mut tx = self.pool.begin().await?;
        for report in reports {
            sqlx::query(
                "INSERT INTO engine_activity (engine_id, proxy, in_flight, last_active, reported_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (engine_id, proxy) DO UPDATE SET \
                 in_flight = excluded.in_flight, reported_at = excluded.reported_at, \
                 last_active = greatest(excluded.last_active, engine_activity.last_active)",
            )
            .bind(report.engine.as_str())
            .bind(without_nul(proxy))
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
            "SELECT sum(CASE WHEN reported_at >= $1 THEN in_flight ELSE 0 END)::BIGINT, \
             max(last_active) FROM engine_activity WHERE engine_id = $2",
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

/// A throwaway database on a PostgreSQL server, for tests and benchmarks: created empty under a
/// unique name, dropped (with its connections) when this value is dropped.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Creates `rucat_<prefix>_<random>` through the server `admin_url` points at (any database
    /// the user may connect to).
    pub async fn create(admin_url: &str, prefix: &str) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Open {
            url: redact(admin_url),
            reason,
        };
        let name = format!(
            "rucat_{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = PgConnectOptions::from_str(admin_url).map_err(|e| fail(e.to_string()))?;
        let mut conn: PgConnection = sqlx::Connection::connect_with(&admin)
            .await
            .map_err(|e: sqlx::Error| fail(e.to_string()))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        let url = with_database(admin_url, &name);
        Ok(ScratchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `url` naming database `name` instead of its own (query parameters are kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..path_start])
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot be blocked on: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = PgConnectOptions::from_str(&admin_url).ok()?;
                let mut conn: PgConnection = sqlx::Connection::connect_with(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the scratch database {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scratch_urls_name_the_new_database() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
