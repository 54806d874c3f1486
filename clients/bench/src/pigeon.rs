//! The pigeon side: raw frames from the protocol crate over tokio-rustls,
//! without the sdk's per-connection tasks and request map, so 19,000
//! connections cost the load generator little. Accounts are registered and
//! logged in by password once (argon2 on the server: slow on purpose) and
//! their tokens kept in a file; every later connection logs in by token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, Codec, Envelope, ErrorCode, Platform, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use tokio::io::WriteHalf;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at};
use tokio_util::codec::{Framed, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::net::{Dialer, Handshake, Tls};
use crate::payload::Recorder;

/// Every bench account's password.
const PASSWORD: &str = "pigeon-bench password";
/// Every bench account's one device.
const DEVICE: &str = "bench";
/// Limit for one request's answer (a login may wait behind argon2 hashes).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Entries per pull (the server's maximum by default).
const PULL_LIMIT: u32 = 1000;

/// How long a receiver holds the acknowledgement of entries it took from
/// notifies before it sends an Ack: about what the server holds a pull's
/// (`messaging.ack_write_interval`, 1 s by default), so either way the
/// server writes a device's cursor about once a second.
pub const ACK_DELAY: Duration = Duration::from_secs(1);
/// How often a sending connection that waits for answers sends a Ping
/// (pigeond's default heartbeat interval).
const SENDER_HEARTBEAT: Duration = Duration::from_secs(30);

/// A connection speaking frames.
pub type Frames = Framed<Tls, Codec>;

/// A registered user with a token for the bench device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Account {
    /// Username.
    pub name: String,
    /// User id.
    pub id: u64,
    /// Token of the bench device.
    pub token: String,
}

/// Accounts by "server/username", kept in a JSON file between runs.
pub struct Accounts {
    path: PathBuf,
    server: SocketAddr,
    known: BTreeMap<String, Account>,
}

impl Accounts {
    /// Load the account file (a missing file is an empty one).
    pub fn load(path: &Path, server: SocketAddr) -> Result<Accounts> {
        let known = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not an account file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Accounts {
            path: path.to_owned(),
            server,
            known,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.server)
    }

    /// Make sure every name has an account and a token: register and log
    /// in by password (at most `concurrency` at once) those not yet known.
    /// Returns them in the order of `names`.
    pub async fn ensure(
        &mut self,
        dialer: &Arc<Dialer>,
        names: &[String],
        concurrency: usize,
    ) -> Result<Vec<Account>> {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !self.known.contains_key(&self.key(n)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "registering and logging in {} accounts by password ({} at a time)...",
                missing.len(),
                concurrency
            );
        }
        let server = self.server;
        let mut made = futures_util::stream::iter(missing.into_iter().map(|name| {
            let dialer = dialer.clone();
            async move { password_account(&dialer, server, &name).await }
        }))
        .buffer_unordered(concurrency.max(1));
        let mut done = 0usize;
        while let Some(account) = made.next().await {
            let account = account?;
            self.known.insert(self.key(&account.name), account);
            done += 1;
            if done.is_multiple_of(1000) {
                eprintln!("  {done} accounts ready");
                self.save()?;
            }
        }
        drop(made);
        self.save()?;
        Ok(names
            .iter()
            .map(|n| self.known[&self.key(n)].clone())
            .collect())
    }

    /// Replace one account (after its token was refused and renewed).
    pub fn update(&mut self, account: Account) {
        self.known.insert(self.key(&account.name), account);
    }

    /// Write the file.
    pub fn save(&self) -> Result<()> {
        let json = serde_json::to_vec(&self.known)?;
        std::fs::write(&self.path, json)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Register `name` (an existing account is fine) and log in by password.
async fn password_account(dialer: &Dialer, server: SocketAddr, name: &str) -> Result<Account> {
    let (tls, _) = dialer.tls(server).await?;
    let mut frames = frames(tls);
    let register = Body::Register(pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION as i32,
        username: name.to_owned(),
        password: PASSWORD.into(),
    });
    match request(&mut frames, 1, register).await? {
        Body::Registered(_) => {}
        Body::Error(e) if e.code == ErrorCode::UsernameTaken as i32 => {}
        other => bail!("register {name}: {other:?}"),
    }
    let login = login_body(name, Credential::Password(PASSWORD.into()), false);
    match request(&mut frames, 2, login).await? {
        Body::LoggedIn(r) => Ok(Account {
            name: name.to_owned(),
            id: r.user_id,
            token: r.token,
        }),
        other => bail!("login {name}: {other:?}"),
    }
}

fn login_body(name: &str, credential: Credential, inline_messages: bool) -> Body {
    Body::Login(pb::LoginRequest {
        protocol_version: PROTOCOL_VERSION as i32,
        username: name.to_owned(),
        device_id: DEVICE.into(),
        platform: Platform::Cli as i32,
        credential: Some(credential),
        inline_messages,
    })
}

/// Wrap a TLS stream in the frame codec.
pub fn frames(tls: Tls) -> Frames {
    Framed::new(tls, Codec::default())
}

/// Send one request and wait for the answer with its id (pushes skipped).
pub async fn request(frames: &mut Framed<Tls, Codec>, id: u64, body: Body) -> Result<Body> {
    timeout(REQUEST_TIMEOUT, frames.send(Envelope::new(id, body)))
        .await
        .map_err(|_| anyhow!("write timed out"))??;
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    // Bounded by the deadline: every wait below is under it.
    loop {
        let frame = timeout_at(deadline, frames.next())
            .await
            .map_err(|_| anyhow!("no answer to request {id} in {REQUEST_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("the server closed the connection"))??;
        if frame.request_id == id {
            return frame
                .body
                .ok_or_else(|| anyhow!("an answer without a body"));
        }
    }
}

/// A logged-in connection and what the login answered.
pub struct Session {
    /// The connection.
    pub frames: Frames,
    /// The login answer.
    pub login: pb::LoginResponse,
    /// Whether TLS was resumed.
    pub handshake: Handshake,
}

/// Connect and log in by token; a refused token (the server's data was
/// reset) falls back to register + password login, and `renewed` gets the
/// new account. `inline` asks for new entries inside Notify (a receiver).
pub async fn connect(
    dialer: &Dialer,
    server: SocketAddr,
    account: &Account,
    renewed: Option<&std::sync::Mutex<Vec<Account>>>,
    inline: bool,
) -> Result<Session> {
    let (tls, handshake) = dialer.tls_as(server, &account.name).await?;
    let mut frames = frames(tls);
    let body = login_body(
        &account.name,
        Credential::Token(account.token.clone()),
        inline,
    );
    match request(&mut frames, 1, body).await? {
        Body::LoggedIn(login) => Ok(Session {
            frames,
            login,
            handshake,
        }),
        Body::Error(e) if e.code == ErrorCode::AuthFailed as i32 && renewed.is_some() => {
            drop(frames);
            let fresh = password_account(dialer, server, &account.name).await?;
            if let Some(renewed) = renewed {
                renewed.lock().expect("not poisoned").push(fresh.clone());
            }
            Box::pin(connect(dialer, server, &fresh, None, inline)).await
        }
        other => bail!("token login {}: {other:?}", account.name),
    }
}

/// Counters shared by a [`Sender`] and its answer reader.
#[derive(Default)]
struct SendCounters {
    answered: AtomicU64,
    refused: AtomicU64,
}

/// A sending connection: writes sends without waiting for each answer, up
/// to a window of unanswered ones; a reader task takes the answers.
pub struct Sender {
    sink: FramedWrite<WriteHalf<Tls>, Codec>,
    window: Arc<Semaphore>,
    window_size: u32,
    next_id: u64,
    tag: String,
    issued: u64,
    counters: Arc<SendCounters>,
    reader: JoinHandle<Result<()>>,
    stop: CancellationToken,
}

impl Sender {
    /// Split a logged-in connection; `tag` makes client_msg_ids unique per run.
    pub fn start(frames: Frames, window: u32, tag: String) -> Sender {
        let parts = frames.into_parts();
        let (read, write) = tokio::io::split(parts.io);
        let mut source = FramedRead::new(read, Codec::default());
        let window_size = window.max(1);
        let permits = Arc::new(Semaphore::new(window_size as usize));
        let counters = Arc::new(SendCounters::default());
        let stop = CancellationToken::new();
        let reader = tokio::spawn({
            let (permits, counters, stop) = (permits.clone(), counters.clone(), stop.clone());
            async move {
                // Bounded: ends when the stream ends or the sender stops it.
                loop {
                    let frame = tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        frame = source.next() => frame,
                    };
                    let Some(frame) = frame else {
                        bail!("the server closed a sending connection");
                    };
                    match frame?.body {
                        Some(Body::Sent(_)) => {
                            counters.answered.fetch_add(1, Ordering::Relaxed);
                            permits.add_permits(1);
                        }
                        Some(Body::Error(e)) => {
                            counters.answered.fetch_add(1, Ordering::Relaxed);
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            permits.add_permits(1);
                            if e.fatal {
                                bail!("fatal error on a sending connection: {}", e.message);
                            }
                        }
                        _ => {} // Notify of our own queue, Pong: nothing to do.
                    }
                }
            }
        });
        Sender {
            sink: FramedWrite::new(write, Codec::default()),
            window: permits,
            window_size,
            next_id: 1,
            tag,
            issued: 0,
            counters,
            reader,
            stop,
        }
    }

    /// Send a Ping (its Pong is ignored by the reader): a connection that
    /// waits for answers sends nothing else, and pigeond closes one that is
    /// silent for `timeouts.idle`, as the protocol says.
    async fn ping(&mut self) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let ping = Body::Ping(pb::Ping { client_time_ms: 0 });
        timeout(REQUEST_TIMEOUT, self.sink.send(Envelope::new(id, ping)))
            .await
            .map_err(|_| anyhow!("ping write timed out"))??;
        Ok(())
    }

    /// Send `content` to user `to` once the window has room.
    pub async fn send(&mut self, to: u64, content: Bytes) -> Result<()> {
        self.send_to(to, 0, content).await
    }

    /// Send one message to a group (waits for window room, like `send`).
    pub async fn send_group(&mut self, group: u64, content: Bytes) -> Result<()> {
        self.send_to(0, group, content).await
    }

    async fn send_to(&mut self, to: u64, group: u64, content: Bytes) -> Result<()> {
        let started = Instant::now();
        // Bounded by REQUEST_TIMEOUT; heartbeats while the window is full.
        let window = self.window.clone();
        let permit = loop {
            match timeout(SENDER_HEARTBEAT, window.acquire()).await {
                Ok(permit) => break permit.expect("the window semaphore is never closed"),
                Err(_) if started.elapsed() >= REQUEST_TIMEOUT => {
                    bail!("no send answer in {REQUEST_TIMEOUT:?}")
                }
                Err(_) => self.ping().await?,
            }
        };
        // The reader gives the permit back when the answer comes.
        permit.forget();
        let id = self.next_id;
        self.next_id += 1;
        let body = Body::Send(pb::SendRequest {
            group_id: group,
            to_user_id: to,
            to_username: String::new(),
            client_msg_id: format!("{}-{id}", self.tag),
            content_type: "application/octet-stream".into(),
            content,
        });
        timeout(REQUEST_TIMEOUT, self.sink.send(Envelope::new(id, body)))
            .await
            .map_err(|_| anyhow!("send write timed out"))??;
        self.issued += 1;
        Ok(())
    }

    /// Wait (until `deadline`) for every answer; returns (answered, refused).
    pub async fn finish(mut self, deadline: Instant) -> Result<(u64, u64)> {
        // Bounded by the deadline; heartbeats while answers are owed.
        let all = loop {
            let beat = (Instant::now() + SENDER_HEARTBEAT).min(deadline);
            let window = self.window.clone();
            match timeout_at(beat.into(), window.acquire_many_owned(self.window_size)).await {
                Ok(all) => break Ok(all),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => self.ping().await?,
            }
        };
        self.stop.cancel();
        let read = self.reader.await?;
        let answered = self.counters.answered.load(Ordering::Relaxed);
        let refused = self.counters.refused.load(Ordering::Relaxed);
        if all.is_err() {
            read?;
            bail!(
                "{} of {} sends unanswered",
                self.issued - answered,
                self.issued
            );
        }
        Ok((answered, refused))
    }
}

/// When a receiving connection stops.
pub struct ReceiveUntil {
    /// Stop when this is cancelled.
    pub stop: CancellationToken,
    /// Stop at this instant in any case.
    pub deadline: Instant,
    /// Stop once this many bodies were received (None: only stop/deadline).
    pub bodies: Option<u64>,
}

/// The cursor after taking a notify's inline `messages` (recording those
/// above `cursor` that `keep` wants) if they reach `cursor`; `cursor` as
/// it was if they do not (the receiver pulls).
pub fn take_inline(
    cursor: u64,
    messages: &[pb::Message],
    keep: &impl Fn(&pb::Message) -> bool,
    recorder: &mut Recorder,
) -> u64 {
    if messages.first().is_none_or(|m| m.seq > cursor + 1) {
        return cursor;
    }
    let mut taken = cursor;
    for message in messages.iter().filter(|m| m.seq > cursor) {
        if keep(message) {
            recorder.on_body(&message.content);
        }
        taken = message.seq;
    }
    taken
}

/// Read a logged-in connection: take the entries a Notify carries when
/// they continue the cursor (a login with `inline`), pull whenever the
/// queue is still ahead of the cursor (at login, after a gap, for a login
/// without `inline` on every Notify), hand each body to `recorder`,
/// heartbeat, acknowledge entries taken from notifies within
/// [`ACK_DELAY`] (a pull acknowledges by its `after_seq`), and at the end
/// acknowledge what was received. Returns the cursor reached.
pub async fn receive(
    session: Session,
    recorder: &mut Recorder,
    until: ReceiveUntil,
) -> Result<u64> {
    let Session {
        mut frames, login, ..
    } = session;
    let mut cursor = login.acked_seq;
    let mut known_max = login.max_seq;
    // The highest seq the server has been told of, by an Ack or a pull.
    let mut told = login.acked_seq;
    let mut ack_due: Option<tokio::time::Instant> = None;
    let mut ack_in_flight = false;
    let mut next_id = 2u64;
    let mut pulling = false;
    let beat = Duration::from_millis(u64::from(login.heartbeat_interval_ms.max(1000)));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let deadline = tokio::time::Instant::from_std(until.deadline);
    let done = |r: &Recorder| until.bodies.is_some_and(|n| r.received >= n);
    // Bounded by the deadline, the stop token and the stream's end.
    while !done(recorder) {
        if !pulling && known_max > cursor {
            let pull = Body::Pull(pb::PullRequest {
                after_seq: cursor,
                limit: PULL_LIMIT,
            });
            frames.send(Envelope::new(next_id, pull)).await?;
            next_id += 1;
            pulling = true;
            told = told.max(cursor);
        }
        if cursor <= told {
            ack_due = None;
        } else if ack_due.is_none() {
            ack_due = Some(tokio::time::Instant::now() + ACK_DELAY);
        }
        let ack_at = ack_due.filter(|_| !ack_in_flight);
        let frame = tokio::select! {
            _ = until.stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = heartbeat.tick() => {
                let ping = Body::Ping(pb::Ping { client_time_ms: 0 });
                frames.send(Envelope::new(next_id, ping)).await?;
                next_id += 1;
                continue;
            }
            _ = tokio::time::sleep_until(ack_at.unwrap_or(deadline)), if ack_at.is_some() => {
                let ack = Body::Ack(pb::AckRequest { seq: cursor });
                frames.send(Envelope::new(next_id, ack)).await?;
                next_id += 1;
                ack_in_flight = true;
                told = cursor;
                continue;
            }
            frame = frames.next() => frame,
        };
        let frame = frame.ok_or_else(|| anyhow!("the server closed a receiving connection"))??;
        match frame.body {
            Some(Body::Notify(n)) => {
                known_max = known_max.max(n.max_seq);
                // Entries that reach the cursor are as good as pulled (the
                // first few may be ones a pull returned); during a pull its
                // answer brings them.
                if !pulling {
                    cursor = take_inline(cursor, &n.messages, &|_| true, recorder);
                }
            }
            Some(Body::Pulled(page)) => {
                pulling = false;
                for message in &page.messages {
                    recorder.on_body(&message.content);
                    cursor = cursor.max(message.seq);
                }
                known_max = known_max.max(page.max_seq);
                if page.messages.is_empty() {
                    // Entries were collected below us: nothing left to get.
                    cursor = cursor.max(page.max_seq);
                }
            }
            Some(Body::Acked(_)) => ack_in_flight = false,
            Some(Body::Pong(_)) => {}
            Some(Body::Kick(k)) => bail!("kicked: {}", k.message),
            Some(Body::Error(e)) => bail!("error on a receiving connection: {}", e.message),
            other => bail!("unexpected frame on a receiving connection: {other:?}"),
        }
    }
    if cursor > login.acked_seq {
        let ack = Body::Ack(pb::AckRequest { seq: cursor });
        match request(&mut frames, next_id, ack).await? {
            Body::Acked(_) => {}
            other => bail!("ack {cursor}: {other:?}"),
        }
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(seqs: &[u64]) -> Vec<pb::Message> {
        seqs.iter()
            .map(|&seq| pb::Message {
                seq,
                group_id: seq % 2,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn inline_entries_that_reach_the_cursor_are_taken_above_it() {
        let mut recorder = Recorder::new(false);
        let all = |_: &pb::Message| true;
        assert_eq!(
            take_inline(4, &messages(&[4, 5, 6]), &all, &mut recorder),
            6
        );
        assert_eq!(recorder.received, 2, "seq 4 was already had");
        // Starting past the cursor, or nothing: left to a pull.
        assert_eq!(take_inline(6, &messages(&[8, 9]), &all, &mut recorder), 6);
        assert_eq!(take_inline(6, &[], &all, &mut recorder), 6);
        // Taken but not recorded when `keep` says no; the cursor moves.
        let odd = |m: &pb::Message| m.group_id == 1;
        assert_eq!(take_inline(6, &messages(&[7, 8]), &odd, &mut recorder), 8);
        assert_eq!(recorder.received, 3);
    }
}
