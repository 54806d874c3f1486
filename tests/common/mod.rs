//! Shared test harness: a real pigeond on an ephemeral loopback port with a
//! temporary sled directory and the dev certificate, and a raw protocol
//! client that speaks frames over real TLS.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod process;
pub mod social;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, Codec, Envelope, ErrorCode, Platform, PROTOCOL_VERSION};
use pigeon_server::admin::client::AdminClient;
use pigeon_server::config::Config;
use pigeon_server::service::acks::AckWriter;
use pigeon_server::service::CommitStats;
use pigeon_server::store::Store;
use pigeon_server::Server;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How long a test waits for any one expected frame before failing. A bound
/// on a hang, not a synchronisation sleep.
pub const WAIT: Duration = Duration::from_secs(20);

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery";

/// The dev CA that signs the server's dev certificate.
pub fn ca_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/ca.pem")
}

/// A config for tests: ephemeral port, the given data dir, quick hashing.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.accounts.max_concurrent_hashes = 8;
    // Parallel tests must not fight over the admin port.
    config.admin.listen = None;
    config
}

/// A running in-process server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener, when the config turned it on.
    pub admin: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    pub stats: Arc<CommitStats>,
    /// Writes the acknowledgements pulls recorded, before a test reads
    /// cursors or collections straight from the store.
    pub acks: AckWriter,
    pub config: Config,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Start with the test config, adjusted by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let mut server = TestServer::start_with(config).await;
        server.dir = Some(dir);
        server
    }

    /// Start with exactly this config.
    pub async fn start_with(config: Config) -> TestServer {
        let mut server = Server::open(config.clone()).expect("server opens");
        let listener = server.bind().expect("server binds");
        let admin = server.start_admin().await.expect("admin listener starts");
        let addr = listener.local_addr().unwrap();
        let store = server.store();
        let stats = server.commit_stats();
        let acks = server.ack_writer();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(listener, shutdown.clone()));
        TestServer {
            addr,
            admin,
            store,
            stats,
            acks,
            config,
            shutdown,
            task,
            dir: None,
        }
    }

    /// Stop gracefully and wait until the store is closed.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        drop(self.store);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task ends cleanly");
        self.dir
    }

    /// Stop, then start again on the same data directory (new port).
    pub async fn restart(self) -> TestServer {
        let config = self.config.clone();
        let dir = self.stop().await;
        let mut server = TestServer::start_with(config).await;
        server.dir = dir;
        server
    }

    /// Stop, then start again on the same data directory and the same port,
    /// so clients reconnecting to the old address find it.
    pub async fn restart_in_place(self) -> TestServer {
        let mut config = self.config.clone();
        config.listen = self.addr;
        let dir = self.stop().await;
        let mut server = TestServer::start_with(config).await;
        server.dir = dir;
        server
    }

    /// A client of the admin endpoint with the server's token.
    pub fn admin_client(&self) -> AdminClient {
        let addr = self.admin.expect("the test turned the admin listener on");
        let path = self.config.admin.token_path(&self.config.data_dir);
        let token = pigeon_server::admin::token::read(&path).expect("token file");
        AdminClient::new(addr, token)
    }

    /// A raw client connected over TLS.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr).await
    }

    /// Register a user and return a raw client logged in as one device.
    pub async fn user(&self, name: &str, device: &str) -> (RawClient, pb::LoginResponse) {
        let mut client = self.raw().await;
        client.register(name).await;
        let login = client.login(name, device, Platform::Ios).await;
        (client, login)
    }
}

/// TLS client config trusting the dev CA.
pub fn client_tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A connector trusting the dev CA.
pub fn tls_connector() -> TlsConnector {
    TlsConnector::from(client_tls_config())
}

/// A TLS connection to the server, for sending raw bytes.
pub async fn tls_stream(addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tls_connector().connect(name, tcp).await.unwrap()
}

/// A frame-level client: what a client implementer would write first.
pub struct RawClient {
    pub frames: Framed<TlsStream<TcpStream>, Codec>,
    next_id: u64,
    /// Server pushes (Notify, Kick) seen while waiting for answers.
    pub pushes: Vec<Envelope>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::over(tls_stream(addr).await)
    }

    pub fn over(stream: TlsStream<TcpStream>) -> RawClient {
        RawClient {
            frames: Framed::new(stream, Codec::default()),
            next_id: 1,
            pushes: Vec::new(),
        }
    }

    /// Write raw bytes on the TLS stream (bypassing the codec).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        let stream = self.frames.get_mut();
        stream.write_all(bytes).await.unwrap();
        stream.flush().await.unwrap();
    }

    /// Send one envelope.
    pub async fn send_envelope(&mut self, envelope: Envelope) {
        self.frames.send(envelope).await.unwrap();
    }

    /// The next frame, or None when the server closed the connection.
    pub async fn next(&mut self) -> Option<Envelope> {
        match tokio::time::timeout(WAIT, self.frames.next()).await {
            Ok(Some(Ok(envelope))) => Some(envelope),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("no frame from the server within {WAIT:?}"),
        }
    }

    /// Wait until the server closes the connection; frames before that are returned.
    pub async fn closed(&mut self) -> Vec<Envelope> {
        let mut seen = Vec::new();
        while let Some(envelope) = self.next().await {
            seen.push(envelope);
        }
        seen
    }

    /// Send a request and wait for the answer with its id; pushes seen meanwhile are kept.
    pub async fn request(&mut self, body: Body) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        self.send_envelope(Envelope::new(id, body)).await;
        loop {
            let envelope = self
                .next()
                .await
                .expect("connection closed before the answer");
            if envelope.request_id == id {
                return envelope.body.expect("answer has a body");
            }
            assert_eq!(
                envelope.request_id, 0,
                "answer to another request: {envelope:?}"
            );
            self.pushes.push(envelope);
        }
    }

    /// The next server push (Notify or Kick), from those already seen or the wire.
    pub async fn next_push(&mut self) -> Option<Body> {
        if !self.pushes.is_empty() {
            return self.pushes.remove(0).body;
        }
        self.next().await.and_then(|e| e.body)
    }

    pub async fn register(&mut self, name: &str) -> u64 {
        match self.request(register_body(name, PASSWORD)).await {
            Body::Registered(r) => r.user_id,
            other => panic!("register {name}: {other:?}"),
        }
    }

    pub async fn login(
        &mut self,
        name: &str,
        device: &str,
        platform: Platform,
    ) -> pb::LoginResponse {
        let body = login_body(
            name,
            device,
            platform,
            Credential::Password(PASSWORD.into()),
        );
        match self.request(body).await {
            Body::LoggedIn(r) => r,
            other => panic!("login {name}/{device}: {other:?}"),
        }
    }

    /// Log in asking for new entries inside Notify (`inline_messages`).
    pub async fn login_inline(&mut self, name: &str, device: &str, platform: Platform) {
        let mut body = login_body(
            name,
            device,
            platform,
            Credential::Password(PASSWORD.into()),
        );
        if let Body::Login(login) = &mut body {
            login.inline_messages = true;
        }
        match self.request(body).await {
            Body::LoggedIn(_) => {}
            other => panic!("inline login {name}/{device}: {other:?}"),
        }
    }

    /// Send text to a user by name; returns the answer body.
    pub async fn send_text(&mut self, to: &str, client_msg_id: &str, text: &str) -> Body {
        self.request(send_body(to, client_msg_id, text.as_bytes().to_vec()))
            .await
    }

    pub async fn send_ok(&mut self, to: &str, client_msg_id: &str, text: &str) -> pb::SendResponse {
        match self.send_text(to, client_msg_id, text).await {
            Body::Sent(s) => s,
            other => panic!("send to {to}: {other:?}"),
        }
    }

    pub async fn pull(&mut self, after_seq: u64, limit: u32) -> pb::PullResponse {
        match self
            .request(Body::Pull(pb::PullRequest { after_seq, limit }))
            .await
        {
            Body::Pulled(p) => p,
            other => panic!("pull: {other:?}"),
        }
    }

    pub async fn ack(&mut self, seq: u64) -> Body {
        self.request(Body::Ack(pb::AckRequest { seq })).await
    }
}

pub fn register_body(name: &str, password: &str) -> Body {
    Body::Register(pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION as i32,
        username: name.into(),
        password: password.into(),
    })
}

pub fn login_body(name: &str, device: &str, platform: Platform, credential: Credential) -> Body {
    Body::Login(pb::LoginRequest {
        protocol_version: PROTOCOL_VERSION as i32,
        username: name.into(),
        device_id: device.into(),
        platform: platform as i32,
        credential: Some(credential),
        inline_messages: false,
    })
}

pub fn send_body(to: &str, client_msg_id: &str, content: Vec<u8>) -> Body {
    Body::Send(pb::SendRequest {
        group_id: 0,
        to_user_id: 0,
        to_username: to.into(),
        client_msg_id: client_msg_id.into(),
        content_type: "text/plain".into(),
        content: content.into(),
    })
}

/// Assert an answer is an error with this code; returns it.
#[track_caller]
pub fn expect_error(body: &Body, code: ErrorCode) -> pb::Error {
    match body {
        Body::Error(e) if e.code == code as i32 => e.clone(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// Texts of pulled messages, in order.
pub fn texts(page: &pb::PullResponse) -> Vec<String> {
    page.messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.content).into_owned())
        .collect()
}
