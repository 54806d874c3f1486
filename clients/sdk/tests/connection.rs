//! Connection behaviour against a scripted fake server over real TLS (the
//! dev certificates): answers routed by request id, error answers typed,
//! pushes coalesced, certificate and connect failures classified.

mod fake;

use std::time::Duration;

use fake::{fake_server, options, pair};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::{pb, Body, Codec, Envelope, ErrorCode};
use pigeon_sdk::{Connection, SdkError, ServerEvent, TlsFailure};
use tokio_util::codec::Framed;

fn pong(id: u64, t: u64) -> Envelope {
    Envelope::new(
        id,
        Body::Pong(pb::Pong {
            client_time_ms: t,
            server_time_ms: 0,
        }),
    )
}

#[tokio::test]
async fn answers_are_routed_by_request_id_even_out_of_order() {
    let (conn, mut peer) = pair().await;
    let server = tokio::spawn(async move {
        let first = peer.next().await.unwrap().unwrap();
        let second = peer.next().await.unwrap().unwrap();
        assert_ne!(first.request_id, 0);
        assert_ne!(second.request_id, 0);
        assert_ne!(first.request_id, second.request_id);
        for req in [second, first] {
            let Some(Body::Ping(ping)) = req.body else {
                panic!("not a ping: {req:?}")
            };
            peer.send(pong(req.request_id, ping.client_time_ms))
                .await
                .unwrap();
        }
        peer
    });
    let a = conn.request(Body::Ping(pb::Ping { client_time_ms: 1 }));
    let b = conn.request(Body::Ping(pb::Ping { client_time_ms: 2 }));
    let (a, b) = tokio::join!(a, b);
    assert!(matches!(a.unwrap(), Body::Pong(p) if p.client_time_ms == 1));
    assert!(matches!(b.unwrap(), Body::Pong(p) if p.client_time_ms == 2));
    drop(server.await.unwrap());
}

#[tokio::test]
async fn error_answer_becomes_a_typed_server_error() {
    let (conn, mut peer) = pair().await;
    tokio::spawn(async move {
        let req = peer.next().await.unwrap().unwrap();
        let mut error = pb::Error::new(ErrorCode::RateLimited, "slow down");
        error.retry_after_ms = 250;
        peer.send(Envelope::new(req.request_id, Body::Error(error)))
            .await
            .unwrap();
        peer.next().await // keep the connection open until the client goes
    });
    let err = conn
        .send("bob", "c1", "text/plain", "hi")
        .await
        .unwrap_err();
    match err {
        SdkError::Server {
            code,
            message,
            retry_after_ms,
            fatal,
        } => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert_eq!(message, "slow down");
            assert_eq!(retry_after_ms, 250);
            assert!(!fatal);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pushes_coalesce_and_the_stream_ends_when_the_server_closes() {
    let (conn, mut peer) = pair().await;
    for max_seq in [3, 9, 5] {
        peer.send(Envelope::new(
            0,
            Body::Notify(pb::Notify {
                max_seq,
                messages: vec![],
            }),
        ))
        .await
        .unwrap();
    }
    let kick = pb::Kick {
        reason: pigeon_protocol::KickReason::SameDevice as i32,
        message: "replaced".into(),
    };
    peer.send(Envelope::new(0, Body::Kick(kick.clone())))
        .await
        .unwrap();
    SinkExt::<Envelope>::close(&mut peer).await.unwrap();
    drop(peer);
    conn.closed().await;
    assert_eq!(
        conn.next_event().await,
        Some(ServerEvent::Notify(pb::Notify {
            max_seq: 9,
            messages: vec![]
        }))
    );
    assert_eq!(conn.next_event().await, Some(ServerEvent::Kick(kick)));
    assert_eq!(conn.next_event().await, None);
    // A request on a connection already known to be closed was certainly
    // not sent: NotConnected, not the unknown-outcome Closed.
    let err = conn.ping().await.unwrap_err();
    assert!(matches!(err, SdkError::NotConnected), "{err:?}");
}

#[tokio::test]
async fn unanswered_request_times_out() {
    let (listener, acceptor) = fake_server().await;
    let mut options = options(&listener);
    options.request_timeout = Duration::from_millis(200);
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        Framed::new(acceptor.accept(tcp).await.unwrap(), Codec::default())
    };
    let (conn, _peer) = tokio::join!(Connection::connect(&options), accept);
    let err = conn.unwrap().ping().await.unwrap_err();
    assert!(matches!(err, SdkError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn certificate_for_another_name_is_not_trusted() {
    let (listener, acceptor) = fake_server().await;
    let mut options = options(&listener);
    options.server_name = "pigeon.example.org".into();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // The handshake fails on the client side; the outcome here is moot.
        let _ = acceptor.accept(tcp).await;
    });
    let err = Connection::connect(&options).await.unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::Tls {
                kind: TlsFailure::UntrustedCertificate,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let (listener, _acceptor) = fake_server().await;
    let options = options(&listener);
    drop(listener);
    let err = Connection::connect(&options).await.unwrap_err();
    match err {
        SdkError::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("{other:?}"),
    }
}

fn message(seq: u64) -> pb::Message {
    pb::Message {
        seq,
        msg_id: 100 + seq,
        content: format!("m{seq}").into_bytes().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn client_syncs_in_order_drops_duplicates_persists_and_acks() {
    let (listener, acceptor) = fake_server().await;
    let options = options(&listener);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut peer = Framed::new(acceptor.accept(tcp).await.unwrap(), Codec::default());
        let mut acked = 0;
        while let Some(Ok(req)) = peer.next().await {
            let answer = match req.body.unwrap() {
                Body::Login(login) => {
                    assert!(matches!(
                        login.credential,
                        Some(pb::login_request::Credential::Password(_))
                    ));
                    Body::LoggedIn(pb::LoginResponse {
                        user_id: 7,
                        token: "tok".into(),
                        heartbeat_interval_ms: 30_000,
                        max_seq: 5,
                        ..Default::default()
                    })
                }
                // Overlapping pages: seq 2 comes twice.
                Body::Pull(pull) => {
                    let (seqs, has_more) = match pull.after_seq {
                        0 => (vec![1, 2], true),
                        2 => (vec![2, 3, 4], true),
                        4 => (vec![5], false),
                        other => panic!("pull after {other}"),
                    };
                    Body::Pulled(pb::PullResponse {
                        messages: seqs.into_iter().map(message).collect(),
                        max_seq: 5,
                        has_more,
                        acked_seq: pull.after_seq,
                    })
                }
                Body::Ack(ack) => {
                    acked = ack.seq;
                    Body::Acked(pb::AckResponse { acked_seq: ack.seq })
                }
                // No groups to follow.
                Body::GroupList(_) => Body::GroupListed(pb::GroupListResponse::default()),
                other => panic!("unexpected {other:?}"),
            };
            peer.send(Envelope::new(req.request_id, answer))
                .await
                .unwrap();
        }
        acked
    });
    let dir = tempfile::tempdir().unwrap();
    let profile = pigeon_sdk::Profile::open(dir.path()).unwrap();
    let mut config = pigeon_sdk::ClientConfig::new(options, "alice");
    config.password = Some("password".into());
    config.pull_limit = 2;
    let mut client = pigeon_sdk::Client::start(config, profile);
    let mut seqs = Vec::new();
    loop {
        match client.next_event().await.unwrap() {
            pigeon_sdk::ClientEvent::Connected { user_id, .. } => assert_eq!(user_id, 7),
            pigeon_sdk::ClientEvent::Message(m) => seqs.push(m.seq),
            pigeon_sdk::ClientEvent::CaughtUp { cursor } => {
                assert_eq!(cursor, 5);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    client.shutdown().await;
    assert_eq!(server.await.unwrap(), 5);
    let saved = pigeon_sdk::Profile::load(dir.path()).unwrap().unwrap();
    assert_eq!(saved.cursor, 5);
    assert_eq!(saved.token.as_deref(), Some("tok"));
    assert_eq!(saved.user_id, Some(7));
}
