//! A scripted fake server for the sdk tests: a TLS listener on
//! 127.0.0.1:0 with the dev certificate, and the client options that trust
//! it.

#![allow(dead_code)] // Each test file uses a different part.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pigeon_protocol::Codec;
use pigeon_sdk::{tls, ConnectOptions, Connection};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

pub type Peer = Framed<TlsStream<tokio::net::TcpStream>, Codec>;

pub fn certs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../certs")
}

/// A TLS listener on 127.0.0.1:0 with the dev server certificate.
pub async fn fake_server() -> (TcpListener, TlsAcceptor) {
    let certs = CertificateDer::pem_file_iter(certs_dir().join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs_dir().join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener, TlsAcceptor::from(Arc::new(config)))
}

pub fn options(listener: &TcpListener) -> ConnectOptions {
    let tls = tls::client_config_from_ca_file(certs_dir().join("ca.pem")).unwrap();
    let mut options = ConnectOptions::new(listener.local_addr().unwrap().to_string(), tls);
    options.request_timeout = Duration::from_secs(5);
    options
}

/// Connect the sdk and accept on the fake server side.
pub async fn pair() -> (Connection, Peer) {
    let (listener, acceptor) = fake_server().await;
    let options = options(&listener);
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        Framed::new(acceptor.accept(tcp).await.unwrap(), Codec::default())
    };
    let (conn, peer) = tokio::join!(Connection::connect(&options), accept);
    (conn.unwrap(), peer)
}

/// Accept one client on `listener` and finish the TLS handshake.
pub async fn accept(listener: &TcpListener, acceptor: &TlsAcceptor) -> Peer {
    let (tcp, _) = listener.accept().await.unwrap();
    Framed::new(acceptor.accept(tcp).await.unwrap(), Codec::default())
}
