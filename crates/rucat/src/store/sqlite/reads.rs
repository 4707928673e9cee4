//! Point reads of the SQLite store, made on the calling thread.
//!
//! A statement sent through the sqlx pool runs on the connection's worker thread: the caller
//! hands it over and waits to be woken with the answer. For a primary-key lookup (microseconds
//! in SQLite) those hand-offs cost many times the read. [`Readers`] runs such reads on read-only
//! connections of its own instead, on the thread that asks, and keeps a few of them open.
//!
//! Nothing is cached: each statement is a read transaction of its own on the WAL, so it sees
//! every write committed before it started, by this process or another one on the same file, as
//! a read through the pool would.
//!
//! A read here never waits. Its connection does not retry when SQLite reports the database busy
//! (a rare moment, e.g. while another connection recovers the WAL): that read, like any read
//! here that fails before it has its row, is not answered, and the caller sends it through the
//! pool, which waits and reports errors as for every other statement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::super::rows::{engine_from_row, Columns, Value, ENGINE_COLUMNS};
use super::super::sql::GET_SQL;
use super::super::StoreError;
use crate::engine::{Engine, EngineId};

/// How many idle connections are kept open at most, on a machine of up to this many cores (one
/// per core beyond: reads here overlap at most as many times as there are threads reading).
const MIN_KEPT: usize = 4;

/// Read-only connections to one database file, for reads on the calling thread.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// The most idle connections kept.
    keep: usize,
    /// Set when the file cannot be opened this way, or when the store is closed: every read then
    /// goes through the pool.
    off: AtomicBool,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            keep: cores.max(MIN_KEPT),
            off: AtomicBool::new(false),
        }
    }

    /// Closes the idle connections; later reads go through the pool.
    pub(super) fn close(&self) {
        self.off.store(true, Ordering::Release);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The engine `id` (`Some(Ok(None))` when there is none), or `None` when the read could not
    /// be made here.
    pub(super) fn engine(&self, id: &EngineId) -> Option<Result<Option<Engine>, StoreError>> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(&GET_SQL)?;
            let mut rows = select.query([id.as_str()])?;
            Ok(rows.next()?.map(|row| engine_from_row(&EngineRow(row))))
        })
        .map(Option::transpose)
    }

    /// Runs `read` on an idle connection (opening one if none is idle). `None` when it failed.
    fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        if self.off.load(Ordering::Acquire) {
            return None;
        }
        let conn = match self.take() {
            Some(conn) => conn,
            None => self.open()?,
        };
        match read(&conn) {
            Ok(value) => {
                self.put_back(conn);
                Some(value)
            }
            Err(error) => {
                // A busy database is a passing state; anything else may be the connection's.
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                    self.put_back(conn);
                }
                tracing::trace!(%error, "read on the calling thread failed; reading through the pool");
                None
            }
        }
    }

    fn take(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep && !self.off.load(Ordering::Acquire) {
            idle.push(conn);
        }
    }

    /// Opens a read-only connection that never waits for a lock; on failure, turns reads here
    /// off for good.
    fn open(&self) -> Option<Connection> {
        let opened = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.busy_timeout(Duration::ZERO)?;
            Ok(conn)
        });
        match opened {
            Ok(conn) => Some(conn),
            Err(error) => {
                tracing::debug!(%error, path = %self.path.display(),
                    "cannot open the database read-only; every read goes through the pool");
                self.off.store(true, Ordering::Release);
                None
            }
        }
    }
}

/// The names of the columns of [`GET_SQL`], in order.
static ENGINE_COLUMN_NAMES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| ENGINE_COLUMNS.split(',').map(str::trim).collect());

/// A row of [`GET_SQL`], its columns found by their place in the statement (rusqlite finds a
/// column by name by asking SQLite for the name of each column in turn).
struct EngineRow<'a, 'stmt>(&'a rusqlite::Row<'stmt>);

impl Columns for EngineRow<'_, '_> {
    fn value<T: Value>(&self, name: &str) -> Result<T, String> {
        let index = ENGINE_COLUMN_NAMES
            .iter()
            .position(|column| *column == name)
            .ok_or_else(|| format!("no column {name:?} in the query"))?;
        self.0.get(index).map_err(|e| e.to_string())
    }
}
