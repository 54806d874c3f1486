//! Messaging rules: send 1:1 and to groups, pull (with its implicit ack),
//! ack, and the device bookkeeping of login; groups, conversations, read
//! positions, recall and devices are in [`social`]. Assign, persist through
//! the committer, then notify (the committer notifies after the durable
//! flush).

pub mod social;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::store::{
    msg_id_time_ms, GroupId, MsgId, NewMessage, PushPlan, Seq, Store, StoreError, StoredMessage,
    UserId, WriteOp, WriteOutcome,
};

use super::acks::AckLedger;
use super::committer::{Committer, OpResult};

/// Most entries one Collect op deletes; the sweep comes back for the rest.
const COLLECT_LIMIT: usize = 10_000;
/// Characters of a push preview (when previews are on).
const PREVIEW_CHARS: usize = 100;
/// Usernames kept in the id → name cache before it is cleared.
const NAME_CACHE_CAP: usize = 100_000;

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Recipient {
    /// By user id.
    Id(UserId),
    /// By username.
    Name(String),
    /// Every member of a group.
    Group(GroupId),
}

/// A send as the gateway hands it over.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The recipient.
    pub to: Recipient,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Opaque label ("text/plain" when the client left it empty).
    pub content_type: String,
    /// Opaque body.
    pub content: Bytes,
}

/// The answer to a stored send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub msg_id: MsgId,
    /// Its seq in the sender's queue.
    pub seq: Seq,
    /// When it was accepted, ms since the epoch.
    pub sent_at_ms: u64,
    /// True if a resend of an already stored message.
    pub duplicate: bool,
    /// Its position in its conversation.
    pub conv_seq: Seq,
}

/// A queue entry with the names the client shows.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The stored entry.
    pub message: StoredMessage,
    /// The sender's username.
    pub from_name: Arc<str>,
    /// The recipient's username.
    pub to_name: Arc<str>,
}

/// A page of a pull.
#[derive(Debug, Clone)]
pub struct PulledPage {
    /// Entries in seq order.
    pub messages: Vec<Delivered>,
    /// The queue's top.
    pub max_seq: Seq,
    /// More entries wait above the last one.
    pub has_more: bool,
    /// The device's cursor after the implicit ack.
    pub acked_seq: Seq,
}

/// Rules of the message path.
#[derive(Debug, Clone)]
pub struct MessagingRules {
    /// Largest content.
    pub max_content_bytes: usize,
    /// Most entries per pull.
    pub max_pull: usize,
    /// Dedupe window for client_msg_id.
    pub dedupe_window: Duration,
    /// Acked entries younger than this are kept.
    pub history_retention: Duration,
    /// Devices silent this long do not hold the queue back.
    pub device_inactive_after: Duration,
    /// How long after sending a message may be recalled.
    pub recall_window: Duration,
    /// Groups above this many members keep a timeline.
    pub large_group_threshold: u32,
    /// No group grows above this.
    pub max_group_members: u32,
    /// Offline pushes carry a content preview (off by default: privacy).
    pub push_preview: bool,
    /// How often the acknowledgements pulls carry are written
    /// (see [`super::acks`]).
    pub ack_write_interval: Duration,
}

/// The message path over the store and the committer.
pub struct Messaging {
    store: Arc<dyn Store>,
    committer: Committer,
    rules: MessagingRules,
    names: Mutex<HashMap<UserId, Arc<str>>>,
    acks: AckLedger,
}

/// The device that makes a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device_id: String,
}

impl Messaging {
    /// The message path.
    pub fn new(store: Arc<dyn Store>, committer: Committer, rules: MessagingRules) -> Self {
        Messaging {
            store,
            committer,
            rules,
            names: Mutex::new(HashMap::new()),
            acks: AckLedger::default(),
        }
    }

    /// The acknowledgements pulls recorded and not written yet.
    pub fn acks(&self) -> &AckLedger {
        &self.acks
    }

    /// How often [`super::acks::run`] writes them.
    pub fn ack_write_interval(&self) -> Duration {
        self.rules.ack_write_interval
    }

    /// The committer (for the background collector and stats).
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Record a login of a device; returns (queue max_seq, device cursor).
    pub async fn device_logged_in(
        &self,
        caller: &Caller,
        platform: i32,
    ) -> Result<(Seq, Seq), ServiceError> {
        let outcome = self
            .committer
            .write(WriteOp::Touch {
                user: caller.user,
                device_id: caller.device_id.clone(),
                platform,
                now_ms: now_ms(),
            })
            .await?;
        let WriteOutcome::Touched { acked_seq } = outcome else {
            return Err(unexpected(outcome));
        };
        let max_seq = self.store.max_seq(caller.user)?;
        let pending = self.acks.pending_seq(caller.user, &caller.device_id);
        Ok((max_seq, acked_seq.max(pending)))
    }

    /// Validate a send and queue it for the committer. The returned future
    /// resolves once the message is durable. Sends queued one after another
    /// from one connection are stored in that order.
    pub async fn submit_send(
        &self,
        caller: &Caller,
        outgoing: Outgoing,
    ) -> Result<PendingSend, ServiceError> {
        validate_send(&outgoing, self.rules.max_content_bytes)?;
        let (to, group) = match &outgoing.to {
            Recipient::Group(group) => (0, *group),
            other => (self.resolve(other)?, 0),
        };
        let content_type = if outgoing.content_type.is_empty() {
            "text/plain".to_owned()
        } else {
            outgoing.content_type
        };
        let message = NewMessage {
            msg_id: 0, // assigned by the committer, in commit order
            from: caller.user,
            from_device: caller.device_id.clone(),
            to,
            group,
            client_msg_id: outgoing.client_msg_id,
            content_type,
            content: outgoing.content,
        };
        let dedupe_since_ms = now_ms().saturating_sub(self.rules.dedupe_window.as_millis() as u64);
        let rx = self
            .committer
            .submit(WriteOp::Send {
                push: PushPlan {
                    preview: self.preview(&message),
                    ..PushPlan::default()
                },
                message,
                dedupe_since_ms,
            })
            .await?;
        Ok(PendingSend(rx))
    }

    /// Pull entries above `after_seq`, acknowledging up to `after_seq`.
    ///
    /// The acknowledgement is recorded, not written: [`super::acks::run`]
    /// writes it within `ack_write_interval`. The read runs on the calling
    /// task, not the blocking pool: it is served from sled's cache and the
    /// OS page cache, and the hop to a pool thread and back cost more CPU
    /// than the read (docs/performance.md).
    pub async fn pull(
        &self,
        caller: &Caller,
        after_seq: Seq,
        limit: u32,
    ) -> Result<PulledPage, ServiceError> {
        let limit = match limit {
            0 => 100,
            n => (n as usize).min(self.rules.max_pull),
        };
        let user = caller.user;
        let page = self.store.pull(user, after_seq, limit)?;
        // A client only learns of seqs that are durable, and the page's
        // max_seq counts every durable entry.
        if after_seq > page.max_seq {
            return Err(ServiceError::AckBeyondMaxSeq {
                seq: after_seq,
                max_seq: page.max_seq,
            });
        }
        // Recorded first: an ack being written is either still in the
        // ledger now or already in the store read after.
        let recorded = self
            .acks
            .accept(user, &caller.device_id, after_seq, now_ms());
        let stored = self
            .store
            .device(user, &caller.device_id)?
            .map_or(0, |device| device.acked_seq);
        Ok(PulledPage {
            messages: self.named(page.messages)?,
            max_seq: page.max_seq,
            has_more: page.has_more,
            acked_seq: stored.max(recorded),
        })
    }

    /// Acknowledge up to `seq` for the caller's device, then collect what
    /// every active device has acknowledged. Returns the device's cursor.
    pub async fn ack(&self, caller: &Caller, seq: Seq) -> Result<Seq, ServiceError> {
        let now = now_ms();
        let ack = self
            .committer
            .submit(WriteOp::Ack {
                user: caller.user,
                device_id: caller.device_id.clone(),
                seq,
                now_ms: now,
                if_present: false,
            })
            .await?;
        // Queued right behind the ack, so usually in the same batch. The
        // answer waits for it, so what an answered ack freed is gone; a
        // failure only leaves work for the background sweep.
        let collect = self
            .committer
            .submit(self.collect_op(caller.user, now))
            .await?;
        let acked = ack.await.map_err(|_| ServiceError::ShuttingDown)??;
        match collect.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "collect after ack failed"),
            Err(_) => return Err(ServiceError::ShuttingDown),
        }
        match acked {
            // A pull's acknowledgement may be recorded and not written yet.
            WriteOutcome::Acked { acked_seq } => {
                Ok(acked_seq.max(self.acks.pending_seq(caller.user, &caller.device_id)))
            }
            WriteOutcome::AckBeyondMax { max_seq } => {
                Err(ServiceError::AckBeyondMaxSeq { seq, max_seq })
            }
            other => Err(unexpected(other)),
        }
    }

    /// The Collect op for one user under the configured rules.
    pub fn collect_op(&self, user: UserId, now: u64) -> WriteOp {
        let (active_since_ms, retain_since_ms) = self.collect_cutoffs(now);
        WriteOp::Collect {
            user,
            active_since_ms,
            retain_since_ms,
            limit: COLLECT_LIMIT,
        }
    }

    /// (active since, retain since) at `now`: devices and members silent
    /// since before the first hold nothing back; entries made at or after
    /// the second stay. An entry may go once it is `history_retention`
    /// old: with a retention of zero, everything up to this millisecond.
    pub fn collect_cutoffs(&self, now: u64) -> (u64, u64) {
        (
            now.saturating_sub(self.rules.device_inactive_after.as_millis() as u64),
            now.saturating_sub(self.rules.history_retention.as_millis() as u64)
                .saturating_add(1),
        )
    }

    /// The push preview of a message: only when the operator turned
    /// previews on, and only for UTF-8 text, cut to a phone's line.
    fn preview(&self, message: &NewMessage) -> Option<String> {
        if !self.rules.push_preview || !message.content_type.starts_with("text/") {
            return None;
        }
        let text = std::str::from_utf8(&message.content).ok()?;
        Some(text.chars().take(PREVIEW_CHARS).collect())
    }

    /// Stored entries with the usernames a client shows.
    pub(crate) fn named(&self, stored: Vec<StoredMessage>) -> Result<Vec<Delivered>, ServiceError> {
        let mut messages = Vec::with_capacity(stored.len());
        for message in stored {
            let from_name = self.username(message.from)?;
            let to_name = self.username(message.to)?;
            messages.push(Delivered {
                message,
                from_name,
                to_name,
            });
        }
        Ok(messages)
    }

    /// The recipient's user id, or `UnknownUser`. Accounts are never
    /// removed (only disabled, which does not stop messages to them), so an
    /// id in the name cache exists and needs no read of the store: on the
    /// send path that read was ~9 % of a connection thread's instructions
    /// per delivery (docs/performance.md).
    fn resolve(&self, to: &Recipient) -> Result<UserId, ServiceError> {
        let user = match to {
            Recipient::Id(id) if self.known(*id) => return Ok(*id),
            Recipient::Id(id) => self.store.user(*id)?,
            Recipient::Name(name) => self.store.user_by_name(name)?,
            Recipient::Group(group) => {
                return Err(ServiceError::InvalidArgument(format!(
                    "group {group} is not a user"
                )))
            }
        };
        match user {
            Some(user) => {
                self.remember(user.id, &user.username);
                Ok(user.id)
            }
            None => Err(ServiceError::UnknownUser(match to {
                Recipient::Id(id) => format!("user id {id}"),
                Recipient::Name(name) => name.clone(),
                Recipient::Group(group) => format!("group {group}"),
            })),
        }
    }

    /// Whether the name cache has `id` (so the user exists).
    fn known(&self, id: UserId) -> bool {
        self.names
            .lock()
            .expect("name cache lock is never poisoned")
            .contains_key(&id)
    }

    fn remember(&self, id: UserId, name: &str) -> Arc<str> {
        let mut names = self
            .names
            .lock()
            .expect("name cache lock is never poisoned");
        if names.len() >= NAME_CACHE_CAP {
            names.clear();
        }
        names.entry(id).or_insert_with(|| Arc::from(name)).clone()
    }

    /// A username by id (usernames never change, so the cache is never
    /// stale); empty for 0 (no user: a group entry's recipient).
    fn username(&self, id: UserId) -> Result<Arc<str>, ServiceError> {
        if id == 0 {
            return Ok(Arc::from(""));
        }
        if let Some(name) = self
            .names
            .lock()
            .expect("name cache lock is never poisoned")
            .get(&id)
        {
            return Ok(name.clone());
        }
        match self.store.user(id)? {
            Some(user) => Ok(self.remember(id, &user.username)),
            None => Ok(Arc::from("")),
        }
    }
}

/// A send queued for the committer.
pub struct PendingSend(oneshot::Receiver<OpResult>);

impl PendingSend {
    /// Wait until the message is durable (or the batch failed).
    pub async fn durable(self) -> Result<Receipt, ServiceError> {
        let outcome = self.0.await.map_err(|_| ServiceError::ShuttingDown)??;
        match outcome {
            WriteOutcome::Sent {
                msg_id,
                sender_seq,
                duplicate,
                conv_seq,
                ..
            } => Ok(Receipt {
                msg_id,
                seq: sender_seq,
                sent_at_ms: msg_id_time_ms(msg_id),
                duplicate,
                conv_seq,
            }),
            WriteOutcome::Refused(refusal) => Err(social::refusal_error(refusal, 0)),
            other => Err(unexpected(other)),
        }
    }
}

fn validate_send(outgoing: &Outgoing, max_content: usize) -> Result<(), ServiceError> {
    if outgoing.content.len() > max_content {
        return Err(ServiceError::ContentTooLarge {
            len: outgoing.content.len(),
            max: max_content,
        });
    }
    if !(1..=64).contains(&outgoing.client_msg_id.len()) {
        return Err(ServiceError::InvalidArgument(
            "client_msg_id must be 1 to 64 bytes".into(),
        ));
    }
    if outgoing.content_type.len() > 128 {
        return Err(ServiceError::InvalidArgument(
            "content_type must be at most 128 bytes".into(),
        ));
    }
    Ok(())
}

pub(crate) fn unexpected(outcome: WriteOutcome) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(format!(
        "the store answered with an unexpected outcome: {outcome:?}"
    )))
}
