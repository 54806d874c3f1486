//! SIGTERM to a real pigeond process with clients connected: requests it
//! has read are answered, then every client gets Kick{SERVER_SHUTDOWN}, the
//! process tells systemd READY=1 and STOPPING=1, exits 0 within
//! `timeouts.shutdown`, and everything it answered is there after a
//! restart. A connection that cannot finish is dropped when the shutdown
//! timeout runs out.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pigeon_protocol::{pb, Body, Envelope, KickReason, Platform};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A pigeond child process on an ephemeral port, with its JSON log and its
/// systemd notify socket.
struct Process {
    child: Child,
    addr: SocketAddr,
    /// Log records after "serving", as they come.
    log: mpsc::UnboundedReceiver<serde_json::Value>,
    /// What pigeond sent to $NOTIFY_SOCKET.
    notify: UnixDatagram,
    /// Every line pigeond wrote to stderr so far.
    text: Arc<Mutex<String>>,
}

impl Process {
    /// Start `pigeond serve` on `data` with `config` (TOML) and wait until
    /// it has told systemd it is ready and logged its address.
    async fn start(data: &Path, config: &str) -> Process {
        let config_path = data.with_extension("toml");
        std::fs::write(&config_path, config).unwrap();
        let socket_path = data.with_extension("notify");
        let _ = std::fs::remove_file(&socket_path); // a previous run's socket, if any
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigeond"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin", "off", "--log-json"])
            .arg("--data")
            .arg(data)
            // Everything the server logs, to check what it never logs.
            .env("RUST_LOG", "info,pigeon_server=trace")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pigeond starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, mut log) = mpsc::unbounded_channel();
        let text = Arc::new(Mutex::new(String::new()));
        let all = text.clone();
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                all.lock().unwrap().push_str(&line);
                if let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) {
                    // The test may have stopped listening; that is fine.
                    let _ = tx.send(record);
                }
            }
        });
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(record) = log.recv().await {
                if record["fields"]["message"] == "serving" {
                    return record["fields"]["addr"].as_str().unwrap().parse().unwrap();
                }
            }
            panic!("pigeond exited before serving");
        })
        .await
        .expect("pigeond reports its address");
        let mut process = Process {
            child,
            addr,
            log,
            notify,
            text,
        };
        assert!(process.next_notify().await.contains("READY=1"));
        process
    }

    async fn next_notify(&mut self) -> String {
        let mut buf = [0; 256];
        let n = tokio::time::timeout(WAIT, self.notify.recv(&mut buf))
            .await
            .expect("pigeond notifies systemd")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for exit, failing after `limit`.
    async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("pigeond still running {limit:?} after SIGTERM"))
            .unwrap()
    }

    /// The next log record with this message, after what was already read.
    async fn logged(&mut self, message: &str) -> serde_json::Value {
        tokio::time::timeout(WAIT, async {
            while let Some(record) = self.log.recv().await {
                if record["fields"]["message"] == message {
                    return record;
                }
            }
            panic!("pigeond never logged {message:?}");
        })
        .await
        .expect("log line in time")
    }
}

#[track_caller]
fn assert_shutdown_kick(frame: &Envelope) {
    match &frame.body {
        Some(Body::Kick(k)) => assert_eq!(k.reason, KickReason::ServerShutdown as i32),
        other => panic!("expected Kick{{SERVER_SHUTDOWN}}, got {other:?}"),
    }
}

/// Everything before the kick is a Notify, and the kick is the last frame.
#[track_caller]
fn assert_notifies_then_kick(frames: &[Envelope]) {
    let (kick, rest) = frames.split_last().expect("a kick before the close");
    assert_shutdown_kick(kick);
    for frame in rest {
        assert!(
            matches!(frame.body, Some(Body::Notify(_))),
            "unexpected frame before the kick: {frame:?}"
        );
    }
}

const SENDS: u64 = 40;
const FIRST_ID: u64 = 1000;

#[tokio::test]
async fn sigterm_answers_what_was_read_then_kicks_everyone_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = "[timeouts]\nshutdown = \"10s\"\n";
    let mut process = Process::start(&data, config).await;

    let mut alice = RawClient::connect(process.addr).await;
    alice.register("alice").await;
    alice.register("bob").await;
    alice.register("carol").await;
    let token = alice.login("alice", "a1", Platform::Ios).await.token;
    let mut bob_phone = RawClient::connect(process.addr).await;
    bob_phone.login("bob", "b1", Platform::Android).await;
    let mut bob_desktop = RawClient::connect(process.addr).await;
    bob_desktop.login("bob", "b2", Platform::Desktop).await;
    let mut carol = RawClient::connect(process.addr).await;
    carol.login("carol", "c1", Platform::Web).await;

    // Alice pipelines sends without waiting, then SIGTERM lands while the
    // later ones are being read, stored or answered.
    for i in 0..SENDS {
        let body = send_body("bob", &format!("m{i}"), format!("text {i}").into_bytes());
        alice.send_envelope(Envelope::new(FIRST_ID + i, body)).await;
    }
    let mut alice_frames = vec![alice.next().await.expect("an answer")];
    process.sigterm();
    alice_frames.extend(alice.closed().await);

    // Answers come for a prefix of the sends, in order, then the kick.
    let (kick, before) = alice_frames.split_last().unwrap();
    assert_shutdown_kick(kick);
    let mut answered = Vec::new();
    for frame in before {
        match &frame.body {
            Some(Body::Notify(_)) => continue,
            Some(Body::Sent(pb::SendResponse { .. })) => {}
            other => panic!("unexpected frame before the kick: {other:?}"),
        }
        let i = frame.request_id - FIRST_ID;
        assert_eq!(i, answered.len() as u64, "answers in request order");
        answered.push(format!("text {i}"));
    }
    assert!(!answered.is_empty());
    for client in [&mut bob_phone, &mut bob_desktop, &mut carol] {
        assert_notifies_then_kick(&client.closed().await);
    }

    assert!(process.next_notify().await.contains("STOPPING=1"));
    let status = process.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    // The login line names peer, user and device itself, not only through
    // the connection's span (at debug, which this process logs but the
    // default level does not); the log never holds a password, a token or
    // message content.
    let login = process.logged("logged in").await;
    for field in ["peer", "user_id", "device", "platform"] {
        assert!(!login["fields"][field].is_null(), "no {field} in {login}");
    }
    assert_eq!(login["span"]["name"], "conn", "{login}");
    process.logged("all connections closed").await;
    let text = process.text.lock().unwrap().clone();
    assert!(!text.contains(PASSWORD));
    assert!(!text.contains(&token));
    assert!(!text.contains("text 0"));

    // Exactly what was answered is stored: every request that was read was
    // answered, and nothing unread was stored.
    let mut process = Process::start(&data, config).await;
    let mut bob = RawClient::connect(process.addr).await;
    let login = bob.login("bob", "b1", Platform::Android).await;
    assert_eq!(login.max_seq, answered.len() as u64);
    assert_eq!(texts(&bob.pull(0, 1000).await), answered);
    process.sigterm();
    assert!(process.exit_within(WAIT).await.success());
}

/// A TCP connection that has sent a ClientHello and got the server's first
/// flight back, then goes silent: its handshake cannot end before the
/// (long) handshake timeout.
async fn stalled_handshake(addr: SocketAddr) -> TcpStream {
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(client_tls_config(), name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    // The server answering proves it accepted us and is mid-handshake.
    let mut first = [0; 1];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut first))
        .await
        .expect("the server answers the ClientHello")
        .unwrap();
    assert_eq!(n, 1);
    tcp
}

#[tokio::test]
async fn connections_still_open_when_the_shutdown_timeout_ends_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The stalled handshake would hold shutdown for 10 minutes without the
    // shutdown timeout.
    let grace = Duration::from_secs(1);
    let config = "[timeouts]\nshutdown = \"1s\"\nhandshake = \"10m\"\n";
    let mut process = Process::start(&data, config).await;
    let mut alice = RawClient::connect(process.addr).await;
    alice.register("alice").await;
    alice.login("alice", "a1", Platform::Ios).await;
    let _stalled = stalled_handshake(process.addr).await;

    let sent = Instant::now();
    process.sigterm();
    assert_notifies_then_kick(&alice.closed().await);
    let status = process.exit_within(WAIT).await;
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= grace,
        "exited after {took:?}, before the grace ran out"
    );
    let record = process
        .logged("connections still open after timeouts.shutdown; dropping them")
        .await;
    assert_eq!(record["fields"]["connections"], 1);
}
