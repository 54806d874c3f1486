//! Malformed, oversized, unauthorised and out-of-order input: each gets its
//! typed error, nothing is lost, and a well-behaved client on the same server
//! keeps being served throughout.

mod common;

use common::*;
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, Envelope, ErrorCode, Platform};

/// A well-behaved pair that must keep working while others misbehave.
struct Bystanders {
    alice: RawClient,
    bob: RawClient,
    sent: u32,
}

impl Bystanders {
    async fn new(server: &TestServer) -> Bystanders {
        let (alice, _) = server.user("alice", "a1").await;
        let (bob, _) = server.user("bob", "b1").await;
        Bystanders {
            alice,
            bob,
            sent: 0,
        }
    }

    /// Alice sends one more message and Bob pulls every one so far, in order.
    async fn still_served(&mut self) {
        self.sent += 1;
        let text = format!("still here {}", self.sent);
        self.alice
            .send_ok("bob", &format!("m{}", self.sent), &text)
            .await;
        let page = self.bob.pull(0, 100).await;
        let expected: Vec<String> = (1..=self.sent).map(|i| format!("still here {i}")).collect();
        assert_eq!(texts(&page), expected);
    }
}

fn fatal_error(frames: &[Envelope], code: ErrorCode) -> pb::Error {
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("no frame before close, expected {code:?}"));
    let error = expect_error(last.body.as_ref().unwrap(), code);
    assert!(error.fatal, "{code:?} must be marked fatal");
    error
}

#[tokio::test]
async fn garbage_bytes_get_invalid_argument_and_close() {
    let server = TestServer::start(|_| {}).await;
    let mut ok = Bystanders::new(&server).await;
    let mut raw = server.raw().await;
    // A valid length prefix around bytes that are not a protobuf Envelope.
    raw.write_raw(&[0, 0, 0, 6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        .await;
    fatal_error(&raw.closed().await, ErrorCode::InvalidArgument);
    ok.still_served().await;
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_before_the_body() {
    let server = TestServer::start(|c| {
        c.limits.max_frame_bytes = 4096;
        c.limits.max_content_bytes = 2048;
    })
    .await;
    let mut ok = Bystanders::new(&server).await;
    for len in [4097u32, u32::MAX] {
        let mut raw = server.raw().await;
        // Only the prefix is sent: the refusal cannot depend on reading a body.
        raw.write_raw(&len.to_be_bytes()).await;
        let error = fatal_error(&raw.closed().await, ErrorCode::FrameTooLarge);
        assert!(error.message.contains("4096"), "{}", error.message);
    }
    ok.still_served().await;
}

#[tokio::test]
async fn truncated_frame_then_close_loses_nothing_already_answered() {
    let server = TestServer::start(|_| {}).await;
    let mut ok = Bystanders::new(&server).await;
    let (mut carol, _) = server.user("carol", "c1").await;
    let (mut dave, _) = server.user("dave", "d1").await;
    carol.send_ok("dave", "c-1", "from carol").await;
    // Half a frame, then the client vanishes.
    carol.write_raw(&[0, 0, 0, 40, 1, 2, 3]).await;
    drop(carol);
    let page = dave.pull(0, 100).await;
    assert_eq!(texts(&page), ["from carol"]);
    ok.still_served().await;
}

#[tokio::test]
async fn unknown_or_empty_body_gets_unknown_request_and_stays_open() {
    let server = TestServer::start(|_| {}).await;
    let (mut client, _) = server.user("alice", "a1").await;
    // Field 99 is not a body this server knows: prost skips it, the body is empty.
    client
        .write_raw(&[0, 0, 0, 5, 0x08, 0x07, 0x9A, 0x06, 0x00])
        .await;
    let answer = client.next().await.unwrap();
    assert_eq!(answer.request_id, 7);
    expect_error(answer.body.as_ref().unwrap(), ErrorCode::UnknownRequest);
    // A server-only body sent by a client.
    let body = client
        .request(Body::Notify(pb::Notify {
            max_seq: 1,
            messages: vec![],
        }))
        .await;
    expect_error(&body, ErrorCode::UnknownRequest);
    // Still open and logged in.
    assert!(
        matches!(client.request(Body::Ping(pb::Ping { client_time_ms: 5 })).await, Body::Pong(p) if p.client_time_ms == 5)
    );
}

#[tokio::test]
async fn requests_before_login_get_not_authenticated_and_close() {
    let server = TestServer::start(|_| {}).await;
    let mut ok = Bystanders::new(&server).await;
    let requests = [
        Body::Ping(pb::Ping::default()),
        send_body("bob", "x", b"hi".to_vec()),
        Body::Pull(pb::PullRequest::default()),
        Body::Ack(pb::AckRequest { seq: 1 }),
        Body::Logout(pb::LogoutRequest {}),
        Body::Notify(pb::Notify {
            max_seq: 1,
            messages: vec![],
        }),
    ];
    let envelopes = requests
        .into_iter()
        .map(|body| Envelope::new(1, body))
        .chain([Envelope {
            request_id: 1,
            body: None,
        }]);
    for envelope in envelopes {
        let mut raw = server.raw().await;
        raw.send_envelope(envelope).await;
        let frames = raw.closed().await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].request_id, 1);
        fatal_error(&frames, ErrorCode::NotAuthenticated);
    }
    ok.still_served().await;
    // Nothing from the unauthenticated send reached bob.
    assert_eq!(ok.bob.pull(0, 100).await.messages.len(), 1);
}

#[tokio::test]
async fn send_to_unknown_user_is_refused_and_stores_nothing() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let body = alice.send_text("nobody", "x1", "hello?").await;
    let error = expect_error(&body, ErrorCode::UnknownUser);
    assert!(!error.fatal);
    let by_id = Body::Send(pb::SendRequest {
        to_user_id: 999_999,
        client_msg_id: "x2".into(),
        content: b"hi".to_vec().into(),
        ..Default::default()
    });
    expect_error(&alice.request(by_id).await, ErrorCode::UnknownUser);
    assert_eq!(
        alice.pull(0, 10).await.max_seq,
        0,
        "the sender's queue is untouched"
    );
}

#[tokio::test]
async fn content_over_the_limit_is_refused_and_the_connection_stays() {
    let server = TestServer::start(|c| c.limits.max_content_bytes = 1000).await;
    let (mut alice, login) = server.user("alice", "a1").await;
    assert_eq!(login.max_content_bytes, 1000);
    server.user("bob", "b1").await;
    let body = alice.request(send_body("bob", "big", vec![7; 1001])).await;
    expect_error(&body, ErrorCode::ContentTooLarge);
    alice.send_ok("bob", "fits", &"x".repeat(1000)).await;
}

#[tokio::test]
async fn malformed_send_fields_get_invalid_argument() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    server.user("bob", "b1").await;
    let cases = [
        send_body("bob", "", b"no id".to_vec()),
        send_body("bob", &"i".repeat(65), b"long id".to_vec()),
        Body::Send(pb::SendRequest {
            to_user_id: 1,
            to_username: "bob".into(),
            client_msg_id: "both".into(),
            ..Default::default()
        }),
        Body::Send(pb::SendRequest {
            client_msg_id: "neither".into(),
            ..Default::default()
        }),
    ];
    for body in cases {
        expect_error(&alice.request(body).await, ErrorCode::InvalidArgument);
    }
    assert_eq!(alice.pull(0, 10).await.max_seq, 0);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_auth_failed() {
    let server = TestServer::start(|_| {}).await;
    let mut ok = Bystanders::new(&server).await;
    let mut raw = server.raw().await;
    let wrong = login_body(
        "alice",
        "x1",
        Platform::Web,
        Credential::Password("not the password".into()),
    );
    let unknown = login_body(
        "mallory",
        "x1",
        Platform::Web,
        Credential::Password(PASSWORD.into()),
    );
    let bad_token = login_body(
        "alice",
        "x1",
        Platform::Web,
        Credential::Token("00ff".into()),
    );
    let mut messages = Vec::new();
    for body in [wrong, unknown, bad_token] {
        let error = expect_error(&raw.request(body).await, ErrorCode::AuthFailed);
        assert!(!error.fatal);
        messages.push(error.message);
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
    // The connection is still usable for a correct login.
    raw.login("alice", "x1", Platform::Web).await;
    ok.still_served().await;
}

#[tokio::test]
async fn bad_login_fields_and_versions_are_typed() {
    let server = TestServer::start(|_| {}).await;
    server.user("alice", "a1").await;
    let mut raw = server.raw().await;
    let mut no_platform = login_body(
        "alice",
        "d",
        Platform::Unspecified,
        Credential::Password(PASSWORD.into()),
    );
    expect_error(
        &raw.request(no_platform.clone()).await,
        ErrorCode::InvalidArgument,
    );
    let bad_device = login_body(
        "alice",
        "has space",
        Platform::Web,
        Credential::Password(PASSWORD.into()),
    );
    expect_error(&raw.request(bad_device).await, ErrorCode::InvalidArgument);
    if let Body::Login(l) = &mut no_platform {
        l.platform = Platform::Web as i32;
        l.protocol_version = 99;
    }
    let answer = raw.request(no_platform).await;
    assert!(expect_error(&answer, ErrorCode::UnsupportedVersion).fatal);
    assert!(raw.closed().await.is_empty());
}

#[tokio::test]
async fn second_login_on_a_connection_is_refused() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let again = login_body(
        "alice",
        "a1",
        Platform::Ios,
        Credential::Password(PASSWORD.into()),
    );
    expect_error(&alice.request(again).await, ErrorCode::AlreadyAuthenticated);
    expect_error(
        &alice.request(register_body("alice2", PASSWORD)).await,
        ErrorCode::AlreadyAuthenticated,
    );
}

#[tokio::test]
async fn ack_and_pull_beyond_max_seq_are_refused_without_moving_the_cursor() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    alice.send_ok("bob", "1", "one").await;
    expect_error(&bob.ack(2).await, ErrorCode::AckBeyondMaxSeq);
    expect_error(
        &bob.request(Body::Pull(pb::PullRequest {
            after_seq: 5,
            limit: 1,
        }))
        .await,
        ErrorCode::AckBeyondMaxSeq,
    );
    let page = bob.pull(0, 10).await;
    assert_eq!(texts(&page), ["one"]);
    assert_eq!(page.acked_seq, 0);
}

#[tokio::test]
async fn registration_rules_are_enforced() {
    let server = TestServer::start(|_| {}).await;
    let mut raw = server.raw().await;
    raw.register("alice").await;
    expect_error(
        &raw.request(register_body("alice", PASSWORD)).await,
        ErrorCode::UsernameTaken,
    );
    expect_error(
        &raw.request(register_body("Bad Name", PASSWORD)).await,
        ErrorCode::InvalidArgument,
    );
    expect_error(
        &raw.request(register_body("carol", "short")).await,
        ErrorCode::InvalidArgument,
    );

    let closed = TestServer::start(|c| c.accounts.registration_enabled = false).await;
    let mut raw = closed.raw().await;
    expect_error(
        &raw.request(register_body("dave", PASSWORD)).await,
        ErrorCode::RegistrationDisabled,
    );
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_stall_others() {
    let server = TestServer::start(|c| c.limits.outbound_queue = 4).await;
    let mut ok = Bystanders::new(&server).await;
    let (mut hog, _) = server.user("hog", "h1").await;
    // Pipeline many pings without reading a single answer.
    for i in 1..=2000u64 {
        hog.send_envelope(Envelope::new(i, Body::Ping(pb::Ping { client_time_ms: i })))
            .await;
        if i % 500 == 0 {
            ok.still_served().await;
        }
    }
    ok.still_served().await;
}

#[tokio::test]
async fn a_pull_page_never_exceeds_the_frame_limit() {
    let server = TestServer::start(|c| {
        c.limits.max_frame_bytes = 16 * 1024;
        c.limits.max_content_bytes = 10 * 1024;
    })
    .await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    for i in 0..5u8 {
        let body = send_body("bob", &format!("big{i}"), vec![i; 10 * 1024]);
        assert!(matches!(alice.request(body).await, Body::Sent(_)));
    }
    // Asking for all five at once: each page holds what fits in one frame.
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let page = bob.pull(after, 100).await;
        assert!(!page.messages.is_empty());
        got.extend(page.messages.iter().map(|m| m.content[0]));
        after = page.messages.last().unwrap().seq;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
}
