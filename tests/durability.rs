//! Answered sends survive a graceful stop and a SIGKILL of a real pigeond
//! process right after the answer.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use common::*;
use pigeon_protocol::Platform;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[tokio::test]
async fn messages_answered_before_a_graceful_stop_are_delivered_after_restart() {
    let server = TestServer::start(|_| {}).await;
    let (mut alice, _) = server.user("alice", "a1").await;
    let (bob, _) = server.user("bob", "b1").await;
    drop(bob);
    for i in 1..=10 {
        alice
            .send_ok("bob", &format!("{i}"), &format!("before stop {i}"))
            .await;
    }
    drop(alice);
    let server = server.restart().await;
    let mut bob = server.raw().await;
    let login = bob.login("bob", "b1", Platform::Ios).await;
    assert_eq!(login.max_seq, 10);
    let page = bob.pull(0, 100).await;
    let expected: Vec<String> = (1..=10).map(|i| format!("before stop {i}")).collect();
    assert_eq!(texts(&page), expected);
    // Ids and seqs continue after the restart.
    let mut alice = server.raw().await;
    alice.login("alice", "a1", Platform::Ios).await;
    assert_eq!(alice.send_ok("bob", "11", "after").await.seq, 11);
}

/// A pigeond child process on an ephemeral port.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    async fn start(data: &Path) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigeond"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-json",
                "--admin",
                "off",
                "--data",
            ])
            .arg(data)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pigeond starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if record["fields"]["message"] == "serving" {
                    return record["fields"]["addr"].as_str().unwrap().parse().unwrap();
                }
            }
            panic!("pigeond exited before serving");
        })
        .await
        .expect("pigeond reports its address");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process { child, addr }
    }

    async fn kill(mut self) {
        self.child.start_kill().unwrap(); // SIGKILL
        self.child.wait().await.unwrap();
    }
}

#[tokio::test]
async fn a_send_answered_right_before_sigkill_is_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start(dir.path()).await;
    let mut alice = RawClient::connect(process.addr).await;
    alice.register("alice").await;
    alice.register("bob").await;
    alice.login("alice", "a1", Platform::Ios).await;
    let mut answered = Vec::new();
    for round in 0..3 {
        let text = format!("answered {round}");
        alice.send_ok("bob", &format!("k{round}"), &text).await;
        answered.push(text);
    }
    // Kill the moment the last answer is in: no graceful anything.
    process.kill().await;

    let process = Process::start(dir.path()).await;
    let mut bob = RawClient::connect(process.addr).await;
    let login = bob.login("bob", "b1", Platform::Android).await;
    assert_eq!(login.max_seq, 3);
    assert_eq!(texts(&bob.pull(0, 100).await), answered);
    // A resend of an answered message is still recognised after the crash.
    let mut alice = RawClient::connect(process.addr).await;
    alice.login("alice", "a1", Platform::Ios).await;
    assert!(alice.send_ok("bob", "k2", "answered 2").await.duplicate);
    process.kill().await;
}
