//! A bare tokio-rustls server with the same certificate and crypto
//! provider as pigeond: handshake, then read and discard until the peer
//! closes. The baseline for the storm (handshakes) and for idle memory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serve on `listen` for `secs` seconds.
pub async fn serve(listen: SocketAddr, cert: &Path, key: &Path, secs: f64) -> Result<()> {
    if !listen.ip().is_loopback() {
        return Err(anyhow!("the baseline server listens on loopback only"));
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener: TcpListener = socket.listen(4096)?;
    eprintln!(
        "bare TLS server on {listen} for {secs} s (pid {})",
        std::process::id()
    );
    let until = Instant::now() + Duration::from_secs_f64(secs);
    // Bounded by --secs.
    loop {
        let accepted = tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        // Best effort per connection, like any server: a failed one only ends itself.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(mut tls)) = handshake.await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let idle = Duration::from_secs(300);
            // Bounded: ends at EOF, on error, or after 300 s of silence.
            while let Ok(Ok(n)) = tokio::time::timeout(idle, tls.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}
