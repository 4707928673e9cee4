//! Settings: from the configuration file, the environment (`RUCAT_…`) and flags, each beating
//! the one before; defaults last. The roles' (`serve`, `server`, `monitor`, `proxy`: [`Settings`])
//! and the client's (`rucat engine …`: [`ClientSettings`]) are kept apart; one file holds both.
//!
//! Each flag and its environment variable is declared once, in a clap `Args` struct ([`RoleArgs`]
//! and the groups it flattens, [`ClientArgs`]); its `Option` fields are what the flags and the
//! environment override. Each module owns its table of the file and checks it: `[database]` the store,
//! `[proxy]` the proxy, `[metrics]` the metrics, `[monitor]` the monitor, `[kubernetes]`,
//! `[simulated]` and `[local]` their platforms, `[auth]` authentication. This module reads the
//! file and merges the top-level settings (`flag_or_env.or(file).unwrap_or(default)`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rucat_client::DEFAULT_SERVER;
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::{AuthConfig, AuthFile};
use crate::engine::policy::ConfPolicy;
use crate::engine::pool::{PoolFile, Pools};
use crate::engine::quota::Quotas;
use crate::engine::IdleTimeouts;
use crate::metrics::{MetricsArgs, MetricsConfig, MetricsFile};
use crate::monitor::{MonitorConfig, MonitorFile};
use crate::platform::kubernetes::{KubernetesConfig, KubernetesFile};
use crate::platform::local::settings::LocalFile;
use crate::platform::simulated::{SimulatedConfig, SimulatedFile};
use crate::proxy::{ProxyArgs, ProxyConfig, ProxyFile};
use crate::store::{DatabaseArgs, DatabaseFile, DatabaseUrl, StoreOptions};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid listen address {0:?}: expected HOST:PORT, e.g. 127.0.0.1:3000")]
    Listen(String),
    #[error("unknown platform {0:?}; supported: local, kubernetes, simulated")]
    Platform(String),
    #[error("no data directory: set --data-dir or RUCAT_DATA_DIR (HOME is not set either)")]
    NoDataDir,
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// The roles' flags and environment variables (`None` when neither is given), in the order
/// `--help` lists them; the groups flattened in are declared next to their modules' tables.
// The field docs are `--help` text: `[table]` names a table of the configuration file, and
// `<data-dir>` a placeholder.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RoleArgs {
    /// REST listen address [default: 127.0.0.1:3000]. Without authentication ([auth] in the
    /// configuration file) only loopback addresses are accepted.
    #[arg(long, env = "RUCAT_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Data directory: SQLite file, local engines' work directories and logs [default: ~/.rucat]
    #[arg(long, env = "RUCAT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where engines run: local (Spark processes on this machine), kubernetes (a driver pod per
    /// engine, through the kubeconfig in KUBECONFIG or ~/.kube/config, or the pod's service
    /// account in a cluster; see the [kubernetes] table) or simulated (engines run nowhere;
    /// every create and delete is written to <data-dir>/simulated/journal)
    /// [default: local] [possible values: local, kubernetes, simulated]
    #[arg(long, env = "RUCAT_PLATFORM")]
    pub platform: Option<String>,
    /// Spark distribution for the local platform [default: the one scripts/setup.sh installed]
    #[arg(long, env = "SPARK_HOME", value_name = "DIR")]
    pub spark_home: Option<PathBuf>,
    /// Let the REST server listen beyond loopback although nothing authenticates its users:
    /// anyone who reaches the address manages every engine. For development behind a network
    /// policy only; configure [auth] instead.
    #[arg(long, env = "RUCAT_ALLOW_UNAUTHENTICATED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_unauthenticated: Option<bool>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The client's flags and environment variables (`rucat engine …`), taken before or after the
/// subcommand; `None` when neither is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// Rucat server the engine commands talk to [default: http://127.0.0.1:3000]
    #[arg(long, env = "RUCAT_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// API token (or OIDC JWT) the engine commands send, as Authorization: Bearer
    #[arg(long, env = "RUCAT_TOKEN", global = true, hide_env_values = true, value_parser = secret)]
    pub token: Option<SecretString>,
}

/// A credential, held so that it cannot be printed by accident.
fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text.to_owned()))
}

/// The configuration file (TOML). Every key is optional. `server` and `token` are the client's
/// (`rucat engine …`); the roles ignore them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub platform: Option<String>,
    pub spark_home: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<SecretString>,
    pub allow_unauthenticated: Option<bool>,
    pub local: LocalFile,
    pub kubernetes: KubernetesFile,
    pub simulated: SimulatedFile,
    pub database: DatabaseFile,
    pub monitor: MonitorFile,
    pub policy: Option<ConfPolicy>,
    pub auth: AuthFile,
    pub quota: Quotas,
    pub proxy: ProxyFile,
    pub idle: IdleTimeouts,
    pub metrics: MetricsFile,
    /// `[[pool]]` tables: warm pools (see [`crate::engine::pool`]).
    pub pool: Vec<PoolFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformKind {
    Local,
    /// Driver pods on Kubernetes (see [`crate::platform::kubernetes`]).
    Kubernetes,
    /// Engines that run nowhere, every create and delete written down (see
    /// [`crate::platform::simulated`]).
    Simulated,
}

/// What a client of the REST API (`rucat engine …`) talks to, resolved.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub server: String,
    pub token: Option<SecretString>,
}

impl ClientSettings {
    /// Flags/environment over the file over the default server.
    pub fn resolve(args: ClientArgs, file: &FileConfig) -> Self {
        ClientSettings {
            server: args
                .server
                .or_else(|| file.server.clone())
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
            token: args.token.or_else(|| file.token.clone()),
        }
    }
}

/// Every setting of the roles, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: DatabaseUrl,
    pub store: StoreOptions,
    pub platform: PlatformKind,
    /// `None` when neither given nor installed by the setup script.
    pub spark_home: Option<PathBuf>,
    pub local_master: String,
    pub simulated: SimulatedConfig,
    pub kubernetes: KubernetesConfig,
    pub monitor: MonitorConfig,
    pub policy: ConfPolicy,
    pub auth: AuthConfig,
    pub quotas: Quotas,
    pub proxy: ProxyConfig,
    pub idle: IdleTimeouts,
    /// Whether the REST server may listen beyond loopback although nothing authenticates its
    /// users (behind a network policy, say).
    pub allow_unauthenticated: bool,
    pub metrics: MetricsConfig,
    /// Warm pools; empty: every create starts its engine.
    pub pools: Pools,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }
}

impl Settings {
    /// Merges flags/environment over the file over the defaults.
    pub fn resolve(args: RoleArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let data_dir = match args.data_dir.or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        let database_url =
            DatabaseUrl::or_default(args.database.database_url.or(file.database_url), &data_dir);
        let platform = match args
            .platform
            .or(file.platform)
            .as_deref()
            .unwrap_or("local")
        {
            "local" => PlatformKind::Local,
            "kubernetes" => PlatformKind::Kubernetes,
            "simulated" => PlatformKind::Simulated,
            other => return Err(ConfigError::Platform(other.to_owned())),
        };
        let store = StoreOptions::resolve(args.database.database_max_connections, &file.database)?;
        let simulated = SimulatedConfig::from_file(&file.simulated)?;
        let kubernetes = KubernetesConfig::from_file(&file.kubernetes)?;
        let spark_home = args
            .spark_home
            .or(file.spark_home)
            .or_else(installed_spark_home);
        let monitor = MonitorConfig::from_file(&file.monitor)?;
        let auth = AuthConfig::from_file(&file.auth).map_err(|message| ConfigError::Invalid {
            name: "auth",
            message,
        })?;
        let proxy = ProxyConfig::resolve(args.proxy, &file.proxy)?;
        let metrics = MetricsConfig::resolve(args.metrics, &file.metrics)?;
        check_idle(&file.idle)?;
        let policy = file.policy.unwrap_or_default();
        let pools =
            Pools::from_file(&file.pool, &policy).map_err(|message| ConfigError::Invalid {
                name: "pool",
                message,
            })?;
        Ok(Settings {
            listen,
            data_dir,
            database_url,
            store,
            platform,
            spark_home,
            local_master: file.local.master(),
            simulated,
            kubernetes,
            monitor,
            policy,
            auth,
            quotas: file.quota,
            proxy,
            idle: file.idle,
            allow_unauthenticated: args
                .allow_unauthenticated
                .or(file.allow_unauthenticated)
                .unwrap_or(false),
            metrics,
            pools,
        })
    }
}

/// The `[idle]` table: a default within the maximum, and one at all when there is a maximum.
fn check_idle(idle: &IdleTimeouts) -> Result<(), ConfigError> {
    if idle.max_minutes > 0 && idle.default_minutes > idle.max_minutes {
        return Err(invalid(
            "idle.default_minutes",
            format!(
                "{} is above idle.max_minutes ({})",
                idle.default_minutes, idle.max_minutes
            ),
        ));
    }
    if idle.max_minutes > 0 && idle.default_minutes == 0 {
        return Err(invalid(
            "idle.default_minutes",
            "must be set (1 or more) when idle.max_minutes is: 0 would be never",
        ));
    }
    Ok(())
}

/// A setting in milliseconds that must be positive; `default` when it is not set.
pub(crate) fn millis(
    name: &'static str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::Invalid {
            name,
            message: "must be greater than 0".into(),
        }),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    }
}

/// The setting `name` is refused, for the reason `message`.
pub(crate) fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        message: message.into(),
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn default_data_dir() -> Option<PathBuf> {
    home().map(|home| home.join(".rucat"))
}

/// Where `scripts/setup.sh` caches its downloads.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RUCAT_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|home| home.join(".cache")))?;
    Some(cache.join("rucat"))
}

/// The Spark that `scripts/setup.sh` installed: the `pyspark` package inside a cached
/// virtualenv (`<cache>/spark-<version>/lib/python3.X/site-packages/pyspark`). The newest wins.
pub fn installed_spark_home() -> Option<PathBuf> {
    let cache = cache_dir()?;
    let mut found = Vec::new();
    for venv in std::fs::read_dir(&cache).ok()?.flatten() {
        if !venv.file_name().to_string_lossy().starts_with("spark-") {
            continue;
        }
        let Ok(libs) = std::fs::read_dir(venv.path().join("lib")) else {
            continue;
        };
        for python in libs.flatten() {
            let home = python.path().join("site-packages").join("pyspark");
            if home.join("bin").join("spark-submit").is_file() {
                found.push(home);
            }
        }
    }
    found.sort();
    found.pop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::local::settings::DEFAULT_MASTER as DEFAULT_LOCAL_MASTER;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:4000"
            data_dir = "/from/file"
            server = "http://file:1"
            [monitor]
            poll_interval_ms = 500
            [policy]
            deny = ["spark.jars"]
            "#,
        )
        .expect("valid file");
        let args = RoleArgs {
            listen: Some("127.0.0.1:5000".into()),
            ..RoleArgs::default()
        };
        let client = ClientSettings::resolve(ClientArgs::default(), &file);
        let settings = Settings::resolve(args, file).expect("resolves");
        assert_eq!(settings.listen, "127.0.0.1:5000".parse().expect("addr"));
        assert_eq!(settings.data_dir, PathBuf::from("/from/file"));
        assert_eq!(
            settings.database_url.expose(),
            "sqlite:///from/file/rucat.db"
        );
        assert_eq!(client.server, "http://file:1");
        assert_eq!(settings.monitor.poll_interval, Duration::from_millis(500));
        assert_eq!(settings.policy.deny, vec!["spark.jars".to_owned()]);
        assert_eq!(settings.local_master, DEFAULT_LOCAL_MASTER);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |args: RoleArgs| Settings::resolve(args, FileConfig::default());
        assert!(matches!(
            bad(RoleArgs {
                listen: Some("nowhere".into()),
                data_dir: Some("/d".into()),
                ..RoleArgs::default()
            }),
            Err(ConfigError::Listen(_))
        ));
        assert!(matches!(
            bad(RoleArgs {
                platform: Some("mars".into()),
                data_dir: Some("/d".into()),
                ..RoleArgs::default()
            }),
            Err(ConfigError::Platform(_))
        ));
        assert!(toml::from_str::<FileConfig>("unknown_key = 1").is_err());
        assert!(matches!(
            bad(RoleArgs {
                database: DatabaseArgs {
                    database_max_connections: Some(0),
                    ..DatabaseArgs::default()
                },
                data_dir: Some("/d".into()),
                ..RoleArgs::default()
            }),
            Err(ConfigError::Invalid {
                name: "database.max_connections",
                ..
            })
        ));
    }

    #[test]
    fn database_and_simulated_tables() {
        let file: FileConfig = toml::from_str(
            r#"
            platform = "simulated"
            data_dir = "/d"
            [database]
            max_connections = 4
            acquire_timeout_ms = 250
            push_wake_ups = false
            [simulated]
            versions = ["3.5.3", "4.0.0"]
            create_delay_ms = 30
            "#,
        )
        .expect("valid file");
        let args = RoleArgs {
            database: DatabaseArgs {
                database_max_connections: Some(6),
                ..DatabaseArgs::default()
            },
            ..RoleArgs::default()
        };
        let settings = Settings::resolve(args, file).expect("resolves");
        assert_eq!(settings.platform, PlatformKind::Simulated);
        assert_eq!(settings.store.max_connections, Some(6));
        assert_eq!(settings.store.acquire_timeout, Duration::from_millis(250));
        assert!(!settings.store.push_wake_ups);
        assert_eq!(settings.simulated.versions, ["3.5.3", "4.0.0"]);
        assert_eq!(settings.simulated.create_delay, Duration::from_millis(30));
        assert_eq!(settings.simulated.start_delay, Duration::ZERO);

        let empty: FileConfig = toml::from_str("[simulated]\nversions = []").expect("valid toml");
        assert!(matches!(
            Settings::resolve(
                RoleArgs {
                    data_dir: Some("/d".into()),
                    ..RoleArgs::default()
                },
                empty
            ),
            Err(ConfigError::Invalid {
                name: "simulated.versions",
                ..
            })
        ));
    }
}
