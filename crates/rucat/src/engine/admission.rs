//! Whether an engine may start: the checks a create goes through, made by the server at each
//! create (and, for a stored engine, at each restart) and by `rucat engine render` before it
//! renders anything, so that both refuse the same requests.
//!
//! A request's name and configs are checked for form when they are parsed ([`EngineName`] and
//! [`SparkConf`] hold nothing else); admission adds what depends on the operator's settings: the
//! configs under the policy, then the version among those offered.
//!
//! [`EngineName`]: super::EngineName

use super::policy::{ConfPolicy, Refused};
use super::{EngineRequest, EngineType, SparkConf};

/// Why an engine may not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inadmissible {
    /// A config the policy refuses.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A version not offered.
    #[error("{} version {version:?} is not available; available: {}", .engine_type.as_str(), .available.join(", "))]
    Version {
        engine_type: EngineType,
        version: String,
        available: Vec<String>,
    },
}

/// What engines are admitted under: the operator's policy and the versions offered.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub policy: &'a ConfPolicy,
    pub versions: &'a [String],
}

impl Admission<'_> {
    /// A new engine: `request`, its name and configs already well-formed.
    pub fn admit(&self, request: &EngineRequest) -> Result<(), Inadmissible> {
        self.admit_start(request.engine_type, &request.version, &request.configs)
    }

    /// An engine of this type, version and configs about to start: the configs under the
    /// policy (the first refused one is named), then the version.
    pub fn admit_start(
        &self,
        engine_type: EngineType,
        version: &str,
        configs: &SparkConf,
    ) -> Result<(), Inadmissible> {
        self.policy.check(configs)?;
        if !self.versions.iter().any(|v| v == version) {
            return Err(Inadmissible::Version {
                engine_type,
                version: version.to_owned(),
                available: self.versions.to_vec(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::EngineName;

    fn request(version: &str, configs: &[(&str, &str)]) -> EngineRequest {
        let configs: BTreeMap<String, String> = configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EngineRequest {
            name: EngineName::parse("etl").expect("a name"),
            engine_type: EngineType::Spark,
            version: version.to_owned(),
            configs: SparkConf::parse(configs).expect("well-formed configs"),
            idle_timeout_minutes: None,
        }
    }

    #[test]
    fn the_policy_then_the_version() {
        let policy = ConfPolicy::default();
        let versions = ["4.3.0".to_owned()];
        let admission = Admission {
            policy: &policy,
            versions: &versions,
        };
        assert_eq!(admission.admit(&request("4.3.0", &[])), Ok(()));
        let unknown = admission.admit(&request("9.9.9", &[]));
        assert_eq!(
            unknown.map_err(|e| e.to_string()),
            Err("Spark version \"9.9.9\" is not available; available: 4.3.0".to_owned())
        );
        let both = request("9.9.9", &[("spark.master", "local")]);
        assert!(matches!(
            admission.admit(&both),
            Err(Inadmissible::Refused(Refused::Reserved(_)))
        ));
    }
}
