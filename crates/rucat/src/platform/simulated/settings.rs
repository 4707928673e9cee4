//! The simulated platform's settings: the configuration file's `[simulated]` table.

use std::time::Duration;

use serde::Deserialize;

use super::SimulatedConfig;
use crate::config::{invalid, ConfigError};

/// The `[simulated]` table.
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

impl SimulatedConfig {
    /// The file's settings, else the defaults.
    pub fn from_file(file: &SimulatedFile) -> Result<Self, ConfigError> {
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
}
