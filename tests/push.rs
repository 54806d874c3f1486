//! Offline push: the provider clients and the worker against local TLS
//! stand-ins for APNs, FCM (token and send endpoints) and a webhook
//! receiver, which check each request's path, headers, JSON body and JWT,
//! and answer success, 429 with Retry-After, 500, 410, a bad token, or
//! nothing at all.
//!
//! Real time, with short backoffs: tokio's paused clock jumps to the next
//! timer whenever the runtime parks, even while loopback I/O is pending,
//! so a 10 s request timeout would fire in the middle of a TLS exchange.
//! Spacing is checked against the retry time the worker chose (a lower
//! bound, exact) and the ceiling it must stay under. Token lifetimes (an
//! hour) are checked by calling the clients with an explicit clock.
//!
//! The worker reads a Vec-backed outbox here; tests/push_e2e.rs runs the
//! same providers behind a real pigeond and its store.

#[path = "push/fake.rs"]
mod fake;
#[path = "push/outbox.rs"]
mod outbox;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake::{FakeServer, Offer};
use outbox::{job, Event, Events, VecOutbox};
use pigeon_server::config::Push;
use pigeon_server::metrics::Metrics;
use pigeon_server::push::outcome::Outcome;
use pigeon_server::push::payload::Notice;
use pigeon_server::push::worker::{self, WorkerSettings};
use pigeon_server::push::{Providers, PushJob, PushTarget};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "KEYID12345";
const TEAM_ID: &str = "TEAMID6789";
const TOPIC: &str = "com.example.chat";
const DEVICE_TOKEN: &str = "8badf00d8badf00d8badf00d8badf00d8badf00d8badf00d8badf00d8badf00d";
const SA_EMAIL: &str = "pusher@pigeon-test.iam.gserviceaccount.com";
const SECRET: &str = "webhook secret";

/// Fake providers, keys and a worker over a [`VecOutbox`].
struct Harness {
    apns: FakeServer,
    sandbox: FakeServer,
    fcm: FakeServer,
    oauth: FakeServer,
    webhook: FakeServer,
    apns_public: Vec<u8>,
    sa_public: Vec<u8>,
    outbox: Arc<VecOutbox>,
    providers: Arc<Providers>,
    events: Events,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(tweak: impl FnOnce(&mut Push)) -> Harness {
        Harness::start_offering(Offer::H2, tweak).await
    }

    async fn start_offering(webhook_offer: Offer, tweak: impl FnOnce(&mut Push)) -> Harness {
        // RUST_LOG=pigeon_server=debug shows each attempt and its reason.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let apns = FakeServer::start(Offer::H2).await;
        let sandbox = FakeServer::start(Offer::H2).await;
        let fcm = FakeServer::start(Offer::H2).await;
        let oauth = FakeServer::start(Offer::H2).await;
        let webhook = FakeServer::start(webhook_offer).await;
        let dir = tempfile::tempdir().unwrap();
        let (p8, apns_public) = fake::apns_key();
        std::fs::write(dir.path().join("apns.p8"), p8).unwrap();
        let (sa_key, sa_public) = fake::service_account_key();
        let account = json!({
            "type": "service_account",
            "project_id": "pigeon-test",
            "private_key_id": "sa-key-1",
            "private_key": sa_key,
            "client_email": SA_EMAIL,
            "token_uri": format!("{}/token", oauth.url()),
        });
        std::fs::write(dir.path().join("sa.json"), account.to_string()).unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        let mut push = Push {
            enabled: true,
            ca_file: Some(fake::ca_path()),
            apns_key_file: Some(dir.path().join("apns.p8")),
            apns_key_id: Some(KEY_ID.into()),
            apns_team_id: Some(TEAM_ID.into()),
            apns_topic: Some("com.example.default".into()),
            apns_endpoint: apns.url(),
            apns_sandbox_endpoint: sandbox.url(),
            fcm_service_account_file: Some(dir.path().join("sa.json")),
            fcm_endpoint: fcm.url(),
            webhook_url: Some(format!("{}/hooks/pigeon?v=1", webhook.url())),
            webhook_secret_file: Some(dir.path().join("secret")),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(400),
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
            ..Push::default()
        };
        tweak(&mut push);
        let providers = Arc::new(Providers::from_config(&push).expect("providers start"));
        let (outbox, events) = VecOutbox::new();
        let outbox = Arc::new(outbox);
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            outbox.clone(),
            providers.clone(),
            WorkerSettings::from_config(&push),
            metrics.clone(),
            shutdown.clone(),
        ));
        Harness {
            apns,
            sandbox,
            fcm,
            oauth,
            webhook,
            apns_public,
            sa_public,
            outbox,
            providers,
            events,
            metrics,
            shutdown,
            worker,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.worker.await.unwrap();
    }
}

fn apns_target(sandbox: bool) -> PushTarget {
    PushTarget::Apns {
        device_token: DEVICE_TOKEN.into(),
        topic: TOPIC.into(),
        sandbox,
    }
}

fn fcm_target(token: &str) -> PushTarget {
    PushTarget::Fcm {
        registration_token: token.into(),
    }
}

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn expect_done(event: Event) -> PushJob {
    match event {
        Event::Done(job) => job,
        other => panic!("expected done, got {other:?}"),
    }
}

fn expect_retry(event: Event) -> (PushJob, u64, u32) {
    match event {
        Event::Retry {
            job,
            not_before_ms,
            attempts,
        } => (job, not_before_ms, attempts),
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[tokio::test]
async fn apns_gets_a_signed_http2_request_without_content() {
    let mut h = Harness::start(|_| {}).await;
    let mut j = job(1, "phone", apns_target(false), 0);
    j.badge = 4;
    j.max_seq = 42;
    j.preview = Some("the secret text".into()); // the option is off
    h.outbox.put(j);

    let x = h.apns.next().await;
    let seen = &x.seen;
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, format!("/3/device/{DEVICE_TOKEN}"));
    assert_eq!(seen.header("apns-topic"), TOPIC);
    assert_eq!(seen.header("apns-push-type"), "alert");
    assert_eq!(seen.header("apns-priority"), "10");
    assert_eq!(seen.header("apns-collapse-id"), "p7");
    let token = seen
        .header("authorization")
        .strip_prefix("bearer ")
        .expect("bearer token");
    let jwt = fake::verify_jwt(token, "ES256", &h.apns_public);
    assert_eq!(jwt.header["kid"], KEY_ID);
    assert_eq!(jwt.claims["iss"], TEAM_ID);
    let iat = jwt.claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(wall_secs()) < 600, "iat {iat} is about now");
    let body = seen.json();
    assert_eq!(
        body,
        json!({
            "aps": {
                "alert": { "title": "New message" },
                "badge": 4,
                "sound": "default",
                "thread-id": "p7",
            },
            "pigeon": { "peer_user_id": 7, "max_seq": 42 },
        })
    );
    assert!(!String::from_utf8_lossy(&seen.body).contains("secret"));
    x.answer_with(200, &[("apns-id", "1-2-3")], "");

    let done = expect_done(h.events.next().await);
    assert_eq!(done.device_id, "phone");
    assert!(h.outbox.pending().is_empty());
    assert_eq!(h.metrics.push.attempts("apns", "delivered"), 1);

    // A sandbox token goes to the sandbox endpoint, a group to its thread.
    let mut j = job(2, "dev-phone", apns_target(true), 0);
    j.group_id = 5;
    j.peer_user_id = 0;
    h.outbox.put(j);
    let x = h.sandbox.next().await;
    assert_eq!(x.seen.header("apns-collapse-id"), "g5");
    assert_eq!(
        x.seen.json()["pigeon"],
        json!({ "group_id": 5, "max_seq": 11 })
    );
    x.answer(200, "");
    expect_done(h.events.next().await);
    assert!(h.apns.try_next().is_none());
    h.stop().await;
}

#[tokio::test]
async fn the_preview_is_sent_only_when_the_option_is_on() {
    let mut h = Harness::start(|p| p.content_preview = true).await;
    let mut j = job(1, "phone", apns_target(false), 0);
    j.preview = Some("see you at 8".into());
    h.outbox.put(j);
    let x = h.apns.next().await;
    assert_eq!(x.seen.json()["aps"]["alert"]["body"], "see you at 8");
    x.answer(200, "");
    expect_done(h.events.next().await);
    h.stop().await;
}

#[tokio::test]
async fn the_apns_token_is_reused_and_refreshed_before_an_hour() {
    let mut h = Harness::start(|_| {}).await;
    let now = pigeon_server::clock::now_ms();
    let j = job(1, "phone", apns_target(false), 0);
    let notice = Notice::for_job(&j, "New message", false);
    let mut tokens = Vec::new();
    // The clients take the time from the worker; here it is given, so an
    // hour passes at once.
    for at in [now, now + 60_000, now + 50 * 60_000] {
        let server = async {
            let x = h.apns.next().await;
            let token = x.seen.header("authorization")[7..].to_owned();
            x.answer(200, "");
            token
        };
        let (outcome, token) = tokio::join!(h.providers.deliver(&j, &notice, at), server);
        assert_eq!(outcome, Outcome::Delivered);
        let jwt = fake::verify_jwt(&token, "ES256", &h.apns_public);
        assert_eq!(jwt.claims["iss"], TEAM_ID);
        tokens.push((token, jwt.claims["iat"].as_u64().unwrap()));
    }
    assert_eq!(tokens[0].0, tokens[1].0, "reused a minute later");
    assert_ne!(tokens[1].0, tokens[2].0, "replaced after 50 minutes");
    assert_eq!(tokens[0].1, now / 1000);
    assert_eq!(tokens[2].1, now / 1000 + 50 * 60);
    h.stop().await;
}

#[tokio::test]
async fn apns_dead_tokens_are_removed_and_other_refusals_dropped() {
    let mut h = Harness::start(|_| {}).await;
    for (status, reason, removed) in [
        (410, "Unregistered", true),
        (400, "BadDeviceToken", true),
        (400, "BadTopic", false),
    ] {
        h.outbox.put(job(1, "phone", apns_target(false), 0));
        let x = h.apns.next().await;
        x.answer(status, &json!({ "reason": reason }).to_string());
        match h.events.next().await {
            Event::Rejected(_) => assert!(removed, "{reason} must not remove the token"),
            Event::Done(_) => assert!(!removed, "{reason} must remove the token"),
            other => panic!("{reason}: {other:?}"),
        }
        assert!(h.outbox.pending().is_empty(), "{reason}: not retried");
    }
    assert_eq!(h.metrics.push.attempts("apns", "token_rejected"), 2);
    assert_eq!(h.metrics.push.attempts("apns", "failed"), 1);
    h.stop().await;
}

#[tokio::test]
async fn retries_back_off_with_jitter_and_honour_retry_after() {
    let mut h = Harness::start(|p| {
        p.backoff_base = Duration::from_millis(200);
        p.backoff_cap = Duration::from_millis(500);
    })
    .await;
    h.outbox.put(job(1, "phone", apns_target(false), 0));
    let x = h.apns.next().await;
    // Three 500s: delays drawn from [0, 200 ms], [0, 400 ms], [0, 500 ms]
    // (capped); then a 429 with Retry-After: 1 waits 1 s.
    let answers: [(u16, &[(&'static str, &str)]); 4] = [
        (500, &[]),
        (500, &[]),
        (500, &[]),
        (429, &[("retry-after", "1")]),
    ];
    let ceilings = [200, 400, 500, 1000];
    let mut x = x;
    for (attempt, ((status, headers), ceiling)) in answers.into_iter().zip(ceilings).enumerate() {
        x.answer_with(status, headers, r#"{"reason":"InternalServerError"}"#);
        let (_, not_before, attempts) = expect_retry(h.events.next().await);
        let decided = pigeon_server::clock::now_ms();
        assert_eq!(attempts, attempt as u32 + 1);
        let delay = not_before as i64 - decided as i64;
        assert!(
            delay <= ceiling + 20,
            "attempt {attempts}: delay {delay} ms above the {ceiling} ms ceiling"
        );
        if status == 429 {
            assert!(
                delay >= 1000 - 50,
                "Retry-After 1 s honoured, got {delay} ms"
            );
        }
        x = h.apns.next().await;
        // Never early; and not much later than asked (the worker sleeps
        // until exactly then).
        assert!(
            x.seen.wall_ms + 2 >= not_before,
            "attempt {} came {} ms early",
            attempts + 1,
            not_before - x.seen.wall_ms
        );
        assert!(x.seen.wall_ms <= not_before + 3000, "attempt came late");
    }
    x.answer(200, "");
    let done = expect_done(h.events.next().await);
    assert_eq!(done.attempts, 4);
    assert_eq!(h.metrics.push.attempts("apns", "retry"), 4);
    assert_eq!(h.metrics.push.attempts("apns", "delivered"), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_hung_provider_times_out_and_the_push_is_retried() {
    let mut h = Harness::start(|p| p.request_timeout = Duration::from_millis(500)).await;
    h.outbox.put(job(1, "phone", apns_target(false), 0));
    let x = h.apns.next().await;
    let hung_at = x.seen.at;
    x.hang();
    let (_, _, attempts) = expect_retry(h.events.next().await);
    assert_eq!(attempts, 1);
    let elapsed = hung_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "gave up after {elapsed:?}, want the 500 ms request timeout"
    );
    // The hung connection was dropped; the retry dials again and succeeds.
    let x = h.apns.next().await;
    x.answer(200, "");
    expect_done(h.events.next().await);
    h.stop().await;
}

#[tokio::test]
async fn a_push_that_keeps_failing_is_dropped_after_max_attempts() {
    let mut h = Harness::start(|p| p.max_attempts = 3).await;
    h.outbox.put(job(1, "phone", apns_target(false), 0));
    for _ in 0..2 {
        h.apns.next().await.answer(503, "{}");
        expect_retry(h.events.next().await);
    }
    h.apns.next().await.answer(503, "{}");
    expect_done(h.events.next().await);
    assert!(h.outbox.pending().is_empty());
    assert_eq!(h.metrics.push.skips("gave_up"), 1);
    h.stop().await;
}

#[tokio::test]
async fn fcm_exchanges_a_signed_assertion_and_reuses_the_access_token() {
    let mut h = Harness::start(|_| {}).await;
    let token_url = format!("{}/token", h.oauth.url());
    let now = pigeon_server::clock::now_ms();
    let mut j = job(1, "android", fcm_target("reg-token-1"), 0);
    j.group_id = 5;
    j.peer_user_id = 0;
    j.badge = 3;
    let notice = Notice::for_job(&j, "New message", false);
    // An hour-long access token: reused a minute later, replaced 56
    // minutes later (5 minutes before it expires).
    for (round, at) in [now, now + 60_000, now + 56 * 60_000]
        .into_iter()
        .enumerate()
    {
        let exchange = round != 1;
        let (oauth, fcm) = (&mut h.oauth, &mut h.fcm);
        let servers = async {
            if exchange {
                let x = oauth.next().await;
                assert_eq!(x.seen.method, "POST");
                assert_eq!(x.seen.path, "/token");
                assert_eq!(
                    x.seen.header("content-type"),
                    "application/x-www-form-urlencoded"
                );
                let form = fake::form(&x.seen.body);
                assert_eq!(
                    form[0],
                    (
                        "grant_type".into(),
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".into()
                    )
                );
                assert_eq!(form[1].0, "assertion");
                let jwt = fake::verify_jwt(&form[1].1, "RS256", &h.sa_public);
                assert_eq!(jwt.header["kid"], "sa-key-1");
                assert_eq!(jwt.claims["iss"], SA_EMAIL);
                assert_eq!(
                    jwt.claims["scope"],
                    "https://www.googleapis.com/auth/firebase.messaging"
                );
                assert_eq!(jwt.claims["aud"], token_url.as_str());
                assert_eq!(jwt.claims["iat"].as_u64().unwrap(), at / 1000);
                assert_eq!(jwt.claims["exp"].as_u64().unwrap(), at / 1000 + 3600);
                let access = format!("ya29.access-{round}");
                x.answer(
                    200,
                    &json!({ "access_token": access, "expires_in": 3600, "token_type": "Bearer" })
                        .to_string(),
                );
            }
            let x = fcm.next().await;
            assert_eq!(x.seen.version, http::Version::HTTP_2);
            assert_eq!(x.seen.path, "/v1/projects/pigeon-test/messages:send");
            let access = if round == 2 { 2 } else { 0 };
            assert_eq!(
                x.seen.header("authorization"),
                format!("Bearer ya29.access-{access}")
            );
            let body = x.seen.json();
            let m = &body["message"];
            assert_eq!(m["token"], "reg-token-1");
            assert_eq!(m["notification"], json!({ "title": "New message" }));
            assert_eq!(
                m["data"],
                json!({ "group_id": "5", "max_seq": "11", "badge": "3" })
            );
            assert_eq!(m["android"]["collapse_key"], "g5");
            assert_eq!(m["android"]["notification"]["tag"], "g5");
            assert_eq!(m["android"]["notification"]["notification_count"], 3);
            assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "g5");
            assert_eq!(m["apns"]["payload"]["aps"]["badge"], 3);
            x.answer(
                200,
                &json!({ "name": "projects/pigeon-test/messages/1" }).to_string(),
            );
        };
        let (outcome, ()) = tokio::join!(h.providers.deliver(&j, &notice, at), servers);
        assert_eq!(outcome, Outcome::Delivered, "round {round}");
    }
    assert!(h.oauth.try_next().is_none());
    h.stop().await;
}

fn fcm_error(status: u16, name: &str, code: &str, field: Option<&str>) -> String {
    let mut details = vec![json!({
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": code,
    })];
    if let Some(field) = field {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": field, "description": "invalid" }],
        }));
    }
    json!({ "error": { "code": status, "message": "refused", "status": name, "details": details } })
        .to_string()
}

#[tokio::test]
async fn fcm_unregistered_and_invalid_tokens_are_removed() {
    let mut h = Harness::start(|_| {}).await;
    h.outbox.put(job(1, "a", fcm_target("gone"), 0));
    h.oauth.next().await.answer(
        200,
        &json!({ "access_token": "ya29.x", "expires_in": 3600 }).to_string(),
    );
    let cases = [
        (404, "NOT_FOUND", "UNREGISTERED", None, "rejected"),
        (
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            Some("message.token"),
            "rejected",
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            Some("message.android.ttl"),
            "done",
        ),
        (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", None, "retry"),
    ];
    for (i, (status, name, code, field, want)) in cases.into_iter().enumerate() {
        if i > 0 {
            h.outbox.put(job(1, "a", fcm_target("gone"), 0));
        }
        let x = h.fcm.next().await;
        x.answer_with(
            status,
            &[("retry-after", "30")],
            &fcm_error(status, name, code, field),
        );
        let got = match h.events.next().await {
            Event::Rejected(_) => "rejected",
            Event::Done(_) => "done",
            Event::Retry { .. } => "retry",
        };
        assert_eq!(got, want, "{code} {field:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn the_webhook_is_signed_over_timestamp_and_body() {
    // An HTTP/1.1-only receiver: the webhook client must not insist on h2.
    let mut h = Harness::start_offering(Offer::Http1Only, |_| {}).await;
    let mut j = job(9, "web-1", PushTarget::Webhook, 0);
    j.badge = 2;
    h.outbox.put(j);
    let x = h.webhook.next().await;
    assert_eq!(x.seen.version, http::Version::HTTP_11);
    assert_eq!(x.seen.method, "POST");
    assert_eq!(x.seen.path, "/hooks/pigeon?v=1");
    assert_eq!(x.seen.header("host"), h.webhook.addr.to_string());
    assert_eq!(x.seen.header("content-type"), "application/json");
    let timestamp = x.seen.header("x-pigeon-timestamp").to_owned();
    let ts: u64 = timestamp.parse().unwrap();
    assert!(ts.abs_diff(wall_secs()) < 600);
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&x.seen.body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let signature = x.seen.header("x-pigeon-signature");
    let hex = signature.strip_prefix("v1=").expect("v1= prefix");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    ring::hmac::verify(&key, &signed, &bytes).expect("the HMAC verifies");
    let body: Value = x.seen.json();
    assert_eq!(
        body,
        json!({
            "user_id": 9,
            "device_id": "web-1",
            "title": "New message",
            "badge": 2,
            "peer_user_id": 7,
            "collapse_id": "p7",
            "max_seq": 11,
        })
    );
    x.answer(204, "");
    expect_done(h.events.next().await);

    // 410 Gone: the device's registration goes. (Another device: web-1
    // just got a push, so its next one waits out the coalesce window.)
    h.outbox.put(job(9, "web-2", PushTarget::Webhook, 0));
    h.webhook.next().await.answer(410, "");
    assert!(matches!(h.events.next().await, Event::Rejected(_)));
    h.stop().await;
}

#[tokio::test]
async fn an_online_device_gets_no_push() {
    let mut h = Harness::start(|_| {}).await;
    h.outbox.set_online(1, "phone");
    h.outbox.put(job(1, "phone", apns_target(false), 0));
    expect_done(h.events.next().await);
    // The next device's push is the first request APNs sees.
    h.outbox.put(job(2, "tablet", apns_target(false), 0));
    let x = h.apns.next().await;
    x.answer(200, "");
    let done = expect_done(h.events.next().await);
    assert_eq!(done.user, 2);
    assert_eq!(h.metrics.push.skips("online"), 1);
    assert_eq!(h.metrics.push.attempts("apns", "delivered"), 1);
    h.stop().await;
}

#[tokio::test]
async fn pushes_to_one_device_are_coalesced_to_one_per_window() {
    let mut h = Harness::start(|p| p.coalesce_window = Duration::from_secs(1)).await;
    h.outbox.put(job(1, "phone", apns_target(false), 0));
    let x = h.apns.next().await;
    let first = x.seen.at;
    assert_eq!(x.seen.json()["aps"]["badge"], 1);
    x.answer(200, "");
    expect_done(h.events.next().await);
    // Two more messages right away: one push when the window ends, with
    // the latest badge.
    for badge in [2, 3] {
        let mut j = job(1, "phone", apns_target(false), 0);
        j.badge = badge;
        j.generation = badge;
        h.outbox.put(j);
    }
    let (deferred, not_before, attempts) = expect_retry(h.events.next().await);
    assert_eq!(attempts, 0, "deferring is not a failed attempt");
    assert!(not_before > deferred.not_before_ms);
    let x = h.apns.next().await;
    assert!(x.seen.at - first >= Duration::from_secs(1));
    assert_eq!(x.seen.json()["aps"]["badge"], 3);
    x.answer(200, "");
    expect_done(h.events.next().await);
    assert!(h.outbox.pending().is_empty());
    assert!(h.apns.try_next().is_none());
    h.stop().await;
}

#[tokio::test]
async fn concurrency_is_bounded_per_provider() {
    let mut h = Harness::start(|p| p.concurrency = 2).await;
    for user in 1..=4 {
        h.outbox.put(job(user, "phone", apns_target(false), 0));
    }
    // Put after the APNs jobs, so it is dispatched after them; it is not
    // held up by APNs being full.
    h.outbox.put(job(9, "web", PushTarget::Webhook, 0));
    let a = h.apns.next().await;
    let b = h.apns.next().await;
    h.webhook.next().await.answer(200, "");
    assert_eq!(expect_done(h.events.next().await).user, 9);
    // Every APNs job was looked at before the webhook's was started, so
    // without the bound all four would be in flight by now.
    assert_eq!(h.metrics.push.in_flight("apns"), 2);
    assert!(h.apns.try_next().is_none(), "a third request went out");
    a.answer(200, "");
    expect_done(h.events.next().await);
    let c = h.apns.next().await;
    b.answer(200, "");
    c.answer(200, "");
    expect_done(h.events.next().await);
    expect_done(h.events.next().await);
    h.apns.next().await.answer(200, "");
    expect_done(h.events.next().await);
    assert!(h.outbox.pending().is_empty());
    assert_eq!(h.metrics.push.attempts("apns", "delivered"), 4);
    h.stop().await;
}
