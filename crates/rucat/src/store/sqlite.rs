//! The SQLite store (embedded default).
//!
//! One database file, opened in WAL mode so that readers never wait for the writer. Every write of
//! more than one statement runs in a `BEGIN IMMEDIATE` transaction: it takes the write lock first
//! (waiting up to the busy timeout), so that concurrent writers (in this process or another) queue
//! instead of failing when a deferred transaction tries to upgrade its read lock. A compare-and-swap
//! is one conditional `UPDATE`/`DELETE`; only when it changes nothing is the actual state read, in
//! the same transaction.
//!
//! The writes of one store run one at a time on a connection of their own, queueing in the
//! process rather than in SQLite's busy handler (`sqlite/writes.rs`). Reads of one engine by id
//! run on the calling thread, on read-only connections of their own (`sqlite/reads.rs`), instead
//! of hopping to a pool connection's worker thread and back. Other reads use the pool.

mod reads;
mod writes;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Sqlite;
use tokio::sync::MappedMutexGuard;

use super::rows::*;
use super::sql;
use super::*;
use reads::Readers;
use writes::{WriteTransaction, Writer};

/// The most connections the pool opens for reads (writes have a connection of their own).
const MAX_CONNECTIONS: u32 = 8;
/// How long a statement waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    pool: SqlitePool,
    wake_ups: Arc<Notify>,
    /// The connection every write runs on, one write at a time.
    writer: Writer,
    /// Point reads on the calling thread (none for an in-memory database, which only the pool's
    /// connections see).
    readers: Option<Readers>,
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
        let mut readers = None;
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
            readers = Some(Readers::new(file.to_path_buf()));
        }

        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(MAX_CONNECTIONS))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(|e| fail(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let writer = Writer::open(&connect, pool.clone(), options.acquire_timeout)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tracing::debug!(url, "opened the SQLite store");

        Ok(SqliteStore {
            pool,
            wake_ups: Arc::new(Notify::new()),
            writer,
            readers,
        })
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        if let Some(readers) = &self.readers {
            readers.close();
        }
        self.writer.close().await;
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

impl SqliteStore {
    /// A write transaction, holding this process's turn to write and SQLite's write lock from
    /// its start.
    async fn begin_write(&self) -> Result<WriteTransaction<'_>, sqlx::Error> {
        self.writer.begin().await
    }

    /// The connection a write of one statement runs on: the write connection, in this process's
    /// turn to write.
    async fn write_conn(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, StoreError> {
        Ok(self.writer.turn().await?)
    }

    /// The engine read on the calling thread; `None` to read it through the pool.
    fn get_here(&self, id: &EngineId) -> Option<Result<Option<Engine>, StoreError>> {
        self.readers.as_ref()?.engine(id)
    }

    /// Nothing to tell other processes: they poll (wake-ups reach this process only).
    async fn announce(
        _conn: &mut SqliteConnection,
        _next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to lock: a write transaction already holds the database's one write lock.
    async fn lock_owner(_conn: &mut SqliteConnection, _owner: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing to lock: writers already commit one at a time, in the order they took `seq`.
    async fn lock_inserts(_conn: &mut SqliteConnection) -> Result<(), StoreError> {
        Ok(())
    }

    /// SQLite keeps any text.
    fn text(text: &str) -> String {
        text.to_owned()
    }
}

sql::sql_store!(SqliteStore, Sqlite, SqliteConnection);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::sample_engine;
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

        // The very queries the store runs.
        let due = plan(&store, &sql::list_due_sql(), 2).await;
        assert!(due.contains("engines_due"), "{due}");
        assert!(!due.contains("TEMP B-TREE"), "{due}");

        let by_state = ListQuery {
            state: Some(EngineState::Running),
            ..ListQuery::default()
        };
        let by_state = sql::list_query::<Sqlite>(&by_state, 0, 50);
        let by_state = plan(&store, by_state.sql(), 3).await;
        assert!(by_state.contains("engines_state"), "{by_state}");
        assert!(!by_state.contains("TEMP B-TREE"), "{by_state}");

        let by_owner = ListQuery {
            owner: Some("alice".into()),
            ..ListQuery::default()
        };
        let by_owner = sql::list_query::<Sqlite>(&by_owner, 0, 50);
        let by_owner = plan(&store, by_owner.sql(), 3).await;
        assert!(by_owner.contains("engines_owner"), "{by_owner}");
        assert!(!by_owner.contains("TEMP B-TREE"), "{by_owner}");
    }

    #[tokio::test]
    async fn reads_by_id_are_answered_on_the_calling_thread_and_fresh() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("rucat.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let other = SqliteStore::open(&url).await.expect("open again");
        let engine = sample_engine("here");

        let missing = store.get_here(&engine.id).expect("read here");
        assert!(missing.expect("read").is_none());

        store.insert(&engine).await.expect("insert");
        let got = store.get_here(&engine.id).expect("read here");
        assert_eq!(got.expect("read"), Some(engine.clone()));

        // A write through another store on the same file (as another process's) shows at once.
        let t = Transition::new(EngineState::WaitToStart, EngineState::TriggerStart);
        assert_eq!(
            other.update_state(&engine.id, &t).await.expect("update"),
            Cas::Done
        );
        let got = store.get_here(&engine.id).expect("read here");
        let got = got.expect("read").expect("engine");
        assert_eq!(got.state, EngineState::TriggerStart);

        // A closed store reads nothing, here or through its pool.
        store.close().await;
        assert!(store.get_here(&engine.id).is_none());
        assert!(store.get(&engine.id).await.is_err());
    }

    #[tokio::test]
    async fn in_memory_databases_are_read_through_the_pool() {
        let store = SqliteStore::open("sqlite::memory:").await.expect("open");
        let engine = sample_engine("pooled");
        store.insert(&engine).await.expect("insert");
        assert!(store.get_here(&engine.id).is_none());
        assert_eq!(store.get(&engine.id).await.expect("get"), Some(engine));
    }
}
