//! What a group message costs on disk against the same content sent 1:1
//! to every member: the body is stored once and each member's queue holds
//! only a reference. Measured on a real sled store (allocated bytes of
//! the data directory after a sync); the figures are printed for
//! docs/performance.md and the ratio is asserted.
//!
//! ```text
//! cargo test --release --test storage_cost -- --nocapture
//! ```

use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use pigeon_server::store::{
    Durability, NewMessage, SledStore, Store, WriteOp, WriteOutcome, MSG_ID_COUNTER_BITS,
};

const MEMBERS: usize = 500;
const MESSAGES: usize = 40;
const CONTENT: usize = 1024;

/// Bytes of disk blocks the files under `dir` occupy.
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("readable dir")
        .map(|e| {
            let e = e.expect("entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                allocated(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

struct Ids(Cell<u64>);

impl Ids {
    fn next(&self) -> u64 {
        let now = pigeon_server::clock::now_ms();
        let id = (now << MSG_ID_COUNTER_BITS).max(self.0.get() + 1);
        self.0.set(id);
        id
    }
}

fn message(ids: &Ids, from: u64, to: u64, group: u64) -> WriteOp {
    let msg_id = ids.next();
    WriteOp::Send {
        message: NewMessage {
            msg_id,
            from,
            group,
            from_device: "d".into(),
            to,
            client_msg_id: format!("c{msg_id}"),
            content_type: "text/plain".into(),
            content: Bytes::from(vec![b'x'; CONTENT]),
        },
        dedupe_since_ms: 0,
        push: Default::default(),
    }
}

/// A store with MEMBERS users; returns their ids.
fn populated(dir: &Path) -> (SledStore, Vec<u64>) {
    let store = SledStore::open(dir, Durability::Fsync).expect("store opens");
    let users = (0..MEMBERS)
        .map(|i| {
            store
                .create_user(&format!("u{i}"), "x", 1)
                .expect("created")
                .expect("new")
                .id
        })
        .collect();
    (store, users)
}

/// Disk bytes one step added, after a sync.
fn grown(store: &SledStore, dir: &Path, step: impl FnOnce(&SledStore)) -> u64 {
    store.sync().expect("synced");
    let before = allocated(dir);
    step(store);
    store.sync().expect("synced");
    allocated(dir).saturating_sub(before)
}

#[test]
fn a_group_message_costs_a_fraction_of_the_same_sent_one_to_one() {
    let ids = Ids(Cell::new(0));

    let group_dir = tempfile::tempdir().unwrap();
    let (store, users) = populated(group_dir.path());
    let created = store
        .apply(&[WriteOp::CreateGroup {
            owner: users[0],
            name: "five hundred".into(),
            members: users.clone(),
            large_threshold: MEMBERS as u32,
            max_members: 100_000,
            now_ms: 1,
            msg_id: ids.next(),
        }])
        .expect("created");
    let WriteOutcome::GroupChanged { group, .. } = created[0] else {
        panic!("create: {created:?}");
    };
    let group_bytes = grown(&store, group_dir.path(), |store| {
        for _ in 0..MESSAGES {
            store
                .apply(&[message(&ids, users[0], 0, group)])
                .expect("group send");
        }
    });
    let group_stats = store.stats().unwrap();
    drop(store);

    let direct_dir = tempfile::tempdir().unwrap();
    let (store, users) = populated(direct_dir.path());
    let direct_bytes = grown(&store, direct_dir.path(), |store| {
        for _ in 0..MESSAGES {
            let ops: Vec<WriteOp> = users[1..]
                .iter()
                .map(|to| message(&ids, users[0], *to, 0))
                .collect();
            store.apply(&ops).expect("1:1 sends");
        }
    });
    let direct_stats = store.stats().unwrap();

    let per = |bytes: u64| bytes / MESSAGES as u64;
    println!(
        "one {CONTENT}-byte message to {MEMBERS}: group {} bytes on disk \
         ({} bodies, {} entries in all); 1:1 x{} {} bytes ({} bodies, {} entries); \
         ratio {:.3}",
        per(group_bytes),
        group_stats.bodies,
        group_stats.entries,
        MEMBERS - 1,
        per(direct_bytes),
        direct_stats.bodies,
        direct_stats.entries,
        group_bytes as f64 / direct_bytes as f64,
    );
    // One body instead of 499 (plus the sender's own copy per message).
    assert_eq!(direct_stats.bodies as usize, MESSAGES * (MEMBERS - 1));
    assert_eq!(
        group_stats.bodies as usize,
        MESSAGES + 1,
        "messages + the CREATED event"
    );
    assert!(
        group_bytes * 4 < direct_bytes,
        "a group message should cost well under a quarter: {group_bytes} vs {direct_bytes}"
    );
}
