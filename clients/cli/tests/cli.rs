//! The `pigeon` binary against a real pigeond (in-process, TLS on an
//! ephemeral loopback port, a temporary sled directory): the CLI contract's
//! commands, `--json` output, and exit codes for the failures a person or a
//! script meets first; groups (small and large, through `pull` and
//! `listen`), conversations and read positions, recall, devices, and push
//! tokens.

use std::path::{Path, PathBuf};
use std::process::Output;

use pigeon_server::config::Config;
use pigeon_server::Server;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

struct Running {
    addr: String,
    data: tempfile::TempDir,
    served: tokio::task::JoinHandle<()>,
    _stop: tokio_util::sync::DropGuard,
}

impl Running {
    /// Shut the server down and wait until it has let go of its store;
    /// returns the data directory, for a look at what it stored.
    async fn stop(self) -> tempfile::TempDir {
        let Running {
            data,
            served,
            _stop,
            ..
        } = self;
        drop(_stop);
        served.await.expect("the server stops cleanly");
        data
    }
}

async fn start_server() -> Running {
    start_server_with(|_| {}).await
}

async fn start_server_with(tune: impl FnOnce(&mut Config)) -> Running {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        ..Config::default()
    };
    tune(&mut config);
    // Parallel tests must not fight over the default admin port.
    config.admin.listen = None;
    let server = Server::open(config).unwrap();
    let listener = server.bind().unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let served = tokio::spawn(server.serve(listener, stop.clone()));
    Running {
        addr,
        data,
        served,
        _stop: stop.drop_guard(),
    }
}

/// Run `pigeon` with a profile, the dev CA and a password in the environment.
async fn pigeon(server: &str, profile: &Path, password: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("--server")
        .arg(server)
        .arg("--ca")
        .arg(repo_file("certs/ca.pem"))
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("PIGEON_PASSWORD", password)
        .env_remove("PIGEON_SERVER")
        .env_remove("PIGEON_CA")
        .env_remove("PIGEON_PROFILE")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the pigeon binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn register_send_and_pull_json_round_trip() {
    let server = start_server().await;
    let alice = tempfile::tempdir().unwrap();
    let bob = tempfile::tempdir().unwrap();
    let (a, b) = (alice.path(), bob.path());
    assert_ok(&pigeon(&server.addr, a, "alice password", &["register", "alice"]).await);
    assert_ok(&pigeon(&server.addr, b, "bob password", &["register", "bob"]).await);
    assert_ok(&pigeon(&server.addr, a, "alice password", &["login", "alice"]).await);
    assert_ok(&pigeon(&server.addr, b, "bob password", &["login", "bob"]).await);

    let sent = pigeon(&server.addr, a, "", &["send", "bob", "hello bob"]).await;
    assert_ok(&sent);
    assert!(
        !stdout(&sent).trim().is_empty(),
        "send prints the message id"
    );
    pigeon(&server.addr, a, "", &["send", "bob", "second"]).await;

    let pulled = pigeon(&server.addr, b, "", &["--json", "pull"]).await;
    assert_ok(&pulled);
    let lines: Vec<serde_json::Value> = stdout(&pulled)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["text"], "hello bob");
    assert_eq!(lines[0]["from"], "alice");
    assert_eq!(lines[0]["to"], "bob");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[1]["text"], "second");
    for key in ["msg_id", "ts"] {
        assert!(lines[0].get(key).is_some(), "missing {key}: {}", lines[0]);
    }
    // Pulled messages were acked: a second pull prints nothing.
    let again = pigeon(&server.addr, b, "", &["--json", "pull"]).await;
    assert_ok(&again);
    assert_eq!(stdout(&again).trim(), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_have_clear_messages_and_distinct_exit_codes() {
    let server = start_server().await;
    let alice = tempfile::tempdir().unwrap();
    let a = alice.path();
    assert_ok(&pigeon(&server.addr, a, "alice password", &["register", "alice"]).await);

    let wrong = pigeon(&server.addr, a, "not her password", &["login", "alice"]).await;
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("AUTH_FAILED"), "{}", stderr(&wrong));

    let not_logged_in = pigeon(&server.addr, a, "", &["send", "bob", "hi"]).await;
    assert_eq!(not_logged_in.status.code(), Some(4));
    assert!(
        stderr(&not_logged_in).contains("not logged in"),
        "{}",
        stderr(&not_logged_in)
    );

    assert_ok(&pigeon(&server.addr, a, "alice password", &["login", "alice"]).await);
    let unknown = pigeon(&server.addr, a, "", &["send", "nobody", "hi"]).await;
    assert_eq!(unknown.status.code(), Some(5));
    assert!(
        stderr(&unknown).contains("UNKNOWN_USER"),
        "{}",
        stderr(&unknown)
    );

    // A port nobody listens on: bind one, learn it, close it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let down = pigeon(&free, a, "", &["pull"]).await;
    assert_eq!(down.status.code(), Some(3));
    assert!(
        stderr(&down).contains("cannot connect"),
        "{}",
        stderr(&down)
    );

    // The server's own certificate is not a CA that signs it.
    let bad_ca = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["--server", &server.addr, "--profile"])
        .arg(a)
        .arg("--ca")
        .arg(repo_file("certs/server.pem"))
        .arg("pull")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(bad_ca.status.code(), Some(3));
    assert!(
        stderr(&bad_ca).contains("not trusted"),
        "{}",
        stderr(&bad_ca)
    );
}

/// Register and log in each user, each with its own profile directory.
async fn users(server: &str, names: &[&str]) -> Vec<tempfile::TempDir> {
    let mut dirs = Vec::new();
    for name in names {
        let dir = tempfile::tempdir().unwrap();
        let password = format!("{name} password");
        assert_ok(&pigeon(server, dir.path(), &password, &["register", name]).await);
        assert_ok(&pigeon(server, dir.path(), &password, &["login", name]).await);
        dirs.push(dir);
    }
    dirs
}

/// Run a command that must succeed and return its stdout lines as JSON.
async fn json_lines(server: &str, profile: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = pigeon(server, profile, "", &all).await;
    assert_ok(&out);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[track_caller]
fn assert_refused(o: &Output, code: &str) {
    assert_eq!(
        o.status.code(),
        Some(5),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(stderr(o).contains(code), "{}", stderr(o));
}

fn of_event<'a>(lines: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_from_create_to_dissolve_with_roles_and_refusals() {
    let server = start_server().await;
    let s = server.addr.as_str();
    let dirs = users(s, &["alice", "bob", "carol"]).await;
    let (a, b, c) = (dirs[0].path(), dirs[1].path(), dirs[2].path());

    let created = pigeon(
        s,
        a,
        "",
        &["group", "create", "team", "--members", "bob,carol"],
    )
    .await;
    assert_ok(&created);
    let group: u64 = stdout(&created)
        .trim()
        .parse()
        .expect("create prints the group id");
    let g = group.to_string();

    let listed = json_lines(s, b, &["group", "list"]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["group"], group);
    assert_eq!(listed[0]["name"], "team");
    assert_eq!(listed[0]["role"], "member");
    assert_eq!(listed[0]["member_count"], 3);

    // By name as well as by id.
    let members = json_lines(s, b, &["group", "members", "team"]).await;
    let names: Vec<_> = members.iter().map(|m| m["username"].clone()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(members[0]["role"], "owner");

    assert_ok(&pigeon(s, a, "", &["send", "--group", "team", "hello team"]).await);
    let pulled = json_lines(s, b, &["pull"]).await;
    let events = of_event(&pulled, "group_event");
    assert_eq!(events[0]["type"], "CREATED", "{pulled:?}");
    assert_eq!(events[0]["group"], group);
    let messages = of_event(&pulled, "message");
    assert_eq!(messages.len(), 1, "{pulled:?}");
    assert_eq!(messages[0]["group"], group);
    assert_eq!(messages[0]["from"], "alice");
    assert_eq!(messages[0]["text"], "hello team");

    // A plain member may not remove; an admin may.
    assert_refused(
        &pigeon(s, b, "", &["group", "remove", &g, "carol"]).await,
        "PERMISSION_DENIED",
    );
    assert_ok(&pigeon(s, a, "", &["group", "role", &g, "bob", "admin"]).await);
    assert_ok(&pigeon(s, b, "", &["group", "remove", &g, "carol"]).await);
    let carol = json_lines(s, c, &["pull"]).await;
    let removed = of_event(&carol, "group_event")
        .into_iter()
        .find(|e| e["type"] == "REMOVED")
        .unwrap_or_else(|| panic!("no REMOVED event: {carol:?}"));
    assert_eq!(removed["text"], "you were removed by bob");
    assert_refused(
        &pigeon(s, c, "", &["send", "--group", &g, "still here?"]).await,
        "NOT_A_MEMBER",
    );
    assert_refused(
        &pigeon(s, a, "", &["group", "add", &g, "nobody"]).await,
        "UNKNOWN_USER",
    );

    assert_ok(&pigeon(s, b, "", &["group", "leave", &g]).await);
    let alice = pigeon(s, a, "", &["pull"]).await;
    assert_ok(&alice);
    let text = stdout(&alice);
    assert!(text.contains("carol was removed by bob"), "{text}");
    assert!(text.contains("bob left"), "{text}");
    assert!(text.contains("bob is now admin (set by you)"), "{text}");
    assert!(text.contains("alice -> team (group"), "{text}");

    assert_ok(&pigeon(s, a, "", &["group", "dissolve", &g]).await);
    assert_refused(
        &pigeon(s, a, "", &["send", "--group", &g, "anyone?"]).await,
        "UNKNOWN_GROUP",
    );
    let unknown_name = pigeon(s, a, "", &["send", "--group", "no-such-group", "hi"]).await;
    assert_eq!(
        unknown_name.status.code(),
        Some(2),
        "{}",
        stderr(&unknown_name)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_read_positions_and_recall() {
    let server = start_server().await;
    let s = server.addr.as_str();
    let dirs = users(s, &["alice", "bob"]).await;
    let (a, b) = (dirs[0].path(), dirs[1].path());
    let first = json_lines(s, a, &["send", "bob", "one"]).await;
    let msg_id = first[0]["msg_id"].as_u64().unwrap();
    assert_ok(&pigeon(s, a, "", &["send", "bob", "two"]).await);

    let list = json_lines(s, b, &["conversations"]).await;
    let chats = of_event(&list, "conversation");
    assert_eq!(chats.len(), 1, "{list:?}");
    assert_eq!(chats[0]["peer"], "alice");
    assert_eq!(chats[0]["unread"], 2);
    assert_eq!(chats[0]["last_text"], "two");
    assert_eq!(of_event(&list, "unread_total")[0]["total_unread"], 2);

    // Up to a given seq, then (by default) to the end.
    let read = json_lines(s, b, &["read", "alice", "1"]).await;
    assert_eq!(
        (read[0]["read_seq"].clone(), read[0]["unread"].clone()),
        (1.into(), 1.into())
    );
    let read = json_lines(s, b, &["read", "alice"]).await;
    assert_eq!(read[0]["unread"], 0);
    let list = json_lines(s, b, &["conversations"]).await;
    assert_eq!(of_event(&list, "unread_total")[0]["total_unread"], 0);
    let human = pigeon(s, b, "", &["conversations"]).await;
    assert!(
        stdout(&human).contains("alice  0 unread"),
        "{}",
        stdout(&human)
    );

    assert_ok(&pigeon(s, a, "", &["recall", &msg_id.to_string()]).await);
    let pulled = json_lines(s, b, &["pull"]).await;
    let original = of_event(&pulled, "message")
        .into_iter()
        .find(|m| m["msg_id"] == msg_id)
        .unwrap_or_else(|| panic!("{pulled:?}"));
    assert_eq!(original["recalled"], true);
    assert!(original.get("text").is_none());
    let recall = of_event(&pulled, "recall");
    assert_eq!(recall.len(), 1, "{pulled:?}");
    assert_eq!(recall[0]["recalled_msg_id"], msg_id);
    assert_eq!(recall[0]["by"], "alice");
    assert_refused(
        &pigeon(s, a, "", &["recall", "123456789"]).await,
        "UNKNOWN_MESSAGE",
    );
    let no_peer = pigeon(s, b, "", &["read", "nobody"]).await;
    assert_eq!(no_peer.status.code(), Some(2), "{}", stderr(&no_peer));
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_listed_and_a_revoked_one_is_logged_out() {
    let server = start_server().await;
    let s = server.addr.as_str();
    let dirs = users(s, &["alice"]).await;
    let laptop = dirs[0].path();
    let other = tempfile::tempdir().unwrap();
    assert_ok(&pigeon(s, other.path(), "alice password", &["login", "alice"]).await);
    let other_id = pigeon_sdk::Profile::load(other.path())
        .unwrap()
        .unwrap()
        .device_id;

    let devices = json_lines(s, laptop, &["devices", "list"]).await;
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(devices.iter().filter(|d| d["current"] == true).count(), 1);
    assert!(
        devices.iter().all(|d| d["platform"] == "cli"),
        "{devices:?}"
    );
    let current = devices.iter().find(|d| d["current"] == true).unwrap();
    assert_ne!(current["device_id"], other_id.as_str());

    assert_ok(&pigeon(s, laptop, "", &["devices", "revoke", &other_id]).await);
    let refused = pigeon(s, other.path(), "", &["pull"]).await;
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert_refused(
        &pigeon(s, laptop, "", &["devices", "revoke", "no-such-device"]).await,
        "UNKNOWN_DEVICE",
    );
    assert_eq!(json_lines(s, laptop, &["devices", "list"]).await.len(), 1);
}

/// A server where any group of more than two members is large.
async fn small_threshold_server() -> Running {
    start_server_with(|config| config.messaging.large_group_threshold = 2).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_follows_a_large_group_timeline_with_a_cursor_in_the_profile() {
    let server = small_threshold_server().await;
    let s = server.addr.as_str();
    let dirs = users(s, &["alice", "bob", "carol"]).await;
    let (a, b) = (dirs[0].path(), dirs[1].path());
    let created = json_lines(s, a, &["group", "create", "big", "--members", "bob,carol"]).await;
    let group = created[0]["group"].as_u64().unwrap();
    assert_eq!(created[0]["large"], true);
    for text in ["first", "second"] {
        assert_ok(&pigeon(s, a, "", &["send", "--group", "big", text]).await);
    }

    let pulled = json_lines(s, b, &["pull"]).await;
    let texts: Vec<_> = of_event(&pulled, "message")
        .iter()
        .map(|m| (m["text"].clone(), m["group"].clone(), m["timeline"].clone()))
        .collect();
    let t = |text: &str| (text.into(), group.into(), true.into());
    assert_eq!(texts, [t("first"), t("second")], "{pulled:?}");
    let created_events = of_event(&pulled, "group_event")
        .into_iter()
        .filter(|e| e["type"] == "CREATED")
        .count();
    assert_eq!(
        created_events, 1,
        "the personal copy is printed once: {pulled:?}"
    );
    let profile = pigeon_sdk::Profile::load(b).unwrap().unwrap();
    assert!(profile.group_cursors.contains_key(&group), "{profile:?}");

    assert_eq!(
        of_event(&json_lines(s, b, &["pull"]).await, "message").len(),
        0
    );
    assert_ok(&pigeon(s, a, "", &["send", "--group", &group.to_string(), "third"]).await);
    let again = json_lines(s, b, &["pull"]).await;
    let messages = of_event(&again, "message");
    assert_eq!(messages.len(), 1, "{again:?}");
    assert_eq!(messages[0]["text"], "third");
    let human = pigeon(s, b, "", &["read", "--group", "big"]).await;
    assert_ok(&human);
    assert!(
        stdout(&human).contains("0 unread left"),
        "{}",
        stdout(&human)
    );
}

type ChildLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// The next line a running `pigeon --json` printed, as JSON.
async fn next_json(lines: &mut ChildLines) -> serde_json::Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("listen prints in time")
        .unwrap()
        .expect("listen still runs");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_prints_large_group_messages_as_they_arrive() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let server = small_threshold_server().await;
    let s = server.addr.as_str();
    let dirs = users(s, &["alice", "bob", "carol"]).await;
    let (a, b) = (dirs[0].path(), dirs[1].path());
    assert_ok(
        &pigeon(
            s,
            a,
            "",
            &["group", "create", "big", "--members", "bob,carol"],
        )
        .await,
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("--server")
        .arg(s)
        .arg("--ca")
        .arg(repo_file("certs/ca.pem"))
        .arg("--profile")
        .arg(b)
        .args(["--json", "listen"])
        .env_remove("PIGEON_SERVER")
        .env_remove("PIGEON_PASSWORD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while next_json(&mut lines).await["event"] != "caught_up" {}
    assert_ok(&pigeon(s, a, "", &["send", "--group", "big", "live"]).await);
    let message = loop {
        let line = next_json(&mut lines).await;
        if line["event"] == "message" {
            break line;
        }
    };
    assert_eq!(message["text"], "live");
    assert_eq!(message["from"], "alice");
    assert_eq!(message["timeline"], true);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn push_tokens_are_registered_for_the_profiles_device_and_removed() {
    use pigeon_server::store::{Durability, SledStore, Store};

    let server = start_server().await;
    let s = server.addr.as_str();
    let dirs = users(s, &["alice", "bob"]).await;
    let (a, b) = (dirs[0].path(), dirs[1].path());
    let profile = |dir: &Path| pigeon_sdk::Profile::load(dir).unwrap().unwrap();
    let (alice, bob) = (profile(a), profile(b));

    let apns = json_lines(
        s,
        a,
        &[
            "push",
            "register",
            "apns",
            "a1b2c3d4e5f6",
            "--topic",
            "com.example.chat",
            "--sandbox",
        ],
    )
    .await;
    assert_eq!(apns.len(), 1, "{apns:?}");
    assert_eq!(apns[0]["event"], "push_registered");
    assert_eq!(apns[0]["provider"], "apns");
    assert_eq!(apns[0]["device_id"], alice.device_id.as_str());
    assert_eq!(apns[0]["topic"], "com.example.chat");
    assert_eq!(apns[0]["sandbox"], true);
    assert!(
        !apns[0].to_string().contains("a1b2c3d4e5f6"),
        "the token is not echoed: {apns:?}"
    );

    // Human output; an FCM token replaces the APNs one.
    let fcm = pigeon(
        s,
        a,
        "",
        &["push", "register", "fcm", "fcm-registration-token"],
    )
    .await;
    assert_ok(&fcm);
    assert_eq!(
        stdout(&fcm).trim(),
        format!("registered an FCM token for device {}", alice.device_id)
    );

    // Bob registers, then removes.
    let webhook = json_lines(s, b, &["push", "register", "webhook"]).await;
    assert_eq!(webhook[0]["provider"], "webhook");
    assert_eq!(webhook[0]["device_id"], bob.device_id.as_str());
    let removed = json_lines(s, b, &["push", "remove"]).await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["event"], "push_removed");
    assert_eq!(removed[0]["device_id"], bob.device_id.as_str());
    assert_ok(&pigeon(s, b, "", &["push", "remove"]).await);

    // Refusals: exit 5 with the server's code, in words and in JSON.
    let empty = pigeon(
        s,
        a,
        "",
        &[
            "push",
            "register",
            "apns",
            "",
            "--topic",
            "com.example.chat",
        ],
    )
    .await;
    assert_refused(&empty, "INVALID_ARGUMENT");
    let too_long = "x".repeat(4097);
    let refused = pigeon(s, a, "", &["--json", "push", "register", "fcm", &too_long]).await;
    assert_refused(&refused, "INVALID_ARGUMENT");
    let error: serde_json::Value = serde_json::from_str(stderr(&refused).trim()).unwrap();
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert_eq!(error["exit_code"], 5);
    assert!(stdout(&refused).is_empty(), "{}", stdout(&refused));
    // Usage errors stay exit 2, and a profile without a login exit 4.
    let no_topic = pigeon(s, a, "", &["push", "register", "apns", "a1b2"]).await;
    assert_eq!(no_topic.status.code(), Some(2), "{}", stderr(&no_topic));
    let nobody = tempfile::tempdir().unwrap();
    let not_logged_in = pigeon(s, nobody.path(), "", &["push", "remove"]).await;
    assert_eq!(not_logged_in.status.code(), Some(4));

    // What the server kept: alice's device has a token (the refused
    // registrations left the FCM one alone), bob's none any more.
    let data = server.stop().await;
    let store = SledStore::open(data.path(), Durability::Fsync).unwrap();
    let user = |p: &pigeon_sdk::Profile| p.user_id.expect("logged in");
    assert_eq!(
        store.push_devices(user(&alice)).unwrap(),
        [alice.device_id.as_str()]
    );
    assert!(store.push_devices(user(&bob)).unwrap().is_empty());
}
