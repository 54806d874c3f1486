//! The request-sequence harness: a real store (sled, in a temporary
//! directory), the real single writer, the real messaging and account
//! services, driven in-process without sockets, next to a model of what
//! they must answer.
//!
//! Three users with two devices each ("slots") log in by token (issued
//! directly into the store: an argon2 password hash per login would leave
//! a few execs per second), send to each other, to themselves and to
//! nobody, pull with arbitrary anchors and limits, ack, log out, log in
//! again and run the background collector. After every op the whole store
//! is read back and checked against the model:
//!
//! - every answer is the one the model predicts (seq, duplicate, cursor,
//!   error code), and a login only ever yields the token's own user;
//! - cursors never move backwards, also across logout and login;
//! - seqs are gapless per user at assignment, and a queue holds only
//!   entries of its own user, each exactly as sent;
//! - garbage collection (history_retention = 0, so it runs on every ack)
//!   never removes an entry above the lowest cursor its user's devices ever
//!   had in common, and a sweep does remove everything below it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pigeon_server::error::ServiceError;
use pigeon_server::metrics::Metrics;
use pigeon_server::service::accounts::hash_token;
use pigeon_server::service::acks;
use pigeon_server::service::{
    collector, Accounts, Batching, Caller, Committer, Credential, Messaging, MessagingRules, Outgoing,
    Recipient,
};
use pigeon_server::session::{Notifier, Push};
use pigeon_server::store::sled_store::SledOptions;
use pigeon_server::store::{Durability, Seq, SledStore, Store, TokenRecord, UserId, UserRecord};

pub use crate::ops::{Anchor, Op, Ops, MAX_OPS};

/// Users in every run.
pub const USERS: usize = 3;
/// Device ids; every user has both (the same ids on purpose: a device id
/// means nothing without its user).
pub const DEVICES: [&str; 2] = ["phone", "laptop"];
const SLOTS: usize = USERS * DEVICES.len();
/// The content limit the harness configures (small, so it is hit).
pub const MAX_CONTENT: usize = 64;
const MAX_PULL: usize = 1000;
const DAY: Duration = Duration::from_secs(86_400);

/// Records every notify, to check the writer announces the right seqs.
#[derive(Default)]
struct Recorder(Mutex<Vec<(UserId, Seq)>>);

impl Notifier for Recorder {
    fn notify(&self, user: UserId, max_seq: Seq) {
        self.0.lock().unwrap().push((user, max_seq));
    }

    // The model sends no group, receipt or push traffic.
    fn notify_group(&self, _group: u64, _max_seq: Seq, _members: &[UserId]) {}

    fn push(&self, _user: UserId, _event: Push) {}

    fn wants_push(&self, _user: UserId, _device_id: &str) -> bool {
        false
    }
}

impl Recorder {
    fn take(&self) -> Vec<(UserId, Seq)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A queue entry as the model expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    msg_id: u64,
    from: usize,
    to: usize,
    from_device: &'static str,
    client_msg_id: String,
    content: Bytes,
}

#[derive(Debug, Default)]
struct Queue {
    max_seq: Seq,
    entries: BTreeMap<Seq, Entry>,
    /// Every entry at or below this may have been collected: the highest
    /// lowest-cursor the user's devices ever had together.
    collectable: Seq,
}

#[derive(Debug, Default)]
struct Model {
    queues: [Queue; USERS],
    /// Device records that exist, by slot.
    cursors: [Option<Seq>; SLOTS],
    /// The token each online slot logged in with.
    online: [Option<String>; SLOTS],
    /// The newest live token of each slot.
    tokens: [Option<String>; SLOTS],
    /// Tokens that were logged out.
    revoked: Vec<String>,
    /// (sender, client_msg_id) → (msg_id, sender seq).
    dedupe: HashMap<(usize, String), (u64, Seq)>,
    last_msg_id: u64,
    issued: u64,
    sent: u64,
}

impl Model {
    fn min_cursor(&self, user: usize) -> Option<Seq> {
        (0..DEVICES.len())
            .filter_map(|d| self.cursors[user * DEVICES.len() + d])
            .min()
    }

    /// After a collect of `user` may have run.
    fn collect_may_have_run(&mut self, user: usize) {
        if let Some(min) = self.min_cursor(user) {
            let q = &mut self.queues[user];
            q.collectable = q.collectable.max(min);
        }
    }

    fn set_cursor(&mut self, slot: usize, acked: Seq) {
        let old = self.cursors[slot].unwrap_or(0);
        assert!(
            acked >= old,
            "slot {slot}: cursor moved back {old} → {acked}"
        );
        self.cursors[slot] = Some(acked);
    }
}

/// The services over one fresh store.
struct Harness {
    store: Arc<dyn Store>,
    messaging: Arc<Messaging>,
    accounts: Accounts,
    notes: Arc<Recorder>,
    users: Vec<UserRecord>,
    model: Model,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// Where the temporary stores go: tmpfs when there is one (an fsync there
/// costs nothing).
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("pigeon-fuzz")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::Builder::new()
        .prefix("pigeon-fuzz")
        .tempdir()
        .expect("a temporary directory")
}

/// Run one sequence against a fresh store, panicking on the first answer
/// or stored state the model does not allow.
pub fn run(ops: &Ops) {
    let dir = scratch();
    let options = SledOptions {
        cache_capacity_bytes: 4 * 1024 * 1024,
        flush_every_ms: None,
        // No free-space guard: tmpfs may be small, and statfs per write
        // would cost more than the write.
        min_free_bytes: 0,
        ..SledOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open_with(&dir.path().join("data"), Durability::Buffered, &options)
            .expect("a fresh store opens"),
    );
    let notes = Arc::new(Recorder::default());
    let (committer, thread) = Committer::start(
        store.clone(),
        notes.clone(),
        Batching {
            max_ops: 64,
            linger: Duration::ZERO,
        },
        Arc::new(Metrics::default()),
        None,
    )
    .expect("the writer starts");
    let rules = MessagingRules {
        max_content_bytes: MAX_CONTENT,
        max_pull: MAX_PULL,
        dedupe_window: DAY,
        history_retention: Duration::ZERO,
        device_inactive_after: DAY,
        recall_window: Duration::from_secs(120),
        large_group_threshold: 500,
        max_group_members: 100_000,
        push_preview: false,
        ack_write_interval: Duration::from_secs(1),
    };
    let messaging = Arc::new(Messaging::new(store.clone(), committer, rules));
    let accounts = Accounts::new(store.clone(), true, DAY, 1).expect("the account service starts");
    let users = (0..USERS)
        .map(|i| {
            store
                .create_user(&format!("user{i}"), "not-a-hash", 1)
                .expect("create user")
                .expect("a new name")
        })
        .collect();
    let mut harness = Harness {
        store,
        messaging,
        accounts,
        notes,
        users,
        model: Model::default(),
    };
    runtime().block_on(async {
        for op in &ops.0 {
            harness.apply(op).await;
            harness.check_store();
        }
    });
    // The writer exits once the last committer handle (in messaging) goes.
    drop(harness);
    thread.join();
    drop(dir);
}

fn slot_of(slot: u8) -> (usize, usize, usize) {
    let s = slot as usize % SLOTS;
    (s, s / DEVICES.len(), s % DEVICES.len())
}

impl Harness {
    fn caller(&self, slot: usize) -> Caller {
        Caller {
            user: self.users[slot / DEVICES.len()].id,
            device_id: DEVICES[slot % DEVICES.len()].to_owned(),
        }
    }

    fn index_of(&self, id: UserId) -> usize {
        self.users
            .iter()
            .position(|u| u.id == id)
            .unwrap_or_else(|| panic!("user id {id} is none of ours"))
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Login {
                slot,
                fresh,
                wrong_device,
                revoked,
                claim,
            } => self.login(slot, fresh, wrong_device, revoked, claim).await,
            Op::Logout { slot } => self.logout(slot).await,
            Op::Send {
                slot,
                to,
                cmid,
                len,
            } => self.send(slot, to, cmid, len).await,
            Op::Pull { slot, after, limit } => self.pull(slot, after, limit).await,
            Op::Ack { slot, seq } => self.ack(slot, seq).await,
            Op::Sweep => self.sweep().await,
        }
    }

    async fn login(&mut self, slot: u8, fresh: bool, wrong_device: bool, revoked: bool, claim: u8) {
        let (s, user, device) = slot_of(slot);
        let m = &mut self.model;
        let token = match (&m.revoked.last(), &m.tokens[s]) {
            (Some(old), _) if revoked => old.to_string(),
            (_, Some(live)) if !fresh => live.clone(),
            _ => {
                // What a password login does after the hash matched.
                m.issued += 1;
                let token = format!("token-{}", m.issued);
                let record = TokenRecord {
                    user_id: self.users[user].id,
                    device_id: DEVICES[device].to_owned(),
                    expires_at_ms: u64::MAX,
                };
                self.store
                    .put_token(&hash_token(&token), &record)
                    .expect("put token");
                m.tokens[s] = Some(token.clone());
                token
            }
        };
        let presented = DEVICES[(device + wrong_device as usize) % DEVICES.len()];
        let claimed = match claim % 5 {
            0 => String::new(),
            4 => "nobody".to_owned(),
            n => self.users[n as usize - 1].username.clone(),
        };
        let is_revoked = m.revoked.contains(&token);
        let allowed = !is_revoked
            && !wrong_device
            && (claimed.is_empty() || claimed == self.users[user].username);
        let result = self
            .accounts
            .authenticate(&claimed, presented, Credential::Token(token.clone()))
            .await;
        let auth = match result {
            Ok(auth) => auth,
            Err(ServiceError::AuthFailed) if !allowed => return,
            Err(e) => panic!("login of slot {s} (allowed: {allowed}): {e}"),
        };
        assert!(
            allowed,
            "login of slot {s} with {claimed:?}/{presented} should fail"
        );
        assert_eq!(
            auth.user.id, self.users[user].id,
            "a token logs in its own user only"
        );
        assert!(self
            .accounts
            .still_valid(auth.user.id, &auth.token_hash)
            .unwrap());
        let caller = self.caller(s);
        let (max_seq, acked) = self
            .messaging
            .device_logged_in(&caller, 6)
            .await
            .expect("device login");
        let m = &mut self.model;
        assert_eq!(max_seq, m.queues[user].max_seq);
        assert_eq!(acked, m.cursors[s].unwrap_or(0), "login reports the cursor");
        m.set_cursor(s, acked);
        m.online[s] = Some(token);
    }

    async fn logout(&mut self, slot: u8) {
        let (s, user, _) = slot_of(slot);
        let Some(token) = self.model.online[s].take() else {
            return;
        };
        let hash = hash_token(&token);
        self.accounts.revoke(hash).await.expect("revoke");
        assert!(!self
            .accounts
            .still_valid(self.users[user].id, &hash)
            .unwrap());
        let m = &mut self.model;
        if m.tokens[s].as_ref() == Some(&token) {
            m.tokens[s] = None;
        }
        m.revoked.push(token);
    }

    async fn send(&mut self, slot: u8, to: u8, cmid: u8, len: u8) {
        let (s, from, device) = slot_of(slot);
        if self.model.online[s].is_none() {
            return;
        }
        let (recipient, target) = match to % 8 {
            n @ 0..=2 => (Recipient::Id(self.users[n as usize].id), Some(n as usize)),
            n @ 3..=5 => {
                let i = n as usize - 3;
                (Recipient::Name(self.users[i].username.clone()), Some(i))
            }
            6 => (Recipient::Id(999), None),
            _ => (Recipient::Name("nobody".into()), None),
        };
        let client_msg_id = match cmid {
            250..=252 => String::new(),
            253.. => "x".repeat(65),
            n => format!("m{}", n % 8),
        };
        let len = len as usize % 80;
        self.model.sent += 1;
        let mut content = vec![0u8; len];
        for (i, b) in content.iter_mut().enumerate() {
            *b = (self.model.sent as u8).wrapping_add(i as u8);
        }
        let content = Bytes::from(content);
        let outgoing = Outgoing {
            to: recipient,
            client_msg_id: client_msg_id.clone(),
            content_type: String::new(),
            content: content.clone(),
        };
        let caller = self.caller(s);
        let result = match self.messaging.submit_send(&caller, outgoing).await {
            Ok(pending) => pending.durable().await,
            Err(e) => Err(e),
        };
        let notes = self.notes.take();
        if len > MAX_CONTENT {
            assert!(
                matches!(result, Err(ServiceError::ContentTooLarge { .. })),
                "{result:?}"
            );
            return;
        }
        if !(1..=64).contains(&client_msg_id.len()) {
            assert!(
                matches!(result, Err(ServiceError::InvalidArgument(_))),
                "{result:?}"
            );
            return;
        }
        let Some(to) = target else {
            assert!(
                matches!(result, Err(ServiceError::UnknownUser(_))),
                "{result:?}"
            );
            return;
        };
        let receipt = result.expect("a valid send is stored");
        let m = &mut self.model;
        if let Some(&(msg_id, seq)) = m.dedupe.get(&(from, client_msg_id.clone())) {
            assert!(receipt.duplicate, "a resend is answered as a duplicate");
            assert_eq!((receipt.msg_id, receipt.seq), (msg_id, seq));
            assert!(notes.is_empty(), "a duplicate notifies nobody");
            return;
        }
        assert!(!receipt.duplicate);
        assert!(receipt.msg_id > m.last_msg_id, "message ids grow");
        m.last_msg_id = receipt.msg_id;
        let entry = Entry {
            msg_id: receipt.msg_id,
            from,
            to,
            from_device: DEVICES[device],
            client_msg_id: client_msg_id.clone(),
            content,
        };
        // Gapless: the sender's entry is its max + 1, the recipient's too.
        let sender_seq = m.queues[from].max_seq + 1;
        assert_eq!(receipt.seq, sender_seq, "seqs are assigned without gaps");
        let mut expected_notes = Vec::new();
        for user in if from == to { vec![to] } else { vec![to, from] } {
            let q = &mut m.queues[user];
            q.max_seq += 1;
            q.entries.insert(q.max_seq, entry.clone());
            expected_notes.push((self.users[user].id, q.max_seq));
        }
        // One notify per queue that grew, in no particular order.
        let mut notes = notes;
        notes.sort_unstable();
        expected_notes.sort_unstable();
        assert_eq!(notes, expected_notes, "notifies name each queue's new top");
        m.dedupe
            .insert((from, client_msg_id), (receipt.msg_id, sender_seq));
    }

    async fn pull(&mut self, slot: u8, after: Anchor, limit: u8) {
        let (s, user, _) = slot_of(slot);
        if self.model.online[s].is_none() {
            return;
        }
        let max_seq = self.model.queues[user].max_seq;
        let cursor = self.model.cursors[s].expect("an online slot has a device");
        let after = after.resolve(max_seq, cursor);
        let limit = limit as u32 % 6;
        let result = self.messaging.pull(&self.caller(s), after, limit).await;
        if after > max_seq {
            assert!(
                matches!(result, Err(ServiceError::AckBeyondMaxSeq { seq, max_seq: m }) if seq == after && m == max_seq),
                "{result:?}"
            );
            return;
        }
        let page = result.expect("a pull at or below max_seq works");
        self.model.set_cursor(s, cursor.max(after));
        assert_eq!(page.acked_seq, cursor.max(after));
        // The pull recorded its ack; write it (and collect) as the server's
        // ack writer would, so the store can be compared with the model.
        acks::write_pending(&self.messaging).await;
        self.model.collect_may_have_run(user);
        self.check_collected(user);
        assert_eq!(page.max_seq, max_seq);
        let limit = if limit == 0 { 100 } else { limit as usize };
        assert!(page.messages.len() <= limit);
        let seqs: Vec<Seq> = page.messages.iter().map(|d| d.message.seq).collect();
        let q = &self.model.queues[user];
        for d in &page.messages {
            assert_eq!(
                &*d.from_name,
                self.users[self.index_of(d.message.from)].username
            );
            assert_eq!(
                &*d.to_name,
                self.users[self.index_of(d.message.to)].username
            );
        }
        // Everything that must still be there, from after_seq up to where the
        // page stopped (or the top, when it did not stop early).
        let end = match (page.has_more, seqs.last()) {
            (true, Some(&last)) => last,
            (true, None) => panic!("has_more with an empty page"),
            (false, _) => max_seq,
        };
        if page.messages.len() < limit {
            assert!(!page.has_more, "a short page has no more");
        }
        let floor = after.max(q.collectable);
        let required = q.entries.range(floor + 1..).map(|(s, _)| *s);
        for seq in required.take_while(|&s| s <= end) {
            assert!(
                seqs.contains(&seq),
                "pull after {after} misses seq {seq}: got {seqs:?}"
            );
        }
        assert!(
            seqs.iter().all(|&seq| seq > after),
            "pull returned {seqs:?} after {after}"
        );
        let messages: Vec<_> = page.messages.into_iter().map(|d| d.message).collect();
        self.check_entries(user, &messages);
    }

    async fn ack(&mut self, slot: u8, seq: Anchor) {
        let (s, user, _) = slot_of(slot);
        if self.model.online[s].is_none() {
            return;
        }
        let max_seq = self.model.queues[user].max_seq;
        let cursor = self.model.cursors[s].expect("an online slot has a device");
        let seq = seq.resolve(max_seq, cursor);
        let result = self.messaging.ack(&self.caller(s), seq).await;
        if seq > max_seq {
            assert!(
                matches!(result, Err(ServiceError::AckBeyondMaxSeq { seq: a, max_seq: m }) if a == seq && m == max_seq),
                "{result:?}"
            );
            return;
        }
        let acked = result.expect("an ack at or below max_seq works");
        assert_eq!(acked, cursor.max(seq));
        self.model.set_cursor(s, acked);
        self.model.collect_may_have_run(user);
        self.check_collected(user);
    }

    async fn sweep(&mut self) {
        collector::sweep(&self.messaging, &self.store, DAY)
            .await
            .expect("a sweep works");
        for user in 0..USERS {
            self.model.collect_may_have_run(user);
            self.check_collected(user);
        }
    }

    /// With a retention of zero, a collect leaves nothing at or below the
    /// lowest cursor.
    fn check_collected(&self, user: usize) {
        let Some(min) = self.model.min_cursor(user) else {
            return;
        };
        let page = self
            .store
            .pull(self.users[user].id, 0, 1)
            .expect("read queue");
        if let Some(first) = page.messages.first() {
            assert!(
                first.seq > min,
                "user {user}: seq {} survived a collect at {min}",
                first.seq
            );
        }
    }

    /// Messages read from `user`'s queue are that queue's, exactly as sent.
    fn check_entries(&self, user: usize, messages: &[pigeon_server::store::StoredMessage]) {
        let q = &self.model.queues[user];
        let mut last = 0;
        for got in messages {
            assert!(got.seq > last, "seqs strictly increase");
            last = got.seq;
            let Some(want) = q.entries.get(&got.seq) else {
                panic!("user {user} read seq {} that was never queued", got.seq);
            };
            let (from, to) = (self.index_of(got.from), self.index_of(got.to));
            assert!(
                from == user || to == user,
                "user {user} read another user's entry"
            );
            assert_eq!(
                (got.msg_id, from, to, got.from_device.as_str()),
                (want.msg_id, want.from, want.to, want.from_device)
            );
            assert_eq!(got.client_msg_id, want.client_msg_id);
            assert_eq!(got.content, want.content);
            assert_eq!(got.content_type, "text/plain");
        }
    }

    /// Read back every queue and device and compare with the model.
    fn check_store(&self) {
        for user in 0..USERS {
            let id = self.users[user].id;
            let q = &self.model.queues[user];
            assert_eq!(self.store.max_seq(id).unwrap(), q.max_seq);
            let page = self.store.pull(id, 0, 100_000).expect("read queue");
            assert!(!page.has_more);
            self.check_entries(user, &page.messages);
            for (seq, _) in q.entries.range(q.collectable + 1..) {
                assert!(
                    page.messages.iter().any(|m| m.seq == *seq),
                    "user {user}: seq {seq} above every cursor was collected"
                );
            }
            let devices = self.store.devices(id).unwrap();
            let expected: Vec<(&str, Seq)> = (0..DEVICES.len())
                .filter_map(|d| {
                    let cursor = self.model.cursors[user * DEVICES.len() + d]?;
                    Some((DEVICES[d], cursor))
                })
                .collect();
            let mut got: Vec<(&str, Seq)> = devices
                .iter()
                .map(|d| (d.device_id.as_str(), d.acked_seq))
                .collect();
            let mut expected = expected;
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "user {user}: devices and cursors");
        }
    }
}
