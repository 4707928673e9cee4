//! Settings: from the configuration file, the environment (`RUCAT_…`) and flags, each beating the
//! one before; defaults last. The flags and environment variables are declared once, in the
//! binary's command line; this module merges them with the file and the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::{AuthConfig, AuthFile};
use crate::engine::policy::ConfPolicy;
use crate::engine::quota::Quotas;
use crate::engine::{IdleTimeouts, PublicUrl};
use crate::monitor::MonitorConfig;
use crate::platform::kubernetes::{KubernetesConfig, NetworkPolicyConfig};
use crate::platform::simulated::SimulatedConfig;
use crate::proxy::tls::TlsFiles;
use crate::proxy::{ProxyConfig, ProxyFile};
use crate::store::{DatabaseUrl, StoreOptions};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:3000";
pub const DEFAULT_LOCAL_MASTER: &str = "local[*]";

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

/// Settings given by flags or the environment (clap resolves those two); `None` when neither.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub proxy_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub database_max_connections: Option<u32>,
    pub platform: Option<String>,
    pub spark_home: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<SecretString>,
    pub allow_unauthenticated: Option<bool>,
    pub metrics_listen: Option<String>,
    pub metrics_enabled: Option<bool>,
}

/// The configuration file (TOML). Every key is optional.
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
}

/// The `[metrics]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsFile {
    /// Whether metrics are kept and served (default true).
    pub enabled: Option<bool>,
    /// A listener of their own, serving `GET /metrics` without authentication.
    pub listen: Option<String>,
}

/// Prometheus metrics (see [`crate::metrics`]), resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Whether metrics are kept and served at all.
    pub enabled: bool,
    /// Where `GET /metrics` is served without authentication, besides the REST listener (where
    /// it needs an admin once authentication is on). `None`: nowhere else.
    pub listen: Option<SocketAddr>,
}

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedFile {
    pub versions: Option<Vec<String>>,
    pub create_delay_ms: Option<u64>,
    pub start_delay_ms: Option<u64>,
    pub delete_delay_ms: Option<u64>,
    /// `[MIN, MAX]` milliseconds every call waits first.
    pub latency_ms: Option<[u64; 2]>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalFile {
    /// The Spark master of local engines (default `local[*]`).
    pub master: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesFile {
    pub namespace: Option<String>,
    pub instance: Option<String>,
    pub service_account: Option<String>,
    pub executor_service_account: Option<String>,
    pub versions: Option<Vec<String>>,
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub image_pull_secrets: Option<Vec<String>>,
    pub driver_cpu: Option<String>,
    pub driver_memory: Option<String>,
    pub run_as_user: Option<i64>,
    pub cluster_domain: Option<String>,
    pub api_timeout_ms: Option<u64>,
    pub connect_address: Option<String>,
    pub network_policy: Option<NetworkPolicyConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorFile {
    pub poll_interval_ms: Option<u64>,
    pub trigger_timeout_ms: Option<u64>,
    pub start_timeout_ms: Option<u64>,
    pub start_check_interval_ms: Option<u64>,
    pub health_check_interval_ms: Option<u64>,
    pub orphan_scan_interval_ms: Option<u64>,
    pub concurrency: Option<usize>,
    pub idle_minute_ms: Option<u64>,
    pub activity_stale_ms: Option<u64>,
    pub health_timeout_ms: Option<u64>,
    pub delete_timeout_ms: Option<u64>,
    pub kill_timeout_ms: Option<u64>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
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

/// Every setting, resolved.
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
    pub server: String,
    pub token: Option<SecretString>,
    /// Whether the REST server may listen beyond loopback although nothing authenticates its
    /// users (behind a network policy, say).
    pub allow_unauthenticated: bool,
    pub metrics: MetricsConfig,
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
    pub fn resolve(overrides: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let listen_text = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let data_dir = match overrides.data_dir.or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        let database_url = DatabaseUrl::new(
            overrides
                .database_url
                .or(file.database_url)
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("rucat.db").display())),
        );
        let platform = match overrides
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
        let store = store_options(overrides.database_max_connections, &file.database)?;
        let simulated = simulated_config(&file.simulated)?;
        let kubernetes = kubernetes_config(&file.kubernetes)?;
        let spark_home = overrides
            .spark_home
            .or(file.spark_home)
            .or_else(installed_spark_home);
        let monitor = monitor_config(&file.monitor)?;
        let auth = AuthConfig::from_file(&file.auth).map_err(|message| ConfigError::Invalid {
            name: "auth",
            message,
        })?;
        let proxy = proxy_config(overrides.proxy_listen, &file.proxy)?;
        let metrics = metrics_config(
            overrides.metrics_listen,
            overrides.metrics_enabled,
            &file.metrics,
        )?;
        if file.idle.max_minutes > 0 && file.idle.default_minutes > file.idle.max_minutes {
            return Err(invalid(
                "idle.default_minutes",
                format!(
                    "{} is above idle.max_minutes ({})",
                    file.idle.default_minutes, file.idle.max_minutes
                ),
            ));
        }
        if file.idle.max_minutes > 0 && file.idle.default_minutes == 0 {
            return Err(invalid(
                "idle.default_minutes",
                "must be set (1 or more) when idle.max_minutes is: 0 would be never",
            ));
        }
        Ok(Settings {
            listen,
            data_dir,
            database_url,
            store,
            platform,
            spark_home,
            local_master: file
                .local
                .master
                .unwrap_or_else(|| DEFAULT_LOCAL_MASTER.to_owned()),
            simulated,
            kubernetes,
            monitor,
            policy: file.policy.unwrap_or_default(),
            auth,
            quotas: file.quota,
            proxy,
            idle: file.idle,
            server: overrides
                .server
                .or(file.server)
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
            token: overrides.token.or(file.token),
            allow_unauthenticated: overrides
                .allow_unauthenticated
                .or(file.allow_unauthenticated)
                .unwrap_or(false),
            metrics,
        })
    }
}

/// A setting in milliseconds that must be positive; `default` when it is not set.
fn millis(
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

fn store_options(
    max_connections: Option<u32>,
    file: &DatabaseFile,
) -> Result<StoreOptions, ConfigError> {
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

fn simulated_config(file: &SimulatedFile) -> Result<SimulatedConfig, ConfigError> {
    let defaults = SimulatedConfig::default();
    let versions = file.versions.clone().unwrap_or(defaults.versions);
    if versions.is_empty() || versions.iter().any(|v| v.trim().is_empty()) {
        return Err(ConfigError::Invalid {
            name: "simulated.versions",
            message: "must list at least one non-empty version".into(),
        });
    }
    Ok(SimulatedConfig {
        versions,
        create_delay: file
            .create_delay_ms
            .map_or(defaults.create_delay, Duration::from_millis),
        start_delay: file
            .start_delay_ms
            .map_or(defaults.start_delay, Duration::from_millis),
        delete_delay: file
            .delete_delay_ms
            .map_or(defaults.delete_delay, Duration::from_millis),
        latency: match file.latency_ms {
            Some([min, max]) if min <= max => {
                (Duration::from_millis(min), Duration::from_millis(max))
            }
            Some(_) => {
                return Err(invalid(
                    "simulated.latency_ms",
                    "must be [MIN, MAX] with MIN <= MAX",
                ))
            }
            None => defaults.latency,
        },
    })
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        message: message.into(),
    }
}

/// A DNS-1123 label (namespaces, names of services and secrets): at most 63 lowercase letters,
/// digits and '-', starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (service account names, the cluster domain): labels joined by '.'.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A resource quantity as Kubernetes writes them: `500m`, `2`, `1.5`, `2Gi`, `1e3`.
fn is_quantity(s: &str) -> bool {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

fn kubernetes_config(file: &KubernetesFile) -> Result<KubernetesConfig, ConfigError> {
    let defaults = KubernetesConfig::default();
    if let Some(namespace) = &file.namespace {
        if !is_dns_label(namespace) {
            return Err(invalid(
                "kubernetes.namespace",
                format!("{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"),
            ));
        }
    }
    let instance = file.instance.clone().unwrap_or(defaults.instance);
    let label_value_ok = (1..=63).contains(&instance.len())
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && instance.starts_with(|c: char| c.is_ascii_alphanumeric())
        && instance.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !label_value_ok {
        return Err(invalid(
            "kubernetes.instance",
            format!(
                "{instance:?} is not a label value (letters, digits, '-', '_', '.', at most 63)"
            ),
        ));
    }
    let service_account = file
        .service_account
        .clone()
        .unwrap_or(defaults.service_account);
    if !is_dns_subdomain(&service_account) {
        return Err(invalid(
            "kubernetes.service_account",
            format!("{service_account:?} is not a service account name"),
        ));
    }
    let executor_service_account = file
        .executor_service_account
        .clone()
        .unwrap_or(defaults.executor_service_account);
    if !is_dns_subdomain(&executor_service_account) {
        return Err(invalid(
            "kubernetes.executor_service_account",
            format!("{executor_service_account:?} is not a service account name"),
        ));
    }
    let versions = file.versions.clone().unwrap_or(defaults.versions);
    if versions.is_empty()
        || versions.iter().any(|v| {
            v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
    {
        return Err(invalid(
            "kubernetes.versions",
            "must list at least one version, each of letters, digits, '.', '-' and '_'",
        ));
    }
    let image = file.image.clone().unwrap_or(defaults.image);
    if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
        return Err(invalid(
            "kubernetes.image",
            format!("{image:?} is not an image reference"),
        ));
    }
    let image_pull_policy = file
        .image_pull_policy
        .clone()
        .unwrap_or(defaults.image_pull_policy);
    if !matches!(
        image_pull_policy.as_str(),
        "Always" | "IfNotPresent" | "Never"
    ) {
        return Err(invalid(
            "kubernetes.image_pull_policy",
            format!("{image_pull_policy:?}: expected Always, IfNotPresent or Never"),
        ));
    }
    let image_pull_secrets = file.image_pull_secrets.clone().unwrap_or_default();
    if let Some(bad) = image_pull_secrets.iter().find(|s| !is_dns_subdomain(s)) {
        return Err(invalid(
            "kubernetes.image_pull_secrets",
            format!("{bad:?} is not a secret name"),
        ));
    }
    let driver_cpu = file.driver_cpu.clone().unwrap_or(defaults.driver_cpu);
    if !is_quantity(&driver_cpu) {
        return Err(invalid(
            "kubernetes.driver_cpu",
            format!("{driver_cpu:?} is not a quantity (e.g. 500m, 1, 2)"),
        ));
    }
    let driver_memory = file.driver_memory.clone().unwrap_or(defaults.driver_memory);
    if !is_quantity(&driver_memory) {
        return Err(invalid(
            "kubernetes.driver_memory",
            format!("{driver_memory:?} is not a quantity (e.g. 2Gi, 512Mi)"),
        ));
    }
    let run_as_user = file.run_as_user.unwrap_or(defaults.run_as_user);
    if run_as_user <= 0 {
        return Err(invalid(
            "kubernetes.run_as_user",
            "must be a non-root user id (greater than 0)",
        ));
    }
    let cluster_domain = file
        .cluster_domain
        .clone()
        .unwrap_or(defaults.cluster_domain);
    if !is_dns_subdomain(&cluster_domain) {
        return Err(invalid(
            "kubernetes.cluster_domain",
            format!("{cluster_domain:?} is not a domain name"),
        ));
    }
    if let Some(policy) = &file.network_policy {
        if policy.connect_from.is_empty() {
            return Err(invalid(
                "kubernetes.network_policy.connect_from",
                "must name at least one peer (the monitor's and the proxy's pods), or the engines cannot be reached",
            ));
        }
        for peer in &policy.connect_from {
            if let Some(namespace) = peer.namespace.as_deref().filter(|n| !is_dns_label(n)) {
                return Err(invalid(
                    "kubernetes.network_policy.connect_from",
                    format!("{namespace:?} is not a namespace name"),
                ));
            }
            if peer.pod_labels.is_empty() {
                return Err(invalid(
                    "kubernetes.network_policy.connect_from",
                    "each peer needs pod_labels (an empty selector would admit every pod)",
                ));
            }
        }
    }
    Ok(KubernetesConfig {
        namespace: file.namespace.clone(),
        instance,
        service_account,
        executor_service_account,
        versions,
        image,
        image_pull_policy,
        image_pull_secrets,
        driver_cpu,
        driver_memory,
        run_as_user,
        cluster_domain,
        api_timeout: millis(
            "kubernetes.api_timeout_ms",
            file.api_timeout_ms,
            defaults.api_timeout,
        )?,
        connect_address: match &file.connect_address {
            Some(address)
                if address.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && (port.parse::<u16>().is_ok() || port.contains('{'))
                }) =>
            {
                Some(address.clone())
            }
            Some(address) => {
                return Err(invalid(
                    "kubernetes.connect_address",
                    format!(
                        "{address:?} is not HOST:PORT ({{name}} and {{namespace}} may be used)"
                    ),
                ))
            }
            None => None,
        },
        network_policy: file.network_policy.clone(),
    })
}

fn proxy_config(listen: Option<String>, file: &ProxyFile) -> Result<ProxyConfig, ConfigError> {
    let defaults = ProxyConfig::default();
    let listen_text = listen
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| crate::proxy::DEFAULT_LISTEN.to_owned());
    let listen = listen_text.parse().map_err(|_| {
        invalid(
            "proxy.listen",
            format!("{listen_text:?} is not HOST:PORT, e.g. 127.0.0.1:15002"),
        )
    })?;
    let public_url = file
        .public_url
        .as_deref()
        .map(PublicUrl::parse)
        .transpose()
        .map_err(|message| invalid("proxy.public_url", message))?;
    let tls = match (&file.tls_cert, &file.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "proxy.tls_cert",
                "tls_cert and tls_key go together",
            ))
        }
    };
    Ok(ProxyConfig {
        listen,
        public_url,
        tls,
        allow_plaintext: file.allow_plaintext.unwrap_or(false),
        activity_interval: millis(
            "proxy.activity_interval_ms",
            file.activity_interval_ms,
            defaults.activity_interval,
        )?,
        ..defaults
    })
}

fn metrics_config(
    listen: Option<String>,
    enabled: Option<bool>,
    file: &MetricsFile,
) -> Result<MetricsConfig, ConfigError> {
    let enabled = enabled.or(file.enabled).unwrap_or(true);
    let listen = match listen.or_else(|| file.listen.clone()) {
        Some(text) => Some(text.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!("{text:?} is not HOST:PORT, e.g. 127.0.0.1:9464"),
            )
        })?),
        None => None,
    };
    if listen.is_some() && !enabled {
        return Err(invalid(
            "metrics.listen",
            "is set but metrics.enabled is false: set one or the other",
        ));
    }
    Ok(MetricsConfig { enabled, listen })
}

fn monitor_config(file: &MonitorFile) -> Result<MonitorConfig, ConfigError> {
    let defaults = MonitorConfig::default();
    Ok(MonitorConfig {
        poll_interval: millis(
            "monitor.poll_interval_ms",
            file.poll_interval_ms,
            defaults.poll_interval,
        )?,
        trigger_timeout: millis(
            "monitor.trigger_timeout_ms",
            file.trigger_timeout_ms,
            defaults.trigger_timeout,
        )?,
        start_timeout: millis(
            "monitor.start_timeout_ms",
            file.start_timeout_ms,
            defaults.start_timeout,
        )?,
        start_check_interval: millis(
            "monitor.start_check_interval_ms",
            file.start_check_interval_ms,
            defaults.start_check_interval,
        )?,
        health_check_interval: millis(
            "monitor.health_check_interval_ms",
            file.health_check_interval_ms,
            defaults.health_check_interval,
        )?,
        orphan_scan_interval: millis(
            "monitor.orphan_scan_interval_ms",
            file.orphan_scan_interval_ms,
            defaults.orphan_scan_interval,
        )?,
        health_timeout: millis(
            "monitor.health_timeout_ms",
            file.health_timeout_ms,
            defaults.health_timeout,
        )?,
        delete_timeout: millis(
            "monitor.delete_timeout_ms",
            file.delete_timeout_ms,
            defaults.delete_timeout,
        )?,
        kill_timeout: millis(
            "monitor.kill_timeout_ms",
            file.kill_timeout_ms,
            defaults.kill_timeout,
        )?,
        retry_initial: millis(
            "monitor.retry_initial_ms",
            file.retry_initial_ms,
            defaults.retry_initial,
        )?,
        retry_max: millis(
            "monitor.retry_max_ms",
            file.retry_max_ms,
            defaults.retry_max,
        )?,
        idle_minute: millis(
            "monitor.idle_minute_ms",
            file.idle_minute_ms,
            defaults.idle_minute,
        )?,
        activity_stale: millis(
            "monitor.activity_stale_ms",
            file.activity_stale_ms,
            defaults.activity_stale,
        )?,
        concurrency: match file.concurrency {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    name: "monitor.concurrency",
                    message: "must be greater than 0".into(),
                })
            }
            Some(n) => n,
            None => defaults.concurrency,
        },
        batch: defaults.batch,
        name: defaults.name,
    })
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
        let overrides = Overrides {
            listen: Some("127.0.0.1:5000".into()),
            ..Overrides::default()
        };
        let settings = Settings::resolve(overrides, file).expect("resolves");
        assert_eq!(settings.listen, "127.0.0.1:5000".parse().expect("addr"));
        assert_eq!(settings.data_dir, PathBuf::from("/from/file"));
        assert_eq!(
            settings.database_url.expose(),
            "sqlite:///from/file/rucat.db"
        );
        assert_eq!(settings.server, "http://file:1");
        assert_eq!(settings.monitor.poll_interval, Duration::from_millis(500));
        assert_eq!(settings.policy.deny, vec!["spark.jars".to_owned()]);
        assert_eq!(settings.local_master, DEFAULT_LOCAL_MASTER);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |overrides: Overrides| Settings::resolve(overrides, FileConfig::default());
        assert!(matches!(
            bad(Overrides {
                listen: Some("nowhere".into()),
                data_dir: Some("/d".into()),
                ..Overrides::default()
            }),
            Err(ConfigError::Listen(_))
        ));
        assert!(matches!(
            bad(Overrides {
                platform: Some("mars".into()),
                data_dir: Some("/d".into()),
                ..Overrides::default()
            }),
            Err(ConfigError::Platform(_))
        ));
        assert!(toml::from_str::<FileConfig>("unknown_key = 1").is_err());
        assert!(matches!(
            bad(Overrides {
                database_max_connections: Some(0),
                data_dir: Some("/d".into()),
                ..Overrides::default()
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
        let overrides = Overrides {
            database_max_connections: Some(6),
            ..Overrides::default()
        };
        let settings = Settings::resolve(overrides, file).expect("resolves");
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
                Overrides {
                    data_dir: Some("/d".into()),
                    ..Overrides::default()
                },
                empty
            ),
            Err(ConfigError::Invalid {
                name: "simulated.versions",
                ..
            })
        ));
    }

    #[test]
    fn kubernetes_table() {
        let resolve = |text: &str| {
            let file: FileConfig = toml::from_str(text).expect("valid toml");
            Settings::resolve(
                Overrides {
                    data_dir: Some("/d".into()),
                    ..Overrides::default()
                },
                file,
            )
        };
        let settings = resolve(
            r#"
            platform = "kubernetes"
            allow_unauthenticated = true
            [kubernetes]
            namespace = "spark"
            versions = ["4.0.1", "3.5.6"]
            image = "registry.example.com/spark:{version}-rucat"
            image_pull_secrets = ["regcred"]
            driver_cpu = "500m"
            driver_memory = "3Gi"
            api_timeout_ms = 1500
            "#,
        )
        .expect("resolves");
        assert_eq!(settings.platform, PlatformKind::Kubernetes);
        assert!(settings.allow_unauthenticated);
        let k = &settings.kubernetes;
        assert_eq!(k.namespace.as_deref(), Some("spark"));
        assert_eq!(
            k.image_for("3.5.6"),
            "registry.example.com/spark:3.5.6-rucat"
        );
        assert_eq!(k.image_pull_secrets, ["regcred"]);
        assert_eq!(k.driver_cpu, "500m");
        assert_eq!(k.api_timeout, Duration::from_millis(1500));
        assert_eq!(k.service_account, "rucat-spark");
        assert!(!resolve("").expect("defaults").allow_unauthenticated);

        for (text, name) in [
            (
                "[kubernetes]\nnamespace = \"Kube_System\"",
                "kubernetes.namespace",
            ),
            ("[kubernetes]\nversions = []", "kubernetes.versions"),
            (
                "[kubernetes]\nversions = [\"4.0 ; rm\"]",
                "kubernetes.versions",
            ),
            (
                "[kubernetes]\nimage_pull_policy = \"Sometimes\"",
                "kubernetes.image_pull_policy",
            ),
            (
                "[kubernetes]\ndriver_memory = \"lots\"",
                "kubernetes.driver_memory",
            ),
            (
                "[kubernetes]\ndriver_cpu = \"1.2.3\"",
                "kubernetes.driver_cpu",
            ),
            ("[kubernetes]\nrun_as_user = 0", "kubernetes.run_as_user"),
            (
                "[kubernetes]\nservice_account = \"a b\"",
                "kubernetes.service_account",
            ),
            ("[kubernetes]\ninstance = \"-x\"", "kubernetes.instance"),
            (
                "[kubernetes]\napi_timeout_ms = 0",
                "kubernetes.api_timeout_ms",
            ),
        ] {
            match resolve(text) {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name, "{text}"),
                other => panic!("{text}: expected {name} to be refused, got {other:?}"),
            }
        }
        assert!(toml::from_str::<FileConfig>("[kubernetes]\nnamespaces = \"x\"").is_err());
    }

    #[test]
    fn metrics_table() {
        let resolve = |overrides: Overrides, text: &str| {
            let file: FileConfig = toml::from_str(text).expect("valid toml");
            Settings::resolve(
                Overrides {
                    data_dir: Some("/d".into()),
                    ..overrides
                },
                file,
            )
        };
        let defaults = resolve(Overrides::default(), "").expect("defaults");
        assert_eq!(
            defaults.metrics,
            MetricsConfig {
                enabled: true,
                listen: None
            }
        );
        let file = "[metrics]\nlisten = \"127.0.0.1:9000\"\nenabled = true";
        let from_file = resolve(Overrides::default(), file).expect("file");
        assert_eq!(
            from_file.metrics.listen,
            Some("127.0.0.1:9000".parse().expect("addr"))
        );
        let flag = Overrides {
            metrics_listen: Some("0.0.0.0:9001".into()),
            ..Overrides::default()
        };
        let from_flag = resolve(flag, file).expect("flag");
        assert_eq!(
            from_flag.metrics.listen,
            Some("0.0.0.0:9001".parse().expect("addr"))
        );
        let off = resolve(Overrides::default(), "[metrics]\nenabled = false").expect("off");
        assert!(!off.metrics.enabled);
        for (overrides, text) in [
            (Overrides::default(), "[metrics]\nlisten = \"nowhere\""),
            (
                Overrides {
                    metrics_enabled: Some(false),
                    ..Overrides::default()
                },
                file,
            ),
        ] {
            match resolve(overrides, text) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, "metrics.listen"),
                other => panic!("{text}: expected metrics.listen to be refused, got {other:?}"),
            }
        }
        assert!(toml::from_str::<FileConfig>("[metrics]\nport = 1").is_err());
    }

    #[test]
    fn quantities() {
        for ok in ["1", "500m", "0.5", "2Gi", "512Mi", "1e3", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1.2.3", "2GB", ".", "Gi", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
