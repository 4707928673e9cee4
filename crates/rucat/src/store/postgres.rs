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

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Postgres;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::rows::*;
use super::sql;
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

/// The advisory lock class of quota checks (the second key is the owner's hash): every change
/// checked against one owner's limits takes it, so their counts cannot interleave.
const QUOTA_LOCK_CLASS: i32 = 0x7275_6361; // "ruca"
/// The advisory lock class of engine inserts (one lock, second key 0).
const INSERT_LOCK_CLASS: i32 = 0x7275_6369; // "ruci"

impl PostgresStore {
    /// A transaction (READ COMMITTED: a conditional write waits for a racing one and re-checks).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// A connection of the pool (concurrent writes are PostgreSQL's to order).
    async fn write_conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// Every read goes through the pool.
    fn get_here(&self, _id: &EngineId) -> Option<Result<Option<Engine>, StoreError>> {
        None
    }

    /// Announces that an engine is due, to every listening store, when the transaction commits.
    async fn announce(
        conn: &mut PgConnection,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        if due_now(next) {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Takes `owner`'s quota lock until the transaction ends.
    async fn lock_owner(conn: &mut PgConnection, owner: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(QUOTA_LOCK_CLASS)
            .bind(owner)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Takes the lock of engine inserts until the transaction ends, so that inserts commit in
    /// the order of their `seq`. Without it, a create that took a lower `seq` could commit after
    /// a listing had paged past it (`seq > cursor`), and that listing would skip it.
    async fn lock_inserts(conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(INSERT_LOCK_CLASS)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// PostgreSQL text cannot hold NUL characters; they are dropped from free text.
    fn text(text: &str) -> String {
        text.replace('\0', "")
    }
}

sql::sql_store!(PostgresStore, Postgres, PgConnection);

/// A throwaway database on a PostgreSQL server, for tests and benchmarks: created empty under a
/// unique name, dropped (with its connections) when this value is dropped.
#[cfg(feature = "testing")]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

#[cfg(feature = "testing")]
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
#[cfg(any(test, feature = "testing"))]
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

#[cfg(feature = "testing")]
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
