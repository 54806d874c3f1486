//! The `pigeon` binary against a real pigeond (in-process, TLS on an
//! ephemeral loopback port, a temporary sled directory): the CLI contract's
//! commands, `--json` output, and exit codes for the failures a person or a
//! script meets first.

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
    _data: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

async fn start_server() -> Running {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        ..Config::default()
    };
    // Parallel tests must not fight over the default admin port.
    config.admin.listen = None;
    let server = Server::open(config).unwrap();
    let listener = server.bind().unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    Running {
        addr,
        _data: data,
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
