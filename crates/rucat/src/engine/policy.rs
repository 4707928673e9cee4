//! Which Spark configuration keys a user may set.
//!
//! Some keys are Rucat's own wiring (a user value would break or bypass it); others would let a
//! user escape their engine (another namespace, identity, pod spec, image, volume or secret).
//! Both are refused, naming the key, and so are keys that load code into the driver or change
//! its JVM (the driver holds the identities Rucat gives it). Operators may deny more keys, exempt
//! some from the deny list, restrict users to an allow list, and list the container images users
//! may pick.
//!
//! Keys are matched without regard to ASCII case, so that a pattern catches every spelling of a
//! key family (`*featureSteps` matches `excludedFeatureSteps`), and a key cannot slip past the
//! policy by changing the case of a letter.

use serde::Deserialize;

use super::SparkConf;

/// Keys Rucat sets itself. No configuration can make them user-settable.
pub const RESERVED: &[&str] = &[
    "spark.master",
    "spark.submit.deployMode",
    "spark.driver.host",
    "spark.driver.bindAddress",
    "spark.app.id",
    "spark.connect.grpc.binding.port",
    "spark.connect.grpc.binding.address",
    "spark.connect.authenticate.token",
    "spark.connect.grpc.interceptor.classes",
    "spark.driver.port",
    "spark.driver.blockManager.port",
    "spark.kubernetes.namespace",
    "spark.kubernetes.driver.master",
    "spark.kubernetes.driver.pod.name",
    "spark.kubernetes.executor.podNamePrefix",
    "spark.kubernetes.executor.deleteOnTermination",
    "spark.kubernetes.authenticate.driver.serviceAccountName",
    "spark.kubernetes.authenticate.executor.serviceAccountName",
    "spark.kubernetes.container.image.pullSecrets",
];

/// Keys that would let a user leave their engine's sandbox; denied unless an operator removes
/// them from `policy.deny` (which replaces this list when given).
pub const DEFAULT_DENY: &[&str] = &[
    // Another namespace, API server or identity.
    "spark.kubernetes.namespace",
    "spark.kubernetes.context",
    "spark.kubernetes.*master",
    "spark.kubernetes.authenticate.*",
    "spark.kubernetes.*serviceAccountName",
    "spark.kubernetes.trust.certificates",
    // Credentials kept in the namespace.
    "spark.kubernetes.*.secrets.*",
    "spark.kubernetes.*.secretKeyRef.*",
    "spark.kubernetes.kerberos.*",
    "spark.kubernetes.hadoop.configMapName",
    // An arbitrary pod spec, or code that rewrites it.
    "spark.kubernetes.*podTemplate*",
    "spark.kubernetes.*featureSteps",
    // Host paths and other volumes.
    "spark.kubernetes.*.volumes.*",
    "spark.kubernetes.file.upload.path",
    // Rucat's ownership labels, or anything else on the pods' metadata.
    "spark.kubernetes.*.label.*",
    "spark.kubernetes.*.annotation.*",
    "spark.kubernetes.*decommissionLabel*",
    // Environment of a cluster-mode driver.
    "spark.kubernetes.driverEnv.*",
    // Image pull settings (images themselves: see `allowed_images`).
    "spark.kubernetes.container.image.*",
    // Code loaded into the driver or executors, or a changed JVM.
    "spark.driver.extraJavaOptions",
    "spark.executor.extraJavaOptions",
    "spark.driver.defaultJavaOptions",
    "spark.executor.defaultJavaOptions",
    "spark.driver.extraClassPath",
    "spark.executor.extraClassPath",
    "spark.driver.extraLibraryPath",
    "spark.executor.extraLibraryPath",
    "spark.jars",
    "spark.jars.*",
    "spark.files",
    "spark.archives",
    "spark.submit.pyFiles",
    "spark.pyspark.*",
    "spark.plugins",
    "spark.plugins.*",
    "spark.sql.extensions",
    "spark.extraListeners",
    "spark.sql.queryExecutionListeners",
    "spark.sql.streaming.streamingQueryListeners",
    "spark.connect.extensions.*",
    "spark.*.resource.*.discoveryScript",
    "spark.executorEnv.*",
];

/// The code-loading keys of [`DEFAULT_DENY`]: denied by default, allowed only by an operator
/// (through `policy.exempt`, or a `policy.deny` without them).
pub const CODE_LOADING: &[&str] = &[
    "spark.driver.extraJavaOptions",
    "spark.executor.extraJavaOptions",
    "spark.driver.extraClassPath",
    "spark.executor.extraClassPath",
    "spark.driver.extraLibraryPath",
    "spark.executor.extraLibraryPath",
    "spark.jars",
    "spark.jars.packages",
    "spark.jars.repositories",
    "spark.jars.ivySettings",
    "spark.files",
    "spark.archives",
    "spark.plugins",
    "spark.sql.extensions",
    "spark.extraListeners",
    "spark.executorEnv.PATH",
];

/// Keys that pick a container image: allowed only with a value from `policy.allowed_images`.
pub const IMAGE_KEYS: &[&str] = &[
    "spark.kubernetes.container.image",
    "spark.kubernetes.driver.container.image",
    "spark.kubernetes.executor.container.image",
];

/// The operator's policy, as written in the configuration file's `[policy]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfPolicy {
    /// Key patterns users may not set (`*` matches any run of characters).
    pub deny: Vec<String>,
    /// Patterns taken out of `deny`: a key matching one of them is not denied (reserved keys
    /// stay refused). E.g. `["spark.jars.packages"]` lets users pull packages.
    pub exempt: Vec<String>,
    /// When given, users may set only keys matching one of these patterns.
    pub allow: Option<Vec<String>>,
    /// Container images users may choose with `spark.kubernetes.*container.image`.
    pub allowed_images: Vec<String>,
}

impl Default for ConfPolicy {
    fn default() -> Self {
        ConfPolicy {
            deny: DEFAULT_DENY.iter().map(|s| (*s).to_owned()).collect(),
            exempt: Vec::new(),
            allow: None,
            allowed_images: Vec::new(),
        }
    }
}

/// Why a config key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("config {0:?} is set by Rucat and cannot be set by users")]
    Reserved(String),
    #[error("config {key:?} is not allowed: it matches the denied pattern {pattern:?}")]
    Denied { key: String, pattern: String },
    #[error("config {0:?} is not allowed: it matches none of the allowed patterns")]
    NotAllowed(String),
    #[error(
        "config {key:?} names image {image:?}, which is not among the allowed images {allowed:?}"
    )]
    Image {
        key: String,
        image: String,
        allowed: Vec<String>,
    },
}

impl ConfPolicy {
    /// Checks every key; the first refused one is named.
    pub fn check(&self, conf: &SparkConf) -> Result<(), Refused> {
        conf.iter()
            .try_for_each(|(key, value)| self.check_one(key, value))
    }

    fn check_one(&self, key: &str, value: &str) -> Result<(), Refused> {
        if RESERVED
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(key))
        {
            return Err(Refused::Reserved(key.to_owned()));
        }
        if IMAGE_KEYS
            .iter()
            .any(|image| image.eq_ignore_ascii_case(key))
        {
            if self.allowed_images.iter().any(|image| image == value) {
                return Ok(());
            }
            return Err(Refused::Image {
                key: key.to_owned(),
                image: value.to_owned(),
                allowed: self.allowed_images.clone(),
            });
        }
        let denied = self.deny.iter().find(|p| glob_match(p, key));
        if let Some(pattern) = denied.filter(|_| !self.exempt.iter().any(|p| glob_match(p, key))) {
            return Err(Refused::Denied {
                key: key.to_owned(),
                pattern: pattern.clone(),
            });
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|p| glob_match(p, key)) => {
                Err(Refused::NotAllowed(key.to_owned()))
            }
            _ => Ok(()),
        }
    }
}

/// `*` matches any run of characters (also none); everything else matches itself, whatever its
/// ASCII case.
fn glob_match(pattern: &str, text: &str) -> bool {
    glob_match_exact(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

fn glob_match_exact(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn conf(key: &str, value: &str) -> SparkConf {
        SparkConf::parse(BTreeMap::from([(key.to_owned(), value.to_owned())]))
            .expect("well-formed conf")
    }

    #[test]
    fn glob() {
        assert!(glob_match(
            "spark.kubernetes.*.volumes.*",
            "spark.kubernetes.driver.volumes.hostPath.x.mount.path"
        ));
        assert!(glob_match(
            "spark.kubernetes.namespace",
            "spark.kubernetes.namespace"
        ));
        assert!(!glob_match(
            "spark.kubernetes.namespace",
            "spark.kubernetes.namespaces"
        ));
        assert!(glob_match(
            "spark.kubernetes.*serviceAccountName",
            "spark.kubernetes.authenticate.driver.serviceAccountName"
        ));
        assert!(!glob_match("a*b", "a"));
        assert!(glob_match("*", ""));
        assert!(glob_match(
            "spark.kubernetes.*featureSteps",
            "spark.kubernetes.driver.pod.excludedFeatureSteps"
        ));
        assert!(glob_match("spark.jars", "SPARK.JARS"));
    }

    #[test]
    fn code_loading_keys_are_denied_by_default_and_allowed_by_an_operator() {
        let policy = ConfPolicy::default();
        for key in CODE_LOADING {
            match policy.check(&conf(key, "x")) {
                Err(Refused::Denied { key: named, .. }) => assert_eq!(named, *key),
                other => panic!("{key}: expected a denial, got {other:?}"),
            }
        }
        for key in [
            "spark.kubernetes.driver.pod.excludedFeatureSteps",
            "spark.Driver.ExtraJavaOptions",
            "spark.driver.resource.gpu.discoveryScript",
            "spark.connect.extensions.relation.classes",
        ] {
            assert!(policy.check(&conf(key, "x")).is_err(), "{key}");
        }
        let exempting = ConfPolicy {
            exempt: CODE_LOADING.iter().map(|k| (*k).to_owned()).collect(),
            ..ConfPolicy::default()
        };
        for key in CODE_LOADING {
            assert_eq!(exempting.check(&conf(key, "x")), Ok(()), "{key}");
        }
        let replaced = ConfPolicy {
            deny: vec!["spark.kubernetes.*".into()],
            ..ConfPolicy::default()
        };
        assert_eq!(
            replaced.check(&conf("spark.jars.packages", "a:b:1")),
            Ok(())
        );
        // Reserved keys stay refused whatever the operator says, in any case.
        let lax = ConfPolicy {
            deny: vec![],
            exempt: vec!["*".into()],
            allow: None,
            allowed_images: vec![],
        };
        assert!(matches!(
            lax.check(&conf("spark.MASTER", "yarn")),
            Err(Refused::Reserved(_))
        ));
    }

    #[test]
    fn reserved_keys_are_refused_by_name() {
        let policy = ConfPolicy::default();
        for key in RESERVED {
            assert_eq!(
                policy.check(&conf(key, "x")),
                Err(Refused::Reserved((*key).to_owned()))
            );
        }
    }

    #[test]
    fn escaping_keys_are_refused_by_name() {
        let policy = ConfPolicy::default();
        for key in [
            "spark.kubernetes.namespace",
            "spark.kubernetes.driver.master",
            "spark.kubernetes.authenticate.caCertFile",
            "spark.kubernetes.executor.podTemplateFile",
            "spark.kubernetes.driver.pod.featureSteps",
            "spark.kubernetes.driver.volumes.hostPath.data.mount.path",
            "spark.kubernetes.executor.secretKeyRef.PASSWORD",
            "spark.kubernetes.driver.label.app.kubernetes.io/managed-by",
            "spark.kubernetes.executor.container.image",
        ] {
            let refused = policy
                .check(&conf(key, "x"))
                .expect_err("an escaping key is refused");
            let named = match &refused {
                Refused::Reserved(k) | Refused::NotAllowed(k) => k,
                Refused::Denied { key: k, .. } | Refused::Image { key: k, .. } => k,
            };
            assert_eq!(named, key, "{refused}");
            assert!(
                refused.to_string().contains(&format!("{key:?}")),
                "{refused}"
            );
        }
        for harmless in [
            "spark.executor.memory",
            "spark.kubernetes.executor.request.cores",
            "spark.kubernetes.allocation.batch.size",
            "spark.kubernetes.executor.node.selector.pool",
        ] {
            assert!(policy.check(&conf(harmless, "1")).is_ok(), "{harmless}");
        }
    }

    #[test]
    fn images_only_from_the_allowed_list() {
        let mut policy = ConfPolicy::default();
        let key = "spark.kubernetes.container.image";
        assert!(matches!(
            policy.check(&conf(key, "evil/spark")),
            Err(Refused::Image { .. })
        ));
        policy.allowed_images = vec!["apache/spark:4.0.0".into()];
        assert!(policy.check(&conf(key, "apache/spark:4.0.0")).is_ok());
        assert!(policy.check(&conf(key, "evil/spark")).is_err());
    }

    #[test]
    fn allow_list_restricts_and_deny_still_applies() {
        let policy = ConfPolicy {
            allow: Some(vec!["spark.executor.*".into(), "spark.kubernetes.*".into()]),
            ..ConfPolicy::default()
        };
        assert!(policy.check(&conf("spark.executor.cores", "2")).is_ok());
        assert_eq!(
            policy.check(&conf("spark.driver.memory", "64g")),
            Err(Refused::NotAllowed("spark.driver.memory".into()))
        );
        assert!(matches!(
            policy.check(&conf("spark.kubernetes.context", "admin@prod")),
            Err(Refused::Denied { .. })
        ));
    }
}
