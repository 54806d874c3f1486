//! The writes of the sled engine: one [`Store::apply`] batch becomes one
//! record of writes, made atomic by the write-ahead log or, without one,
//! by one multi-tree sled transaction (as is `create_user`), so after a
//! crash either all of it is there or none of it (STORE-NOTES 1).
//!
//! Owns the rules of each [`WriteOp`] as they touch the trees; never syncs
//! (the caller does).
//!
//! [`Store::apply`]: crate::store::Store::apply

mod push;
mod social;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use prost::Message;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, UnabortableTransactionError,
};
use sled::Transactional;
use sled::{IVec, Tree};

use super::tops::Tops;
use super::wal::{self, META_WAL_LSN};
use super::{from_sled, Trees, META_MSGID_FLOOR, META_NEXT_GROUP_ID, META_NEXT_USER_ID};
use crate::store::records::{
    decode, decode_u64, split_user_seq, u64_key, user_seq_key, user_str_key, BodyValue,
    DedupeValue, DeviceValue, UserValue,
};
use crate::store::{
    msg_id_time_ms, GroupId, MsgId, NewMessage, Seq, StoreError, UserId, UserRecord, WriteOp,
    WriteOutcome,
};

type TxError = ConflictableTransactionError<StoreError>;
type TxResult<T> = Result<T, TxError>;

/// Lifts a decoding result into the transaction: an error aborts it.
pub(super) fn tx<T>(result: Result<T, StoreError>) -> TxResult<T> {
    result.map_err(ConflictableTransactionError::Abort)
}

pub(super) fn corrupt(message: String) -> TxError {
    ConflictableTransactionError::Abort(StoreError::Corrupt(message))
}

pub(super) fn finish_tx<T>(
    result: Result<T, TransactionError<StoreError>>,
) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => from_sled(e),
    })
}

/// What a user's `Collect` ops may look at, found by range scans before the
/// transaction because sled transactions cannot scan. Safe under the
/// single-writer assumption (see `SledStore`): nothing else adds entries or
/// devices between the scan and the transaction, and the transaction
/// re-reads every key it found.
struct CollectScan {
    /// The lowest seqs of the user's queue, in order, up to the first entry
    /// no Collect of the batch could take.
    seqs: Vec<Seq>,
    /// True if `seqs` is the whole queue.
    complete: bool,
    /// Keys of the user's devices.
    devices: Vec<Vec<u8>>,
}

/// Per user: how far the batch's Collects could possibly reach.
#[derive(Default)]
struct CollectReach {
    /// Sum of the limits, plus one to tell whether more remain.
    need: usize,
    /// The latest retention cut-off: an entry this recent stays for all.
    retain_since_ms: u64,
    /// The highest cursor an Ack of this batch sets (the stored cursors are
    /// read in the scan).
    acked_in_batch: Seq,
}

fn collect_reach(ops: &[WriteOp]) -> HashMap<UserId, CollectReach> {
    let mut reach: HashMap<UserId, CollectReach> = HashMap::new();
    for op in ops {
        if let WriteOp::Collect {
            user,
            limit,
            retain_since_ms,
            ..
        } = op
        {
            let r = reach.entry(*user).or_default();
            r.need = r.need.saturating_add(*limit);
            r.retain_since_ms = r.retain_since_ms.max(*retain_since_ms);
        }
    }
    for op in ops {
        if let WriteOp::Ack { user, seq, .. } = op {
            if let Some(r) = reach.get_mut(user) {
                r.acked_in_batch = r.acked_in_batch.max(*seq);
            }
        }
    }
    reach
}

/// Finds each collected user's devices and the queue entries its Collects
/// might delete. The scan stops at the first entry that is too recent for
/// the retention period or above every device's cursor: entries only get
/// newer and higher from there, so a pull or ack on a long retained queue
/// costs one entry read, not a scan of the queue. When the queue's first
/// entry is already too recent (every Collect within the history
/// retention, the usual case), nothing can go and the devices are not read
/// either: a scan of them and a read of each in the batch were most of the
/// cost of a Collect that deletes nothing.
fn scan_for_collect(
    trees: &Trees,
    ops: &[WriteOp],
) -> Result<HashMap<UserId, CollectScan>, StoreError> {
    let reach = collect_reach(ops);
    let mut scans = HashMap::with_capacity(reach.len());
    for (user, r) in reach {
        let need = r.need.saturating_add(1);
        let mut entries = trees.userseq_msgid.scan_prefix(u64_key(user)).peekable();
        if let Some(Ok((_, value))) = entries.peek() {
            if msg_id_time_ms(decode_u64("queue entry", value)?) >= r.retain_since_ms {
                let retained = CollectScan {
                    seqs: Vec::new(),
                    complete: false,
                    devices: Vec::new(),
                };
                scans.insert(user, retained);
                continue;
            }
        }
        let mut devices = Vec::new();
        let mut highest_cursor = r.acked_in_batch;
        for item in trees.userdevice_device.scan_prefix(u64_key(user)) {
            let (key, value) = item.map_err(from_sled)?;
            let device: DeviceValue = decode("device", &value)?;
            highest_cursor = highest_cursor.max(device.acked_seq);
            devices.push(key.to_vec());
        }
        let mut seqs = Vec::new();
        let mut stopped = false;
        for item in entries {
            if seqs.len() == need {
                break;
            }
            let (key, value) = item.map_err(from_sled)?;
            let seq = split_user_seq(&key)?.1;
            let msg_id = decode_u64("queue entry", &value)?;
            if seq > highest_cursor || msg_id_time_ms(msg_id) >= r.retain_since_ms {
                stopped = true;
                break;
            }
            seqs.push(seq);
        }
        let complete = !stopped && seqs.len() < need;
        scans.insert(
            user,
            CollectScan {
                seqs,
                complete,
                devices,
            },
        );
    }
    Ok(scans)
}

/// The trees a batch writes, in the order of their ids in the write-ahead
/// log's records (see `wal`). Append only: a record names a tree by its
/// place here. (Records of schema 4 and before wrote conversations into
/// `userpeer_conv`, id 10; they are replayed before the migration runs.)
fn logged_trees(trees: &Trees) -> [&Tree; 14] {
    [
        &trees.meta,
        &trees.userdevice_device,
        &trees.userseq_msgid,
        &trees.userid_maxseq,
        &trees.msgid_body,
        &trees.userclientmsgid_dedupe,
        &trees.groupid_group,
        &trees.groupuser_member,
        &trees.usergroup_joined,
        &trees.groupseq_msgid,
        &trees.userpeer_conv,
        &trees.userdevice_push,
        &trees.userdevice_pushjob,
        &trees.pair_conv,
    ]
}

/// The tree a write-ahead log record names by `id`.
pub(super) fn logged_tree(trees: &Trees, id: u8) -> Option<&Tree> {
    logged_trees(trees).get(usize::from(id)).copied()
}

/// What one batch produced.
pub(super) struct Applied {
    pub outcomes: Vec<WriteOutcome>,
    /// The max seq of every user the batch looked at, as of its end: for
    /// [`Tops::note`] once the batch is committed.
    pub max_seqs: HashMap<UserId, Seq>,
    /// With a write-ahead log: the batch's writes as a record's entries,
    /// its lsn's write last, not yet applied to sled (see [`apply`]).
    pub record: Vec<u8>,
}

/// Works out `ops`; see [`crate::store::Store::apply`].
///
/// The batch runs against sled plus its own writes so far, reading sled
/// directly (only this thread writes the trees a batch writes), and its
/// writes come back as one record of entries.
///
/// With a write-ahead log (`wal_lsn`), nothing is written to sled here:
/// the record ends with the write of its lsn into `meta`, and the caller
/// makes it durable and only then applies it to sled
/// ([`wal::apply_record`]), so sled never holds a write the log could
/// lose, and the record replays whole after a crash. Why not a sled
/// transaction: every one writes out sled's io buffer twice
/// (`PageCache::pin_log` rolls it before and after its batch marker), i.e.
/// two log writes, two `sync_file_range` waits and two wake-ups of sled's
/// io threads per batch, which is the cost the log is there to remove.
///
/// Without one, the record is committed here as one multi-tree sled
/// transaction of plain writes, so after a crash all of it is there or
/// none of it (STORE-NOTES 1). The batch is worked out before the
/// transaction, not inside it, because it reads each queue's top with a
/// range scan, and a sled read outside a transaction blocks while one is
/// open on the same thread.
///
/// Readers see a batch's writes land one by one in the first case (a pull
/// reads several keys, and sled gives no snapshot across them): new
/// messages stay hidden by the visible-message floor until their sync, and
/// the other writes are single-record changes a reader takes before or
/// after.
pub(super) fn apply(
    trees: &Trees,
    tops: &Tops,
    ops: &[WriteOp],
    wal_lsn: Option<u64>,
) -> Result<Applied, StoreError> {
    if ops.is_empty() {
        return Ok(Applied {
            outcomes: Vec::new(),
            max_seqs: HashMap::new(),
            record: Vec::new(),
        });
    }
    let scans = (
        scan_for_collect(trees, ops)?,
        social::scan_groups(trees, ops)?,
        social::scan_timelines(trees, ops)?,
    );
    // Sized for a 1:1 send's five writes per op, so that a batch of sends
    // does not grow the map of its writes again and again.
    let log = RefCell::new(Log {
        record: Vec::with_capacity(ops.len() * WRITE_BYTES_PER_OP),
        written: HashMap::with_capacity(ops.len() * WRITES_PER_OP),
    });
    let views = logged_trees(trees).map(|tree| (tree, &log));
    let queue = QueueTops {
        tree: &trees.userseq_msgid,
        known: tops,
    };
    let (outcomes, max_seqs) = run(views, queue, &scans, ops).map_err(|e| match e {
        ConflictableTransactionError::Abort(e) => e,
        ConflictableTransactionError::Storage(e) => from_sled(e),
        // Only a transaction conflicts.
        _ => StoreError::Io("a batch outside a transaction reported a conflict".into()),
    })?;
    let mut record = log.into_inner().record;
    match wal_lsn {
        Some(lsn) => {
            wal::encode_insert(&mut record, META_TREE_ID, META_WAL_LSN, &u64_key(lsn));
            Ok(Applied {
                outcomes,
                max_seqs,
                record,
            })
        }
        None => {
            commit(trees, &record)?;
            Ok(Applied {
                outcomes,
                max_seqs,
                record: Vec::new(),
            })
        }
    }
}

/// Writes a batch's record to sled as one transaction.
fn commit(trees: &Trees, record: &[u8]) -> Result<(), StoreError> {
    if record.is_empty() {
        return Ok(());
    }
    let entries = wal::entries(record).map_err(StoreError::Corrupt)?;
    let [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13] = logged_trees(trees);
    finish_tx(
        (t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13).transaction(|views| {
            let (t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13) = views;
            let views = [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13];
            for entry in &entries {
                let (wal::Entry::Insert { tree, .. } | wal::Entry::Remove { tree, .. }) = entry;
                let Some(view) = views.get(usize::from(*tree)) else {
                    return Err(corrupt(format!("a record names unknown tree {tree}")));
                };
                match entry {
                    wal::Entry::Insert { key, value, .. } => view.insert(*key, *value).map(drop),
                    wal::Entry::Remove { key, .. } => view.remove(*key).map(drop),
                }?;
            }
            Ok(())
        }),
    )
}

/// Writes a 1:1 send makes (see [`Batch::send`]), to size a batch's log.
const WRITES_PER_OP: usize = 5;
/// Record bytes such a send takes with a 100-byte body.
const WRITE_BYTES_PER_OP: usize = 512;

/// The id of `meta` in [`logged_trees`].
const META_TREE_ID: u8 = 0;

type Scans = (
    HashMap<UserId, CollectScan>,
    HashMap<GroupId, Vec<UserId>>,
    HashMap<GroupId, Vec<Seq>>,
);

/// Runs `ops` over `views` (the trees in [`logged_trees`] order).
fn run(
    views: [(&Tree, &RefCell<Log>); 14],
    queue_tops: QueueTops<'_>,
    (scans, group_scans, timeline_scans): &Scans,
    ops: &[WriteOp],
) -> TxResult<(Vec<WriteOutcome>, HashMap<UserId, Seq>)> {
    let mut next_id = 0;
    let [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13] = views.map(|(tree, log)| {
        next_id += 1;
        LoggedTree {
            tree,
            log,
            id: next_id - 1,
        }
    });
    let mut batch = Batch {
        meta: t0,
        devices: t1,
        queue: t2,
        maxseq: t3,
        bodies: t4,
        dedupe: t5,
        groups: t6,
        members: t7,
        joined: t8,
        timeline: t9,
        conv_index: t10,
        push_tokens: t11,
        push_jobs: t12,
        convs: t13,
        scans,
        group_scans,
        timeline_scans,
        member_sets: HashMap::new(),
        queue_tops,
        // A 1:1 send touches two users.
        max_seqs: HashMap::with_capacity(ops.len() * 2),
        new_seqs: HashMap::with_capacity(ops.len() * 2),
        new_devices: BTreeSet::new(),
        top_msg_id: 0,
        floor: None,
    };
    let outcomes = ops
        .iter()
        .map(|op| batch.apply(op))
        .collect::<TxResult<Vec<_>>>()?;
    batch.finish()?;
    Ok((outcomes, batch.max_seqs))
}

/// Where a batch finds a max seq it has not seen yet: the writer's memory,
/// else the queue's last entry (see [`Tops`]).
#[derive(Clone, Copy)]
struct QueueTops<'a> {
    tree: &'a Tree,
    known: &'a Tops,
}

/// A batch's writes: the record, and each key's newest value (`None`:
/// removed) for the batch's own reads.
#[derive(Default)]
struct Log {
    record: Vec<u8>,
    written: HashMap<(u8, IVec), Option<IVec>>,
}

/// A tree as a batch sees it: sled's tree, only read, under the batch's
/// own writes; `id` names it in records.
#[derive(Clone, Copy)]
struct LoggedTree<'a> {
    tree: &'a Tree,
    log: &'a RefCell<Log>,
    id: u8,
}

type TreeResult<T> = Result<T, UnabortableTransactionError>;

impl LoggedTree<'_> {
    fn get(&self, key: impl AsRef<[u8]>) -> TreeResult<Option<IVec>> {
        let key = key.as_ref();
        if let Some(value) = self.log.borrow().written.get(&(self.id, IVec::from(key))) {
            return Ok(value.clone());
        }
        self.tree
            .get(key)
            .map_err(UnabortableTransactionError::Storage)
    }

    fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> TreeResult<()> {
        self.record(key.as_ref(), Some(value.into()));
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    fn remove(&self, key: impl AsRef<[u8]>) -> TreeResult<bool> {
        let key = key.as_ref();
        let existed = self.get(key)?.is_some();
        self.record(key, None);
        Ok(existed)
    }

    /// Adds a write to the batch's record and to what its reads see.
    fn record(&self, key: &[u8], value: Option<IVec>) {
        let mut log = self.log.borrow_mut();
        match &value {
            Some(value) => wal::encode_insert(&mut log.record, self.id, key, value),
            None => wal::encode_remove(&mut log.record, self.id, key),
        }
        log.written.insert((self.id, IVec::from(key)), value);
    }
}

/// One batch in flight: the transaction's trees plus what the batch has
/// done so far, so that each user's max seq is read once per batch and the
/// msg id floor written once per batch rather than once per op.
struct Batch<'a> {
    meta: LoggedTree<'a>,
    devices: LoggedTree<'a>,
    queue: LoggedTree<'a>,
    maxseq: LoggedTree<'a>,
    bodies: LoggedTree<'a>,
    dedupe: LoggedTree<'a>,
    groups: LoggedTree<'a>,
    members: LoggedTree<'a>,
    joined: LoggedTree<'a>,
    timeline: LoggedTree<'a>,
    /// `userpeer_conv`: the index of `convs` by user.
    conv_index: LoggedTree<'a>,
    push_tokens: LoggedTree<'a>,
    push_jobs: LoggedTree<'a>,
    /// `pair_conv`.
    convs: LoggedTree<'a>,
    scans: &'a HashMap<UserId, CollectScan>,
    /// Current members of the groups the batch fans out to, as scanned
    /// before the transaction (see `social::scan_groups`).
    group_scans: &'a HashMap<GroupId, Vec<UserId>>,
    /// The timeline seqs each CollectTimeline may delete, scanned before.
    timeline_scans: &'a HashMap<GroupId, Vec<Seq>>,
    /// Current members as this batch changed them.
    member_sets: HashMap<GroupId, BTreeSet<UserId>>,
    /// Each user's max seq as of the batch's start, short of its record.
    queue_tops: QueueTops<'a>,
    /// Max seq per user as of the current op.
    max_seqs: HashMap<UserId, Seq>,
    /// Queue entries this batch added, per user, in seq order.
    new_seqs: HashMap<UserId, Vec<Seq>>,
    /// Device keys this batch wrote.
    new_devices: BTreeSet<Vec<u8>>,
    /// The largest msg id of the batch's sends.
    top_msg_id: MsgId,
    /// The msg id floor as the batch found it, once a send has read it: no
    /// stored message has an id above it (verify checks this).
    floor: Option<MsgId>,
}

impl Batch<'_> {
    fn apply(&mut self, op: &WriteOp) -> TxResult<WriteOutcome> {
        match op {
            WriteOp::Send {
                message,
                dedupe_since_ms,
                push,
            } => {
                let outcome = self.send(message, *dedupe_since_ms)?;
                if let WriteOutcome::Sent {
                    duplicate: false,
                    queued,
                    ..
                } = &outcome
                {
                    self.write_push_jobs(message, push, queued)?;
                }
                Ok(outcome)
            }
            WriteOp::SetPushToken {
                user,
                device_id,
                token,
            } => self.set_push_token(*user, device_id, token.as_ref()),
            WriteOp::PushDone {
                user,
                device_id,
                generation,
                pushed,
                now_ms,
            } => self.push_done(*user, device_id, *generation, *pushed, *now_ms),
            WriteOp::PushRetry {
                user,
                device_id,
                generation,
                not_before_ms,
                attempts,
            } => self.push_retry(*user, device_id, *generation, *not_before_ms, *attempts),
            WriteOp::PushTokenRejected {
                user,
                device_id,
                token,
            } => self.push_token_rejected(*user, device_id, token),
            WriteOp::Touch {
                user,
                device_id,
                platform,
                now_ms,
            } => self.touch(*user, device_id, *platform, *now_ms),
            WriteOp::Ack {
                user,
                device_id,
                seq,
                now_ms,
                if_present,
            } => self.ack(*user, device_id, *seq, *now_ms, *if_present),
            WriteOp::Collect {
                user,
                active_since_ms,
                retain_since_ms,
                limit,
            } => self.collect(*user, *active_since_ms, *retain_since_ms, *limit),
            WriteOp::CreateGroup {
                owner,
                name,
                members,
                large_threshold,
                max_members,
                now_ms,
                msg_id,
            } => {
                let limits = social::Limits {
                    large_threshold: *large_threshold,
                    max_members: *max_members,
                };
                self.create_group(*owner, name, members, limits, *now_ms, *msg_id)
            }
            WriteOp::ChangeGroup {
                group,
                actor,
                change,
                large_threshold,
                max_members,
                now_ms,
                msg_id,
            } => {
                let limits = social::Limits {
                    large_threshold: *large_threshold,
                    max_members: *max_members,
                };
                self.change_group(*group, *actor, change, limits, *now_ms, *msg_id)
            }
            WriteOp::Read {
                user,
                conversation,
                seq,
                now_ms,
            } => self.read(*user, *conversation, *seq, *now_ms),
            WriteOp::Recall {
                caller,
                caller_device,
                target,
                window_since_ms,
                msg_id,
            } => self.recall(*caller, caller_device, *target, *window_since_ms, *msg_id),
            WriteOp::TimelineAck {
                user,
                group,
                seq,
                now_ms,
            } => self.timeline_ack(*user, *group, *seq, *now_ms),
            WriteOp::CollectTimeline {
                group,
                up_to_seq,
                retain_since_ms,
                limit,
            } => self.collect_timeline(*group, *up_to_seq, *retain_since_ms, *limit),
            WriteOp::ForgetDevice { user, device_id } => {
                let key = user_str_key(*user, device_id);
                let existed = self.devices.remove(&key[..])?;
                // A revoked device gets no more pushes either.
                self.push_tokens.remove(&key[..])?;
                self.push_jobs.remove(&key[..])?;
                Ok(WriteOutcome::DeviceForgotten(existed))
            }
        }
    }

    /// Writes per stored 1:1 message: body, two queue entries, dedupe record
    /// and the pair's conversation record (and its two index keys with the
    /// pair's first message), plus the floor once per batch (a max seq is
    /// the queue's top, see `SledStore::max_seq`). A group message goes to
    /// `send_group`.
    fn send(&mut self, m: &NewMessage, dedupe_since_ms: u64) -> TxResult<WriteOutcome> {
        // An id above the floor and above every id of this batch so far
        // cannot be stored yet. The committer issues ids in increasing
        // order, so every send it makes takes this path and skips a read.
        let fresh = m.msg_id > self.floor()?.max(self.top_msg_id);
        // A resend's fresh id was also handed out, so it raises the floor too.
        self.top_msg_id = self.top_msg_id.max(m.msg_id);
        let dedupe_key = user_str_key(m.from, &m.client_msg_id);
        if let Some(raw) = self.dedupe.get(&dedupe_key)? {
            let first: DedupeValue = tx(decode("dedupe record", &raw))?;
            if msg_id_time_ms(first.msg_id) >= dedupe_since_ms {
                return Ok(WriteOutcome::Sent {
                    msg_id: first.msg_id,
                    sender_seq: first.sender_seq,
                    recipient_seq: first.recipient_seq,
                    duplicate: true,
                    conv_seq: first.conv_seq,
                    queued: Vec::new(),
                    timeline: None,
                });
            }
        }
        // Overwriting a body would orphan the queue entries counted in its
        // refcount: refuse a reused id (a broken id generator) outright.
        if !fresh && self.bodies.get(u64_key(m.msg_id))?.is_some() {
            return Err(corrupt(format!(
                "message id {} is already stored",
                m.msg_id
            )));
        }
        let outcome = if m.group != 0 {
            self.send_group(m)?
        } else {
            self.send_direct(m)?
        };
        if let WriteOutcome::Sent {
            sender_seq,
            recipient_seq,
            conv_seq,
            ..
        } = &outcome
        {
            let first = DedupeValue {
                msg_id: m.msg_id,
                sender_seq: *sender_seq,
                recipient_seq: *recipient_seq,
                conv_seq: *conv_seq,
            };
            self.dedupe.insert(dedupe_key, first.encode_to_vec())?;
        }
        Ok(outcome)
    }

    fn send_direct(&mut self, m: &NewMessage) -> TxResult<WriteOutcome> {
        let conv_seq = self.advance_conversation(m.from, m.to, m.msg_id)?;
        let sender_seq = self.push_entry(m.from, m.msg_id)?;
        let mut queued = vec![(m.from, sender_seq)];
        let (recipient_seq, refcount) = if m.to == m.from {
            (sender_seq, 1)
        } else {
            let seq = self.push_entry(m.to, m.msg_id)?;
            queued.push((m.to, seq));
            (seq, 2)
        };
        let body = BodyValue {
            refcount,
            conv_seq,
            ..chat_body(m)
        };
        self.bodies
            .insert(&u64_key(m.msg_id)[..], body.encode_to_vec())?;
        Ok(WriteOutcome::Sent {
            msg_id: m.msg_id,
            sender_seq,
            recipient_seq,
            duplicate: false,
            conv_seq,
            queued,
            timeline: None,
        })
    }

    /// Appends `msg_id` to the user's queue at the next seq.
    fn push_entry(&mut self, user: UserId, msg_id: MsgId) -> TxResult<Seq> {
        let seq = self
            .max_seq(user)?
            .checked_add(1)
            .ok_or_else(|| corrupt(format!("user {user}'s queue is out of seqs")))?;
        self.max_seqs.insert(user, seq);
        self.queue
            .insert(&user_seq_key(user, seq)[..], &u64_key(msg_id)[..])?;
        self.new_seqs.entry(user).or_default().push(seq);
        Ok(seq)
    }

    fn max_seq(&mut self, user: UserId) -> TxResult<Seq> {
        if let Some(seq) = self.max_seqs.get(&user) {
            return Ok(*seq);
        }
        let seq = match self.queue_tops.known.get(user) {
            Some(seq) => seq,
            None => {
                // The batch's own writes are in `max_seqs` from the first
                // read on, so the tree's top (as before the batch) is the
                // one to compare.
                let top = tx(super::queue_top(self.queue_tops.tree, user))?;
                let recorded = match self.maxseq.get(u64_key(user))? {
                    Some(raw) => tx(decode_u64("max seq", &raw))?,
                    None => 0,
                };
                top.max(recorded)
            }
        };
        self.max_seqs.insert(user, seq);
        Ok(seq)
    }

    fn device(&self, key: &[u8]) -> TxResult<Option<DeviceValue>> {
        match self.devices.get(key)? {
            Some(raw) => Ok(Some(tx(decode("device", &raw))?)),
            None => Ok(None),
        }
    }

    fn put_device(&mut self, key: Vec<u8>, device: &DeviceValue) -> TxResult<()> {
        self.devices.insert(&key[..], device.encode_to_vec())?;
        self.new_devices.insert(key);
        Ok(())
    }

    fn touch(
        &mut self,
        user: UserId,
        device_id: &str,
        platform: i32,
        now_ms: u64,
    ) -> TxResult<WriteOutcome> {
        let key = user_str_key(user, device_id);
        let mut device = self.device(&key)?.unwrap_or(DeviceValue {
            platform,
            created_at_ms: now_ms,
            last_active_ms: now_ms,
            acked_seq: 0,
        });
        device.platform = platform;
        device.last_active_ms = now_ms;
        self.put_device(key, &device)?;
        Ok(WriteOutcome::Touched {
            acked_seq: device.acked_seq,
        })
    }

    fn ack(
        &mut self,
        user: UserId,
        device_id: &str,
        seq: Seq,
        now_ms: u64,
        if_present: bool,
    ) -> TxResult<WriteOutcome> {
        let max_seq = self.max_seq(user)?;
        if seq > max_seq {
            return Ok(WriteOutcome::AckBeyondMax { max_seq });
        }
        let key = user_str_key(user, device_id);
        let mut device = match self.device(&key)? {
            Some(device) => device,
            None if if_present => return Ok(WriteOutcome::Acked { acked_seq: 0 }),
            // A device acking before any Touch: its platform is unknown (0).
            None => DeviceValue {
                platform: 0,
                created_at_ms: now_ms,
                last_active_ms: now_ms,
                acked_seq: 0,
            },
        };
        device.acked_seq = device.acked_seq.max(seq);
        device.last_active_ms = now_ms;
        self.put_device(key, &device)?;
        Ok(WriteOutcome::Acked {
            acked_seq: device.acked_seq,
        })
    }

    /// The lowest cursor of the user's devices active since `active_since_ms`,
    /// counting devices this batch created; `None` if no device is active.
    fn min_active_cursor(&self, user: UserId, active_since_ms: u64) -> TxResult<Option<Seq>> {
        let prefix = u64_key(user);
        let mut keys: BTreeSet<&[u8]> = self.scan(user).devices.iter().map(Vec::as_slice).collect();
        keys.extend(
            self.new_devices
                .iter()
                .filter(|k| k.starts_with(&prefix))
                .map(Vec::as_slice),
        );
        let mut min: Option<Seq> = None;
        for key in keys {
            let Some(device) = self.device(key)? else {
                continue;
            };
            if device.last_active_ms >= active_since_ms {
                min = Some(min.map_or(device.acked_seq, |m| m.min(device.acked_seq)));
            }
        }
        Ok(min)
    }

    fn scan(&self, user: UserId) -> &CollectScan {
        const EMPTY: &CollectScan = &CollectScan {
            seqs: Vec::new(),
            complete: true,
            devices: Vec::new(),
        };
        // `scan_for_collect` scanned every user with a Collect op.
        self.scans.get(&user).unwrap_or(EMPTY)
    }

    /// The user's queue in seq order as far as this batch can know it: the
    /// scanned entries, then (if the scan saw the whole queue) the entries
    /// this batch added, which all have higher seqs.
    fn candidate_seqs(&self, user: UserId) -> Vec<Seq> {
        let scan = self.scan(user);
        let mut seqs = scan.seqs.clone();
        if scan.complete {
            seqs.extend(self.new_seqs.get(&user).into_iter().flatten());
        }
        seqs
    }

    fn collect(
        &mut self,
        user: UserId,
        active_since_ms: u64,
        retain_since_ms: u64,
        limit: usize,
    ) -> TxResult<WriteOutcome> {
        let (mut entries, mut bodies, mut more) = (0u64, 0u64, false);
        let Some(min_cursor) = self.min_active_cursor(user, active_since_ms)? else {
            return Ok(WriteOutcome::Collected {
                entries,
                bodies,
                more,
            });
        };
        for seq in self.candidate_seqs(user) {
            if seq > min_cursor {
                break;
            }
            let key = user_seq_key(user, seq);
            // Gone already: an earlier Collect of this batch took it.
            let Some(raw) = self.queue.get(key)? else {
                continue;
            };
            let msg_id = tx(decode_u64("queue entry", &raw))?;
            // Ids grow with seq, so everything after this is recent too.
            if msg_id_time_ms(msg_id) >= retain_since_ms {
                break;
            }
            if entries as usize == limit {
                more = true;
                break;
            }
            if entries == 0 {
                // Before the first removal (see `SledStore::max_seq`): the
                // top may go, the max must stay.
                let max = self.max_seq(user)?;
                self.maxseq.insert(&u64_key(user)[..], &u64_key(max)[..])?;
            }
            self.queue.remove(&key[..])?;
            entries += 1;
            bodies += u64::from(self.release_body(msg_id)?);
        }
        Ok(WriteOutcome::Collected {
            entries,
            bodies,
            more,
        })
    }

    /// Drops one reference to a body; true if that was the last one.
    pub(super) fn release_body(&mut self, msg_id: MsgId) -> TxResult<bool> {
        let key = u64_key(msg_id);
        let Some(raw) = self.bodies.get(key)? else {
            return Err(corrupt(format!(
                "queue entry points at missing body {msg_id}"
            )));
        };
        let mut body: BodyValue = tx(decode("message body", &raw))?;
        if body.refcount <= 1 {
            self.bodies.remove(&key[..])?;
            return Ok(true);
        }
        body.refcount -= 1;
        self.bodies.insert(&key[..], body.encode_to_vec())?;
        Ok(false)
    }

    /// The msg id floor as the batch found it (read once per batch, and
    /// only by a batch that stores messages).
    fn floor(&mut self) -> TxResult<MsgId> {
        if let Some(floor) = self.floor {
            return Ok(floor);
        }
        let floor = match self.meta.get(META_MSGID_FLOOR)? {
            Some(raw) => tx(decode_u64("msgid floor", &raw))?,
            None => 0,
        };
        self.floor = Some(floor);
        Ok(floor)
    }

    /// Writes the msg id floor if the batch went above it (once per batch).
    fn finish(&mut self) -> TxResult<()> {
        if self.top_msg_id == 0 {
            return Ok(());
        }
        if self.top_msg_id > self.floor()? {
            self.meta
                .insert(META_MSGID_FLOOR, &u64_key(self.top_msg_id)[..])?;
        }
        Ok(())
    }
}

/// The stored body of a chat message, before its refcount and conv seq.
pub(super) fn chat_body(m: &NewMessage) -> BodyValue {
    BodyValue {
        refcount: 0,
        from: m.from,
        to: m.to,
        from_device: m.from_device.clone(),
        client_msg_id: m.client_msg_id.clone(),
        content_type: m.content_type.clone(),
        content: m.content.clone(),
        group: m.group,
        kind: super::social::KIND_CHAT,
        event: None,
        conv_seq: 0,
        recalled_msg_id: 0,
        recalled: false,
    }
}

/// Creates a user with the next free id, in one transaction over the name
/// index, the users and the id counter; `None` if the name is taken.
pub(super) fn create_user(
    trees: &Trees,
    username: &str,
    password_hash: &str,
    now_ms: u64,
) -> Result<Option<UserRecord>, StoreError> {
    let trees = (&trees.meta, &trees.username_userid, &trees.userid_user);
    finish_tx(trees.transaction(|(meta, names, users)| {
        if names.get(username)?.is_some() {
            return Ok(None);
        }
        let id = match meta.get(META_NEXT_USER_ID)? {
            Some(raw) => tx(decode_u64("next user id", &raw))?,
            None => 1,
        };
        let next = id
            .checked_add(1)
            .ok_or_else(|| corrupt("user ids exhausted".into()))?;
        let user = UserRecord {
            id,
            username: username.to_owned(),
            password_hash: password_hash.to_owned(),
            created_at_ms: now_ms,
            disabled: false,
        };
        meta.insert(META_NEXT_USER_ID, &u64_key(next)[..])?;
        names.insert(username, &u64_key(id)[..])?;
        users.insert(
            &u64_key(id)[..],
            UserValue::from_record(&user).encode_to_vec(),
        )?;
        Ok(Some(user))
    }))
}
