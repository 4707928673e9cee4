//! Warm pools: engines started ahead of any request, so that a create that fits one is `Running`
//! at once.
//!
//! An operator declares pools in `[[pool]]` tables: a name, a Spark version, how many warm
//! engines to keep, and the configs they run with (resources such as `spark.driver.memory`
//! included). Monitors keep each pool at its size (see [`crate::monitor`]); a create whose
//! version is the pool's, and whose every config is one the pool runs with at the same value,
//! takes a warm engine in one compare-and-swap (see [`crate::store::Store::take_warm`]). Any other
//! create starts cold, as without pools: nothing a request asks for is dropped or changed.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::policy::ConfPolicy;
use super::{EngineRequest, EngineType, SparkConf};

/// The most warm engines one pool may keep.
pub const MAX_POOL_SIZE: u32 = 64;

/// One `[[pool]]` table of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub name: String,
    pub version: String,
    pub size: u32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A pool, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// 1 to 40 lowercase letters, digits and '-', starting with a letter (it labels pods).
    pub name: String,
    pub version: String,
    /// How many warm engines the monitors keep started (0 empties the pool).
    pub size: u32,
    /// What its engines run with; a taken engine's record shows them.
    pub configs: SparkConf,
}

impl Pool {
    /// Whether a create asking for `request` may take one of this pool's engines: same type and
    /// version, and every config it asks for is one the pool's engines run with, at that value.
    pub fn fits(&self, request: &EngineRequest) -> bool {
        request.engine_type == EngineType::Spark
            && request.version == self.version
            && request
                .configs
                .iter()
                .all(|(key, value)| self.configs.get(key) == Some(value))
    }

    /// The pool's configs as an engine record keeps them.
    pub fn config_map(&self) -> BTreeMap<String, String> {
        self.configs
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The configured pools, in the order of the file (a create takes from the first that fits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pools(Vec<Pool>);

impl Pools {
    /// Checks the `[[pool]]` tables: names well-formed and distinct, sizes within
    /// [`MAX_POOL_SIZE`], configs well-formed and allowed by `policy` (the same policy a user's
    /// create meets). Versions are checked against the platform's when it is known
    /// ([`Pools::check_versions`]).
    pub fn from_file(files: &[PoolFile], policy: &ConfPolicy) -> Result<Self, String> {
        let mut names = HashSet::new();
        let mut pools = Vec::with_capacity(files.len());
        for file in files {
            check_name(&file.name)?;
            if !names.insert(file.name.as_str()) {
                return Err(format!("pool {:?} is declared twice", file.name));
            }
            if file.version.trim().is_empty() {
                return Err(format!("pool {:?}: version must not be empty", file.name));
            }
            if file.size > MAX_POOL_SIZE {
                return Err(format!(
                    "pool {:?}: size {} is above the most a pool may keep ({MAX_POOL_SIZE})",
                    file.name, file.size
                ));
            }
            let configs = SparkConf::parse(file.configs.clone())
                .map_err(|error| format!("pool {:?}: {error}", file.name))?;
            policy
                .check(&configs)
                .map_err(|error| format!("pool {:?}: {error}", file.name))?;
            pools.push(Pool {
                name: file.name.clone(),
                version: file.version.clone(),
                size: file.size,
                configs,
            });
        }
        Ok(Pools(pools))
    }

    /// Refuses a pool whose version the platform does not offer.
    pub fn check_versions(&self, versions: &[String]) -> Result<(), String> {
        match self.0.iter().find(|p| !versions.contains(&p.version)) {
            Some(pool) => Err(format!(
                "pool {:?}: Spark version {:?} is not available; available: {}",
                pool.name,
                pool.version,
                versions.join(", ")
            )),
            None => Ok(()),
        }
    }

    /// Every pool a create asking for `request` may take from, in the order of the file.
    pub fn fitting<'a>(
        &'a self,
        request: &'a EngineRequest,
    ) -> impl Iterator<Item = &'a Pool> + 'a {
        self.0.iter().filter(move |pool| pool.fits(request))
    }

    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.0.iter().find(|pool| pool.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "pool name {name:?} must be 1 to 40 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineName;

    fn file(name: &str, size: u32, configs: &[(&str, &str)]) -> PoolFile {
        PoolFile {
            name: name.into(),
            version: "4.3.0".into(),
            size,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn request(version: &str, configs: &[(&str, &str)]) -> EngineRequest {
        EngineRequest {
            name: EngineName::parse("etl").expect("a name"),
            engine_type: EngineType::Spark,
            version: version.into(),
            configs: SparkConf::parse(
                configs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
            .expect("configs"),
            idle_timeout_minutes: None,
        }
    }

    #[test]
    fn a_request_fits_a_pool_of_its_version_whose_configs_hold_its_own() {
        let pools = Pools::from_file(
            &[file(
                "small",
                2,
                &[
                    ("spark.driver.memory", "1g"),
                    ("spark.sql.shuffle.partitions", "8"),
                ],
            )],
            &ConfPolicy::default(),
        )
        .expect("valid pools");
        assert!(pools.fitting(&request("4.3.0", &[])).next().is_some());
        assert!(pools
            .fitting(&request("4.3.0", &[("spark.driver.memory", "1g")]))
            .next()
            .is_some());
        assert!(pools
            .fitting(&request("4.3.0", &[("spark.driver.memory", "2g")]))
            .next()
            .is_none());
        assert!(pools
            .fitting(&request("4.3.0", &[("spark.executor.cores", "2")]))
            .next()
            .is_none());
        assert!(pools.fitting(&request("4.2.0", &[])).next().is_none());
    }

    #[test]
    fn bad_pools_are_refused_with_their_name() {
        let policy = ConfPolicy::default();
        for (pools, needle) in [
            (vec![file("Bad_Name", 1, &[])], "pool name"),
            (vec![file("a", 1, &[]), file("a", 2, &[])], "twice"),
            (vec![file("a", MAX_POOL_SIZE + 1, &[])], "size"),
            (
                vec![file("a", 1, &[("spark.master", "local")])],
                "spark.master",
            ),
            (
                vec![file("a", 1, &[("driver.memory", "1g")])],
                "driver.memory",
            ),
        ] {
            let error = Pools::from_file(&pools, &policy).expect_err("refused");
            assert!(error.contains(needle), "{error}");
        }
        let pools = Pools::from_file(&[file("a", 1, &[])], &policy).expect("valid");
        assert!(pools.check_versions(&["4.3.0".into()]).is_ok());
        let error = pools
            .check_versions(&["4.2.0".into()])
            .expect_err("refused");
        assert!(
            error.contains("4.3.0") && error.contains("4.2.0"),
            "{error}"
        );
    }
}
