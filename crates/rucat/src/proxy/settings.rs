//! The proxy's settings: its listen address from a flag or the environment, the rest from the
//! configuration file's `[proxy]` table.

use std::path::PathBuf;

use serde::Deserialize;

use super::tls::TlsFiles;
use super::{ProxyConfig, DEFAULT_LISTEN};
use crate::config::{invalid, millis, ConfigError};
use crate::engine::PublicUrl;

/// The proxy's flag and environment variable; `None` when neither is given.
// The field docs are `--help` text: `[table]` names a table of the configuration file.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProxyArgs {
    /// Spark Connect proxy listen address [default: 127.0.0.1:15002]. Plaintext only on
    /// loopback unless [proxy] allow_plaintext; TLS with [proxy] tls_cert and tls_key.
    #[arg(long, env = "RUCAT_PROXY_LISTEN", value_name = "HOST:PORT")]
    pub proxy_listen: Option<String>,
}

/// The `[proxy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyFile {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_plaintext: Option<bool>,
    pub activity_interval_ms: Option<u64>,
}

impl ProxyConfig {
    /// The flag's (or environment's) listen address over the file's; the rest from the file,
    /// else the defaults.
    pub fn resolve(args: ProxyArgs, file: &ProxyFile) -> Result<Self, ConfigError> {
        let defaults = ProxyConfig::default();
        let listen_text = args
            .proxy_listen
            .or_else(|| file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| {
            invalid(
                "proxy.listen",
                format!("{listen_text:?} is not HOST:PORT, e.g. 127.0.0.1:15002"),
            )
        })?;
        let public_url = file
            .public_url
            .as_deref()
            .map(PublicUrl::parse)
            .transpose()
            .map_err(|message| invalid("proxy.public_url", message))?;
        let tls = match (&file.tls_cert, &file.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "proxy.tls_cert",
                    "tls_cert and tls_key go together",
                ))
            }
        };
        Ok(ProxyConfig {
            listen,
            public_url,
            tls,
            allow_plaintext: file.allow_plaintext.unwrap_or(false),
            activity_interval: millis(
                "proxy.activity_interval_ms",
                file.activity_interval_ms,
                defaults.activity_interval,
            )?,
            ..defaults
        })
    }
}
