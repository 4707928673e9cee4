//! `rucat serve`, `server`, `monitor` and `proxy`: the roles, in this process.

use std::path::PathBuf;

use clap::Args;
use rucat::app::{Application, Roles};
use rucat::config::{FileConfig, Overrides, Settings};
use rucat::shutdown;

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// REST listen address [default: 127.0.0.1:3000]. Without authentication ([auth] in the
    /// configuration file) only loopback addresses are accepted.
    #[arg(long, env = "RUCAT_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Spark Connect proxy listen address [default: 127.0.0.1:15002]. Plaintext only on
    /// loopback unless [proxy] allow_plaintext; TLS with [proxy] tls_cert and tls_key.
    #[arg(long, env = "RUCAT_PROXY_LISTEN", value_name = "HOST:PORT")]
    proxy_listen: Option<String>,
    /// Data directory: SQLite file, local engines' work directories and logs [default: ~/.rucat]
    #[arg(long, env = "RUCAT_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB to share one store
    /// between several servers and monitors [default: sqlite://<data-dir>/rucat.db]
    #[arg(
        long,
        env = "RUCAT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Most connections this process opens to the store [default: 8 for SQLite, 10 for
    /// PostgreSQL]
    #[arg(long, env = "RUCAT_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    database_max_connections: Option<u32>,
    /// Where engines run: local (Spark processes on this machine), kubernetes (a driver pod per
    /// engine, through the kubeconfig in KUBECONFIG or ~/.kube/config, or the pod's service
    /// account in a cluster; see the [kubernetes] table) or simulated (engines run nowhere;
    /// every create and delete is written to <data-dir>/simulated/journal)
    /// [default: local] [possible values: local, kubernetes, simulated]
    #[arg(long, env = "RUCAT_PLATFORM")]
    platform: Option<String>,
    /// Spark distribution for the local platform [default: the one scripts/setup.sh installed]
    #[arg(long, env = "SPARK_HOME", value_name = "DIR")]
    spark_home: Option<PathBuf>,
    /// Let the REST server listen beyond loopback although nothing authenticates its users:
    /// anyone who reaches the address manages every engine. For development behind a network
    /// policy only; configure [auth] instead.
    #[arg(long, env = "RUCAT_ALLOW_UNAUTHENTICATED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    allow_unauthenticated: Option<bool>,
    /// A listener of its own for Prometheus' `GET /metrics`, answered without authentication
    /// (it serves aggregate counters only: no engine ids, users or secrets) [default: none;
    /// `serve` and `server` also answer /metrics on the REST listener, to an admin once
    /// authentication is on]
    #[arg(long, env = "RUCAT_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Keep and serve metrics [default: true]; false drops /metrics and every counter
    #[arg(long, env = "RUCAT_METRICS_ENABLED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    metrics_enabled: Option<bool>,
}

/// Runs `roles` until a shutdown signal.
pub async fn run(args: RoleArgs, file: FileConfig, roles: Roles) -> anyhow::Result<()> {
    crate::init_logging("info");
    let settings = Settings::resolve(
        Overrides {
            listen: args.listen,
            proxy_listen: args.proxy_listen,
            data_dir: args.data_dir,
            database_url: args.database_url,
            database_max_connections: args.database_max_connections,
            platform: args.platform,
            spark_home: args.spark_home,
            allow_unauthenticated: args.allow_unauthenticated,
            metrics_listen: args.metrics_listen,
            metrics_enabled: args.metrics_enabled,
            ..Overrides::default()
        },
        file,
    )?;
    let application = Application::build(&settings, roles).await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("shutdown requested; finishing requests and steps under way");
        trigger.fire();
    });
    application.run(shutdown).await?;
    Ok(())
}
