//! The Helm chart (`deploy/helm/rucat`) checked offline: `helm lint --strict` (two Helm
//! libraries, no helm binary, no cluster), `helm template` with several sets of values, every
//! rendered object validated by `kubernetes-validate --strict` against the Kubernetes schemas
//! (the oldest version the chart supports and the newest known), and the behaviours that
//! matter checked on the rendering: authentication always on (no unauthenticated mode, the
//! tokens file mounted so that it updates, and read by Rucat's own loaders), the Spark Connect
//! proxy (TLS or explicitly allowed plaintext, its public URL, no API token, the only clients
//! the engines admit besides the monitor), least-privilege RBAC, the engines' own
//! Pod-Security-restricted namespace, their identity-less executors, the NetworkPolicies, the
//! metrics listener (off by default; on, admitting only its scrapers), the store URL from a
//! Secret, the pods' security, and a rucat.toml that Rucat's own loader accepts
//! and that `rucat engine render` turns into objects matching the chart.
//!
//! The tools come from the `k8s-tools` virtualenv that `scripts/setup.sh` installs; its path is
//! `RUCAT_K8S_TOOLS` (`scripts/test.sh` sets it). Without it these tests fail, never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use rucat::auth::token::{TokenHash, TokenStore};
use rucat::auth::Role;
use rucat::config::{FileConfig, PlatformKind, RoleArgs, Settings};
use rucat::engine::IdleTimeouts;
use rucat::metrics::MetricsArgs;
use rucat::platform::kubernetes::Peer;
use rucat::proxy::ProxyArgs;
use rucat::store::DatabaseArgs;
use serde_json::{json, Value};

/// Kubernetes versions every rendering is validated against: the chart's kubeVersion floor
/// and kubernetes-validate's newest.
const KUBERNETES_VERSIONS: &[Option<&str>] = &[Some("1.25.0"), None];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/rucat")
}

struct Tools {
    python: PathBuf,
    validate: PathBuf,
}

fn tools() -> Tools {
    let dir = std::env::var_os("RUCAT_K8S_TOOLS").unwrap_or_else(|| {
        panic!(
            "RUCAT_K8S_TOOLS is not set: it must name the k8s-tools virtualenv that \
             scripts/setup.sh installs (${{RUCAT_CACHE_DIR:-~/.cache/rucat}}/k8s-tools); \
             run the tests with scripts/test.sh"
        )
    });
    let dir = PathBuf::from(dir);
    let tools = Tools {
        python: dir.join("bin/python"),
        validate: dir.join("bin/kubernetes-validate"),
    };
    for tool in [&tools.python, &tools.validate] {
        assert!(
            tool.is_file(),
            "{} is missing: RUCAT_K8S_TOOLS={} is not the k8s-tools virtualenv of \
             scripts/setup.sh (run scripts/setup.sh to install it)",
            tool.display(),
            dir.display()
        );
    }
    tools
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `scripts/k8s_check.py ARGS…` with the tools' Python.
fn k8s_check(args: &[&str]) -> Output {
    let tools = tools();
    run(Command::new(&tools.python)
        .arg(repo_root().join("scripts/k8s_check.py"))
        .args(args))
}

fn with_sets<'a>(mut args: Vec<&'a str>, sets: &[&'a str]) -> Vec<&'a str> {
    for set in sets {
        args.push("--set");
        args.push(set);
    }
    args
}

/// What `helm template` made of the chart: one YAML file per object, and the objects.
struct Rendering {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
    objects: Vec<Value>,
}

impl Rendering {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn container<'a>(&'a self, deployment: &str) -> &'a Value {
        &self.pod_spec(deployment)["containers"][0]
    }

    fn pod_spec<'a>(&'a self, deployment: &str) -> &'a Value {
        &self.get("Deployment", deployment)["spec"]["template"]["spec"]
    }

    /// How many objects of each kind.
    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for object in &self.objects {
            let kind = object["kind"].as_str().expect("a kind").to_owned();
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    }

    fn notes(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("NOTES.txt")).expect("NOTES.txt")
    }
}

fn render(release: &str, namespace: &str, sets: &[&str]) -> Rendering {
    render_with(release, namespace, &with_sets(Vec::new(), sets))
}

/// `helm template` with more k8s_check.py arguments (`--set EXPR`, `-f FILE`).
fn render_with(release: &str, namespace: &str, extra: &[&str]) -> Rendering {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let chart = chart();
    let out = dir.path().to_str().expect("a UTF-8 path").to_owned();
    let mut args = vec![
        "template",
        chart.to_str().expect("a UTF-8 path"),
        &out,
        "--release",
        release,
        "--namespace",
        namespace,
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = k8s_check(&args);
    assert!(
        output.status.success(),
        "helm template failed:\n{}",
        text(&output)
    );
    let objects: Vec<Value> =
        serde_json::from_slice(&output.stdout).expect("template --json prints a JSON array");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("the rendered objects")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), objects.len(), "one file per rendered object");
    Rendering {
        dir,
        files,
        objects,
    }
}

/// `helm template` that must fail (exit status 2): its stderr.
fn render_fails(sets: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let chart = chart();
    let args = vec![
        "template",
        chart.to_str().expect("a UTF-8 path"),
        dir.path().to_str().expect("a UTF-8 path"),
    ];
    let output = k8s_check(&with_sets(args, sets));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `kubernetes-validate --strict` on files, for each version; the output on failure.
fn validate(files: &[PathBuf]) -> Result<(), String> {
    let tools = tools();
    for version in KUBERNETES_VERSIONS {
        let mut command = Command::new(&tools.validate);
        command.args(["--strict", "--quiet"]);
        if let Some(version) = version {
            command.args(["--kubernetes-version", version]);
        }
        let output = run(command.args(files));
        if !output.status.success() {
            return Err(format!(
                "kubernetes-validate --strict (Kubernetes {}):\n{}",
                version.unwrap_or("latest"),
                text(&output)
            ));
        }
    }
    Ok(())
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not a list"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A Role's rules as ((API group, resource), verbs), each resource once.
fn rules(role: &Value) -> Vec<((String, String), BTreeSet<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let groups = strings(&rule["apiGroups"]);
        assert_eq!(groups.len(), 1, "one API group per rule: {rule}");
        let group = groups.into_iter().next().expect("a group");
        for resource in strings(&rule["resources"]) {
            let key = (group.clone(), resource);
            assert!(
                !out.iter().any(|(k, _)| *k == key),
                "{key:?} appears in two rules of {}",
                role["metadata"]["name"]
            );
            out.push((key, strings(&rule["verbs"])));
        }
    }
    out.sort();
    out
}

fn core(resource: &str, verbs: &[&str]) -> ((String, String), BTreeSet<String>) {
    ((String::new(), resource.to_owned()), set(verbs))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}'s env", container["name"]))
}

/// The rendered rucat.toml, through Rucat's own loader (a key it does not know is an error), as
/// the server and the monitor see it.
fn rucat_settings(rendering: &Rendering, configmap: &str) -> Settings {
    rucat_settings_with(rendering, configmap, None)
}

/// The rendered rucat.toml through Rucat's own loader, with a `--proxy-listen` flag.
fn rucat_settings_with(
    rendering: &Rendering,
    configmap: &str,
    proxy_listen: Option<&str>,
) -> Settings {
    rucat_settings_over(
        rendering,
        configmap,
        RoleArgs {
            proxy: ProxyArgs {
                proxy_listen: proxy_listen.map(str::to_owned),
            },
            ..RoleArgs::default()
        },
    )
}

/// The rendered rucat.toml through Rucat's own loader, under flags or environment variables
/// (`overrides`; the data directory and the store URL are always given, as in the pods).
fn rucat_settings_over(rendering: &Rendering, configmap: &str, overrides: RoleArgs) -> Settings {
    let toml = rendering.get("ConfigMap", configmap)["data"]["rucat.toml"]
        .as_str()
        .expect("rucat.toml");
    let dir = tempfile::tempdir().expect("a scratch directory");
    let path = dir.path().join("rucat.toml");
    std::fs::write(&path, toml).expect("write rucat.toml");
    let file = FileConfig::load(&path)
        .unwrap_or_else(|error| panic!("Rucat refuses the chart's rucat.toml: {error}\n{toml}"));
    Settings::resolve(
        RoleArgs {
            data_dir: Some("/var/lib/rucat".into()),
            database: DatabaseArgs {
                database_url: Some("postgres://rucat@db/rucat".into()),
                ..overrides.database
            },
            ..overrides
        },
        file,
    )
    .unwrap_or_else(|error| panic!("Rucat refuses the chart's rucat.toml: {error}\n{toml}"))
}

/// A Secret's value, from `stringData` or (base64) `data`.
fn secret_value(secret: &Value, key: &str) -> String {
    if let Some(text) = secret["stringData"][key].as_str() {
        return text.to_owned();
    }
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in Secret {}", secret["metadata"]["name"]));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 data");
    String::from_utf8(bytes).expect("UTF-8")
}

/// The tokens file of a rendered Secret, through Rucat's own tokens-file loader.
fn token_store(secret: &Value, key: &str) -> TokenStore {
    let text = secret_value(secret, key);
    let dir = tempfile::tempdir().expect("a scratch directory");
    let path = dir.path().join(key);
    std::fs::write(&path, &text).expect("write the tokens file");
    TokenStore::open(vec![], Some(path))
        .unwrap_or_else(|error| panic!("Rucat refuses the chart's tokens file: {error}\n{text}"))
}

const DATABASE_URL: &str = "database.url=postgres://rucat:secret@db:5432/rucat";
const ALICE_TOKEN: &str = "rucat_alice_test_token";
const ROOT_TOKEN: &str = "rucat_root_test_token";

/// `--set` expressions for two tokens from values: alice (user), root (admin).
fn token_sets() -> Vec<String> {
    vec![
        format!(
            "auth.tokens[0].user=alice,auth.tokens[0].role=user,auth.tokens[0].hash={}",
            TokenHash::of(ALICE_TOKEN)
        ),
        format!(
            "auth.tokens[1].user=root,auth.tokens[1].role=admin,auth.tokens[1].hash={}",
            TokenHash::of(ROOT_TOKEN)
        ),
    ]
}

/// The proxy's required values: where clients reach it, and TLS at the proxy.
const PROXY_TLS: &str =
    "proxy.publicUrl=sc://spark.example.com:443,proxy.tls.existingSecret=rucat-proxy-tls";

/// What the proxy of a rendering with [`PROXY_TLS`] is expected to be.
const PROXY_TLS_EXPECT: Option<ProxyExpect<'static>> = Some(ProxyExpect {
    public_url: "sc://spark.example.com:443/;use_ssl=true",
    tls_secret: Some("rucat-proxy-tls"),
});

/// The proxy behind an Ingress that ends TLS (ingress-nginx), plaintext from there to the proxy.
const PROXY_INGRESS: &str = "proxy.publicUrl=sc://spark.example.com:443,\
     proxy.allowPlaintext=true,proxy.ingress.enabled=true,proxy.ingress.className=nginx,\
     proxy.ingress.host=spark.example.com,proxy.ingress.tlsSecretName=spark-example-tls";
const INGRESS_NGINX: &str =
    "proxy.ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/backend-protocol=GRPC";

const JWT_SET: &str = "auth.jwt.issuer=https://idp.example.com,auth.jwt.audience=rucat,\
     auth.jwt.jwksUrl=https://idp.example.com/jwks";

/// What a rendering is expected to be made of.
struct Expect<'a> {
    release: &'a str,
    release_namespace: &'a str,
    fullname: &'a str,
    engine_namespace: &'a str,
    database_secret: (&'a str, &'a str),
    /// The Secret and key of the tokens file, when there is one.
    tokens_secret: Option<(&'a str, &'a str)>,
    /// The metrics listener, when metrics.enabled.
    metrics: Option<MetricsExpect>,
    /// The Spark Connect proxy, when the chart runs it.
    proxy: Option<ProxyExpect<'a>>,
}

/// What the chart's metrics listener is expected to be.
struct MetricsExpect {
    /// metrics.port.
    port: u16,
    /// metrics.from: the peers each role's NetworkPolicy admits to that port.
    from: Value,
}

/// What the chart's proxy is expected to be.
#[derive(Clone, Copy)]
struct ProxyExpect<'a> {
    /// [proxy] public_url, as Rucat resolves it.
    public_url: &'a str,
    /// The TLS Secret mounted into the proxy pods (None: plaintext, explicitly allowed).
    tls_secret: Option<&'a str>,
}

/// What holds in every rendering: authentication on and never bypassed, no wildcard and no
/// cluster-wide right, exact verbs for the monitor, the server and the drivers, executors with
/// no rights, every object in its namespace, the pods' security, the store URL from a Secret,
/// the engine NetworkPolicies matching Rucat's configuration. Returns Rucat's settings.
fn check_common(r: &Rendering, e: &Expect<'_>) -> Settings {
    let fullname = e.fullname;
    let settings = rucat_settings(r, &format!("{fullname}-config"));

    // No way around authentication, anywhere (objects, rucat.toml, notes).
    let everything = format!(
        "{}\n{}",
        serde_json::to_string(&r.objects).expect("JSON"),
        r.notes()
    )
    .to_lowercase()
    .replace('-', "_");
    assert!(
        !everything.contains("allow_unauthenticated"),
        "nothing may turn authentication off"
    );
    assert!(settings.auth.is_enabled(), "authentication is configured");
    assert!(
        r.notes().contains("RUCAT_TOKEN="),
        "the notes say how to use a token"
    );

    // RBAC: namespaced, no wildcard, exact verbs.
    assert!(
        r.of_kind("ClusterRole").is_empty() && r.of_kind("ClusterRoleBinding").is_empty(),
        "Rucat needs no cluster-wide right"
    );
    for role in r.of_kind("Role") {
        assert_eq!(role["metadata"]["namespace"], e.engine_namespace);
        for rule in role["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !strings(&rule[field]).contains("*"),
                    "{} grants '*' in {field}: {rule}",
                    role["metadata"]["name"]
                );
            }
        }
    }
    let creates_policies = settings.kubernetes.network_policy.is_some();
    let mut monitor_rules = vec![
        core("pods", &["get", "list", "watch", "create", "delete"]),
        core("pods/log", &["get"]),
        // The engines' token Secrets: created before the pod, read to compare one left by an
        // earlier attempt, patched to make the pod their owner, deleted when stale and at stop.
        core("secrets", &["get", "create", "patch", "delete"]),
        core("services", &["get", "create", "delete"]),
    ];
    if creates_policies {
        monitor_rules.push((
            ("networking.k8s.io".to_owned(), "networkpolicies".to_owned()),
            set(&["get", "create", "delete"]),
        ));
    }
    monitor_rules.sort();
    assert_eq!(
        rules(r.get("Role", &format!("{fullname}-monitor"))),
        monitor_rules,
        "the monitor's rights (NetworkPolicies exactly when Rucat creates them)"
    );
    assert_eq!(
        rules(r.get("Role", &format!("{fullname}-server"))),
        vec![core("pods/log", &["get"])],
        "the server's rights"
    );
    let driver_rules = rules(r.get("Role", &format!("{fullname}-spark-driver")));
    let collection = ["create", "list", "delete", "deletecollection"];
    assert_eq!(
        driver_rules,
        vec![
            core("configmaps", &collection),
            core("persistentvolumeclaims", &collection),
            core(
                "pods",
                &[
                    "get",
                    "list",
                    "watch",
                    "create",
                    "delete",
                    "deletecollection"
                ]
            ),
        ],
        "the drivers' rights: their executors and what those need, no Secrets, no Services"
    );
    for role in r.of_kind("Role") {
        let name = role["metadata"]["name"].as_str().expect("a name");
        if name != format!("{fullname}-monitor") {
            assert!(
                !rules(role)
                    .iter()
                    .any(|((_, resource), _)| resource == "secrets"),
                "only the monitor has rights on Secrets, not {name}"
            );
        }
    }

    // Who is bound to what.
    let driver_sa = settings.kubernetes.service_account.as_str();
    let executor_sa = settings.kubernetes.executor_service_account.as_str();
    assert_ne!(driver_sa, executor_sa);
    for binding in r.of_kind("RoleBinding") {
        assert_eq!(binding["metadata"]["namespace"], e.engine_namespace);
        let name = binding["metadata"]["name"].as_str().expect("a name");
        let subjects = binding["subjects"].as_array().expect("subjects");
        assert_eq!(subjects.len(), 1, "{name}");
        let subject = &subjects[0];
        assert_eq!(subject["kind"], "ServiceAccount");
        assert_ne!(
            subject["name"], executor_sa,
            "no Role is bound to the executors"
        );
        assert_ne!(
            subject["name"],
            format!("{fullname}-proxy"),
            "no Role is bound to the proxy"
        );
        assert_eq!(binding["roleRef"]["name"], name);
        let (account, namespace) = if name.ends_with("-spark-driver") {
            (driver_sa.to_owned(), e.engine_namespace)
        } else if name.ends_with("-monitor") {
            (format!("{fullname}-monitor"), e.release_namespace)
        } else {
            (format!("{fullname}-server"), e.release_namespace)
        };
        assert_eq!(subject["name"], account, "{name}");
        assert_eq!(subject["namespace"], namespace, "{name}");
    }
    let executor = r.get("ServiceAccount", executor_sa);
    assert_eq!(executor["metadata"]["namespace"], e.engine_namespace);
    assert_eq!(
        executor["automountServiceAccountToken"], false,
        "executors get no API token"
    );
    assert_eq!(
        r.get("ServiceAccount", driver_sa)["metadata"]["namespace"],
        e.engine_namespace
    );

    // Every object where it belongs: the engines' side in the engine namespace.
    for object in &r.objects {
        let kind = object["kind"].as_str().expect("a kind");
        let name = object["metadata"]["name"].as_str().expect("a name");
        let namespace = &object["metadata"]["namespace"];
        let expected = match kind {
            "Namespace" => {
                assert!(namespace.is_null(), "a Namespace is not namespaced");
                continue;
            }
            "Role" | "RoleBinding" | "ResourceQuota" => e.engine_namespace,
            "ServiceAccount" if name == driver_sa || name == executor_sa => e.engine_namespace,
            "NetworkPolicy" if name == format!("{fullname}-engines") => e.engine_namespace,
            _ => e.release_namespace,
        };
        assert_eq!(namespace, expected, "{kind} {name}");
    }
    if let Some(namespace) = r.of_kind("Namespace").first() {
        assert_eq!(r.of_kind("Namespace").len(), 1);
        assert_eq!(namespace["metadata"]["name"], e.engine_namespace);
        assert_ne!(e.engine_namespace, e.release_namespace);
        let labels = &namespace["metadata"]["labels"];
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}")],
                "restricted",
                "Pod Security {mode}"
            );
        }
        assert_eq!(
            labels["pod-security.kubernetes.io/enforce-version"],
            "latest"
        );
    }
    assert_eq!(
        settings.kubernetes.namespace.as_deref(),
        Some(e.engine_namespace)
    );

    // The pods.
    let mut components = vec!["server", "monitor"];
    if e.proxy.is_some() {
        components.push("proxy");
    }
    for component in components {
        let pod = r.pod_spec(&format!("{fullname}-{component}"));
        assert_eq!(pod["serviceAccountName"], format!("{fullname}-{component}"));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(strings(&security["capabilities"]["drop"]), set(&["ALL"]));
        assert_eq!(env(container, "RUCAT_DATA_DIR")["value"], "/var/lib/rucat");
        assert_eq!(
            env(container, "RUCAT_CONFIG")["value"],
            "/etc/rucat/rucat.toml"
        );
        let url = env(container, "RUCAT_DATABASE_URL");
        assert!(
            url.get("value").is_none(),
            "the store URL is never inline: {url}"
        );
        assert_eq!(
            url["valueFrom"]["secretKeyRef"]["name"],
            e.database_secret.0
        );
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], e.database_secret.1);
        let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
        for mount in mounts {
            assert!(
                mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
                "no subPath mount (it would not receive updates): {mount}"
            );
        }
        let data = mounts
            .iter()
            .find(|m| m["mountPath"] == "/var/lib/rucat")
            .expect("the data directory is mounted");
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == data["name"])
            .expect("the data volume");
        assert!(
            volume.get("emptyDir").is_some(),
            "the data directory is an emptyDir"
        );
        assert!(
            mounts.iter().any(|m| m["mountPath"] == "/etc/rucat"),
            "the configuration is mounted"
        );
        let auth_mount = mounts.iter().find(|m| m["mountPath"] == "/etc/rucat/auth");
        match (component, e.tokens_secret) {
            ("server" | "proxy", Some((secret, key))) => {
                let mount = auth_mount
                    .unwrap_or_else(|| panic!("the tokens file is mounted into the {component}"));
                assert_eq!(mount["readOnly"], true);
                let volume = pod["volumes"]
                    .as_array()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .expect("the tokens volume");
                assert_eq!(volume["secret"]["secretName"], secret);
                let items = volume["secret"]["items"].as_array().expect("items");
                assert_eq!(items.len(), 1);
                assert_eq!(items[0]["key"], key);
                assert_eq!(items[0]["path"], key);
                assert_eq!(
                    settings.auth.tokens_file,
                    Some(PathBuf::from(format!("/etc/rucat/auth/{key}"))),
                    "Rucat reads the mounted file"
                );
            }
            _ => assert!(
                auth_mount.is_none(),
                "no tokens file in the {component} (expected: {:?})",
                e.tokens_secret
            ),
        }
    }
    if e.tokens_secret.is_none() {
        assert_eq!(settings.auth.tokens_file, None);
        assert!(settings.auth.jwt.is_some(), "JWTs, then");
    }

    let server = r.container(&format!("{fullname}-server"));
    assert_eq!(
        server["args"],
        json!(["server", "--listen", "0.0.0.0:3000"])
    );
    assert!(
        !server["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|v| v["name"] == "RUCAT_ALLOW_UNAUTHENTICATED"),
        "no unauthenticated mode"
    );
    assert_eq!(server["ports"][0]["name"], "http");
    assert_eq!(server["ports"][0]["containerPort"], 3000);
    assert_eq!(server["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(server["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(server["readinessProbe"]["httpGet"]["port"], "http");
    let monitor = r.container(&format!("{fullname}-monitor"));
    assert_eq!(monitor["args"], json!(["monitor"]));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert!(
            monitor.get(probe).is_none(),
            "the monitor serves no port: no {probe}"
        );
    }
    let service = r.get("Service", fullname);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], 3000);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    check_metrics(r, e, &settings);

    // The proxy.
    let proxy = format!("{fullname}-proxy");
    match &e.proxy {
        Some(expected) => check_proxy(r, e, expected, &settings),
        None => {
            for kind in [
                "Deployment",
                "Service",
                "Ingress",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "ServiceAccount",
            ] {
                assert!(r.find(kind, &proxy).is_none(), "no proxy {kind}");
            }
        }
    }

    // The engines' NetworkPolicies: Rucat's per-engine ones, and the chart's static one, with
    // the same peers, the first of which are this release's monitor pods.
    let engine_policy = r.find("NetworkPolicy", &format!("{fullname}-engines"));
    match &settings.kubernetes.network_policy {
        Some(policy) => {
            let monitor_labels = &r.get("Deployment", &format!("{fullname}-monitor"))["spec"]
                ["template"]["metadata"]["labels"];
            assert_eq!(monitor_labels["rucat.io/engine-access"], "true");
            let own = Peer {
                namespace: Some(e.release_namespace.to_owned()),
                pod_labels: BTreeMap::from([
                    (
                        "app.kubernetes.io/instance".to_owned(),
                        e.release.to_owned(),
                    ),
                    ("rucat.io/engine-access".to_owned(), "true".to_owned()),
                ]),
            };
            assert_eq!(policy.connect_from.first(), Some(&own), "the monitor first");
            for (label, value) in &own.pod_labels {
                assert_eq!(
                    &monitor_labels[label], value,
                    "the monitor pods match {label}"
                );
            }
            // The engines' Spark Connect port admits exactly the proxy and the monitor pods of
            // this release (those labelled rucat.io/engine-access=true), not the server's.
            let mut expected = set(&[format!("{fullname}-monitor").as_str()]);
            if e.proxy.is_some() {
                expected.insert(proxy.clone());
            }
            let admitted: BTreeSet<String> = r
                .of_kind("Deployment")
                .into_iter()
                .filter(|d| d["metadata"]["namespace"] == e.release_namespace)
                .filter(|d| {
                    let labels = &d["spec"]["template"]["metadata"]["labels"];
                    own.pod_labels.iter().all(|(k, v)| labels[k] == *v)
                })
                .map(|d| d["metadata"]["name"].as_str().expect("a name").to_owned())
                .collect();
            assert_eq!(
                admitted, expected,
                "the engine-access peer selects the proxy and the monitor only"
            );
            let engine_policy = engine_policy.expect("the static engine NetworkPolicy");
            check_engine_policy(engine_policy, &policy.connect_from, e.engine_namespace);
        }
        None => assert!(engine_policy.is_none(), "no engine policy without policies"),
    }
    settings
}

/// The metrics listener. With metrics.enabled: every role's container has RUCAT_METRICS_LISTEN,
/// which Rucat resolves over the rendered rucat.toml to a listener on the metrics port, and a
/// port named metrics; each role's NetworkPolicy admits exactly metrics.from on that port, in a
/// rule of its own, and the monitor's nothing else. Without: none of it, and the monitor serves
/// no port and admits nothing.
fn check_metrics(r: &Rendering, e: &Expect<'_>, settings: &Settings) {
    let mut components = vec!["server", "monitor"];
    if e.proxy.is_some() {
        components.push("proxy");
    }
    for component in components {
        let name = format!("{}-{component}", e.fullname);
        let container = r.container(&name);
        let listen = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|v| v["name"] == "RUCAT_METRICS_LISTEN");
        let ports: Vec<&Value> = container["ports"]
            .as_array()
            .map(|ports| ports.iter().collect())
            .unwrap_or_default();
        let metrics_ports: Vec<&Value> = ports
            .iter()
            .copied()
            .filter(|p| p["name"] == "metrics")
            .collect();
        let policy = r.find("NetworkPolicy", &name);
        assert_eq!(
            policy.is_some(),
            settings.kubernetes.network_policy.is_some(),
            "a NetworkPolicy for the {component} exactly with networkPolicy.enabled"
        );
        let rules: Vec<&Value> = policy
            .and_then(|p| p["spec"]["ingress"].as_array())
            .map(|rules| rules.iter().collect())
            .unwrap_or_default();
        match &e.metrics {
            None => {
                assert!(listen.is_none(), "no metrics listener in the {component}");
                assert!(
                    metrics_ports.is_empty(),
                    "no metrics port in the {component}"
                );
                assert!(
                    settings.metrics.listen.is_none(),
                    "no [metrics] listen in the file"
                );
                if component == "monitor" {
                    assert!(
                        container.get("ports").is_none(),
                        "the monitor serves no port"
                    );
                    if let Some(policy) = policy {
                        assert!(
                            policy["spec"].get("ingress").is_none(),
                            "no ingress to the monitor: {policy}"
                        );
                    }
                } else if policy.is_some() {
                    assert_eq!(rules.len(), 1, "the {component}'s own port only");
                }
            }
            Some(metrics) => {
                let address = format!("0.0.0.0:{}", metrics.port);
                assert_eq!(
                    listen.map(|v| &v["value"]),
                    Some(&json!(address)),
                    "the {component}'s metrics listener"
                );
                // As the role resolves it: the variable over the rendered rucat.toml (an
                // environment variable beats the file).
                let resolved = rucat_settings_over(
                    r,
                    &format!("{}-config", e.fullname),
                    RoleArgs {
                        metrics: MetricsArgs {
                            metrics_listen: Some(address.clone()),
                            ..MetricsArgs::default()
                        },
                        ..RoleArgs::default()
                    },
                );
                assert!(resolved.metrics.enabled, "metrics are kept");
                assert_eq!(
                    resolved.metrics.listen,
                    Some(address.parse().expect("an address")),
                    "Rucat opens the listener on the metrics port"
                );
                assert_eq!(
                    metrics_ports,
                    [&json!({"name": "metrics", "containerPort": metrics.port, "protocol": "TCP"})],
                    "the {component}'s metrics port"
                );
                assert_eq!(
                    ports
                        .iter()
                        .filter(|p| p["containerPort"] == metrics.port)
                        .count(),
                    1,
                    "no other port of the {component} is the metrics port"
                );
                if policy.is_some() {
                    let expected = json!({
                        "ports": [{"port": metrics.port, "protocol": "TCP"}],
                        "from": metrics.from,
                    });
                    let on_metrics: Vec<&Value> = rules
                        .iter()
                        .copied()
                        .filter(|rule| {
                            rule["ports"].as_array().is_none_or(|ports| {
                                ports
                                    .iter()
                                    .any(|p| p["port"] == metrics.port || p["port"] == "metrics")
                            })
                        })
                        .collect();
                    assert_eq!(
                        on_metrics,
                        [&expected],
                        "the {component}'s metrics port admits exactly metrics.from, alone"
                    );
                    let own = usize::from(component != "monitor");
                    assert_eq!(
                        rules.len(),
                        own + 1,
                        "the {component} admits its own port and the metrics port only"
                    );
                }
            }
        }
    }
}

/// The Spark Connect proxy: its pods (the engine-access label, no API token, the tokens file and
/// TLS mounted as directories, probes on its port), its Service, NetworkPolicy and disruption
/// budget, and its settings as Rucat resolves them, with and without its --proxy-listen flag.
fn check_proxy(r: &Rendering, e: &Expect<'_>, expected: &ProxyExpect<'_>, settings: &Settings) {
    let name = format!("{}-proxy", e.fullname);
    let template = &r.get("Deployment", &name)["spec"]["template"];
    let labels = &template["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/component"], "proxy");
    assert_eq!(
        labels["rucat.io/engine-access"], "true",
        "the proxy pods may reach the engines"
    );
    let pod = &template["spec"];
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "no API token in the proxy pods"
    );
    assert_eq!(pod["serviceAccountName"], name);
    if let Some(account) = r.find("ServiceAccount", &name) {
        assert_eq!(account["metadata"]["namespace"], e.release_namespace);
        assert_eq!(account["automountServiceAccountToken"], false);
    }
    for volume in pod["volumes"].as_array().expect("volumes") {
        assert!(
            volume.get("projected").is_none(),
            "no projected (token) volume: {volume}"
        );
    }
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        json!(["proxy", "--proxy-listen", "0.0.0.0:15002"])
    );
    let mut ports = vec![json!({"name": "grpc", "containerPort": 15002, "protocol": "TCP"})];
    if let Some(metrics) = &e.metrics {
        ports.push(json!({"name": "metrics", "containerPort": metrics.port, "protocol": "TCP"}));
    }
    assert_eq!(container["ports"], Value::Array(ports));
    let scheme = if expected.tls_secret.is_some() {
        "HTTPS"
    } else {
        "HTTP"
    };
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(
            container[probe]["httpGet"],
            json!({"path": "/healthz", "port": "grpc", "scheme": scheme}),
            "the proxy's {probe}"
        );
    }

    // TLS: the Secret mounted as a directory (no subPath, checked for every mount above), and
    // Rucat told where the files are; or plaintext, explicitly allowed.
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let tls_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == "/etc/rucat/proxy-tls");
    match expected.tls_secret {
        Some(secret) => {
            let mount = tls_mount.expect("the TLS Secret is mounted into the proxy");
            assert_eq!(mount["readOnly"], true);
            assert!(mount.get("subPath").is_none() && mount.get("subPathExpr").is_none());
            let volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the TLS volume");
            assert_eq!(volume["secret"]["secretName"], secret);
            assert_eq!(
                volume["secret"]["items"],
                json!([
                    {"key": "tls.crt", "path": "tls.crt"},
                    {"key": "tls.key", "path": "tls.key"},
                ])
            );
            assert_eq!(
                volume["secret"]["defaultMode"], 0o440,
                "the key is not world-readable"
            );
            let tls = settings
                .proxy
                .tls
                .as_ref()
                .expect("[proxy] tls_cert, tls_key");
            assert_eq!(tls.cert, PathBuf::from("/etc/rucat/proxy-tls/tls.crt"));
            assert_eq!(tls.key, PathBuf::from("/etc/rucat/proxy-tls/tls.key"));
            assert!(!settings.proxy.allow_plaintext, "no plaintext with TLS");
        }
        None => {
            assert!(tls_mount.is_none(), "no TLS mount without a TLS Secret");
            assert!(settings.proxy.tls.is_none());
            assert!(
                settings.proxy.allow_plaintext,
                "plaintext beyond loopback only when allowed"
            );
        }
    }

    // Where clients reach it: what the server shows.
    assert_eq!(
        settings
            .proxy
            .public_url()
            .expect("[proxy] public_url")
            .as_str(),
        expected.public_url
    );
    // As the proxy container resolves it: listening beyond loopback (the flag; the file has no
    // listen), which Rucat allows only with TLS or allow_plaintext.
    assert_eq!(
        settings.proxy.listen,
        "127.0.0.1:15002".parse().expect("an address"),
        "no [proxy] listen in the file: the flag gives it"
    );
    let proxy_settings =
        rucat_settings_with(r, &format!("{}-config", e.fullname), Some("0.0.0.0:15002"));
    assert_eq!(
        proxy_settings.proxy.listen,
        "0.0.0.0:15002".parse().expect("an address")
    );
    assert!(proxy_settings.proxy.tls.is_some() || proxy_settings.proxy.allow_plaintext);
    assert_eq!(
        proxy_settings
            .proxy
            .public_url()
            .expect("[proxy] public_url")
            .as_str(),
        expected.public_url
    );

    // Its Service, NetworkPolicy and disruption budget.
    let service = r.get("Service", &name);
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/component"],
        "proxy"
    );
    let ports = service["spec"]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"], "grpc");
    assert_eq!(ports[0]["targetPort"], "grpc");
    assert_eq!(ports[0]["protocol"], "TCP");
    if let Some(policy) = r.find("NetworkPolicy", &name) {
        let spec = &policy["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "proxy"
        );
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        let ingress = spec["ingress"].as_array().expect("ingress");
        assert_eq!(
            ingress.len(),
            1 + usize::from(e.metrics.is_some()),
            "the Spark Connect port (and the metrics port) only"
        );
        assert_eq!(
            ingress[0]["ports"],
            json!([{"port": 15002, "protocol": "TCP"}]),
            "the Spark Connect port only"
        );
    } else {
        assert!(settings.kubernetes.network_policy.is_none());
    }
    if let Some(budget) = r.find("PodDisruptionBudget", &name) {
        assert_eq!(budget["spec"]["maxUnavailable"], 1);
        assert_eq!(
            budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
            "proxy"
        );
    }
}

/// The chart's static engine NetworkPolicy: every engine pod, ingress only from `peers`, only
/// on TCP 15002.
fn check_engine_policy(policy: &Value, peers: &[Peer], engine_namespace: &str) {
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"],
        json!({"matchExpressions": [{"key": "rucat.io/engine-id", "operator": "Exists"}]}),
        "every engine pod (driver and executors)"
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    let ingress = spec["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": 15002, "protocol": "TCP"}]),
        "the Spark Connect port only"
    );
    let expected: Vec<Value> = peers
        .iter()
        .map(|peer| {
            json!({
                "namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name":
                        peer.namespace.as_deref().unwrap_or(engine_namespace),
                }},
                "podSelector": {"matchLabels": peer.pod_labels},
            })
        })
        .collect();
    assert_eq!(
        ingress[0]["from"],
        Value::Array(expected),
        "the peers Rucat's per-engine policies admit"
    );
}

#[test]
fn chart_lints_clean_in_strict_mode() {
    let chart = chart();
    let chart = chart.to_str().expect("a UTF-8 path");
    let tokens = token_sets();
    // With the chart's own values (as `helm lint` does; the missing store, credentials and
    // proxy settings are only warnings in lint mode), with a store set, and with the variants
    // rendered below.
    for sets in [
        vec![],
        vec![DATABASE_URL],
        vec![DATABASE_URL, &tokens[0], &tokens[1], PROXY_TLS],
        vec![
            DATABASE_URL,
            JWT_SET,
            PROXY_TLS,
            "networkPolicy.enabled=false",
        ],
        vec![
            "database.existingSecret=rucat-db",
            "auth.existingSecret=rucat-tokens",
            "kubernetes.namespace=spark",
            "kubernetes.createNamespace=false",
            "kubernetes.resourceQuota.pods=100",
            PROXY_TLS,
        ],
        vec![DATABASE_URL, &tokens[0], PROXY_INGRESS, INGRESS_NGINX],
        vec![DATABASE_URL, &tokens[0], "proxy.enabled=false"],
        vec![DATABASE_URL, &tokens[0], PROXY_TLS, "metrics.enabled=true"],
    ] {
        let output = k8s_check(&with_sets(vec!["lint", chart], &sets));
        assert!(
            output.status.success(),
            "helm lint --strict failed with {sets:?}:\n{}",
            text(&output)
        );
    }
}

#[test]
fn default_rendering_is_valid_and_least_privileged() {
    let tokens = token_sets();
    let r = render(
        "rucat",
        "rucat",
        &[DATABASE_URL, &tokens[0], &tokens[1], PROXY_TLS],
    );
    if let Err(problems) = validate(&r.files) {
        panic!("{problems}");
    }
    let settings = check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: None,
            proxy: PROXY_TLS_EXPECT,
        },
    );
    let kinds: Vec<(&str, usize)> = vec![
        ("ConfigMap", 1),
        ("Deployment", 3),
        ("Namespace", 1),
        ("NetworkPolicy", 4),
        ("PodDisruptionBudget", 3),
        ("Role", 3),
        ("RoleBinding", 3),
        ("Secret", 2),
        ("Service", 2),
        ("ServiceAccount", 5),
    ];
    assert_eq!(
        r.kinds(),
        kinds
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect::<BTreeMap<_, _>>()
    );

    let secret = r.get("Secret", "rucat-database");
    assert_eq!(
        secret["stringData"]["url"],
        "postgres://rucat:secret@db:5432/rucat"
    );
    // The tokens Secret is a tokens file Rucat reads, holding the two tokens' hashes.
    let store = token_store(r.get("Secret", "rucat-auth"), "tokens.toml");
    assert_eq!(store.len(), 2);
    let alice = store.identify(ALICE_TOKEN).expect("alice's token");
    assert_eq!((alice.user.as_str(), alice.role), ("alice", Role::User));
    let root = store.identify(ROOT_TOKEN).expect("root's token");
    assert_eq!((root.user.as_str(), root.role), ("root", Role::Admin));
    assert!(
        !secret_value(r.get("Secret", "rucat-auth"), "tokens.toml").contains(ALICE_TOKEN),
        "hashes only"
    );
    // The engines get a namespace of their own.
    assert_eq!(
        r.get("Namespace", "rucat-engines")["metadata"]["labels"]
            ["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for deployment in r.of_kind("Deployment") {
        assert_eq!(deployment["spec"]["replicas"], 2);
    }
    let policy = r.get("NetworkPolicy", "rucat-server");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "server"
    );
    let ingress = &policy["spec"]["ingress"];
    assert_eq!(ingress.as_array().map(Vec::len), Some(1));
    assert_eq!(ingress[0]["ports"][0]["port"], "http");
    let from = ingress[0]["from"].as_array().expect("from");
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["rucat.io/client"],
        "true"
    );
    assert!(
        from[0].get("namespaceSelector").is_none(),
        "the release namespace only"
    );
    let monitor_policy = r.get("NetworkPolicy", "rucat-monitor");
    assert!(
        monitor_policy["spec"].get("ingress").is_none(),
        "no ingress to the monitor"
    );
    // The proxy: a ClusterIP Service for gRPC, reached by any pod of the cluster by default.
    let proxy_service = r.get("Service", "rucat-proxy");
    assert_eq!(proxy_service["spec"]["type"], "ClusterIP");
    assert_eq!(
        proxy_service["spec"]["ports"],
        json!([{"name": "grpc", "port": 15002, "targetPort": "grpc", "protocol": "TCP",
                "appProtocol": "grpc"}])
    );
    assert_eq!(
        r.get("NetworkPolicy", "rucat-proxy")["spec"]["ingress"][0]["from"],
        json!([{"namespaceSelector": {}}]),
        "every pod of the cluster: the proxy authenticates every call"
    );
    assert!(r.of_kind("Ingress").is_empty(), "no Ingress by default");
    assert_eq!(
        settings.idle,
        Default::default(),
        "no idle limits by default"
    );
    assert_eq!(settings.proxy.activity_interval, Duration::from_secs(5));
    let notes = r.notes();
    for needed in [
        "rucat engine connect ID --with-token",
        "sc://spark.example.com:443/;use_ssl=true;x-rucat-engine=<engine-id>;token=",
        "use_ssl=true",
    ] {
        assert!(notes.contains(needed), "the notes say {needed:?}:\n{notes}");
    }

    assert_eq!(settings.platform, PlatformKind::Kubernetes);
    assert_eq!(
        settings.auth.tokens_file,
        Some(PathBuf::from("/etc/rucat/auth/tokens.toml"))
    );
    assert!(settings.auth.tokens.is_empty(), "tokens only in the file");
    assert!(settings.auth.jwt.is_none());
    assert_eq!(settings.quotas, Default::default(), "no quota by default");
    assert_eq!(
        settings.kubernetes.namespace.as_deref(),
        Some("rucat-engines")
    );
    assert_eq!(settings.kubernetes.service_account, "rucat-spark");
    assert_eq!(
        settings.kubernetes.executor_service_account,
        "rucat-spark-executor"
    );
    assert_eq!(
        settings
            .kubernetes
            .network_policy
            .as_ref()
            .map(|p| p.connect_from.clone()),
        Some(vec![Peer {
            namespace: Some("rucat".to_owned()),
            pod_labels: BTreeMap::from([
                ("app.kubernetes.io/instance".to_owned(), "rucat".to_owned()),
                ("rucat.io/engine-access".to_owned(), "true".to_owned()),
            ]),
        }]),
        "this release's engine-access pods, in its namespace"
    );
    assert_eq!(settings.kubernetes.versions, ["4.0.1"]);
    assert_eq!(settings.kubernetes.image_for("4.0.1"), "apache/spark:4.0.1");
    assert_eq!(settings.kubernetes.cluster_domain, "cluster.local");
}

/// User names that need TOML's quoting, from a values file, come back intact through Rucat's
/// tokens-file loader; a role left out is "user".
#[test]
fn tokens_from_values_are_quoted_for_rucats_loader() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let values = dir.path().join("values.json");
    let users = [
        ("o'brien \"ops\" \\ team", Some("admin"), "rucat_one"),
        ("zoë@example.com", None, "rucat_two"),
        ("[[tokens]] = #", Some("user"), "rucat_three"),
    ];
    let tokens: Vec<Value> = users
        .iter()
        .map(|(user, role, token)| {
            let mut entry = json!({"user": user, "hash": TokenHash::of(token).to_string()});
            if let Some(role) = role {
                entry["role"] = json!(role);
            }
            entry
        })
        .collect();
    std::fs::write(
        &values,
        serde_json::to_string(&json!({
            "database": {"existingSecret": "rucat-db"},
            "auth": {"tokens": tokens, "reloadIntervalMs": 500},
            "proxy": {
                "publicUrl": "sc://spark.example.com:443",
                "tls": {"existingSecret": "rucat-proxy-tls"},
            },
        }))
        .expect("JSON"),
    )
    .expect("write the values");
    let r = render_with(
        "ops",
        "platform",
        &["-f", values.to_str().expect("a UTF-8 path")],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    let settings = check_common(
        &r,
        &Expect {
            release: "ops",
            release_namespace: "platform",
            fullname: "ops-rucat",
            engine_namespace: "ops-rucat-engines",
            database_secret: ("rucat-db", "url"),
            tokens_secret: Some(("ops-rucat-auth", "tokens.toml")),
            metrics: None,
            proxy: PROXY_TLS_EXPECT,
        },
    );
    assert_eq!(
        settings.auth.reload_interval,
        std::time::Duration::from_millis(500)
    );
    let store = token_store(r.get("Secret", "ops-rucat-auth"), "tokens.toml");
    assert_eq!(store.len(), users.len());
    for (user, role, token) in users {
        let identity = store.identify(token).expect("a configured token");
        assert_eq!(identity.user, user);
        let role = if role == Some("admin") {
            Role::Admin
        } else {
            Role::User
        };
        assert_eq!(identity.role, role, "{user}");
    }
}

#[test]
fn engines_in_their_own_namespace_rendering_is_valid() {
    let r = render(
        "prod",
        "rucat-system",
        &[
            "kubernetes.namespace=spark-engines",
            "networkPolicy.enabled=false",
            "server.replicas=3",
            "monitor.replicas=3",
            "proxy.replicas=3",
            PROXY_TLS,
            "database.existingSecret=rucat-db",
            "auth.existingSecret=rucat-tokens",
            "auth.existingSecretKey=tokens",
        ],
    );
    if let Err(problems) = validate(&r.files) {
        panic!("{problems}");
    }
    let settings = check_common(
        &r,
        &Expect {
            release: "prod",
            release_namespace: "rucat-system",
            fullname: "prod-rucat",
            engine_namespace: "spark-engines",
            database_secret: ("rucat-db", "url"),
            tokens_secret: Some(("rucat-tokens", "tokens")),
            metrics: None,
            proxy: PROXY_TLS_EXPECT,
        },
    );

    assert!(
        r.of_kind("NetworkPolicy").is_empty(),
        "networkPolicy.enabled=false"
    );
    assert!(settings.kubernetes.network_policy.is_none());
    assert!(
        r.of_kind("Secret").is_empty(),
        "existing Secrets are used, none is made"
    );
    assert_eq!(
        settings.auth.tokens_file,
        Some(PathBuf::from("/etc/rucat/auth/tokens"))
    );
    assert!(r.find("Namespace", "spark-engines").is_some(), "created");
    for deployment in r.of_kind("Deployment") {
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert_eq!(deployment["metadata"]["namespace"], "rucat-system");
    }
}

/// An engine namespace that exists already: the chart creates no Namespace, and puts
/// everything else there as usual.
#[test]
fn existing_engine_namespace_rendering_is_valid() {
    let tokens = token_sets();
    let r = render(
        "rucat",
        "rucat",
        &[
            DATABASE_URL,
            &tokens[0],
            PROXY_TLS,
            "kubernetes.namespace=spark",
            "kubernetes.createNamespace=false",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "spark",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: None,
            proxy: PROXY_TLS_EXPECT,
        },
    );
    assert!(r.of_kind("Namespace").is_empty(), "createNamespace=false");
    assert!(r.of_kind("ResourceQuota").is_empty(), "none by default");
    assert_eq!(
        r.get("NetworkPolicy", "rucat-engines")["metadata"]["namespace"],
        "spark"
    );
    assert!(
        r.notes()
            .contains("pod-security.kubernetes.io/enforce=restricted"),
        "the notes say to label the namespace:\n{}",
        r.notes()
    );
}

#[test]
fn resource_quota_rendering_is_valid() {
    let tokens = token_sets();
    let r = render(
        "rucat",
        "rucat",
        &[
            DATABASE_URL,
            &tokens[0],
            PROXY_TLS,
            "kubernetes.resourceQuota.pods=200",
            "kubernetes.resourceQuota.requests\\.cpu=400",
            "kubernetes.resourceQuota.limits\\.memory=1600Gi",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: None,
            proxy: PROXY_TLS_EXPECT,
        },
    );
    let quota = r.get("ResourceQuota", "rucat-engines");
    assert_eq!(quota["metadata"]["namespace"], "rucat-engines");
    assert_eq!(
        quota["spec"]["hard"],
        json!({"pods": "200", "requests.cpu": "400", "limits.memory": "1600Gi"})
    );
}

/// Warm pools from values: one `[[pool]]` table each, which Rucat's loader reads back as
/// configured; the warm engine's objects (`rucat engine render`'s, for a pool) from that rucat.toml
/// validate, carry the pool label and the handover token check. A pool whose version the chart
/// does not offer, a malformed name and a config that is not a string are refused.
#[test]
fn pools_rendering_is_valid() {
    use rucat::engine::EngineId;
    use rucat::platform::kubernetes::{objects, DriverSpec};
    use rucat::platform::{HANDOVER_INTERCEPTOR, HANDOVER_SECRET_ENV, INTERCEPTOR_CONF};
    let tokens = token_sets();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let values = dir.path().join("pools.yaml");
    std::fs::write(
        &values,
        r#"
kubernetes:
  image: "registry.example.com/rucat-spark:{version}"
  versions: ["4.0.1", "4.3.0"]
pools:
  - name: small
    version: "4.0.1"
    size: 2
    configs:
      spark.executor.instances: "2"
      spark.sql.shuffle.partitions: "8"
  - name: bare-43
    version: "4.3.0"
    size: 0
"#,
    )
    .expect("write the values");
    let values = values.to_str().expect("a UTF-8 path");
    let r = render_with(
        "rucat",
        "rucat",
        &with_sets(vec!["-f", values], &[DATABASE_URL, &tokens[0], PROXY_TLS]),
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    let toml = r.get("ConfigMap", "rucat-config")["data"]["rucat.toml"]
        .as_str()
        .expect("rucat.toml");
    assert_eq!(toml.matches("[[pool]]").count(), 2, "{toml}");
    let settings = rucat_settings(&r, "rucat-config");
    let pools: Vec<_> = settings.pools.iter().collect();
    assert_eq!(pools.len(), 2, "{pools:?}");
    assert_eq!(
        (
            pools[0].name.as_str(),
            pools[0].version.as_str(),
            pools[0].size
        ),
        ("small", "4.0.1", 2)
    );
    assert_eq!(
        pools[0].config_map(),
        BTreeMap::from([
            ("spark.executor.instances".to_owned(), "2".to_owned()),
            ("spark.sql.shuffle.partitions".to_owned(), "8".to_owned()),
        ])
    );
    assert_eq!(
        (
            pools[1].name.as_str(),
            pools[1].version.as_str(),
            pools[1].size
        ),
        ("bare-43", "4.3.0", 0)
    );
    assert!(pools[1].config_map().is_empty());

    // A warm engine of the first pool, as the monitors start it with this configuration.
    let id = EngineId::generate();
    let configs = pools[0].config_map();
    let spec = DriverSpec {
        id: &id,
        name: "warm-small",
        version: &pools[0].version,
        configs: &configs,
        generation: 1,
        pool: Some(&pools[0].name),
    };
    let namespace = settings
        .kubernetes
        .namespace
        .clone()
        .expect("the chart names the engine namespace");
    let stream = dir.path().join("warm.yaml");
    std::fs::write(
        &stream,
        objects::render(&spec, &namespace, &settings.kubernetes),
    )
    .expect("write the rendering");
    validate(std::slice::from_ref(&stream)).unwrap_or_else(|problems| panic!("{problems}"));
    let pod = serde_json::to_value(objects::driver_pod(&spec, &namespace, &settings.kubernetes))
        .expect("json");
    assert_eq!(pod["metadata"]["labels"]["rucat.io/pool"], "small");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/rucat-spark:4.0.1");
    assert_eq!(
        env(container, HANDOVER_SECRET_ENV)["valueFrom"]["secretKeyRef"]["key"],
        "token"
    );
    assert!(
        container["env"]
            .as_array()
            .expect("env")
            .iter()
            .all(|e| e["name"] != "SPARK_CONNECT_AUTHENTICATE_TOKEN"),
        "Spark's own token check is off for a warm engine"
    );
    assert!(driver_args(&pod).contains(&format!("{INTERCEPTOR_CONF}={HANDOVER_INTERCEPTOR}")));
    check_restricted("warm driver", &pod["spec"]);

    // Refused: a version not offered (by the chart), a name that is no label value and a
    // config that is not a string (by the values schema).
    let stderr = render_fails(&[
        DATABASE_URL,
        &tokens[0],
        PROXY_TLS,
        "pools[0].name=small,pools[0].version=9.9.9,pools[0].size=1",
    ]);
    assert!(
        stderr.contains("pool \"small\" asks for Spark version \"9.9.9\""),
        "{stderr}"
    );
    for (set, refused) in [
        (
            "auth.existingSecret=t,pools[0].name=Small,pools[0].version=4.0.1,pools[0].size=1",
            "/pools/0/name",
        ),
        (
            "auth.existingSecret=t,pools[0].name=small,pools[0].version=4.0.1,pools[0].size=65",
            "/pools/0/size",
        ),
        (
            "auth.existingSecret=t,pools[0].name=small,pools[0].version=4.0.1,pools[0].size=1,\
             pools[0].configs.spark\\.executor\\.instances=2",
            "/pools/0/configs/spark.executor.instances",
        ),
    ] {
        let stderr = render_fails(&[set]);
        assert!(stderr.contains(refused), "{set}: {stderr}");
    }
}

/// OIDC JWTs only (no tokens file), with quotas and direct Spark Connect clients.
#[test]
fn jwt_only_rendering_is_valid() {
    let r = render(
        "rucat",
        "rucat",
        &[
            DATABASE_URL,
            JWT_SET,
            PROXY_TLS,
            "auth.jwt.userClaim=email,auth.jwt.adminClaim=groups,auth.jwt.adminValue=rucat-admins",
            "auth.jwt.leewaySecs=30,auth.jwt.refreshIntervalMs=60000",
            "quota.maxEngines=10,quota.maxActiveEngines=3",
            "quota.users.alice.maxActiveEngines=5",
            "networkPolicy.engineClients[0].namespace=notebooks",
            "networkPolicy.engineClients[0].podLabels.app=jupyter",
            "networkPolicy.engineClients[1].podLabels.role=spark-client",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    let settings = check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: None,
            metrics: None,
            proxy: PROXY_TLS_EXPECT,
        },
    );
    assert!(r.find("Secret", "rucat-auth").is_none(), "no tokens Secret");
    let jwt = settings.auth.jwt.as_ref().expect("[auth.jwt]");
    assert_eq!(jwt.issuer, "https://idp.example.com");
    assert_eq!(jwt.audience, "rucat");
    assert_eq!(
        jwt.jwks,
        rucat::auth::jwt::JwksSource::Url("https://idp.example.com/jwks".to_owned())
    );
    assert_eq!(jwt.user_claim, "email");
    assert_eq!(
        jwt.admin,
        Some(("groups".to_owned(), "rucat-admins".to_owned()))
    );
    assert_eq!(jwt.leeway_secs, 30);
    assert_eq!(jwt.refresh_interval, std::time::Duration::from_secs(60));
    assert_eq!(settings.quotas.max_engines, Some(10));
    assert_eq!(settings.quotas.max_active_engines, Some(3));
    let alice = settings.quotas.for_owner("alice");
    assert_eq!(
        (alice.max_engines, alice.max_active_engines),
        (Some(10), Some(5))
    );
    let peers = &settings
        .kubernetes
        .network_policy
        .as_ref()
        .expect("[kubernetes.network_policy]")
        .connect_from;
    assert_eq!(peers.len(), 3);
    assert_eq!(
        peers[1],
        Peer {
            namespace: Some("notebooks".to_owned()),
            pod_labels: BTreeMap::from([("app".to_owned(), "jupyter".to_owned())]),
        }
    );
    assert_eq!(
        peers[2],
        Peer {
            namespace: None,
            pod_labels: BTreeMap::from([("role".to_owned(), "spark-client".to_owned())]),
        }
    );
}

/// The proxy behind an Ingress that ends TLS (allowPlaintext), with idle auto-stop limits.
#[test]
fn proxy_behind_an_ingress_rendering_is_valid() {
    let tokens = token_sets();
    let r = render(
        "rucat",
        "rucat",
        &[
            DATABASE_URL,
            &tokens[0],
            PROXY_INGRESS,
            INGRESS_NGINX,
            "idle.defaultMinutes=30,idle.maxMinutes=120",
            "proxy.activityIntervalMs=2000",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    let settings = check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: None,
            proxy: Some(ProxyExpect {
                // Clients reach the Ingress over TLS: use_ssl is added.
                public_url: "sc://spark.example.com:443/;use_ssl=true",
                tls_secret: None,
            }),
        },
    );
    let ingress = r.get("Ingress", "rucat-proxy");
    assert_eq!(ingress["metadata"]["namespace"], "rucat");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"],
        "GRPC"
    );
    assert_eq!(
        ingress["spec"],
        json!({
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["spark.example.com"], "secretName": "spark-example-tls"}],
            "rules": [{
                "host": "spark.example.com",
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "rucat-proxy", "port": {"name": "grpc"}}},
                }]},
            }],
        })
    );
    assert_eq!(
        settings.idle,
        IdleTimeouts {
            default_minutes: 30,
            max_minutes: 120,
        }
    );
    assert_eq!(settings.proxy.activity_interval, Duration::from_secs(2));
    let notes = r.notes();
    assert!(
        notes.contains("proxy.allowPlaintext") && notes.contains("at the Ingress"),
        "the notes say where TLS ends:\n{notes}"
    );
}

/// The proxy behind a LoadBalancer with TLS at the proxy: a public URL that names use_ssl keeps
/// it as given; the NetworkPolicy admits the configured peers; OIDC JWTs only (no tokens file
/// in the proxy either).
#[test]
fn proxy_load_balancer_rendering_is_valid() {
    let r = render(
        "prod",
        "rucat-system",
        &[
            "database.existingSecret=rucat-db",
            JWT_SET,
            "proxy.publicUrl=sc://spark.example.com:443/;use_ssl=true",
            "proxy.tls.existingSecret=spark-example-tls",
            "proxy.service.type=LoadBalancer,proxy.service.port=443,proxy.service.appProtocol=",
            "proxy.service.annotations.service\\.beta\\.kubernetes\\.io/aws-load-balancer-type=nlb",
            "proxy.networkPolicy.from[0].ipBlock.cidr=203.0.113.0/24",
            "proxy.networkPolicy.from[1].namespaceSelector.matchLabels.team=data",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    check_common(
        &r,
        &Expect {
            release: "prod",
            release_namespace: "rucat-system",
            fullname: "prod-rucat",
            engine_namespace: "prod-rucat-engines",
            database_secret: ("rucat-db", "url"),
            tokens_secret: None,
            metrics: None,
            proxy: Some(ProxyExpect {
                public_url: "sc://spark.example.com:443/;use_ssl=true",
                tls_secret: Some("spark-example-tls"),
            }),
        },
    );
    let service = r.get("Service", "prod-rucat-proxy");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"],
        "nlb"
    );
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "grpc", "port": 443, "targetPort": "grpc", "protocol": "TCP"}]),
        "no appProtocol when it is empty"
    );
    assert_eq!(
        r.get("NetworkPolicy", "prod-rucat-proxy")["spec"]["ingress"][0]["from"],
        json!([
            {"ipBlock": {"cidr": "203.0.113.0/24"}},
            {"namespaceSelector": {"matchLabels": {"team": "data"}}},
        ])
    );
    assert!(
        !r.notes().contains("add your clients' addresses"),
        "an ipBlock is there:\n{}",
        r.notes()
    );

    // With the default peers (pods only), the notes say that clients outside the cluster are
    // not admitted.
    let r = render(
        "prod",
        "rucat-system",
        &[
            "database.existingSecret=rucat-db",
            JWT_SET,
            PROXY_TLS,
            "proxy.service.type=LoadBalancer",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    assert!(
        r.notes()
            .contains("add your clients' addresses to proxy.networkPolicy.from"),
        "{}",
        r.notes()
    );
}

/// Without the proxy (one run elsewhere): no proxy object, the engines admit the monitor only,
/// and the server still shows endpoints at the configured public URL.
#[test]
fn rendering_without_the_proxy_is_valid() {
    let tokens = token_sets();
    let r = render(
        "rucat",
        "rucat",
        &[
            DATABASE_URL,
            &tokens[0],
            "proxy.enabled=false",
            "proxy.publicUrl=sc://proxy.example.com:15002/;use_ssl=true",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    let settings = check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: None,
            proxy: None,
        },
    );
    assert_eq!(
        settings
            .proxy
            .public_url()
            .expect("[proxy] public_url")
            .as_str(),
        "sc://proxy.example.com:15002/;use_ssl=true"
    );
    assert!(settings.proxy.tls.is_none() && !settings.proxy.allow_plaintext);
    assert_eq!(r.of_kind("Deployment").len(), 2);
    assert_eq!(r.of_kind("PodDisruptionBudget").len(), 2);
}

/// Metrics on: every role opens the metrics listener (an environment variable, beating a
/// `[metrics] listen` of extraConfig), serves it on a port named metrics, carries
/// metrics.podAnnotations (its own podAnnotations winning), and each role's NetworkPolicy admits
/// exactly metrics.from on that port; the monitor nothing else.
#[test]
fn metrics_rendering_is_valid_and_admits_only_the_scrapers() {
    let tokens = token_sets();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let values = dir.path().join("metrics.yaml");
    std::fs::write(
        &values,
        r#"metrics:
  enabled: true
  port: 9100
  from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: observability
      podSelector:
        matchLabels:
          app: prometheus
    - ipBlock:
        cidr: 10.20.0.0/16
  podAnnotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: "9100"
    prometheus.io/path: /metrics
monitor:
  podAnnotations:
    prometheus.io/scrape: "false"
extraConfig: |
  [metrics]
  listen = "127.0.0.1:9464"
"#,
    )
    .expect("write the values");
    let values = values.to_str().expect("a UTF-8 path");
    let r = render_with(
        "rucat",
        "rucat",
        &with_sets(
            vec!["-f", values],
            &[DATABASE_URL, &tokens[0], &tokens[1], PROXY_TLS],
        ),
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    let from = json!([
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
            "podSelector": {"matchLabels": {"app": "prometheus"}},
        },
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
    ]);
    let settings = check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: Some(MetricsExpect {
                port: 9100,
                from: from.clone(),
            }),
            proxy: PROXY_TLS_EXPECT,
        },
    );
    // The file alone would open the listener on loopback: the variable wins.
    assert_eq!(
        settings.metrics.listen,
        Some("127.0.0.1:9464".parse().expect("an address"))
    );
    assert_eq!(r.of_kind("NetworkPolicy").len(), 4);
    assert_eq!(
        r.get("NetworkPolicy", "rucat-monitor")["spec"]["ingress"],
        json!([{"ports": [{"port": 9100, "protocol": "TCP"}], "from": from}]),
        "the monitor admits the scrapers, on the metrics port, and nothing else"
    );
    for (component, scrape) in [("server", "true"), ("monitor", "false"), ("proxy", "true")] {
        let annotations = &r.get("Deployment", &format!("rucat-{component}"))["spec"]["template"]
            ["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], scrape, "{component}");
        assert_eq!(annotations["prometheus.io/port"], "9100", "{component}");
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{component}");
        assert!(
            annotations["checksum/config"].is_string(),
            "{component}: the config checksum stays"
        );
    }
    let notes = r.notes();
    for needed in [
        "the server, monitor and proxy pods serve GET /metrics on port 9100",
        "the metrics port 9100 of the server, monitor and proxy pods admits only the peers of",
        "annotations (prometheus.io/path, prometheus.io/port, prometheus.io/scrape)",
        "Only the peers of metrics.from may connect.",
    ] {
        assert!(notes.contains(needed), "the notes say {needed:?}:\n{notes}");
    }

    // The defaults (port 9090, a Prometheus in "monitoring"), without NetworkPolicies and
    // without the proxy: the listener in the server and the monitor, no policy at all.
    let r = render(
        "rucat",
        "rucat",
        &[
            DATABASE_URL,
            &tokens[0],
            "proxy.enabled=false",
            "networkPolicy.enabled=false",
            "metrics.enabled=true",
        ],
    );
    validate(&r.files).unwrap_or_else(|problems| panic!("{problems}"));
    check_common(
        &r,
        &Expect {
            release: "rucat",
            release_namespace: "rucat",
            fullname: "rucat",
            engine_namespace: "rucat-engines",
            database_secret: ("rucat-database", "url"),
            tokens_secret: Some(("rucat-auth", "tokens.toml")),
            metrics: Some(MetricsExpect {
                port: 9090,
                from: json!([{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }]),
            }),
            proxy: None,
        },
    );
    assert!(r.of_kind("NetworkPolicy").is_empty());
    for component in ["server", "monitor"] {
        let annotations = &r.get("Deployment", &format!("rucat-{component}"))["spec"]["template"]
            ["metadata"]["annotations"];
        assert_eq!(
            annotations.as_object().map(|a| a.len()),
            Some(1),
            "no metrics.podAnnotations by default: {annotations}"
        );
    }
    let notes = r.notes();
    assert!(
        notes.contains("the server and monitor pods serve GET /metrics on port 9090"),
        "{notes}"
    );
    assert!(
        notes.contains("every pod of the cluster can read the metrics"),
        "{notes}"
    );

    // With the default peers and NetworkPolicies, the notes say who they admit.
    let r = render(
        "rucat",
        "rucat",
        &[DATABASE_URL, &tokens[0], PROXY_TLS, "metrics.enabled=true"],
    );
    assert!(
        r.notes().contains("app.kubernetes.io/name=prometheus"),
        "{}",
        r.notes()
    );
    // A port a role already listens on is refused, saying why.
    for port in ["3000", "15002"] {
        let stderr = render_fails(&[
            DATABASE_URL,
            &tokens[0],
            PROXY_TLS,
            "metrics.enabled=true",
            &format!("metrics.port={port}"),
        ]);
        assert!(
            stderr.contains(&format!(
                "metrics.port is {port}, a port Rucat already listens on"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn rendering_without_proxy_settings_fails_and_says_why() {
    let tokens = token_sets();
    let stderr = render_fails(&[
        DATABASE_URL,
        &tokens[0],
        "proxy.tls.existingSecret=rucat-proxy-tls",
    ]);
    assert!(
        stderr.contains("proxy.publicUrl is required"),
        "the failure names proxy.publicUrl:\n{stderr}"
    );
    let stderr = render_fails(&[
        DATABASE_URL,
        &tokens[0],
        "proxy.publicUrl=sc://spark.example.com:443",
    ]);
    for needed in [
        "proxy.tls.existingSecret",
        "proxy.allowPlaintext",
        "TLS ends in front of the proxy",
        "in the clear",
    ] {
        assert!(
            stderr.contains(needed),
            "the failure says {needed:?}:\n{stderr}"
        );
    }
    let stderr = render_fails(&[
        DATABASE_URL,
        &tokens[0],
        PROXY_TLS,
        "proxy.ingress.enabled=true",
    ]);
    assert!(stderr.contains("proxy.ingress.host"), "{stderr}");
    for idle in [
        "idle.maxMinutes=60",
        "idle.maxMinutes=60,idle.defaultMinutes=0",
        "idle.maxMinutes=60,idle.defaultMinutes=61",
    ] {
        let stderr = render_fails(&[DATABASE_URL, &tokens[0], PROXY_TLS, idle]);
        assert!(
            stderr.contains("idle.defaultMinutes must be set between 1 and it"),
            "{idle}: {stderr}"
        );
    }
}

#[test]
fn rendering_without_a_store_fails_and_says_why() {
    let tokens = token_sets();
    let stderr = render_fails(&[&tokens[0]]);
    assert!(
        stderr.contains("set database.existingSecret") && stderr.contains("or database.url"),
        "the failure names the missing values:\n{stderr}"
    );
}

#[test]
fn rendering_without_authentication_fails_and_says_why() {
    let stderr = render_fails(&[DATABASE_URL]);
    for needed in [
        "rucat token create --user NAME --admin",
        "auth.tokens",
        "auth.existingSecret",
        "auth.jwt.issuer",
    ] {
        assert!(
            stderr.contains(needed),
            "the failure says {needed:?}:\n{stderr}"
        );
    }
    // Half a JWT configuration is refused too.
    let stderr = render_fails(&[DATABASE_URL, "auth.jwt.issuer=https://idp.example.com"]);
    assert!(stderr.contains("auth.jwt.audience"), "{stderr}");
}

/// Engines never share Rucat's namespace by accident, nor the drivers' identity.
#[test]
fn unsafe_engine_settings_are_refused() {
    let tokens = token_sets();
    let stderr = render_fails(&[
        DATABASE_URL,
        &tokens[0],
        PROXY_TLS,
        // k8s_check.py's default release namespace.
        "kubernetes.namespace=rucat",
    ]);
    assert!(
        stderr.contains("kubernetes.namespace is the release namespace"),
        "{stderr}"
    );
    let stderr = render_fails(&[
        DATABASE_URL,
        &tokens[0],
        PROXY_TLS,
        "kubernetes.executorServiceAccount=rucat-spark",
    ]);
    assert!(
        stderr.contains("kubernetes.executorServiceAccount must differ"),
        "{stderr}"
    );
}

#[test]
fn misspelled_values_are_refused() {
    for (set, refused) in [
        (
            "database.url=postgres://db/rucat,server.replica=3",
            "'replica' not allowed",
        ),
        (
            "auth.existingSecret=t,auth.jwt.isuer=x",
            "'isuer' not allowed",
        ),
        (
            "auth.existingSecret=t,kubernetes.createNamespce=false",
            "'createNamespce' not allowed",
        ),
        (
            "auth.tokens[0].user=a,auth.tokens[0].hash=sha256:00,auth.tokens[0].role=admin",
            "/auth/tokens/0/hash",
        ),
        (
            "auth.tokens[0].user=a,auth.tokens[0].role=root,auth.tokens[0].hash=sha256:00",
            "/auth/tokens/0/role",
        ),
        (
            "auth.existingSecret=t,quota.maxEngine=3",
            "'maxEngine' not allowed",
        ),
        (
            "auth.existingSecret=t,proxy.publicUrl=https://spark.example.com",
            "/proxy/publicUrl",
        ),
        (
            "auth.existingSecret=t,proxy.publicUrl=sc://h:1/;token=rucat_x",
            "/proxy/publicUrl",
        ),
        (
            "auth.existingSecret=t,proxy.tls.existingSecrets=x",
            "'existingSecrets' not allowed",
        ),
        (
            "auth.existingSecret=t,proxy.allowPlaintext=yes",
            "/proxy/allowPlaintext",
        ),
        (
            "auth.existingSecret=t,proxy.service.type=External",
            "/proxy/service/type",
        ),
        (
            "auth.existingSecret=t,idle.maxMinute=60",
            "'maxMinute' not allowed",
        ),
        (
            "auth.existingSecret=t,metrics.enable=true",
            "'enable' not allowed",
        ),
        (
            "auth.existingSecret=t,metrics.port=nine",
            "at '/metrics/port': got string, want integer",
        ),
        (
            "auth.existingSecret=t,metrics.port=70000",
            "at '/metrics/port': maximum",
        ),
        (
            "auth.existingSecret=t,metrics.port=0",
            "at '/metrics/port': minimum",
        ),
        (
            "auth.existingSecret=t,metrics.podAnnotations.prometheus\\.io/port=9090",
            "at '/metrics/podAnnotations/prometheus.io~1port': got number, want string",
        ),
    ] {
        let stderr = render_fails(&[set]);
        assert!(stderr.contains(refused), "{set}: {stderr}");
    }
    // Values files: an empty metrics.from (it would admit every source) and an empty peer.
    let dir = tempfile::tempdir().expect("a scratch directory");
    for (from, refused) in [
        ("[]", "at '/metrics/from': minItems"),
        ("[{}]", "at '/metrics/from/0': minProperties"),
    ] {
        let values = dir.path().join("metrics.yaml");
        std::fs::write(
            &values,
            format!("metrics:\n  enabled: true\n  from: {from}\n"),
        )
        .expect("write the values");
        let chart = chart();
        let output = k8s_check(&[
            "template",
            chart.to_str().expect("a UTF-8 path"),
            dir.path().join("out").to_str().expect("a UTF-8 path"),
            "--set",
            "auth.existingSecret=t",
            "-f",
            values.to_str().expect("a UTF-8 path"),
        ]);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(refused), "metrics.from {from}: {stderr}");
    }
}

/// The validation is not vacuous: a misspelled field in a rendered object fails it.
#[test]
fn validation_catches_a_misspelled_field() {
    let tokens = token_sets();
    let r = render(
        "rucat",
        "rucat",
        &["database.url=postgres://db/rucat", &tokens[0], PROXY_TLS],
    );
    let deployment = r
        .files
        .iter()
        .find(|f| {
            f.to_string_lossy()
                .contains("deployment-rucat-rucat-server")
        })
        .expect("the server Deployment's file");
    let yaml = std::fs::read_to_string(deployment).expect("read it");
    assert!(yaml.contains("imagePullPolicy:"));
    let broken = r.dir.path().join("broken.yaml");
    std::fs::write(&broken, yaml.replace("imagePullPolicy:", "imagePulPolicy:"))
        .expect("write the broken copy");
    let problems = validate(&[broken]).expect_err("a misspelled field must not validate");
    assert!(problems.contains("imagePulPolicy"), "{problems}");
}

/// `rucat engine render --config CONFIG ARGS…`: the objects, parsed from the YAML stream of
/// JSON documents it prints, and the stream validated.
fn engine_render(config: &Path, args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let output = run(Command::new(env!("CARGO_BIN_EXE_rucat"))
        .args(["engine", "render", "--config"])
        .arg(config)
        .args(args));
    assert!(output.status.success(), "render failed:\n{}", text(&output));
    let stream = dir.path().join("engine.yaml");
    std::fs::write(&stream, &output.stdout).expect("write the rendering");
    validate(std::slice::from_ref(&stream)).unwrap_or_else(|problems| panic!("{problems}"));
    String::from_utf8_lossy(&output.stdout)
        .split("\n---\n")
        .map(|document| {
            document
                .lines()
                .filter(|line| !line.trim_start().starts_with('#') && line.trim() != "---")
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|document| !document.trim().is_empty())
        .map(|document| {
            serde_json::from_str(&document)
                .unwrap_or_else(|error| panic!("not a JSON document ({error}):\n{document}"))
        })
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn driver_args(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect()
}

/// `rucat engine render` (the objects the kubernetes platform creates) is valid as printed, a
/// YAML stream of JSON documents, with every option that changes the objects set.
#[test]
fn engine_render_output_is_valid() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let config = dir.path().join("rucat.toml");
    std::fs::write(
        &config,
        r#"
        [kubernetes]
        namespace = "spark"
        versions = ["4.0.1"]
        executor_service_account = "spark-exec"
        image_pull_secrets = ["regcred", "mirror"]
        driver_cpu = "500m"
        driver_memory = "3Gi"
        [kubernetes.network_policy]
        connect_from = [
          { namespace = "rucat", pod_labels = { "rucat.io/engine-access" = "true" } },
          { pod_labels = { app = "notebook" } },
        ]
        [policy]
        allowed_images = ["registry.example.com/spark:4.0.1-gpu"]
        "#,
    )
    .expect("write the config");
    let objects = engine_render(
        &config,
        &[
            "--name",
            "nightly.etl_2",
            "--version",
            "4.0.1",
            "--conf",
            "spark.executor.instances=4",
            "--conf",
            "spark.kubernetes.driver.container.image=registry.example.com/spark:4.0.1-gpu",
            "--conf",
            "spark.sql.shuffle.partitions=64",
        ],
    );
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().expect("a kind"))
        .collect();
    assert_eq!(kinds, ["Pod", "Service", "NetworkPolicy"]);
    let pod = object(&objects, "Pod");
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "registry.example.com/spark:4.0.1-gpu"
    );
    let args = driver_args(pod);
    assert!(
        args.contains(
            &"spark.kubernetes.authenticate.executor.serviceAccountName=spark-exec".to_owned()
        ),
        "the driver names the executors' service account: {args:?}"
    );
    let policy = object(&objects, "NetworkPolicy");
    assert_eq!(policy["metadata"]["namespace"], "spark");
    let id = &pod["metadata"]["labels"]["rucat.io/engine-id"];
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["rucat.io/engine-id"], *id,
        "the engine's own pods"
    );
}

/// The chart's rucat.toml, given to `rucat engine render`, gives objects that fit the chart: in
/// the engine namespace, with the drivers' and the executors' ServiceAccounts the chart creates,
/// admitted by Pod Security "restricted" (which the chart enforces there), selected by the
/// static engine NetworkPolicy, and with a per-engine NetworkPolicy admitting the chart's
/// proxy and monitor pods.
#[test]
fn chart_configuration_renders_fitting_engines() {
    let tokens = token_sets();
    let r = render("rucat", "rucat", &[DATABASE_URL, &tokens[0], PROXY_TLS]);
    let config = r.dir.path().join("chart-rucat.toml");
    std::fs::write(
        &config,
        r.get("ConfigMap", "rucat-config")["data"]["rucat.toml"]
            .as_str()
            .expect("rucat.toml"),
    )
    .expect("write rucat.toml");
    let objects = engine_render(&config, &["--name", "demo", "--version", "4.0.1"]);
    let pod = object(&objects, "Pod");
    assert_eq!(pod["metadata"]["namespace"], "rucat-engines");
    let driver_sa = pod["spec"]["serviceAccountName"].as_str().expect("an SA");
    r.get("ServiceAccount", driver_sa);
    let args = driver_args(pod);
    let executor_sa = args
        .iter()
        .find_map(|a| a.strip_prefix("spark.kubernetes.authenticate.executor.serviceAccountName="))
        .expect("the driver names the executors' service account");
    assert_eq!(executor_sa, "rucat-spark-executor");
    assert_eq!(
        r.get("ServiceAccount", executor_sa)["automountServiceAccountToken"],
        false
    );
    assert!(
        args.iter()
            .any(|a| a.starts_with("spark.kubernetes.executor.label.rucat.io/engine-id=")),
        "executors carry the engine label the NetworkPolicies select on: {args:?}"
    );

    // Pod Security "restricted", on the driver pod and on the executors' pod template.
    let template = env(&pod["spec"]["containers"][0], "RUCAT_EXECUTOR_POD_TEMPLATE")["value"]
        .as_str()
        .expect("the executors' pod template");
    let template: Value = serde_json::from_str(template).expect("JSON");
    assert_eq!(template["spec"]["automountServiceAccountToken"], false);
    for (what, spec) in [("driver", &pod["spec"]), ("executor", &template["spec"])] {
        check_restricted(what, spec);
    }

    // The static policy selects the engine's pods; the engine's own policy admits the monitor.
    assert!(pod["metadata"]["labels"]["rucat.io/engine-id"].is_string());
    let policy = object(&objects, "NetworkPolicy");
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    let peer = ingress
        .iter()
        .find(|rule| rule["ports"] == json!([{"port": 15002, "protocol": "TCP"}]))
        .expect("the Spark Connect rule")["from"][0]
        .clone();
    assert_eq!(
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "rucat"
    );
    for deployment in ["rucat-monitor", "rucat-proxy"] {
        let labels = &r.get("Deployment", deployment)["spec"]["template"]["metadata"]["labels"];
        for (label, value) in peer["podSelector"]["matchLabels"]
            .as_object()
            .expect("labels")
        {
            assert_eq!(&labels[label], value, "the {deployment} pods carry {label}");
        }
    }
    let server_labels =
        &r.get("Deployment", "rucat-server")["spec"]["template"]["metadata"]["labels"];
    assert!(
        server_labels.get("rucat.io/engine-access").is_none(),
        "the server does not reach engines"
    );
    let static_policy = r.get("NetworkPolicy", "rucat-engines");
    assert_eq!(static_policy["spec"]["ingress"][0]["from"][0], peer);
}

/// The Pod Security "restricted" profile's checks, on a pod spec.
fn check_restricted(what: &str, spec: &Value) {
    let pod = &spec["securityContext"];
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(spec[field], true, "{what}: {field}");
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        assert!(volume.get("hostPath").is_none(), "{what}: hostPath");
    }
    let containers = spec["containers"].as_array().expect("containers");
    for container in containers {
        let security = &container["securityContext"];
        let name = &container["name"];
        assert_eq!(
            security["allowPrivilegeEscalation"], false,
            "{what} {name}: allowPrivilegeEscalation"
        );
        assert_ne!(security["privileged"], true, "{what} {name}: privileged");
        assert!(
            strings(&security["capabilities"]["drop"]).contains("ALL"),
            "{what} {name}: capabilities"
        );
        let added = security["capabilities"]["add"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            added.iter().all(|c| c == "NET_BIND_SERVICE"),
            "{what} {name}: capabilities added"
        );
        let non_root = security["runAsNonRoot"]
            .as_bool()
            .or(pod["runAsNonRoot"].as_bool());
        assert_eq!(non_root, Some(true), "{what} {name}: runAsNonRoot");
        let user = security["runAsUser"].as_i64().or(pod["runAsUser"].as_i64());
        assert_ne!(user, Some(0), "{what} {name}: runAsUser");
        let seccomp = security["seccompProfile"]["type"]
            .as_str()
            .or(pod["seccompProfile"]["type"].as_str());
        assert!(
            matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
            "{what} {name}: seccompProfile"
        );
        for port in container["ports"].as_array().into_iter().flatten() {
            assert!(port.get("hostPort").is_none(), "{what} {name}: hostPort");
        }
    }
}
