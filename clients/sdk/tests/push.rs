//! The offline-push requests (push token register and remove, app state)
//! against a scripted fake server over real TLS: the request fields the sdk
//! fills in for each provider, the typed answers, error answers as
//! `SdkError::Server`, and answers of the wrong kind as protocol errors.

mod fake;

use fake::{pair, Peer};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::{pb, Body, Envelope, ErrorCode};
use pigeon_sdk::{PushRegistration, SdkError};

/// Answer the next request with whatever `answer` makes of its body.
async fn answer_one(peer: &mut Peer, answer: impl FnOnce(Body) -> Body) {
    let req = peer.next().await.unwrap().unwrap();
    let body = answer(req.body.unwrap());
    peer.send(Envelope::new(req.request_id, body))
        .await
        .unwrap();
}

/// The push token request in `body`, or a panic naming what came instead.
fn push_token(body: Body) -> pb::PushTokenRequest {
    match body {
        Body::PushToken(request) => request,
        other => panic!("expected push_token, got {other:?}"),
    }
}

fn token_set() -> Body {
    Body::PushTokenSet(pb::PushTokenResponse {})
}

#[tokio::test]
async fn push_registrations_carry_the_provider_and_its_fields() {
    let (conn, mut peer) = pair().await;
    let server = tokio::spawn(async move {
        answer_one(&mut peer, |body| {
            let r = push_token(body);
            assert_eq!(r.provider(), pb::PushProvider::Apns);
            assert_eq!(r.token, "a1b2c3");
            assert_eq!(r.topic, "com.example.chat");
            assert!(r.sandbox);
            assert!(!r.remove);
            token_set()
        })
        .await;
        answer_one(&mut peer, |body| {
            let r = push_token(body);
            assert_eq!(r.provider(), pb::PushProvider::Fcm);
            assert_eq!(r.token, "fcm-registration-token");
            assert!(r.topic.is_empty());
            assert!(!r.sandbox && !r.remove);
            token_set()
        })
        .await;
        answer_one(&mut peer, |body| {
            let r = push_token(body);
            assert_eq!(r.provider(), pb::PushProvider::Webhook);
            assert!(r.token.is_empty() && r.topic.is_empty());
            assert!(!r.sandbox && !r.remove);
            token_set()
        })
        .await;
        answer_one(&mut peer, |body| {
            let r = push_token(body);
            assert!(r.remove);
            // The other fields are ignored by the server; the sdk leaves
            // them empty.
            assert_eq!(r.provider(), pb::PushProvider::Unspecified);
            assert!(r.token.is_empty() && r.topic.is_empty());
            token_set()
        })
        .await;
        peer
    });
    conn.register_push_token(PushRegistration::Apns {
        token: "a1b2c3".into(),
        topic: "com.example.chat".into(),
        sandbox: true,
    })
    .await
    .unwrap();
    conn.register_push_token(PushRegistration::Fcm {
        token: "fcm-registration-token".into(),
    })
    .await
    .unwrap();
    conn.register_push_token(PushRegistration::Webhook)
        .await
        .unwrap();
    conn.remove_push_token().await.unwrap();
    drop(server.await.unwrap());
}

#[tokio::test]
async fn app_state_says_background_or_foreground() {
    let (conn, mut peer) = pair().await;
    let server = tokio::spawn(async move {
        for expected in [true, false] {
            answer_one(&mut peer, |body| {
                let Body::AppState(state) = body else {
                    panic!("expected app_state, got {body:?}")
                };
                assert_eq!(state.background, expected);
                Body::AppStateSet(pb::AppStateResponse {})
            })
            .await;
        }
        peer
    });
    conn.set_background(true).await.unwrap();
    conn.set_background(false).await.unwrap();
    drop(server.await.unwrap());
}

#[tokio::test]
async fn refusals_are_server_errors_and_wrong_answers_protocol_errors() {
    let (conn, mut peer) = pair().await;
    let server = tokio::spawn(async move {
        answer_one(&mut peer, |body| {
            assert!(push_token(body).token.is_empty());
            Body::Error(pb::Error::new(
                ErrorCode::InvalidArgument,
                "an APNs or FCM token is 1 to 4096 bytes",
            ))
        })
        .await;
        answer_one(&mut peer, |body| {
            assert!(push_token(body).remove);
            Body::Error(pb::Error::new(ErrorCode::NotAuthenticated, "log in first"))
        })
        .await;
        // Answers of the wrong kind: an app_state answer to a push token
        // request and the other way round.
        answer_one(&mut peer, |_| Body::AppStateSet(pb::AppStateResponse {})).await;
        answer_one(&mut peer, |_| token_set()).await;
        peer
    });
    let empty = conn
        .register_push_token(PushRegistration::Apns {
            token: String::new(),
            topic: "com.example.chat".into(),
            sandbox: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&empty, SdkError::Server { code: ErrorCode::InvalidArgument, message, .. }
            if message.contains("1 to 4096")),
        "{empty:?}"
    );
    let not_logged_in = conn.remove_push_token().await.unwrap_err();
    assert_eq!(
        not_logged_in.server_code(),
        Some(ErrorCode::NotAuthenticated),
        "{not_logged_in:?}"
    );
    let wrong = conn
        .register_push_token(PushRegistration::Webhook)
        .await
        .unwrap_err();
    assert!(matches!(wrong, SdkError::Protocol(_)), "{wrong:?}");
    let wrong = conn.set_background(true).await.unwrap_err();
    assert!(matches!(wrong, SdkError::Protocol(_)), "{wrong:?}");
    drop(server.await.unwrap());
}
