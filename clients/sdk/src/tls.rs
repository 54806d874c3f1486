//! TLS client configuration: trust roots from a CA PEM file, the ring
//! provider, TLS 1.3 and 1.2, and the server name taken from "host:port".
//!
//! Owns only configuration; the handshake itself happens in `connection`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{SdkError, TlsFailure};

/// A client config trusting exactly the CA certificates in the PEM file at `path`.
pub fn client_config_from_ca_file(path: impl AsRef<Path>) -> Result<Arc<ClientConfig>, SdkError> {
    let path = path.as_ref();
    let ca_error = |detail: String| SdkError::Tls {
        kind: TlsFailure::CaFile,
        detail: format!("{}: {detail}", path.display()),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(e.to_string()))?;
    client_config_from_certs(certs).map_err(|e| match e {
        SdkError::Tls { kind, detail } => SdkError::Tls {
            kind,
            detail: format!("{}: {detail}", path.display()),
        },
        other => other,
    })
}

/// A client config trusting exactly the CA certificates in `pem` (PEM text).
pub fn client_config_from_ca_pem(pem: &[u8]) -> Result<Arc<ClientConfig>, SdkError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SdkError::Tls {
            kind: TlsFailure::CaFile,
            detail: e.to_string(),
        })?;
    client_config_from_certs(certs)
}

fn client_config_from_certs(
    certs: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, SdkError> {
    if certs.is_empty() {
        return Err(SdkError::Tls {
            kind: TlsFailure::CaFile,
            detail: "no CERTIFICATE found".into(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| SdkError::Tls {
            kind: TlsFailure::CaFile,
            detail: format!("unusable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| SdkError::Tls {
            kind: TlsFailure::Config,
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host part of "host:port" ("[::1]:7443" gives "::1"; no port gives
/// the whole string).
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address without brackets has several colons: no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// The TLS server name for a host name or IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, SdkError> {
    ServerName::try_from(host.to_owned()).map_err(|e| SdkError::Tls {
        kind: TlsFailure::Config,
        detail: format!("invalid server name {host:?}: {e}"),
    })
}

/// Classify a failed handshake: untrusted certificate or something else.
pub(crate) fn handshake_error(err: io::Error) -> SdkError {
    let rustls_err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(cert_err)) => SdkError::Tls {
            kind: TlsFailure::UntrustedCertificate,
            detail: format!("{cert_err:?}"),
        },
        Some(other) => SdkError::Tls {
            kind: TlsFailure::Handshake,
            detail: other.to_string(),
        },
        None if err.kind() == io::ErrorKind::UnexpectedEof => SdkError::Tls {
            kind: TlsFailure::Handshake,
            detail: "the server closed the connection during the handshake".into(),
        },
        None => SdkError::Io(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_split_from_port() {
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("localhost:7443"), "localhost");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn ip_addresses_and_names_are_valid_server_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("not a host").is_err());
    }

    #[test]
    fn missing_or_empty_ca_file_is_a_ca_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = client_config_from_ca_file(&missing).unwrap_err();
        assert!(
            matches!(
                err,
                SdkError::Tls {
                    kind: TlsFailure::CaFile,
                    ..
                }
            ),
            "{err:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"not pem at all\n").unwrap();
        let err = client_config_from_ca_file(&empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }

    #[test]
    fn dev_ca_loads_when_present() {
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../certs/ca.pem");
        if ca.exists() {
            let config = client_config_from_ca_file(&ca).unwrap();
            assert!(config.alpn_protocols.is_empty());
        }
    }
}
