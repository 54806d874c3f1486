//! TLS: the acceptor is built once from PEM files (or the embedded dev
//! certificate) and cloned into every connection task.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The development certificate for localhost, 127.0.0.1 and ::1, signed by
/// certs/ca.pem. Its key is public: for development and tests only.
const DEV_CERT: &[u8] = include_bytes!("../../certs/server.pem");
const DEV_KEY: &[u8] = include_bytes!("../../certs/server.key");

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{what} {path}: {problem}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file, or "(embedded dev certificate)".
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Build the acceptor: TLS 1.3 and 1.2, ring's strong suites, no client
/// certificates.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => (read_certs(cert)?, read_key(key)?),
        _ => {
            tracing::warn!(
                "using the embedded development certificate; set tls.cert and tls.key for real use"
            );
            (
                parse_certs(DEV_CERT, "(embedded dev certificate)")?,
                parse_key(DEV_KEY, "(embedded dev key)")?,
            )
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| pem_error("certificate", path, e))?;
    parse_certs(&bytes, &path.display().to_string())
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| pem_error("private key", path, e))?;
    parse_key(&bytes, &path.display().to_string())
}

fn parse_certs(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", path, e))?;
    if certs.is_empty() {
        return Err(pem_error("certificate", path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| pem_error("private key", path, e))
}

fn pem_error(
    what: &'static str,
    path: impl AsRef<Path>,
    problem: impl std::fmt::Display,
) -> TlsError {
    TlsError::Pem {
        what,
        path: path.as_ref().display().to_string(),
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_dev_certificate_loads() {
        acceptor(&TlsConfig::default()).unwrap();
    }

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let config = TlsConfig {
            cert: Some(empty.clone()),
            key: Some(dir.path().join("missing.key")),
        };
        let Err(err) = acceptor(&config) else {
            panic!("an empty certificate file must be refused")
        };
        let err = err.to_string();
        assert!(err.contains("empty.pem"), "{err}");
    }
}
