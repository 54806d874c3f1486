//! Limits that keep one client from hurting the others: per-connection
//! request and send rates, failed-login limits per account and per address,
//! and a cap on handshakes in progress per address.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pigeon_protocol::pb::login_request::Credential;
use pigeon_protocol::{Body, ErrorCode, Platform};
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test]
async fn a_hot_sender_is_rate_limited_with_a_retry_hint_and_others_are_not() {
    let server = TestServer::start(|c| {
        c.limits.sends_per_sec = 5;
        c.limits.send_burst = 5;
    })
    .await;
    let (mut hot, _) = server.user("hot", "h1").await;
    let (mut calm, _) = server.user("calm", "c1").await;
    server.user("sink", "s1").await;
    for i in 0..5 {
        hot.send_ok("sink", &format!("burst{i}"), "x").await;
    }
    let refused = hot.send_text("sink", "over", "x").await;
    let error = expect_error(&refused, ErrorCode::RateLimited);
    assert!(!error.fatal);
    assert!(
        (1..=1000).contains(&error.retry_after_ms),
        "{}",
        error.retry_after_ms
    );
    // Another connection has its own budget.
    calm.send_ok("sink", "calm", "fine").await;
    // Waiting as told is enough; the refused send was not stored.
    tokio::time::sleep(Duration::from_millis(u64::from(error.retry_after_ms))).await;
    hot.send_ok("sink", "over", "x").await;
    let (mut sink, _) = {
        let mut c = server.raw().await;
        let l = c.login("sink", "s2", Platform::Web).await;
        (c, l)
    };
    assert_eq!(sink.pull(0, 100).await.messages.len(), 7);
}

#[tokio::test]
async fn too_many_requests_of_any_kind_are_rate_limited() {
    let server = TestServer::start(|c| {
        c.limits.requests_per_sec = 1;
        c.limits.request_burst = 3;
    })
    .await;
    let (mut client, _) = server.user("alice", "a1").await;
    let ping = || Body::Ping(pigeon_protocol::pb::Ping::default());
    for _ in 0..3 {
        assert!(matches!(client.request(ping()).await, Body::Pong(_)));
    }
    expect_error(&client.request(ping()).await, ErrorCode::RateLimited);
}

fn password_login(name: &str, password: &str) -> Body {
    login_body(
        name,
        "d1",
        Platform::Web,
        Credential::Password(password.into()),
    )
}

#[tokio::test]
async fn repeated_failures_lock_an_account_name_whether_or_not_it_exists() {
    let server = TestServer::start(|c| {
        c.accounts.login_failures_per_account = 3;
        c.accounts.login_failures_per_address = 100;
    })
    .await;
    let mut raw = server.raw().await;
    raw.register("alice").await;
    for name in ["alice", "nobody"] {
        for _ in 0..3 {
            expect_error(
                &raw.request(password_login(name, "wrong password")).await,
                ErrorCode::AuthFailed,
            );
        }
        let locked = raw.request(password_login(name, PASSWORD)).await;
        let error = expect_error(&locked, ErrorCode::RateLimited);
        assert!(
            error.retry_after_ms > 60_000,
            "locked for the rest of the window"
        );
    }
    // Another account from the same address is unaffected.
    raw.register("bob").await;
    raw.login("bob", "b1", Platform::Web).await;
}

#[tokio::test]
async fn repeated_failures_from_one_address_lock_that_address() {
    let server = TestServer::start(|c| {
        c.accounts.login_failures_per_account = 100;
        c.accounts.login_failures_per_address = 4;
    })
    .await;
    let mut raw = server.raw().await;
    raw.register("alice").await;
    for i in 0..4 {
        let body = password_login(&format!("guess{i}"), "wrong password");
        expect_error(&raw.request(body).await, ErrorCode::AuthFailed);
    }
    expect_error(
        &raw.request(password_login("alice", PASSWORD)).await,
        ErrorCode::RateLimited,
    );
    // The same account from another loopback address logs in.
    let mut other = RawClient::over(tls_from(source("127.0.0.2"), server.addr).await);
    other.login("alice", "a2", Platform::Web).await;
}

fn source(ip: &str) -> SocketAddr {
    format!("{ip}:0").parse().unwrap()
}

async fn tcp_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(from).unwrap();
    socket.connect(to).await.unwrap()
}

async fn tls_from(from: SocketAddr, to: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = tcp_from(from, to).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector().connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_per_address() {
    let server = TestServer::start(|c| {
        c.limits.handshakes_per_address = 3;
        c.timeouts.handshake = Duration::from_secs(30);
    })
    .await;
    // Three connections that never start TLS hold every slot of 127.0.0.3.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(tcp_from(source("127.0.0.3"), server.addr).await);
    }
    // A fourth from the same address is closed at once.
    let mut fourth = tcp_from(source("127.0.0.3"), server.addr).await;
    let mut buf = [0u8; 1];
    let read =
        tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut fourth, &mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the server: {read:?}"
    );
    // Other addresses are served meanwhile.
    let mut ok = RawClient::over(tls_from(source("127.0.0.4"), server.addr).await);
    ok.register("alice").await;
    ok.login("alice", "a1", Platform::Web).await;
}
