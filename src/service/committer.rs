//! The single writer: every mutation of the message path goes through one
//! thread that batches what is waiting into one atomic [`Store::apply`] and,
//! when a send is in the batch, one [`Store::sync`] (group commit).
//!
//! While a batch is being flushed, new requests queue up and form the next
//! batch, so one disk flush serves as many sends as arrived meanwhile. One
//! writer also gives a total order: sends from one connection are applied in
//! the order they were submitted, and seq assignment needs no locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::session::{Notifier, Push};
use crate::store::{
    EntryKind, GroupId, MsgId, NewMessage, Seq, Store, StoreError, StoredMessage, UserId, WriteOp,
    WriteOutcome, MSG_ID_COUNTER_BITS,
};

/// Jobs waiting for the writer. When full, submitters wait (backpressure
/// reaches the connections, which stop reading).
const QUEUE_DEPTH: usize = 8192;

/// Most background ops [`Committer::write_in_steps`] has with the writer
/// at once: about a millisecond of its work.
pub const BACKGROUND_STEP: usize = 64;

/// Result of one submitted op.
pub type OpResult = Result<WriteOutcome, StoreError>;

/// Result of one dedupe expiry step: records removed, where to resume.
pub type ExpireResult = Result<(u64, Option<Vec<u8>>), StoreError>;

enum Job {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<OpResult>,
    },
    ExpireDedupe {
        older_than_ms: u64,
        resume: Option<Vec<u8>>,
        limit: usize,
        reply: oneshot::Sender<ExpireResult>,
    },
}

/// Counters of the group commit, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Batches applied.
    pub batches: AtomicU64,
    /// Batches that were synced (held a send or another write a client
    /// was promised durably).
    pub syncs: AtomicU64,
    /// Sends applied (duplicates included).
    pub sends: AtomicU64,
    /// Ops applied, of every kind.
    pub ops: AtomicU64,
    /// Total microseconds durable batches took to commit (the apply and
    /// the sync: with the write-ahead log the fdatasync is in the apply).
    pub sync_micros: AtomicU64,
    /// Times a small batch waited for more ops before its flush.
    pub lingers: AtomicU64,
}

/// Handle to submit writes to the writer thread.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
    stats: Arc<CommitStats>,
}

/// Joins the writer thread after every [`Committer`] handle is gone.
pub struct CommitterThread(JoinHandle<()>);

impl CommitterThread {
    /// Wait for the writer to drain its queue, sync and exit.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the committer thread panicked");
        }
    }
}

impl Committer {
    /// Start the writer thread over `store`, notifying through `notifier`
    /// after each durable batch.
    pub fn start(
        store: Arc<dyn Store>,
        notifier: Arc<dyn Notifier>,
        batching: Batching,
        metrics: Arc<Metrics>,
        push: Option<PushSettings>,
    ) -> Result<(Committer, CommitterThread), StoreError> {
        let floor = store.msg_id_floor()?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(CommitStats::default());
        let writer = Writer {
            store,
            notifier,
            max_batch: batching.max_ops.max(1),
            linger: batching.linger,
            ids: MsgIdGenerator::new(floor),
            group_members: HashMap::new(),
            push_devices: HashMap::new(),
            push,
            stats: stats.clone(),
            metrics,
        };
        let handle = std::thread::Builder::new()
            .name("pigeon-committer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(format!("cannot start the committer thread: {e}")))?;
        Ok((Committer { jobs, stats }, CommitterThread(handle)))
    }

    /// Queue one write. Resolves when it is applied (and, for a send, durable).
    /// The op enters the queue before this returns its receiver, so ops
    /// submitted one after another are applied in that order.
    pub async fn submit(&self, op: WriteOp) -> Result<oneshot::Receiver<OpResult>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Write { op, reply })
            .await
            .map_err(|_| stopped())?;
        Ok(rx)
    }

    /// Submit one write and wait for its outcome.
    pub async fn write(&self, op: WriteOp) -> OpResult {
        self.submit(op).await?.await.map_err(|_| stopped())?
    }

    /// Apply background `ops` (deferred cursor writes, collections) at
    /// most [`BACKGROUND_STEP`] at a time, each step waiting for the last
    /// to be applied. The writer's queue is first come, first served: a
    /// thousand ops submitted at once made one ~10 ms batch that every send
    /// arriving meanwhile waited behind (the p99 at 6,000 sends/s), while in
    /// steps a send waits behind one step at most. Outcomes come in op
    /// order; once the writer has stopped, the ops not yet submitted fail.
    pub async fn write_in_steps(&self, ops: Vec<WriteOp>) -> Vec<OpResult> {
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut ops = ops.into_iter().peekable();
        let mut step = Vec::with_capacity(BACKGROUND_STEP);
        while ops.peek().is_some() {
            for op in ops.by_ref().take(BACKGROUND_STEP) {
                step.push(self.submit(op).await);
            }
            for submitted in step.drain(..) {
                outcomes.push(match submitted {
                    Ok(reply) => reply.await.unwrap_or_else(|_| Err(stopped())),
                    Err(e) => Err(e),
                });
            }
        }
        outcomes
    }

    /// Expire dedupe records on the writer thread, so a record being
    /// replaced by a concurrent send is never removed under it.
    pub async fn expire_dedupe(
        &self,
        older_than_ms: u64,
        resume: Option<Vec<u8>>,
        limit: usize,
    ) -> ExpireResult {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::ExpireDedupe {
                older_than_ms,
                resume,
                limit,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Whether the writer thread still takes jobs.
    pub fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Jobs waiting for the writer thread now.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Group-commit counters.
    pub fn stats(&self) -> Arc<CommitStats> {
        self.stats.clone()
    }
}

fn stopped() -> StoreError {
    StoreError::Io("the committer has stopped".into())
}

/// Time-ordered unique message ids: milliseconds since the epoch in the high
/// bits, a counter in the low 16. Always above the last id issued, even if
/// the clock steps back or a millisecond sees more than 65,536 ids.
struct MsgIdGenerator {
    last: MsgId,
}

impl MsgIdGenerator {
    fn new(floor: MsgId) -> Self {
        MsgIdGenerator { last: floor }
    }

    fn next(&mut self, now_ms: u64) -> MsgId {
        self.last = (now_ms << MSG_ID_COUNTER_BITS).max(self.last + 1);
        self.last
    }
}

/// The ops of one group commit and, in the same order, who waits for them.
/// Kept apart so the ops go to the store as one slice, without copies.
#[derive(Default)]
struct Batch {
    ops: Vec<WriteOp>,
    replies: Vec<oneshot::Sender<OpResult>>,
}

impl Batch {
    fn drain(&mut self) -> impl Iterator<Item = (WriteOp, oneshot::Sender<OpResult>)> + '_ {
        self.ops.drain(..).zip(self.replies.drain(..))
    }
}

/// How the writer forms a group commit.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most ops in one batch (one flush).
    pub max_ops: usize,
    /// When the queue runs dry while a durable batch is still small, wait
    /// this long once for more ops before flushing it (0: never). Each
    /// flush costs a fixed amount of CPU (sled wakes its whole io thread
    /// pool for it) and an fsync, so at moderate load fewer, larger batches
    /// cost less CPU per message; each op waits at most this much longer.
    pub linger: std::time::Duration,
}

/// A batch with this many ops already spreads its flush well: no linger.
const LINGER_BELOW: usize = 64;

/// Groups whose member lists the writer keeps for notifies and pushes.
const GROUP_CACHE_CAP: usize = 1024;
/// Users whose push-registered devices the writer keeps.
const PUSH_CACHE_CAP: usize = 100_000;

/// Offline pushes: on when a provider is configured.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// A device pushed less than this long ago waits out the rest.
    pub coalesce: std::time::Duration,
    /// Woken after a batch wrote push jobs.
    pub wake: Arc<tokio::sync::Notify>,
}

/// A group as the writer caches it.
#[derive(Clone)]
struct CachedGroup {
    large: bool,
    members: Arc<[UserId]>,
}

struct Writer {
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    group_members: HashMap<GroupId, CachedGroup>,
    /// Devices with a push token, per user; every change of a token goes
    /// through this thread, which drops the entry before applying it.
    push_devices: HashMap<UserId, Arc<[String]>>,
    push: Option<PushSettings>,
    max_batch: usize,
    linger: std::time::Duration,
    ids: MsgIdGenerator,
    stats: Arc<CommitStats>,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Batch::default();
        let mut lingered = false;
        while let Some(job) = rx.blocking_recv() {
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { op, reply } => {
                        batch.ops.push(op);
                        batch.replies.push(reply);
                    }
                    Job::ExpireDedupe {
                        older_than_ms,
                        resume,
                        limit,
                        reply,
                    } => {
                        // Ops already batched go first, to keep submit order.
                        self.commit(&mut batch);
                        let result = self.store.expire_dedupe(older_than_ms, resume, limit);
                        // The caller may have gone away; nothing to undo.
                        let _ = reply.send(result);
                    }
                }
                if batch.ops.len() < self.max_batch {
                    next = rx.try_recv().ok();
                    if next.is_none() && !lingered && self.should_linger(&batch) {
                        lingered = true;
                        self.stats.lingers.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(self.linger);
                        next = rx.try_recv().ok();
                    }
                }
            }
            lingered = false;
            self.commit(&mut batch);
        }
        // Every handle is gone: make everything applied durable before exit.
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "final store sync failed");
        }
    }

    /// Whether to wait for more ops before flushing `batch`: only once per
    /// batch, only for a small one, and only if it will flush at all.
    fn should_linger(&self, batch: &Batch) -> bool {
        !self.linger.is_zero()
            && batch.ops.len() < LINGER_BELOW
            && batch.ops.iter().any(WriteOp::needs_sync)
    }

    fn commit(&mut self, batch: &mut Batch) {
        if batch.ops.is_empty() {
            return;
        }
        let now_ms = crate::clock::now_ms();
        let mut sends = 0u64;
        let mut durable = false;
        let mut pushes = false;
        for i in 0..batch.ops.len() {
            self.plan_push(&mut batch.ops[i]);
            let op = &batch.ops[i];
            pushes |= matches!(op, WriteOp::Send { push, .. } if !push.targets.is_empty());
        }
        for op in batch.ops.iter_mut() {
            let ids = op.msg_ids_needed();
            if ids > 0 {
                // Consecutive ids: `next` with one `now` counts up by one.
                op.set_msg_id(self.ids.next(now_ms));
                for _ in 1..ids {
                    self.ids.next(now_ms);
                }
            }
            sends += u64::from(matches!(op, WriteOp::Send { .. }));
            durable |= op.needs_sync();
        }
        // Timed from the apply: with the write-ahead log the fdatasync is
        // part of it.
        let started = Instant::now();
        let result = self.store.apply(&batch.ops).and_then(|outcomes| {
            if durable {
                self.store.sync()?;
                let elapsed = started.elapsed();
                self.metrics.flush_seconds.observe(elapsed.as_secs_f64());
                self.stats
                    .sync_micros
                    .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(outcomes)
        });
        let ops = batch.ops.len() as u64;
        self.metrics.batch_ops.observe(ops as f64);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.sends.fetch_add(sends, Ordering::Relaxed);
        self.stats.ops.fetch_add(ops, Ordering::Relaxed);
        match result {
            Ok(outcomes) => {
                if let (true, Some(push)) = (pushes, &self.push) {
                    push.wake.notify_one();
                }
                for ((op, reply), outcome) in batch.drain().zip(outcomes) {
                    self.notify(op, &outcome);
                    // A submitter that went away (connection closed) still had
                    // its write applied; nothing to undo.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ops, "store batch failed");
                for (_, reply) in batch.drain() {
                    let _ = reply.send(Err(clone_error(&e)));
                }
                if let Some(reason) = self.store.failure() {
                    fail_stop(&reason);
                }
            }
        }
    }

    /// Tell online devices what a durable op changed: queues that grew and
    /// large groups' timelines (with the message, for a chat send), read
    /// receipts. A group change also drops the cached member list of that
    /// group.
    fn notify(&mut self, op: WriteOp, outcome: &WriteOutcome) {
        let (queued, timeline) = match outcome {
            WriteOutcome::Sent {
                queued, timeline, ..
            }
            | WriteOutcome::Recalled { queued, timeline } => (queued, timeline),
            WriteOutcome::GroupChanged {
                group,
                queued,
                timeline,
                ..
            } => {
                self.group_members.remove(group);
                (queued, timeline)
            }
            WriteOutcome::ReadSet {
                read_seq,
                receipt_to: Some(peer),
                ..
            } => {
                if let WriteOp::Read { user, .. } = op {
                    let receipt = Push::ReadReceipt {
                        reader: user,
                        read_seq: *read_seq,
                    };
                    self.notifier.push(*peer, receipt);
                }
                return;
            }
            _ => return,
        };
        // A chat send's message goes along, for sessions that take it inline.
        let message = match (op, outcome) {
            (WriteOp::Send { message, .. }, WriteOutcome::Sent { conv_seq, .. })
                if !queued.is_empty() || timeline.is_some() =>
            {
                Some(Arc::new(stored_chat(message, *conv_seq)))
            }
            _ => None,
        };
        for (user, seq) in queued {
            match &message {
                Some(message) => self.notifier.notify_message(*user, *seq, message),
                None => self.notifier.notify(*user, *seq),
            }
        }
        if let Some((group, seq)) = timeline {
            match self.members_of(*group) {
                Ok(members) => match &message {
                    Some(message) => self
                        .notifier
                        .notify_group_message(*group, *seq, &members, message),
                    None => self.notifier.notify_group(*group, *seq, &members),
                },
                Err(e) => tracing::warn!(error = %e, group, "cannot notify a large group"),
            }
        }
    }

    /// A group's current members, cached on this thread: every change of
    /// a group goes through here, so the cache is never stale.
    fn members_of(&mut self, group: GroupId) -> Result<Arc<[UserId]>, StoreError> {
        Ok(self.cached_group(group)?.members)
    }

    fn cached_group(&mut self, group: GroupId) -> Result<CachedGroup, StoreError> {
        if let Some(cached) = self.group_members.get(&group) {
            return Ok(cached.clone());
        }
        if self.group_members.len() >= GROUP_CACHE_CAP {
            self.group_members.clear();
        }
        let large = self.store.group(group)?.is_some_and(|g| g.large);
        let members: Arc<[UserId]> = self
            .store
            .members(group)?
            .into_iter()
            .map(|m| m.user)
            .collect();
        let cached = CachedGroup { large, members };
        self.group_members.insert(group, cached.clone());
        Ok(cached)
    }

    /// Decide which devices a send writes push jobs for: the recipients'
    /// devices with a push token and no foreground session. Large groups
    /// push nobody (a send there must not cost a write per member); their
    /// online members get GroupNotify. Ops that change push tokens drop the
    /// user's cached devices first.
    fn plan_push(&mut self, op: &mut WriteOp) {
        let Some(settings) = &self.push else {
            return;
        };
        let coalesce_ms = settings.coalesce.as_millis() as u64;
        match op {
            WriteOp::SetPushToken { user, .. }
            | WriteOp::PushTokenRejected { user, .. }
            | WriteOp::ForgetDevice { user, .. } => {
                self.push_devices.remove(user);
            }
            WriteOp::Send { message, push, .. } => {
                let recipients: Vec<UserId> = if message.group == 0 {
                    vec![message.to]
                } else {
                    match self.cached_group(message.group) {
                        Ok(g) if !g.large => g.members.to_vec(),
                        Ok(_) => Vec::new(),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read a group's members for pushes");
                            Vec::new()
                        }
                    }
                };
                push.coalesce_ms = coalesce_ms;
                for user in recipients.into_iter().filter(|u| *u != message.from) {
                    let devices = match self.devices_with_tokens(user) {
                        Ok(devices) => devices,
                        Err(e) => {
                            tracing::warn!(error = %e, user, "cannot read push tokens");
                            continue;
                        }
                    };
                    for device in devices.iter() {
                        if self.notifier.wants_push(user, device) {
                            push.targets.push((user, device.clone()));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn devices_with_tokens(&mut self, user: UserId) -> Result<Arc<[String]>, StoreError> {
        if let Some(devices) = self.push_devices.get(&user) {
            return Ok(devices.clone());
        }
        if self.push_devices.len() >= PUSH_CACHE_CAP {
            self.push_devices.clear();
        }
        let devices: Arc<[String]> = self.store.push_devices(user)?.into();
        self.push_devices.insert(user, devices.clone());
        Ok(devices)
    }
}

/// Exit status when the store failed in a way only a restart cures.
pub const EXIT_STORE_FAILED: i32 = 75;

/// The store cannot take writes again in this process (sled 0.34 fails
/// every write after one I/O error, and its memory may hold a batch whose
/// sync failed, which a read could hand out). Every answered send was
/// synced before its answer, so exiting at once loses nothing answered and
/// stops anything unsynced from being served; the supervisor restarts
/// pigeond, which reopens the store from what is on disk.
fn fail_stop(reason: &str) -> ! {
    tracing::error!(
        error = %reason,
        exit_status = EXIT_STORE_FAILED,
        "the store failed; exiting so that a restart reopens it from disk"
    );
    eprintln!("pigeond: the store failed ({reason}); exiting for a restart");
    std::process::exit(EXIT_STORE_FAILED)
}

/// A durable chat send as a pull would read it back (its `seq` is each
/// reader's own and is set where it is delivered).
fn stored_chat(m: NewMessage, conv_seq: Seq) -> StoredMessage {
    StoredMessage {
        seq: 0,
        msg_id: m.msg_id,
        from: m.from,
        from_device: m.from_device,
        to: m.to,
        client_msg_id: m.client_msg_id,
        content_type: m.content_type,
        content: m.content,
        group: m.group,
        kind: EntryKind::Chat,
        conv_seq,
        recalled: false,
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io(m) => StoreError::Io(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::SchemaVersion { found, expected } => StoreError::SchemaVersion {
            found: *found,
            expected: *expected,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{msg_id, send};
    use crate::store::{Durability, SledStore};
    use std::sync::Mutex;

    /// Records every notify, and checks at that moment that the store
    /// already shows the entry to a pull (so it was synced first).
    struct Checking {
        store: Arc<dyn Store>,
        seen: Mutex<Vec<(UserId, crate::store::Seq)>>,
    }

    impl Notifier for Checking {
        fn notify(&self, user: UserId, max_seq: crate::store::Seq) {
            let page = self.store.pull(user, max_seq - 1, 1).unwrap();
            assert_eq!(
                page.messages.len(),
                1,
                "notified of seq {max_seq} before it was durable"
            );
            self.seen.lock().unwrap().push((user, max_seq));
        }
        fn notify_group(&self, _: GroupId, _: crate::store::Seq, _: &[UserId]) {}
        fn push(&self, _: UserId, _: Push) {}
        fn wants_push(&self, _: UserId, _: &str) -> bool {
            false
        }
    }

    /// A writer over a fresh fsynced store that checks every notify.
    struct TestWriter {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        notifier: Arc<Checking>,
        committer: Committer,
        thread: CommitterThread,
    }

    fn start_writer(linger: std::time::Duration) -> TestWriter {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(dir.path(), Durability::Fsync).unwrap());
        let notifier = Arc::new(Checking {
            store: store.clone(),
            seen: Mutex::new(Vec::new()),
        });
        let batching = Batching {
            max_ops: 64,
            linger,
        };
        let metrics = Arc::new(Metrics::default());
        let (committer, thread) =
            Committer::start(store.clone(), notifier.clone(), batching, metrics, None).unwrap();
        TestWriter {
            _dir: dir,
            store,
            notifier,
            committer,
            thread,
        }
    }

    /// Sends from many tasks through the writer (lingering as by default):
    /// each is answered only once a pull shows it, notifies follow apply
    /// order (each user's seqs rise by one), and answers come in submit
    /// order per submitter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_and_notifies_follow_durability_and_apply_order() {
        let TestWriter {
            _dir,
            store,
            notifier,
            committer,
            thread,
        } = start_writer(std::time::Duration::from_micros(300));
        let mut tasks = Vec::new();
        for sender in 1..=8u64 {
            let committer = committer.clone();
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut pending = Vec::new();
                for i in 0..50 {
                    let op = send(sender, 100, msg_id(1, sender * 1000 + i));
                    pending.push(committer.submit(op).await.unwrap());
                }
                let mut last = 0;
                for rx in pending {
                    let WriteOutcome::Sent {
                        sender_seq,
                        recipient_seq,
                        ..
                    } = rx.await.unwrap().unwrap()
                    else {
                        panic!("not sent");
                    };
                    assert_eq!(sender_seq, last + 1, "answers out of order");
                    last = sender_seq;
                    let page = store.pull(100, recipient_seq - 1, 1).unwrap();
                    assert_eq!(page.messages.len(), 1, "answered before it was durable");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        drop(committer);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        let seen = notifier.seen.lock().unwrap();
        let to_recipient: Vec<_> = seen
            .iter()
            .filter(|(u, _)| *u == 100)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(to_recipient, (1..=400).collect::<Vec<_>>());
    }

    /// A small durable batch waits once for more ops: an op submitted
    /// after the writer took the first one off the queue, while it lingers,
    /// is committed in the same batch (one flush for both).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lingering_batch_takes_the_ops_that_arrive_meanwhile() {
        let TestWriter {
            _dir,
            committer,
            thread,
            ..
        } = start_writer(std::time::Duration::from_secs(2));
        let first = committer.submit(send(1, 2, msg_id(1, 1))).await.unwrap();
        // The writer took it and, with nothing else queued, lingers.
        let stats = committer.stats();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while stats.lingers.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the writer never lingered");
            tokio::task::yield_now().await;
        }
        let second = committer.submit(send(1, 2, msg_id(1, 2))).await.unwrap();
        for reply in [first, second] {
            assert!(matches!(
                reply.await.unwrap().unwrap(),
                WriteOutcome::Sent { .. }
            ));
        }
        assert_eq!(stats.batches.load(Ordering::Relaxed), 1, "one batch");
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 1, "one flush");
        drop(committer);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    }

    /// Background ops go to the writer a step at a time: the writer never
    /// holds more than a step of them, a send submitted while they are
    /// being written is answered before the last of them, and every
    /// outcome comes back in op order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_ops_are_written_in_steps_that_sends_pass_between() {
        let TestWriter {
            _dir,
            committer,
            thread,
            ..
        } = start_writer(std::time::Duration::ZERO);
        let user = 7;
        let first = committer.write(send(1, user, msg_id(1, 1))).await.unwrap();
        assert!(matches!(first, WriteOutcome::Sent { .. }));
        // Many steps, each a commit with its fsync: the send below finds
        // most of them still to come even on a slow, shared machine.
        let count = BACKGROUND_STEP * 40 + 5;
        let ops: Vec<WriteOp> = (0..count)
            .map(|i| WriteOp::Ack {
                user,
                device_id: format!("d{i}"),
                seq: 1,
                now_ms: 1_000,
                if_present: false,
            })
            .collect();
        let background = tokio::spawn({
            let committer = committer.clone();
            async move { committer.write_in_steps(ops).await }
        });
        // Watch the writer's queue while the steps go through.
        let mut most_queued = 0;
        while committer.stats().ops.load(Ordering::Relaxed) < 1 + BACKGROUND_STEP as u64 {
            most_queued = most_queued.max(committer.queued());
            tokio::task::yield_now().await;
        }
        let passing = committer.write(send(2, user, msg_id(1, 2))).await.unwrap();
        let applied_when_answered = committer.stats().ops.load(Ordering::Relaxed);
        let outcomes = background.await.unwrap();
        assert!(
            most_queued <= BACKGROUND_STEP,
            "{most_queued} background ops were queued at once"
        );
        assert!(matches!(passing, WriteOutcome::Sent { .. }));
        assert!(
            applied_when_answered < 2 + count as u64,
            "the send waited for every background op"
        );
        assert_eq!(outcomes.len(), count);
        for outcome in outcomes {
            assert!(matches!(
                outcome.unwrap(),
                WriteOutcome::Acked { acked_seq: 1 }
            ));
        }
        drop(committer);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    }

    #[test]
    fn msg_ids_grow_even_when_the_clock_steps_back() {
        let mut ids = MsgIdGenerator::new(0);
        let a = ids.next(1_000);
        let b = ids.next(1_000);
        let c = ids.next(900);
        assert!(a < b && b < c);
        assert_eq!(crate::store::msg_id_time_ms(a), 1_000);
    }

    #[test]
    fn msg_ids_start_above_the_stored_floor() {
        let floor = 5_000 << MSG_ID_COUNTER_BITS;
        let mut ids = MsgIdGenerator::new(floor);
        assert!(ids.next(10) > floor);
    }
}
