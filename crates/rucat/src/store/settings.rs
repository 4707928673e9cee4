//! The store's settings: its URL and pool size from flags or the environment, the rest from the
//! configuration file's `[database]` table.

use std::path::Path;

use serde::Deserialize;

use super::{DatabaseUrl, StoreOptions};
use crate::config::{millis, ConfigError};

/// The store's flags and environment variables; `None` when neither is given.
// The field docs are `--help` text: `[table]` names a table of the configuration file, and
// `<data-dir>` a placeholder.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DatabaseArgs {
    /// Store URL: sqlite://PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB to share one store
    /// between several servers and monitors [default: sqlite://<data-dir>/rucat.db]
    #[arg(
        long,
        env = "RUCAT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Most connections this process opens to the store [default: 8 for SQLite, 10 for
    /// PostgreSQL]
    #[arg(long, env = "RUCAT_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<u32>,
}

/// The `[database]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseFile {
    /// The most connections each process opens to the store.
    pub max_connections: Option<u32>,
    /// How long a request waits for a free connection before it is answered 503.
    pub acquire_timeout_ms: Option<u64>,
    /// Whether monitors hear of new work through LISTEN/NOTIFY on PostgreSQL (default true).
    pub push_wake_ups: Option<bool>,
}

impl DatabaseUrl {
    /// The URL given (by a flag, the environment or the file), else a SQLite file in the data
    /// directory.
    pub fn or_default(given: Option<String>, data_dir: &Path) -> Self {
        DatabaseUrl::new(
            given.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("rucat.db").display())),
        )
    }
}

impl StoreOptions {
    /// The pool size of the flag or environment (`max_connections`), else of the file; the rest
    /// from the file, else the defaults.
    pub fn resolve(max_connections: Option<u32>, file: &DatabaseFile) -> Result<Self, ConfigError> {
        let defaults = StoreOptions::default();
        let max_connections = max_connections.or(file.max_connections);
        if max_connections == Some(0) {
            return Err(ConfigError::Invalid {
                name: "database.max_connections",
                message: "must be greater than 0".into(),
            });
        }
        Ok(StoreOptions {
            max_connections,
            acquire_timeout: millis(
                "database.acquire_timeout_ms",
                file.acquire_timeout_ms,
                defaults.acquire_timeout,
            )?,
            push_wake_ups: file.push_wake_ups.unwrap_or(defaults.push_wake_ups),
        })
    }
}
