//! Conversations with unread counts, read receipts, group read counts,
//! recall, multi-device listing and revocation, typing and presence — over
//! real TLS to a real server with a real store.

mod common;

use common::social::*;
use common::{expect_error, TestServer};
use pigeon_protocol::pb::{self, login_request::Credential, KickReason};
use pigeon_protocol::{Body, ErrorCode, Platform};

fn conversations_body() -> Body {
    Body::Conversations(pb::ConversationsRequest { limit: 0 })
}

async fn conversations(client: &mut common::RawClient) -> pb::ConversationsResponse {
    match client.request(conversations_body()).await {
        Body::ConversationsListed(c) => c,
        other => panic!("conversations: {other:?}"),
    }
}

fn read_peer(peer_user_id: u64, seq: u64) -> Body {
    Body::Read(pb::ReadRequest {
        peer_user_id,
        group_id: 0,
        seq,
    })
}

fn send_to(user: u64, id: &str, text: &str) -> Body {
    Body::Send(pb::SendRequest {
        to_user_id: user,
        client_msg_id: id.into(),
        content: text.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

async fn sent(client: &mut common::RawClient, body: Body) -> pb::SendResponse {
    match client.request(body).await {
        Body::Sent(s) => s,
        other => panic!("send: {other:?}"),
    }
}

/// The next push of the wanted kind, skipping queue notifies.
async fn next_push_where<T>(
    client: &mut common::RawClient,
    mut pick: impl FnMut(Body) -> Option<T>,
) -> T {
    loop {
        let body = client.next_push().await.expect("connection stays open");
        if let Body::Notify(_) | Body::GroupNotify(_) = body {
            continue;
        }
        if let Some(found) = pick(body.clone()) {
            return found;
        }
        panic!("unexpected push {body:?}");
    }
}

#[tokio::test]
async fn unread_counts_receipts_and_the_badge() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "c", 4);
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| users[i].clone());
    let mut a = token_login(&server, &alice).await;
    let mut b = token_login(&server, &bob).await;
    let mut c = token_login(&server, &carol).await;
    for n in 1..=3 {
        let s = sent(
            &mut a,
            send_to(bob.id, &format!("a{n}"), &format!("hi {n}")),
        )
        .await;
        assert_eq!(s.conv_seq, n);
    }
    sent(&mut c, send_to(bob.id, "c1", "from carol")).await;
    let g = create_group(&mut a, "book club", &[bob.id, carol.id])
        .await
        .group_id;
    group_send(&mut c, g, "g1", "chapter one").await;

    let list = conversations(&mut b).await;
    let summary: Vec<(u64, u64, u64)> = list
        .conversations
        .iter()
        .map(|c| (c.peer_user_id, c.group_id, c.unread))
        .collect();
    // Most recent first: the group (created, then carol's message), carol, alice.
    assert_eq!(summary, [(0, g, 2), (carol.id, 0, 1), (alice.id, 0, 3)]);
    assert_eq!(list.total_unread, 6);
    let with_alice = &list.conversations[2];
    assert_eq!(with_alice.last_content, b"hi 3".as_slice());
    assert_eq!(with_alice.last_from_user_id, alice.id);

    // Bob reads alice's conversation up to 2: alice (online) gets a receipt.
    match b.request(read_peer(alice.id, 2)).await {
        Body::ReadSet(r) => assert_eq!((r.read_seq, r.unread), (2, 1)),
        other => panic!("read: {other:?}"),
    }
    let receipt = next_push_where(&mut a, |b| match b {
        Body::ReadReceipt(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!((receipt.peer_user_id, receipt.read_seq), (bob.id, 2));
    let alice_view = conversations(&mut a).await;
    let with_bob = alice_view
        .conversations
        .iter()
        .find(|c| c.peer_user_id == bob.id)
        .unwrap();
    assert_eq!((with_bob.peer_read_seq, with_bob.unread), (2, 0));
    // Read positions never move back; reading past the end is refused.
    match b.request(read_peer(alice.id, 1)).await {
        Body::ReadSet(r) => assert_eq!(r.read_seq, 2),
        other => panic!("read back: {other:?}"),
    }
    expect_error(
        &b.request(read_peer(alice.id, 9)).await,
        ErrorCode::AckBeyondMaxSeq,
    );
    // A reply moves bob's own read position: nothing of alice's is unread.
    sent(&mut b, send_to(alice.id, "b1", "reply")).await;
    let list = conversations(&mut b).await;
    assert_eq!(list.total_unread, 3);

    // "Read by 2 of 3": carol sent it (so has read it), bob reads, alice not.
    let read_count = |seq| Body::ReadCount(pb::ReadCountRequest { group_id: g, seq });
    match b.request(read_count(2)).await {
        Body::ReadCounted(r) => assert_eq!((r.read, r.members), (1, 3)),
        other => panic!("read count: {other:?}"),
    }
    let read_group = Body::Read(pb::ReadRequest {
        peer_user_id: 0,
        group_id: g,
        seq: 2,
    });
    match b.request(read_group).await {
        Body::ReadSet(r) => assert_eq!((r.read_seq, r.unread), (2, 0)),
        other => panic!("read group: {other:?}"),
    }
    match a.request(read_count(2)).await {
        Body::ReadCounted(r) => assert_eq!((r.read, r.members), (2, 3)),
        other => panic!("read count: {other:?}"),
    }
    // Outsiders may not ask; a seq past the top is refused.
    let mut d = token_login(&server, &dave).await;
    expect_error(&d.request(read_count(1)).await, ErrorCode::NotAMember);
    expect_error(&a.request(read_count(99)).await, ErrorCode::AckBeyondMaxSeq);
    let both = Body::Read(pb::ReadRequest {
        peer_user_id: bob.id,
        group_id: g,
        seq: 1,
    });
    expect_error(&a.request(both).await, ErrorCode::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn recall_rules_and_events() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "r", 4);
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| users[i].clone());
    let mut a = token_login(&server, &alice).await;
    let mut b = token_login(&server, &bob).await;
    let mut c = token_login(&server, &carol).await;
    let mut d = token_login(&server, &dave).await;
    let recall = |msg_id| Body::Recall(pb::RecallRequest { msg_id });

    let oops = sent(&mut a, send_to(bob.id, "a1", "oops")).await;
    sent(&mut a, send_to(bob.id, "a2", "fine")).await;
    // Only the sender recalls a 1:1 message; strangers do not see it.
    expect_error(
        &b.request(recall(oops.msg_id)).await,
        ErrorCode::PermissionDenied,
    );
    expect_error(
        &d.request(recall(oops.msg_id)).await,
        ErrorCode::UnknownMessage,
    );
    expect_error(&a.request(recall(12345)).await, ErrorCode::UnknownMessage);
    assert!(matches!(
        a.request(recall(oops.msg_id)).await,
        Body::Recalled(_)
    ));
    // Recalling twice answers again without a second event.
    assert!(matches!(
        a.request(recall(oops.msg_id)).await,
        Body::Recalled(_)
    ));
    let bob_sees = pull_all(&mut b, 0).await;
    assert_eq!(bob_sees.len(), 3, "{bob_sees:?}");
    assert!(bob_sees[0].recalled && bob_sees[0].content.is_empty());
    assert!(bob_sees[0].content_type.is_empty());
    assert_eq!(bob_sees[1].content, b"fine".as_slice());
    assert_eq!(bob_sees[2].kind, pb::MessageKind::Recall as i32);
    assert_eq!(bob_sees[2].recalled_msg_id, oops.msg_id);
    // The sender's other devices see the recall too (it is in her queue).
    let alice_sees = pull_all(&mut a, 0).await;
    assert_eq!(alice_sees.last().unwrap().recalled_msg_id, oops.msg_id);

    // Groups: the sender or an admin/owner; not another member.
    let g = create_group(&mut a, "g", &[bob.id, carol.id])
        .await
        .group_id;
    let by_carol = group_send(&mut c, g, "c1", "carol's").await;
    let by_bob = group_send(&mut b, g, "b1", "bob's").await;
    expect_error(
        &b.request(recall(by_carol.msg_id)).await,
        ErrorCode::PermissionDenied,
    );
    expect_error(
        &d.request(recall(by_carol.msg_id)).await,
        ErrorCode::UnknownMessage,
    );
    assert!(matches!(
        a.request(recall(by_carol.msg_id)).await,
        Body::Recalled(_)
    ));
    assert!(matches!(
        b.request(recall(by_bob.msg_id)).await,
        Body::Recalled(_)
    ));
    let carol_sees = pull_all(&mut c, 0).await;
    let recalls: Vec<u64> = carol_sees
        .iter()
        .filter(|m| m.kind == pb::MessageKind::Recall as i32)
        .map(|m| m.recalled_msg_id)
        .collect();
    assert_eq!(recalls, [by_carol.msg_id, by_bob.msg_id], "in order");
    // An event is not a message to recall.
    let created = carol_sees.first().unwrap();
    assert!(created.group_event.is_some());
    expect_error(
        &a.request(recall(created.msg_id)).await,
        ErrorCode::InvalidArgument,
    );
    server.stop().await;

    // Past the window (a window of 0 allows none).
    let server = TestServer::start(|c| c.messaging.recall_window = std::time::Duration::ZERO).await;
    let users = bulk_users(&server, "w", 2);
    let mut a = token_login(&server, &users[0]).await;
    let late = sent(&mut a, send_to(users[1].id, "l1", "too late")).await;
    expect_error(
        &a.request(recall(late.msg_id)).await,
        ErrorCode::RecallWindowPassed,
    );
    let mut b = token_login(&server, &users[1]).await;
    let page = pull_all(&mut b, 0).await;
    assert_eq!(chat_texts(&page), ["too late"], "nothing changed");
    server.stop().await;
}

#[tokio::test]
async fn devices_are_listed_and_one_can_revoke_another() {
    let server = TestServer::start(|_| {}).await;
    let mut laptop = server.raw().await;
    laptop.register("ann").await;
    laptop.login("ann", "laptop", Platform::Desktop).await;
    let mut phone = server.raw().await;
    let phone_login = phone.login("ann", "phone", Platform::Android).await;
    let devices = match laptop.request(Body::Devices(pb::DevicesRequest {})).await {
        Body::DevicesListed(d) => d.devices,
        other => panic!("devices: {other:?}"),
    };
    let summary: Vec<(&str, bool, bool)> = devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.online, d.current))
        .collect();
    assert_eq!(summary, [("laptop", true, true), ("phone", true, false)]);

    let revoke = revoke_body;
    expect_error(
        &laptop.request(revoke("laptop")).await,
        ErrorCode::InvalidArgument,
    );
    expect_error(
        &laptop.request(revoke("toaster")).await,
        ErrorCode::UnknownDevice,
    );
    assert!(matches!(
        laptop.request(revoke("phone")).await,
        Body::DeviceRevoked(_)
    ));
    // The phone is kicked, and its token no longer works.
    let kick = next_push_where(&mut phone, |b| match b {
        Body::Kick(k) => Some(k),
        _ => None,
    })
    .await;
    assert_eq!(kick.reason, KickReason::Revoked as i32);
    let mut again = server.raw().await;
    let token_login = common::login_body(
        "ann",
        "phone",
        Platform::Android,
        Credential::Token(phone_login.token),
    );
    expect_error(&again.request(token_login).await, ErrorCode::AuthFailed);
    let devices = match laptop.request(Body::Devices(pb::DevicesRequest {})).await {
        Body::DevicesListed(d) => d.devices,
        other => panic!("devices: {other:?}"),
    };
    assert_eq!(
        devices.len(),
        1,
        "the revoked device is forgotten: {devices:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn typing_reaches_online_peers_and_is_rate_limited() {
    let server = TestServer::start(|c| {
        c.limits.ephemeral_per_sec = 1;
        c.limits.ephemeral_burst = 2;
    })
    .await;
    let users = bulk_users(&server, "t", 3);
    let mut a = token_login(&server, &users[0]).await;
    let mut b = token_login(&server, &users[1]).await;
    let typing = |to_user_id, group_id| {
        Body::Typing(pb::TypingRequest {
            to_user_id,
            group_id,
            typing: true,
        })
    };
    assert!(matches!(
        a.request(typing(users[1].id, 0)).await,
        Body::TypingSent(_)
    ));
    let event = next_push_where(&mut b, |body| match body {
        Body::TypingEvent(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(
        (event.from_user_id, event.group_id, event.typing),
        (users[0].id, 0, true)
    );
    // In a group only members may, and every other online member hears it.
    let g = create_group(&mut a, "g", &[users[1].id]).await.group_id;
    let mut outsider = token_login(&server, &users[2]).await;
    expect_error(&outsider.request(typing(0, g)).await, ErrorCode::NotAMember);
    assert!(matches!(a.request(typing(0, g)).await, Body::TypingSent(_)));
    let event = next_push_where(&mut b, |body| match body {
        Body::TypingEvent(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(event.group_id, g);
    // The burst is spent: the next is refused with a retry hint.
    let limited = a.request(typing(users[1].id, 0)).await;
    let error = expect_error(&limited, ErrorCode::RateLimited);
    assert!(error.retry_after_ms > 0);
    expect_error(&a.request(typing(0, 0)).await, ErrorCode::RateLimited);
    server.stop().await;
}

#[tokio::test]
async fn presence_is_visible_to_peers_and_members_only() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "p", 4);
    let [alice, bob, carol, stranger] = [0, 1, 2, 3].map(|i| users[i].clone());
    let mut a = token_login(&server, &alice).await;
    let mut b = token_login(&server, &bob).await;
    sent(&mut a, send_to(bob.id, "a1", "hi")).await;
    create_group(&mut a, "g", &[carol.id]).await;
    let ask = Body::Presence(pb::PresenceRequest {
        user_ids: vec![bob.id, carol.id, stranger.id],
    });
    let presences = match a.request(ask).await {
        Body::PresenceListed(p) => p.presences,
        other => panic!("presence: {other:?}"),
    };
    let summary: Vec<(u64, bool, bool)> = presences
        .iter()
        .map(|p| (p.user_id, p.visible, p.online))
        .collect();
    assert_eq!(
        summary,
        [
            (bob.id, true, true),
            (carol.id, true, false),
            (stranger.id, false, false)
        ]
    );
    // Bob goes offline: alice, subscribed, hears it with a last-seen time.
    b.request(Body::Logout(pb::LogoutRequest {})).await;
    assert!(b.closed().await.is_empty());
    let event = next_push_where(&mut a, |body| match body {
        Body::PresenceEvent(p) => p.presence,
        _ => None,
    })
    .await;
    assert_eq!((event.user_id, event.online), (bob.id, false));
    assert!(event.last_seen_ms > 0);
    // Carol comes online: alice hears that too.
    let _c = token_login(&server, &carol).await;
    let event = next_push_where(&mut a, |body| match body {
        Body::PresenceEvent(p) => p.presence,
        _ => None,
    })
    .await;
    assert_eq!((event.user_id, event.online), (carol.id, true));
    // Too many users at once is refused.
    let too_many = Body::Presence(pb::PresenceRequest {
        user_ids: (1..=1001).collect(),
    });
    expect_error(&a.request(too_many).await, ErrorCode::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_device_sees_what_its_user_sent_from_another_device() {
    let server = TestServer::start(|_| {}).await;
    let (mut phone, _) = server.user("mona", "phone").await;
    let (_, peer) = server.user("luis", "web").await;
    let mut laptop = server.raw().await;
    laptop.login("mona", "laptop", Platform::Desktop).await;
    sent(&mut phone, send_to(peer.user_id, "p1", "from my phone")).await;
    let g = create_group(&mut phone, "g", &[peer.user_id])
        .await
        .group_id;
    group_send(&mut phone, g, "p2", "to the group").await;
    let seen = pull_all(&mut laptop, 0).await;
    assert_eq!(chat_texts(&seen), ["from my phone", "to the group"]);
    assert!(seen
        .iter()
        .all(|m| m.from_device_id == "phone" || m.group_event.is_some()));
    server.stop().await;
}

/// A device that never acknowledges holds its user's queue back, until
/// the user revokes it from another device: then the next ack collects.
#[tokio::test]
async fn a_revoked_device_no_longer_holds_back_collection() {
    let server =
        TestServer::start(|c| c.messaging.history_retention = std::time::Duration::ZERO).await;
    let mut laptop = server.raw().await;
    let ann = laptop.register("ann").await;
    laptop.login("ann", "laptop", Platform::Desktop).await;
    let mut phone = server.raw().await;
    phone.login("ann", "phone", Platform::Android).await;
    let (mut bob, _) = server.user("bob", "web").await;
    bob.send_ok("ann", "b1", "one").await;
    bob.send_ok("ann", "b2", "two").await;
    let seen = pull_all(&mut laptop, 0).await;
    assert_eq!(chat_texts(&seen), ["one", "two"]);
    laptop.ack(seen.last().unwrap().seq).await;
    let queued = |server: &TestServer| server.store.pull(ann, 0, 10).unwrap().messages.len();
    assert_eq!(queued(&server), 2, "the phone has not acknowledged them");
    assert!(matches!(
        laptop.request(revoke_body("phone")).await,
        Body::DeviceRevoked(_)
    ));
    laptop.ack(seen.last().unwrap().seq).await;
    assert_eq!(queued(&server), 0, "collected once the phone is gone");
    server.stop().await;
}
