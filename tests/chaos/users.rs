//! The clients of the crash and power-loss tests: sdk clients that send
//! uniquely numbered messages to each other and to a small group they all
//! belong to, and record every answer and every delivery for the checker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pigeon_protocol::pb;
use pigeon_protocol::{Body, Platform};
use pigeon_sdk::{
    tls, Backoff, Client, ClientConfig, ClientEvent, ConnectOptions, Profile, Recipient, SdkError,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::checker::{group_target, ClientLog, Delivery, Group};
use super::common::{ca_path, social, RawClient, PASSWORD, WAIT};

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
                let (to, group_seq) = match m.group_id {
                    0 => (m.to_username, 0),
                    group => (group_target(group), m.conv_seq),
                };
                self.log.lock().unwrap().delivered.push(Delivery {
                    seq: m.seq,
                    from: m.from_username,
                    to,
                    n,
                    group_seq,
                    event: m.kind == pb::MessageKind::GroupEvent as i32,
                });
                self.top.send_replace(m.seq);
            }
            ClientEvent::GroupMessage(m) => {
                panic!("{me}: a large group's timeline entry in a small group: {m:?}")
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

/// Where a client sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// A peer, by username.
    User(String),
    /// A group the client belongs to.
    Group(u64),
}

impl Target {
    /// The target's name in the logs.
    fn name(&self) -> String {
        match self {
            Target::User(name) => name.clone(),
            Target::Group(id) => group_target(*id),
        }
    }
}

/// Sends one message on the client's live connection. The sdk has no
/// group send of its own; a group send is the same request with
/// `group_id` set, on the same connection.
async fn send(client: &Client, to: &Target, id: String, text: String) -> Result<(), SdkError> {
    match to {
        Target::User(name) => client
            .send(
                Recipient::Name(name.clone()),
                id,
                "text/plain",
                text.into_bytes(),
            )
            .await
            .map(drop),
        Target::Group(group_id) => {
            let conn = client.connection().ok_or(SdkError::NotConnected)?;
            let body = Body::Send(pb::SendRequest {
                group_id: *group_id,
                client_msg_id: id,
                content_type: "text/plain".into(),
                content: text.into_bytes().into(),
                ..Default::default()
            });
            match conn.request(body).await? {
                Body::Sent(_) => Ok(()),
                other => panic!("group send answered with {other:?}"),
            }
        }
    }
}

/// One user's client: sends to each target in turn until `stop` (then
/// reports `quiet`: no send in flight, none to come), and records every
/// delivery until `done`.
pub async fn run_user(
    mut client: Client,
    me: String,
    targets: Vec<Target>,
    rec: Recorder,
    stop: CancellationToken,
    quiet: oneshot::Sender<()>,
    done: CancellationToken,
) -> Client {
    let mut n = 0u64;
    let mut next = 0;
    let mut quiet = Some(quiet);
    loop {
        tokio::select! {
            event = client.next_event() => match event {
                Some(event) => rec.event(event, &me),
                None => panic!("{me}: client ended"),
            },
            _ = done.cancelled() => return client,
            _ = stop.cancelled(), if quiet.is_some() => {
                // The finisher may have given up waiting; nothing to do then.
                let _ = quiet.take().expect("checked by the guard").send(());
            }
            _ = std::future::ready(()), if !stop.is_cancelled() => {
                let to = &targets[next % targets.len()];
                let id = format!("{me}-{}", n + 1);
                let mut unsure = false;
                match send(&client, to, id, format!("{me} #{}", n + 1)).await {
                    Ok(()) => {
                        n += 1;
                        next += 1;
                        rec.log.lock().unwrap().answered.push((to.name(), n));
                    }
                    Err(SdkError::NotConnected) => {}
                    Err(e) => {
                        tracing::debug!(user = %me, error = %e, "send outcome unknown");
                        unsure = true;
                        n += 1;
                        next += 1;
                        rec.log.lock().unwrap().unknown.push((to.name(), n));
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

/// Registers every user through a raw client, and makes the first one
/// create a (small) group of them all; returns the group as the checker
/// sees it and its id.
pub async fn set_up(addr: SocketAddr, names: &[String]) -> (Group, u64) {
    let mut setup = RawClient::connect(addr).await;
    let mut ids = Vec::new();
    for name in names {
        ids.push(setup.register(name).await);
    }
    setup.login(&names[0], "setup", Platform::Web).await;
    let group = social::create_group(&mut setup, "chaos", &ids[1..]).await;
    assert!(
        group.member_count as usize == names.len() && !group.large,
        "a small group of every user: {group:?}"
    );
    let checked = Group {
        target: group_target(group.group_id),
        members: names.to_vec(),
    };
    (checked, group.group_id)
}

/// The users' clients, each sending to the others and to the group in
/// turn, and recording.
pub struct Swarm {
    names: Vec<String>,
    recorders: Vec<Recorder>,
    tasks: Vec<tokio::task::JoinHandle<Client>>,
    stop: CancellationToken,
    quiet: Vec<oneshot::Receiver<()>>,
    done: CancellationToken,
    _profiles: Vec<tempfile::TempDir>,
}

impl Swarm {
    /// Starts one client per name, against `addr`; each sends to every
    /// other name and to `group` in turn (one send in `names.len()` goes
    /// to the group).
    pub fn start(addr: SocketAddr, names: &[String], group: u64) -> Swarm {
        let profiles: Vec<_> = names.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let mut recorders = Vec::new();
        let mut tasks = Vec::new();
        let mut quiet = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let rec = Recorder::new(name);
            recorders.push(rec.clone());
            let mut targets: Vec<Target> = names
                .iter()
                .filter(|p| *p != name)
                .map(|p| Target::User(p.clone()))
                .collect();
            // Each starts at its own place in the cycle, so group sends
            // from different users interleave with 1:1 ones.
            targets.insert(i % targets.len(), Target::Group(group));
            let c = client(addr, name, profiles[i].path());
            let (quiet_tx, quiet_rx) = oneshot::channel();
            quiet.push(quiet_rx);
            tasks.push(tokio::spawn(run_user(
                c,
                name.clone(),
                targets,
                rec,
                stop.clone(),
                quiet_tx,
                done.clone(),
            )));
        }
        Swarm {
            names: names.to_vec(),
            recorders,
            tasks,
            stop,
            quiet,
            done,
            _profiles: profiles,
        }
    }

    /// Stops sending, waits until no send is in flight (so every answered
    /// send is in the logs before the queues' tops are read) and every
    /// device has received the top of its queue on the server at `addr`,
    /// stops the clients and returns their logs.
    pub async fn finish(self, addr: SocketAddr) -> Vec<ClientLog> {
        self.stop.cancel();
        for (name, quiet) in self.names.iter().zip(self.quiet) {
            let stopped = tokio::time::timeout(WAIT, quiet).await;
            assert!(matches!(stopped, Ok(Ok(()))), "{name} did not stop sending");
        }
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
