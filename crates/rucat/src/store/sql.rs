//! The SQL both stores run, written once.
//!
//! SQLite and PostgreSQL keep the same tables and take the same statements: placeholders are
//! `$n` (SQLite reads `$n` as the n-th argument too), times are BIGINT milliseconds, casts are
//! `CAST(… AS BIGINT)`. What differs is left to each backend, as inherent items of its store
//! type that [`sql_store!`] calls:
//!
//! - `fn begin_write(&self)`: a transaction that may write (on SQLite it waits for the
//!   process's earlier writes, then takes the write lock with `BEGIN IMMEDIATE`, so that writers
//!   queue for it instead of failing to upgrade a read lock);
//! - `async fn write_conn(&self)`: the connection a write of one statement runs on (on SQLite,
//!   the write connection in the process's turn to write; a pool connection on PostgreSQL);
//! - `fn get_here(&self, id)`: the engine read on the calling thread, or `None` to read it
//!   through the pool (SQLite reads here; PostgreSQL always answers `None`);
//! - `async fn announce(conn, next_update_time)`: tell other processes an engine is due
//!   (PostgreSQL's NOTIFY; nothing on SQLite);
//! - `async fn lock_owner(conn, owner)`: serialize quota checks of one owner (an advisory lock
//!   on PostgreSQL; SQLite's write lock already does);
//! - `async fn lock_inserts(conn)`: make engine inserts commit in the order of their `seq`, which
//!   listings page by (an advisory lock on PostgreSQL; SQLite's write lock already does);
//! - `fn text(&str) -> String`: free text as the database can keep it (PostgreSQL drops NUL);
//! - `fn wake_if_due(&self, next)`: wake this process's monitors.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

/// The engine with id `$1`.
pub(super) static GET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM engines WHERE id = $1",
        super::rows::ENGINE_COLUMNS
    )
});

/// The due engines, soonest first. `next_update_time IS NOT NULL` lets both databases use the
/// partial index `engines_due`, so the cost grows with the due engines only.
pub(super) fn list_due_sql() -> String {
    format!(
        "SELECT {} FROM engines \
         WHERE next_update_time IS NOT NULL AND next_update_time <= $1 \
         ORDER BY next_update_time, seq LIMIT $2",
        super::rows::ENGINE_COLUMNS
    )
}

/// A listing's query: the engines after `after` in creation order, filtered, one more than
/// `limit` (to know whether there is a next page).
pub(super) fn list_query<'a, DB>(
    query: &'a super::ListQuery,
    after: i64,
    limit: u32,
) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut select = sqlx::QueryBuilder::<DB>::new(format!(
        "SELECT {} FROM engines WHERE seq > ",
        super::rows::ENGINE_COLUMNS
    ));
    select.push_bind(after);
    if let Some(owner) = &query.owner {
        select.push(" AND owner = ").push_bind(owner.as_str());
    }
    if let Some(state) = query.state {
        select.push(" AND state = ").push_bind(state.as_str());
    }
    select
        .push(" ORDER BY seq LIMIT ")
        .push_bind(i64::from(limit) + 1);
    select
}

/// How many engines of pool `$1` count toward its size (see [`super::WARM_STATES`]).
pub(super) static WARM_COUNT_SQL: LazyLock<String> = LazyLock::new(|| {
    let states: Vec<String> = super::WARM_STATES
        .iter()
        .map(|state| format!("'{}'", state.as_str()))
        .collect();
    format!(
        "SELECT CAST(count(*) AS BIGINT) FROM engines WHERE pool = $1 AND state IN ({})",
        states.join(", ")
    )
});

/// The key that serializes the changes of one pool's membership (refills and takes), in the
/// same lock space as an owner's quota checks.
pub(super) fn pool_lock(pool: &str) -> String {
    format!("pool {pool}")
}

/// An event's cause as the stores keep it: its JSON.
pub(super) fn cause_text(cause: &crate::engine::Cause) -> String {
    // A plain enum of strings and numbers: serializing it cannot fail.
    serde_json::to_string(cause).unwrap_or_default()
}

/// A time as the stores keep it.
pub(super) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

/// Implements [`Store`](super::Store) for a backend's store type: `$store` (with the inherent
/// items the module documentation lists and a `pool` field), `$db` its sqlx database, `$conn` its
/// connection type.
macro_rules! sql_store {
    ($store:ty, $db:ty, $conn:ty) => {
        impl $store {
            /// Records an event and drops the oldest ones beyond [`MAX_EVENTS`].
            #[allow(clippy::too_many_arguments)]
            async fn record_event(
                conn: &mut $conn,
                engine_seq: i64,
                time: DateTime<Utc>,
                from: Option<EngineState>,
                to: EngineState,
                message: Option<&str>,
                actor: Option<&Actor>,
                cause: Option<&Cause>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO engine_events \
                     (engine_seq, time, from_state, to_state, message, actor, cause) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(engine_seq)
                .bind(sql::millis(time))
                .bind(from.map(EngineState::as_str))
                .bind(to.as_str())
                .bind(message.map(Self::text))
                .bind(actor.map(|a| Self::text(&a.to_text())))
                .bind(cause.map(|c| Self::text(&sql::cause_text(c))))
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "DELETE FROM engine_events WHERE engine_seq = $1 AND seq <= \
                     (SELECT seq FROM engine_events WHERE engine_seq = $1 \
                      ORDER BY seq DESC LIMIT 1 OFFSET $2)",
                )
                .bind(engine_seq)
                .bind(events_kept())
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// What a compare-and-swap that changed nothing reports: the actual state, or that
            /// there is no such engine. Read in the failed change's transaction.
            async fn failed_cas(conn: &mut $conn, id: &EngineId) -> Result<Cas, StoreError> {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM engines WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                match state {
                    Some(state) => Ok(Cas::Conflict(state_from(id.as_str(), "state", &state)?)),
                    None => Ok(Cas::NotFound),
                }
            }

            /// Inserts `engine` (its `seq` in creation order) and its first event.
            async fn insert_row(
                conn: &mut $conn,
                engine: &Engine,
                actor: &Actor,
                cause: &Cause,
                message: Option<&str>,
            ) -> Result<(), StoreError> {
                let configs = configs_json(engine)?;
                Self::lock_inserts(conn).await?;
                let inserted = sqlx::query_scalar::<_, i64>(
                    "INSERT INTO engines (id, name, owner, engine_type, version, configs, state, \
                     error, endpoint, create_time, update_time, next_update_time, \
                     idle_timeout_minutes, secret, generation, pool) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16) RETURNING seq",
                )
                .bind(engine.id.as_str())
                .bind(engine.name.as_str())
                .bind(&engine.owner)
                .bind(engine.engine_type.as_str())
                .bind(&engine.version)
                .bind(configs)
                .bind(engine.state.as_str())
                .bind(engine.error.as_deref().map(Self::text))
                .bind(engine.endpoint.as_deref())
                .bind(sql::millis(engine.create_time))
                .bind(sql::millis(engine.update_time))
                .bind(engine.next_update_time.map(sql::millis))
                .bind(i64::from(engine.idle_timeout_minutes))
                .bind(engine.secret.as_ref().map(EngineSecret::expose))
                .bind(generation_value(engine.generation))
                .bind(engine.pool.as_deref())
                .fetch_one(&mut *conn)
                .await;
                let seq = match inserted {
                    Ok(seq) => seq,
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Err(StoreError::Duplicate(engine.id.clone()));
                    }
                    Err(e) => return Err(e.into()),
                };
                Self::record_event(
                    conn,
                    seq,
                    engine.create_time,
                    None,
                    engine.state,
                    message,
                    Some(actor),
                    Some(cause),
                )
                .await?;
                Self::announce(conn, engine.next_update_time).await
            }

            /// Removes the engine if it is in `expected` (and, when `only_warm`, still in a
            /// pool).
            async fn remove_if(
                &self,
                id: &EngineId,
                expected: EngineState,
                only_warm: bool,
            ) -> Result<Cas, StoreError> {
                let mut tx = self.begin_write().await?;
                // Events and logs go with the engine (ON DELETE CASCADE).
                let removed = sqlx::query(
                    "DELETE FROM engines WHERE id = $1 AND state = $2 \
                     AND ($3 = 0 OR pool IS NOT NULL)",
                )
                .bind(id.as_str())
                .bind(expected.as_str())
                .bind(i64::from(only_warm))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if removed == 0 {
                    let cas = Self::failed_cas(&mut tx, id).await?;
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

            /// Checks `limits` for `owner` inside a write transaction, which keeps the counts
            /// from changing before it commits. `other_than` is the engine being changed.
            async fn check_limits(
                conn: &mut $conn,
                owner: &str,
                other_than: &EngineId,
                limits: &Limits,
                adds_engine: bool,
                activates: bool,
            ) -> Result<(), StoreError> {
                if limits.is_unlimited() || !(adds_engine || activates) {
                    return Ok(());
                }
                Self::lock_owner(conn, owner).await?;
                let (total, active): (i64, i64) = sqlx::query_as(QUOTA_COUNTS_SQL)
                    .bind(owner)
                    .bind(other_than.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                limits
                    .check(count(total), count(active), adds_engine, activates)
                    .map_err(StoreError::OverQuota)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn insert_within(
                &self,
                engine: &Engine,
                limits: &Limits,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                let activates = !engine.state.is_settled();
                Self::check_limits(&mut tx, &engine.owner, &engine.id, limits, true, activates)
                    .await?;
                let actor = Actor::User(engine.owner.clone());
                Self::insert_row(&mut tx, engine, &actor, &Cause::user("create"), None).await?;
                tx.commit().await?;
                self.wake_if_due(engine.next_update_time);
                Ok(())
            }

            async fn insert_warm(
                &self,
                engine: &Engine,
                size: u32,
                actor: &Actor,
            ) -> Result<bool, StoreError> {
                let Some(pool) = engine.pool.as_deref() else {
                    return Err(StoreError::Corrupt(format!(
                        "engine {} is inserted as warm but names no pool",
                        engine.id
                    )));
                };
                let mut tx = self.begin_write().await?;
                Self::lock_owner(&mut tx, &sql::pool_lock(pool)).await?;
                let warm: i64 = sqlx::query_scalar(&sql::WARM_COUNT_SQL)
                    .bind(pool)
                    .fetch_one(&mut *tx)
                    .await?;
                if count(warm) >= size {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let message = format!("warm engine for pool {pool}");
                Self::insert_row(
                    &mut tx,
                    engine,
                    actor,
                    &Cause::monitor("pool_refill"),
                    Some(&message),
                )
                .await?;
                tx.commit().await?;
                self.wake_if_due(engine.next_update_time);
                Ok(true)
            }

            async fn take_warm(&self, take: &Take) -> Result<Option<Engine>, StoreError> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                // One take of a pool at a time: the next sees this one's engine out of the pool.
                Self::lock_owner(&mut tx, &sql::pool_lock(&take.pool)).await?;
                let candidate: Option<(String, i64, i64)> = sqlx::query_as(
                    "SELECT id, seq, create_time FROM engines \
                     WHERE pool = $1 AND state = 'Running' ORDER BY seq LIMIT 1",
                )
                .bind(take.pool.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let Some((id, seq, started)) = candidate else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                let id = id_from(id)?;
                Self::check_limits(&mut tx, &take.owner, &id, &take.limits, true, true).await?;
                let changed = sqlx::query(
                    "UPDATE engines SET owner = $1, name = $2, pool = NULL, \
                     handover_secret = secret, secret = $3, idle_timeout_minutes = $4, \
                     create_time = $5, update_time = $5 \
                     WHERE seq = $6 AND pool = $7 AND state = 'Running'",
                )
                .bind(take.owner.as_str())
                .bind(take.name.as_str())
                .bind(take.secret.expose())
                .bind(i64::from(take.idle_timeout_minutes))
                .bind(sql::millis(now))
                .bind(seq)
                .bind(take.pool.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                // The warm life is no part of the user's engine: its history, kept log and
                // activity go; its events start again with the take.
                sqlx::query("DELETE FROM engine_events WHERE engine_seq = $1")
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM engine_logs WHERE engine_seq = $1")
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM engine_activity WHERE engine_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let started = time_from(id.as_str(), "create_time", started)?;
                let message = format!(
                    "taken from warm pool {} (started {})",
                    take.pool,
                    started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                );
                Self::record_event(
                    &mut tx,
                    seq,
                    now,
                    None,
                    EngineState::Running,
                    Some(&message),
                    Some(&Actor::User(take.owner.clone())),
                    Some(&Cause::user("create")),
                )
                .await?;
                let row = sqlx::query(&sql::GET_SQL)
                    .bind(id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let engine = engine_from_row(&row)?;
                // Monitors refill the pool at once.
                Self::announce(&mut tx, Some(now)).await?;
                tx.commit().await?;
                self.wake_if_due(Some(now));
                Ok(Some(engine))
            }

            async fn warm_engines(&self) -> Result<Vec<Engine>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM engines WHERE pool IS NOT NULL ORDER BY seq",
                    ENGINE_COLUMNS
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(engine_from_row).collect()
            }

            async fn get(&self, id: &EngineId) -> Result<Option<Engine>, StoreError> {
                if let Some(read) = self.get_here(id) {
                    return read;
                }
                let row = sqlx::query(&sql::GET_SQL)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(engine_from_row).transpose()
            }

            async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
                let limit = page_size(query.limit);
                let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
                let mut select = sql::list_query::<$db>(query, after.unwrap_or(0), limit);
                let rows = select.build().fetch_all(&self.pool).await?;
                page_from_rows(&rows, limit)
            }

            async fn update_state(
                &self,
                id: &EngineId,
                t: &Transition,
            ) -> Result<Cas, StoreError> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                if let Some(limits) = &t.limits {
                    let owner: Option<String> =
                        sqlx::query_scalar("SELECT owner FROM engines WHERE id = $1")
                            .bind(id.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some(owner) = owner {
                        let activates = t.from.is_settled() && !t.to.is_settled();
                        Self::check_limits(&mut tx, &owner, id, limits, false, activates).await?;
                    }
                }
                // A transition resets the count of failed attempts (unless it keeps them); a
                // claim starts a new generation; a fenced one applies only to the generation
                // it names.
                let seq: Option<i64> = sqlx::query_scalar(
                    "UPDATE engines SET state = $1, error = $2, endpoint = $3, \
                     next_update_time = $4, update_time = $5, secret = coalesce($6, secret), \
                     handover_secret = CASE WHEN $6 IS NULL THEN handover_secret ELSE NULL END, \
                     generation = generation + $7, \
                     failures = CASE WHEN $12 = 1 THEN failures ELSE 0 END, \
                     failing_since = CASE WHEN $12 = 1 THEN failing_since ELSE NULL END \
                     WHERE id = $8 AND state = $9 \
                     AND (CAST($10 AS BIGINT) IS NULL OR next_update_time <= $10) \
                     AND (CAST($11 AS BIGINT) IS NULL OR generation = $11) \
                     AND ($13 = 0 OR pool IS NOT NULL) \
                     RETURNING seq",
                )
                .bind(t.to.as_str())
                .bind(t.error.as_deref().map(Self::text))
                .bind(t.endpoint.as_deref())
                .bind(t.next_update_time.map(sql::millis))
                .bind(sql::millis(now))
                .bind(t.secret.as_ref().map(EngineSecret::expose))
                .bind(i64::from(t.claim))
                .bind(id.as_str())
                .bind(t.from.as_str())
                .bind(t.due_by.map(sql::millis))
                .bind(t.fence.map(generation_value))
                .bind(i64::from(t.keep_failures))
                .bind(i64::from(t.only_warm))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(seq) = seq else {
                    let cas = Self::failed_cas(&mut tx, id).await?;
                    tx.rollback().await?;
                    return Ok(cas);
                };
                Self::record_event(
                    &mut tx,
                    seq,
                    now,
                    Some(t.from),
                    t.to,
                    t.message.as_deref(),
                    t.actor.as_ref(),
                    t.cause.as_ref(),
                )
                .await?;
                Self::announce(&mut tx, t.next_update_time).await?;
                tx.commit().await?;
                self.wake_if_due(t.next_update_time);
                Ok(Cas::Done)
            }

            async fn reschedule(
                &self,
                id: &EngineId,
                r: &Reschedule,
            ) -> Result<Cas, StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(
                    "UPDATE engines SET next_update_time = $1, \
                     endpoint = coalesce($2, endpoint), \
                     failures = CASE WHEN $6 = 1 THEN failures ELSE 0 END, \
                     failing_since = CASE WHEN $6 = 1 THEN failing_since ELSE NULL END \
                     WHERE id = $3 AND state = $4 \
                     AND (CAST($5 AS BIGINT) IS NULL OR generation = $5)",
                )
                .bind(r.next_update_time.map(sql::millis))
                .bind(r.endpoint.as_deref())
                .bind(id.as_str())
                .bind(r.state.as_str())
                .bind(r.fence.map(generation_value))
                .bind(i64::from(r.keep_failures))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    let cas = Self::failed_cas(&mut tx, id).await?;
                    tx.rollback().await?;
                    return Ok(cas);
                }
                Self::announce(&mut tx, r.next_update_time).await?;
                tx.commit().await?;
                self.wake_if_due(r.next_update_time);
                Ok(Cas::Done)
            }

            async fn record_failure(
                &self,
                id: &EngineId,
                f: &Failure,
            ) -> Result<Cas, StoreError> {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                let seq: Option<i64> = sqlx::query_scalar(
                    "UPDATE engines SET next_update_time = $1, failures = failures + 1, \
                     failing_since = coalesce(failing_since, $2) \
                     WHERE id = $3 AND state = $4 \
                     AND (CAST($5 AS BIGINT) IS NULL OR generation = $5) RETURNING seq",
                )
                .bind(sql::millis(f.retry_at))
                .bind(sql::millis(now))
                .bind(id.as_str())
                .bind(f.state.as_str())
                .bind(f.fence.map(generation_value))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(seq) = seq else {
                    let cas = Self::failed_cas(&mut tx, id).await?;
                    tx.rollback().await?;
                    return Ok(cas);
                };
                Self::record_event(
                    &mut tx,
                    seq,
                    now,
                    Some(f.state),
                    f.state,
                    Some(&f.message),
                    f.actor.as_ref(),
                    f.cause.as_ref(),
                )
                .await?;
                tx.commit().await?;
                Ok(Cas::Done)
            }

            async fn remove(&self, id: &EngineId, expected: EngineState) -> Result<Cas, StoreError> {
                self.remove_if(id, expected, false).await
            }

            async fn remove_warm(
                &self,
                id: &EngineId,
                expected: EngineState,
            ) -> Result<Cas, StoreError> {
                self.remove_if(id, expected, true).await
            }

            async fn list_due(
                &self,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<Engine>, StoreError> {
                let rows = sqlx::query(&sql::list_due_sql())
                    .bind(sql::millis(now))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(engine_from_row).collect()
            }

            async fn all_states(
                &self,
            ) -> Result<Vec<(EngineId, EngineState, u64)>, StoreError> {
                let rows = sqlx::query("SELECT id, state, generation FROM engines ORDER BY seq")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(id_state_generation).collect()
            }

            async fn count_by_state(&self) -> Result<Vec<(EngineState, u64)>, StoreError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT state, count(*) FROM engines GROUP BY state")
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter()
                    .map(|(state, n)| {
                        let n = u64::try_from(*n).unwrap_or(0);
                        Ok((state_from("(count by state)", "state", state)?, n))
                    })
                    .collect()
            }

            async fn events(&self, id: &EngineId) -> Result<Option<Vec<EngineEvent>>, StoreError> {
                // One statement, so that the engine and its events are read from one snapshot.
                // An engine without events yields one row of NULLs.
                let rows = sqlx::query(
                    "SELECT ev.seq AS event_seq, ev.time, ev.from_state, ev.to_state, ev.message, \
                     ev.actor, ev.cause \
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

            /// Replaces the engine's saved log with the tail of `logs`. Does nothing when there
            /// is no such engine (it may just have been removed).
            async fn save_logs(&self, id: &EngineId, logs: &str) -> Result<(), StoreError> {
                let mut conn = self.write_conn().await?;
                sqlx::query(
                    "INSERT INTO engine_logs (engine_seq, text, time) \
                     SELECT seq, $1, $2 FROM engines WHERE id = $3 \
                     ON CONFLICT (engine_seq) DO UPDATE SET text = excluded.text, \
                     time = excluded.time",
                )
                .bind(kept_log(logs))
                .bind(sql::millis(Utc::now()))
                .bind(id.as_str())
                .execute(&mut *conn)
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
                let now = sql::millis(Utc::now());
                let mut tx = self.begin_write().await?;
                for report in reports {
                    sqlx::query(
                        "INSERT INTO engine_activity \
                         (engine_id, proxy, in_flight, last_active, reported_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (engine_id, proxy) DO UPDATE SET \
                         in_flight = excluded.in_flight, reported_at = excluded.reported_at, \
                         last_active = CASE WHEN engine_activity.last_active IS NULL \
                           OR excluded.last_active > engine_activity.last_active \
                           THEN excluded.last_active ELSE engine_activity.last_active END",
                    )
                    .bind(report.engine.as_str())
                    .bind(Self::text(proxy))
                    .bind(i64::from(report.in_flight))
                    .bind(report.last_active.map(sql::millis))
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
                    "SELECT CAST(sum(CASE WHEN reported_at >= $1 THEN in_flight ELSE 0 END) \
                     AS BIGINT), max(last_active) FROM engine_activity WHERE engine_id = $2",
                )
                .bind(sql::millis(fresh_after))
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
    };
}

pub(super) use sql_store;
