//! Stand-ins for APNs, FCM and a webhook receiver: TLS servers on
//! 127.0.0.1 with the dev certificate, speaking HTTP/2 (and HTTP/1.1 when
//! asked). Each request is handed to the test, which checks it and picks
//! the answer (or none: a hang). Also the keys the providers sign with,
//! and a checker for the JWTs they send.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

/// A bound on how long a test waits for an expected request; not a sync.
pub const WAIT: Duration = Duration::from_secs(20);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The dev CA, which the providers are told to trust (push.ca_file).
pub fn ca_path() -> PathBuf {
    repo("certs/ca.pem")
}

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
    /// When it arrived, wall-clock ms (to compare with a job's not_before_ms).
    pub wall_ms: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// How the server answers one request.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// A request waiting for its answer.
pub struct Exchange {
    pub seen: Seen,
    reply: oneshot::Sender<Answer>,
}

impl Exchange {
    pub fn answer(self, status: u16, body: &str) {
        self.answer_with(status, &[], body);
    }

    pub fn answer_with(self, status: u16, headers: &[(&'static str, &str)], body: &str) {
        let answer = Answer {
            status,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            body: body.to_owned(),
        };
        // The client may have given up already (a timeout test): fine.
        let _ = self.reply.send(answer);
    }

    /// Never answer: the request hangs until the client gives up.
    pub fn hang(self) {
        std::mem::forget(self.reply);
    }
}

/// Which protocols the server offers by ALPN.
#[derive(Clone, Copy)]
pub enum Offer {
    H2,
    Http1Only,
}

/// A fake provider endpoint.
pub struct FakeServer {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Exchange>,
}

impl FakeServer {
    pub async fn start(offer: Offer) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server_tls(offer));
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let service = service_fn(move |request| handle(request, tx.clone()));
                    let io = TokioIo::new(tls);
                    // Connection errors (the client hung up) end the task.
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        FakeServer { addr, requests }
    }

    /// `https://127.0.0.1:PORT` (an IP, so no resolver thread is involved).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The next request; panics if none comes within [`WAIT`].
    pub async fn next(&mut self) -> Exchange {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("the fake server got no request in time")
            .expect("the fake server stopped")
    }

    /// A request that already arrived, if any (no waiting).
    pub fn try_next(&mut self) -> Option<Exchange> {
        self.requests.try_recv().ok()
    }
}

async fn handle(
    request: Request<Incoming>,
    tx: mpsc::UnboundedSender<Exchange>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string()),
        version: parts.version,
        headers: parts.headers,
        body,
        at: std::time::Instant::now(),
        wall_ms: pigeon_server::clock::now_ms(),
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(Exchange { seen, reply }).is_err() {
        return Ok(Response::builder()
            .status(503)
            .body(Full::default())
            .unwrap());
    }
    let Ok(answer) = answer.await else {
        // Dropped without an answer: the test ended.
        return Ok(Response::builder()
            .status(503)
            .body(Full::default())
            .unwrap());
    };
    let mut response = Response::builder().status(answer.status);
    for (name, value) in answer.headers {
        response = response.header(name, value);
    }
    Ok(response.body(Full::new(Bytes::from(answer.body))).unwrap())
}

fn server_tls(offer: Offer) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(repo("certs/server.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(repo("certs/server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = match offer {
        Offer::H2 => vec![b"h2".to_vec()],
        Offer::Http1Only => vec![b"http/1.1".to_vec()],
    };
    Arc::new(config)
}

/// A fresh APNs signing key: the .p8 text and its public key.
pub fn apns_key() -> (String, Vec<u8>) {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &SystemRandom::new(),
    )
    .unwrap();
    let public = pair.public_key().as_ref().to_vec();
    (pem("PRIVATE KEY", pkcs8.as_ref()), public)
}

/// The RSA key of the test service account (tests/certs/rotated.key, a
/// test-only PKCS#8 RSA-2048 key) and its public key (PKCS#1 DER).
pub fn service_account_key() -> (String, Vec<u8>) {
    let text = std::fs::read_to_string(repo("tests/certs/rotated.key")).unwrap();
    let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).unwrap();
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    (text, pair.public_key().as_ref().to_vec())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

/// A JWT whose signature verified: its header and claims.
#[derive(Debug)]
pub struct Jwt {
    pub header: Value,
    pub claims: Value,
}

/// Check `token`'s signature with `public` under `alg` (ES256 or RS256)
/// and return its parts; panics if it does not verify.
pub fn verify_jwt(token: &str, alg: &str, public: &[u8]) -> Jwt {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    let decode = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    };
    let header = decode(parts[0]);
    assert_eq!(header["alg"], alg);
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("base64url signature");
    let algorithm: &dyn signature::VerificationAlgorithm = match alg {
        "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        other => panic!("unexpected alg {other}"),
    };
    signature::UnparsedPublicKey::new(algorithm, public)
        .verify(signed.as_bytes(), &sig)
        .expect("the JWT signature verifies");
    Jwt {
        header,
        claims: decode(parts[1]),
    }
}

/// Split a `application/x-www-form-urlencoded` body (values here need no
/// decoding beyond %3A).
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.replace("%3A", ":"))
        })
        .collect()
}
