//! Crash test: clients driven by the sdk send uniquely numbered messages to
//! each other while a real pigeond process is killed with SIGKILL at random
//! moments and restarted — every second kill lands within 50 ms of start,
//! while the store is still opening, as a supervisor's restart loop would.
//! A checker then reads every client's log and counts lost, unexpected,
//! reordered, duplicated messages and gaps or rewinds in a device's seqs.
//!
//! CI runs a short run (`PIGEON_CHAOS_CYCLES`, default 6 kill cycles). The
//! long run is `PIGEON_CHAOS_CYCLES=100 cargo test --release --test chaos
//! -- --nocapture`; `PIGEON_CHAOS_SEED` replays a schedule.

#[path = "chaos/checker.rs"]
mod checker;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checker::{ClientLog, Delivery};
use common::process::{serve_args, Pigeond};
use common::{ca_path, RawClient, PASSWORD, WAIT};
use pigeon_protocol::Platform;
use pigeon_sdk::{
    tls, Backoff, Client, ClientConfig, ClientEvent, ConnectOptions, Profile, Recipient, SdkError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const USERS: usize = 4;

fn client(addr: SocketAddr, user: &str, profile: &Path) -> Client {
    let tls = tls::client_config_from_ca_file(ca_path()).unwrap();
    let mut connect = ConnectOptions::new(addr.to_string(), tls);
    connect.server_name = "localhost".into();
    connect.request_timeout = Duration::from_secs(5);
    let mut config = ClientConfig::new(connect, user);
    config.platform = Platform::Android;
    config.password = Some(PASSWORD.to_owned());
    config.backoff = Backoff::new(Duration::from_millis(10), 2, Duration::from_millis(200));
    Client::start(config, Profile::open(profile).unwrap())
}

/// A user's log plus a watch of the highest seq delivered, so the test can
/// wait for a device to catch up without polling.
#[derive(Clone)]
struct Recorder {
    log: Arc<Mutex<ClientLog>>,
    top: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Recorder {
    fn new(user: &str) -> Recorder {
        Recorder {
            log: Arc::new(Mutex::new(ClientLog {
                user: user.to_owned(),
                ..Default::default()
            })),
            top: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    fn event(&self, event: ClientEvent, me: &str) {
        match event {
            ClientEvent::Message(m) => {
                let n = m
                    .client_msg_id
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                self.log.lock().unwrap().delivered.push(Delivery {
                    seq: m.seq,
                    from: m.from_username,
                    to: m.to_username,
                    n,
                });
                self.top.send_replace(m.seq);
            }
            ClientEvent::Stopped { error } => panic!("{me}: client stopped: {error}"),
            ClientEvent::Kicked {
                reason,
                reconnecting: false,
                ..
            } => panic!("{me}: kicked for good: {reason:?}"),
            _ => {}
        }
    }
}

/// One user's client: sends to the others in turn until `stop`, and
/// records every delivery.
async fn run_user(
    mut client: Client,
    me: String,
    peers: Vec<String>,
    rec: Recorder,
    stop: CancellationToken,
    done: CancellationToken,
) -> Client {
    let mut n = 0u64;
    let mut next_peer = 0;
    loop {
        tokio::select! {
            event = client.next_event() => match event {
                Some(event) => rec.event(event, &me),
                None => panic!("{me}: client ended"),
            },
            _ = done.cancelled() => return client,
            _ = std::future::ready(()), if !stop.is_cancelled() => {
                let to = peers[next_peer % peers.len()].clone();
                let id = format!("{me}-{}", n + 1);
                let mut unsure = false;
                let send = client.send(Recipient::Name(to.clone()), id, "text/plain", format!("{me} #{}", n + 1).into_bytes());
                match send.await {
                    Ok(_) => {
                        n += 1;
                        next_peer += 1;
                        rec.log.lock().unwrap().answered.push((to, n));
                    }
                    Err(SdkError::NotConnected) => {}
                    Err(e) => {
                        tracing::debug!(user = %me, error = %e, "send outcome unknown");
                        unsure = true;
                        n += 1;
                        next_peer += 1;
                        rec.log.lock().unwrap().unknown.push((to, n));
                    }
                }
                if client.connection().is_none_or(|c| c.is_closed()) || unsure {
                    // Not connected: wait for the client's next event (it
                    // reports the disconnect, then the reconnect) instead
                    // of spinning on failed sends.
                    match tokio::time::timeout(WAIT, client.next_event()).await {
                        Ok(Some(event)) => rec.event(event, &me),
                        Ok(None) => panic!("{me}: client ended"),
                        Err(_) => panic!("{me}: no reconnect within {WAIT:?}"),
                    }
                }
            }
        }
    }
}

fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_messages_survive_sigkill_at_random_moments() {
    let cycles: u32 = std::env::var("PIGEON_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("PIGEON_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("chaos: {cycles} kill cycles, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let addr = free_loopback_addr();
    let args = || serve_args(data.path(), &addr.to_string(), &[]);
    let (mut server, _) = Pigeond::start(args()).await;

    let names: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    let mut setup = RawClient::connect(addr).await;
    for name in &names {
        setup.register(name).await;
    }
    drop(setup);

    let profiles: Vec<_> = names.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let mut recorders = Vec::new();
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let rec = Recorder::new(name);
        recorders.push(rec.clone());
        let peers = names.iter().filter(|p| *p != name).cloned().collect();
        let c = client(addr, name, profiles[i].path());
        tasks.push(tokio::spawn(run_user(
            c,
            name.clone(),
            peers,
            rec,
            stop.clone(),
            done.clone(),
        )));
    }

    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        server.kill().await;
        if cycle % 2 == 1 {
            // Kill again while it is starting and opening the store.
            let (starting, _serving) = Pigeond::spawn(args());
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
            starting.kill().await;
        }
        server = Pigeond::start(args()).await.0;
    }
    stop.cancel();

    // Wait until every device has received the top of its queue.
    for (name, rec) in names.iter().zip(&recorders) {
        let mut probe = RawClient::connect(addr).await;
        let max_seq = probe.login(name, "probe", Platform::Web).await.max_seq;
        let mut top = rec.top.subscribe();
        let caught_up = tokio::time::timeout(WAIT, top.wait_for(|seq| *seq >= max_seq)).await;
        assert!(
            caught_up.is_ok(),
            "{name} did not catch up to seq {max_seq}"
        );
    }
    done.cancel();
    for task in tasks {
        task.await.unwrap().shutdown().await;
    }
    server.kill().await;

    let logs: Vec<ClientLog> = recorders
        .iter()
        .map(|r| r.log.lock().unwrap().clone())
        .collect();
    let report = checker::check(&logs);
    let answered: usize = logs.iter().map(|l| l.answered.len()).sum();
    let unknown: usize = logs.iter().map(|l| l.unknown.len()).sum();
    eprintln!(
        "chaos: seed {seed}, {cycles} cycles, {answered} answered, {unknown} unknown: {report:?}"
    );
    assert!(answered > 0, "no send was answered at all");
    assert!(report.is_clean(), "anomalies (seed {seed}): {report:?}");
}
