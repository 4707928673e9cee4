//! The Helm chart (`deploy/helm/rucat`) checked offline: `helm lint --strict` (two Helm
//! libraries, no helm binary, no cluster), `helm template` with two sets of values, every
//! rendered object validated by `kubernetes-validate --strict` against the Kubernetes schemas
//! (the oldest version the chart supports and the newest known), and the behaviours that
//! matter checked on the rendering: least-privilege RBAC, the store URL from a Secret, the
//! NetworkPolicy, the pods' security, and a rucat.toml that Rucat's own loader accepts.
//!
//! The tools come from the `k8s-tools` virtualenv that `scripts/setup.sh` installs; its path is
//! `RUCAT_K8S_TOOLS` (`scripts/test.sh` sets it). Without it these tests fail, never skip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rucat::config::{FileConfig, Overrides, PlatformKind, Settings};
use serde_json::Value;

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

    fn container<'a>(&'a self, deployment: &str) -> &'a Value {
        &self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    }
}

fn render(release: &str, namespace: &str, sets: &[&str]) -> Rendering {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let chart = chart();
    let out = dir.path().to_str().expect("a UTF-8 path").to_owned();
    let args = vec![
        "template",
        chart.to_str().expect("a UTF-8 path"),
        &out,
        "--release",
        release,
        "--namespace",
        namespace,
        "--json",
    ];
    let output = k8s_check(&with_sets(args, sets));
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

/// A Role's rules as (resource, verbs), each resource in the core API group, once.
fn rules(role: &Value) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert_eq!(
            strings(&rule["apiGroups"]),
            set(&[""]),
            "only the core API group: {rule}"
        );
        for resource in strings(&rule["resources"]) {
            assert!(
                !out.iter().any(|(r, _)| *r == resource),
                "{resource} appears in two rules of {}",
                role["metadata"]["name"]
            );
            out.push((resource, strings(&rule["verbs"])));
        }
    }
    out.sort();
    out
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}'s env", container["name"]))
}

/// The rendered rucat.toml, through Rucat's own loader (a key it does not know is an error).
fn rucat_settings(rendering: &Rendering, configmap: &str) -> Settings {
    let toml = rendering.get("ConfigMap", configmap)["data"]["rucat.toml"]
        .as_str()
        .expect("rucat.toml");
    let dir = tempfile::tempdir().expect("a scratch directory");
    let path = dir.path().join("rucat.toml");
    std::fs::write(&path, toml).expect("write rucat.toml");
    let file = FileConfig::load(&path)
        .unwrap_or_else(|error| panic!("Rucat refuses the chart's rucat.toml: {error}\n{toml}"));
    Settings::resolve(
        Overrides {
            data_dir: Some("/var/lib/rucat".into()),
            database_url: Some("postgres://rucat@db/rucat".into()),
            ..Overrides::default()
        },
        file,
    )
    .unwrap_or_else(|error| panic!("Rucat refuses the chart's rucat.toml: {error}\n{toml}"))
}

/// What holds in every rendering: no wildcard and no cluster-wide right, the monitor's and the
/// server's exact rights, the pods' security, the store URL from a Secret.
fn check_common(r: &Rendering, fullname: &str, database_secret: (&str, &str)) {
    assert!(
        r.of_kind("ClusterRole").is_empty() && r.of_kind("ClusterRoleBinding").is_empty(),
        "Rucat needs no cluster-wide right"
    );
    for role in r.of_kind("Role") {
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
    let monitor_role = r.get("Role", &format!("{fullname}-monitor"));
    assert_eq!(
        rules(monitor_role),
        vec![
            (
                "pods".to_owned(),
                set(&["get", "list", "watch", "create", "delete"])
            ),
            ("pods/log".to_owned(), set(&["get"])),
            ("services".to_owned(), set(&["get", "create", "delete"])),
        ],
        "the monitor's rights"
    );
    let server_role = r.get("Role", &format!("{fullname}-server"));
    assert_eq!(
        rules(server_role),
        vec![("pods/log".to_owned(), set(&["get"]))],
        "the server's rights"
    );
    let driver_role = r.get("Role", &format!("{fullname}-spark-driver"));
    let driver_rules = rules(driver_role);
    assert!(
        !driver_rules
            .iter()
            .any(|(resource, _)| resource == "secrets" || resource == "services"),
        "drivers get no right on Secrets or Services: {driver_rules:?}"
    );
    assert_eq!(
        driver_rules
            .iter()
            .find(|(r, _)| r == "pods")
            .map(|(_, v)| v.clone()),
        Some(set(&[
            "get",
            "list",
            "watch",
            "create",
            "delete",
            "deletecollection"
        ])),
        "drivers manage their executor pods"
    );

    for component in ["server", "monitor"] {
        let deployment = r.get("Deployment", &format!("{fullname}-{component}"));
        let pod = &deployment["spec"]["template"]["spec"];
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
        assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], database_secret.0);
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], database_secret.1);
        let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
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
    }

    let server = r.container(&format!("{fullname}-server"));
    assert_eq!(
        server["args"],
        serde_json::json!(["server", "--listen", "0.0.0.0:3000"])
    );
    assert_eq!(env(server, "RUCAT_ALLOW_UNAUTHENTICATED")["value"], "true");
    assert_eq!(server["ports"][0]["name"], "http");
    assert_eq!(server["ports"][0]["containerPort"], 3000);
    assert_eq!(server["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(server["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(server["readinessProbe"]["httpGet"]["port"], "http");
    let monitor = r.container(&format!("{fullname}-monitor"));
    assert_eq!(monitor["args"], serde_json::json!(["monitor"]));
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
}

#[test]
fn chart_lints_clean_in_strict_mode() {
    let chart = chart();
    let chart = chart.to_str().expect("a UTF-8 path");
    // With the chart's own values (as `helm lint` does; the missing store is only a warning in
    // lint mode) and with a store set.
    for sets in [
        &[][..],
        &["database.url=postgres://rucat@db:5432/rucat"][..],
    ] {
        let output = k8s_check(&with_sets(vec!["lint", chart], sets));
        assert!(
            output.status.success(),
            "helm lint --strict failed:\n{}",
            text(&output)
        );
    }
}

#[test]
fn default_rendering_is_valid_and_least_privileged() {
    let r = render(
        "rucat",
        "rucat",
        &["database.url=postgres://rucat:secret@db:5432/rucat"],
    );
    if let Err(problems) = validate(&r.files) {
        panic!("{problems}");
    }
    check_common(&r, "rucat", ("rucat-database", "url"));

    let secret = r.get("Secret", "rucat-database");
    assert_eq!(
        secret["stringData"]["url"],
        "postgres://rucat:secret@db:5432/rucat"
    );
    // Everything lives in the release namespace, engines included.
    for object in &r.objects {
        assert_eq!(
            object["metadata"]["namespace"], "rucat",
            "{}",
            object["metadata"]["name"]
        );
    }
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

    let settings = rucat_settings(&r, "rucat-config");
    assert_eq!(settings.platform, PlatformKind::Kubernetes);
    assert_eq!(settings.kubernetes.namespace.as_deref(), Some("rucat"));
    assert_eq!(settings.kubernetes.service_account, "rucat-spark");
    assert_eq!(settings.kubernetes.versions, ["4.0.1"]);
    assert_eq!(settings.kubernetes.image_for("4.0.1"), "apache/spark:4.0.1");
    assert_eq!(settings.kubernetes.cluster_domain, "cluster.local");
    let driver_sa = r.get("ServiceAccount", "rucat-spark");
    assert_eq!(driver_sa["metadata"]["namespace"], "rucat");
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
            "database.existingSecret=rucat-db",
        ],
    );
    if let Err(problems) = validate(&r.files) {
        panic!("{problems}");
    }
    check_common(&r, "prod-rucat", ("rucat-db", "url"));

    assert!(
        r.of_kind("NetworkPolicy").is_empty(),
        "networkPolicy.enabled=false"
    );
    assert!(
        r.of_kind("Secret").is_empty(),
        "an existing Secret is used, none is made"
    );
    for deployment in r.of_kind("Deployment") {
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert_eq!(deployment["metadata"]["namespace"], "rucat-system");
    }
    // The Roles and their bindings go where the engines are, binding the release's accounts.
    for role in r.of_kind("Role") {
        assert_eq!(role["metadata"]["namespace"], "spark-engines");
    }
    for binding in r.of_kind("RoleBinding") {
        assert_eq!(binding["metadata"]["namespace"], "spark-engines");
        let subject = &binding["subjects"][0];
        let name = binding["metadata"]["name"].as_str().expect("a name");
        let expected_ns = if name.ends_with("-spark-driver") {
            "spark-engines"
        } else {
            "rucat-system"
        };
        assert_eq!(subject["kind"], "ServiceAccount");
        assert_eq!(subject["namespace"], expected_ns, "{name}");
    }
    assert_eq!(
        r.get("ServiceAccount", "rucat-spark")["metadata"]["namespace"],
        "spark-engines"
    );
    for account in ["prod-rucat-server", "prod-rucat-monitor"] {
        assert_eq!(
            r.get("ServiceAccount", account)["metadata"]["namespace"],
            "rucat-system"
        );
    }
    let settings = rucat_settings(&r, "prod-rucat-config");
    assert_eq!(
        settings.kubernetes.namespace.as_deref(),
        Some("spark-engines")
    );
}

#[test]
fn rendering_without_a_store_fails_and_says_why() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let chart = chart();
    let output = k8s_check(&[
        "template",
        chart.to_str().expect("a UTF-8 path"),
        dir.path().to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("set database.existingSecret") && stderr.contains("or database.url"),
        "the failure names the missing values:\n{stderr}"
    );
}

#[test]
fn misspelled_values_are_refused() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let chart = chart();
    let output = k8s_check(&[
        "template",
        chart.to_str().expect("a UTF-8 path"),
        dir.path().to_str().expect("a UTF-8 path"),
        "--set",
        "database.url=postgres://db/rucat,server.replica=3",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("'replica' not allowed"),
        "{}",
        text(&output)
    );
}

/// The validation is not vacuous: a misspelled field in a rendered object fails it.
#[test]
fn validation_catches_a_misspelled_field() {
    let r = render("rucat", "rucat", &["database.url=postgres://db/rucat"]);
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
        image_pull_secrets = ["regcred", "mirror"]
        driver_cpu = "500m"
        driver_memory = "3Gi"
        [policy]
        allowed_images = ["registry.example.com/spark:4.0.1-gpu"]
        "#,
    )
    .expect("write the config");
    let output = run(Command::new(env!("CARGO_BIN_EXE_rucat")).args([
        "engine",
        "render",
        "--config",
        config.to_str().expect("a UTF-8 path"),
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
    ]));
    assert!(output.status.success(), "render failed:\n{}", text(&output));
    let stream = dir.path().join("engine.yaml");
    std::fs::write(&stream, &output.stdout).expect("write the rendering");
    validate(std::slice::from_ref(&stream)).unwrap_or_else(|problems| panic!("{problems}"));

    let rendered = String::from_utf8_lossy(&output.stdout);
    assert!(rendered.contains("\"kind\": \"Pod\"") && rendered.contains("\"kind\": \"Service\""));
    assert!(rendered.contains("\"image\": \"registry.example.com/spark:4.0.1-gpu\""));
}
