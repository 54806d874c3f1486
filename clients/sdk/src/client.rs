//! The high-level [`Client`]: a supervisor task that keeps one logged-in
//! connection alive, syncs the inbox on login and on every Notify, follows
//! the timelines of the user's large groups (on login, on a GroupNotify
//! ahead of the group's cursor, and after the inbox brings a group event),
//! hands new messages to the application in order as [`ClientEvent`]s,
//! passes receipts, typing and presence pushes on, keeps the [`Profile`]
//! (token, cursors) on disk, and reconnects with jittered exponential
//! backoff.
//!
//! The application reads events with [`Client::next_event`] and sends with
//! [`Client::send`] while connected. Sends are never retried behind the
//! application's back: it gets the server's answer or an error, and may
//! resend with the same `client_msg_id` safely.

mod sink;
mod supervisor;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pigeon_protocol::{pb, KickReason, Platform};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::connection::{ConnectOptions, Connection, Recipient};
use crate::error::SdkError;
use crate::profile::Profile;
use crate::sync::DEFAULT_PULL_LIMIT;

/// Events waiting for the application. Full: the supervisor waits (and so
/// stops pulling), the messages stay queued on the server meanwhile.
const EVENT_QUEUE: usize = 256;

/// How the client connects and behaves.
#[derive(Clone)]
pub struct ClientConfig {
    /// Where to connect.
    pub connect: ConnectOptions,
    /// Who to log in as (may be empty when the profile holds a token).
    pub username: String,
    /// The password, used when no token is stored or the token is refused.
    /// Without it, a refused token stops the client.
    pub password: Option<String>,
    /// The kind of device this client runs on.
    pub platform: Platform,
    /// Entries per pull (1 to 1000; 0 for the server's default).
    pub pull_limit: u32,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// A connection that stayed up this long resets the backoff.
    pub stable_after: Duration,
    /// Whether to reconnect at all. When false the client stops (with
    /// [`ClientEvent::Stopped`] or [`ClientEvent::Disconnected`]) at the
    /// first failure, which suits one-shot tools.
    pub reconnect: bool,
    /// Ask the server for new entries inside Notify, so a caught-up inbox
    /// takes them without a pull (acknowledged about a second later).
    pub inline_messages: bool,
}

impl ClientConfig {
    /// Defaults: desktop platform, 100 entries per pull, 200 ms..30 s
    /// backoff reset after 30 s of stable connection, reconnecting, new
    /// entries inline.
    pub fn new(connect: ConnectOptions, username: impl Into<String>) -> ClientConfig {
        ClientConfig {
            connect,
            username: username.into(),
            password: None,
            platform: Platform::Desktop,
            pull_limit: DEFAULT_PULL_LIMIT,
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(30),
            reconnect: true,
            inline_messages: true,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("connect", &self.connect)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("platform", &self.platform)
            .field("pull_limit", &self.pull_limit)
            .field("backoff", &self.backoff)
            .field("stable_after", &self.stable_after)
            .field("reconnect", &self.reconnect)
            .field("inline_messages", &self.inline_messages)
            .finish()
    }
}

/// What the client tells the application.
#[derive(Debug)]
pub enum ClientEvent {
    /// Logged in on a new connection.
    Connected {
        /// The user's id.
        user_id: u64,
        /// This device's id.
        device_id: String,
        /// The top of the user's queue at login.
        max_seq: u64,
        /// The cursor the sync resumes from.
        cursor: u64,
    },
    /// A new inbox entry, in seq order, never one at or below the cursor.
    /// Small groups' messages and every group's events come this way (with
    /// `group_id` set).
    Message(pb::Message),
    /// A new entry of a large group's timeline, in group seq order within
    /// the group (`seq` and `conv_seq` are the group seq, `group_id` names
    /// the group). There is no order between the inbox and a timeline: see
    /// [`crate::timeline`] for merging them by conversation.
    GroupMessage(pb::Message),
    /// A 1:1 peer read the conversation up to `read_seq` (a conv_seq).
    ReadReceipt(pb::ReadReceipt),
    /// A peer or fellow group member is (or stopped) typing.
    Typing(pb::TypingEvent),
    /// A user this connection subscribed to (with
    /// [`Connection::presence`]) went online or offline.
    Presence(pb::Presence),
    /// Every waiting inbox message and large-group timeline entry was
    /// delivered (and the inbox acknowledged): after each catch-up, and
    /// after the delayed ack of entries taken from notifies.
    CaughtUp {
        /// The cursor now.
        cursor: u64,
    },
    /// The connection ended or could not be made.
    Disconnected {
        /// Why, for humans.
        reason: String,
        /// The error behind it, when there was one (a failed connect,
        /// login or sync); None when the connection simply ended.
        error: Option<SdkError>,
        /// When the next attempt comes; None when the client will not retry.
        retry_in: Option<Duration>,
    },
    /// The server ended the session. For SAME_DEVICE, SAME_PLATFORM_CLASS
    /// and REVOKED the client stops (reconnecting would kick the other
    /// session back); the event stream ends after this event.
    Kicked {
        /// Why.
        reason: KickReason,
        /// The server's detail.
        message: String,
        /// Whether the client will reconnect.
        reconnecting: bool,
    },
    /// The client gave up (a refused login without a password to fall back
    /// on, an untrusted certificate, an unwritable profile, ...). The event
    /// stream ends after this event.
    Stopped {
        /// Why.
        error: SdkError,
    },
}

/// State the application's handle and the supervisor share.
struct ClientShared {
    conn: Mutex<Option<Connection>>,
    profile: Mutex<Profile>,
    stop: CancellationToken,
}

/// A self-healing, syncing client. Dropping it stops the supervisor and
/// closes the connection.
pub struct Client {
    shared: Arc<ClientShared>,
    events: mpsc::Receiver<ClientEvent>,
    task: Option<JoinHandle<()>>,
    _stop_on_drop: DropGuard,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connected", &self.connection().is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Start the supervisor (inside a tokio runtime). It connects, logs in
    /// with the profile's token (or the password), and syncs from the
    /// profile's cursor.
    pub fn start(config: ClientConfig, profile: Profile) -> Client {
        let stop = CancellationToken::new();
        let shared = Arc::new(ClientShared {
            conn: Mutex::new(None),
            profile: Mutex::new(profile),
            stop: stop.clone(),
        });
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let supervisor = supervisor::Supervisor::new(config, shared.clone(), events_tx);
        let task = tokio::spawn(supervisor.run());
        Client {
            shared,
            events,
            task: Some(task),
            _stop_on_drop: stop.drop_guard(),
        }
    }

    /// The next event; None once the client has stopped and every event
    /// was taken.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// The live, logged-in connection, if there is one right now.
    pub fn connection(&self) -> Option<Connection> {
        self.shared
            .conn
            .lock()
            .expect("connection lock poisoned")
            .clone()
    }

    /// Send a message on the live connection; [`SdkError::NotConnected`]
    /// when there is none. Not retried: on error, resend with the same
    /// `client_msg_id` when connected again.
    pub async fn send(
        &self,
        to: impl Into<Recipient>,
        client_msg_id: impl Into<String>,
        content_type: impl Into<String>,
        content: impl Into<Bytes>,
    ) -> Result<pb::SendResponse, SdkError> {
        let conn = self.connection().ok_or(SdkError::NotConnected)?;
        conn.send(to, client_msg_id, content_type, content).await
    }

    /// A copy of the profile as the client keeps it (cursor, token, ...).
    pub fn profile(&self) -> Profile {
        self.shared
            .profile
            .lock()
            .expect("profile lock poisoned")
            .clone()
    }

    /// Stop: close the connection and wait for the supervisor to finish.
    /// The cursor on disk is whatever was last committed.
    pub async fn shutdown(mut self) {
        self.events.close();
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "client supervisor ended abnormally");
            }
        }
    }
}
