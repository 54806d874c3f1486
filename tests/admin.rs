//! The admin endpoint over a real loopback socket: every admin operation
//! and its effect on real TLS clients, refusal of callers without the
//! token, the metrics scrape, the probes, and backup then restore.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use pigeon_protocol::pb::login_request::Credential;
use pigeon_protocol::{pb, Body, ErrorCode, KickReason, Platform};
use pigeon_server::admin::client::{AdminClient, AdminResponse};
use pigeon_server::config::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NEW_PASSWORD: &str = "a brand new password";

fn with_admin(config: &mut Config) {
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
}

async fn admin_server() -> TestServer {
    TestServer::start(with_admin).await
}

async fn call(admin: &AdminClient, method: &str, path: &str, body: Option<Value>) -> AdminResponse {
    admin
        .call(method, path, body.as_ref())
        .await
        .expect("the admin endpoint answers")
}

/// A successful call's JSON.
async fn ok(admin: &AdminClient, method: &str, path: &str, body: Option<Value>) -> Value {
    let answer = call(admin, method, path, body).await;
    assert!(
        (200..300).contains(&answer.status),
        "{method} {path}: {} {}",
        answer.status,
        answer.text()
    );
    answer.json().unwrap()
}

async fn login_with(
    server: &TestServer,
    name: &str,
    device: &str,
    platform: Platform,
    credential: Credential,
) -> (RawClient, Body) {
    let mut client = server.raw().await;
    let answer = client
        .request(login_body(name, device, platform, credential))
        .await;
    (client, answer)
}

fn password(p: &str) -> Credential {
    Credential::Password(p.into())
}

/// Wait for the kick (the harness bounds the wait) and check it came fast.
async fn expect_revoked_kick(client: &mut RawClient, since: Instant) {
    match client.next_push().await {
        Some(Body::Kick(k)) => assert_eq!(k.reason, KickReason::Revoked as i32, "{k:?}"),
        other => panic!("expected a REVOKED kick, got {other:?}"),
    }
    assert!(
        since.elapsed() < Duration::from_secs(1),
        "kicked only after {:?}",
        since.elapsed()
    );
    assert!(client.closed().await.is_empty(), "closed after the kick");
}

#[tokio::test]
async fn users_added_by_the_admin_log_in_even_with_registration_off() {
    let server = TestServer::start(|c| {
        with_admin(c);
        c.accounts.registration_enabled = false;
    })
    .await;
    let admin = server.admin_client();
    let added = ok(
        &admin,
        "POST",
        "/v1/users",
        Some(json!({ "username": "carol", "password": PASSWORD })),
    )
    .await;
    assert_eq!(
        (added["id"].as_u64(), added["username"].as_str()),
        (Some(1), Some("carol"))
    );
    assert!(
        added.get("password_hash").is_none(),
        "the hash never leaves the server"
    );

    let (_carol, answer) = login_with(
        &server,
        "carol",
        "phone",
        Platform::Android,
        password(PASSWORD),
    )
    .await;
    assert!(matches!(answer, Body::LoggedIn(_)), "{answer:?}");

    let again = json!({ "username": "carol", "password": PASSWORD });
    assert_eq!(
        call(&admin, "POST", "/v1/users", Some(again)).await.status,
        409
    );
    let short = json!({ "username": "dave", "password": "short" });
    assert_eq!(
        call(&admin, "POST", "/v1/users", Some(short)).await.status,
        400
    );

    ok(
        &admin,
        "POST",
        "/v1/users",
        Some(json!({ "username": "dave", "password": PASSWORD })),
    )
    .await;
    let page = ok(&admin, "GET", "/v1/users?limit=1", None).await;
    assert_eq!(page["users"][0]["username"], "carol");
    assert_eq!(page["next_after"], 1);
    let rest = ok(&admin, "GET", "/v1/users?after=1", None).await;
    assert_eq!(rest["users"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["users"][0]["username"], "dave");

    let shown = ok(&admin, "GET", "/v1/users/carol", None).await;
    assert_eq!(shown["user"]["disabled"], false);
    assert_eq!(shown["devices"][0]["device_id"], "phone");
    assert_eq!(shown["devices"][0]["platform"], "android");
    assert_eq!(shown["devices"][0]["online"], true);
    assert_eq!(
        call(&admin, "GET", "/v1/users/nobody", None).await.status,
        404
    );
}

#[tokio::test]
async fn disabling_a_user_kicks_live_sessions_and_refuses_logins_until_enabled() {
    let server = admin_server().await;
    let admin = server.admin_client();
    let (mut alice, login) = server.user("alice", "phone").await;
    let started = Instant::now();
    let disabled = ok(&admin, "POST", "/v1/users/alice/disable", None).await;
    assert_eq!(disabled["disabled"], true);
    expect_revoked_kick(&mut alice, started).await;

    let (_, answer) =
        login_with(&server, "alice", "phone", Platform::Ios, password(PASSWORD)).await;
    expect_error(&answer, ErrorCode::AuthFailed);
    let token = Credential::Token(login.token.clone());
    let (_, answer) = login_with(&server, "", "phone", Platform::Ios, token).await;
    expect_error(&answer, ErrorCode::AuthFailed);
    assert_eq!(
        ok(&admin, "GET", "/v1/users/alice", None).await["user"]["disabled"],
        true
    );

    ok(&admin, "POST", "/v1/users/alice/enable", None).await;
    let (_, answer) =
        login_with(&server, "alice", "phone", Platform::Ios, password(PASSWORD)).await;
    assert!(matches!(answer, Body::LoggedIn(_)), "{answer:?}");
}

#[tokio::test]
async fn a_password_reset_revokes_tokens_and_only_the_new_password_works() {
    let server = admin_server().await;
    let admin = server.admin_client();
    let (mut alice, login) = server.user("alice", "phone").await;
    let started = Instant::now();
    let reset = ok(
        &admin,
        "POST",
        "/v1/users/alice/password",
        Some(json!({ "password": NEW_PASSWORD })),
    )
    .await;
    assert_eq!(reset["tokens_revoked"], 1);
    expect_revoked_kick(&mut alice, started).await;

    let (_, answer) =
        login_with(&server, "alice", "phone", Platform::Ios, password(PASSWORD)).await;
    expect_error(&answer, ErrorCode::AuthFailed);
    let token = Credential::Token(login.token.clone());
    let (_, answer) = login_with(&server, "", "phone", Platform::Ios, token).await;
    expect_error(&answer, ErrorCode::AuthFailed);
    let (_, answer) = login_with(
        &server,
        "alice",
        "phone",
        Platform::Ios,
        password(NEW_PASSWORD),
    )
    .await;
    assert!(matches!(answer, Body::LoggedIn(_)), "{answer:?}");
}

#[tokio::test]
async fn revoking_a_device_kicks_it_and_voids_its_token_while_other_devices_stay() {
    let server = admin_server().await;
    let admin = server.admin_client();
    let (mut phone, phone_login) = server.user("alice", "phone").await;
    let (mut laptop, answer) = login_with(
        &server,
        "alice",
        "laptop",
        Platform::Desktop,
        password(PASSWORD),
    )
    .await;
    let Body::LoggedIn(laptop_login) = answer else {
        panic!("laptop login: {answer:?}")
    };

    let devices = ok(&admin, "GET", "/v1/users/alice/devices", None).await;
    let listed: Vec<(&str, bool)> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap(),
                d["online"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("laptop", true), ("phone", true)]);

    let started = Instant::now();
    let revoked = ok(&admin, "POST", "/v1/users/alice/devices/phone/revoke", None).await;
    assert_eq!(
        (
            revoked["tokens_revoked"].as_u64(),
            revoked["kicked"].as_bool()
        ),
        (Some(1), Some(true))
    );
    expect_revoked_kick(&mut phone, started).await;
    let token = Credential::Token(phone_login.token.clone());
    let (_, answer) = login_with(&server, "", "phone", Platform::Ios, token).await;
    expect_error(&answer, ErrorCode::AuthFailed);

    // The laptop's session and token are untouched.
    assert!(matches!(
        laptop.request(Body::Ping(pb::Ping::default())).await,
        Body::Pong(_)
    ));
    let token = Credential::Token(laptop_login.token);
    let (_, answer) = login_with(&server, "", "laptop", Platform::Desktop, token).await;
    assert!(matches!(answer, Body::LoggedIn(_)), "{answer:?}");
    let bad = call(
        &admin,
        "POST",
        "/v1/users/alice/devices/bad%20id/revoke",
        None,
    )
    .await;
    assert_eq!(bad.status, 400);
}

/// One request over a plain socket, with whatever headers the test wants.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    answer
}

#[tokio::test]
async fn callers_without_the_token_are_refused_and_nothing_changes() {
    let server = admin_server().await;
    let admin_addr = server.admin.unwrap();
    server.user("alice", "phone").await;
    let wrong = AdminClient::new(admin_addr, "0".repeat(64));
    let add = json!({ "username": "mallory", "password": PASSWORD });
    for (method, path, body) in [
        ("POST", "/v1/users", Some(add.clone())),
        ("POST", "/v1/users/alice/disable", None),
        (
            "POST",
            "/v1/users/alice/password",
            Some(json!({ "password": NEW_PASSWORD })),
        ),
        (
            "POST",
            "/v1/backup",
            Some(json!({ "to": "/tmp/pigeon-stolen" })),
        ),
        ("POST", "/v1/compact", None),
        ("GET", "/v1/users", None),
        ("GET", "/metrics", None),
    ] {
        assert_eq!(
            call(&wrong, method, path, body).await.status,
            401,
            "{method} {path}"
        );
    }
    let body = add.to_string();
    let no_token = format!(
        "POST /v1/users HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_http(admin_addr, &no_token).await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
    let basic = "GET /v1/users HTTP/1.1\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n";
    assert!(raw_http(admin_addr, basic)
        .await
        .starts_with("HTTP/1.1 401 "));

    // Nothing changed: no new user, alice enabled, her password still works.
    let admin = server.admin_client();
    let users = ok(&admin, "GET", "/v1/users", None).await;
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice"]);
    assert_eq!(
        ok(&admin, "GET", "/v1/users/alice", None).await["user"]["disabled"],
        false
    );
    let (_, answer) = login_with(&server, "alice", "tab", Platform::Web, password(PASSWORD)).await;
    assert!(matches!(answer, Body::LoggedIn(_)), "{answer:?}");
    assert!(!std::path::Path::new("/tmp/pigeon-stolen").exists());

    // Garbage and oversized requests get an error status, not a hang.
    assert!(raw_http(admin_addr, "BLAH\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400 "));
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
    assert!(raw_http(admin_addr, &huge)
        .await
        .starts_with("HTTP/1.1 431 "));
}

/// A scrape: sample (name with labels) → value, after checking that every
/// sample's metric was declared with # TYPE and every line parses.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(base), "no # TYPE for {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

async fn scrape(admin: &AdminClient) -> HashMap<String, f64> {
    let answer = call(admin, "GET", "/metrics", None).await;
    assert_eq!(answer.status, 200);
    parse_metrics(&answer.text())
}

/// Buckets never fall, +Inf equals the count, the sum is not negative.
fn check_histogram(samples: &HashMap<String, f64>, name: &str) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(series, value)| {
            let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name} has buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} buckets are cumulative"
    );
    let count = samples[&format!("{name}_count")];
    assert_eq!(
        buckets.last().map(|b| (b.0, b.1)),
        Some((f64::INFINITY, count))
    );
    assert!(samples[&format!("{name}_sum")] >= 0.0);
    count
}

#[tokio::test]
async fn entries_sent_inside_notifies_are_counted() {
    let server = admin_server().await;
    let admin = server.admin_client();
    let before = scrape(&admin).await;
    let mut carol = server.raw().await;
    carol.register("carol").await;
    carol.login_inline("carol", "c1", Platform::Ios).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    alice.send_ok("carol", "m1", "inline").await;
    match carol.next_push().await {
        Some(Body::Notify(n)) => assert_eq!(n.messages.len(), 1),
        other => panic!("expected a notify, got {other:?}"),
    }
    let after = scrape(&admin).await;
    let key = "pigeon_notify_inline_messages_total";
    let moved = after[key] - before.get(key).copied().unwrap_or(0.0);
    // Alice's own notify is bare: she did not ask.
    assert_eq!(moved, 1.0);
}

#[tokio::test]
async fn metrics_are_scraped_and_counters_move_with_traffic() {
    let server = admin_server().await;
    let admin = server.admin_client();
    let before = scrape(&admin).await;
    check_histogram(&before, "pigeon_commit_batch_ops");
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);

    let (mut alice, _) = server.user("alice", "a1").await;
    let (mut bob, _) = server.user("bob", "b1").await;
    for i in 0..3 {
        alice.send_ok("bob", &format!("m{i}"), "hello").await;
    }
    let page = bob.pull(0, 10).await;
    assert_eq!(page.messages.len(), 3);
    assert!(matches!(bob.ack(3).await, Body::Acked(_)));
    let (_, answer) = login_with(
        &server,
        "bob",
        "b2",
        Platform::Web,
        password("wrong password"),
    )
    .await;
    expect_error(&answer, ErrorCode::AuthFailed);

    let after = scrape(&admin).await;
    let moved = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(moved("pigeon_requests_total{kind=\"send\"}"), 3.0);
    assert_eq!(moved("pigeon_requests_total{kind=\"pull\"}"), 1.0);
    assert_eq!(moved("pigeon_requests_total{kind=\"ack\"}"), 1.0);
    assert_eq!(moved("pigeon_logins_total{result=\"ok\"}"), 2.0);
    assert_eq!(moved("pigeon_logins_total{result=\"failed\"}"), 1.0);
    assert_eq!(moved("pigeon_errors_total{code=\"auth_failed\"}"), 1.0);
    assert!(moved("pigeon_notifies_total") >= 1.0);
    assert_eq!(moved("pigeon_stored_sends_total"), 3.0);
    // One sender, one send at a time: each batch was small and lingered.
    assert!(moved("pigeon_commit_lingers_total") >= 3.0);
    assert!(moved("pigeon_bytes_in_total") > 3.0 * 5.0);
    assert!(moved("pigeon_bytes_out_total") > 0.0);
    assert_eq!(moved("pigeon_connections_accepted_total"), 3.0);
    assert_eq!(get(&after, "pigeon_sessions{platform=\"ios\"}"), 2.0);
    assert_eq!(get(&after, "pigeon_sessions{platform=\"web\"}"), 0.0);
    assert_eq!(get(&after, "pigeon_ready"), 1.0);
    // The write-ahead log (values: src/store/sled_store/tests.rs). A fresh
    // store replayed nothing.
    for name in [
        "pigeon_wal_replayed_records",
        "pigeon_wal_checkpoints_total",
        "pigeon_wal_checkpoint_seconds_total",
        "pigeon_wal_segment_bytes",
    ] {
        assert!(after.contains_key(name), "{name} is scraped");
    }
    assert_eq!(get(&after, "pigeon_wal_replayed_records"), 0.0);
    // The test's data directory is on the machine's disk (ext4), where the
    // log writes with O_DIRECT.
    assert_eq!(get(&after, "pigeon_wal_direct_io"), 1.0);
    // Every durable batch works out, logs and applies: each phase took time.
    for phase in ["work", "log", "apply"] {
        let series = format!("pigeon_commit_phase_seconds_total{{phase=\"{phase}\"}}");
        assert!(moved(&series) > 0.0, "{series} did not move");
    }
    assert!(
        check_histogram(&after, "pigeon_commit_batch_ops")
            > check_histogram(&before, "pigeon_commit_batch_ops")
    );
    assert!(check_histogram(&after, "pigeon_commit_flush_seconds") >= 1.0);
    assert!(get(&after, "pigeon_store_disk_bytes") > 0.0);

    let stats = ok(&admin, "GET", "/v1/stats?top=5", None).await;
    assert_eq!(stats["sessions_by_platform"]["ios"], 2);
    assert_eq!(stats["queues"]["complete"], true);
    // Alice's own copies are unacknowledged (her device never pulled).
    assert_eq!(stats["queues"]["deepest"][0]["username"], "alice");
    assert_eq!(stats["queues"]["deepest"][0]["depth"], 3);
}

#[tokio::test]
async fn health_is_unauthenticated_and_readiness_follows_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    with_admin(&mut config);
    let mut server = pigeon_server::Server::open(config).unwrap();
    let listener = server.bind().unwrap();
    let admin_addr = server.start_admin().await.unwrap().unwrap();
    // The admin listener is up before the public one serves: not ready yet.
    let answer = raw_http(admin_addr, "GET /readyz HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("not accepting"), "{answer}");
    let answer = raw_http(admin_addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server.serve(listener, shutdown.clone()));
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = raw_http(admin_addr, "GET /readyz HTTP/1.1\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {answer}");
        tokio::task::yield_now().await;
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    // The admin listener stops with the server.
    assert!(tokio::net::TcpStream::connect(admin_addr).await.is_err());
}

/// (seq, text) of every message in a user's queue, via a fresh login.
async fn queue_of(server: &TestServer, name: &str, device: &str) -> Vec<(u64, String)> {
    let mut client = server.raw().await;
    client.login(name, device, Platform::Ios).await;
    let page = client.pull(0, 1000).await;
    assert!(!page.has_more);
    page.messages
        .iter()
        .map(|m| (m.seq, String::from_utf8_lossy(&m.content).into_owned()))
        .collect()
}

#[tokio::test]
async fn a_backup_while_running_restores_with_every_message_intact() {
    let server = admin_server().await;
    let admin = server.admin_client();
    let (mut alice, _) = server.user("alice", "a1").await;
    let mut bob = server.raw().await;
    bob.register("bob").await;
    let texts: Vec<String> = (1..=25).map(|i| format!("message {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        alice.send_ok("bob", &format!("c{i}"), text).await;
    }
    let target = tempfile::tempdir().unwrap();
    let backup_dir = target.path().join("backup");
    let report = ok(
        &admin,
        "POST",
        "/v1/backup",
        Some(json!({ "to": backup_dir })),
    )
    .await;
    assert!(report["records"].as_u64().unwrap() > 50, "{report}");
    let again = call(
        &admin,
        "POST",
        "/v1/backup",
        Some(json!({ "to": backup_dir })),
    )
    .await;
    assert_eq!(again.status, 409);
    let relative = call(
        &admin,
        "POST",
        "/v1/backup",
        Some(json!({ "to": "rel/dir" })),
    )
    .await;
    assert_eq!(relative.status, 400);
    // Sent after the backup: must not be in it.
    alice.send_ok("bob", "late", "after the backup").await;
    drop(alice);
    server.stop().await;

    let mut config = test_config(&backup_dir);
    with_admin(&mut config);
    let restored = TestServer::start_with(config).await;
    let expected: Vec<(u64, String)> = (1u64..).zip(texts.iter().cloned()).collect();
    assert_eq!(queue_of(&restored, "bob", "b1").await, expected);
    assert_eq!(queue_of(&restored, "alice", "a2").await, expected);
    // The restored server made its own admin token.
    assert!(
        restored
            .admin_client()
            .call("GET", "/v1/users", None)
            .await
            .unwrap()
            .status
            == 200
    );
    restored.stop().await;
}

fn pigeond(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pigeond"))
        .args(args)
        .env_remove("PIGEON_DATA_DIR")
        .env_remove("PIGEON_LISTEN")
        .output()
        .expect("pigeond runs")
}

#[tokio::test]
async fn the_pigeond_binary_backs_up_a_stopped_server_and_refuses_a_running_one() {
    let server = admin_server().await;
    let data = server.config.data_dir.clone();
    let data_arg = data.to_str().unwrap().to_owned();
    let (mut alice, _) = server.user("alice", "a1").await;
    let mut bob = server.raw().await;
    bob.register("bob").await;
    let texts: Vec<String> = (1..=10).map(|i| format!("offline {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        alice.send_ok("bob", &format!("c{i}"), text).await;
    }
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first");
    let first_arg = first.to_str().unwrap().to_owned();

    // While it runs, a direct copy is refused: the data directory is locked.
    let running = tokio::task::spawn_blocking({
        let (d, f) = (data_arg.clone(), first_arg.clone());
        move || pigeond(&["backup", "--offline", "--data", &d, "--to", &f])
    })
    .await
    .unwrap();
    assert!(!running.status.success());
    let stderr = String::from_utf8_lossy(&running.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!first.exists());

    drop(alice);
    drop(bob);
    let dir = server.stop().await;

    // Nothing listens on the admin address any more: it falls back to a
    // direct copy. Then an explicit --offline copy too.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let fallback = pigeond(&[
        "backup",
        "--data",
        &data_arg,
        "--admin",
        &closed_addr,
        "--to",
        &first_arg,
    ]);
    assert!(
        fallback.status.success(),
        "{}",
        String::from_utf8_lossy(&fallback.stderr)
    );
    let report: Value = serde_json::from_slice(&fallback.stdout).unwrap();
    assert_eq!(report["mode"], "offline");
    let second = out.path().join("second");
    let explicit = pigeond(&[
        "backup",
        "--offline",
        "--data",
        &data_arg,
        "--to",
        second.to_str().unwrap(),
    ]);
    assert!(
        explicit.status.success(),
        "{}",
        String::from_utf8_lossy(&explicit.stderr)
    );

    let expected: Vec<(u64, String)> = (1u64..).zip(texts.iter().cloned()).collect();
    for copy in [first, second] {
        let restored = TestServer::start_with(test_config(&copy)).await;
        assert_eq!(queue_of(&restored, "bob", "b1").await, expected);
        restored.stop().await;
    }
    drop(dir);
}

#[tokio::test]
async fn the_admin_command_line_adds_shows_and_disables_users() {
    let server = admin_server().await;
    let data = server.config.data_dir.to_str().unwrap().to_owned();
    let admin = server.admin.unwrap().to_string();
    let run = move |args: Vec<String>, password: Option<&'static str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pigeond"));
        command
            .arg("admin")
            .args(["--data", &data, "--admin", &admin])
            .args(args);
        command.env_remove("PIGEON_PASSWORD");
        if let Some(p) = password {
            command.env("PIGEON_PASSWORD", p);
        }
        command.stdin(std::process::Stdio::null());
        command.output().expect("pigeond runs")
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let added = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(args(&["users", "add", "erin"]), Some(PASSWORD))
    })
    .await
    .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let shown: Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(shown["username"], "erin");

    let (_erin, answer) =
        login_with(&server, "erin", "phone", Platform::Cli, password(PASSWORD)).await;
    assert!(matches!(answer, Body::LoggedIn(_)), "{answer:?}");

    let outputs = tokio::task::spawn_blocking(move || {
        (
            run(args(&["users", "add", "frank"]), None),
            run(args(&["users", "disable", "erin"]), None),
            run(args(&["users", "show", "erin"]), None),
            run(args(&["users", "show", "ghost"]), None),
        )
    })
    .await
    .unwrap();
    let (no_password, disabled, shown, missing) = outputs;
    assert!(!no_password.status.success(), "no password, no user");
    assert!(disabled.status.success());
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["user"]["disabled"], true);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such user"));
}
