//! Whether metrics are kept, and where they are served: from flags or the environment, else the
//! configuration file's `[metrics]` table.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// The metrics' flags and environment variables; `None` when neither is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// A listener of its own for Prometheus' `GET /metrics`, answered without authentication
    /// (it serves aggregate counters only: no engine ids, users or secrets) [default: none;
    /// `serve` and `server` also answer /metrics on the REST listener, to an admin once
    /// authentication is on]
    #[arg(long, env = "RUCAT_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Keep and serve metrics [default: true]; false drops /metrics and every counter
    #[arg(long, env = "RUCAT_METRICS_ENABLED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_enabled: Option<bool>,
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

impl MetricsConfig {
    /// Flags and environment over the file over the defaults.
    pub fn resolve(args: MetricsArgs, file: &MetricsFile) -> Result<Self, ConfigError> {
        let enabled = args.metrics_enabled.or(file.enabled).unwrap_or(true);
        let listen = match args.metrics_listen.or_else(|| file.listen.clone()) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, RoleArgs, Settings};

    #[test]
    fn metrics_table() {
        let resolve = |args: RoleArgs, text: &str| {
            let file: FileConfig = toml::from_str(text).expect("valid toml");
            Settings::resolve(
                RoleArgs {
                    data_dir: Some("/d".into()),
                    ..args
                },
                file,
            )
        };
        let defaults = resolve(RoleArgs::default(), "").expect("defaults");
        assert_eq!(
            defaults.metrics,
            MetricsConfig {
                enabled: true,
                listen: None
            }
        );
        let file = "[metrics]\nlisten = \"127.0.0.1:9000\"\nenabled = true";
        let from_file = resolve(RoleArgs::default(), file).expect("file");
        assert_eq!(
            from_file.metrics.listen,
            Some("127.0.0.1:9000".parse().expect("addr"))
        );
        let flag = RoleArgs {
            metrics: MetricsArgs {
                metrics_listen: Some("0.0.0.0:9001".into()),
                ..MetricsArgs::default()
            },
            ..RoleArgs::default()
        };
        let from_flag = resolve(flag, file).expect("flag");
        assert_eq!(
            from_flag.metrics.listen,
            Some("0.0.0.0:9001".parse().expect("addr"))
        );
        let off = resolve(RoleArgs::default(), "[metrics]\nenabled = false").expect("off");
        assert!(!off.metrics.enabled);
        for (args, text) in [
            (RoleArgs::default(), "[metrics]\nlisten = \"nowhere\""),
            (
                RoleArgs {
                    metrics: MetricsArgs {
                        metrics_enabled: Some(false),
                        ..MetricsArgs::default()
                    },
                    ..RoleArgs::default()
                },
                file,
            ),
        ] {
            match resolve(args, text) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, "metrics.listen"),
                other => panic!("{text}: expected metrics.listen to be refused, got {other:?}"),
            }
        }
        assert!(toml::from_str::<FileConfig>("[metrics]\nport = 1").is_err());
    }
}
