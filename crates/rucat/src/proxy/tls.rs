//! TLS for the proxy: a certificate chain and key from PEM files (rustls, ALPN `h2` and, for
//! probes, `http/1.1`), read again when either file changes, so that a renewed certificate is
//! served without a restart. A pair that does not load is reported and the last good one kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

/// The certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The current acceptor, kept in step with the files.
pub struct Tls {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    /// Loads the files now: a pair that does not load is an error here.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let (cert, key) = read(&files)?;
        let acceptor = acceptor(&cert, &key)?;
        Ok(Tls {
            files,
            acceptor: RwLock::new(acceptor),
            seen: Mutex::new((cert, key)),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the files again if they changed. Returns whether the certificate changed.
    pub fn reload_if_changed(&self) -> bool {
        let (cert, key) = match read(&self.files) {
            Ok(files) => files,
            Err(why) => {
                error!(%why, "cannot read the proxy's certificate; keeping the one loaded");
                return false;
            }
        };
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 == cert && seen.1 == key {
                return false;
            }
        }
        match acceptor(&cert, &key) {
            Ok(acceptor) => {
                *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = (cert, key);
                info!(cert = %self.files.cert.display(), "the proxy's certificate was read again");
                true
            }
            Err(why) => {
                error!(%why, "the proxy's certificate changed but does not load; keeping the one loaded");
                false
            }
        }
    }
}

fn read(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = std::fs::read(&files.cert)
        .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .map_err(|e| format!("cannot read {}: {e}", files.key.display()))?;
    Ok((cert, key))
}

fn acceptor(cert: &[u8], key: &[u8]) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("the key file holds no private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
