//! The clients of the crash and power-loss tests: sdk clients that send
//! uniquely numbered messages to each other and record every answer and
//! every delivery for the checker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pigeon_protocol::Platform;
use pigeon_sdk::{
    tls, Backoff, Client, ClientConfig, ClientEvent, ConnectOptions, Profile, Recipient, SdkError,
};
use tokio_util::sync::CancellationToken;

use super::checker::{ClientLog, Delivery};
use super::common::{ca_path, RawClient, PASSWORD, WAIT};

pub const USERS: usize = 4;

pub fn client(addr: SocketAddr, user: &str, profile: &Path) -> Client {
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
pub struct Recorder {
    pub log: Arc<Mutex<ClientLog>>,
    pub top: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Recorder {
    pub fn new(user: &str) -> Recorder {
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
pub async fn run_user(
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

pub fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Registers every user through a raw client.
pub async fn register(addr: SocketAddr, names: &[String]) {
    let mut setup = RawClient::connect(addr).await;
    for name in names {
        setup.register(name).await;
    }
}

/// The users' clients, each sending to the others and recording.
pub struct Swarm {
    names: Vec<String>,
    recorders: Vec<Recorder>,
    tasks: Vec<tokio::task::JoinHandle<Client>>,
    stop: CancellationToken,
    done: CancellationToken,
    _profiles: Vec<tempfile::TempDir>,
}

impl Swarm {
    /// Starts one client per name, against `addr`.
    pub fn start(addr: SocketAddr, names: &[String]) -> Swarm {
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
        Swarm {
            names: names.to_vec(),
            recorders,
            tasks,
            stop,
            done,
            _profiles: profiles,
        }
    }

    /// Stops sending, waits until every device has received the top of its
    /// queue on the server at `addr`, stops the clients and returns their
    /// logs.
    pub async fn finish(self, addr: SocketAddr) -> Vec<ClientLog> {
        self.stop.cancel();
        for (name, rec) in self.names.iter().zip(&self.recorders) {
            let mut probe = RawClient::connect(addr).await;
            let max_seq = probe.login(name, "probe", Platform::Web).await.max_seq;
            let mut top = rec.top.subscribe();
            let caught_up = tokio::time::timeout(WAIT, top.wait_for(|seq| *seq >= max_seq)).await;
            assert!(
                caught_up.is_ok(),
                "{name} did not catch up to seq {max_seq}"
            );
        }
        self.done.cancel();
        for task in self.tasks {
            task.await.unwrap().shutdown().await;
        }
        self.recorders
            .iter()
            .map(|r| r.log.lock().unwrap().clone())
            .collect()
    }
}
