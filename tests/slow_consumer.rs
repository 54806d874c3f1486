//! Peers too slow for the server: a consumer that never reads what it asked
//! for is cut off by the write timeout once its bounded outbound queue and
//! the socket buffers are full, its messages stay queued for its next
//! connection, and well-behaved clients are served meanwhile. A frame
//! dribbled a byte at a time (slowloris after login) is closed by the idle
//! limit, which only a complete frame resets: the per-frame deadline.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pigeon_protocol::{pb, Body, Codec, Envelope, Platform};
use pigeon_server::config::Config;
use pigeon_server::metrics::Metrics;
use pigeon_server::Server;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
const OUTBOUND_QUEUE: usize = 4;
const MESSAGES: u64 = 60;
const CONTENT: usize = 60 * 1024;
const PULLS: usize = 16;

/// An in-process server whose counters the test can read.
struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let server = Server::open(config).expect("server opens");
        let listener = server.bind().expect("server binds");
        let addr = listener.local_addr().unwrap();
        let metrics = server.metrics();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.serve(listener, shutdown.clone()));
        Running {
            addr,
            metrics,
            shutdown,
            _dir: dir,
        }
    }

    fn open_connections(&self) -> i64 {
        self.metrics.connections_open.get()
    }

    /// Wait (bounded) until the server counts `n` open connections.
    async fn wait_for_open(&self, n: i64) {
        let deadline = Instant::now() + WAIT;
        // The gauge has no change notification; look every 10 ms.
        while self.open_connections() != n {
            assert!(
                Instant::now() < deadline,
                "{} connections open, expected {n}",
                self.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A TLS client whose socket has a tiny receive buffer, so a client that
/// does not read pushes back on the server after a few kilobytes.
async fn small_window_client(addr: SocketAddr) -> RawClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tls_connector().connect(name, tcp).await.unwrap();
    RawClient::over(tls)
}

fn big(n: u64) -> Vec<u8> {
    let mut content = format!("message {n} ").into_bytes();
    content.resize(CONTENT, b'.');
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_is_cut_off_its_messages_stay_queued_and_others_are_served() {
    let server = Running::start(|c| {
        c.limits.outbound_queue = OUTBOUND_QUEUE;
        c.limits.sends_per_sec = 10_000;
        c.limits.send_burst = 10_000;
        c.timeouts.write = WRITE_TIMEOUT;
    })
    .await;
    let mut alice = RawClient::connect(server.addr).await;
    alice.register("alice").await;
    alice.login("alice", "a1", Platform::Ios).await;
    let mut carol = RawClient::connect(server.addr).await;
    carol.register("carol").await;
    carol.login("carol", "c1", Platform::Ios).await;
    let mut setup = RawClient::connect(server.addr).await;
    setup.register("bob").await;
    drop(setup);
    for n in 1..=MESSAGES {
        let send = send_body("bob", &format!("b{n}"), big(n));
        assert!(matches!(alice.request(send).await, Body::Sent(_)));
    }
    server.wait_for_open(2).await;

    // bob asks for every page again and again, and never reads an answer:
    // 16 pulls of about 1 MiB each against a 4-answer queue and a 4 KiB
    // receive window.
    let mut slow = small_window_client(server.addr).await;
    assert_eq!(
        slow.login("bob", "slow", Platform::Ios).await.max_seq,
        MESSAGES
    );
    for i in 0..PULLS {
        let pull = Body::Pull(pb::PullRequest {
            after_seq: 0,
            limit: 1000,
        });
        slow.send_envelope(Envelope::new(100 + i as u64, pull))
            .await;
    }
    let stalled = Instant::now();

    // Meanwhile carol is served as usual.
    for n in 1..=5 {
        let served = Instant::now();
        alice
            .send_ok("carol", &format!("c{n}"), &format!("hi {n}"))
            .await;
        let page = carol.pull(n - 1, 10).await;
        assert_eq!(texts(&page), [format!("hi {n}")]);
        assert!(
            served.elapsed() < Duration::from_secs(2),
            "{:?}",
            served.elapsed()
        );
    }

    // The server gives up on bob once a write has waited WRITE_TIMEOUT.
    server.wait_for_open(2).await;
    let cut_off = stalled.elapsed();
    assert!(
        cut_off < WRITE_TIMEOUT + Duration::from_secs(3),
        "cut off after {cut_off:?}"
    );
    // What reached bob's socket before the close: far from all he asked for.
    let answers = slow
        .closed()
        .await
        .into_iter()
        .filter(|e| matches!(e.body, Some(Body::Pulled(_))))
        .count();
    eprintln!("slow consumer: cut off after {cut_off:?}, {answers} of {PULLS} answers reached it");
    assert!(answers < PULLS, "all {answers} answers were delivered");

    // Nothing was lost: the device's next connection pulls every message.
    let mut bob = RawClient::connect(server.addr).await;
    let login = bob.login("bob", "slow", Platform::Ios).await;
    assert_eq!((login.max_seq, login.acked_seq), (MESSAGES, 0));
    let mut after = 0;
    let mut pulled = Vec::new();
    for _ in 0..MESSAGES {
        let page = bob.pull(after, 1000).await;
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.seq;
        pulled.extend(page.messages.iter().map(|m| m.seq));
    }
    assert_eq!(pulled, (1..=MESSAGES).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_frame_dribbled_one_byte_at_a_time_is_closed_at_the_idle_limit() {
    const IDLE: Duration = Duration::from_millis(400);
    let server = TestServer::start(|c| {
        c.timeouts.heartbeat_interval = Duration::from_millis(100);
        c.timeouts.idle = IDLE;
    })
    .await;
    let (client, _) = server.user("alice", "a1").await;
    let logged_in = Instant::now();
    let mut frame = bytes::BytesMut::new();
    let send = send_body("alice", "dribbled", vec![b'x'; 200]);
    Codec::default()
        .encode(Envelope::new(9, send), &mut frame)
        .unwrap();
    let (mut read, mut write) = tokio::io::split(client.frames.into_inner());
    // One byte every 100 ms: the frame would take over 20 s to complete.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut sent = 0;
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => panic!("unexpected {n} bytes from the server"),
            },
            _ = pace.tick() => {
                assert!(sent < frame.len(), "the whole frame went through");
                let wrote = write.write_all(&frame[sent..=sent]).await;
                if wrote.is_err() || write.flush().await.is_err() {
                    break;
                }
                sent += 1;
            }
        }
    }
    let closed = logged_in.elapsed();
    assert!(sent > 1 && sent < frame.len(), "{sent} bytes sent");
    assert!(
        closed >= IDLE,
        "closed after {closed:?}, before the idle limit"
    );
    assert!(
        closed < IDLE + Duration::from_millis(300),
        "closed after {closed:?}, not at the idle limit"
    );
}
