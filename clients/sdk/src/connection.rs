//! One live connection to a pigeon server: TCP connect and TLS handshake
//! (each with a timeout), then typed request/answer methods over the frame
//! codec, server pushes as [`ServerEvent`]s, and a heartbeat after login.
//!
//! A connection never reconnects; the high-level `client` module does that.
//! Requests may be issued concurrently from clones of the handle: each gets
//! a fresh non-zero request id and waits for the answer carrying that id.

mod shared;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pigeon_protocol::{pb, Body, Codec, Envelope, Platform, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::DropGuard;

use crate::error::SdkError;
use crate::tls;
pub(crate) use shared::now_ms;
use shared::Shared;

/// The largest frame this client accepts from a server. Larger than the
/// server's default so a server configured with bigger frames still works.
pub const CLIENT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Frames waiting to be written; a full queue makes requests wait (and
/// time out), it never drops a request.
const OUTBOUND_QUEUE: usize = 256;

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// "host:port" to dial, e.g. "127.0.0.1:7443".
    pub addr: String,
    /// The name the server's certificate must be valid for (a DNS name or an
    /// IP address). Empty: the host part of `addr`.
    pub server_name: String,
    /// The TLS client configuration (see [`tls::client_config_from_ca_file`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// Limit for the TCP connect and, separately, for the TLS handshake.
    pub connect_timeout: Duration,
    /// Limit for each request's answer (and each write).
    pub request_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `addr` with the server name taken from its host part and
    /// default timeouts (10 s to connect, 15 s per request).
    pub fn new(addr: impl Into<String>, tls: Arc<rustls::ClientConfig>) -> ConnectOptions {
        let addr = addr.into();
        ConnectOptions {
            server_name: tls::host_of(&addr).to_owned(),
            addr,
            tls,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// How a login proves the user's identity.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The account password; the answer carries a new token.
    Password(String),
    /// A token from an earlier password login of the same device.
    Token(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets, even in debug logs.
        match self {
            Credential::Password(_) => f.write_str("Password(***)"),
            Credential::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// What a login sends.
#[derive(Debug, Clone)]
pub struct LoginParams {
    /// The username (may be empty for a token login).
    pub username: String,
    /// This installation's stable device id (see `Profile`).
    pub device_id: String,
    /// The kind of device, which decides the kick policy's class.
    pub platform: Platform,
    /// Password or token.
    pub credential: Credential,
    /// Ask for new entries inside Notify ([`pb::Notify::messages`]), so a
    /// caught-up device needs no pull for them.
    pub inline_messages: bool,
}

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A user id.
    Id(u64),
    /// A username.
    Name(String),
}

impl From<&str> for Recipient {
    fn from(name: &str) -> Recipient {
        Recipient::Name(name.to_owned())
    }
}

impl From<String> for Recipient {
    fn from(name: String) -> Recipient {
        Recipient::Name(name)
    }
}

impl From<u64> for Recipient {
    fn from(id: u64) -> Recipient {
        Recipient::Id(id)
    }
}

/// One conversation: a 1:1 peer or a group (for read positions and typing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The 1:1 conversation with this user id.
    User(u64),
    /// This group.
    Group(u64),
}

/// A frame the server sent without being asked (or that matched no
/// waiting request).
///
/// Pushes that supersede each other are merged while not yet taken, so a
/// slow reader of events holds at most one of each per key: Notify (one),
/// GroupNotify (per group, highest `max_seq`), ReadReceipt (per peer,
/// highest `read_seq`), Typing (per sender and group, latest) and Presence
/// (per user, latest).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// The user's queue reaches `max_seq`. Notifies not yet taken merge
    /// into one carrying the highest `max_seq`.
    Notify(pb::Notify),
    /// A large group's timeline reaches `max_seq`: pull it with
    /// [`Connection::group_pull`] if behind.
    GroupNotify(pb::GroupNotify),
    /// A 1:1 peer read the conversation up to `read_seq`.
    ReadReceipt(pb::ReadReceipt),
    /// A peer or fellow group member is (or stopped) typing.
    Typing(pb::TypingEvent),
    /// A user this connection asked about went online or offline.
    Presence(pb::Presence),
    /// The session is over; the server closes next.
    Kick(pb::Kick),
    /// An error not tied to a request (request id 0), usually fatal.
    Error(pb::Error),
    /// Any other frame: a response to a request that already timed out, or
    /// a body the server should not push. Kept for conformance tests.
    Unsolicited(Envelope),
}

/// A handle to one live connection. Clones share it; the connection closes
/// when the last handle is dropped, on [`Connection::close`], or when it dies.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    _close_on_drop: Arc<DropGuard>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.shared.peer)
            .field("closed", &self.shared.close_reason())
            .finish()
    }
}

/// Unwrap the expected answer variant or report what came instead.
macro_rules! expect_answer {
    ($answer:expr, $variant:ident) => {
        match $answer {
            Body::$variant(inner) => Ok(inner),
            other => Err(SdkError::Protocol(format!(
                "expected {} but the server answered {}",
                stringify!($variant),
                other.name()
            ))),
        }
    };
}

// After the macro, so the requests there can use it.
mod push;
mod social;

pub use push::PushRegistration;

impl Connection {
    /// Dial, handshake and start the connection's tasks. Must run inside a
    /// tokio runtime.
    pub async fn connect(options: &ConnectOptions) -> Result<Connection, SdkError> {
        let name = match options.server_name.as_str() {
            "" => tls::host_of(&options.addr),
            name => name,
        };
        let server_name = tls::server_name(name)?;
        let dial = TcpStream::connect(options.addr.as_str());
        let tcp = match tokio::time::timeout(options.connect_timeout, dial).await {
            Err(_) => {
                return Err(SdkError::Timeout {
                    what: "tcp connect",
                    after: options.connect_timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(SdkError::Connect {
                    addr: options.addr.clone(),
                    source,
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        tcp.set_nodelay(true)?;
        let handshake = TlsConnector::from(options.tls.clone()).connect(server_name, tcp);
        let stream = match tokio::time::timeout(options.connect_timeout, handshake).await {
            Err(_) => {
                return Err(SdkError::Timeout {
                    what: "tls handshake",
                    after: options.connect_timeout,
                })
            }
            Ok(Err(e)) => return Err(tls::handshake_error(e)),
            Ok(Ok(stream)) => stream,
        };
        let (sink, stream) = Framed::new(stream, Codec::new(CLIENT_MAX_FRAME)).split();
        let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let shared = Arc::new(Shared::new(
            options.addr.clone(),
            options.request_timeout,
            outbound_tx,
        ));
        shared
            .tasks
            .spawn(shared::write_loop(shared.clone(), sink, outbound_rx));
        shared
            .tasks
            .spawn(shared::read_loop(shared.clone(), stream));
        tracing::debug!(peer = %options.addr, "connected");
        Ok(Connection {
            _close_on_drop: Arc::new(shared.cancel.clone().drop_guard()),
            shared,
        })
    }

    /// Send a request and await its answer; an `Error` answer becomes
    /// [`SdkError::Server`].
    pub async fn request(&self, body: Body) -> Result<Body, SdkError> {
        match self.shared.exchange(body).await? {
            Body::Error(error) => Err(SdkError::from_wire(error)),
            answer => Ok(answer),
        }
    }

    /// Send a request and await its answer as is, `Error` bodies included.
    pub async fn request_raw(&self, body: Body) -> Result<Body, SdkError> {
        self.shared.exchange(body).await
    }

    /// Write any envelope as is (any request id, even a server-only body)
    /// without waiting for an answer. An answer whose id matches no waiting
    /// request arrives as [`ServerEvent::Unsolicited`]. For conformance tests.
    pub async fn send_envelope(&self, envelope: Envelope) -> Result<(), SdkError> {
        self.shared.write(envelope).await
    }

    /// Create an account; returns the new user id. Does not log in.
    pub async fn register(&self, username: &str, password: &str) -> Result<u64, SdkError> {
        let body = Body::Register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION as i32,
            username: username.to_owned(),
            password: password.to_owned(),
        });
        Ok(expect_answer!(self.request(body).await?, Registered)?.user_id)
    }

    /// Log in; on success the heartbeat starts and the server's idle limit
    /// applies to this connection.
    pub async fn login(&self, params: LoginParams) -> Result<pb::LoginResponse, SdkError> {
        let credential = match params.credential {
            Credential::Password(p) => pb::login_request::Credential::Password(p),
            Credential::Token(t) => pb::login_request::Credential::Token(t),
        };
        let body = Body::Login(pb::LoginRequest {
            protocol_version: PROTOCOL_VERSION as i32,
            username: params.username,
            device_id: params.device_id,
            platform: params.platform as i32,
            credential: Some(credential),
            inline_messages: params.inline_messages,
        });
        let answer = expect_answer!(self.request(body).await?, LoggedIn)?;
        self.shared.start_liveness(&answer);
        Ok(answer)
    }

    /// Revoke this device's token; the server closes the connection after.
    pub async fn logout(&self) -> Result<(), SdkError> {
        let body = Body::Logout(pb::LogoutRequest {});
        expect_answer!(self.request(body).await?, LoggedOut)?;
        Ok(())
    }

    /// One heartbeat round trip.
    pub async fn ping(&self) -> Result<pb::Pong, SdkError> {
        let body = Body::Ping(pb::Ping {
            client_time_ms: now_ms(),
        });
        expect_answer!(self.request(body).await?, Pong)
    }

    /// Send one message. `client_msg_id` makes retries safe: resend with
    /// the same id after an error and the server stores it at most once.
    pub async fn send(
        &self,
        to: impl Into<Recipient>,
        client_msg_id: impl Into<String>,
        content_type: impl Into<String>,
        content: impl Into<Bytes>,
    ) -> Result<pb::SendResponse, SdkError> {
        let (to_user_id, to_username) = match to.into() {
            Recipient::Id(id) => (id, String::new()),
            Recipient::Name(name) => (0, name),
        };
        let body = Body::Send(pb::SendRequest {
            group_id: 0,
            to_user_id,
            to_username,
            client_msg_id: client_msg_id.into(),
            content_type: content_type.into(),
            content: content.into(),
        });
        expect_answer!(self.request(body).await?, Sent)
    }

    /// Fetch queue entries with seq > `after_seq` (and acknowledge up to it).
    pub async fn pull(&self, after_seq: u64, limit: u32) -> Result<pb::PullResponse, SdkError> {
        let body = Body::Pull(pb::PullRequest { after_seq, limit });
        expect_answer!(self.request(body).await?, Pulled)
    }

    /// Acknowledge every entry up to and including `seq`; returns the cursor.
    pub async fn ack(&self, seq: u64) -> Result<u64, SdkError> {
        let body = Body::Ack(pb::AckRequest { seq });
        Ok(expect_answer!(self.request(body).await?, Acked)?.acked_seq)
    }

    /// The next server push; None once the connection is closed and every
    /// queued push was taken.
    pub async fn next_event(&self) -> Option<ServerEvent> {
        self.shared.next_event().await
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.close_reason().is_some()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.close_reason()
    }

    /// Wait until the connection has ended, for whatever reason.
    pub async fn closed(&self) {
        self.shared.cancel.cancelled().await;
    }

    /// Close now: fail waiting requests, send a TLS close_notify, and wait
    /// (briefly) for the connection's tasks to stop.
    pub async fn close(&self) {
        self.shared.shutdown("closed by the client");
        self.shared.tasks.close();
        // Bounded: the tasks stop on cancellation, the writer within CLOSE_GRACE.
        let _ = tokio::time::timeout(shared::CLOSE_GRACE * 2, self.shared.tasks.wait()).await;
    }
}
