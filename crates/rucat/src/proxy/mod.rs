//! The Spark Connect proxy: the one address clients connect to, and the only way to reach an
//! engine.
//!
//! A client names its engine in the connection string (`sc://HOST:PORT/;token=T;x-rucat-engine=ID`),
//! which Spark Connect clients send as gRPC metadata on every call. Each call is checked before
//! anything is forwarded (see [`forward`]): who the caller is (the same credentials as the REST
//! API), whether the engine is theirs (or they are an admin), and whether it is `Running`. Then
//! the call goes to the engine as bytes, with the engine's own secret instead of the caller's
//! credential. Refusals are real gRPC statuses. Plain HTTP/2 only on loopback, unless allowed;
//! TLS with rustls otherwise. What each engine sees is counted and written to the store for the
//! monitor's idle auto-stop.

pub mod activity;
pub mod forward;
pub mod grpc;
mod settings;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::engine::PublicUrl;
use crate::shutdown::Shutdown;
use crate::store::Store;
use activity::Activity;
use forward::{Pool, Router};
pub use settings::{ProxyArgs, ProxyFile};
use tls::{Tls, TlsFiles};

pub const DEFAULT_PORT: u16 = 15002;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:15002";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls under way may take to finish once the proxy is asked to stop.
const DRAIN: Duration = Duration::from_secs(30);

/// The proxy's settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Where clients reach the proxy, as given; `None`: derived from `listen`.
    pub public_url: Option<PublicUrl>,
    pub tls: Option<TlsFiles>,
    /// Whether plain HTTP/2 is served beyond loopback.
    pub allow_plaintext: bool,
    /// How often what the proxy saw is written to the store.
    pub activity_interval: Duration,
    /// How often the certificate files are looked at for changes.
    pub reload_interval: Duration,
    /// The name this proxy reports activity under (default: host name and pid).
    pub name: String,
    /// Whether the proxy's port answers `GET /metrics` with its counters (on a loopback
    /// listener only; metrics off: never).
    pub metrics_page: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            public_url: None,
            tls: None,
            allow_plaintext: false,
            activity_interval: Duration::from_secs(5),
            reload_interval: Duration::from_secs(2),
            name: crate::monitor::default_name(),
            metrics_page: true,
        }
    }
}

impl ProxyConfig {
    /// Where clients reach engines: the configured public URL, else `sc://localhost:PORT`
    /// (with `;use_ssl=true` under TLS) when the proxy listens on loopback, else the listen
    /// address itself when it names one.
    pub fn public_url(&self) -> Result<PublicUrl, String> {
        if let Some(url) = &self.public_url {
            return Ok(url.clone());
        }
        let ip = self.listen.ip();
        if ip.is_unspecified() {
            return Err(format!(
                "the proxy listens on {} (every address): set [proxy] public_url, the sc://HOST:PORT clients reach it at",
                self.listen
            ));
        }
        // PySpark sends a token in plaintext only to "localhost".
        let host = if ip.is_loopback() {
            "localhost".to_owned()
        } else {
            match ip {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }
        };
        let tls = if self.tls.is_some() {
            "/;use_ssl=true"
        } else {
            ""
        };
        PublicUrl::parse(&format!("sc://{host}:{}{tls}", self.listen.port()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to serve Spark Connect in plaintext on {0}: configure [proxy] tls_cert and tls_key, or set allow_plaintext (only behind a network that protects the tokens)")]
    Plaintext(SocketAddr),
    #[error("[proxy] TLS: {0}")]
    Tls(String),
}

/// A bound proxy, ready to run.
pub struct Proxy {
    listener: TcpListener,
    router: Arc<Router>,
    tls: Option<Arc<Tls>>,
    config: ProxyConfig,
    store: Arc<dyn Store>,
}

impl Proxy {
    pub async fn bind(
        config: ProxyConfig,
        store: Arc<dyn Store>,
        auth: Arc<Authenticator>,
    ) -> Result<Self, ProxyError> {
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(Tls::load(files.clone()).map_err(ProxyError::Tls)?)),
            None if !config.listen.ip().is_loopback() && !config.allow_plaintext => {
                return Err(ProxyError::Plaintext(config.listen));
            }
            None => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Listen {
                    addr: config.listen,
                    source,
                })?;
        if tls.is_none() && !config.listen.ip().is_loopback() {
            warn!(addr = %config.listen, "the proxy serves plaintext beyond loopback (allow_plaintext): tokens cross the network in the clear");
        }
        let router = Arc::new(Router {
            store: Arc::clone(&store),
            auth,
            activity: Arc::new(Activity::default()),
            pool: Pool::default(),
            metrics_page: config.metrics_page && config.listen.ip().is_loopback(),
        });
        Ok(Proxy {
            listener,
            router,
            tls,
            config,
            store,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// What went through the proxy (for tests and metrics).
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.router.activity)
    }

    /// Serves until `shutdown`; then calls under way get [`DRAIN`] to finish.
    pub async fn run(self, shutdown: Shutdown) {
        let Proxy {
            listener,
            router,
            tls,
            config,
            store,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, tls = tls.is_some(), "Spark Connect proxy listening");
        }
        let reporter = tokio::spawn(Arc::clone(&router.activity).report(
            store,
            config.name.clone(),
            config.activity_interval,
            shutdown.clone(),
        ));
        if let Some(tls) = &tls {
            let (tls, shutdown) = (Arc::clone(tls), shutdown.clone());
            let interval = config.reload_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tokio::select! {
                        _ = tick.tick() => { tls.reload_if_changed(); }
                        _ = shutdown.clone().wait() => return,
                    }
                }
            });
        }
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.clone().wait() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let router = Arc::clone(&router);
            let acceptor = tls.as_ref().map(|tls| tls.acceptor());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                match acceptor {
                    None => serve(stream, router, watcher).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => serve(stream, router, watcher).await,
                            Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(listener);
        info!("proxy stopping; letting calls under way finish");
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            warn!("calls still under way after {DRAIN:?}; closing them");
        }
        let _ = reporter.await;
    }
}

/// Serves one client connection (HTTP/2 for gRPC, HTTP/1.1 for health probes).
async fn serve<I>(io: I, router: Arc<Router>, watcher: hyper_util::server::graceful::Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let router = Arc::clone(&router);
        async move { Ok::<_, Infallible>(router.handle(request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().adaptive_window(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection.into_owned()).await {
        debug!(%error, "client connection ended with an error");
    }
}
