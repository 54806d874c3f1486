//! Damaged store: a real pigeond fills a store, is killed, and copies of its
//! data directory are damaged (sled's `db` truncated or bit-flipped, `conf`
//! flipped or deleted, the snapshot flipped or cut, the manifest flipped).
//! For each copy, pigeond either refuses to start with an error naming the
//! problem and `pigeond verify` reports it, or — when the damage hit bytes
//! sled no longer uses — starts and serves every answered message intact.
//! Never a panic, never an emptied or shortened queue.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::process::{serve_args, Pigeond};
use common::*;
use pigeon_protocol::pb;
use pigeon_protocol::{Body, ErrorCode, Platform};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const MESSAGES: usize = 300;

/// A store with `MESSAGES` answered messages from alice to bob, written
/// over two runs of pigeond (so sled has a snapshot too), killed each time.
async fn fixture(dir: &Path) -> Vec<String> {
    let mut expected = Vec::new();
    let body = "x".repeat(1500);
    // The fixture sends faster than a client may by default.
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        "[limits]\nsends_per_sec = 100000\nsend_burst = 100000\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for run in 0..2 {
        let args = serve_args(dir, "127.0.0.1:0", &["--config", config]);
        let (process, addr) = Pigeond::start(args).await;
        let mut alice = RawClient::connect(addr).await;
        if run == 0 {
            alice.register("alice").await;
            alice.register("bob").await;
        }
        alice.login("alice", "a1", Platform::Ios).await;
        for i in 0..MESSAGES / 2 {
            let text = format!("run {run} message {i} {body}");
            alice.send_ok("bob", &format!("{run}-{i}"), &text).await;
            expected.push(text);
        }
        process.kill().await;
    }
    expected
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn snapshot(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("snap.") && !name.ends_with(".generating")
        })
}

/// What starting pigeond on a directory did.
enum Start {
    /// It exited before serving, with this stderr.
    Refused { status: i32, stderr: String },
    /// It served every expected message to bob, intact.
    ServedIntact,
    /// It started (the damage is in a record opening does not read) and
    /// refused to serve the damaged record with INTERNAL: no wrong data,
    /// nothing dropped silently.
    RefusedDamagedRecord,
}

async fn start(dir: &Path, expected: &[String]) -> Start {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pigeond"))
        .args(serve_args(dir, "127.0.0.1:0", &[]))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (serving_tx, serving) = tokio::sync::oneshot::channel::<std::net::SocketAddr>();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = stderr.clone();
    let reader = tokio::spawn(async move {
        let mut serving_tx = Some(serving_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) {
                if record["fields"]["message"] == "serving" {
                    let addr = record["fields"]["addr"].as_str().unwrap().parse().unwrap();
                    if let Some(tx) = serving_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
        }
    });
    // `None`: it exited (its log closes with it, dropping `serving`).
    let served = tokio::time::timeout(WAIT, async {
        tokio::select! {
            _ = child.wait() => None,
            addr = serving => addr.ok(),
        }
    })
    .await
    .expect("pigeond either serves or exits in time");
    match served {
        None => {
            let status = child.wait().await.unwrap();
            reader.await.unwrap();
            let stderr = stderr.lock().unwrap().clone();
            assert!(!stderr.contains("panicked"), "pigeond panicked:\n{stderr}");
            Start::Refused {
                status: status.code().unwrap_or(-1),
                stderr,
            }
        }
        Some(addr) => {
            let mut bob = RawClient::connect(addr).await;
            let login = bob.login("bob", "b1", Platform::Android).await;
            assert_eq!(login.max_seq, expected.len() as u64, "bob's queue is whole");
            let mut got = Vec::new();
            let mut outcome = Start::ServedIntact;
            while got.len() < expected.len() {
                let pull = Body::Pull(pb::PullRequest {
                    after_seq: got.len() as u64,
                    limit: 100,
                });
                let page = match bob.request(pull).await {
                    Body::Pulled(page) => page,
                    other => {
                        expect_error(&other, ErrorCode::Internal);
                        outcome = Start::RefusedDamagedRecord;
                        break;
                    }
                };
                assert!(!page.messages.is_empty(), "pull stalls at {}", got.len());
                got.extend(texts(&page));
            }
            if let Start::ServedIntact = outcome {
                assert_eq!(got, expected, "every message is served intact");
            } else {
                // What was served before the damaged record is what was sent.
                assert_eq!(got, expected[..got.len()], "served messages are intact");
            }
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            outcome
        }
    }
}

/// `pigeond verify --data DIR`: (exit code, stdout + stderr).
async fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeond"))
        .arg("verify")
        .arg("--data")
        .arg(dir)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "verify panicked:\n{text}");
    (out.status.code().unwrap_or(-1), text)
}

/// Damages a copy of `base` with `damage`, starts pigeond on it and runs
/// verify. Returns true if the start was refused. With `must_mention` the
/// start must be refused with an error containing it; without, the damage
/// may also have hit only bytes sled no longer reads, and then the start
/// must serve everything intact.
async fn case(
    base: &Path,
    expected: &[String],
    name: &str,
    must_mention: Option<&str>,
    damage: impl FnOnce(&Path),
) -> bool {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    copy_dir(base, &dir);
    damage(&dir);
    // Verify first: it works on a copy and must not change what pigeond sees.
    let (verify_code, verify_out) = verify(&dir).await;
    match start(&dir, expected).await {
        Start::Refused { status, stderr } => {
            let error = stderr.lines().last().unwrap_or_default().to_owned();
            println!("{name}: refused (exit {status}): {error}");
            assert_ne!(status, 0);
            assert!(
                error.contains("cannot open the store"),
                "{name}: the error names the store: {stderr}"
            );
            if let Some(word) = must_mention {
                assert!(
                    error.contains(word),
                    "{name}: error mentions {word:?}: {error}"
                );
            }
            assert_ne!(verify_code, 0, "{name}: verify reports it:\n{verify_out}");
            assert!(verify_out.contains("PROBLEM"), "{name}:\n{verify_out}");
            true
        }
        Start::RefusedDamagedRecord => {
            println!("{name}: started, refused the damaged record (INTERNAL)");
            assert!(must_mention.is_none(), "{name}: should be refused at start");
            assert_ne!(verify_code, 0, "{name}: verify reports it:\n{verify_out}");
            assert!(verify_out.contains("PROBLEM"), "{name}:\n{verify_out}");
            true
        }
        Start::ServedIntact => {
            println!("{name}: served every message intact");
            assert!(must_mention.is_none(), "{name}: damage went unnoticed");
            // The flip may have hit a record bob's queue does not read (an
            // old log segment sled skips, or another user's, group's or
            // conversation's record): verify then names it; either way it
            // must finish with a verdict.
            assert!(
                verify_code == 0 || verify_out.contains("PROBLEM"),
                "{name}: verify gives a verdict:\n{verify_out}"
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_is_refused_or_served_intact_never_emptied() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let expected = fixture(&base).await;
    let db_len = std::fs::metadata(base.join("db")).unwrap().len();

    // Pristine: verify is clean, everything is served.
    let (code, out) = verify(&base).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: no problems found"), "{out}");

    let mut refused = 0;
    let mut total = 0;
    let mut run = |r: bool| {
        total += 1;
        refused += usize::from(r);
    };
    run(case(&base, &expected, "pristine copy", None, |_| {}).await);
    run(case(
        &base,
        &expected,
        "db truncated to half",
        Some("damaged"),
        |d| truncate(&d.join("db"), db_len / 2),
    )
    .await);
    // With a snapshot sled refuses it itself; without, the manifest does.
    run(case(&base, &expected, "db truncated to 0", Some(""), |d| {
        truncate(&d.join("db"), 0)
    })
    .await);
    run(case(
        &base,
        &expected,
        "db deleted",
        Some("no sled `db` file"),
        |d| std::fs::remove_file(d.join("db")).unwrap(),
    )
    .await);
    run(
        case(&base, &expected, "conf flipped", Some("damaged"), |d| {
            flip(&d.join("conf"), 8)
        })
        .await,
    );
    // sled rewrites a missing conf with its defaults, which are pigeond's.
    run(case(&base, &expected, "conf deleted", None, |d| {
        std::fs::remove_file(d.join("conf")).unwrap()
    })
    .await);
    run(case(
        &base,
        &expected,
        "manifest flipped",
        Some("manifest"),
        |d| {
            let m = d.join("pigeon.manifest");
            flip(&m, 20);
            flip(&m, 4096 + 20);
        },
    )
    .await);
    let mut flips_refused = 0;
    for percent in [2, 10, 25, 40, 55, 70, 85, 97] {
        let offset = db_len * percent / 100;
        let name = format!("db byte flipped at {percent}% (offset {offset})");
        let r = case(&base, &expected, &name, None, |d| {
            flip(&d.join("db"), offset)
        })
        .await;
        flips_refused += usize::from(r);
        run(r);
    }
    assert!(
        flips_refused > 0,
        "no bit flip was noticed: the flips missed everything sled reads"
    );
    if let Some(snap) = snapshot(&base) {
        let name = snap.file_name().unwrap().to_owned();
        let len = std::fs::metadata(&snap).unwrap().len();
        run(case(&base, &expected, "snapshot flipped", None, |d| {
            flip(&d.join(&name), len / 2)
        })
        .await);
        run(case(&base, &expected, "snapshot truncated", None, |d| {
            truncate(&d.join(&name), len / 2)
        })
        .await);
    }
    println!("{refused} of {total} damaged copies refused, the rest served intact");
}
