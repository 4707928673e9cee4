//! The local platform's settings: the configuration file's `[local]` table.

use serde::Deserialize;

/// The Spark master of local engines when `[local] master` is not set.
pub const DEFAULT_MASTER: &str = "local[*]";

/// The `[local]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalFile {
    /// The Spark master of local engines (default `local[*]`).
    pub master: Option<String>,
}

impl LocalFile {
    /// The Spark master of local engines: the file's, else [`DEFAULT_MASTER`].
    pub fn master(self) -> String {
        self.master.unwrap_or_else(|| DEFAULT_MASTER.to_owned())
    }
}
