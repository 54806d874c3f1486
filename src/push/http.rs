//! A small HTTPS client for the push providers: hyper 1 over tokio-rustls.
//!
//! One HTTP/2 connection per host is kept and multiplexed (APNs asks
//! providers to keep connections open rather than reconnect per push);
//! a connection that failed or timed out is dropped and the next request
//! dials again. Hosts that only speak HTTP/1.1 (a webhook receiver may)
//! get a fresh connection per request. Every request, connecting included,
//! runs under one deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::outcome::Outcome;

/// Largest response body read; provider answers are small JSON.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a request got no HTTP answer. All of these are worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `https://host[:port]/...`.
    #[error("bad url: {0}")]
    Url(String),
    /// Resolving, connecting or the TLS handshake failed.
    #[error("connect to {host} failed: {reason}")]
    Connect {
        /// host:port.
        host: String,
        /// Why.
        reason: String,
    },
    /// The connection broke or the peer spoke nonsense.
    #[error("http: {0}")]
    Protocol(String),
    /// No complete answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why the TLS roots could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RootsError(String);

/// An HTTP answer with its whole (bounded) body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Which protocols a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/2 only (APNs requires it; Google serves it).
    H2Only,
    /// HTTP/2 if the server offers it, else HTTP/1.1.
    H2OrHttp1,
}

/// HTTPS client with one cached HTTP/2 connection per host.
pub struct HttpsClient {
    connector: TlsConnector,
    h2: Mutex<HashMap<String, http2::SendRequest<Full<Bytes>>>>,
}

/// The trust roots for provider endpoints: the PEM CA file if given, else
/// the operating system's roots.
pub fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, RootsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| RootsError(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| RootsError(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| RootsError(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "skipping an unreadable system CA certificate");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(RootsError(
                    "no system CA certificates found (install ca-certificates, or set push.ca_file)"
                        .to_owned(),
                ));
            }
        }
    }
    if roots.is_empty() {
        return Err(RootsError("no CA certificate loaded".to_owned()));
    }
    Ok(roots)
}

impl HttpsClient {
    /// A client trusting `roots` and offering `protocols` by ALPN.
    pub fn new(roots: Arc<rustls::RootCertStore>, protocols: Protocols) -> HttpsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = match protocols {
            Protocols::H2Only => vec![b"h2".to_vec()],
            Protocols::H2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        HttpsClient {
            connector: TlsConnector::from(Arc::new(config)),
            h2: Mutex::new(HashMap::new()),
        }
    }

    /// Send a request a provider client just built: a request that could
    /// not be built is [`Outcome::Failed`], a transport failure (timeout,
    /// connection) is [`Outcome::retry`]; otherwise the reply to classify.
    pub async fn deliver(
        &self,
        request: http::Result<Request<Full<Bytes>>>,
        deadline: Duration,
    ) -> Result<Reply, Outcome> {
        let request = request.map_err(|e| Outcome::Failed {
            reason: format!("cannot build the request: {e}"),
        })?;
        self.send(request, deadline)
            .await
            .map_err(|e| Outcome::retry(e.to_string()))
    }

    /// Send `request` (its URI absolute, https) and read the whole answer,
    /// all within `deadline`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        deadline: Duration,
    ) -> Result<Reply, HttpError> {
        let authority = authority(request.uri())?;
        let result = tokio::time::timeout(deadline, self.send_inner(&authority, request)).await;
        let result = result.unwrap_or(Err(HttpError::Timeout(deadline)));
        if result.is_err() {
            // A hung or broken connection must not take the next request too.
            self.forget(&authority);
        }
        result
    }

    async fn send_inner(
        &self,
        authority: &Authority,
        request: Request<Full<Bytes>>,
    ) -> Result<Reply, HttpError> {
        let cached = self.cached(&authority.key);
        let response = match cached {
            Some(mut sender) => {
                sender.ready().await.map_err(protocol)?;
                sender.send_request(request).await.map_err(protocol)?
            }
            None => match self.connect(authority).await? {
                Connection::H2(mut sender) => {
                    self.h2
                        .lock()
                        .expect("h2 map lock poisoned")
                        .insert(authority.key.clone(), sender.clone());
                    sender.ready().await.map_err(protocol)?;
                    sender.send_request(request).await.map_err(protocol)?
                }
                Connection::Http1(mut sender) => {
                    let request = origin_form(request, authority)?;
                    sender.ready().await.map_err(protocol)?;
                    sender.send_request(request).await.map_err(protocol)?
                }
            },
        };
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn cached(&self, key: &str) -> Option<http2::SendRequest<Full<Bytes>>> {
        let mut map = self.h2.lock().expect("h2 map lock poisoned");
        match map.get(key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn forget(&self, authority: &Authority) {
        self.h2
            .lock()
            .expect("h2 map lock poisoned")
            .remove(&authority.key);
    }

    async fn connect(&self, authority: &Authority) -> Result<Connection, HttpError> {
        let failed = |reason: String| HttpError::Connect {
            host: authority.key.clone(),
            reason,
        };
        let addr = resolve(authority).await.map_err(failed)?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Pushes are small and latency matters more than batching.
        tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
        let name = ServerName::try_from(authority.host.clone())
            .map_err(|e| failed(format!("bad server name: {e}")))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("tls: {e}")))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| failed(format!("http/2: {e}")))?;
            // The connection task ends when every sender is dropped or the
            // peer goes away; its error is the next request's error.
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "push connection closed");
                }
            });
            return Ok(Connection::H2(sender));
        }
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| failed(format!("http/1.1: {e}")))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "push connection closed");
            }
        });
        Ok(Connection::Http1(sender))
    }
}

enum Connection {
    H2(http2::SendRequest<Full<Bytes>>),
    Http1(http1::SendRequest<Full<Bytes>>),
}

/// Where a URI points.
struct Authority {
    /// Host name or IP address, without brackets.
    host: String,
    port: u16,
    /// host:port, the connection cache key.
    key: String,
}

fn authority(uri: &Uri) -> Result<Authority, HttpError> {
    if uri.scheme_str() != Some("https") {
        return Err(HttpError::Url(format!("{uri} is not https")));
    }
    let host = uri
        .host()
        .ok_or_else(|| HttpError::Url(format!("{uri} has no host")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let key = format!("{host}:{port}");
    Ok(Authority { host, port, key })
}

/// An IP literal as is (no blocking lookup); a name through the resolver.
async fn resolve(authority: &Authority) -> Result<SocketAddr, String> {
    if let Ok(ip) = authority.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, authority.port));
    }
    tokio::net::lookup_host((authority.host.as_str(), authority.port))
        .await
        .map_err(|e| format!("resolve: {e}"))?
        .next()
        .ok_or_else(|| "resolve: no address".to_owned())
}

/// HTTP/1.1 wants `/path?query` plus a Host header, not the absolute URI.
fn origin_form(
    mut request: Request<Full<Bytes>>,
    authority: &Authority,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = path
        .parse()
        .map_err(|e| HttpError::Url(format!("{path}: {e}")))?;
    let host = if authority.port == 443 {
        authority.host.clone()
    } else {
        authority.key.clone()
    };
    let host = host
        .parse()
        .map_err(|e| HttpError::Url(format!("{host}: {e}")))?;
    request.headers_mut().insert(HOST, host);
    Ok(request)
}

fn protocol(e: hyper::Error) -> HttpError {
    HttpError::Protocol(e.to_string())
}
