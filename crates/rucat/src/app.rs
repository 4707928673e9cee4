//! Builds and runs Rucat's roles from settings. `main` and the tests go through here, so tests
//! run exactly what production runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{PlatformKind, Settings};
use crate::metrics::{InstrumentedPlatform, Metrics};
use crate::monitor::{Monitor, MonitorConfig};
use crate::platform::kubernetes::KubernetesPlatform;
use crate::platform::local::LocalPlatform;
use crate::platform::simulated::SimulatedPlatform;
use crate::platform::{DriverLogs, Platform, PlatformError};
use crate::proxy::{Proxy, ProxyConfig, ProxyError};
use crate::retry::Backoff;
use crate::server::{self, ApiContext};
use crate::shutdown::Shutdown;
use crate::store::{self, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(
        "no Spark found: set --spark-home or SPARK_HOME, or run scripts/setup.sh to install it"
    )]
    NoSpark,
    #[error("refusing to listen on {0}: authentication is not configured, so Rucat listens on loopback addresses only (configure [auth] tokens, a tokens file or [auth.jwt]; or, for development behind a network policy only, set allow_unauthenticated)")]
    NotLoopback(SocketAddr),
    #[error("cannot set up authentication: {0}")]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("invalid setting {name}: {message}")]
    Setting { name: &'static str, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the REST server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Which roles this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub server: bool,
    pub monitor: bool,
    pub proxy: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        server: true,
        monitor: true,
        proxy: true,
    };
    pub const SERVER: Roles = Roles {
        server: true,
        monitor: false,
        proxy: false,
    };
    pub const MONITOR: Roles = Roles {
        server: false,
        monitor: true,
        proxy: false,
    };
    pub const PROXY: Roles = Roles {
        server: false,
        monitor: false,
        proxy: true,
    };
}

/// How long a starting process waits for an unreachable store (say, PostgreSQL starting in the
/// same deployment) before giving up.
pub const STORE_WAIT: Duration = Duration::from_secs(60);

/// Opens the store, waiting up to [`STORE_WAIT`] (with back-off) while it is unreachable. Any
/// other error (a bad URL, a failed migration) ends the wait at once. Only a process that runs
/// a monitor listens for wake-ups (on PostgreSQL, one connection of its pool).
async fn open_store(settings: &Settings, roles: Roles) -> Result<Arc<dyn Store>, AppError> {
    let options = store::StoreOptions {
        push_wake_ups: settings.store.push_wake_ups && roles.monitor,
        ..settings.store.clone()
    };
    let postgres = settings.database_url.expose().starts_with("postgres");
    if postgres && options.push_wake_ups && options.max_connections.is_some_and(|n| n < 2) {
        return Err(AppError::Setting {
            name: "database.max_connections",
            message: "a monitor on PostgreSQL needs at least 2 connections: one of them listens for wake-ups (or set database.push_wake_ups = false)".into(),
        });
    }
    let deadline = tokio::time::Instant::now() + STORE_WAIT;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        match store::open(settings.database_url.expose(), &options).await {
            Ok(store) => return Ok(store),
            Err(error @ StoreError::Unreachable { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                let wait = backoff.next_wait();
                warn!(%error, retry_in = ?wait, "waiting for the store");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The platform engines run on.
async fn open_platform(settings: &Settings) -> Result<Arc<dyn Platform>, AppError> {
    Ok(match settings.platform {
        PlatformKind::Local => {
            let spark_home = settings.spark_home.clone().ok_or(AppError::NoSpark)?;
            let jar = spark_home.join("jars").join(crate::platform::HANDOVER_JAR);
            if !settings.pools.is_empty() && !jar.is_file() {
                return Err(AppError::Setting {
                    name: "pool",
                    message: format!(
                        "warm pools need {} (the interceptor that hands a taken engine its new secret); scripts/setup.sh builds and installs it",
                        jar.display()
                    ),
                });
            }
            Arc::new(LocalPlatform::new(
                spark_home,
                settings.data_dir.clone(),
                settings.local_master.clone(),
            )?)
        }
        PlatformKind::Kubernetes => {
            Arc::new(KubernetesPlatform::connect(settings.kubernetes.clone()).await?)
        }
        PlatformKind::Simulated => {
            let platform = SimulatedPlatform::new(&settings.data_dir, settings.simulated.clone())?;
            warn!("platform \"simulated\": engines run nowhere; creates and deletes are only written down");
            Arc::new(platform)
        }
    })
}

pub struct Application {
    listener: Option<TcpListener>,
    context: Option<ApiContext>,
    monitor: Option<Monitor>,
    proxy: Option<Proxy>,
    auth: Option<Arc<Authenticator>>,
    metrics: Option<Arc<Metrics>>,
    /// The metrics listener of its own (`[metrics] listen`), when one is set.
    metrics_listener: Option<TcpListener>,
}

/// Creates the data directory, readable by Rucat's user only (it holds the SQLite store and the
/// engines' logs). A directory Rucat cannot tighten (one it does not own) is only warned about.
fn create_data_dir(path: &std::path::Path) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(|source| AppError::DataDir {
        path: path.display().to_string(),
        source,
    })?;
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)) {
        warn!(path = %path.display(), %error, "cannot make the data directory private (mode 0700)");
    }
    Ok(())
}

impl Application {
    pub async fn build(settings: &Settings, roles: Roles) -> Result<Self, AppError> {
        create_data_dir(&settings.data_dir)?;
        let store = open_store(settings, roles).await?;
        // The proxy needs no platform: it reaches engines at the address the store records.
        let (platform, versions) = if roles.server || roles.monitor {
            let platform = open_platform(settings).await?;
            let versions = platform.versions().to_vec();
            (Some(platform), versions)
        } else {
            (None, Vec::new())
        };
        info!(store = %settings.database_url, versions = ?versions, roles = ?roles, "store and platform ready");
        Self::assemble(settings, roles, store, platform, versions).await
    }

    /// The roles of [`build`](Self::build) around a store and a platform already opened (tests
    /// bring their own: a store they also read, a platform double): authentication, the
    /// listen checks, the policy, quotas and proxy settings all come from `settings`.
    pub async fn assemble(
        settings: &Settings,
        roles: Roles,
        store: Arc<dyn Store>,
        platform: Option<Arc<dyn Platform>>,
        versions: Vec<String>,
    ) -> Result<Self, AppError> {
        if (roles.server || roles.monitor) && !settings.pools.is_empty() {
            settings
                .pools
                .check_versions(&versions)
                .map_err(|message| AppError::Setting {
                    name: "pool",
                    message,
                })?;
        }
        // The engines by state are read by processes that manage engines (not a proxy alone).
        let metrics = settings.metrics.enabled.then(|| {
            Arc::new(Metrics::new(
                (roles.server || roles.monitor).then(|| store.clone()),
            ))
        });
        let platform = match (platform, &metrics) {
            (Some(platform), Some(metrics)) => {
                Some(InstrumentedPlatform::wrap(platform, Arc::clone(metrics)))
            }
            (platform, _) => platform,
        };
        let auth = if roles.server || roles.proxy {
            Some(Arc::new(Authenticator::new(&settings.auth).await?))
        } else {
            None
        };
        let loopback = settings.listen.ip().is_loopback();
        if let (true, Some(auth)) = (roles.server, &auth) {
            if !loopback && !auth.is_enabled() && !settings.allow_unauthenticated {
                return Err(AppError::NotLoopback(settings.listen));
            }
        }
        let proxy = match (roles.proxy, &auth) {
            (true, Some(auth)) => {
                let config = ProxyConfig {
                    metrics_page: settings.metrics.enabled,
                    ..settings.proxy.clone()
                };
                Some(Proxy::bind(config, store.clone(), Arc::clone(auth)).await?)
            }
            _ => None,
        };
        if let (Some(metrics), Some(proxy)) = (&metrics, &proxy) {
            metrics.attach_proxy(proxy.activity());
        }
        let (listener, context) = if let (true, Some(auth)) = (roles.server, &auth) {
            let auth = Arc::clone(auth);
            // Where users reach the proxy: when this process runs it, its bound address (the
            // real port when 0 was asked for).
            let mut proxy_settings = settings.proxy.clone();
            if let Some(addr) = proxy.as_ref().and_then(Proxy::local_addr) {
                proxy_settings.listen = addr;
            }
            let public_url = proxy_settings
                .public_url()
                .map_err(|message| AppError::Setting {
                    name: "proxy.public_url",
                    message,
                })?;
            let listener =
                TcpListener::bind(settings.listen)
                    .await
                    .map_err(|source| AppError::Listen {
                        addr: settings.listen,
                        source,
                    })?;
            if auth.is_enabled() {
                if settings.allow_unauthenticated {
                    warn!("allow_unauthenticated is set but authentication is configured: it has no effect");
                }
            } else if loopback {
                warn!("authentication is not configured: every caller is the anonymous admin; listening on loopback only");
            } else {
                error!(addr = %settings.listen, "AUTHENTICATION IS OFF on a non-loopback address (allow_unauthenticated): anyone who can reach it manages every engine; for development behind a network policy only");
            }
            let context = ApiContext {
                store: store.clone(),
                auth,
                policy: Arc::new(settings.policy.clone()),
                quotas: Arc::new(settings.quotas.clone()),
                pools: Arc::new(settings.pools.clone()),
                public_url: Arc::new(public_url),
                idle: settings.idle,
                versions: Arc::new(versions),
                live_logs: platform
                    .clone()
                    .map(|platform| platform as Arc<dyn DriverLogs>),
                metrics: metrics.clone(),
            };
            (Some(listener), Some(context))
        } else {
            (None, None)
        };
        let monitor = match (roles.monitor, platform) {
            (true, Some(platform)) => Some(Monitor::with_metrics(
                store,
                platform,
                MonitorConfig {
                    pools: settings.pools.clone(),
                    ..settings.monitor.clone()
                },
                metrics.clone(),
            )),
            _ => None,
        };
        let metrics_listener = match (&metrics, settings.metrics.listen) {
            (Some(_), Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Listen { addr, source })?,
            ),
            _ => None,
        };
        Ok(Application {
            listener,
            context,
            monitor,
            proxy,
            auth,
            metrics,
            metrics_listener,
        })
    }

    /// The address the Spark Connect proxy listens on (with the real port when 0 was asked for).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(Proxy::local_addr)
    }

    /// The address the metrics listener of its own listens on, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address the REST server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` fires; then the server finishes its requests and the monitor its
    /// steps under way.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), AppError> {
        let monitor = self
            .monitor
            .map(|monitor| tokio::spawn(monitor.run(shutdown.clone())));
        if let Some(auth) = &self.auth {
            auth.spawn_reloads(shutdown.clone());
        }
        let proxy = self
            .proxy
            .map(|proxy| tokio::spawn(proxy.run(shutdown.clone())));
        let metrics = match (self.metrics_listener, self.metrics) {
            (Some(listener), Some(metrics)) => {
                if let Ok(addr) = listener.local_addr() {
                    info!(%addr, "metrics listening");
                }
                Some(tokio::spawn(crate::metrics::serve(
                    listener,
                    metrics,
                    shutdown.clone(),
                )))
            }
            _ => None,
        };
        let served = match (self.listener, self.context) {
            (Some(listener), Some(context)) => {
                if let Ok(addr) = listener.local_addr() {
                    info!(%addr, "REST API listening");
                }
                server::serve(listener, context, shutdown.clone())
                    .await
                    .map_err(AppError::Serve)
            }
            _ => {
                shutdown.wait().await;
                Ok(())
            }
        };
        if let Some(monitor) = monitor {
            if let Err(error) = monitor.await {
                warn!(%error, "monitor task ended abnormally");
            }
        }
        if let Some(proxy) = proxy {
            if let Err(error) = proxy.await {
                warn!(%error, "proxy task ended abnormally");
            }
        }
        if let Some(metrics) = metrics {
            match metrics.await {
                Ok(Err(error)) => warn!(%error, "the metrics listener failed"),
                Err(error) => warn!(%error, "metrics task ended abnormally"),
                Ok(Ok(())) => {}
            }
        }
        served
    }
}
