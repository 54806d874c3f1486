//! Pauses: a real pigeond process stopped with SIGSTOP for longer than the
//! idle limit and continued with SIGCONT, and a client that stops (its
//! socket is never polled again). Silent sessions are closed by the idle
//! limit, sdk clients reconnect with backoff, and every message is
//! delivered exactly once, in order.
//!
//! The timeouts are short (heartbeat 200 ms, idle 600 ms) so a pause of
//! three idle limits takes under two seconds. The pauses themselves are the
//! behaviour under test; everything else waits on frames, events or log
//! records with a bound.

mod common;
#[path = "net/pigeond.rs"]
mod pigeond;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ca_path, texts, RawClient, PASSWORD, WAIT};
use pigeon_protocol::{pb, Body, Platform};
use pigeon_sdk::{
    tls, Backoff, Client, ClientConfig, ClientEvent, ConnectOptions, Profile, Recipient,
};
use pigeond::Pigeond;
use tokio::sync::watch;
use tokio::time::Instant;

const IDLE: Duration = Duration::from_millis(600);
const CONFIG: &str = "[timeouts]\nheartbeat_interval = \"200ms\"\nidle = \"600ms\"\n";
/// Debug for the gateway: its "idle timeout" records say which session
/// the idle limit closed.
const LOG: &str = "info,pigeon_server::gateway=debug";

/// An sdk client that notices a dead server quickly and retries fast.
fn sdk_client(addr: std::net::SocketAddr, user: &str, profile: &Path) -> Client {
    let tls = tls::client_config_from_ca_file(ca_path()).unwrap();
    let mut connect = ConnectOptions::new(addr.to_string(), tls);
    connect.server_name = "localhost".into();
    connect.connect_timeout = Duration::from_millis(500);
    connect.request_timeout = Duration::from_millis(500);
    let mut config = ClientConfig::new(connect, user);
    config.platform = Platform::Android;
    config.password = Some(PASSWORD.to_owned());
    config.backoff = Backoff::new(Duration::from_millis(10), 2, Duration::from_millis(200));
    Client::start(config, Profile::open(profile).unwrap())
}

/// What a receiving sdk client saw: message numbers in delivery order and
/// how many times it lost its connection.
#[derive(Clone, Default)]
struct Received {
    numbers: Arc<Mutex<Vec<u64>>>,
    disconnects: Arc<Mutex<u32>>,
    count: Arc<watch::Sender<usize>>,
}

impl Received {
    /// Consume `client`'s events until it stops.
    fn record(client: Client) -> (Received, tokio::task::JoinHandle<()>) {
        let received = Received::default();
        let rec = received.clone();
        let task = tokio::spawn(async move {
            let mut client = client;
            while let Some(event) = client.next_event().await {
                match event {
                    ClientEvent::Message(m) => {
                        let n = m.client_msg_id.rsplit('-').next().unwrap().parse().unwrap();
                        let mut numbers = rec.numbers.lock().unwrap();
                        numbers.push(n);
                        rec.count.send_replace(numbers.len());
                    }
                    ClientEvent::Disconnected { .. } => *rec.disconnects.lock().unwrap() += 1,
                    ClientEvent::Stopped { error } => panic!("receiver stopped: {error}"),
                    _ => {}
                }
            }
        });
        (received, task)
    }

    async fn wait_for(&self, count: usize) {
        let mut rx = self.count.subscribe();
        let reached = tokio::time::timeout(WAIT, rx.wait_for(|n| *n >= count)).await;
        assert!(
            reached.is_ok(),
            "only {:?} of {count} delivered",
            self.numbers.lock().unwrap()
        );
    }

    fn numbers(&self) -> Vec<u64> {
        self.numbers.lock().unwrap().clone()
    }

    fn disconnects(&self) -> u32 {
        *self.disconnects.lock().unwrap()
    }
}

/// Send message `n` to `to` until the server answers it, resending with the
/// same client_msg_id after each failure once the client has reconnected
/// (the server's dedupe makes a resend of a stored message a no-op).
/// Returns how many attempts failed.
async fn send_until_answered(client: &mut Client, to: &str, n: u64) -> u32 {
    for failures in 0..100 {
        let body = format!("message {n}").into_bytes();
        // Unique per recipient too: the server dedupes on (sender, id).
        let id = format!("alice-{to}-{n}");
        let Err(error) = client
            .send(Recipient::Name(to.into()), id, "text/plain", body)
            .await
        else {
            return failures;
        };
        tracing::debug!(%error, n, "send failed; waiting for a reconnect");
        // Wait for the client's next login before resending.
        let connected = tokio::time::timeout(WAIT, async {
            loop {
                match client.next_event().await {
                    Some(ClientEvent::Connected { .. }) => return,
                    Some(ClientEvent::Stopped { error }) => panic!("sender stopped: {error}"),
                    Some(_) => {}
                    None => panic!("sender ended"),
                }
            }
        });
        connected.await.expect("the sender reconnects");
    }
    panic!("message {n} never answered");
}

async fn register(addr: std::net::SocketAddr, names: &[&str]) {
    let mut setup = RawClient::connect(addr).await;
    for name in names {
        setup.register(name).await;
    }
}

async fn ping(client: &mut RawClient) {
    let answer = client.request(Body::Ping(pb::Ping::default())).await;
    assert!(matches!(answer, Body::Pong(_)), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_past_the_idle_limit_closes_silent_sessions_and_loses_or_repeats_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let mut pigeond = Pigeond::start(dir.path(), CONFIG, LOG).await;
    let addr = pigeond.addr;
    register(addr, &["alice", "bob", "carol"]).await;
    let profiles = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut alice = sdk_client(addr, "alice", profiles[0].path());
    let (bob, bob_task) = Received::record(sdk_client(addr, "bob", profiles[1].path()));
    // carol is a raw client that will fall silent during the pause, as a
    // phone that lost its network would.
    let mut carol = RawClient::connect(addr).await;
    let carol_id = carol.login("carol", "c1", Platform::Ios).await.user_id;

    // Wait for alice's first login, then send 1..=10 with the server up.
    let mut failed = 0;
    for n in 1..=10 {
        failed += send_until_answered(&mut alice, "bob", n).await;
    }
    bob.wait_for(10).await;
    ping(&mut carol).await;
    let bob_disconnects = bob.disconnects();

    pigeond.signal("STOP");
    // 11..=20 go on in the background: the first ones are attempted while
    // the server is stopped, time out with an unknown outcome and are resent.
    let sender = tokio::spawn(async move {
        let mut failed = 0;
        for n in 11..=20 {
            failed += send_until_answered(&mut alice, "bob", n).await;
        }
        (alice, failed)
    });
    tokio::time::sleep(3 * IDLE).await; // the pause under test
    pigeond.signal("CONT");
    let resumed = Instant::now();

    // carol said nothing for longer than the idle limit: closed at once.
    let frames = carol.closed().await;
    assert!(
        frames.iter().all(|f| f.request_id == 0),
        "only pushes before the close: {frames:?}"
    );
    assert!(
        resumed.elapsed() < IDLE,
        "carol closed {:?} after SIGCONT",
        resumed.elapsed()
    );
    let closed = pigeond
        .wait_for(|r| r["fields"]["message"] == "idle timeout" && r["span"]["user_id"] == carol_id)
        .await;
    assert!(closed.is_some(), "the server logged carol's idle close");

    let (alice, more_failed) = tokio::time::timeout(WAIT, sender)
        .await
        .expect("sends go through after SIGCONT")
        .unwrap();
    failed += more_failed;
    assert!(
        more_failed > 0,
        "a send was attempted while the server was stopped"
    );
    bob.wait_for(20).await;
    assert_eq!(
        bob.numbers(),
        (1..=20).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    assert!(
        bob.disconnects() > bob_disconnects,
        "bob's client noticed the dead server and reconnected"
    );
    // Stored exactly once too: a new device sees 20 entries, no resent copy.
    let mut probe = RawClient::connect(addr).await;
    let login = probe.login("bob", "probe", Platform::Web).await;
    assert_eq!(login.max_seq, 20, "{failed} failed attempts were resent");
    let page = probe.pull(0, 100).await;
    let expected: Vec<String> = (1..=20).map(|n| format!("message {n}")).collect();
    assert_eq!(texts(&page), expected);

    alice.shutdown().await;
    bob_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_is_closed_by_the_idle_limit_while_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut pigeond = Pigeond::start(dir.path(), CONFIG, LOG).await;
    let addr = pigeond.addr;
    register(addr, &["alice", "bob", "dave"]).await;
    // dave logs in, then stops: nothing polls his connection from here on,
    // like a process under SIGSTOP (no reads, no writes, no heartbeats).
    let mut dave = RawClient::connect(addr).await;
    let dave_id = dave.login("dave", "d1", Platform::Ios).await.user_id;
    let stopped = Instant::now();

    let profiles = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut alice = sdk_client(addr, "alice", profiles[0].path());
    let (bob, bob_task) = Received::record(sdk_client(addr, "bob", profiles[1].path()));
    // alice and bob go on for more than twice the idle limit, one message
    // to each of bob and dave every 100 ms.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0;
    while n < 5 || stopped.elapsed() < 2 * IDLE {
        pace.tick().await;
        n += 1;
        send_until_answered(&mut alice, "bob", n).await;
        send_until_answered(&mut alice, "dave", n).await;
    }
    let closed = pigeond
        .wait_for(|r| r["fields"]["message"] == "idle timeout" && r["span"]["user_id"] == dave_id)
        .await;
    assert!(
        closed.is_some(),
        "dave's session was closed by the idle limit"
    );
    bob.wait_for(n as usize).await;
    assert_eq!(bob.numbers(), (1..=n).collect::<Vec<_>>());
    assert_eq!(bob.disconnects(), 0, "bob was never disconnected");

    // dave continues: what the server wrote before closing, then the end.
    let frames = dave.closed().await;
    assert!(
        frames.iter().all(|f| f.request_id == 0),
        "only pushes: {frames:?}"
    );
    // Nothing sent to him meanwhile was lost: his device pulls it all.
    let mut dave = RawClient::connect(addr).await;
    let login = dave.login("dave", "d1", Platform::Ios).await;
    assert_eq!(login.max_seq, n);
    let page = dave.pull(0, 1000).await;
    let expected: Vec<String> = (1..=n).map(|i| format!("message {i}")).collect();
    assert_eq!(texts(&page), expected);

    alice.shutdown().await;
    bob_task.abort();
}
