//! Answered sends survive a graceful stop and a SIGKILL of a real pigeond
//! process right after the answer.

mod common;

use common::process::{serve_args, Pigeond};
use common::*;
use pigeon_protocol::Platform;

#[tokio::test]
async fn messages_answered_before_a_graceful_stop_are_delivered_after_restart() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (bob, _) = server.user("bob", "b1").await;
    drop(bob);
    for i in 1..=10 {
        alice
            .send_ok("bob", &format!("{i}"), &format!("before stop {i}"))
            .await;
    }
    drop(alice);
    let server = server.restart().await;
    let mut bob = server.raw().await;
    let login = bob.login("bob", "b1", Platform::Ios).await;
    assert_eq!(login.max_seq, 10);
    let page = bob.pull(0, 100).await;
    let expected: Vec<String> = (1..=10).map(|i| format!("before stop {i}")).collect();
    assert_eq!(texts(&page), expected);
    // Ids and seqs continue after the restart.
    let mut alice = server.raw().await;
    alice.login("alice", "a1", Platform::Ios).await;
    assert_eq!(alice.send_ok("bob", "11", "after").await.seq, 11);
}

#[tokio::test]
async fn a_send_answered_right_before_sigkill_is_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (process, addr) = Pigeond::start(serve_args(dir.path(), "127.0.0.1:0", &[])).await;
    let mut alice = RawClient::connect(addr).await;
    alice.register("alice").await;
    alice.register("bob").await;
    alice.login("alice", "a1", Platform::Ios).await;
    let mut answered = Vec::new();
    for round in 0..3 {
        let text = format!("answered {round}");
        alice.send_ok("bob", &format!("k{round}"), &text).await;
        answered.push(text);
    }
    // Kill the moment the last answer is in: no graceful anything.
    process.kill().await;

    let (process, addr) = Pigeond::start(serve_args(dir.path(), "127.0.0.1:0", &[])).await;
    let mut bob = RawClient::connect(addr).await;
    let login = bob.login("bob", "b1", Platform::Android).await;
    assert_eq!(login.max_seq, 3);
    assert_eq!(texts(&bob.pull(0, 100).await), answered);
    // A resend of an answered message is still recognised after the crash.
    let mut alice = RawClient::connect(addr).await;
    alice.login("alice", "a1", Platform::Ios).await;
    assert!(alice.send_ok("bob", "k2", "answered 2").await.duplicate);
    process.kill().await;
}
