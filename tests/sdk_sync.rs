//! The sdk's syncing client against the real server: multi-device fan-out
//! with client-side dedupe, resuming from a persisted cursor, token reuse,
//! and reconnecting after the server restarts.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use pigeon_protocol::{pb, Platform};
use pigeon_sdk::{tls, Client, ClientConfig, ClientEvent, ConnectOptions, Profile, Recipient};

fn client(
    server_addr: std::net::SocketAddr,
    user: &str,
    platform: Platform,
    profile: &Path,
    password: bool,
) -> Client {
    let tls = tls::client_config_from_ca_file(ca_path()).unwrap();
    let mut connect = ConnectOptions::new(server_addr.to_string(), tls);
    connect.server_name = "localhost".into();
    let mut config = ClientConfig::new(connect, user);
    config.platform = platform;
    config.password = password.then(|| PASSWORD.to_owned());
    config.pull_limit = 7; // several pages per sync
    config.backoff = pigeon_sdk::Backoff::new(
        std::time::Duration::from_millis(20),
        2,
        std::time::Duration::from_millis(500),
    );
    Client::start(config, Profile::open(profile).unwrap())
}

/// Wait for the next message event, skipping status events.
async fn next_message(client: &mut Client) -> pb::Message {
    loop {
        let event = tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("an event in time")
            .expect("the client is running");
        match event {
            ClientEvent::Message(m) => return m,
            ClientEvent::Stopped { error } => panic!("client stopped: {error}"),
            ClientEvent::Kicked { reason, .. } => panic!("client kicked: {reason:?}"),
            _ => {}
        }
    }
}

/// Wait until the client is logged in.
async fn connected(client: &mut Client) {
    loop {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("an event in time")
        {
            Some(ClientEvent::Connected { .. }) => return,
            Some(ClientEvent::Stopped { error }) => panic!("client stopped: {error}"),
            None => panic!("client ended"),
            _ => {}
        }
    }
}

/// Wait until the client reports it acknowledged everything up to `seq`.
async fn caught_up(client: &mut Client, seq: u64) {
    loop {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("an event in time")
        {
            Some(ClientEvent::CaughtUp { cursor }) if cursor >= seq => return,
            Some(ClientEvent::Message(m)) => panic!("unexpected message {m:?}"),
            Some(ClientEvent::Stopped { error }) => panic!("client stopped: {error}"),
            None => panic!("client ended"),
            _ => {}
        }
    }
}

fn text(m: &pb::Message) -> String {
    String::from_utf8_lossy(&m.content).into_owned()
}

#[tokio::test]
async fn every_device_gets_every_message_once_and_in_order() {
    let server = TestServer::start(|_| {}).await;
    let mut setup = server.raw().await;
    setup.register("alice").await;
    setup.register("bob").await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut devices = [
        client(server.addr, "alice", Platform::Ios, dirs[0].path(), true),
        client(
            server.addr,
            "alice",
            Platform::Desktop,
            dirs[1].path(),
            true,
        ),
        client(server.addr, "bob", Platform::Android, dirs[2].path(), true),
        client(server.addr, "bob", Platform::Web, dirs[3].path(), true),
    ];
    for device in devices.iter_mut() {
        connected(device).await;
    }
    for i in 0..20 {
        devices[0]
            .send(
                Recipient::Name("bob".into()),
                format!("a{i}"),
                "text/plain",
                format!("alice {i}").into_bytes(),
            )
            .await
            .unwrap();
        devices[3]
            .send(
                Recipient::Name("alice".into()),
                format!("b{i}"),
                "text/plain",
                format!("bob {i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    for (n, device) in devices.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 40 {
            got.push(next_message(device).await);
        }
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=40).collect::<Vec<_>>(),
            "device {n}: in order, no gaps"
        );
        let ids: HashSet<u64> = got.iter().map(|m| m.msg_id).collect();
        assert_eq!(ids.len(), 40, "device {n}: each message exactly once");
        let alice: Vec<String> = got
            .iter()
            .filter(|m| m.from_username == "alice")
            .map(text)
            .collect();
        assert_eq!(
            alice,
            (0..20).map(|i| format!("alice {i}")).collect::<Vec<_>>(),
            "device {n}"
        );
        let bob: Vec<String> = got
            .iter()
            .filter(|m| m.from_username == "bob")
            .map(text)
            .collect();
        assert_eq!(
            bob,
            (0..20).map(|i| format!("bob {i}")).collect::<Vec<_>>(),
            "device {n}"
        );
        caught_up(device, 40).await;
    }
    // Each device's acknowledged cursor reached the top on the server.
    for user in [1, 2] {
        for d in server.store.devices(user).unwrap() {
            assert_eq!(d.acked_seq, 40, "user {user} device {}", d.device_id);
        }
    }
}

#[tokio::test]
async fn a_restarted_client_resumes_from_its_cursor_with_its_token() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let mut setup = server.raw().await;
    setup.register("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = client(server.addr, "bob", Platform::Ios, dir.path(), true);
    for i in 1..=5 {
        alice
            .send_ok("bob", &format!("{i}"), &format!("m{i}"))
            .await;
    }
    for i in 1..=5 {
        assert_eq!(text(&next_message(&mut bob).await), format!("m{i}"));
    }
    bob.shutdown().await;
    for i in 6..=10 {
        alice
            .send_ok("bob", &format!("{i}"), &format!("m{i}"))
            .await;
    }
    // No password this time: the stored token logs the device in, and the
    // stored cursor means nothing already delivered comes again.
    let mut bob = client(server.addr, "bob", Platform::Ios, dir.path(), false);
    for i in 6..=10 {
        let m = next_message(&mut bob).await;
        assert_eq!((m.seq, text(&m)), (i, format!("m{i}")));
    }
    caught_up(&mut bob, 10).await;
    assert_eq!(Profile::open(dir.path()).unwrap().cursor, 10);
}

#[tokio::test]
async fn the_client_reconnects_after_a_server_restart() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let mut setup = server.raw().await;
    setup.register("bob").await;
    drop(setup);
    let dir = tempfile::tempdir().unwrap();
    let mut bob = client(server.addr, "bob", Platform::Ios, dir.path(), true);
    alice.send_ok("bob", "1", "before").await;
    assert_eq!(text(&next_message(&mut bob).await), "before");
    drop(alice);
    // Same address, same data: the client backs off and comes back.
    let server = server.restart_in_place().await;
    let mut alice = server.raw().await;
    alice.login("alice", "a1", Platform::Ios).await;
    alice.send_ok("bob", "2", "after").await;
    let m = next_message(&mut bob).await;
    assert_eq!((m.seq, text(&m)), (2, "after".to_owned()));
}

/// One sample of the server's metrics, by its full series name.
async fn metric(server: &TestServer, series: &str) -> f64 {
    let answer = server
        .admin_client()
        .call("GET", "/metrics", None)
        .await
        .expect("the admin endpoint answers");
    let text = answer.text();
    let line = text
        .lines()
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in the metrics"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn a_caught_up_client_takes_new_messages_from_notifies_without_pulling() {
    let server = TestServer::start(|c| c.admin.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut setup = server.raw().await;
    let alice_id = setup.register("alice").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = client(server.addr, "alice", Platform::Ios, dir.path(), true);
    caught_up(&mut alice, 0).await;
    let pulls = r#"pigeon_requests_total{kind="pull"}"#;
    let pulls_before = metric(&server, pulls).await;
    for i in 0..5 {
        bob.send_ok("alice", &format!("m{i}"), &format!("hi {i}"))
            .await;
        // One at a time: each arrives while alice is caught up.
        assert_eq!(text(&next_message(&mut alice).await), format!("hi {i}"));
    }
    // Delivered inline, acknowledged about a second later in one ack.
    caught_up(&mut alice, 5).await;
    assert_eq!(metric(&server, pulls).await, pulls_before, "no pulls");
    assert_eq!(
        metric(&server, "pigeon_notify_inline_messages_total").await,
        5.0
    );
    let devices = server.store.devices(alice_id).unwrap();
    assert_eq!(devices[0].acked_seq, 5);
    // A restart of the client resumes from the committed cursor: nothing
    // is delivered again.
    alice.shutdown().await;
    let mut again = client(server.addr, "alice", Platform::Ios, dir.path(), false);
    caught_up(&mut again, 5).await;
}

/// Wait for the next CaughtUp, whatever comes before it.
async fn next_caught_up(client: &mut Client) -> u64 {
    loop {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("an event in time")
        {
            Some(ClientEvent::CaughtUp { cursor }) => return cursor,
            Some(ClientEvent::Stopped { error }) => panic!("client stopped: {error}"),
            None => panic!("client ended"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_large_groups_new_messages_arrive_inline_and_one_pull_acknowledges_them() {
    let server = TestServer::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        c.messaging.large_group_threshold = 2;
    })
    .await;
    let mut setup = server.raw().await;
    let alice_id = setup.register("alice").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    let (_carol, carol) = server.user("carol", "c1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = client(server.addr, "alice", Platform::Ios, dir.path(), true);
    caught_up(&mut alice, 0).await;
    let group = common::social::create_group(&mut bob, "team", &[alice_id, carol.user_id]).await;
    assert!(group.large);
    // The first GroupNotify has no cursor to continue: the group list and
    // a pull start following the timeline.
    next_caught_up(&mut alice).await;
    let pulls = r#"pigeon_requests_total{kind="group_pull"}"#;
    let inline = "pigeon_notify_inline_messages_total";
    let (pulls_before, inline_before) =
        (metric(&server, pulls).await, metric(&server, inline).await);

    let mut last = 0;
    for i in 0..3 {
        let text_i = format!("team {i}");
        last = common::social::group_send(&mut bob, group.group_id, &format!("g{i}"), &text_i)
            .await
            .conv_seq;
        loop {
            match tokio::time::timeout(WAIT, alice.next_event())
                .await
                .unwrap()
            {
                Some(ClientEvent::GroupMessage(m)) => {
                    assert_eq!((m.seq, text(&m)), (last, text_i));
                    break;
                }
                Some(ClientEvent::Stopped { error }) => panic!("client stopped: {error}"),
                None => panic!("client ended"),
                _ => {}
            }
        }
    }
    // About a second later one GroupPull records how far alice read.
    next_caught_up(&mut alice).await;
    assert_eq!(metric(&server, inline).await - inline_before, 3.0);
    let group_pulls = metric(&server, pulls).await - pulls_before;
    assert!(
        (1.0..3.0).contains(&group_pulls),
        "{group_pulls} pulls for 3 messages"
    );
    let member = server
        .store
        .member(group.group_id, alice_id)
        .unwrap()
        .unwrap();
    assert_eq!(member.acked_seq, last);
}
