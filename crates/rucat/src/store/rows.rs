//! Reading engine records out of database rows, for every SQL store.
//!
//! Both stores keep the same columns with the same types: text, and times as 64-bit integer
//! milliseconds since the Unix epoch (UTC). A value that does not decode is reported as a corrupt
//! record naming the engine and the column, never a panic. The rows are sqlx's of either store,
//! or rusqlite's (the SQLite store's point reads): anything that reads a column by name
//! ([`Columns`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Decode, Row, Type};

use super::StoreError;
use crate::engine::{Actor, Engine, EngineId, EngineName, EngineSecret, EngineState, EngineType};

/// The columns [`engine_from_row`] reads, in a `SELECT` on `engines`.
pub(super) const ENGINE_COLUMNS: &str = "seq, id, name, owner, engine_type, version, configs, \
                                         state, error, endpoint, create_time, update_time, \
                                         next_update_time, idle_timeout_minutes, secret, \
                                         generation, failures, failing_since, pool, \
                                         handover_secret";

/// The page size of a listing that asks for none.
pub(super) const DEFAULT_PAGE: u32 = 50;

pub(super) fn corrupt(id: &str, what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("engine {id}: {what}"))
}

/// A column value that every kind of row decodes: text, integers, and either of them or NULL.
pub(super) trait Value:
    for<'r> Decode<'r, Sqlite>
    + Type<Sqlite>
    + for<'r> Decode<'r, Postgres>
    + Type<Postgres>
    + rusqlite::types::FromSql
{
}

impl<T> Value for T where
    T: for<'r> Decode<'r, Sqlite>
        + Type<Sqlite>
        + for<'r> Decode<'r, Postgres>
        + Type<Postgres>
        + rusqlite::types::FromSql
{
}

/// A row whose columns are read by name.
pub(super) trait Columns {
    /// The value of column `name`, or why it does not decode.
    fn value<T: Value>(&self, name: &str) -> Result<T, String>;
}

impl Columns for SqliteRow {
    fn value<T: Value>(&self, name: &str) -> Result<T, String> {
        self.try_get(name).map_err(|e| e.to_string())
    }
}

impl Columns for PgRow {
    fn value<T: Value>(&self, name: &str) -> Result<T, String> {
        self.try_get(name).map_err(|e| e.to_string())
    }
}

pub(super) fn column<R, T>(row: &R, id: &str, name: &str) -> Result<T, StoreError>
where
    R: Columns,
    T: Value,
{
    row.value(name)
        .map_err(|e| corrupt(id, format_args!("column {name}: {e}")))
}

pub(super) fn state_from(id: &str, column: &str, state: &str) -> Result<EngineState, StoreError> {
    state
        .parse()
        .map_err(|e| corrupt(id, format_args!("{column}: {e}")))
}

pub(super) fn time_from(id: &str, column: &str, millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| corrupt(id, format_args!("{column} {millis} is out of range")))
}

/// A stored name or type is one admission accepted: one that no longer parses is corrupt.
fn name_from(id: &str, name: &str) -> Result<EngineName, StoreError> {
    EngineName::parse(name).map_err(|e| corrupt(id, format_args!("column name: {e}")))
}

fn type_from(id: &str, engine_type: &str) -> Result<EngineType, StoreError> {
    engine_type
        .parse()
        .map_err(|e| corrupt(id, format_args!("column engine_type: {e}")))
}

pub(super) fn id_from(id: String) -> Result<EngineId, StoreError> {
    EngineId::parse(&id).ok_or_else(|| corrupt(&id, "malformed engine id"))
}

/// The row's id, before anything else is read (so that errors can name the engine).
pub(super) fn row_id<R: Columns>(row: &R) -> Result<String, StoreError> {
    row.value("id")
        .map_err(|e| StoreError::Corrupt(format!("engine row with an unreadable id: {e}")))
}

pub(super) fn engine_from_row<R: Columns>(row: &R) -> Result<Engine, StoreError> {
    let id = row_id(row)?;
    let configs: String = column(row, &id, "configs")?;
    let configs: BTreeMap<String, String> = serde_json::from_str(&configs)
        .map_err(|e| corrupt(&id, format_args!("column configs: {e}")))?;
    let state: String = column(row, &id, "state")?;
    let name: String = column(row, &id, "name")?;
    let engine_type: String = column(row, &id, "engine_type")?;
    let next_update_time: Option<i64> = column(row, &id, "next_update_time")?;
    let idle_timeout_minutes: i64 = column(row, &id, "idle_timeout_minutes")?;
    let secret: Option<String> = column(row, &id, "secret")?;
    let generation: i64 = column(row, &id, "generation")?;
    let failures: i64 = column(row, &id, "failures")?;
    let failing_since: Option<i64> = column(row, &id, "failing_since")?;
    let handover_secret: Option<String> = column(row, &id, "handover_secret")?;
    Ok(Engine {
        pool: column(row, &id, "pool")?,
        handover_secret: handover_secret.map(EngineSecret::from_stored),
        generation: u64::try_from(generation)
            .map_err(|_| corrupt(&id, format_args!("generation {generation} is negative")))?,
        failures: count(failures),
        failing_since: failing_since
            .map(|t| time_from(&id, "failing_since", t))
            .transpose()?,
        idle_timeout_minutes: u32::try_from(idle_timeout_minutes).map_err(|_| {
            corrupt(
                &id,
                format_args!("idle_timeout_minutes {idle_timeout_minutes} is out of range"),
            )
        })?,
        secret: secret.map(EngineSecret::from_stored),
        name: name_from(&id, &name)?,
        owner: column(row, &id, "owner")?,
        engine_type: type_from(&id, &engine_type)?,
        version: column(row, &id, "version")?,
        state: state_from(&id, "state", &state)?,
        error: column(row, &id, "error")?,
        configs,
        endpoint: column(row, &id, "endpoint")?,
        create_time: time_from(&id, "create_time", column(row, &id, "create_time")?)?,
        update_time: time_from(&id, "update_time", column(row, &id, "update_time")?)?,
        next_update_time: next_update_time
            .map(|t| time_from(&id, "next_update_time", t))
            .transpose()?,
        id: id_from(id)?,
    })
}

/// Reads a page of listing rows: at most `limit` engines, and the cursor of the next page when
/// the query returned more (it asks for `limit + 1`).
pub(super) fn page_from_rows<R: Columns>(
    rows: &[R],
    limit: u32,
) -> Result<super::Page, StoreError> {
    let limit = limit as usize;
    let more = rows.len() > limit;
    let mut engines = Vec::with_capacity(rows.len().min(limit));
    let mut last_seq = None;
    for row in rows.iter().take(limit) {
        let engine = engine_from_row(row)?;
        last_seq = Some(column::<R, i64>(row, engine.id.as_str(), "seq")?);
        engines.push(engine);
    }
    Ok(super::Page {
        engines,
        next_cursor: if more {
            last_seq.map(|seq| seq.to_string())
        } else {
            None
        },
    })
}

/// The `(id, state, generation)` of each row, for `all_states`.
pub(super) fn id_state_generation<R: Columns>(
    row: &R,
) -> Result<(EngineId, EngineState, u64), StoreError> {
    let id = row_id(row)?;
    let state: String = column(row, &id, "state")?;
    let state = state_from(&id, "state", &state)?;
    let generation: i64 = column(row, &id, "generation")?;
    let generation = u64::try_from(generation)
        .map_err(|_| corrupt(&id, format_args!("generation {generation} is negative")))?;
    Ok((id_from(id)?, state, generation))
}

/// Reads one row of the events query (an engine left-joined with its events): `None` for the
/// row of NULLs an engine without events yields.
pub(super) fn event_from_row<R: Columns>(
    row: &R,
    id: &str,
) -> Result<Option<crate::engine::EngineEvent>, StoreError> {
    let Some(to) = column::<R, Option<String>>(row, id, "to_state")? else {
        return Ok(None);
    };
    let time: i64 = column(row, id, "time")?;
    let from: Option<String> = column(row, id, "from_state")?;
    let actor: Option<String> = column(row, id, "actor")?;
    let cause: Option<String> = column(row, id, "cause")?;
    let seq: i64 = column(row, id, "event_seq")?;
    let from = from
        .map(|from| state_from(id, "event from_state", &from))
        .transpose()?;
    let to = state_from(id, "event to_state", &to)?;
    Ok(Some(crate::engine::EngineEvent {
        id: u64::try_from(seq)
            .map_err(|_| corrupt(id, format_args!("event seq {seq} is negative")))?,
        event_type: crate::engine::EventType::of(from, to),
        time: time_from(id, "event time", time)?,
        from,
        to,
        cause: cause
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|_| corrupt(id, format_args!("event cause {text:?}")))
            })
            .transpose()?,
        message: column(row, id, "message")?,
        actor: actor
            .map(|text| {
                Actor::from_text(&text)
                    .ok_or_else(|| corrupt(id, format_args!("event actor {text:?}")))
            })
            .transpose()?,
    }))
}

/// Reads `(in_flight sum over fresh reports, max last_active)` as the activity query returns
/// them (both may be NULL when there is no report).
pub(super) fn activity_from(
    in_flight: Option<i64>,
    last_active: Option<i64>,
    id: &str,
) -> Result<super::Activity, StoreError> {
    Ok(super::Activity {
        in_flight: in_flight.map(count).unwrap_or(0),
        last_active: last_active
            .map(|ms| time_from(id, "last_active", ms))
            .transpose()?,
    })
}

/// An owner's engines other than one (`$1` the owner, `$2` the engine's id): how many in all,
/// and how many are active (neither `Terminated` nor `ErrorClean`). `$n` placeholders read the
/// same in SQLite and PostgreSQL.
pub(super) const QUOTA_COUNTS_SQL: &str = "SELECT CAST(count(*) AS BIGINT), \
     CAST(coalesce(sum(CASE WHEN state IN ('Terminated', 'ErrorClean') THEN 0 ELSE 1 END), 0) \
     AS BIGINT) FROM engines WHERE owner = $1 AND id <> $2";

/// A generation as the stores keep it (BIGINT; generations never get near its limit).
pub(super) fn generation_value(generation: u64) -> i64 {
    i64::try_from(generation).unwrap_or(i64::MAX)
}

/// A count from the database as the limits compare it.
pub(super) fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Parses a listing cursor: the decimal `seq` of the last engine of the previous page.
pub(super) fn parse_cursor(cursor: &str) -> Result<i64, StoreError> {
    let invalid = || StoreError::InvalidCursor(cursor.to_owned());
    if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    cursor.parse().map_err(|_| invalid())
}

/// The page size a listing asking for `limit` gets.
pub(super) fn page_size(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(super::MAX_PAGE),
    }
}

/// The configs as the JSON text both stores keep.
pub(super) fn configs_json(engine: &Engine) -> Result<String, StoreError> {
    serde_json::to_string(&engine.configs)
        .map_err(|e| corrupt(engine.id.as_str(), format_args!("configs: {e}")))
}

/// How many events an engine keeps, as a bind value.
pub(super) fn events_kept() -> i64 {
    // MAX_EVENTS is a small constant; the conversion cannot fail in practice.
    i64::try_from(super::MAX_EVENTS).unwrap_or(i64::MAX)
}

/// Whether a write with this due time should wake monitors now.
pub(super) fn due_now(next: Option<DateTime<Utc>>) -> bool {
    next.is_some_and(|next| next <= Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_decimal_sequence_numbers() {
        assert_eq!(parse_cursor("0").ok(), Some(0));
        assert_eq!(parse_cursor("42").ok(), Some(42));
        for bad in ["", "-1", "+1", "1.5", "abc", " 1", "99999999999999999999"] {
            assert!(
                matches!(parse_cursor(bad), Err(StoreError::InvalidCursor(c)) if c == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_and_types_that_do_not_parse_are_corrupt() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            name_from(id, "etl-1").map(|n| n.to_string()).ok(),
            Some("etl-1".into())
        );
        assert_eq!(type_from(id, "Spark").ok(), Some(EngineType::Spark));
        for result in [
            name_from(id, "a b").map(drop),
            type_from(id, "Flink").map(drop),
        ] {
            assert!(
                matches!(&result, Err(StoreError::Corrupt(message)) if message.contains(id)),
                "{result:?}"
            );
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(u32::MAX), super::super::MAX_PAGE);
    }
}
