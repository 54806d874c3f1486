//! The supervisor task behind a `Client`: connect, log in, sync the inbox
//! and the large groups' timelines, wait for pushes, and on failure back
//! off and start over. It alone writes the
//! profile while the client runs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pigeon_protocol::{pb, ErrorCode, KickReason};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::sink::{Backlog, EventSink};
use super::{ClientConfig, ClientEvent, ClientShared};
use crate::backoff::Backoff;
use crate::connection::{Connection, Credential, LoginParams, ServerEvent};
use crate::error::{SdkError, TlsFailure};
use crate::profile::Profile;
use crate::sync::{resume_cursor, sync_to_end, take_inline};
use crate::timeline::{
    follow_large_groups, is_no_longer_readable, sync_group_to_end, take_group_inline, SeenEvents,
};

/// How long entries taken from notifies wait for their ack: the acks of a
/// busy inbox (or the GroupPulls of a busy large group) coalesce into
/// about one a second, as the server's own deferred writes of pull acks
/// do. Until then a reconnect pulls them again, and the cursor drops them
/// as duplicates.
const INLINE_ACK_DELAY: Duration = Duration::from_secs(1);

/// Entries taken from notifies and not acknowledged yet: the inbox's go
/// with an Ack, a large group's with its next GroupPull (whose after_seq
/// records the member's timeline cursor), all at `due`.
#[derive(Default)]
struct DelayedAcks {
    due: Option<Instant>,
    inbox: bool,
    groups: BTreeSet<u64>,
}

impl DelayedAcks {
    fn inbox(&mut self) {
        self.inbox = true;
        self.arm();
    }

    fn group(&mut self, group_id: u64) {
        self.groups.insert(group_id);
        self.arm();
    }

    fn arm(&mut self) {
        self.due
            .get_or_insert_with(|| Instant::now() + INLINE_ACK_DELAY);
    }

    /// A catch-up of `work` is about to acknowledge what it syncs.
    fn synced(&mut self, work: &Backlog) {
        self.inbox &= !work.inbox;
        self.groups.retain(|g| !work.groups.contains(g));
        if !self.inbox && self.groups.is_empty() {
            self.due = None;
        }
    }

    /// What is due: (the inbox, the groups).
    fn take(&mut self) -> (bool, BTreeSet<u64>) {
        self.due = None;
        (
            std::mem::take(&mut self.inbox),
            std::mem::take(&mut self.groups),
        )
    }
}

/// How one connection's life ended.
enum SessionEnd {
    /// Do not reconnect. The event, if any, is the last one to report.
    Stop(Option<Box<ClientEvent>>),
    /// Reconnect after a backoff of at least `at_least`.
    Retry {
        reason: String,
        error: Option<SdkError>,
        at_least: Duration,
    },
}

pub(super) struct Supervisor {
    config: ClientConfig,
    shared: Arc<ClientShared>,
    events: mpsc::Sender<ClientEvent>,
    backoff: Backoff,
    rng: StdRng,
    /// When the current connection finished logging in.
    logged_in_at: Option<Instant>,
    /// Group events the inbox delivered, to drop their timeline copies.
    seen_events: SeenEvents,
}

impl Supervisor {
    pub(super) fn new(
        config: ClientConfig,
        shared: Arc<ClientShared>,
        events: mpsc::Sender<ClientEvent>,
    ) -> Supervisor {
        Supervisor {
            backoff: config.backoff.clone(),
            config,
            shared,
            events,
            rng: StdRng::from_os_rng(),
            logged_in_at: None,
            seen_events: SeenEvents::default(),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            self.logged_in_at = None;
            let end = self.session().await;
            self.set_connection(None);
            let (reason, error, at_least) = match end {
                SessionEnd::Stop(last) => {
                    if let Some(event) = last {
                        self.emit(*event).await;
                    }
                    return;
                }
                SessionEnd::Retry {
                    reason,
                    error,
                    at_least,
                } => (reason, error, at_least),
            };
            if self.shared.stop.is_cancelled() {
                return;
            }
            if !self.config.reconnect {
                self.emit(ClientEvent::Disconnected {
                    reason,
                    error,
                    retry_in: None,
                })
                .await;
                return;
            }
            let stable = self
                .logged_in_at
                .is_some_and(|at| at.elapsed() >= self.config.stable_after);
            if stable {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay(&mut self.rng).max(at_least);
            tracing::info!(%reason, retry_in = ?delay, "disconnected");
            self.emit(ClientEvent::Disconnected {
                reason,
                error,
                retry_in: Some(delay),
            })
            .await;
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection from dial to its end.
    async fn session(&mut self) -> SessionEnd {
        let stop = self.shared.stop.clone();
        let connect = Connection::connect(&self.config.connect);
        let conn = tokio::select! {
            _ = stop.cancelled() => return SessionEnd::Stop(None),
            conn = connect => conn,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => return self.failure(e),
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return SessionEnd::Stop(None),
            answer = self.login(&conn) => answer,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(end) => return end,
        };
        self.logged_in_at = Some(Instant::now());
        let cursor = {
            let mut profile = self.lock_profile();
            profile.record_login(&self.config.connect.addr, &self.config.username, &answer);
            profile.cursor = resume_cursor(profile.cursor, &answer);
            profile.cursor
        };
        if let Err(e) = self.save_profile().await {
            return self.failure(e);
        }
        self.set_connection(Some(conn.clone()));
        let device_id = self.lock_profile().device_id.clone();
        tracing::info!(
            user_id = answer.user_id,
            max_seq = answer.max_seq,
            cursor,
            "logged in"
        );
        self.emit(ClientEvent::Connected {
            user_id: answer.user_id,
            device_id,
            max_seq: answer.max_seq,
            cursor,
        })
        .await;
        let end = tokio::select! {
            _ = stop.cancelled() => SessionEnd::Stop(None),
            end = self.serve(&conn) => end,
        };
        conn.close().await;
        end
    }

    /// Catch up now (inbox and large groups), then again whenever a push
    /// says something is ahead of a cursor, until the connection ends.
    /// Always catches up once at login: cheap, and it reports CaughtUp.
    /// Entries a Notify or GroupNotify carries inline are taken without a
    /// pull and acknowledged within [`INLINE_ACK_DELAY`].
    async fn serve(&mut self, conn: &Connection) -> SessionEnd {
        let mut work = Backlog {
            inbox: true,
            group_list: true,
            groups: BTreeSet::new(),
        };
        let mut last_error: Option<String> = None;
        let mut acks = DelayedAcks::default();
        loop {
            if work.is_pending() {
                acks.synced(&work);
                if let Err(e) = self.catch_up(conn, &mut work).await {
                    return self.failure(e);
                }
            }
            let next = tokio::select! {
                event = conn.next_event() => Some(event),
                _ = tokio::time::sleep_until(acks.due.unwrap_or_else(Instant::now)), if acks.due.is_some() => None,
            };
            let Some(event) = next else {
                let (inbox, groups) = acks.take();
                // A group's next pull tells the server how far it was read.
                work.groups.extend(groups);
                if inbox {
                    let cursor = self.cursor();
                    if let Err(e) = conn.ack(cursor).await {
                        return self.failure(e);
                    }
                    if !work.is_pending() {
                        // Delivered and now acknowledged, as after a sync.
                        self.emit(ClientEvent::CaughtUp { cursor }).await;
                    }
                }
                continue;
            };
            let Some(event) = event else {
                let reason = last_error
                    .or_else(|| conn.close_reason())
                    .unwrap_or_else(|| "connection closed".into());
                return SessionEnd::Retry {
                    reason,
                    error: None,
                    at_least: Duration::ZERO,
                };
            };
            match event {
                ServerEvent::Notify(notify) => {
                    let cursor = self.cursor();
                    if notify.max_seq <= cursor {
                        continue;
                    }
                    if work.inbox || notify.messages.is_empty() {
                        work.inbox = true;
                        continue;
                    }
                    match self.take_inline(cursor, notify).await {
                        Ok(true) => acks.inbox(),
                        Ok(false) => work.inbox = true,
                        Err(e) => return self.failure(e),
                    }
                }
                ServerEvent::GroupNotify(notify) => {
                    let group_id = notify.group_id;
                    match self.group_notified(&mut work, notify).await {
                        Ok(true) => acks.group(group_id),
                        Ok(false) => {}
                        Err(e) => return self.failure(e),
                    }
                }
                ServerEvent::ReadReceipt(receipt) => {
                    self.emit(ClientEvent::ReadReceipt(receipt)).await
                }
                ServerEvent::Typing(typing) => self.emit(ClientEvent::Typing(typing)).await,
                ServerEvent::Presence(presence) => self.emit(ClientEvent::Presence(presence)).await,
                ServerEvent::Kick(kick) => return self.kicked(kick).await,
                ServerEvent::Error(error) => {
                    let error = SdkError::from_wire(error);
                    tracing::info!(%error, "server error push");
                    last_error = Some(error.to_string());
                }
                ServerEvent::Unsolicited(envelope) => {
                    tracing::debug!(request_id = envelope.request_id, "unsolicited frame");
                }
            }
        }
    }

    /// Deliver a Notify's inline entries if they continue `cursor`; false
    /// if they do not (the inbox needs a pull).
    async fn take_inline(&mut self, cursor: u64, notify: pb::Notify) -> Result<bool, SdkError> {
        let mut sink = self.sink();
        let taken = take_inline(cursor, notify, &mut sink).await;
        self.seen_events = sink.seen_events;
        Ok(taken?.is_some())
    }

    /// A large group's timeline grew: take the entries the notify carries
    /// if they continue its cursor (true), else pull it if it is ahead of
    /// its cursor; a group without a cursor yet needs the group list (for
    /// where its timeline starts for this user).
    async fn group_notified(
        &mut self,
        work: &mut Backlog,
        notify: pb::GroupNotify,
    ) -> Result<bool, SdkError> {
        let group_id = notify.group_id;
        let cursor = self.lock_profile().group_cursors.get(&group_id).copied();
        match cursor {
            Some(cursor) if notify.max_seq > cursor => {
                let behind = work.group_list || work.groups.contains(&group_id);
                if !behind && !notify.messages.is_empty() {
                    let mut sink = self.sink();
                    let taken = take_group_inline(cursor, notify, &mut sink).await;
                    self.seen_events = sink.seen_events;
                    if taken?.is_some() {
                        return Ok(true);
                    }
                }
                work.groups.insert(group_id);
            }
            Some(_) => {}
            None => work.group_list = true,
        }
        Ok(false)
    }

    async fn kicked(&mut self, kick: pb::Kick) -> SessionEnd {
        let reason = kick.reason();
        let final_kick = matches!(
            reason,
            KickReason::SameDevice | KickReason::SamePlatformClass | KickReason::Revoked
        );
        let reconnecting = self.config.reconnect && !final_kick;
        tracing::info!(reason = reason.as_str_name(), reconnecting, "kicked");
        let event = ClientEvent::Kicked {
            reason,
            message: kick.message,
            reconnecting,
        };
        if final_kick {
            return SessionEnd::Stop(Some(Box::new(event)));
        }
        self.emit(event).await;
        SessionEnd::Retry {
            reason: format!(
                "kicked: {}",
                reason.as_str_name().trim_start_matches("KICK_REASON_")
            ),
            error: None,
            at_least: Duration::ZERO,
        }
    }

    /// Log in with the stored token, falling back to the password when the
    /// token is refused (the same connection stays usable after AUTH_FAILED).
    async fn login(&mut self, conn: &Connection) -> Result<pb::LoginResponse, SessionEnd> {
        let (token, device_id) = {
            let profile = self.lock_profile();
            (self.usable_token(&profile), profile.device_id.clone())
        };
        let mut credential = match (token, &self.config.password) {
            (Some(token), _) => Credential::Token(token),
            (None, Some(password)) => Credential::Password(password.clone()),
            (None, None) => return Err(self.failure(SdkError::NotLoggedIn)),
        };
        loop {
            let with_token = matches!(credential, Credential::Token(_));
            let params = LoginParams {
                username: self.config.username.clone(),
                device_id: device_id.clone(),
                platform: self.config.platform,
                credential,
                inline_messages: self.config.inline_messages,
            };
            let error = match conn.login(params).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if !(with_token && error.is_auth_failed()) {
                return Err(self.failure(error));
            }
            tracing::info!("stored token refused; forgetting it");
            self.lock_profile().clear_token();
            if let Err(e) = self.save_profile().await {
                return Err(self.failure(e));
            }
            let Some(password) = self.config.password.clone() else {
                return Err(SessionEnd::Stop(Some(Box::new(ClientEvent::Stopped {
                    error,
                }))));
            };
            credential = Credential::Password(password);
        }
    }

    /// The profile's token, if it belongs to this server and user.
    fn usable_token(&self, profile: &Profile) -> Option<String> {
        let same_server = profile.server.as_deref() == Some(self.config.connect.addr.as_str());
        let same_user = self.config.username.is_empty()
            || profile.username.as_deref() == Some(self.config.username.as_str());
        profile.token.clone().filter(|_| same_server && same_user)
    }

    /// Do what `work` says is behind: the inbox, then the group list (all
    /// large groups), then single groups; then report CaughtUp.
    async fn catch_up(&mut self, conn: &Connection, work: &mut Backlog) -> Result<(), SdkError> {
        let mut sink = self.sink();
        let result = self.catch_up_with(conn, work, &mut sink).await;
        self.seen_events = sink.seen_events;
        result
    }

    async fn catch_up_with(
        &mut self,
        conn: &Connection,
        work: &mut Backlog,
        sink: &mut EventSink,
    ) -> Result<(), SdkError> {
        if work.inbox {
            let cursor = self.cursor();
            let report = sync_to_end(conn, cursor, self.config.pull_limit, sink).await?;
            tracing::debug!(?report, "synced");
            work.inbox = false;
            // An ADDED or BECAME_LARGE entry may start a timeline to follow.
            work.group_list |= sink.saw_group_event;
        }
        if work.group_list {
            let cursors = self.lock_profile().group_cursors.clone();
            let limit = self.config.pull_limit;
            let report = follow_large_groups(conn, &cursors, limit, sink).await?;
            tracing::debug!(?report, "large groups followed");
            if !report.gone.is_empty() {
                {
                    let mut profile = self.lock_profile();
                    for group_id in &report.gone {
                        profile.group_cursors.remove(group_id);
                    }
                }
                self.save_profile().await?;
            }
            work.group_list = false;
            // The list pulled every group that was behind.
            work.groups.clear();
        }
        for group_id in std::mem::take(&mut work.groups) {
            let Some(cursor) = self.lock_profile().group_cursors.get(&group_id).copied() else {
                continue;
            };
            let limit = self.config.pull_limit;
            match sync_group_to_end(conn, group_id, cursor, limit, sink).await {
                Ok(report) => tracing::debug!(?report, "group synced"),
                Err(e) if is_no_longer_readable(&e) => {
                    self.lock_profile().group_cursors.remove(&group_id);
                    self.save_profile().await?;
                }
                Err(e) => return Err(e),
            }
        }
        let cursor = self.cursor();
        self.emit(ClientEvent::CaughtUp { cursor }).await;
        Ok(())
    }

    /// A sink for delivering; hand its `seen_events` back when done.
    fn sink(&mut self) -> EventSink {
        EventSink {
            events: self.events.clone(),
            stop: self.shared.stop.clone(),
            shared: self.shared.clone(),
            saw_group_event: false,
            seen_events: std::mem::take(&mut self.seen_events),
        }
    }

    /// Map an error to how the session ends: transient trouble retries,
    /// anything that would fail the same way again stops the client.
    fn failure(&self, error: SdkError) -> SessionEnd {
        let retry = self.config.reconnect
            && match &error {
                SdkError::Tls { kind, .. } => *kind == TlsFailure::Handshake,
                SdkError::Protocol(_) => true,
                other => other.is_transient(),
            };
        if !retry {
            return SessionEnd::Stop(Some(Box::new(ClientEvent::Stopped { error })));
        }
        let at_least = match &error {
            SdkError::Server {
                retry_after_ms,
                code: ErrorCode::RateLimited | ErrorCode::Unavailable,
                ..
            } => Duration::from_millis((*retry_after_ms).into()),
            _ => Duration::ZERO,
        };
        SessionEnd::Retry {
            reason: error.to_string(),
            error: Some(error),
            at_least,
        }
    }

    fn cursor(&self) -> u64 {
        self.lock_profile().cursor
    }

    fn lock_profile(&self) -> std::sync::MutexGuard<'_, Profile> {
        self.shared.profile.lock().expect("profile lock poisoned")
    }

    async fn save_profile(&self) -> Result<(), SdkError> {
        save_profile(&self.shared).await
    }

    fn set_connection(&self, conn: Option<Connection>) {
        *self.shared.conn.lock().expect("connection lock poisoned") = conn;
    }

    /// Hand an event to the application, unless it stopped listening.
    async fn emit(&self, event: ClientEvent) {
        tokio::select! {
            _ = self.shared.stop.cancelled() => {}
            // An error means the application dropped its receiver; the
            // drop guard stops this task right after.
            _ = self.events.send(event) => {}
        }
    }
}

/// Write the shared profile from a blocking thread (it fsyncs).
pub(super) async fn save_profile(shared: &ClientShared) -> Result<(), SdkError> {
    let snapshot = shared
        .profile
        .lock()
        .expect("profile lock poisoned")
        .clone();
    let dir = snapshot.dir().map(|d| d.to_path_buf()).unwrap_or_default();
    tokio::task::spawn_blocking(move || snapshot.save())
        .await
        .map_err(|e| SdkError::profile(dir, format!("saving failed: {e}")))?
}
