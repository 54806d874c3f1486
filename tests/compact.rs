//! Giving disk space back, over the wire: messages queued, pulled and
//! acked by real TLS clients, then the store compacted (on demand through
//! the admin API, or by the collector on its own), with sends in flight,
//! across a restart, and nothing lost or reordered.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use pigeon_protocol::{pb, Body};
use pigeon_server::config::Config;
use serde_json::Value;

/// A text of about 2 KiB, numbered.
fn text(i: usize) -> String {
    format!("{i:05} {}", "x".repeat(2048))
}

fn settings(config: &mut Config) {
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.messaging.history_retention = Duration::ZERO;
    config.store.auto_compact = false;
    config.limits.sends_per_sec = 100_000;
    config.limits.send_burst = 100_000;
    config.limits.requests_per_sec = 100_000;
    config.limits.request_burst = 100_000;
}

async fn compact(server: &TestServer) -> Value {
    let answer = server
        .admin_client()
        .call("POST", "/v1/compact", None)
        .await
        .expect("the admin endpoint answers");
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json().unwrap()
}

/// Everything in `user`'s queue through a fresh device login.
async fn queue(server: &TestServer, user: &str, device: &str) -> Vec<pb::Message> {
    let mut client = server.raw().await;
    client
        .login(user, device, pigeon_protocol::Platform::Ios)
        .await;
    pull_all(&mut client, 0).await
}

/// Every message above `after`, page by page (a page stops at the frame
/// size, so 2 KiB messages take several).
async fn pull_all(client: &mut RawClient, after: u64) -> Vec<pb::Message> {
    let mut messages = Vec::new();
    loop {
        let after = messages.last().map_or(after, |m: &pb::Message| m.seq);
        let page = client.pull(after, 1000).await;
        messages.extend(page.messages);
        if !page.has_more {
            return messages;
        }
    }
}

/// Waits for the Notify that announces `max_seq` (earlier ones may be
/// buffered from before).
async fn notified(client: &mut RawClient, max_seq: u64) {
    loop {
        match client.next_push().await {
            Some(Body::Notify(n)) if n.max_seq == max_seq => return,
            Some(Body::Notify(n)) => assert!(n.max_seq < max_seq, "{n:?}"),
            other => panic!("expected a Notify, got {other:?}"),
        }
    }
}

/// Sends `n` messages from `from` to `to`, numbered from `first`.
async fn send_many(from: &mut RawClient, to: &str, first: usize, n: usize) {
    for i in first..first + n {
        from.send_ok(to, &format!("c{i}"), &text(i)).await;
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn acked_messages_give_their_space_back_and_the_store_serves_on() {
    let server = TestServer::start(settings).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    send_many(&mut alice, "bob", 0, 400).await;
    assert_eq!(pull_all(&mut bob, 0).await.len(), 400);
    assert!(matches!(bob.ack(400).await, Body::Acked(_)));
    // alice's own copies (her sent-queue) are collected by her ack.
    assert!(matches!(alice.ack(400).await, Body::Acked(_)));

    let report = compact(&server).await;
    let before = report["disk_before"].as_u64().unwrap();
    let after = report["disk_after"].as_u64().unwrap();
    assert!(after * 2 < before, "too little space back: {report}");
    assert!(report["records"].as_u64().unwrap() > 0, "{report}");
    let listing = names(&server.config.data_dir);
    assert!(listing.contains(&"sled.current".to_owned()), "{listing:?}");
    let scrape = server
        .admin_client()
        .call("GET", "/metrics", None)
        .await
        .unwrap()
        .text();
    assert!(
        scrape.contains("\npigeon_store_compactions_total 1\n"),
        "{scrape}"
    );
    assert!(scrape.contains("\npigeon_store_compaction_pause_seconds_total "));
    assert!(
        !listing.contains(&"db".to_owned()),
        "old files left: {listing:?}"
    );

    // The compacted store serves: the next message gets the next seq and
    // reaches bob's live session.
    alice.send_ok("bob", "after", "after the compaction").await;
    notified(&mut bob, 401).await;
    let page = bob.pull(400, 10).await;
    assert_eq!(texts(&page), ["after the compaction"]);
    assert_eq!(page.messages[0].seq, 401);
    drop((alice, bob));

    let server = server.restart().await;
    let left = queue(&server, "bob", "b1").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 401);
    server.stop().await;
}

#[tokio::test]
async fn sends_in_flight_during_compactions_are_all_kept_in_order() {
    let server = TestServer::start(settings).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let mut bob = server.raw().await;
    bob.register("bob").await;
    let sender = tokio::spawn(async move {
        send_many(&mut alice, "bob", 0, 200).await;
        alice
    });
    let mut compactions = 0;
    while !sender.is_finished() || compactions < 2 {
        compact(&server).await;
        compactions += 1;
    }
    let alice = sender.await.unwrap();
    let expected: Vec<String> = (0..200).map(text).collect();
    let got = queue(&server, "bob", "b1").await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let got_texts: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.content.to_vec()).unwrap())
        .collect();
    assert_eq!(got_texts, expected);
    drop(alice);

    let server = server.restart().await;
    let again = queue(&server, "bob", "b2").await;
    assert_eq!(again, got);
    server.stop().await;
}

#[tokio::test]
async fn the_collector_compacts_by_itself_once_the_files_outgrow_the_live_data() {
    let server = TestServer::start(|config| {
        settings(config);
        config.store.auto_compact = true;
        config.store.compact_min_disk_bytes = 4 * 1024 * 1024;
        config.store.compact_ratio = 4;
        config.messaging.gc_interval = Duration::from_millis(100);
    })
    .await;
    let data = server.config.data_dir.clone();
    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    send_many(&mut alice, "bob", 0, 20).await;
    for round in 0..4 {
        send_many(&mut alice, "bob", round * 200 + 20, 200).await;
    }
    assert_eq!(pull_all(&mut bob, 0).await.len(), 820);
    assert!(matches!(bob.ack(820).await, Body::Acked(_)));
    assert!(matches!(alice.ack(820).await, Body::Acked(_)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !data.join("sled.current").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compaction within 30 s: {:?}",
            names(&data)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.send_ok("bob", "late", "after").await;
    let page = bob.pull(820, 10).await;
    assert_eq!(texts(&page), ["after"]);
    server.stop().await;
}

#[tokio::test]
async fn a_compaction_above_the_live_limit_needs_force_and_bad_input_is_refused() {
    let server = TestServer::start(|config| {
        settings(config);
        config.store.compact_max_live_bytes = 1;
    })
    .await;
    let (mut alice, _) = server.user("alice", "a1").await;
    alice.send_ok("alice", "c1", "note to self").await;
    let admin = server.admin_client();
    let data = server.config.data_dir.clone();
    let refused = admin.call("POST", "/v1/compact", None).await.unwrap();
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("force"), "{}", refused.text());
    let bad = admin
        .call("POST", "/v1/compact?force=maybe", None)
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        !data.join("sled.current").exists(),
        "refusals changed nothing"
    );
    let forced = admin
        .call("POST", "/v1/compact?force=true", None)
        .await
        .unwrap();
    assert_eq!(forced.status, 200, "{}", forced.text());
    assert!(data.join("sled.current").exists());
    let page = alice.pull(0, 10).await;
    assert_eq!(texts(&page), ["note to self"]);
    server.stop().await;
}
