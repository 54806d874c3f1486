//! TLS at the edge: only TLS 1.3 and 1.2 with AEAD/ECDHE suites are
//! negotiated (rustls clients pinned to each version and suite, and
//! `openssl s_client` offering old protocols and weak suites), reconnecting
//! clients resume their session, and SIGHUP swaps the certificate for new
//! connections while sessions already open stay up; a bad new file is
//! logged and the previous certificate keeps serving.

mod common;
#[path = "net/pigeond.rs"]
mod pigeond;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use pigeon_protocol::{pb, Body, Platform};
use pigeon_server::gateway::tls::fingerprint;
use pigeond::Pigeond;
use rustls::crypto::ring::{cipher_suite as cs, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use rustls::version::{TLS12, TLS13};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The dev certificate pigeond embeds (ECDSA P-256).
fn dev_cert() -> (PathBuf, PathBuf) {
    (repo("certs/server.pem"), repo("certs/server.key"))
}

/// A second certificate for the same names, RSA-2048, signed by the same
/// dev CA (tests/certs/gen.sh).
fn rotated_cert() -> (PathBuf, PathBuf) {
    (
        repo("tests/certs/rotated.pem"),
        repo("tests/certs/rotated.key"),
    )
}

/// The leaf certificate in a PEM file, as DER.
fn leaf(pem: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .expect("a certificate")
        .unwrap()
}

/// A client trusting the dev CA that offers only `versions` and `suites`.
fn client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[SupportedCipherSuite],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..default_provider()
    };
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client offering everything rustls has (1.3 and 1.2, every suite).
fn any_client() -> Arc<ClientConfig> {
    client(&[&TLS13, &TLS12], &default_provider().cipher_suites)
}

async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = TlsConnector::from(config.clone()).connect(name, tcp);
    tokio::time::timeout(WAIT, handshake)
        .await
        .expect("handshake ends in time")
}

/// One request/answer over a fresh connection, so the client has read the
/// TLS 1.3 session tickets the server sends after the handshake.
async fn round_trip(tls: TlsStream<TcpStream>) {
    let mut raw = RawClient::over(tls);
    let answer = raw.request(Body::Ping(pb::Ping::default())).await;
    assert!(
        matches!(answer, Body::Error(_)),
        "ping before login: {answer:?}"
    );
}

const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_CHACHA20_POLY1305_SHA256,
];

#[tokio::test]
async fn every_tls13_and_ecdhe_aead_tls12_suite_is_negotiated_with_an_ecdsa_certificate() {
    let server = TestServer::start(|_| {}).await;
    let tls12 = [
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    for (version, suites) in [(&TLS13, &TLS13_SUITES), (&TLS12, &tls12)] {
        for suite in suites {
            let tls = connect(server.addr, &client(&[version], &[*suite]))
                .await
                .unwrap_or_else(|e| panic!("{suite:?} refused: {e}"));
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.protocol_version(), Some(version.version));
            assert_eq!(conn.negotiated_cipher_suite(), Some(*suite));
        }
    }
}

#[tokio::test]
async fn ecdhe_rsa_aead_suites_are_negotiated_with_an_rsa_certificate() {
    let (cert, key) = rotated_cert();
    let server = TestServer::start(|c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
    })
    .await;
    for suite in [
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let tls = connect(server.addr, &client(&[&TLS12], &[suite]))
            .await
            .unwrap_or_else(|e| panic!("{suite:?} refused: {e}"));
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_2)
        );
    }
    let tls = connect(server.addr, &any_client()).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        conn.negotiated_cipher_suite(),
        Some(cs::TLS13_AES_256_GCM_SHA384)
    );
}

/// Runs `openssl s_client` against `addr` with `args`; returns whether the
/// handshake completed and what it printed. None when openssl is missing.
async fn s_client(addr: SocketAddr, args: &[&str]) -> Option<(bool, String)> {
    let output = tokio::process::Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .arg("-CAfile")
        .arg(ca_path())
        .arg("-verify_return_error")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(WAIT, output)
        .await
        .expect("s_client ends")
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("openssl s_client: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // s_client prints "Cipher is (NONE)" when no handshake completed.
    let connected = output.status.success()
        && text.contains("Cipher is ")
        && !text.contains("Cipher is (NONE)");
    Some((connected, text))
}

#[tokio::test]
async fn openssl_gets_tls13_and_tls12_but_not_older_protocols_or_weak_suites() {
    let server = TestServer::start(|_| {}).await;
    let Some((ok, text)) = s_client(server.addr, &["-tls1_3"]).await else {
        eprintln!(
            "SKIPPED: the openssl command is not installed; the rustls suite tests still ran"
        );
        return;
    };
    assert!(ok && text.contains("TLSv1.3"), "TLS 1.3 refused:\n{text}");
    let (ok, text) = s_client(server.addr, &["-tls1_2"]).await.unwrap();
    assert!(
        ok && text.contains("ECDHE-ECDSA-AES256-GCM-SHA384"),
        "TLS 1.2:\n{text}"
    );
    // SECLEVEL=0 makes openssl itself willing to offer what follows, so a
    // failure is the server's refusal, not the client's policy.
    let refused: [&[&str]; 7] = [
        &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"],
        &["-tls1", "-cipher", "ALL:@SECLEVEL=0"],
        // CBC modes (no AEAD), with and without SHA-1.
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:@SECLEVEL=0",
        ],
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384",
        ],
        // Static key exchange (no forward secrecy), anonymous, export, null, RC4, 3DES.
        &[
            "-tls1_2",
            "-cipher",
            "kRSA:aNULL:eNULL:EXP:RC4:3DES:@SECLEVEL=0",
        ],
        // CCM is an AEAD but not one pigeond offers.
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM8:@SECLEVEL=0",
        ],
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256",
        ],
    ];
    for args in refused {
        let (ok, text) = s_client(server.addr, args).await.unwrap();
        assert!(!ok, "openssl {args:?} got a session:\n{text}");
        // The server answered the ClientHello with an alert.
        assert!(
            text.contains("alert"),
            "no alert from the server for {args:?}:\n{text}"
        );
        assert!(
            !text.contains("no protocols available") && !text.contains("no ciphers available"),
            "openssl did not offer {args:?} at all, so this proves nothing:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_reconnecting_client_resumes_its_tls_session_with_tls13_and_tls12() {
    let server = TestServer::start(|_| {}).await;
    for version in [&TLS13, &TLS12] {
        let config = client(&[version], &default_provider().cipher_suites);
        let first = connect(server.addr, &config).await.unwrap();
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        round_trip(first).await;
        for _ in 0..2 {
            let again = connect(server.addr, &config).await.unwrap();
            let conn = again.get_ref().1;
            assert_eq!(conn.protocol_version(), Some(version.version));
            assert_eq!(
                conn.handshake_kind(),
                Some(HandshakeKind::Resumed),
                "{:?} reconnect did a full handshake",
                version.version
            );
            round_trip(again).await;
        }
        // Another client (no session to offer) still gets a full handshake.
        let other = connect(
            server.addr,
            &client(&[version], &default_provider().cipher_suites),
        )
        .await
        .unwrap();
        assert_eq!(
            other.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
    }
}

/// The leaf certificate the server presents to a new client.
async fn presented(addr: SocketAddr, config: &Arc<ClientConfig>) -> CertificateDer<'static> {
    let tls = connect(addr, config).await.expect("handshake succeeds");
    let conn = tls.get_ref().1;
    conn.peer_certificates().expect("server sent certificates")[0].clone()
}

async fn ping(client: &mut RawClient) {
    let answer = client
        .request(Body::Ping(pb::Ping { client_time_ms: 7 }))
        .await;
    assert!(matches!(answer, Body::Pong(_)), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_presents_a_new_certificate_to_new_connections_and_keeps_open_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    let (a_cert, a_key) = dev_cert();
    let (b_cert, b_key) = rotated_cert();
    std::fs::copy(&a_cert, &cert).unwrap();
    std::fs::copy(&a_key, &key).unwrap();
    let config = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut pigeond = Pigeond::start(dir.path(), &config, "info").await;
    let resuming = any_client();
    assert_eq!(presented(pigeond.addr, &resuming).await, leaf(&a_cert));

    // A session opened under certificate A.
    let mut alice = RawClient::over(connect(pigeond.addr, &any_client()).await.unwrap());
    alice.register("alice").await;
    alice.login("alice", "a1", Platform::Ios).await;

    // Swap the files (each replaced whole, as certbot does) and SIGHUP.
    let b_leaf = leaf(&b_cert);
    replace(&cert, &std::fs::read(&b_cert).unwrap());
    replace(&key, &std::fs::read(&b_key).unwrap());
    pigeond.signal("HUP");
    let reloaded = pigeond.wait_for_log("tls certificate reloaded").await;
    assert_eq!(reloaded["fields"]["fingerprint"], fingerprint(&b_leaf));

    // New connections get B, even a client holding a session from A.
    assert_eq!(presented(pigeond.addr, &any_client()).await, b_leaf);
    let tls = connect(pigeond.addr, &resuming).await.unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], b_leaf);
    // The session opened under A is still up and served.
    ping(&mut alice).await;
    let mut bob = RawClient::over(tls);
    bob.register("bob").await;
    bob.login("bob", "b1", Platform::Android).await;
    alice.send_ok("bob", "1", "after the reload").await;
    assert_eq!(texts(&bob.pull(0, 10).await), ["after the reload"]);

    // Broken files: the reload fails loudly and B keeps serving.
    for (what, cert_pem, key_pem) in [
        (
            "garbage certificate",
            b"not a certificate".to_vec(),
            std::fs::read(&b_key).unwrap(),
        ),
        ("empty key", std::fs::read(&b_cert).unwrap(), Vec::new()),
        (
            "key of another certificate",
            std::fs::read(&b_cert).unwrap(),
            std::fs::read(&a_key).unwrap(),
        ),
    ] {
        replace(&cert, &cert_pem);
        replace(&key, &key_pem);
        pigeond.signal("HUP");
        let failed = pigeond
            .wait_for_log("tls reload failed; still serving the previous certificate")
            .await;
        assert_eq!(failed["level"], "ERROR", "{what}: {failed}");
        assert_eq!(
            presented(pigeond.addr, &any_client()).await,
            b_leaf,
            "{what}"
        );
        ping(&mut alice).await;
        ping(&mut bob).await;
    }
    // A missing file too.
    std::fs::remove_file(&cert).unwrap();
    pigeond.signal("HUP");
    pigeond
        .wait_for_log("tls reload failed; still serving the previous certificate")
        .await;
    assert_eq!(presented(pigeond.addr, &any_client()).await, b_leaf);

    // Fixing the files and signalling again brings A back.
    std::fs::copy(&a_cert, &cert).unwrap();
    std::fs::copy(&a_key, &key).unwrap();
    pigeond.signal("HUP");
    pigeond.wait_for_log("tls certificate reloaded").await;
    assert_eq!(presented(pigeond.addr, &any_client()).await, leaf(&a_cert));
    ping(&mut alice).await;
}

/// Replace a file whole: write a sibling, then rename over it.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
