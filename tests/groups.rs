//! Groups over the wire: roles and their rules, membership events, small
//! group fan-out (one body, one entry per member), large groups (one
//! timeline entry per send whatever the size; joins and leaves mid-stream),
//! and the authorization matrix. Real TLS, real server, real sled store.

mod common;

use std::collections::BTreeMap;

use common::social::*;
use common::{expect_error, TestServer};
use pigeon_protocol::pb::{self, GroupEventType, GroupRole};
use pigeon_protocol::{Body, ErrorCode};

#[tokio::test]
async fn roles_events_and_the_authorization_matrix() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "u", 5);
    let [alice, bob, carol, dave, eve] = [0, 1, 2, 3, 4].map(|i| users[i].clone());
    let mut a = token_login(&server, &alice).await;
    let mut b = token_login(&server, &bob).await;
    let mut c = token_login(&server, &carol).await;
    let mut d = token_login(&server, &dave).await;
    let mut e = token_login(&server, &eve).await;

    let group = create_group(&mut a, "team", &[bob.id, carol.id]).await;
    assert_eq!(
        (group.member_count, group.my_role, group.owner_user_id),
        (3, GroupRole::Owner as i32, alice.id)
    );
    let g = group.group_id;
    group_send(&mut a, g, "a1", "before dave").await;

    // Non-members can neither send, list members nor read.
    let refused = d.request(group_send_body(g, "d1", "let me in")).await;
    expect_error(&refused, ErrorCode::NotAMember);
    let members = Body::GroupMembers(pb::GroupMembersRequest {
        group_id: g,
        ..Default::default()
    });
    expect_error(&d.request(members.clone()).await, ErrorCode::NotAMember);
    // A plain member may not add, remove or set roles.
    expect_error(
        &b.request(add_body(g, &[dave.id])).await,
        ErrorCode::PermissionDenied,
    );
    expect_error(
        &b.request(remove_body(g, carol.id)).await,
        ErrorCode::PermissionDenied,
    );
    let promote = role_body(g, carol.id, GroupRole::Admin);
    expect_error(&b.request(promote).await, ErrorCode::PermissionDenied);
    // Unknown groups and users are typed errors.
    expect_error(
        &a.request(group_send_body(9_999, "x", "?")).await,
        ErrorCode::UnknownGroup,
    );
    expect_error(
        &a.request(add_body(g, &[77_777])).await,
        ErrorCode::UnknownUser,
    );

    // The owner makes bob an admin; bob adds dave; dave sees nothing from
    // before he joined.
    group_of(
        a.request(role_body(g, bob.id, GroupRole::Admin)).await,
        "promote bob",
    );
    let added = group_of(b.request(add_body(g, &[dave.id])).await, "bob adds dave");
    assert!(added.event_seq > 0);
    let dave_sees = pull_all(&mut d, 0).await;
    assert_eq!(chat_texts(&dave_sees), Vec::<String>::new());
    assert_eq!(event_types(&dave_sees), vec![GroupEventType::Added]);
    group_send(&mut d, g, "d2", "hello all").await;

    // An admin removes plain members only; the owner anyone.
    expect_error(
        &b.request(remove_body(g, alice.id)).await,
        ErrorCode::PermissionDenied,
    );
    group_of(
        b.request(remove_body(g, carol.id)).await,
        "bob removes carol",
    );
    expect_error(
        &b.request(remove_body(g, carol.id)).await,
        ErrorCode::NotAMember,
    );
    group_send(&mut a, g, "a2", "after carol").await;
    let carol_sees = pull_all(&mut c, 0).await;
    assert_eq!(chat_texts(&carol_sees), ["before dave", "hello all"]);
    assert_eq!(
        event_types(&carol_sees),
        [
            GroupEventType::Created,
            GroupEventType::RoleChanged,
            GroupEventType::Added,
            GroupEventType::Removed
        ]
    );
    let removed = carol_sees.last().unwrap().group_event.clone().unwrap();
    assert_eq!(
        (removed.actor_user_id, removed.target_user_ids),
        (bob.id, vec![carol.id])
    );
    // A removed member is cut off: no sends, no member list.
    expect_error(
        &c.request(group_send_body(g, "c9", "still here?")).await,
        ErrorCode::NotAMember,
    );
    expect_error(&c.request(members.clone()).await, ErrorCode::NotAMember);

    // The owner cannot leave without handing ownership over.
    let leave = Body::GroupLeave(pb::GroupLeaveRequest { group_id: g });
    expect_error(&a.request(leave.clone()).await, ErrorCode::PermissionDenied);
    group_of(
        a.request(role_body(g, dave.id, GroupRole::Owner)).await,
        "hand over",
    );
    let after_leave = group_of(a.request(leave).await, "alice leaves")
        .group
        .unwrap();
    assert_eq!(after_leave.my_role, GroupRole::Unspecified as i32);
    // Only the (new) owner dissolves.
    let dissolve = Body::GroupDissolve(pb::GroupDissolveRequest { group_id: g });
    expect_error(
        &b.request(dissolve.clone()).await,
        ErrorCode::PermissionDenied,
    );
    let listed = match b.request(Body::GroupList(pb::GroupListRequest {})).await {
        Body::GroupListed(l) => l.groups,
        other => panic!("group list: {other:?}"),
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].owner_user_id, listed[0].member_count),
        (dave.id, 2)
    );
    let gone = group_of(d.request(dissolve).await, "dave dissolves")
        .group
        .unwrap();
    assert!(gone.dissolved);
    expect_error(
        &b.request(group_send_body(g, "b1", "anyone?")).await,
        ErrorCode::UnknownGroup,
    );
    match b.request(Body::GroupList(pb::GroupListRequest {})).await {
        Body::GroupListed(l) => assert!(l.groups.is_empty(), "{l:?}"),
        other => panic!("group list: {other:?}"),
    }
    let bob_sees = pull_all(&mut b, 0).await;
    assert_eq!(
        chat_texts(&bob_sees),
        ["before dave", "hello all", "after carol"]
    );
    assert_eq!(
        event_types(&bob_sees).last(),
        Some(&GroupEventType::Dissolved)
    );
    // Eve was never involved: nothing in her queue.
    assert!(pull_all(&mut e, 0).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_small_group_send_stores_one_body_and_one_entry_per_member() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "m", 6);
    let mut owner = token_login(&server, &users[0]).await;
    let ids: Vec<u64> = users[1..].iter().map(|u| u.id).collect();
    let g = create_group(&mut owner, "six", &ids).await.group_id;
    let before = server.store.stats().unwrap();
    let sent = group_send(&mut owner, g, "once", "one body").await;
    let after = server.store.stats().unwrap();
    assert_eq!(after.bodies - before.bodies, 1);
    assert_eq!(
        after.entries - before.entries,
        6,
        "one entry per member, sender included"
    );
    // The sender's own queue has it (their other devices see it) and the
    // answer carries both positions.
    assert!(sent.seq > 0 && sent.conv_seq == 2, "{sent:?}");
    // A resend is answered again and stores nothing.
    let again = group_send(&mut owner, g, "once", "one body").await;
    assert!(again.duplicate && again.msg_id == sent.msg_id);
    assert_eq!(server.store.stats().unwrap().entries, after.entries);
    server.stop().await;
}

/// 1,000 members, four senders interleaving: every member gets every
/// message exactly once, in each sender's order, with gapless seqs.
#[tokio::test]
async fn a_thousand_member_group_delivers_exactly_once_in_order() {
    const MEMBERS: usize = 1000;
    const PER_SENDER: usize = 10;
    let server = TestServer::start(|c| {
        c.limits.sends_per_sec = 1000;
        c.limits.send_burst = 1000;
        // Small at 1,000 members (the default threshold is 500).
        c.messaging.large_group_threshold = MEMBERS as u32;
    })
    .await;
    let users = bulk_users(&server, "f", MEMBERS);
    let mut owner = token_login(&server, &users[0]).await;
    let ids: Vec<u64> = users[1..].iter().map(|u| u.id).collect();
    let group = create_group(&mut owner, "big-small", &ids).await;
    assert!(!group.large && group.member_count as usize == MEMBERS);
    let g = group.group_id;
    let mut senders = Vec::new();
    for account in &users[1..5] {
        senders.push(token_login(&server, account).await);
    }
    // Interleave the senders' sends; each sender's own order must hold.
    let sends = senders
        .iter_mut()
        .enumerate()
        .map(|(s, client)| async move {
            for n in 0..PER_SENDER {
                group_send(client, g, &format!("s{s}-{n}"), &format!("{s}:{n}")).await;
            }
        });
    futures_util::future::join_all(sends).await;

    let checks = users.chunks(100).map(|chunk| {
        let server = &server;
        async move {
            for account in chunk {
                let mut client = token_login(server, account).await;
                let all = pull_all(&mut client, 0).await;
                check_exactly_once(&account.name, &all, 4, PER_SENDER);
            }
        }
    });
    futures_util::future::join_all(checks).await;
    server.stop().await;
}

/// Each sender's messages appear once, in order; queue seqs have no gaps.
fn check_exactly_once(who: &str, all: &[pb::Message], senders: usize, per_sender: usize) {
    for pair in all.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "{who}: seq gap");
    }
    let mut by_sender: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for text in chat_texts(all) {
        let (sender, n) = text.split_once(':').expect("sender:n");
        by_sender
            .entry(sender.to_owned())
            .or_default()
            .push(n.parse().expect("a number"));
    }
    assert_eq!(by_sender.len(), senders, "{who}: {by_sender:?}");
    for (sender, ns) in by_sender {
        assert_eq!(
            ns,
            (0..per_sender).collect::<Vec<_>>(),
            "{who} from {sender}"
        );
    }
}

/// A large group (10,000 members): a send writes one timeline entry and
/// no queue entries; a member added mid-stream reads from their join on, a
/// member removed mid-stream reads up to their removal; personal events
/// reach the inbox; online members get GroupNotify.
#[tokio::test]
async fn a_large_group_send_costs_the_same_whatever_the_size() {
    const MEMBERS: usize = 10_000;
    let server = TestServer::start(|c| {
        c.limits.sends_per_sec = 1000;
        c.limits.send_burst = 1000;
    })
    .await;
    let users = bulk_users(&server, "l", MEMBERS + 1);
    let (late, members) = users.split_last().unwrap();
    let mut owner = token_login(&server, &members[0]).await;
    let ids: Vec<u64> = members[1..].iter().map(|u| u.id).collect();
    let group = create_group(&mut owner, "everyone", &ids).await;
    assert!(group.large && group.timeline_from_seq == 1, "{group:?}");
    let g = group.group_id;
    let mut watcher = token_login(&server, &members[7]).await;

    let before = server.store.stats().unwrap();
    let first = group_send(&mut owner, g, "m0", "0").await;
    let after = server.store.stats().unwrap();
    assert_eq!(after.entries, before.entries, "no queue entry per member");
    assert_eq!(after.bodies, before.bodies + 1);
    assert_eq!((first.seq, first.conv_seq), (0, 2));
    // An online member is told the timeline grew.
    loop {
        match watcher.next_push().await.expect("a push") {
            Body::GroupNotify(n) if n.max_seq >= 2 => {
                assert_eq!(n.group_id, g);
                break;
            }
            Body::GroupNotify(_) | Body::Notify(_) => {}
            other => panic!("unexpected push {other:?}"),
        }
    }

    let leaver = &members[3];
    for n in 1..30 {
        if n == 10 {
            group_of(owner.request(add_body(g, &[late.id])).await, "add late");
        }
        if n == 20 {
            group_of(
                owner.request(remove_body(g, leaver.id)).await,
                "remove leaver",
            );
        }
        group_send(&mut owner, g, &format!("m{n}"), &n.to_string()).await;
    }

    let texts = |from: u32, to: u32| (from..to).map(|n| n.to_string()).collect::<Vec<_>>();
    let mut late_client = token_login(&server, late).await;
    let inbox = pull_all(&mut late_client, 0).await;
    assert_eq!(
        event_types(&inbox),
        [GroupEventType::Added],
        "personal event in the inbox"
    );
    let timeline = group_pull_all(&mut late_client, g, 0).await;
    assert_eq!(chat_texts(&timeline), texts(10, 30));

    let mut leaver_client = token_login(&server, leaver).await;
    let timeline = group_pull_all(&mut leaver_client, g, 0).await;
    assert_eq!(chat_texts(&timeline), texts(0, 20));
    assert_eq!(
        event_types(&timeline).last(),
        Some(&GroupEventType::Removed)
    );
    let inbox = pull_all(&mut leaver_client, 0).await;
    assert_eq!(
        event_types(&inbox),
        [GroupEventType::Created, GroupEventType::Removed]
    );
    // Removed members can no longer send.
    let refused = leaver_client.request(group_send_body(g, "x", "hi")).await;
    expect_error(&refused, ErrorCode::NotAMember);

    let timeline = group_pull_all(&mut watcher, g, 0).await;
    assert_eq!(chat_texts(&timeline), texts(0, 30));
    for pair in timeline.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "timeline seqs are gapless");
    }
    // Outsiders cannot read the timeline; a pull beyond the top is refused.
    let outsider = bulk_users(&server, "o", 1).remove(0);
    let mut outsider = token_login(&server, &outsider).await;
    let pull = |after_seq| {
        Body::GroupPull(pb::GroupPullRequest {
            group_id: g,
            after_seq,
            limit: 10,
        })
    };
    expect_error(&outsider.request(pull(0)).await, ErrorCode::NotAMember);
    expect_error(
        &watcher.request(pull(1_000_000)).await,
        ErrorCode::AckBeyondMaxSeq,
    );
    server.stop().await;
}

#[tokio::test]
async fn a_group_that_grows_past_the_threshold_moves_to_its_timeline() {
    let server = TestServer::start(|c| c.messaging.large_group_threshold = 3).await;
    let users = bulk_users(&server, "t", 5);
    let mut owner = token_login(&server, &users[0]).await;
    let g = create_group(&mut owner, "grows", &[users[1].id, users[2].id])
        .await
        .group_id;
    group_send(&mut owner, g, "small", "in the queues").await;
    let grown = group_of(owner.request(add_body(g, &[users[3].id])).await, "grow");
    let info = grown.group.unwrap();
    assert!(
        info.large && info.timeline_from_seq == grown.event_seq + 1,
        "{info:?}"
    );
    group_send(&mut owner, g, "large", "in the timeline").await;
    let mut member = token_login(&server, &users[1]).await;
    let inbox = pull_all(&mut member, 0).await;
    assert_eq!(chat_texts(&inbox), ["in the queues"]);
    let became = inbox
        .iter()
        .filter_map(|m| m.group_event.as_ref())
        .find(|e| e.r#type == GroupEventType::BecameLarge as i32)
        .expect("every member is told in their inbox");
    assert_eq!(became.timeline_from_seq, info.timeline_from_seq);
    let timeline = group_pull_all(&mut member, g, became.timeline_from_seq - 1).await;
    assert_eq!(chat_texts(&timeline), ["in the timeline"]);
    server.stop().await;
}

#[tokio::test]
async fn malformed_group_requests_get_typed_errors() {
    let server = TestServer::start(|c| c.messaging.max_group_members = 3).await;
    let users = bulk_users(&server, "x", 5);
    let mut a = token_login(&server, &users[0]).await;
    let create = |name: &str| {
        Body::GroupCreate(pb::GroupCreateRequest {
            name: name.into(),
            ..Default::default()
        })
    };
    expect_error(&a.request(create("")).await, ErrorCode::InvalidArgument);
    expect_error(
        &a.request(create(&"n".repeat(65))).await,
        ErrorCode::InvalidArgument,
    );
    let too_many = Body::GroupCreate(pb::GroupCreateRequest {
        name: "full".into(),
        member_user_ids: users[1..].iter().map(|u| u.id).collect(),
        ..Default::default()
    });
    expect_error(&a.request(too_many).await, ErrorCode::GroupFull);
    let g = create_group(&mut a, "ok", &[users[1].id]).await.group_id;
    expect_error(
        &a.request(add_body(g, &[users[2].id, users[3].id])).await,
        ErrorCode::GroupFull,
    );
    expect_error(
        &a.request(add_body(0, &[users[2].id])).await,
        ErrorCode::InvalidArgument,
    );
    expect_error(
        &a.request(add_body(g, &[])).await,
        ErrorCode::InvalidArgument,
    );
    let both = Body::GroupRemove(pb::GroupRemoveRequest {
        group_id: g,
        user_id: users[1].id,
        username: users[1].name.clone(),
    });
    expect_error(&a.request(both).await, ErrorCode::InvalidArgument);
    expect_error(
        &a.request(remove_body(g, users[0].id)).await,
        ErrorCode::InvalidArgument,
    );
    let bad_role = Body::GroupSetRole(pb::GroupSetRoleRequest {
        group_id: g,
        user_id: users[1].id,
        role: 42,
    });
    expect_error(&a.request(bad_role).await, ErrorCode::InvalidArgument);
    let send_both = Body::Send(pb::SendRequest {
        group_id: g,
        to_user_id: users[1].id,
        client_msg_id: "c".into(),
        ..Default::default()
    });
    expect_error(&a.request(send_both).await, ErrorCode::InvalidArgument);
    // A small group has no timeline to pull.
    let pull = Body::GroupPull(pb::GroupPullRequest {
        group_id: g,
        after_seq: 0,
        limit: 0,
    });
    expect_error(&a.request(pull).await, ErrorCode::InvalidArgument);
    // Before login every one of them closes the connection.
    let mut anonymous = server.raw().await;
    let answer = anonymous.request(add_body(g, &[users[2].id])).await;
    expect_error(&answer, ErrorCode::NotAuthenticated);
    assert!(anonymous.closed().await.is_empty());
    // The group is unchanged by all of it.
    let members = Body::GroupMembers(pb::GroupMembersRequest {
        group_id: g,
        ..Default::default()
    });
    match a.request(members).await {
        Body::GroupMembersListed(m) => assert_eq!(m.members.len(), 2, "{m:?}"),
        other => panic!("members: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn member_lists_page_in_user_id_order() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "p", 7);
    let mut a = token_login(&server, &users[0]).await;
    let ids: Vec<u64> = users[1..].iter().map(|u| u.id).collect();
    let g = create_group(&mut a, "paged", &ids).await.group_id;
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let body = Body::GroupMembers(pb::GroupMembersRequest {
            group_id: g,
            after_user_id: after,
            limit: 3,
        });
        let page = match a.request(body).await {
            Body::GroupMembersListed(m) => m,
            other => panic!("members: {other:?}"),
        };
        assert!(page.members.len() <= 3);
        after = page.members.last().map_or(after, |m| m.user_id);
        seen.extend(page.members.iter().map(|m| (m.user_id, m.role)));
        if !page.has_more {
            break;
        }
    }
    let expected: Vec<(u64, i32)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let role = if i == 0 {
                GroupRole::Owner
            } else {
                GroupRole::Member
            };
            (u.id, role as i32)
        })
        .collect();
    assert_eq!(seen, expected);
    server.stop().await;
}

#[tokio::test]
async fn groups_survive_a_restart() {
    let server = TestServer::start(|_| {}).await;
    let users = bulk_users(&server, "r", 3);
    let mut a = token_login(&server, &users[0]).await;
    let g = create_group(&mut a, "durable", &[users[1].id, users[2].id])
        .await
        .group_id;
    group_send(&mut a, g, "r1", "kept").await;
    drop(a);
    let server = server.restart().await;
    let mut b = token_login(&server, &users[1]).await;
    assert_eq!(chat_texts(&pull_all(&mut b, 0).await), ["kept"]);
    group_send(&mut b, g, "r2", "still a member").await;
    let mut c = token_login(&server, &users[2]).await;
    assert_eq!(
        chat_texts(&pull_all(&mut c, 0).await),
        ["kept", "still a member"]
    );
    server.stop().await;
}

/// Large groups' timelines give their space back: once every active
/// member's timeline cursor is past an entry (and the retention period
/// has passed), the background collector deletes it and its body.
#[tokio::test]
async fn timelines_are_collected_once_every_active_member_read_them() {
    let server = TestServer::start(|c| {
        c.messaging.large_group_threshold = 2;
        c.messaging.history_retention = std::time::Duration::ZERO;
        c.messaging.gc_interval = std::time::Duration::from_millis(50);
    })
    .await;
    let users = bulk_users(&server, "gc", 3);
    let mut clients = Vec::new();
    for account in &users {
        clients.push(token_login(&server, account).await);
    }
    let ids: Vec<u64> = users[1..].iter().map(|u| u.id).collect();
    let g = create_group(&mut clients[0], "gc", &ids).await.group_id;
    let mut top = 0;
    for n in 0..5 {
        top = group_send(&mut clients[0], g, &format!("m{n}"), "x")
            .await
            .conv_seq;
    }
    // Two of three members are done; the third still holds the timeline.
    for client in &mut clients[..2] {
        assert_eq!(chat_texts(&group_pull_all(client, g, 0).await).len(), 5);
        group_pull_all(client, g, top).await;
    }
    let before = server.store.stats().unwrap();
    assert!(before.bodies >= 6, "{before:?}");
    // The last member reads up to the top too (and drains its inbox).
    let last = &mut clients[2];
    group_pull_all(last, g, 0).await;
    group_pull_all(last, g, top).await;
    for client in &mut clients {
        let inbox = pull_all(client, 0).await;
        let end = inbox.last().map_or(0, |m| m.seq);
        client.ack(end).await;
    }
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let stats = server.store.stats().unwrap();
        if stats.bodies == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timeline was never collected: {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}
