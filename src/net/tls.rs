//! TLS for the daemon's listeners: a serving certificate, and optionally a client CA whose
//! certificates clients must present (the apiserver's webhook client certificate).
//!
//! The acceptor is rebuilt from the files when they change ([`super::reload`]), so a renewed
//! certificate or a rotated CA takes effect for new connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use super::reload::Reloading;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle for client certificates; when set, a valid client certificate is required.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Every file the acceptor is built from.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.clone());
        files
    }

    /// The paths, for making them relative to the config file.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![&mut self.cert, &mut self.key];
        paths.extend(self.client_ca.as_mut());
        paths
    }
}

/// Builds an acceptor; the error names the file at fault.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, String> {
    let fail = |path: &Path, why: String| format!("{}: {why}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| fail(&cfg.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(&cfg.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(&cfg.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| fail(&cfg.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&cfg.cert, e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail(ca, e.to_string()))? {
                let cert = cert.map_err(|e| fail(ca, e.to_string()))?;
                roots.add(cert).map_err(|e| fail(ca, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(fail(ca, "no CA certificate in the file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| fail(&cfg.key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor that follows its files.
pub type ReloadingTls = Reloading<TlsAcceptor>;

/// Loads `cfg` into an acceptor that reloads; `name` says whose it is in logs.
pub fn reloading(name: &str, cfg: &TlsConfig) -> Result<Arc<ReloadingTls>, String> {
    let owned = cfg.clone();
    Reloading::new(format!("{name} tls"), cfg.files(), move || acceptor(&owned)).map(Arc::new)
}
