//! Inline entries in Notify (`LoginRequest.inline_messages`): a device that
//! asked gets new chat messages inside its Notify, exactly as a pull would
//! return them; entries the server does not hold (group events, big
//! contents) are only announced; nothing inline is acknowledged until the
//! device says so. Real TLS, real server, real sled store.

mod common;

use common::social::{add_body, create_group, group_of, group_pull_all, group_send};
use common::*;
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, ErrorCode, Platform};
use prost::Message as _;

/// Register `name` and log one device in, asking for inline entries.
async fn inline_user(server: &TestServer, name: &str, device: &str) -> (RawClient, u64) {
    let mut client = server.raw().await;
    let id = client.register(name).await;
    client.login_inline(name, device, Platform::Ios).await;
    (client, id)
}

async fn next_notify(client: &mut RawClient) -> pb::Notify {
    match client.next_push().await {
        Some(Body::Notify(n)) => n,
        other => panic!("expected a notify, got {other:?}"),
    }
}

#[tokio::test]
async fn an_inline_notify_carries_the_message_exactly_as_a_pull_returns_it() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = inline_user(&server, "alice", "phone").await;
    // A second device of alice that did not ask: announced only.
    let mut laptop = server.raw().await;
    laptop.login("alice", "laptop", Platform::Desktop).await;
    let (mut bob, _) = server.user("bob", "b1").await;

    let sent = bob.send_ok("alice", "m1", "hello alice").await;
    let notify = next_notify(&mut alice).await;
    assert_eq!(notify.max_seq, 1);
    assert_eq!(notify.messages.len(), 1, "{notify:?}");
    let plain = next_notify(&mut laptop).await;
    assert_eq!((plain.max_seq, plain.messages.len()), (1, 0));
    // The sender did not ask either: its own queue's notify is bare.
    let own = next_notify(&mut bob).await;
    assert_eq!((own.max_seq, own.messages.len()), (sent.seq, 0));

    let pulled = alice.pull(0, 10).await;
    assert_eq!(
        pulled.messages, notify.messages,
        "inline = pulled, field by field"
    );
    let m = &notify.messages[0];
    assert_eq!(
        (m.seq, m.msg_id, m.content.as_ref()),
        (1, sent.msg_id, &b"hello alice"[..])
    );
    assert_eq!(
        (m.from_username.as_str(), m.to_username.as_str()),
        ("bob", "alice")
    );
    assert_eq!(m.from_device_id, "b1");
    assert_eq!(m.sent_at_ms, sent.sent_at_ms);
    assert_eq!(m.conv_seq, 1);
}

#[tokio::test]
async fn consecutive_sends_arrive_inline_in_order_without_a_gap() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = inline_user(&server, "alice", "phone").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    for i in 0..20 {
        bob.send_ok("alice", &format!("m{i}"), &format!("text {i}"))
            .await;
    }
    // Notifies may coalesce; every one that carries entries carries a run
    // that ends at its max_seq, and together they continue each other.
    let mut cursor = 0;
    let mut texts = Vec::new();
    while cursor < 20 {
        let notify = next_notify(&mut alice).await;
        let Some(first) = notify.messages.first() else {
            panic!("nothing held back on a fast reader: {notify:?}");
        };
        assert_eq!(first.seq, cursor + 1, "continues the cursor");
        let seqs: Vec<u64> = notify.messages.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (first.seq..=notify.max_seq).collect();
        assert_eq!(seqs, expected, "a run without gaps up to max_seq");
        for m in &notify.messages {
            texts.push(String::from_utf8(m.content.to_vec()).unwrap());
        }
        cursor = notify.max_seq;
    }
    let expected: Vec<String> = (0..20).map(|i| format!("text {i}")).collect();
    assert_eq!(texts, expected);
}

#[tokio::test]
async fn group_events_and_big_contents_are_announced_and_pulled() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, alice_id) = inline_user(&server, "alice", "phone").await;
    let (mut bob, _) = server.user("bob", "b1").await;

    // Being added to a group queues an event: announced, not inline.
    let group = create_group(&mut bob, "team", &[alice_id]).await;
    let event = next_notify(&mut alice).await;
    assert_eq!((event.max_seq, event.messages.len()), (1, 0));
    // A group chat message is inline, and is what a pull returns.
    group_send(&mut bob, group.group_id, "g1", "to the team").await;
    let chat = next_notify(&mut alice).await;
    assert_eq!(chat.max_seq, 2);
    let pulled = alice.pull(0, 10).await;
    assert_eq!(pulled.messages.len(), 2);
    assert_eq!(chat.messages, pulled.messages[1..], "{chat:?}");
    assert_eq!(chat.messages[0].group_id, group.group_id);

    // Above the inline size: announced only, and the pull has it whole.
    let big = vec![b'x'; pigeon_server::session::INLINE_MAX_CONTENT + 1];
    match bob.request(send_body("alice", "big", big.clone())).await {
        Body::Sent(_) => {}
        other => panic!("big send: {other:?}"),
    }
    let announced = next_notify(&mut alice).await;
    assert_eq!((announced.max_seq, announced.messages.len()), (3, 0));
    let page = alice.pull(2, 10).await;
    assert_eq!(page.messages[0].content.as_ref(), &big[..]);
}

/// The next GroupNotify of `group` that reaches `top` (earlier ones, and
/// other pushes, are skipped).
async fn group_notify_at(client: &mut RawClient, group: u64, top: u64) -> pb::GroupNotify {
    loop {
        match client.next_push().await {
            Some(Body::GroupNotify(n)) if n.group_id == group && n.max_seq >= top => return n,
            Some(_) => {}
            None => panic!("closed before a group notify at {top}"),
        }
    }
}

#[tokio::test]
async fn a_large_groups_notify_carries_its_timeline_entry_as_a_group_pull_returns_it() {
    let server = TestServer::start(|c| c.messaging.large_group_threshold = 2).await;
    let (mut alice, alice_id) = inline_user(&server, "alice", "phone").await;
    let (mut carol, carol_login) = server.user("carol", "c1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    let group = create_group(&mut bob, "team", &[alice_id, carol_login.user_id]).await;
    assert!(group.large);
    let g = group.group_id;

    let sent = group_send(&mut bob, g, "g1", "to the whole team").await;
    let inline = group_notify_at(&mut alice, g, sent.conv_seq).await;
    assert_eq!(inline.max_seq, sent.conv_seq);
    assert_eq!(inline.messages.len(), 1, "{inline:?}");
    let pulled = group_pull_all(&mut alice, g, sent.conv_seq - 1).await;
    assert_eq!(
        inline.messages, pulled,
        "inline = group-pulled, field by field"
    );
    assert_eq!(inline.messages[0].content.as_ref(), b"to the whole team");
    // A member that did not ask is only told the top.
    let plain = group_notify_at(&mut carol, g, sent.conv_seq).await;
    assert!(plain.messages.is_empty(), "{plain:?}");

    // A membership event in the timeline is announced only.
    let dave = server.user("dave", "d1").await.1.user_id;
    group_of(bob.request(add_body(g, &[dave])).await, "add");
    let event = group_notify_at(&mut alice, g, sent.conv_seq + 1).await;
    assert!(event.messages.is_empty(), "{event:?}");
}

#[tokio::test]
async fn inline_entries_reach_only_their_user_and_stay_until_acked() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = inline_user(&server, "alice", "phone").await;
    let (mut carol, _) = inline_user(&server, "carol", "phone").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    bob.send_ok("alice", "a", "for alice only").await;
    bob.send_ok("carol", "c", "for carol").await;
    // Carol's first notify is her own message: alice's never reached her.
    let to_carol = next_notify(&mut carol).await;
    let texts: Vec<&[u8]> = to_carol
        .messages
        .iter()
        .map(|m| m.content.as_ref())
        .collect();
    assert_eq!((to_carol.max_seq, texts), (1, vec![&b"for carol"[..]]));
    let to_alice = next_notify(&mut alice).await;
    assert_eq!(to_alice.messages[0].content.as_ref(), b"for alice only");

    // Taking an entry from a notify acknowledges nothing: the same device
    // logging in again is told its cursor is still 0 and can pull it.
    drop(alice);
    let mut again = server.raw().await;
    let body = login_body(
        "alice",
        "phone",
        Platform::Ios,
        Credential::Password(PASSWORD.into()),
    );
    let login = match again.request(body).await {
        Body::LoggedIn(l) => l,
        other => panic!("login: {other:?}"),
    };
    assert_eq!((login.max_seq, login.acked_seq), (1, 0));
    assert_eq!(again.pull(0, 10).await.messages.len(), 1);
    // Acknowledging out of order (above the queue) is refused; at the top
    // it moves the cursor.
    expect_error(&again.ack(2).await, ErrorCode::AckBeyondMaxSeq);
    match again.ack(1).await {
        Body::Acked(a) => assert_eq!(a.acked_seq, 1),
        other => panic!("ack: {other:?}"),
    }
}

#[tokio::test]
async fn a_login_whose_inline_flag_is_malformed_is_refused_and_closed() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.raw().await;
    client.register("alice").await;
    let login = pb::LoginRequest {
        protocol_version: pigeon_protocol::PROTOCOL_VERSION as i32,
        username: "alice".into(),
        device_id: "phone".into(),
        platform: Platform::Ios as i32,
        credential: Some(Credential::Password(PASSWORD.into())),
        inline_messages: false,
    };
    let mut login = login.encode_to_vec();
    // Field 7 (inline_messages) as a length-delimited field, not a varint.
    login.extend_from_slice(&[(7 << 3) | 2, 1, 1]);
    assert!(login.len() < 128);
    // Envelope: request_id = 7 (field 1), login (field 11).
    let mut envelope = vec![1 << 3, 7, (11 << 3) | 2, login.len() as u8];
    envelope.extend_from_slice(&login);
    let mut frame = (envelope.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&envelope);
    client.write_raw(&frame).await;
    let seen = client.closed().await;
    let error = match seen.last().and_then(|e| e.body.clone()) {
        Some(Body::Error(e)) => e,
        other => panic!("expected a fatal error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::InvalidArgument as i32);
    assert!(error.fatal);
}
