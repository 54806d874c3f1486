//! The group, conversation, receipt, recall, device, typing and presence
//! requests and pushes against a scripted fake server over real TLS: the
//! request fields the sdk fills in, the typed answers, error answers as
//! `SdkError::Server`, coalescing of the new pushes, and the `Client`
//! following a large group's timeline with a per-group cursor.

mod fake;

use std::time::Duration;

use fake::{accept, fake_server, options, pair, Peer};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::{pb, Body, Envelope, ErrorCode};
use pigeon_sdk::ServerEvent;
use pigeon_sdk::{Client, ClientConfig, ClientEvent, Peer as Chat, Profile, Recipient, SdkError};

/// Answer the next request with whatever `answer` makes of its body.
async fn answer_one(peer: &mut Peer, answer: impl FnOnce(Body) -> Body) {
    let req = peer.next().await.unwrap().unwrap();
    let body = answer(req.body.unwrap());
    peer.send(Envelope::new(req.request_id, body))
        .await
        .unwrap();
}

fn group(group_id: u64) -> pb::GroupInfo {
    pb::GroupInfo {
        group_id,
        name: "team".into(),
        my_role: pb::GroupRole::Owner as i32,
        member_count: 3,
        ..Default::default()
    }
}

#[tokio::test]
async fn group_requests_carry_ids_and_names_and_return_typed_answers() {
    let (conn, mut peer) = pair().await;
    let server = tokio::spawn(async move {
        answer_one(&mut peer, |body| {
            let Body::GroupCreate(create) = body else {
                panic!("{body:?}")
            };
            assert_eq!(create.name, "team");
            assert_eq!(create.member_user_ids, [7]);
            assert_eq!(create.member_usernames, ["bob"]);
            Body::Group(pb::GroupResponse {
                group: Some(group(41)),
                event_seq: 1,
            })
        })
        .await;
        answer_one(&mut peer, |body| {
            let Body::Send(send) = body else {
                panic!("{body:?}")
            };
            assert_eq!((send.group_id, send.to_user_id), (41, 0));
            assert!(send.to_username.is_empty());
            Body::Sent(pb::SendResponse {
                msg_id: 900,
                conv_seq: 2,
                ..Default::default()
            })
        })
        .await;
        answer_one(&mut peer, |body| {
            let Body::GroupRemove(remove) = body else {
                panic!("{body:?}")
            };
            assert_eq!((remove.group_id, remove.username.as_str()), (41, "bob"));
            Body::Error(pb::Error::new(ErrorCode::PermissionDenied, "admins only"))
        })
        .await;
        answer_one(&mut peer, |body| {
            let Body::Read(read) = body else {
                panic!("{body:?}")
            };
            assert_eq!((read.peer_user_id, read.group_id, read.seq), (0, 41, 2));
            Body::ReadSet(pb::ReadResponse {
                read_seq: 2,
                unread: 0,
            })
        })
        .await;
        answer_one(&mut peer, |body| {
            assert!(matches!(body, Body::Devices(_)), "{body:?}");
            Body::DevicesListed(pb::DevicesResponse {
                devices: vec![pb::Device {
                    device_id: "d1".into(),
                    current: true,
                    ..Default::default()
                }],
            })
        })
        .await;
        // A response of the wrong kind is a protocol error, not a panic.
        answer_one(&mut peer, |_| Body::Pong(pb::Pong::default())).await;
        peer
    });
    let created = conn
        .group_create("team", &[Recipient::Id(7), Recipient::from("bob")])
        .await
        .unwrap();
    assert_eq!(created.group.unwrap().group_id, 41);
    let sent = conn.send_group(41, "c1", "text/plain", "hi").await.unwrap();
    assert_eq!((sent.msg_id, sent.conv_seq), (900, 2));
    let refused = conn.group_remove(41, "bob").await.unwrap_err();
    assert!(
        matches!(&refused, SdkError::Server { code: ErrorCode::PermissionDenied, message, .. } if message == "admins only"),
        "{refused:?}"
    );
    let read = conn.read(Chat::Group(41), 2).await.unwrap();
    assert_eq!(read.read_seq, 2);
    let devices = conn.devices().await.unwrap();
    assert_eq!(devices[0].device_id, "d1");
    let wrong = conn.recall(900).await.unwrap_err();
    assert!(matches!(wrong, SdkError::Protocol(_)), "{wrong:?}");
    drop(server.await.unwrap());
}

#[tokio::test]
async fn new_pushes_coalesce_per_group_peer_and_user() {
    let (conn, mut peer) = pair().await;
    let pushes = [
        Body::GroupNotify(pb::GroupNotify {
            group_id: 1,
            max_seq: 5,
            messages: vec![],
        }),
        Body::GroupNotify(pb::GroupNotify {
            group_id: 2,
            max_seq: 3,
            messages: vec![],
        }),
        Body::GroupNotify(pb::GroupNotify {
            group_id: 1,
            max_seq: 9,
            messages: vec![],
        }),
        Body::GroupNotify(pb::GroupNotify {
            group_id: 1,
            max_seq: 7,
            messages: vec![],
        }),
        Body::ReadReceipt(pb::ReadReceipt {
            peer_user_id: 4,
            read_seq: 6,
        }),
        Body::ReadReceipt(pb::ReadReceipt {
            peer_user_id: 4,
            read_seq: 2,
        }),
        Body::TypingEvent(pb::TypingEvent {
            from_user_id: 4,
            group_id: 0,
            typing: true,
        }),
        Body::TypingEvent(pb::TypingEvent {
            from_user_id: 4,
            group_id: 0,
            typing: false,
        }),
        Body::PresenceEvent(pb::PresenceEvent {
            presence: Some(pb::Presence {
                user_id: 4,
                visible: true,
                online: true,
                last_seen_ms: 1,
            }),
        }),
        Body::PresenceEvent(pb::PresenceEvent {
            presence: Some(pb::Presence {
                user_id: 4,
                visible: true,
                online: false,
                last_seen_ms: 2,
            }),
        }),
    ];
    for body in pushes {
        peer.send(Envelope::new(0, body)).await.unwrap();
    }
    SinkExt::<Envelope>::close(&mut peer).await.unwrap();
    drop(peer);
    conn.closed().await;
    let mut events = Vec::new();
    while let Some(event) = conn.next_event().await {
        events.push(event);
    }
    assert_eq!(
        events,
        [
            ServerEvent::GroupNotify(pb::GroupNotify {
                group_id: 1,
                max_seq: 9,
                messages: vec![],
            }),
            ServerEvent::GroupNotify(pb::GroupNotify {
                group_id: 2,
                max_seq: 3,
                messages: vec![],
            }),
            ServerEvent::ReadReceipt(pb::ReadReceipt {
                peer_user_id: 4,
                read_seq: 6
            }),
            ServerEvent::Typing(pb::TypingEvent {
                from_user_id: 4,
                group_id: 0,
                typing: false
            }),
            ServerEvent::Presence(pb::Presence {
                user_id: 4,
                visible: true,
                online: false,
                last_seen_ms: 2
            }),
        ]
    );
}

fn entry(group_id: u64, seq: u64) -> pb::Message {
    pb::Message {
        seq,
        conv_seq: seq,
        group_id,
        msg_id: 1000 + seq,
        content: format!("g{seq}").into_bytes().into(),
        ..Default::default()
    }
}

/// A fake server with one large group (id 5) whose timeline starts at seq
/// 10 and grows to 14 after the first catch-up, announced by a GroupNotify.
async fn large_group_server(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Vec<u64> {
    let mut peer = accept(&listener, &acceptor).await;
    let mut pulled_after = Vec::new();
    let mut top = 12;
    while let Some(Ok(req)) = peer.next().await {
        let answer = match req.body.unwrap() {
            Body::Login(_) => Body::LoggedIn(pb::LoginResponse {
                user_id: 7,
                token: "tok".into(),
                heartbeat_interval_ms: 30_000,
                ..Default::default()
            }),
            Body::Pull(_) => Body::Pulled(pb::PullResponse::default()),
            Body::GroupList(_) => Body::GroupListed(pb::GroupListResponse {
                groups: vec![
                    pb::GroupInfo {
                        large: true,
                        max_seq: 12,
                        timeline_from_seq: 10,
                        joined_seq: 2,
                        ..group(5)
                    },
                    // A small group: its messages come through the inbox.
                    pb::GroupInfo {
                        max_seq: 30,
                        ..group(6)
                    },
                ],
            }),
            Body::GroupPull(pull) => {
                assert_eq!(pull.group_id, 5);
                pulled_after.push(pull.after_seq);
                // Pages of two, overlapping by one entry.
                let first = pull.after_seq.max(10);
                let seqs: Vec<u64> = (first..=top).filter(|s| *s > 9).take(2).collect();
                let last = seqs.last().copied().unwrap_or(pull.after_seq);
                Body::GroupPulled(pb::GroupPullResponse {
                    group_id: 5,
                    messages: seqs.into_iter().map(|s| entry(5, s)).collect(),
                    max_seq: top,
                    has_more: last < top,
                })
            }
            other => panic!("unexpected {other:?}"),
        };
        peer.send(Envelope::new(req.request_id, answer))
            .await
            .unwrap();
        if pulled_after.len() == 2 && top == 12 {
            top = 14;
            let notify = pb::GroupNotify {
                group_id: 5,
                max_seq: 14,
                messages: vec![],
            };
            peer.send(Envelope::new(0, Body::GroupNotify(notify)))
                .await
                .unwrap();
            let receipt = pb::ReadReceipt {
                peer_user_id: 8,
                read_seq: 3,
            };
            peer.send(Envelope::new(0, Body::ReadReceipt(receipt)))
                .await
                .unwrap();
        }
    }
    pulled_after
}

#[tokio::test]
async fn client_follows_a_large_group_timeline_with_its_own_cursor() {
    let (listener, acceptor) = fake_server().await;
    let options = options(&listener);
    let server = tokio::spawn(large_group_server(listener, acceptor));
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClientConfig::new(options, "alice");
    config.password = Some("password".into());
    let mut client = Client::start(config, Profile::open(dir.path()).unwrap());
    let mut seqs = Vec::new();
    let mut receipts = Vec::new();
    let mut caught_up = 0;
    while seqs.last() != Some(&14) || receipts.is_empty() {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next_event())
            .await
            .expect("events keep coming")
            .unwrap();
        match event {
            ClientEvent::GroupMessage(m) => {
                assert_eq!(m.group_id, 5);
                seqs.push(m.seq);
            }
            ClientEvent::ReadReceipt(r) => receipts.push(r.read_seq),
            ClientEvent::CaughtUp { .. } => caught_up += 1,
            ClientEvent::Connected { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, [10, 11, 12, 13, 14]);
    assert_eq!(receipts, [3]);
    assert!(caught_up >= 1);
    client.shutdown().await;
    // Started above the inbox part (9), then paged on from each cursor.
    assert_eq!(server.await.unwrap(), [9, 11, 12, 13]);
    let saved = Profile::load(dir.path()).unwrap().unwrap();
    assert_eq!(saved.group_cursors.get(&5), Some(&14));
}
