//! TLS: the server's certificate and key as a swappable, shared
//! `rustls::ServerConfig`. The config is built once at start and again only
//! on a reload (SIGHUP); every accepted connection takes the current one
//! (an `Arc` clone) for its handshake (`tls_stream::accept`). Owns no sockets.
//!
//! What is offered: TLS 1.3 and TLS 1.2 only, and only AEAD suites with
//! ECDHE key exchange (listed in [`CIPHER_SUITES`]). Reconnecting clients
//! resume their TLS session (stateless tickets for TLS 1.3 and 1.2, a
//! session-id cache for TLS 1.2 clients without tickets), so a phone that
//! changes network skips the certificate exchange and its signatures.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::ring::cipher_suite;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// The development certificate for localhost, 127.0.0.1 and ::1, signed by
/// certs/ca.pem. Its key is public: for development and tests only.
const DEV_CERT: &[u8] = include_bytes!("../../certs/server.pem");
const DEV_KEY: &[u8] = include_bytes!("../../certs/server.key");

/// The suites offered, strongest first: AEAD ciphers with ECDHE (forward
/// secrecy) only. Pinned here rather than taken from the provider's
/// defaults so that a rustls upgrade cannot widen the list unnoticed.
pub const CIPHER_SUITES: [SupportedCipherSuite; 9] = [
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// TLS 1.2 sessions remembered by id for clients that do not take tickets.
/// Bounded: the oldest are forgotten, and those clients do a full handshake.
const SESSION_CACHE: usize = 4096;

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

/// The certificate the server presents, swappable while it serves.
///
/// A `std::sync::RwLock<Arc<ServerConfig>>` rather than the `arc-swap`
/// crate: it is read once per accepted connection (a lock and an `Arc`
/// clone, nanoseconds next to a handshake's signature) and written once per
/// reload, so lock-free reads would buy nothing worth a dependency.
pub struct ServerTls {
    /// The PEM files to re-read on reload; None: the embedded dev pair.
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<ServerConfig>>,
}

/// What a successful reload installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files were read again and the server now presents this leaf
    /// certificate (hex SHA-256 of its DER).
    Certificate {
        /// Hex SHA-256 of the leaf certificate.
        fingerprint: String,
    },
    /// No files are configured (the embedded dev certificate): nothing to do.
    NothingToReload,
}

impl ServerTls {
    /// Read the configured certificate and key (or take the embedded dev
    /// pair) and build the first config.
    pub fn load(config: &TlsConfig) -> Result<ServerTls, TlsError> {
        let files = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => None,
        };
        let (certs, key) = match &files {
            Some((cert, key)) => (read_certs(cert)?, read_key(key)?),
            None => {
                tracing::warn!(
                    "using the embedded development certificate; set tls.cert and tls.key for real use"
                );
                (
                    parse_certs(DEV_CERT, "(embedded dev certificate)")?,
                    parse_key(DEV_KEY, "(embedded dev key)")?,
                )
            }
        };
        let fingerprint = fingerprint(&certs[0]);
        let server = server_config(certs, key)?;
        tracing::info!(%fingerprint, "tls certificate loaded");
        Ok(ServerTls {
            files,
            current: RwLock::new(server),
        })
    }

    /// The current config, for one new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.clone()
    }

    /// Read the certificate and key files again and, if they are usable,
    /// present the new certificate to every connection accepted from now
    /// on. Connections already open keep their session. On error nothing
    /// changes: the previous certificate stays in use.
    ///
    /// Blocking (file reads): call it off the async threads.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(Reloaded::NothingToReload);
        };
        let certs = read_certs(cert)?;
        let key = read_key(key)?;
        let fingerprint = fingerprint(&certs[0]);
        let server = server_config(certs, key)?;
        // Only an assignment happens under the lock, so a poisoned lock
        // cannot hold a half-written value.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = server;
        Ok(Reloaded::Certificate { fingerprint })
    }
}

/// Reload `tls` on every SIGHUP until `shutdown`. A failed reload is logged
/// as an error and the previous certificate keeps serving.
pub async fn reload_on_sighup(tls: Arc<ServerTls>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; certificate reload is off");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = hangup.recv() => if received.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading the tls certificate and key");
        let source = tls.clone();
        match tokio::task::spawn_blocking(move || source.reload()).await {
            Ok(Ok(Reloaded::Certificate { fingerprint })) => {
                tracing::info!(%fingerprint, "tls certificate reloaded")
            }
            Ok(Ok(Reloaded::NothingToReload)) => tracing::warn!(
                "tls certificate not reloaded: tls.cert and tls.key are not set (embedded dev certificate)"
            ),
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "tls reload failed; still serving the previous certificate"
            ),
            Err(e) => tracing::error!(error = %e, "tls reload task failed"),
        }
    }
}

/// The rustls config for one certificate: TLS 1.3 and 1.2, [`CIPHER_SUITES`],
/// no client certificates, resumption on. Each config gets fresh ticket keys
/// and an empty session cache, so after a reload no session made under the
/// old certificate resumes: every client sees the new one.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::ring::default_provider()
    });
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(server))
}

/// Hex SHA-256 of a certificate's DER, as `openssl x509 -fingerprint
/// -sha256` prints it (without the colons).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
        ServerTls::load(&TlsConfig::default()).unwrap();
    }

    fn current(tls: &ServerTls) -> Arc<ServerConfig> {
        tls.current.read().unwrap().clone()
    }

    #[test]
    fn a_failed_reload_keeps_the_previous_config_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
        std::fs::write(&cert, DEV_CERT).unwrap();
        std::fs::write(&key, DEV_KEY).unwrap();
        let tls = ServerTls::load(&TlsConfig {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
        })
        .unwrap();
        let before = current(&tls);
        std::fs::write(&cert, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &current(&tls)), "kept on error");
        std::fs::write(&cert, DEV_CERT).unwrap();
        let leaf = parse_certs(DEV_CERT, "dev").unwrap().remove(0);
        assert_eq!(
            tls.reload().unwrap(),
            Reloaded::Certificate {
                fingerprint: fingerprint(&leaf)
            }
        );
        assert!(!Arc::ptr_eq(&before, &current(&tls)), "replaced");
    }

    #[test]
    fn the_embedded_certificate_has_nothing_to_reload() {
        let tls = ServerTls::load(&TlsConfig::default()).unwrap();
        assert_eq!(tls.reload().unwrap(), Reloaded::NothingToReload);
    }

    #[test]
    fn only_aead_suites_with_forward_secrecy_are_offered() {
        for suite in CIPHER_SUITES {
            let name = format!("{:?}", suite.suite());
            let tls13 = name.starts_with("TLS13_");
            assert!(tls13 || name.starts_with("TLS_ECDHE_"), "{name}");
            assert!(
                name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
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
        let Err(err) = ServerTls::load(&config) else {
            panic!("an empty certificate file must be refused")
        };
        let err = err.to_string();
        assert!(err.contains("empty.pem"), "{err}");
    }
}
