//! One handler per request: check the connection's state, translate the
//! protobuf request into a service call, and queue the answer. Requests are
//! taken in order; the answers are written in the same order. Groups,
//! conversations, receipts, recall, devices, typing and presence are in
//! [`social`].

mod social;

use std::collections::HashSet;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pigeon_protocol::pb::{self, login_request};
use pigeon_protocol::{Body, Envelope, ErrorCode, Platform, PROTOCOL_VERSION};

use super::connection::{Outbound, OutboundItem};
use super::limits::TokenBucket;
use super::Gateway;
use crate::clock::now_ms;
use crate::error::ServiceError;
use prost::Message as _;

use crate::service::messaging::Messaging;
use crate::service::{
    Authenticated, Caller, Credential, Delivered, Outgoing, PulledPage, Recipient,
};
use crate::session::{InlineEntries, Registration, SessionSignal};
use crate::store::{EntryKind, StoredMessage};

/// What the read loop does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next frame.
    Continue,
    /// Stop reading; the write loop finishes what is queued and closes.
    Close,
}

struct Login {
    caller: Caller,
    token_hash: [u8; 32],
    registration: Registration,
}

/// One connection's request state.
pub struct Session {
    gateway: Arc<Gateway>,
    peer: IpAddr,
    outbound: super::answers::Sender<OutboundItem>,
    signal: Arc<SessionSignal>,
    login: Option<Login>,
    /// Every request after login.
    requests: TokenBucket,
    /// Sends, on top of `requests`.
    sends: TokenBucket,
    /// Typing and presence, on top of `requests`.
    ephemeral: TokenBucket,
    /// Users whose presence this connection watches.
    watched: HashSet<u64>,
}

impl Session {
    /// A session that is not logged in yet.
    pub fn new(
        gateway: Arc<Gateway>,
        peer: IpAddr,
        outbound: super::answers::Sender<OutboundItem>,
        signal: Arc<SessionSignal>,
    ) -> Self {
        let now = Instant::now();
        let limits = &gateway.limits;
        let requests = TokenBucket::new(limits.requests_per_sec, limits.request_burst, now);
        let sends = TokenBucket::new(limits.sends_per_sec, limits.send_burst, now);
        let ephemeral = TokenBucket::new(limits.ephemeral_per_sec, limits.ephemeral_burst, now);
        Session {
            gateway,
            peer,
            outbound,
            signal,
            login: None,
            requests,
            sends,
            ephemeral,
            watched: HashSet::new(),
        }
    }

    /// The shared gateway state.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Whether a login succeeded on this connection.
    pub fn is_authenticated(&self) -> bool {
        self.login.is_some()
    }

    /// The registry entry to remove when the connection ends.
    pub fn into_registration(self) -> Option<Registration> {
        self.login.map(|l| l.registration)
    }

    /// Send a fatal error not tied to a request, then close.
    pub async fn fatal(&mut self, error: pb::Error) -> Flow {
        self.queue_ready(Envelope::new(0, Body::Error(error)), true)
            .await;
        Flow::Close
    }

    /// Handle one request frame.
    pub async fn dispatch(&mut self, envelope: Envelope) -> Flow {
        let id = envelope.request_id;
        let pre_login = matches!(envelope.body, Some(Body::Register(_) | Body::Login(_)));
        if self.login.is_none() && !pre_login {
            return self
                .refuse(id, ErrorCode::NotAuthenticated, "log in first")
                .await;
        }
        let Some(body) = envelope.body else {
            return self
                .refuse(
                    id,
                    ErrorCode::UnknownRequest,
                    "envelope has no body this server knows",
                )
                .await;
        };
        if id == 0 {
            return self
                .refuse(0, ErrorCode::InvalidArgument, "request_id must be non-zero")
                .await;
        }
        tracing::debug!(request_id = id, kind = body.name(), "request");
        if self.login.is_some() {
            let now = Instant::now();
            let limited = self.requests.take(now).and_then(|()| match body {
                Body::Send(_) => self.sends.take(now),
                _ => Ok(()),
            });
            if let Err(wait) = limited {
                return self.rate_limited(id, wait).await;
            }
        }
        match (self.login.is_some(), body) {
            (false, Body::Register(r)) => self.register(id, r).await,
            (false, Body::Login(l)) => self.login(id, l).await,
            (true, Body::Register(_) | Body::Login(_)) => {
                self.refuse(
                    id,
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already logged in",
                )
                .await
            }
            (true, Body::Ping(p)) => {
                let pong = pb::Pong {
                    client_time_ms: p.client_time_ms,
                    server_time_ms: now_ms(),
                };
                self.answer(id, Ok(Body::Pong(pong)), false).await
            }
            (true, Body::Send(s)) => self.send(id, s).await,
            (true, Body::Pull(p)) => self.pull(id, p).await,
            (true, Body::Ack(a)) => self.ack(id, a).await,
            (true, Body::Logout(_)) => self.logout(id).await,
            (true, body) if is_social_request(&body) => self.social(id, body).await,
            (_, other) => {
                let message = format!("{} is sent by the server, not by clients", other.name());
                self.refuse(id, ErrorCode::UnknownRequest, &message).await
            }
        }
    }

    async fn register(&mut self, id: u64, request: pb::RegisterRequest) -> Flow {
        if let Err(e) = check_version(request.protocol_version) {
            return self.answer(id, Err(e.to_wire()), true).await;
        }
        let result = self
            .gateway
            .accounts
            .register(&request.username, &request.password)
            .await;
        let answer = result.map(|user_id| Body::Registered(pb::RegisterResponse { user_id }));
        self.answer_service(id, answer).await
    }

    async fn login(&mut self, id: u64, request: pb::LoginRequest) -> Flow {
        if let Err(e) = check_version(request.protocol_version) {
            return self.answer(id, Err(e.to_wire()), true).await;
        }
        let platform = match Platform::try_from(request.platform) {
            Ok(p) if p != Platform::Unspecified => p,
            _ => {
                return self
                    .refuse(
                        id,
                        ErrorCode::InvalidArgument,
                        "platform must be set to a known value",
                    )
                    .await
            }
        };
        let credential = match request.credential {
            Some(login_request::Credential::Password(p)) if !request.username.is_empty() => {
                Credential::Password(p)
            }
            Some(login_request::Credential::Token(t)) => Credential::Token(t),
            Some(login_request::Credential::Password(_)) => {
                return self
                    .refuse(
                        id,
                        ErrorCode::InvalidArgument,
                        "password login needs a username",
                    )
                    .await
            }
            None => {
                return self
                    .refuse(
                        id,
                        ErrorCode::InvalidArgument,
                        "a password or a token is required",
                    )
                    .await
            }
        };
        let address = self.peer.to_string();
        let now = Instant::now();
        let by_account = &self.gateway.login_failures_by_account;
        let by_address = &self.gateway.login_failures_by_address;
        // Checked before the hash is computed: a blocked guesser costs nothing.
        let blocked = by_account
            .check(&request.username, now)
            .and_then(|()| by_address.check(&address, now));
        if let Err(wait) = blocked {
            self.gateway.metrics.login_failures.inc();
            return self.rate_limited(id, wait).await;
        }
        let accounts = &self.gateway.accounts;
        let auth = match accounts
            .authenticate(&request.username, &request.device_id, credential)
            .await
        {
            Ok(auth) => auth,
            Err(e) => {
                self.gateway.metrics.login_failures.inc();
                if matches!(e, ServiceError::AuthFailed) {
                    by_account.failed(&request.username, now);
                    by_address.failed(&address, now);
                }
                return self.answer_service(id, Err(e)).await;
            }
        };
        by_account.succeeded(&request.username);
        // Before the session is registered, so its first notify has them.
        self.signal.set_inline(request.inline_messages);
        match self
            .start_session(&auth, &request.device_id, platform)
            .await
        {
            Ok((login, max_seq, acked_seq)) => {
                let response = self.login_response(&auth, max_seq, acked_seq);
                let span = tracing::Span::current();
                span.record("user_id", auth.user.id);
                span.record("device", request.device_id.as_str());
                tracing::info!(
                    peer = %self.peer,
                    user_id = auth.user.id,
                    device = request.device_id.as_str(),
                    platform = ?platform,
                    "logged in"
                );
                self.gateway.metrics.logins.inc();
                self.login = Some(Login {
                    token_hash: auth.token_hash,
                    ..login
                });
                self.answer(id, Ok(Body::LoggedIn(response)), false).await
            }
            Err(e) => self.answer_service(id, Err(e)).await,
        }
    }

    /// Register the session (kicking what it replaces) before reading the
    /// queue's top, so no notify can fall between the two.
    async fn start_session(
        &self,
        auth: &Authenticated,
        device_id: &str,
        platform: Platform,
    ) -> Result<(Login, u64, u64), ServiceError> {
        let user = auth.user.id;
        let registry = &self.gateway.registry;
        let registration = registry.register(user, device_id, platform, self.signal.clone());
        let caller = Caller {
            user,
            device_id: device_id.to_owned(),
        };
        let accounts = &self.gateway.accounts;
        let started = match accounts.still_valid(user, &auth.token_hash) {
            Ok(true) => {
                self.gateway
                    .messaging
                    .device_logged_in(&caller, platform as i32)
                    .await
            }
            Ok(false) => Err(ServiceError::AuthFailed),
            Err(e) => Err(e),
        };
        match started {
            Ok((max_seq, acked_seq)) => {
                let login = Login {
                    caller,
                    token_hash: [0; 32],
                    registration,
                };
                Ok((login, max_seq, acked_seq))
            }
            Err(e) => {
                registry.unregister(&registration);
                Err(e)
            }
        }
    }

    fn login_response(
        &self,
        auth: &Authenticated,
        max_seq: u64,
        acked_seq: u64,
    ) -> pb::LoginResponse {
        let timeouts = &self.gateway.timeouts;
        let limits = &self.gateway.limits;
        pb::LoginResponse {
            user_id: auth.user.id,
            token: auth.token.clone(),
            token_expires_at_ms: auth.expires_at_ms,
            heartbeat_interval_ms: timeouts.heartbeat_interval.as_millis() as u32,
            idle_timeout_ms: timeouts.idle.as_millis() as u32,
            server_time_ms: now_ms(),
            max_seq,
            acked_seq,
            max_content_bytes: limits.max_content_bytes,
            max_frame_bytes: limits.max_frame_bytes,
        }
    }

    async fn logout(&mut self, id: u64) -> Flow {
        let Some(login) = &self.login else {
            return Flow::Close;
        };
        let result = self.gateway.accounts.revoke(login.token_hash).await;
        let answer = result.map(|()| Body::LoggedOut(pb::LogoutResponse {}));
        let ok = answer.is_ok();
        let flow = self.answer_service(id, answer).await;
        if ok {
            if let Some(login) = &self.login {
                tracing::info!(
                    peer = %self.peer,
                    user_id = login.caller.user,
                    device = login.caller.device_id.as_str(),
                    "logged out"
                );
            }
            Flow::Close
        } else {
            flow
        }
    }

    async fn send(&mut self, id: u64, request: pb::SendRequest) -> Flow {
        let named = !request.to_username.is_empty();
        let to = match (request.to_user_id, named, request.group_id) {
            (0, true, 0) => Recipient::Name(request.to_username),
            (user, false, 0) if user != 0 => Recipient::Id(user),
            (0, false, group) if group != 0 => Recipient::Group(group),
            _ => {
                return self
                    .refuse(
                        id,
                        ErrorCode::InvalidArgument,
                        "set exactly one of to_user_id, to_username and group_id",
                    )
                    .await
            }
        };
        let outgoing = Outgoing {
            to,
            client_msg_id: request.client_msg_id,
            content_type: request.content_type,
            content: request.content,
        };
        let caller = self.caller().clone();
        let pending = match self.gateway.messaging.submit_send(&caller, outgoing).await {
            Ok(pending) => pending,
            Err(e) => return self.answer_service(id, Err(e)).await,
        };
        let answer = async move {
            let result = pending.durable().await.map(|r| {
                Body::Sent(pb::SendResponse {
                    msg_id: r.msg_id,
                    seq: r.seq,
                    sent_at_ms: r.sent_at_ms,
                    duplicate: r.duplicate,
                    conv_seq: r.conv_seq,
                })
            });
            envelope(id, result)
        };
        self.queue(Outbound::Pending(Box::pin(answer))).await
    }

    async fn pull(&mut self, id: u64, request: pb::PullRequest) -> Flow {
        let messaging = self.gateway.messaging.clone();
        let caller = self.caller().clone();
        let budget = self.gateway.limits.max_frame_bytes as usize - PULL_FRAME_RESERVE;
        let answer = async move {
            let result = messaging
                .pull(&caller, request.after_seq, request.limit)
                .await;
            envelope(id, result.map(|page| pulled(page, budget)))
        };
        self.queue(Outbound::Pending(Box::pin(answer))).await
    }

    async fn ack(&mut self, id: u64, request: pb::AckRequest) -> Flow {
        let messaging = self.gateway.messaging.clone();
        let caller = self.caller().clone();
        let answer = async move {
            let result = messaging.ack(&caller, request.seq).await;
            envelope(
                id,
                result.map(|acked_seq| Body::Acked(pb::AckResponse { acked_seq })),
            )
        };
        self.queue(Outbound::Pending(Box::pin(answer))).await
    }

    fn caller(&self) -> &Caller {
        &self
            .login
            .as_ref()
            .expect("handlers past login run only when logged in")
            .caller
    }

    async fn rate_limited(&mut self, id: u64, wait: Duration) -> Flow {
        let mut error = pb::Error::new(ErrorCode::RateLimited, "too many requests; slow down");
        // Round up so a client that waits exactly this long finds a token.
        error.retry_after_ms = u32::try_from(wait.as_millis() + 1).unwrap_or(u32::MAX);
        tracing::debug!(
            request_id = id,
            retry_after_ms = error.retry_after_ms,
            "rate limited"
        );
        self.answer(id, Err(error), false).await
    }

    async fn refuse(&mut self, id: u64, code: ErrorCode, message: &str) -> Flow {
        let error = pb::Error::new(code, message);
        let fatal = error.fatal;
        self.answer(id, Err(error), fatal).await
    }

    async fn answer_service(&mut self, id: u64, result: Result<Body, ServiceError>) -> Flow {
        let result = result.map_err(|e| log_refusal(&e));
        let fatal = result.as_ref().err().is_some_and(|e| e.fatal);
        self.answer(id, result, fatal).await
    }

    async fn answer(&mut self, id: u64, result: Result<Body, pb::Error>, close: bool) -> Flow {
        let body = result.unwrap_or_else(Body::Error);
        self.queue_ready(Envelope::new(id, body), close).await;
        if close {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    async fn queue_ready(&mut self, envelope: Envelope, close: bool) {
        // If the write loop is gone the connection is closing anyway.
        let _ = self
            .outbound
            .send(Box::new(Outbound::Ready { envelope, close }))
            .await;
    }

    async fn queue(&mut self, item: Outbound) -> Flow {
        match self.outbound.send(Box::new(item)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
}

fn check_version(version: i32) -> Result<(), ServiceError> {
    if version == PROTOCOL_VERSION as i32 {
        Ok(())
    } else {
        Err(ServiceError::UnsupportedVersion(version))
    }
}

fn envelope(id: u64, result: Result<Body, ServiceError>) -> Envelope {
    Envelope::new(id, result.unwrap_or_else(|e| Body::Error(log_refusal(&e))))
}

fn log_refusal(error: &ServiceError) -> pb::Error {
    match error {
        ServiceError::Store(e) => tracing::warn!(error = %e, "request failed in the store"),
        other => tracing::debug!(error = %other, "request refused"),
    }
    error.to_wire()
}

/// Bytes of a PullResponse frame kept for everything but the messages
/// (max_seq, has_more, acked_seq, the envelope's id and tags).
const PULL_FRAME_RESERVE: usize = 64;

/// The wire page, cut short (with `has_more`) where the next message would
/// push the frame past `budget` bytes. One message always fits: config
/// validation keeps max_content_bytes 1 KiB below max_frame_bytes.
fn pulled(page: PulledPage, budget: usize) -> Body {
    let total = page.messages.len();
    let messages = fit_messages(page.messages, budget);
    Body::Pulled(pb::PullResponse {
        has_more: page.has_more || messages.len() < total,
        messages,
        max_seq: page.max_seq,
        acked_seq: page.acked_seq,
    })
}

/// A Notify's inline entries as wire messages: all of them, or none if
/// they do not fit in `budget` bytes of a frame or a name cannot be read
/// (the device then pulls them).
pub(super) fn inline_messages(
    messaging: &Messaging,
    entries: InlineEntries,
    budget: usize,
) -> Vec<pb::Message> {
    let count = entries.len();
    if count == 0 {
        return Vec::new();
    }
    let stored = entries.into_iter().map(|(seq, message)| StoredMessage {
        seq,
        ..StoredMessage::clone(&message)
    });
    match messaging.named(stored.collect()) {
        Ok(delivered) => {
            let messages = fit_messages(delivered, budget);
            if messages.len() == count {
                messages
            } else {
                Vec::new()
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot name inline entries; the device pulls them");
            Vec::new()
        }
    }
}

/// The wire messages that fit in `budget` bytes of a frame, in order (at
/// least one).
fn fit_messages(delivered: Vec<Delivered>, budget: usize) -> Vec<pb::Message> {
    let mut messages = Vec::with_capacity(delivered.len());
    let mut used = 0;
    for d in delivered {
        let message = to_wire_message(d);
        let len = message.encoded_len();
        // Field tag plus the length's varint, then the message itself.
        let cost = 1 + prost::length_delimiter_len(len) + len;
        if used + cost > budget && !messages.is_empty() {
            break;
        }
        used += cost;
        messages.push(message);
    }
    messages
}

fn to_wire_message(d: Delivered) -> pb::Message {
    let m = d.message;
    let (kind, group_event, recalled_msg_id) = match m.kind {
        EntryKind::Chat => (pb::MessageKind::Chat, None, 0),
        EntryKind::GroupEvent(e) => (
            pb::MessageKind::GroupEvent,
            Some(pb::GroupEvent {
                r#type: e.kind as i32,
                actor_user_id: e.actor,
                target_user_ids: e.targets,
                role: e.role.map_or(0, |r| r.number() as i32),
                group_name: e.group_name,
                timeline_from_seq: e.timeline_from_seq,
            }),
            0,
        ),
        EntryKind::Recall(target) => (pb::MessageKind::Recall, None, target),
    };
    pb::Message {
        seq: m.seq,
        msg_id: m.msg_id,
        from_user_id: m.from,
        // Not `to_string()`: on an `Arc<str>` that goes through `Display`.
        from_username: String::from(&*d.from_name),
        to_user_id: m.to,
        to_username: String::from(&*d.to_name),
        from_device_id: m.from_device,
        content_type: m.content_type,
        content: m.content,
        sent_at_ms: crate::store::msg_id_time_ms(m.msg_id),
        client_msg_id: m.client_msg_id,
        group_id: m.group,
        kind: kind as i32,
        group_event,
        conv_seq: m.conv_seq,
        recalled_msg_id,
        recalled: m.recalled,
    }
}

/// The requests [`social`] handles.
fn is_social_request(body: &Body) -> bool {
    matches!(
        body,
        Body::GroupCreate(_)
            | Body::GroupAdd(_)
            | Body::GroupRemove(_)
            | Body::GroupLeave(_)
            | Body::GroupDissolve(_)
            | Body::GroupList(_)
            | Body::GroupMembers(_)
            | Body::GroupSetRole(_)
            | Body::GroupPull(_)
            | Body::Conversations(_)
            | Body::Read(_)
            | Body::ReadCount(_)
            | Body::Recall(_)
            | Body::Devices(_)
            | Body::RevokeDevice(_)
            | Body::Typing(_)
            | Body::Presence(_)
            | Body::PushToken(_)
            | Body::AppState(_)
    )
}
