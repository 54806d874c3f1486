//! Persistence behind one narrow, batch-oriented trait.
//!
//! The messaging code owns the [`Store`] trait; an engine sits behind it.
//! [`sled_store::SledStore`] is the default engine and the only module in the
//! server that imports sled. The trait speaks in domain records (users,
//! devices, queue entries, message bodies), never in protocol types, and is
//! synchronous: callers run it on the committer thread or in
//! `spawn_blocking`. It is shaped so that a networked engine (Redis for the
//! ordered queues plus SQL for bodies) can implement it later: every mutation
//! of the message path is one [`Store::apply`] call with a batch of ops that
//! either all happen or none do, followed by one [`Store::sync`].
//!
//! Every engine must pass the suite in `contract` (compiled for tests only).

#[cfg(test)]
pub mod contract;
mod groups;
mod records;
pub mod sled_store;

pub use groups::{
    Conversation, ConversationKey, EntryKind, GroupChange, GroupEventKind, GroupEventRecord,
    GroupId, GroupRecord, MemberRecord, PushJobRecord, PushPlan, PushTokenRecord, Refusal, Role,
    TimelinePage,
};

use std::path::Path;

use bytes::Bytes;

pub use sled_store::verify::{verify, VerifyReport};
pub use sled_store::{holds_store, SledStore};

/// A user's numeric id (assigned by the store, starting at 1).
pub type UserId = u64;
/// A position in one user's queue: strictly increasing, gapless at assignment.
pub type Seq = u64;
/// A server-wide unique, time-ordered message id (see [`msg_id_time_ms`]).
pub type MsgId = u64;

/// Bits of a [`MsgId`] below the millisecond timestamp.
pub const MSG_ID_COUNTER_BITS: u32 = 16;

/// The server time (ms since the Unix epoch) at which a message id was made.
pub fn msg_id_time_ms(msg_id: MsgId) -> u64 {
    msg_id >> MSG_ID_COUNTER_BITS
}

/// What an engine can fail with. None of this detail goes to a peer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed (disk full, I/O error). Retryable: nothing
    /// from the failed call was applied.
    #[error("storage i/o failed: {0}")]
    Io(String),
    /// The data on disk is damaged or not what this code wrote.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The data directory was written by an incompatible version.
    #[error("store schema version is {found}, this pigeond reads version {expected}")]
    SchemaVersion {
        /// What the data directory says.
        found: u32,
        /// What this build understands.
        expected: u32,
    },
}

/// How hard [`Store::sync`] works to make applied writes survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Flush and fsync the engine's files and directory: survives power loss.
    #[default]
    Fsync,
    /// Flush to the OS (no fsync): survives a process crash, not power loss.
    Flush,
    /// Leave it to the engine's background flusher (sled: every 500 ms):
    /// a crash may lose the last half second of answered sends.
    Buffered,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Assigned by the store.
    pub id: UserId,
    /// Unique, validated by the service.
    pub username: String,
    /// argon2id PHC string; never the password itself.
    pub password_hash: String,
    /// When the account was created, ms since the epoch.
    pub created_at_ms: u64,
    /// A disabled user cannot log in.
    pub disabled: bool,
}

/// A login token, stored under the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Whose token.
    pub user_id: UserId,
    /// The device it was issued to; it logs in only that device.
    pub device_id: String,
    /// After this instant (ms since the epoch) the token no longer works.
    pub expires_at_ms: u64,
}

/// One device of a user, with its delivery cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Chosen by the client.
    pub device_id: String,
    /// The protocol's `Platform` number (kept as a number so the store needs
    /// no protocol types).
    pub platform: i32,
    /// First login, ms since the epoch.
    pub created_at_ms: u64,
    /// Last login or ack, ms since the epoch. A device silent for longer than
    /// the configured period no longer holds back garbage collection.
    pub last_active_ms: u64,
    /// Every entry up to this seq is acknowledged by this device.
    pub acked_seq: Seq,
}

/// A message to store, as the service prepared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Unique and larger than every id the store has seen (the service's
    /// generator guarantees it).
    pub msg_id: MsgId,
    /// The sender.
    pub from: UserId,
    /// The sender's device.
    pub from_device: String,
    /// The recipient (may equal `from`: a note to self gets one entry);
    /// 0 for a group message.
    pub to: UserId,
    /// The group, for a group message (0 for 1:1): every current member's
    /// queue gets an entry (small group), or the group's timeline does
    /// (large group).
    pub group: GroupId,
    /// The sender's idempotency key, unique per sender.
    pub client_msg_id: String,
    /// Opaque label.
    pub content_type: String,
    /// Opaque body.
    pub content: Bytes,
}

/// One write in an [`Store::apply`] batch.
///
/// Ops that write message bodies (sends, group changes, recalls) carry a
/// `msg_id` the committer assigns (see [`WriteOp::msg_ids_needed`]); a group
/// change may use `msg_id` and `msg_id + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Store a message: the body once (reference count = number of queue
    /// entries), an entry in the recipient's queue, an entry in the sender's
    /// queue (unless sender = recipient), and the dedupe record. If the
    /// sender already has a dedupe record for `client_msg_id` made at or
    /// after `dedupe_since_ms`, nothing is written and the first answer is
    /// returned with `duplicate = true`.
    Send {
        /// What to store.
        message: NewMessage,
        /// Dedupe records older than this (ms) are ignored and replaced.
        dedupe_since_ms: u64,
        /// Push jobs to write with the message (filled by the committer).
        push: PushPlan,
    },
    /// A device logged in: create its record (cursor 0, so it can sync the
    /// retained history) or update its platform and last_active.
    Touch {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
        /// Its platform number.
        platform: i32,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// Move a device's cursor forward to `seq` (never backwards) and mark it
    /// active. Refused with [`WriteOutcome::AckBeyondMax`] if `seq` is above
    /// the user's max seq. Creates the device record if missing, unless
    /// `if_present`.
    Ack {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
        /// Acknowledge up to and including this seq.
        seq: Seq,
        /// Now, ms since the epoch.
        now_ms: u64,
        /// Only move the cursor of a device that still has a record; a
        /// missing one stays missing (answered `Acked { acked_seq: 0 }`).
        /// A deferred ack uses it so that it cannot bring back a device
        /// revoked in the meantime.
        if_present: bool,
    },
    /// Create a group owned by `owner` with `members` (the owner is added
    /// if missing). Writes the group, the members, a CREATED event in every
    /// member's queue (and, for a large group, the timeline).
    CreateGroup {
        /// The creator and owner.
        owner: UserId,
        /// 1 to 64 bytes, checked by the service.
        name: String,
        /// Initial members (deduplicated by the store).
        members: Vec<UserId>,
        /// Above this many members the group is large.
        large_threshold: u32,
        /// Refused with [`Refusal::GroupFull`] above this.
        max_members: u32,
        /// Now, ms since the epoch.
        now_ms: u64,
        /// Assigned by the committer.
        msg_id: MsgId,
    },
    /// Change a group as `actor`, under the role rules (see [`GroupChange`]).
    ChangeGroup {
        /// The group.
        group: GroupId,
        /// Who asks.
        actor: UserId,
        /// What to change.
        change: GroupChange,
        /// Above this many members the group becomes large.
        large_threshold: u32,
        /// Refused with [`Refusal::GroupFull`] above this.
        max_members: u32,
        /// Now, ms since the epoch.
        now_ms: u64,
        /// Assigned by the committer (this and the next id).
        msg_id: MsgId,
    },
    /// Set `user`'s read position in a conversation (forward only).
    Read {
        /// The reader.
        user: UserId,
        /// The conversation.
        conversation: ConversationKey,
        /// Up to and including this conv seq.
        seq: Seq,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// Recall `target` as `caller` if it was sent after `window_since_ms`
    /// (now minus the window): clear its content and append a recall entry
    /// for every recipient.
    Recall {
        /// Who asks.
        caller: UserId,
        /// The caller's device.
        caller_device: String,
        /// The message to recall.
        target: MsgId,
        /// Messages sent at or before this (ms) can no longer be recalled.
        window_since_ms: u64,
        /// Assigned by the committer (the recall entry's body).
        msg_id: MsgId,
    },
    /// Move a member's cursor in a large group's timeline forward.
    TimelineAck {
        /// The member.
        user: UserId,
        /// The group.
        group: GroupId,
        /// Up to this group seq.
        seq: Seq,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// Delete a device record (a revoked device no longer holds back GC).
    ForgetDevice {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
    },
    /// Register (`Some`) or remove (`None`, with any pending job) a
    /// device's push token.
    SetPushToken {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
        /// The registration.
        token: Option<PushTokenRecord>,
    },
    /// A push job was delivered (or is moot): delete it if still of
    /// `generation`; when `pushed`, remember when the device was last
    /// pushed (its coalescing clock).
    PushDone {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
        /// The job's generation when it was taken.
        generation: u64,
        /// A push went out (false: the device was online, or the provider
        /// refused for good).
        pushed: bool,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// Try a push job again later (if still of `generation`).
    PushRetry {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
        /// The job's generation when it was taken.
        generation: u64,
        /// When to try again, ms since the epoch.
        not_before_ms: u64,
        /// Attempts made so far.
        attempts: u32,
    },
    /// The provider refused the token for good: delete the token (if it is
    /// still `token`) and the device's job.
    PushTokenRejected {
        /// Whose device.
        user: UserId,
        /// Which device.
        device_id: String,
        /// The token the provider refused.
        token: String,
    },
    /// Garbage-collect a large group's timeline: delete entries at or
    /// below `up_to_seq` (the lowest read position of its active members,
    /// worked out by the service) whose message is older than
    /// `retain_since_ms`; drop a body when its last reference goes. At
    /// most `limit` entries per op.
    CollectTimeline {
        /// The group.
        group: GroupId,
        /// No entry above this goes.
        up_to_seq: Seq,
        /// Entries whose message is this recent (ms) or newer are kept.
        retain_since_ms: u64,
        /// Upper bound on entries deleted by this op.
        limit: usize,
    },
    /// Garbage-collect the user's queue: delete entries at or below the
    /// lowest `acked_seq` of the devices active since `active_since_ms`
    /// (no active device: nothing is deleted) whose message is older than
    /// `retain_since_ms` (by [`msg_id_time_ms`]); drop a body when its last
    /// reference goes. At most `limit` entries per op.
    Collect {
        /// Whose queue.
        user: UserId,
        /// Devices last active before this (ms) do not hold the queue back.
        active_since_ms: u64,
        /// Entries whose message is this recent (ms) or newer are kept.
        retain_since_ms: u64,
        /// Upper bound on entries deleted by this op.
        limit: usize,
    },
}

impl WriteOp {
    /// How many fresh message ids the committer must assign to this op.
    pub fn msg_ids_needed(&self) -> u64 {
        match self {
            WriteOp::Send { .. } | WriteOp::CreateGroup { .. } | WriteOp::Recall { .. } => 1,
            WriteOp::ChangeGroup { .. } => 2,
            _ => 0,
        }
    }

    /// Give the op the first of its fresh message ids.
    pub fn set_msg_id(&mut self, id: MsgId) {
        match self {
            WriteOp::Send { message, .. } => message.msg_id = id,
            WriteOp::CreateGroup { msg_id, .. }
            | WriteOp::ChangeGroup { msg_id, .. }
            | WriteOp::Recall { msg_id, .. } => *msg_id = id,
            _ => {}
        }
    }

    /// Whether the op stores something a client was promised durably
    /// (the committer syncs a batch holding one before answering).
    pub fn needs_sync(&self) -> bool {
        !matches!(
            self,
            WriteOp::Touch { .. }
                | WriteOp::Ack { .. }
                | WriteOp::Collect { .. }
                | WriteOp::TimelineAck { .. }
                | WriteOp::CollectTimeline { .. }
                | WriteOp::PushRetry { .. }
        )
    }
}

/// The result of one [`WriteOp`], in the same position as the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The message is stored (or was already, when `duplicate`).
    Sent {
        /// The message id (the first one, for a duplicate).
        msg_id: MsgId,
        /// The message's seq in the sender's queue (for a note to self, the
        /// only entry).
        sender_seq: Seq,
        /// The message's seq in the recipient's queue.
        recipient_seq: Seq,
        /// True if this answered an earlier send with the same client_msg_id.
        duplicate: bool,
        /// The message's position in its conversation.
        conv_seq: Seq,
        /// Every queue that got an entry, with the entry's seq (for
        /// notifies); empty for a duplicate.
        queued: Vec<(UserId, Seq)>,
        /// For a large group: the timeline's new top (for GroupNotify).
        timeline: Option<(GroupId, Seq)>,
    },
    /// The device record exists; its cursor is `acked_seq`.
    Touched {
        /// The device's cursor.
        acked_seq: Seq,
    },
    /// The cursor is now `acked_seq` (unchanged if the ack was not above it).
    Acked {
        /// The device's cursor after the op.
        acked_seq: Seq,
    },
    /// The ack was above the queue's top; nothing changed.
    AckBeyondMax {
        /// The user's max seq.
        max_seq: Seq,
    },
    /// A rule of the op refused it; nothing of it was written.
    Refused(Refusal),
    /// A group was created or changed.
    GroupChanged {
        /// The group.
        group: GroupId,
        /// The seq of the event written (0 if nothing changed).
        event_seq: Seq,
        /// Every queue that got an entry, with its seq (for notifies).
        queued: Vec<(UserId, Seq)>,
        /// For a large group: the timeline's new top.
        timeline: Option<(GroupId, Seq)>,
    },
    /// A read position was set.
    ReadSet {
        /// The position now.
        read_seq: Seq,
        /// Unread left in the conversation.
        unread: u64,
        /// For 1:1: the peer to tell (a read receipt).
        receipt_to: Option<UserId>,
    },
    /// A message was recalled (or already was: `queued` is then empty).
    Recalled {
        /// Every queue that got the recall entry, with its seq.
        queued: Vec<(UserId, Seq)>,
        /// For a large group: the timeline's new top.
        timeline: Option<(GroupId, Seq)>,
    },
    /// A large group's timeline cursor of a member was set.
    TimelineAcked {
        /// The member's cursor now.
        acked_seq: Seq,
    },
    /// A device record was deleted (`false`: there was none).
    DeviceForgotten(bool),
    /// A push token or job changed (`false`: nothing matched).
    PushUpdated(bool),
    /// What a Collect op removed.
    Collected {
        /// Queue entries deleted.
        entries: u64,
        /// Message bodies deleted (their last reference went).
        bodies: u64,
        /// True if `limit` stopped the op before it was done.
        more: bool,
    },
}

/// A queue entry with its message body, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in the reading user's queue.
    pub seq: Seq,
    /// The message id.
    pub msg_id: MsgId,
    /// The sender.
    pub from: UserId,
    /// The sender's device.
    pub from_device: String,
    /// The recipient (0 for a group entry).
    pub to: UserId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Opaque label (empty once recalled).
    pub content_type: String,
    /// Opaque body (empty once recalled).
    pub content: Bytes,
    /// The group (0 for 1:1).
    pub group: GroupId,
    /// A chat message, a group event or a recall.
    pub kind: EntryKind,
    /// Position in its conversation (group seq, or the pair's counter).
    pub conv_seq: Seq,
    /// The message was recalled after it was stored.
    pub recalled: bool,
}

/// A page of a user's queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Entries above the requested seq, in seq order.
    pub messages: Vec<StoredMessage>,
    /// The user's max seq (0 if nothing was ever queued).
    pub max_seq: Seq,
    /// True if entries above the last returned one exist.
    pub has_more: bool,
}

/// Store-wide counters for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Queue entries across all users.
    pub entries: u64,
    /// Message bodies.
    pub bodies: u64,
    /// Bytes the engine uses on disk.
    pub disk_bytes: u64,
}

/// What a [`Store::backup`] copied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupReport {
    /// Trees (tables) copied.
    pub trees: u64,
    /// Key-value records copied.
    pub records: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
}

/// How much of an engine's disk use is live data (see [`Store::space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceUse {
    /// Bytes the engine's files take on disk.
    pub disk_bytes: u64,
    /// Bytes of keys and values it holds, or `None` when the count passed
    /// the limit it was asked to stop at.
    pub live_bytes: Option<u64>,
}

/// What a [`Store::compact`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactReport {
    /// Bytes of the engine's files before.
    pub disk_before: u64,
    /// Bytes of the compacted files.
    pub disk_after: u64,
    /// Key-value records copied.
    pub records: u64,
    /// Bytes of keys and values copied.
    pub live_bytes: u64,
    /// How long writes waited for the copy and the switch, in milliseconds.
    pub writes_paused_ms: u64,
}

/// Compactions since the store was opened, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionTotals {
    /// Compactions that completed.
    pub count: u64,
    /// Milliseconds writes waited for them, summed.
    pub writes_paused_ms: u64,
}

/// What the write-ahead log of `fsync` durability has done since the store
/// was opened, for metrics (all zero without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalTotals {
    /// Records replayed into the engine when the store was opened (after a
    /// crash or power cut; 0 after a clean stop).
    pub replayed_at_open: u64,
    /// Checkpoints completed (the engine made durable, a segment deleted).
    pub checkpoints: u64,
    /// Milliseconds the checkpoints took, summed.
    pub checkpoint_ms: u64,
    /// Bytes of records in the segment being written.
    pub segment_bytes: u64,
    /// Microseconds the writer spent working batches out against the
    /// store (reads, the record's encoding), summed.
    pub work_us: u64,
    /// Microseconds spent writing records durably, summed.
    pub log_us: u64,
    /// Microseconds spent applying records to the engine, summed.
    pub apply_us: u64,
    /// Whether records go to the disk with `O_DIRECT | O_DSYNC` (false:
    /// appends and `fdatasync`, where the filesystem refuses it).
    pub direct: bool,
}

/// The storage interface of the messaging code.
///
/// Reads see every write applied before them. Writes of one `apply` call are
/// atomic: after a crash either all of them are there or none. They become
/// durable (per the engine's [`Durability`]) when a later `sync` returns.
pub trait Store: Send + Sync + 'static {
    /// Apply a batch of writes atomically; outcomes are in op order. An op
    /// that is refused (see [`WriteOutcome::AckBeyondMax`]) does not abort
    /// the others; an error aborts the whole batch. Not durable until
    /// [`Store::sync`].
    ///
    /// Single writer: all `apply` calls must come from one thread at a time
    /// (the service's committer). Engines may rely on it, e.g. sled scans
    /// the queue for a `Collect` before its transaction.
    fn apply(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Make every write applied so far durable, per the configured durability.
    fn sync(&self) -> Result<(), StoreError>;

    /// Create a user with the next free id. `Ok(None)` if the username is
    /// taken. Durable (per the configured [`Durability`]) when it returns.
    fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<Option<UserRecord>, StoreError>;

    /// Look a user up by id.
    fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;

    /// Look a user up by username.
    fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Store (or replace) a token under its hash. Durable (per the
    /// configured [`Durability`]) when it returns.
    fn put_token(&self, token_hash: &[u8; 32], token: &TokenRecord) -> Result<(), StoreError>;

    /// Look a token up by its hash.
    fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;

    /// Delete a token. Durable (per the configured [`Durability`]) when it
    /// returns. Deleting a missing token is fine.
    fn delete_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// The user's devices, ordered by device id.
    fn devices(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// One device of a user.
    fn device(&self, user: UserId, device_id: &str) -> Result<Option<DeviceRecord>, StoreError>;

    /// The highest seq ever assigned in the user's queue (0 if none).
    fn max_seq(&self, user: UserId) -> Result<Seq, StoreError>;

    /// Up to `limit` entries with seq > `after_seq`, with their bodies.
    ///
    /// Only entries a [`Store::sync`] has made durable are shown: the page
    /// stops before the first entry of a batch not yet synced (with
    /// `max_seq` just below it and `has_more` false), so a device never
    /// moves its cursor past a message a crash could take back and whose
    /// seq a later message would reuse. (With [`Durability::Buffered`],
    /// which promises nothing, everything applied is shown.)
    fn pull(&self, user: UserId, after_seq: Seq, limit: usize) -> Result<Page, StoreError>;

    /// A group by id (dissolved groups too).
    fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError>;

    /// A user's member record in a group (current or former).
    fn member(&self, group: GroupId, user: UserId) -> Result<Option<MemberRecord>, StoreError>;

    /// Current members of a group in user id order.
    fn members(&self, group: GroupId) -> Result<Vec<MemberRecord>, StoreError>;

    /// Up to `limit` current members with a user id above `after`, in
    /// user id order (one page of a member list; reads only that range).
    fn members_page(
        &self,
        group: GroupId,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<MemberRecord>, StoreError>;

    /// The groups `user` is a current member of, in group id order.
    fn user_groups(&self, user: UserId) -> Result<Vec<GroupId>, StoreError>;

    /// Up to `limit` entries of a large group's timeline with seq in
    /// (`after_seq`, `up_to`], with bodies; like [`Store::pull`], only what
    /// a sync made durable.
    fn timeline(
        &self,
        group: GroupId,
        after_seq: Seq,
        up_to: Seq,
        limit: usize,
    ) -> Result<TimelinePage, StoreError>;

    /// The user's 1:1 conversations (any order).
    fn conversations(&self, user: UserId) -> Result<Vec<Conversation>, StoreError>;

    /// The devices of `user` with a push token, by device id.
    fn push_devices(&self, user: UserId) -> Result<Vec<String>, StoreError>;

    /// Pending push jobs due at `now_ms`, earliest first, at most `limit`;
    /// and the earliest `not_before_ms` of the jobs not yet due.
    fn due_push_jobs(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<PushJobRecord>, Option<u64>), StoreError>;

    /// A message body by id, as a stored message with seq 0.
    fn message(&self, msg_id: MsgId) -> Result<Option<StoredMessage>, StoreError>;

    /// The largest message id the store has ever been given (0 if none), so
    /// the id generator can start above it after a restart even if the
    /// clock went backwards.
    fn msg_id_floor(&self) -> Result<MsgId, StoreError>;

    /// Delete dedupe records made before `older_than_ms`, scanning at most
    /// `limit` records from `resume` (an engine-specific position; `None`
    /// starts from the beginning). Returns how many were deleted and where
    /// to resume (`None` when the scan reached the end).
    fn expire_dedupe(
        &self,
        older_than_ms: u64,
        resume: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(u64, Option<Vec<u8>>), StoreError>;

    /// Users that have at least one queue entry, starting after `after`,
    /// at most `limit` of them (for the background collector's sweep).
    fn users_with_entries(&self, after: UserId, limit: usize) -> Result<Vec<UserId>, StoreError>;

    /// Groups that have timeline entries, starting after `after`, at most
    /// `limit` of them (for the background collector's sweep).
    fn groups_with_timeline(
        &self,
        after: GroupId,
        limit: usize,
    ) -> Result<Vec<GroupId>, StoreError>;

    /// Counters for operators and tests.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Users in id order with id > `after`, at most `limit` of them (the
    /// admin listing pages with the last id it saw).
    fn list_users(&self, after: UserId, limit: usize) -> Result<Vec<UserRecord>, StoreError>;

    /// Set or clear a user's disabled flag. `Ok(false)` if there is no such
    /// user. Durable (per the configured [`Durability`]) when it returns.
    fn set_disabled(&self, user: UserId, disabled: bool) -> Result<bool, StoreError>;

    /// Replace a user's password hash. `Ok(false)` if there is no such user.
    /// Durable (per the configured [`Durability`]) when it returns.
    fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<bool, StoreError>;

    /// Delete every token of `user`, or only those issued to `device_id`;
    /// returns how many went. Durable (per the configured [`Durability`])
    /// when it returns.
    fn delete_user_tokens(&self, user: UserId, device_id: Option<&str>) -> Result<u64, StoreError>;

    /// Write a consistent copy of the whole store into `target`, a directory
    /// that must not exist yet; the copy is fsynced, and an engine of the
    /// same kind opens it as a store with everything that was applied
    /// before the call. Writes wait while the copy is made. A failed backup
    /// leaves nothing at `target`.
    fn backup(&self, target: &Path) -> Result<BackupReport, StoreError>;

    /// Disk use, and the live bytes counted up to `live_limit` (a read of
    /// the whole store up to that point; not for a hot path).
    fn space(&self, live_limit: u64) -> Result<SpaceUse, StoreError>;

    /// Rewrite the store into fresh files holding only its live records
    /// and give the old files' space back to the filesystem. Reads and
    /// writes go on while the live data is copied; writes wait only for the
    /// last few keys and the switch. A crash at any point leaves the store
    /// as it was before or after, both complete.
    fn compact(&self) -> Result<CompactReport, StoreError>;

    /// What [`Store::compact`] has done since the store was opened.
    fn compaction_totals(&self) -> CompactionTotals {
        CompactionTotals::default()
    }

    /// What the engine's write-ahead log has done since the store was
    /// opened.
    fn wal_totals(&self) -> WalTotals {
        WalTotals::default()
    }

    /// Check that the store still takes writes (for the readiness probe):
    /// writes a small marker record, without syncing.
    fn check_writable(&self) -> Result<(), StoreError>;

    /// Why the store no longer takes writes, if a write or sync failed in a
    /// way the engine cannot recover from in this process (sled 0.34 after
    /// an I/O error). The caller should stop and restart.
    fn failure(&self) -> Option<String> {
        None
    }
}
