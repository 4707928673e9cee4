//! The Kubernetes platform's settings: the configuration file's `[kubernetes]` table, each value
//! checked as the API server would (names, quantities, label values) so that a mistake is named
//! at start rather than at the first create.

use serde::Deserialize;

use super::{KubernetesConfig, NetworkPolicyConfig};
use crate::config::{invalid, millis, ConfigError};

/// The `[kubernetes]` table.
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

impl KubernetesConfig {
    /// The file's settings, each checked, else the defaults.
    pub fn from_file(file: &KubernetesFile) -> Result<Self, ConfigError> {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{FileConfig, PlatformKind, RoleArgs, Settings};

    #[test]
    fn kubernetes_table() {
        let resolve = |text: &str| {
            let file: FileConfig = toml::from_str(text).expect("valid toml");
            Settings::resolve(
                RoleArgs {
                    data_dir: Some("/d".into()),
                    ..RoleArgs::default()
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
    fn quantities() {
        for ok in ["1", "500m", "0.5", "2Gi", "512Mi", "1e3", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1.2.3", "2GB", ".", "Gi", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
