//! Session lifecycle over the wire: kicks, heartbeats, idle and login
//! deadlines, and graceful shutdown with connected clients.

mod common;

use std::time::Duration;

use common::*;
use pigeon_protocol::pb;
use pigeon_protocol::{Body, ErrorCode, KickReason, Platform};

fn kick_reason(frames: &[pigeon_protocol::Envelope]) -> KickReason {
    match frames.last().and_then(|e| e.body.as_ref()) {
        Some(Body::Kick(k)) => KickReason::try_from(k.reason).unwrap(),
        other => panic!("expected a kick before close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_login_on_the_same_device_kicks_the_first() {
    let server = TestServer::start(|_| {}).await;
    let (mut first, _) = server.user("alice", "phone").await;
    let mut second = server.raw().await;
    second.login("alice", "phone", Platform::Ios).await;
    assert_eq!(kick_reason(&first.closed().await), KickReason::SameDevice);
    // The newer session is unaffected by the old one closing: it still gets notifies.
    let (mut bob, _) = server.user("bob", "b1").await;
    bob.send_ok("alice", "1", "to the new session").await;
    assert!(matches!(second.next_push().await, Some(Body::Notify(n)) if n.max_seq == 1));
}

#[tokio::test]
async fn one_session_per_platform_class_by_default() {
    let server = TestServer::start(|_| {}).await;
    let (mut iphone, _) = server.user("alice", "iphone").await;
    let mut desktop = server.raw().await;
    desktop.login("alice", "laptop", Platform::Desktop).await;
    let mut android = server.raw().await;
    android.login("alice", "android", Platform::Android).await;
    assert_eq!(
        kick_reason(&iphone.closed().await),
        KickReason::SamePlatformClass
    );
    // The desktop session was not of the mobile class and stays.
    assert!(matches!(
        desktop.request(Body::Ping(pb::Ping::default())).await,
        Body::Pong(_)
    ));
}

#[tokio::test]
async fn device_kick_policy_allows_two_phones() {
    let server =
        TestServer::start(|c| c.accounts.kick_policy = pigeon_server::config::KickPolicy::Device)
            .await;
    let (mut iphone, _) = server.user("alice", "iphone").await;
    let mut android = server.raw().await;
    android.login("alice", "android", Platform::Android).await;
    assert!(matches!(
        iphone.request(Body::Ping(pb::Ping::default())).await,
        Body::Pong(_)
    ));
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_limit() {
    let server = TestServer::start(|c| {
        c.timeouts.heartbeat_interval = Duration::from_millis(100);
        c.timeouts.idle = Duration::from_millis(400);
    })
    .await;
    let (mut silent, login) = server.user("alice", "a1").await;
    assert_eq!(
        (login.heartbeat_interval_ms, login.idle_timeout_ms),
        (100, 400)
    );
    let started = tokio::time::Instant::now();
    assert!(silent.closed().await.is_empty(), "closed without a frame");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the idle limit"
    );
}

#[tokio::test]
async fn heartbeats_keep_a_connection_alive_past_the_idle_limit() {
    let server = TestServer::start(|c| {
        c.timeouts.heartbeat_interval = Duration::from_millis(100);
        c.timeouts.idle = Duration::from_millis(400);
    })
    .await;
    let (mut client, _) = server.user("alice", "a1").await;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(100));
    for i in 0..12u64 {
        heartbeat.tick().await;
        match client
            .request(Body::Ping(pb::Ping { client_time_ms: i }))
            .await
        {
            Body::Pong(p) => assert_eq!(p.client_time_ms, i),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn no_login_within_the_deadline_gets_login_timeout() {
    let server = TestServer::start(|c| c.timeouts.login = Duration::from_millis(300)).await;
    let mut raw = server.raw().await;
    let frames = raw.closed().await;
    assert_eq!(frames.len(), 1);
    assert!(expect_error(frames[0].body.as_ref().unwrap(), ErrorCode::LoginTimeout).fatal);
}

#[tokio::test]
async fn a_tcp_connection_that_never_starts_tls_is_dropped() {
    let server = TestServer::start(|c| c.timeouts.handshake = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the server: {read:?}"
    );
}

#[tokio::test]
async fn shutdown_kicks_connected_clients_with_server_shutdown() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    alice.send_ok("bob", "1", "before shutdown").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        kick_reason(&alice.closed().await),
        KickReason::ServerShutdown
    );
    let frames = bob.closed().await;
    assert_eq!(kick_reason(&frames), KickReason::ServerShutdown);
    stopping.await.unwrap();
}
