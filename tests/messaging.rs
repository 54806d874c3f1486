//! One-to-one messaging over the wire: fan-out to every device, order,
//! idempotent sends, notify, pull/ack semantics and garbage collection.

mod common;

use std::collections::BTreeSet;

use common::*;
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, ErrorCode, Platform};

/// Pull everything above `after` page by page (each page's pull acks the
/// previous page), returning every message.
async fn pull_all(client: &mut RawClient, mut after: u64, limit: u32) -> Vec<pb::Message> {
    let mut all = Vec::new();
    loop {
        let page = client.pull(after, limit).await;
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

#[tokio::test]
async fn every_device_of_both_users_gets_every_message_in_order() {
    let server = TestServer::start(|_| {}).await;
    let (mut a1, _) = server.user("alice", "a-phone").await;
    let mut a2 = server.raw().await;
    a2.login("alice", "a-laptop", Platform::Desktop).await;
    let (mut b1, _) = server.user("bob", "b-phone").await;
    let mut b2 = server.raw().await;
    b2.login("bob", "b-web", Platform::Web).await;

    for i in 0..15 {
        a1.send_ok("bob", &format!("a{i}"), &format!("alice {i}"))
            .await;
        b2.send_ok("alice", &format!("b{i}"), &format!("bob {i}"))
            .await;
    }
    for device in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let messages = pull_all(device, 0, 4).await;
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=30).collect::<Vec<_>>(),
            "gapless, ordered, no duplicates"
        );
        let from_alice: Vec<_> = messages
            .iter()
            .filter(|m| m.from_username == "alice")
            .map(|m| String::from_utf8_lossy(&m.content).into_owned())
            .collect();
        let from_bob: Vec<_> = messages
            .iter()
            .filter(|m| m.from_username == "bob")
            .map(|m| String::from_utf8_lossy(&m.content).into_owned())
            .collect();
        assert_eq!(
            from_alice,
            (0..15).map(|i| format!("alice {i}")).collect::<Vec<_>>()
        );
        assert_eq!(
            from_bob,
            (0..15).map(|i| format!("bob {i}")).collect::<Vec<_>>()
        );
        let ids: BTreeSet<u64> = messages.iter().map(|m| m.msg_id).collect();
        assert_eq!(ids.len(), 30, "each message once");
    }
}

#[tokio::test]
async fn a_message_carries_ids_names_and_time() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, alice_login) = server.user("alice", "a1").await;
    let (mut bob, bob_login) = server.user("bob", "b1").await;
    let sent = alice.send_ok("bob", "hello-1", "hello bob").await;
    assert_eq!(sent.seq, 1, "the sender's own queue gets the message");
    assert!(!sent.duplicate);
    let page = bob.pull(0, 10).await;
    let m = &page.messages[0];
    assert_eq!((m.seq, m.msg_id), (1, sent.msg_id));
    assert_eq!(
        (m.from_user_id, m.to_user_id),
        (alice_login.user_id, bob_login.user_id)
    );
    assert_eq!(
        (m.from_username.as_str(), m.to_username.as_str()),
        ("alice", "bob")
    );
    assert_eq!(
        (m.from_device_id.as_str(), m.client_msg_id.as_str()),
        ("a1", "hello-1")
    );
    assert_eq!(m.content_type, "text/plain");
    assert_eq!(m.sent_at_ms, sent.sent_at_ms);
    let second = alice.send_ok("bob", "hello-2", "again").await;
    assert!(second.msg_id > sent.msg_id, "msg ids grow with time");
}

#[tokio::test]
async fn a_resend_with_the_same_client_msg_id_returns_the_first_answer() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    let first = alice.send_ok("bob", "same", "once").await;
    let again = alice.send_ok("bob", "same", "once").await;
    assert!(again.duplicate);
    assert_eq!((again.msg_id, again.seq), (first.msg_id, first.seq));
    let page = bob.pull(0, 10).await;
    assert_eq!(texts(&page), ["once"]);
    assert_eq!(page.max_seq, 1);
}

#[tokio::test]
async fn online_devices_are_notified_and_notifies_coalesce() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    let sent = alice.send_ok("bob", "n1", "ping").await;
    match bob.next_push().await {
        Some(Body::Notify(n)) => assert_eq!(n.max_seq, 1),
        other => panic!("expected a notify, got {other:?}"),
    }
    assert!(sent.seq >= 1);
    // Many sends while bob reads nothing: bob is told about the newest seq,
    // and never more notifies than sends.
    for i in 0..50 {
        alice.send_ok("bob", &format!("burst{i}"), "burst").await;
    }
    let mut notifies = 0;
    loop {
        match bob.next_push().await {
            Some(Body::Notify(n)) => {
                notifies += 1;
                if n.max_seq == 51 {
                    break;
                }
                assert!(n.max_seq < 51);
            }
            other => panic!("expected a notify, got {other:?}"),
        }
    }
    assert!(notifies <= 50, "{notifies} notifies for 50 sends");
}

#[tokio::test]
async fn a_lost_pull_response_is_answered_again_and_acked_entries_never_return() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    for i in 1..=5 {
        alice
            .send_ok("bob", &format!("{i}"), &format!("m{i}"))
            .await;
    }
    let first = bob.pull(0, 3).await;
    // The client "lost" that answer and asks again: same entries.
    let again = bob.pull(0, 3).await;
    assert_eq!(first.messages, again.messages);
    assert!(first.has_more);
    // The next page's anchor acknowledges the first page.
    let second = bob.pull(3, 3).await;
    assert_eq!(texts(&second), ["m4", "m5"]);
    assert_eq!(second.acked_seq, 3);
    assert!(!second.has_more);
    // Cursors never move backwards: pulling from 0 again returns entries but
    // does not rewind the cursor.
    let rewind = bob.pull(0, 10).await;
    assert_eq!(rewind.acked_seq, 3);
    match bob.ack(5).await {
        Body::Acked(a) => assert_eq!(a.acked_seq, 5),
        other => panic!("{other:?}"),
    }
    // A new connection of the same device starts from its cursor.
    let mut bob_again = server.raw().await;
    let login = bob_again.login("bob", "b1", Platform::Ios).await;
    assert_eq!((login.max_seq, login.acked_seq), (5, 5));
}

#[tokio::test]
async fn gc_removes_entries_and_bodies_once_every_device_acked() {
    let server =
        TestServer::start(|c| c.messaging.history_retention = std::time::Duration::ZERO).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    let mut bob2 = server.raw().await;
    bob2.login("bob", "b2", Platform::Desktop).await;
    for i in 1..=4 {
        alice
            .send_ok("bob", &format!("{i}"), &format!("m{i}"))
            .await;
    }
    let before = server.store.stats().unwrap();
    assert_eq!(
        (before.entries, before.bodies),
        (8, 4),
        "4 entries each for alice and bob, one body per message"
    );

    // Alice's own device acks: her entries go, the bodies stay for bob.
    alice.ack(4).await;
    // Only one of bob's devices acks: bob's entries stay.
    bob.ack(4).await;
    let mid = server.store.stats().unwrap();
    assert_eq!((mid.entries, mid.bodies), (4, 4));
    assert_eq!(
        bob2.pull(0, 10).await.messages.len(),
        4,
        "unacked entries stay for bob2"
    );

    bob2.ack(4).await;
    let after = server.store.stats().unwrap();
    assert_eq!((after.entries, after.bodies), (0, 0));
    // The queue's top survives collection: seqs continue, never reused.
    let next = alice.send_ok("bob", "5", "m5").await;
    assert_eq!(next.seq, 5);
    let page = bob.pull(4, 10).await;
    assert_eq!(page.messages[0].seq, 5);
}

#[tokio::test]
async fn retention_keeps_acked_history_for_a_new_device() {
    let server = TestServer::start(|_| {}).await; // default retention: 7 days
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    alice.send_ok("bob", "1", "history").await;
    bob.ack(1).await;
    let mut new_device = server.raw().await;
    let login = new_device.login("bob", "b-new", Platform::Web).await;
    assert_eq!(login.acked_seq, 0);
    assert_eq!(texts(&new_device.pull(0, 10).await), ["history"]);
}

#[tokio::test]
async fn token_login_logout_and_revoked_token() {
    let server = TestServer::start(|_| {}).await;
    let (mut first, login) = server.user("alice", "a1").await;
    assert_eq!(login.token.len(), 64);
    drop(first.request(Body::Ping(pb::Ping::default())).await);
    drop(first);
    let mut second = server.raw().await;
    let by_token = login_body(
        "",
        "a1",
        Platform::Ios,
        Credential::Token(login.token.clone()),
    );
    match second.request(by_token.clone()).await {
        Body::LoggedIn(l) => assert_eq!(
            (l.user_id, l.token.as_str()),
            (login.user_id, login.token.as_str())
        ),
        other => panic!("{other:?}"),
    }
    // The token belongs to device a1 only.
    let mut other_device = server.raw().await;
    let wrong_device = login_body(
        "",
        "a2",
        Platform::Ios,
        Credential::Token(login.token.clone()),
    );
    expect_error(
        &other_device.request(wrong_device).await,
        ErrorCode::AuthFailed,
    );
    // Logout revokes it and closes the connection.
    assert!(matches!(
        second.request(Body::Logout(pb::LogoutRequest {})).await,
        Body::LoggedOut(_)
    ));
    assert!(second.closed().await.is_empty());
    let mut third = server.raw().await;
    expect_error(&third.request(by_token).await, ErrorCode::AuthFailed);
}
