//! The acknowledgement a pull carries is recorded and answered at once, and
//! written by the ack writer (docs/protocol.md §5.6, §7.2). Over TLS to a
//! real server with a real sled directory.

mod common;

use std::time::{Duration, Instant};

use common::social::revoke_body;
use common::{expect_error, RawClient, TestServer};
use pigeon_protocol::pb;
use pigeon_protocol::{Body, ErrorCode, Platform};
use pigeon_server::config::Config;

/// Long enough that the writer's timer never fires during a test: what is
/// written, the test wrote with `acks.write_now()` or a stop.
fn never_on_its_own(config: &mut Config) {
    config.messaging.ack_write_interval = Duration::from_secs(3600);
    config.messaging.history_retention = Duration::ZERO;
}

fn stored_cursor(server: &TestServer, user: u64, device: &str) -> Option<u64> {
    server
        .store
        .device(user, device)
        .unwrap()
        .map(|d| d.acked_seq)
}

fn queued(server: &TestServer, user: u64) -> usize {
    server.store.pull(user, 0, 100).unwrap().messages.len()
}

/// ann logged in on "phone", with `n` messages from bob queued; returns
/// her client and user id.
async fn ann_with_messages(server: &TestServer, n: usize) -> (RawClient, u64) {
    let (ann, login) = server.user("ann", "phone").await;
    let (mut bob, _) = server.user("bob", "web").await;
    for i in 0..n {
        bob.send_ok("ann", &format!("m{i}"), "hi").await;
    }
    (ann, login.user_id)
}

#[tokio::test]
async fn a_pulls_ack_is_answered_at_once_and_a_new_login_sees_it_before_it_is_written() {
    let server = TestServer::start(never_on_its_own).await;
    let (mut ann, ann_id) = ann_with_messages(&server, 3).await;
    let page = ann.pull(0, 10).await;
    assert_eq!(page.messages.len(), 3);
    let page = ann.pull(3, 10).await;
    assert_eq!(page.acked_seq, 3, "the answer carries the new cursor");
    assert!(page.messages.is_empty());
    assert_eq!(
        stored_cursor(&server, ann_id, "phone"),
        Some(0),
        "recorded, not written yet"
    );
    assert_eq!(queued(&server, ann_id), 3, "nothing collected yet");

    // The same device logs in again (the old session is replaced).
    let mut again = server.raw().await;
    let relogin = again.login("ann", "phone", Platform::Ios).await;
    assert_eq!(relogin.acked_seq, 3, "a login sees the recorded cursor");
    // An explicit ack below it answers the higher, recorded cursor.
    match again.ack(1).await {
        Body::Acked(a) => assert_eq!(a.acked_seq, 3),
        other => panic!("ack: {other:?}"),
    }

    server.acks.write_now().await;
    assert_eq!(stored_cursor(&server, ann_id, "phone"), Some(3));
    assert_eq!(queued(&server, ann_id), 0, "written, then collected");
    server.stop().await;
}

#[tokio::test]
async fn the_writer_writes_recorded_acks_and_collects_on_its_own() {
    let server = TestServer::start(|c| {
        c.messaging.ack_write_interval = Duration::from_millis(50);
        c.messaging.history_retention = Duration::ZERO;
    })
    .await;
    let (mut ann, ann_id) = ann_with_messages(&server, 2).await;
    ann.pull(0, 10).await;
    assert_eq!(ann.pull(2, 10).await.acked_seq, 2);
    // What is tested is the writer's own timer: wait for its effect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_cursor(&server, ann_id, "phone") != Some(2) || queued(&server, ann_id) != 0 {
        assert!(Instant::now() < deadline, "the writer never wrote the ack");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_writes_what_pulls_recorded() {
    let server = TestServer::start(never_on_its_own).await;
    let (mut ann, ann_id) = ann_with_messages(&server, 4).await;
    ann.pull(0, 10).await;
    assert_eq!(ann.pull(4, 10).await.acked_seq, 4);
    assert_eq!(stored_cursor(&server, ann_id, "phone"), Some(0));
    drop(ann);
    let server = server.restart().await;
    assert_eq!(stored_cursor(&server, ann_id, "phone"), Some(4));
    let mut ann = server.raw().await;
    assert_eq!(ann.login("ann", "phone", Platform::Ios).await.acked_seq, 4);
    server.stop().await;
}

#[tokio::test]
async fn a_device_revoked_with_an_ack_recorded_stays_revoked() {
    let server = TestServer::start(never_on_its_own).await;
    let mut laptop = server.raw().await;
    let ann = laptop.register("ann").await;
    laptop.login("ann", "laptop", Platform::Desktop).await;
    let mut phone = server.raw().await;
    phone.login("ann", "phone", Platform::Android).await;
    let (mut bob, _) = server.user("bob", "web").await;
    bob.send_ok("ann", "m1", "one").await;
    phone.pull(0, 10).await;
    assert_eq!(phone.pull(1, 10).await.acked_seq, 1);
    assert!(matches!(
        laptop.request(revoke_body("phone")).await,
        Body::DeviceRevoked(_)
    ));
    server.acks.write_now().await;
    assert_eq!(
        stored_cursor(&server, ann, "phone"),
        None,
        "not brought back"
    );
    assert_eq!(stored_cursor(&server, ann, "laptop"), Some(0));
    server.stop().await;
}

/// The same input the synchronous ack refused is refused, and records
/// nothing: beyond max_seq, before login, and an anchor below the cursor.
#[tokio::test]
async fn bad_pull_anchors_record_nothing() {
    let server = TestServer::start(never_on_its_own).await;
    let (mut ann, ann_id) = ann_with_messages(&server, 2).await;

    let beyond = ann
        .request(Body::Pull(pb::PullRequest {
            after_seq: 3,
            limit: 10,
        }))
        .await;
    let error = expect_error(&beyond, ErrorCode::AckBeyondMaxSeq);
    assert!(error.message.contains('2'), "names the max seq: {error:?}");
    let beyond = ann
        .request(Body::Pull(pb::PullRequest {
            after_seq: u64::MAX,
            limit: 10,
        }))
        .await;
    expect_error(&beyond, ErrorCode::AckBeyondMaxSeq);
    assert_eq!(server.acks.recorded(), 0);

    // Out of order: a pull below the cursor returns the older entries and
    // leaves the cursor where it was.
    assert_eq!(ann.pull(2, 10).await.acked_seq, 2);
    let older = ann.pull(0, 10).await;
    assert_eq!(older.acked_seq, 2);
    assert_eq!(older.messages.len(), 2);

    // Unauthenticated: refused before anything is read or recorded.
    let mut stranger = server.raw().await;
    let refused = stranger
        .request(Body::Pull(pb::PullRequest {
            after_seq: 1,
            limit: 10,
        }))
        .await;
    expect_error(&refused, ErrorCode::NotAuthenticated);

    server.acks.write_now().await;
    assert_eq!(stored_cursor(&server, ann_id, "phone"), Some(2));
    server.stop().await;
}

/// What the metrics scrape says for one unlabelled sample.
async fn sample(server: &TestServer, name: &str) -> f64 {
    let answer = server
        .admin_client()
        .call("GET", "/metrics", None)
        .await
        .expect("the admin endpoint answers");
    assert_eq!(answer.status, 200);
    let text = answer.text();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_scrape_counts_devices_whose_ack_waits() {
    let server = TestServer::start(|c| {
        never_on_its_own(c);
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (mut ann, _) = server.user("ann", "phone").await;
    let (mut bob, _) = server.user("bob", "web").await;
    bob.send_ok("ann", "m1", "one").await;
    assert_eq!(sample(&server, "pigeon_acks_waiting").await, 0.0);
    ann.pull(0, 10).await;
    ann.pull(1, 10).await;
    bob.pull(0, 10).await;
    assert_eq!(sample(&server, "pigeon_acks_waiting").await, 2.0);
    server.acks.write_now().await;
    assert_eq!(sample(&server, "pigeon_acks_waiting").await, 0.0);
    server.stop().await;
}
