//! The monitor's settings: the configuration file's `[monitor]` table.

use serde::Deserialize;

use super::MonitorConfig;
use crate::config::{millis, ConfigError};

/// The `[monitor]` table: intervals and timeouts in milliseconds, each greater than 0.
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

impl MonitorConfig {
    /// The file's settings, else the defaults.
    pub fn from_file(file: &MonitorFile) -> Result<Self, ConfigError> {
        let defaults = MonitorConfig::default();
        // The setting `field` from the key `field_ms`, named `monitor.field_ms` when refused.
        macro_rules! ms {
            ($field:ident, $key:ident) => {
                millis(
                    concat!("monitor.", stringify!($key)),
                    file.$key,
                    defaults.$field,
                )?
            };
        }
        Ok(MonitorConfig {
            poll_interval: ms!(poll_interval, poll_interval_ms),
            trigger_timeout: ms!(trigger_timeout, trigger_timeout_ms),
            start_timeout: ms!(start_timeout, start_timeout_ms),
            start_check_interval: ms!(start_check_interval, start_check_interval_ms),
            health_check_interval: ms!(health_check_interval, health_check_interval_ms),
            orphan_scan_interval: ms!(orphan_scan_interval, orphan_scan_interval_ms),
            health_timeout: ms!(health_timeout, health_timeout_ms),
            delete_timeout: ms!(delete_timeout, delete_timeout_ms),
            kill_timeout: ms!(kill_timeout, kill_timeout_ms),
            retry_initial: ms!(retry_initial, retry_initial_ms),
            retry_max: ms!(retry_max, retry_max_ms),
            idle_minute: ms!(idle_minute, idle_minute_ms),
            activity_stale: ms!(activity_stale, activity_stale_ms),
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
            pools: defaults.pools,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_key_is_taken_and_a_zero_is_refused_by_its_name() {
        let keys = [
            "poll_interval_ms",
            "trigger_timeout_ms",
            "start_timeout_ms",
            "start_check_interval_ms",
            "health_check_interval_ms",
            "orphan_scan_interval_ms",
            "health_timeout_ms",
            "delete_timeout_ms",
            "kill_timeout_ms",
            "retry_initial_ms",
            "retry_max_ms",
            "idle_minute_ms",
            "activity_stale_ms",
            "concurrency",
        ];
        let all: String = keys.iter().map(|key| format!("{key} = 7\n")).collect();
        let file: MonitorFile = toml::from_str(&all).expect("valid table");
        let config = MonitorConfig::from_file(&file).expect("resolves");
        let seven = Duration::from_millis(7);
        assert_eq!(
            [
                config.poll_interval,
                config.trigger_timeout,
                config.start_timeout,
                config.start_check_interval,
                config.health_check_interval,
                config.orphan_scan_interval,
                config.health_timeout,
                config.delete_timeout,
                config.kill_timeout,
                config.retry_initial,
                config.retry_max,
                config.idle_minute,
                config.activity_stale,
            ],
            [seven; 13]
        );
        assert_eq!(config.concurrency, 7);
        for key in keys {
            let file: MonitorFile = toml::from_str(&format!("{key} = 0")).expect("valid table");
            match MonitorConfig::from_file(&file) {
                Err(ConfigError::Invalid { name, .. }) => {
                    assert_eq!(name, format!("monitor.{key}"))
                }
                other => panic!("{key} = 0: expected a refusal, got {other:?}"),
            }
        }
    }
}
