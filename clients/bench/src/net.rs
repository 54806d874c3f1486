//! Dialling: TCP from a rotating set of 127.0.0.x source addresses (one
//! source address has only ~28,000 ephemeral ports towards one server port,
//! and TIME_WAIT keeps them busy after a storm), then a TLS handshake that
//! trusts the given CA and keeps session tickets for resumption.
//!
//! Tickets are kept per client (`tls_as`): rustls' in-memory store keeps at
//! most 8 TLS 1.3 tickets per server name, so one store shared by 19,000
//! clients of "localhost" would let only the last 8 of them resume.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::HandshakeKind;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A TLS stream to a server.
pub type Tls = TlsStream<TcpStream>;

/// TCP connect and, separately, TLS handshake limit.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach servers: TLS trust, the certificate name, source addresses.
pub struct Dialer {
    connector: TlsConnector,
    config: Arc<rustls::ClientConfig>,
    per_client: Mutex<HashMap<String, TlsConnector>>,
    server_name: ServerName<'static>,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
}

/// What a handshake turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake (certificate, key exchange).
    Full,
    /// A resumed session (TLS 1.3 PSK or 1.2 ticket/session id).
    Resumed,
}

impl Dialer {
    /// Trust the CA in `ca`, expect `server_name` on the certificate, and
    /// dial from 127.0.0.1 ..= 127.0.0.`sources`. Session tickets for up to
    /// `resumption_cache` servers/connections are kept for resumption.
    pub fn new(ca: &Path, server_name: &str, sources: u8, resumption_cache: usize) -> Result<Self> {
        if sources == 0 {
            bail!("--sources must be at least 1");
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?
        {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::in_memory_sessions(resumption_cache.max(1));
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| anyhow!("bad --server-name {server_name:?}: {e}"))?;
        let sources = (1..=sources)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        let config = Arc::new(config);
        Ok(Dialer {
            connector: TlsConnector::from(config.clone()),
            config,
            per_client: Mutex::new(HashMap::new()),
            server_name,
            sources,
            next_source: AtomicUsize::new(0),
        })
    }

    /// TCP connect from the next source address, with TCP_NODELAY.
    pub async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream> {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
        let socket = TcpSocket::new_v4()?;
        // Only loopback sources: a bench never leaves 127.0.0.0/8.
        socket
            .bind(SocketAddr::new(self.sources[i], 0))
            .with_context(|| format!("cannot bind {}", self.sources[i]))?;
        let tcp = timeout(CONNECT_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| anyhow!("tcp connect to {addr} timed out"))?
            .with_context(|| format!("tcp connect to {addr} from {}", self.sources[i]))?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// TCP connect, then a TLS handshake; says whether it was resumed.
    /// Session tickets go to one store shared by every caller of `tls`.
    pub async fn tls(&self, addr: SocketAddr) -> Result<(Tls, Handshake)> {
        let connector = self.connector.clone();
        self.handshake(connector, addr).await
    }

    /// As [`Dialer::tls`], with session tickets kept for `client` alone, as
    /// a real client keeps its own.
    pub async fn tls_as(&self, addr: SocketAddr, client: &str) -> Result<(Tls, Handshake)> {
        let connector = {
            let mut known = self.per_client.lock().expect("not poisoned");
            known
                .entry(client.to_owned())
                .or_insert_with(|| {
                    let mut config = (*self.config).clone();
                    let store = ClientSessionMemoryCache::new(8);
                    config.resumption = Resumption::store(Arc::new(store));
                    TlsConnector::from(Arc::new(config))
                })
                .clone()
        };
        self.handshake(connector, addr).await
    }

    async fn handshake(
        &self,
        connector: TlsConnector,
        addr: SocketAddr,
    ) -> Result<(Tls, Handshake)> {
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address: the bench only targets this machine");
        }
        let tcp = self.tcp(addr).await?;
        let handshake = connector.connect(self.server_name.clone(), tcp);
        let tls = timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("tls handshake with {addr} timed out"))?
            .with_context(|| format!("tls handshake with {addr}"))?;
        let kind = match tls.get_ref().1.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        Ok((tls, kind))
    }
}
