//! The SQLite store's writes, one at a time, on one connection.
//!
//! SQLite lets one writer in at a time, but its busy handler does not queue the others: a
//! connection that finds the write lock taken sleeps 1, 2, 5, 10, 15, 20, 25 … ms between tries,
//! and other writers take the lock in the gaps, so one unlucky write could wait tens of
//! milliseconds behind writes that each take a fraction of one. So every write of a store runs on
//! the store's one write connection, which its writers take in turn (a FIFO lock): they queue in
//! the process, and meet the busy handler only for writers of other processes. The write
//! connection also keeps every write statement prepared.
//!
//! The write connection does not checkpoint the WAL itself (SQLite would do so in the commit that
//! fills it, and sync the files there, while every write behind it waits). Every
//! [`CHECKPOINT_EVERY`] write transactions, a passive checkpoint runs on a pool connection
//! instead, beside the writes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool, SqliteTransactionManager};
use sqlx::{Connection, TransactionManager};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// The statement that starts a write transaction: it takes SQLite's write lock at once (waiting
/// up to the busy timeout for other processes), so that it cannot fail later to upgrade a read
/// lock.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// How many commits of the write connection go between two checkpoints (SQLite's own default is
/// every 1000 WAL pages, a few hundred of these commits).
const CHECKPOINT_EVERY: u32 = 128;

/// The connection the writes of one store run on.
pub(super) struct Writer {
    /// `None` once the store is closed.
    conn: Mutex<Option<SqliteConnection>>,
    /// How long a write waits for the ones before it (as long as for a connection of the pool).
    wait: Duration,
    checkpoints: Checkpoints,
}

/// Checkpoints of the WAL, on the pool, beside the writes.
struct Checkpoints {
    pool: SqlitePool,
    /// Commits since the last checkpoint started.
    commits: AtomicU32,
    running: Arc<AtomicBool>,
}

impl Checkpoints {
    /// Counts a commit; every [`CHECKPOINT_EVERY`] commits, starts a checkpoint unless one runs.
    fn committed(&self) {
        if self.commits.fetch_add(1, Ordering::Relaxed) + 1 < CHECKPOINT_EVERY {
            return;
        }
        self.commits.store(0, Ordering::Relaxed);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, running) = (self.pool.clone(), Arc::clone(&self.running));
        runtime.spawn(async move {
            if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                tracing::debug!(%error, "checkpointing the SQLite WAL failed");
            }
            running.store(false, Ordering::Release);
        });
    }
}

impl Writer {
    /// Opens the write connection; `pool` (on the same database) runs the checkpoints.
    pub(super) async fn open(
        options: &SqliteConnectOptions,
        pool: SqlitePool,
        wait: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options = options.clone().pragma("wal_autocheckpoint", "0");
        let conn = SqliteConnection::connect_with(&options).await?;
        Ok(Writer {
            conn: Mutex::new(Some(conn)),
            wait,
            checkpoints: Checkpoints {
                pool,
                commits: AtomicU32::new(0),
                running: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    /// Waits for the writes before, then closes the connection: later writes fail.
    pub(super) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            if let Err(error) = conn.close().await {
                tracing::debug!(%error, "closing the SQLite write connection failed");
            }
        }
    }

    /// The write connection, once the writes before are done: this process's turn to write,
    /// until the guard is dropped. Waiting too long fails as waiting for a pool connection does.
    pub(super) async fn turn(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, sqlx::Error> {
        let guard = tokio::time::timeout(self.wait, self.conn.lock())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        let mut conn =
            MutexGuard::try_map(guard, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)?;
        if SqliteTransactionManager::get_transaction_depth(&conn) > 0 {
            // A transaction whose start was cancelled half-way (a finished or dropped
            // `WriteTransaction` leaves none).
            SqliteTransactionManager::rollback(&mut conn).await?;
        }
        Ok(conn)
    }

    /// A write transaction, holding this process's turn to write and SQLite's write lock from
    /// its start.
    pub(super) async fn begin(&self) -> Result<WriteTransaction<'_>, sqlx::Error> {
        let mut conn = self.turn().await?;
        SqliteTransactionManager::begin(&mut conn, Some(BEGIN_WRITE.into())).await?;
        Ok(WriteTransaction {
            conn,
            open: true,
            checkpoints: &self.checkpoints,
        })
    }
}

/// A write transaction on the write connection. It reads as that connection, ends with
/// [`commit`](Self::commit) or [`rollback`](Self::rollback), and rolls back when dropped
/// unfinished (the connection runs the rollback before anything sent to it later).
pub(super) struct WriteTransaction<'a> {
    conn: MappedMutexGuard<'a, SqliteConnection>,
    open: bool,
    checkpoints: &'a Checkpoints,
}

impl WriteTransaction<'_> {
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        SqliteTransactionManager::commit(&mut self.conn).await?;
        self.open = false;
        self.checkpoints.committed();
        Ok(())
    }

    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        SqliteTransactionManager::rollback(&mut self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            SqliteTransactionManager::start_rollback(&mut self.conn);
        }
    }
}

impl std::ops::Deref for WriteTransaction<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTransaction<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}
