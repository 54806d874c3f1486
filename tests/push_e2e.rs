//! Offline push end to end: a real pigeond (store, committer, gateway)
//! with push on, its providers pointed at local TLS stand-ins. A device
//! registers a token over the protocol; messages to it while it is
//! connected push nothing, while it is offline (or said it went to the
//! background) push exactly once, and a push waiting out a backoff when
//! pigeond restarts is still delivered, once.
//!
//! "Exactly once" is checked without waiting for silence: after the push
//! under test, another message is sent, and the next request the provider
//! sees must be that message's push (a duplicate would come before it).

mod common;
#[path = "push/fake.rs"]
mod fake;

use std::time::Duration;

use common::TestServer;
use fake::{FakeServer, Offer};
use pigeon_protocol::pb;
use pigeon_protocol::{Body, Platform};
use pigeon_server::config::Push;
use serde_json::{json, Value};

const DEVICE_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const TOPIC: &str = "com.example.chat";
const SECRET: &str = "e2e webhook secret";

/// Fake APNs, FCM (token and send endpoints) and webhook, and the key
/// files pigeond reads.
struct Providers {
    apns: FakeServer,
    fcm: FakeServer,
    oauth: FakeServer,
    webhook: FakeServer,
    dir: tempfile::TempDir,
}

impl Providers {
    async fn start() -> Providers {
        let apns = FakeServer::start(Offer::H2).await;
        let fcm = FakeServer::start(Offer::H2).await;
        let oauth = FakeServer::start(Offer::H2).await;
        let webhook = FakeServer::start(Offer::H2).await;
        let dir = tempfile::tempdir().unwrap();
        let (p8, _public) = fake::apns_key();
        std::fs::write(dir.path().join("apns.p8"), p8).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let (key, _public) = fake::service_account_key();
        let account = json!({
            "type": "service_account",
            "project_id": "pigeon-e2e",
            "private_key_id": "k1",
            "private_key": key,
            "client_email": "pusher@pigeon-e2e.iam.gserviceaccount.com",
            "token_uri": format!("{}/token", oauth.url()),
        });
        std::fs::write(dir.path().join("sa.json"), account.to_string()).unwrap();
        Providers {
            apns,
            fcm,
            oauth,
            webhook,
            dir,
        }
    }

    fn config(&self) -> Push {
        Push {
            enabled: true,
            ca_file: Some(fake::ca_path()),
            apns_key_file: Some(self.dir.path().join("apns.p8")),
            apns_key_id: Some("KEYID12345".into()),
            apns_team_id: Some("TEAMID6789".into()),
            apns_endpoint: self.apns.url(),
            apns_sandbox_endpoint: self.apns.url(),
            fcm_service_account_file: Some(self.dir.path().join("sa.json")),
            fcm_endpoint: self.fcm.url(),
            webhook_url: Some(format!("{}/hook", self.webhook.url())),
            webhook_secret_file: Some(self.dir.path().join("secret")),
            coalesce_window: Duration::from_millis(500),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            poll_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            ..Push::default()
        }
    }
}

async fn start(providers: &Providers) -> TestServer {
    let push = providers.config();
    TestServer::start(move |c| c.push = push).await
}

fn apns_token() -> Body {
    Body::PushToken(pb::PushTokenRequest {
        provider: pb::PushProvider::Apns as i32,
        token: DEVICE_TOKEN.into(),
        topic: TOPIC.into(),
        sandbox: false,
        remove: false,
    })
}

fn webhook_token() -> Body {
    Body::PushToken(pb::PushTokenRequest {
        provider: pb::PushProvider::Webhook as i32,
        ..Default::default()
    })
}

async fn set_token(client: &mut common::RawClient, body: Body) {
    match client.request(body).await {
        Body::PushTokenSet(_) => {}
        other => panic!("push token refused: {other:?}"),
    }
}

/// The `pigeon` part of an APNs payload.
fn apns_pigeon(seen: &fake::Seen) -> Value {
    let body = seen.json();
    assert_eq!(body["aps"]["alert"], json!({ "title": "New message" }));
    body["pigeon"].clone()
}

#[tokio::test]
async fn no_push_while_connected_then_one_when_in_the_background() {
    let mut p = Providers::start().await;
    let server = start(&p).await;
    let (mut alice, alice_login) = server.user("alice", "laptop").await;
    let (mut bob, _) = server.user("bob", "phone").await;
    set_token(&mut bob, apns_token()).await;

    // Bob is connected and in the foreground: a Notify, no push.
    alice.send_ok("bob", "m1", "first").await;
    match bob.next_push().await {
        Some(Body::Notify(n)) => assert_eq!(n.max_seq, 1),
        other => panic!("expected a notify, got {other:?}"),
    }

    // The app goes to the background: the next message is pushed.
    match bob
        .request(Body::AppState(pb::AppStateRequest { background: true }))
        .await
    {
        Body::AppStateSet(_) => {}
        other => panic!("app state refused: {other:?}"),
    }
    alice.send_ok("bob", "m2", "second").await;
    let x = p.apns.next().await;
    // The first request APNs ever sees is for the second message.
    assert_eq!(x.seen.path, format!("/3/device/{DEVICE_TOKEN}"));
    assert_eq!(x.seen.header("apns-topic"), TOPIC);
    let peer = alice_login.user_id;
    assert_eq!(x.seen.header("apns-collapse-id"), format!("p{peer}"));
    assert_eq!(
        apns_pigeon(&x.seen),
        json!({ "peer_user_id": peer, "max_seq": 2 })
    );
    assert_eq!(x.seen.json()["aps"]["badge"], 2, "two unread");
    assert!(!String::from_utf8_lossy(&x.seen.body).contains("second"));
    x.answer(200, "");
    drop(server.stop().await);
}

#[tokio::test]
async fn a_message_to_an_offline_device_is_pushed_exactly_once() {
    let mut p = Providers::start().await;
    let server = start(&p).await;
    let (mut bob, bob_login) = server.user("bob", "web-1").await;
    set_token(&mut bob, webhook_token()).await;
    drop(bob);
    // A restart: bob has no session at all now.
    let server = server.restart().await;
    let (mut alice, alice_login) = server.user("alice", "laptop").await;

    alice.send_ok("bob", "m1", "hello").await;
    let x = p.webhook.next().await;
    assert_eq!(x.seen.path, "/hook");
    let body = x.seen.json();
    assert_eq!(body["user_id"], bob_login.user_id);
    assert_eq!(body["device_id"], "web-1");
    assert_eq!(body["peer_user_id"], alice_login.user_id);
    assert_eq!(body["max_seq"], 1);
    assert_eq!(body["badge"], 1);
    assert!(body.get("preview").is_none());
    x.answer(200, "");

    // The next push the webhook sees is the next message's.
    alice.send_ok("bob", "m2", "again").await;
    let x = p.webhook.next().await;
    assert_eq!(x.seen.json()["max_seq"], 2, "a duplicate of the first push");
    assert_eq!(x.seen.json()["badge"], 2);
    x.answer(200, "");
    drop(server.stop().await);
}

#[tokio::test]
async fn a_restart_during_backoff_still_delivers_the_push_once() {
    let mut p = Providers::start().await;
    let server = start(&p).await;
    let (mut bob, _) = server.user("bob", "phone").await;
    set_token(&mut bob, apns_token()).await;
    drop(bob);
    let server = server.restart().await;
    let (mut alice, _) = server.user("alice", "laptop").await;

    alice.send_ok("bob", "m1", "hello").await;
    let x = p.apns.next().await;
    let first = x.seen.wall_ms;
    assert_eq!(apns_pigeon(&x.seen)["max_seq"], 1);
    x.answer_with(
        429,
        &[("retry-after", "2")],
        r#"{"reason":"TooManyRequests"}"#,
    );
    drop(alice);
    // Stopping waits for the worker to record the retry; the job is in
    // the store, due two seconds after the 429.
    let server = server.restart().await;

    let x = p.apns.next().await;
    assert!(
        x.seen.wall_ms >= first + 2000,
        "retried {} ms after the 429, before its Retry-After",
        x.seen.wall_ms - first
    );
    assert_eq!(apns_pigeon(&x.seen)["max_seq"], 1);
    assert_eq!(x.seen.json()["aps"]["badge"], 1);
    x.answer(200, "");

    let mut alice = server.raw().await;
    alice.login("alice", "laptop", Platform::Ios).await;
    alice.send_ok("bob", "m2", "again").await;
    let x = p.apns.next().await;
    assert_eq!(
        apns_pigeon(&x.seen)["max_seq"],
        2,
        "the retried push went out twice"
    );
    x.answer(200, "");
    drop(server.stop().await);
}

#[tokio::test]
async fn a_token_apns_calls_unregistered_is_removed_with_its_job() {
    let mut p = Providers::start().await;
    let server = start(&p).await;
    let (mut bob, bob_login) = server.user("bob", "phone").await;
    set_token(&mut bob, apns_token()).await;
    drop(bob);
    let server = server.restart().await;
    assert_eq!(
        server.store.push_devices(bob_login.user_id).unwrap(),
        vec!["phone".to_owned()]
    );
    let (mut alice, _) = server.user("alice", "laptop").await;
    alice.send_ok("bob", "m1", "hello").await;
    let x = p.apns.next().await;
    x.answer(
        410,
        r#"{"reason":"Unregistered","timestamp":1764151200000}"#,
    );
    drop(alice);
    // Stopping waits for the worker to record the outcome.
    let server = server.restart().await;
    assert!(server
        .store
        .push_devices(bob_login.user_id)
        .unwrap()
        .is_empty());
    let (jobs, next) = server.store.due_push_jobs(u64::MAX, 10).unwrap();
    assert!(jobs.is_empty() && next.is_none(), "the job went too");
    drop(server.stop().await);
}

#[tokio::test]
async fn an_fcm_device_is_pushed_through_an_exchanged_access_token() {
    let mut p = Providers::start().await;
    let server = start(&p).await;
    let mut bob = server.raw().await;
    bob.register("bob").await;
    bob.login("bob", "pixel", Platform::Android).await;
    set_token(
        &mut bob,
        Body::PushToken(pb::PushTokenRequest {
            provider: pb::PushProvider::Fcm as i32,
            token: "fcm-registration-token".into(),
            ..Default::default()
        }),
    )
    .await;
    drop(bob);
    let server = server.restart().await;
    let (mut alice, alice_login) = server.user("alice", "laptop").await;
    alice.send_ok("bob", "m1", "hello").await;

    let x = p.oauth.next().await;
    assert_eq!(x.seen.path, "/token");
    x.answer(
        200,
        &json!({ "access_token": "ya29.e2e", "expires_in": 3600 }).to_string(),
    );
    let x = p.fcm.next().await;
    assert_eq!(x.seen.path, "/v1/projects/pigeon-e2e/messages:send");
    assert_eq!(x.seen.header("authorization"), "Bearer ya29.e2e");
    let m = &x.seen.json()["message"];
    assert_eq!(m["token"], "fcm-registration-token");
    let peer = alice_login.user_id.to_string();
    assert_eq!(
        m["data"],
        json!({ "peer_user_id": peer, "max_seq": "1", "badge": "1" })
    );
    assert_eq!(m["android"]["collapse_key"], format!("p{peer}"));
    assert!(m["notification"].get("body").is_none(), "no content");
    x.answer(200, r#"{"name":"projects/pigeon-e2e/messages/1"}"#);
    drop(server.stop().await);
}
