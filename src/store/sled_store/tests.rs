//! The store contract run against sled, plus what only sled has: files on
//! disk, the schema version bytes, the durability modes.

use std::path::Path;

use tempfile::TempDir;

use super::{SledStore, META_SCHEMA_VERSION, SCHEMA_VERSION};

mod conversations;
use crate::store::contract::{msg_id, send, store_contract_tests, StoreFixture};
use crate::store::{Durability, Store, StoreError};

/// A fresh sled store in a temporary directory, removed after the test.
struct SledFixture {
    dir: TempDir,
    durability: Durability,
}

impl SledFixture {
    fn new(durability: Durability) -> SledFixture {
        SledFixture {
            dir: TempDir::new().expect("temp dir"),
            durability,
        }
    }
}

impl StoreFixture for SledFixture {
    type Engine = SledStore;

    fn open(&mut self) -> SledStore {
        SledStore::open(&self.dir.path().join("data"), self.durability).expect("open store")
    }
}

store_contract_tests!(SledFixture::new(Durability::Fsync));

/// Opens sled itself once a store just dropped has let go of its lock
/// (sled's background threads release it a moment after the drop).
fn open_sled(path: &Path) -> sled::Db {
    super::open_db(&sled::Config::new().path(path)).expect("open sled")
}

/// Puts a raw value into `meta` behind the store's back.
fn write_meta(path: &Path, key: &[u8], value: &[u8]) {
    let db = open_sled(path);
    db.open_tree("meta")
        .expect("meta")
        .insert(key, value)
        .expect("insert");
    db.flush().expect("flush");
}

#[test]
fn unfinished_snapshot_is_removed_and_the_store_opens() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    store.sync().unwrap();
    drop(store);
    let leftover = path.join("snap.123.generating");
    std::fs::write(&leftover, b"").unwrap();

    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert!(!leftover.exists());
    assert_eq!(store.max_seq(2).unwrap(), 1);
}

#[test]
fn new_store_records_the_schema_version() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    drop(SledStore::open(&path, Durability::Buffered).unwrap());
    let db = open_sled(&path);
    let raw = db
        .open_tree("meta")
        .unwrap()
        .get(META_SCHEMA_VERSION)
        .unwrap();
    assert_eq!(raw.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
}

#[test]
fn other_schema_version_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    drop(SledStore::open(&path, Durability::Fsync).unwrap());
    let newer = SCHEMA_VERSION + 1;
    write_meta(&path, META_SCHEMA_VERSION, &newer.to_be_bytes());

    match SledStore::open(&path, Durability::Fsync) {
        Err(StoreError::SchemaVersion { found, expected }) => {
            assert_eq!((found, expected), (newer, SCHEMA_VERSION));
        }
        Err(other) => panic!("expected a schema version error, got {other}"),
        Ok(_) => panic!("opened a store of a newer schema version"),
    }
}

#[test]
fn unreadable_schema_version_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    drop(SledStore::open(&path, Durability::Fsync).unwrap());
    write_meta(&path, META_SCHEMA_VERSION, b"x");
    assert!(matches!(
        SledStore::open(&path, Durability::Fsync),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn undecodable_record_is_corrupt_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    store.sync().unwrap();
    // A body whose length-delimited field runs past the end.
    store
        .engine()
        .trees
        .msgid_body
        .insert(super::u64_key(msg_id(1, 0)), &[0x22, 0x10, b'a'][..])
        .unwrap();
    assert!(matches!(store.pull(2, 0, 10), Err(StoreError::Corrupt(_))));
    // User 4, whom no batch has looked at: the writer has no max seq in
    // memory for it and reads the record.
    store
        .engine()
        .trees
        .userid_maxseq
        .insert(super::u64_key(4), &[1u8][..])
        .unwrap();
    assert!(matches!(store.max_seq(4), Err(StoreError::Corrupt(_))));
    assert!(matches!(
        store.apply(&[send(3, 4, msg_id(2, 0))]),
        Err(StoreError::Corrupt(_))
    ));
    // The failed batch wrote nothing.
    assert!(store.pull(3, 0, 10).unwrap().messages.is_empty());
}

#[test]
fn every_durability_mode_syncs_and_reopens() {
    for durability in [Durability::Fsync, Durability::Flush, Durability::Buffered] {
        let mut fixture = SledFixture::new(durability);
        let store = fixture.open();
        store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
        store.sync().unwrap();
        drop(store);
        assert_eq!(fixture.open().max_seq(2).unwrap(), 1, "{durability:?}");
    }
}

#[test]
fn large_body_goes_to_a_blob_and_survives_reopen() {
    let mut fixture = SledFixture::new(Durability::Fsync);
    let store = fixture.open();
    let mut op = send(1, 2, msg_id(1, 0));
    let big = bytes::Bytes::from(vec![7u8; 600 * 1024]);
    if let crate::store::WriteOp::Send { message, .. } = &mut op {
        message.content = big.clone();
    }
    store.apply(&[op]).unwrap();
    store.sync().unwrap();
    // sled keeps a value this large in a separate file, which `sync` must
    // fsync itself.
    let blobs = fixture.dir.path().join("data").join("blobs");
    assert!(std::fs::read_dir(blobs).unwrap().next().is_some());
    drop(store);
    let page = fixture.open().pull(2, 0, 1).unwrap();
    assert_eq!(page.messages[0].content, big);
}

#[test]
fn second_open_of_a_live_store_fails_instead_of_sharing_it() {
    let mut fixture = SledFixture::new(Durability::Fsync);
    let _live = fixture.open();
    let path = fixture.dir.path().join("data");
    // A snapshot the live store might be writing must survive the attempt.
    let in_progress = path.join("snap.99.generating");
    std::fs::write(&in_progress, b"").unwrap();
    match SledStore::open(&path, Durability::Fsync) {
        Err(StoreError::Io(message)) => assert!(message.contains("in use"), "{message}"),
        other => panic!("expected the lock to refuse, got {:?}", other.err()),
    }
    assert!(in_progress.exists());
}

/// A send writes no `userid_maxseq` record (the max seq is the queue's
/// top); a Collect writes one before it removes entries; `verify` holds a
/// store with both kinds of users clean.
#[test]
fn only_a_collect_writes_a_max_seq_record() {
    use crate::store::WriteOp;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    store
        .apply(&[send(1, 2, msg_id(1, 0)), send(1, 2, msg_id(2, 0))])
        .unwrap();
    store.sync().unwrap();
    let record = |store: &SledStore, user: u64| {
        let trees = &store.engine().trees;
        trees.userid_maxseq.get(super::u64_key(user)).unwrap()
    };
    assert_eq!((record(&store, 1), record(&store, 2)), (None, None));
    store
        .apply(&[
            WriteOp::Ack {
                user: 2,
                device_id: "tab".into(),
                seq: 2,
                now_ms: 9000,
                if_present: false,
            },
            WriteOp::Collect {
                user: 2,
                active_since_ms: 0,
                retain_since_ms: u64::MAX,
                limit: 1,
            },
        ])
        .unwrap();
    store.sync().unwrap();
    assert_eq!(record(&store, 2).as_deref(), Some(&super::u64_key(2)[..]));
    assert_eq!(
        (store.max_seq(1).unwrap(), store.max_seq(2).unwrap()),
        (2, 2)
    );
    drop(store);
    let report = crate::store::verify(&path).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_schema_1_store_gets_its_tokens_indexed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    drop(SledStore::open(&path, Durability::Fsync).unwrap());
    {
        // What a version-1 pigeond left: a token without an index entry.
        let db = open_sled(&path);
        let token = crate::store::records::TokenValue {
            user_id: 7,
            device_id: "phone".into(),
            expires_at_ms: 99,
        };
        db.open_tree("tokenhash_token")
            .unwrap()
            .insert([9u8; 32], prost::Message::encode_to_vec(&token))
            .unwrap();
        db.drop_tree("usertokenhash_device").unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(META_SCHEMA_VERSION, &1u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(store.delete_user_tokens(7, None).unwrap(), 1);
    assert!(store.token(&[9; 32]).unwrap().is_none());
    drop(store);
    let db = open_sled(&path);
    let raw = db
        .open_tree("meta")
        .unwrap()
        .get(META_SCHEMA_VERSION)
        .unwrap();
    assert_eq!(raw.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
}

#[test]
fn a_backup_opens_as_a_store_with_everything() {
    let dir = TempDir::new().unwrap();
    let store = SledStore::open(&dir.path().join("data"), Durability::Fsync).unwrap();
    store.create_user("ann", "h", 1).unwrap().expect("ann");
    let token = crate::store::TokenRecord {
        user_id: 1,
        device_id: "phone".into(),
        expires_at_ms: 99,
    };
    store.put_token(&[3; 32], &token).unwrap();
    let ops: Vec<_> = (0..10).map(|i| send(1, 2, msg_id(100 + i, 0))).collect();
    store.apply(&ops).unwrap();
    store.sync().unwrap();

    let target = dir.path().join("backups/one");
    let report = store.backup(&target).unwrap();
    assert!(report.trees >= 10 && report.records > 20, "{report:?}");
    assert!(!dir.path().join("backups/one.partial").exists());
    let err = store.backup(&target).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    // The copy is a store of its own while the original stays open.
    let copy = SledStore::open(&target, Durability::Fsync).unwrap();
    assert_eq!(
        copy.pull(2, 0, 100).unwrap(),
        store.pull(2, 0, 100).unwrap()
    );
    assert_eq!(
        copy.user_by_name("ann").unwrap(),
        store.user_by_name("ann").unwrap()
    );
    assert_eq!(copy.token(&[3; 32]).unwrap(), Some(token));
    assert_eq!(copy.msg_id_floor().unwrap(), store.msg_id_floor().unwrap());
    assert_eq!(copy.delete_user_tokens(1, None).unwrap(), 1);
}

#[test]
fn a_backup_taken_during_writes_is_consistent() {
    let dir = TempDir::new().unwrap();
    let store = std::sync::Arc::new(
        SledStore::open(&dir.path().join("data"), Durability::Buffered).unwrap(),
    );
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..300u64 {
                let ops = [
                    send(1, 2, msg_id(1000 + i, 0)),
                    send(3, 2, msg_id(1000 + i, 1)),
                ];
                store.apply(&ops).unwrap();
            }
        })
    };
    let mut copies = Vec::new();
    for n in 0..3 {
        let target = dir.path().join(format!("copy{n}"));
        store.backup(&target).unwrap();
        copies.push(target);
    }
    writer.join().unwrap();
    for target in copies {
        let copy = SledStore::open(&target, Durability::Buffered).unwrap();
        // Every batch is whole: user 2's queue is gapless up to its max seq,
        // every entry has its body, and both senders' queues agree with it.
        let page = copy.pull(2, 0, usize::MAX).unwrap();
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=page.max_seq).collect::<Vec<_>>());
        assert_eq!(page.max_seq % 2, 0, "a batch was torn");
        assert_eq!(copy.max_seq(1).unwrap() * 2, page.max_seq);
        assert_eq!(copy.max_seq(3).unwrap() * 2, page.max_seq);
    }
}

/// A pull never shows a batch its sync has not made durable: a device
/// that moved its cursor past such a message would skip the message that
/// reuses its seq after a power cut (found by tests/powerloss.rs).
#[test]
fn pulls_show_only_what_a_sync_made_durable() {
    let dir = TempDir::new().unwrap();
    let store = SledStore::open(&dir.path().join("data"), Durability::Fsync).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    store.sync().unwrap();
    store
        .apply(&[send(1, 2, msg_id(2, 0)), send(1, 2, msg_id(2, 1))])
        .unwrap();
    let page = store.pull(2, 0, 10).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!((page.max_seq, page.has_more), (1, false));
    assert_eq!(
        store.max_seq(2).unwrap(),
        3,
        "applied, only hidden from pulls"
    );
    store.sync().unwrap();
    let page = store.pull(2, 0, 10).unwrap();
    assert_eq!((page.messages.len(), page.max_seq), (3, 3));
    // Buffered durability promises nothing, so it hides nothing.
    let dir = TempDir::new().unwrap();
    let store = SledStore::open(&dir.path().join("data"), Durability::Buffered).unwrap();
    store.apply(&[send(1, 2, msg_id(3, 0))]).unwrap();
    assert_eq!(store.pull(2, 0, 10).unwrap().messages.len(), 1);
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_compacted_store_lives_in_its_generation_and_the_old_files_are_gone() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    store.sync().unwrap();
    store.compact().unwrap();
    let names = listing(&path);
    assert!(names.contains(&"sled.1".to_owned()), "{names:?}");
    assert!(names.contains(&"sled.current".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"db".to_owned()),
        "generation 0 stays: {names:?}"
    );
    store.compact().unwrap();
    let names = listing(&path);
    assert!(names.contains(&"sled.2".to_owned()) && !names.contains(&"sled.1".to_owned()));
    // Backup and verify read the new layout.
    let copy = dir.path().join("copy");
    store.backup(&copy).unwrap();
    drop(store);
    assert_eq!(
        SledStore::open(&copy, Durability::Fsync)
            .unwrap()
            .max_seq(2)
            .unwrap(),
        1
    );
    let report = crate::store::verify(&path).unwrap();
    assert!(report.is_clean(), "{}", report.render(&path));
    assert!(crate::store::holds_store(&path));
}

/// A crash after the copy but before the pointer names it: the old
/// generation is the store and the copy is removed at the next open.
#[test]
fn a_crash_before_the_switch_opens_the_old_store() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    store.sync().unwrap();
    store.backup(&path.join("sled.1")).unwrap();
    std::fs::create_dir(path.join("sled.2.partial")).unwrap();
    store.apply(&[send(1, 2, msg_id(2, 0))]).unwrap();
    store.sync().unwrap();
    drop(store);

    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(
        store.max_seq(2).unwrap(),
        2,
        "the old generation, with its later write"
    );
    let names = listing(&path);
    assert!(names.iter().all(|n| !n.starts_with("sled.")), "{names:?}");
}

/// A crash after the switch but before the old files are deleted: the new
/// generation is the store and the old files go at the next open.
#[test]
fn a_crash_after_the_switch_opens_the_new_store() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let old = dir.path().join("old");
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    store.sync().unwrap();
    store.fsync().unwrap();
    copy_data(&path, &old);
    store.compact().unwrap();
    store.apply(&[send(1, 2, msg_id(2, 0))]).unwrap();
    store.sync().unwrap();
    drop(store);
    // Put generation 0's files back, as a crash before their removal leaves them.
    for name in listing(&old) {
        if name == "db" || name == "conf" || name.starts_with("snap.") {
            std::fs::copy(old.join(&name), path.join(&name)).unwrap();
        }
    }

    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(store.max_seq(2).unwrap(), 2, "the new generation");
    assert!(!path.join("db").exists(), "{:?}", listing(&path));
}

/// Writers and readers running through compactions: every batch applied
/// is in the store afterwards and after a reopen, whole and in order.
#[test]
fn compactions_during_writes_and_reads_lose_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = std::sync::Arc::new(SledStore::open(&path, Durability::Fsync).unwrap());
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..400u64 {
                let ops = [
                    send(1, 2, msg_id(1000 + i, 0)),
                    send(3, 2, msg_id(1000 + i, 1)),
                ];
                store.apply(&ops).unwrap();
                store.sync().unwrap();
            }
        })
    };
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            while last < 800 {
                let page = store.pull(2, 0, usize::MAX).unwrap();
                let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
                assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
                assert!(seqs.len() as u64 >= last, "a read went back in time");
                last = seqs.len() as u64;
            }
        })
    };
    let mut compactions = 0;
    while !writer.is_finished() || compactions < 3 {
        store.compact().unwrap();
        compactions += 1;
    }
    writer.join().unwrap();
    reader.join().unwrap();
    let ids = |store: &SledStore| -> Vec<u64> {
        let page = store.pull(2, 0, usize::MAX).unwrap();
        page.messages.iter().map(|m| m.msg_id).collect()
    };
    let expected: Vec<u64> = (0..400u64)
        .flat_map(|i| [msg_id(1000 + i, 0), msg_id(1000 + i, 1)])
        .collect();
    assert_eq!(ids(&store), expected);
    drop(store);
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(ids(&store), expected);
    assert_eq!(store.max_seq(1).unwrap(), 400);
}

/// A tree's name and its (key, value) records in key order.
type TreeDump = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// Every record of every tree, for comparing two stores.
fn dump(store: &SledStore) -> Vec<TreeDump> {
    let engine = store.engine();
    let mut names = engine.db.tree_names();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let tree = engine.db.open_tree(&name).unwrap();
            let records = tree
                .iter()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect();
            (name.to_vec(), records)
        })
        .collect()
}

/// The same ops (sends, acks, collects: inserts, overwrites and deletes
/// in many trees) applied to two stores, one of them compacted again and
/// again while they are applied: both end with identical trees, record
/// for record. Writes made while the copy ran are caught up, deletes
/// included.
#[test]
fn a_store_compacted_during_writes_equals_one_that_was_not() {
    use crate::store::WriteOp;
    let dir = TempDir::new().unwrap();
    let compacted =
        std::sync::Arc::new(SledStore::open(&dir.path().join("a"), Durability::Buffered).unwrap());
    let plain = SledStore::open(&dir.path().join("b"), Durability::Buffered).unwrap();
    let ops: Vec<Vec<WriteOp>> = (0..600u64)
        .map(|i| {
            let (from, to) = (1 + i % 7, 11 + i % 5);
            let mut batch = vec![send(from, to, msg_id(1000 + i, 0))];
            if i % 10 == 9 {
                // Acks and collections: cursor writes, entry and body deletes.
                for user in 11..16 {
                    batch.push(WriteOp::Ack {
                        user,
                        device_id: "tab".into(),
                        seq: (i / 5).max(1) - 1,
                        now_ms: 5_000 + i,
                        if_present: false,
                    });
                    batch.push(WriteOp::Collect {
                        user,
                        active_since_ms: 0,
                        retain_since_ms: u64::MAX,
                        limit: 1000,
                    });
                }
            }
            batch
        })
        .collect();
    for batch in &ops {
        plain.apply(batch).unwrap();
    }
    let writer = {
        let store = compacted.clone();
        let ops = ops.clone();
        std::thread::spawn(move || {
            for batch in &ops {
                store.apply(batch).unwrap();
            }
        })
    };
    let mut compactions = 0;
    while !writer.is_finished() || compactions < 2 {
        compacted.compact().unwrap();
        compactions += 1;
    }
    writer.join().unwrap();
    assert!(compactions >= 2);
    assert_eq!(dump(&compacted), dump(&plain));
}

/// Two compactions asked for at once (the collector's and an operator's)
/// run one after the other, each complete.
#[test]
fn simultaneous_compactions_take_turns() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let store = std::sync::Arc::new(SledStore::open(&path, Durability::Fsync).unwrap());
    let ops: Vec<_> = (0..200).map(|i| send(1, 2, msg_id(100 + i, 0))).collect();
    store.apply(&ops).unwrap();
    store.sync().unwrap();
    let compactions: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || store.compact().unwrap())
        })
        .collect();
    for compaction in compactions {
        compaction.join().unwrap();
    }
    assert_eq!(store.compaction_totals().count, 3);
    assert!(path.join("sled.3").exists(), "{:?}", listing(&path));
    assert_eq!(store.pull(2, 0, 1000).unwrap().messages.len(), 200);
    drop(store);
    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(store.max_seq(2).unwrap(), 200);
}

/// The contract once more on the sled transaction path, which `fsync`
/// durability (the write-ahead log) no longer takes.
mod without_the_log {
    use super::SledFixture;
    use crate::store::Durability;

    crate::store::contract::store_contract_tests!(SledFixture::new(Durability::Buffered));
}

/// Copies a data directory (not its lock), as a crash would leave it.
fn copy_data(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_data(&entry.path(), &target);
        } else if entry.file_name() != super::files::LOCK_FILE {
            // A segment the checkpointer deletes meanwhile: as if the crash
            // came after the deletion.
            match std::fs::copy(entry.path(), &target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                copied => drop(copied.unwrap()),
            }
        }
    }
}

/// Options for the log tests: no background flush or checkpoint, so sled's
/// files change only when a test says so.
fn quiet_options() -> super::SledOptions {
    super::SledOptions {
        flush_every_ms: None,
        checkpoint_every: std::time::Duration::from_secs(3600),
        ..super::SledOptions::default()
    }
}

/// The log's files: its segments, and the spare if `spare`.
fn wal_files(data: &Path, spare: bool) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(data.join(super::wal::WAL_DIR))
        .map(|listing| listing.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|path| spare || path.extension().is_some_and(|e| e == "log"));
    found.sort();
    found
}

fn segments(data: &Path) -> Vec<std::path::PathBuf> {
    wal_files(data, false)
}

/// The first lsn of a segment, from its name.
fn first_lsn(segment: &Path) -> u64 {
    let stem = segment.file_stem().unwrap().to_str().unwrap();
    stem.parse().unwrap()
}

/// Where the records of the segment `bytes` end.
fn records_end(segment: &Path, bytes: &[u8]) -> usize {
    let found = super::wal::frames(bytes, first_lsn(segment));
    found.last().expect("a record").1.end
}

/// A store with `sent` messages to user 2 answered (synced), and a copy of
/// its data directory taken before any of them: sled's files as a crash
/// may leave them when none of sled's own writes reached the disk.
fn sled_behind_the_log(sent: u64) -> (TempDir, SledStore, std::path::PathBuf) {
    sled_behind_the_log_with(sent, &quiet_options())
}

fn sled_behind_the_log_with(
    sent: u64,
    options: &super::SledOptions,
) -> (TempDir, SledStore, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let store = SledStore::open_with(&data, Durability::Fsync, options).unwrap();
    let before = dir.path().join("before");
    copy_data(&data, &before);
    for n in 0..sent {
        store.apply(&[send(1, 2, msg_id(1 + n, 0))]).unwrap();
        store.sync().unwrap();
    }
    (dir, store, before)
}

/// Puts the live store's log into `copy` in place of the copy's own.
fn take_log(data: &Path, copy: &Path) -> std::path::PathBuf {
    let wal = copy.join(super::wal::WAL_DIR);
    std::fs::remove_dir_all(&wal).unwrap();
    copy_data(&data.join(super::wal::WAL_DIR), &wal);
    segments(copy).pop().expect("a segment")
}

#[test]
fn the_log_restores_answered_batches_sled_lost() {
    for direct_log in [true, false] {
        let options = super::SledOptions {
            direct_log,
            ..quiet_options()
        };
        let (dir, store, before) = sled_behind_the_log_with(5, &options);
        assert!(store.wal_totals().segment_bytes > 0);
        assert_eq!(store.wal_totals().direct, direct_log);
        let segment = take_log(&dir.path().join("data"), &before);
        // A record the crash cut short: never answered, so it is dropped.
        let mut bytes = std::fs::read(&segment).unwrap();
        let end = records_end(&segment, &bytes);
        let cut = [40, 0, 0, 0, 1, 2, 3];
        bytes.resize(bytes.len().max(end + cut.len()), 0);
        bytes[end..end + cut.len()].copy_from_slice(&cut);
        std::fs::write(&segment, &bytes).unwrap();
        drop(store);

        let reopened = SledStore::open_with(&before, Durability::Fsync, &options).unwrap();
        assert_eq!(reopened.wal_totals().replayed_at_open, 5);
        assert_eq!(reopened.max_seq(2).unwrap(), 5);
        let page = reopened.pull(2, 0, 10).unwrap();
        let ids: Vec<_> = page.messages.iter().map(|m| m.msg_id).collect();
        assert_eq!(ids, (1..=5).map(|n| msg_id(n, 0)).collect::<Vec<_>>());
        // Recovery made sled durable and began a new log.
        assert_eq!(segments(&before).len(), 1);
        reopened.apply(&[send(1, 2, msg_id(9, 0))]).unwrap();
        reopened.sync().unwrap();
        assert_eq!(reopened.max_seq(2).unwrap(), 6);
    }
}

#[test]
fn a_log_that_does_not_reach_back_to_sled_is_refused() {
    let (dir, store, before) = sled_behind_the_log(4);
    let segment = take_log(&dir.path().join("data"), &before);
    drop(store);
    // Drop the first two records, as if their segment were lost.
    let bytes = std::fs::read(&segment).unwrap();
    let frames = super::wal::frames(&bytes, 1);
    assert_eq!(frames.len(), 4);
    let third = frames[2].1.start - 16;
    std::fs::write(&segment, &bytes[third..]).unwrap();

    match SledStore::open_with(&before, Durability::Fsync, &quiet_options()) {
        Err(StoreError::Corrupt(message)) => {
            assert!(message.contains("are missing"), "{message}");
            assert!(message.contains("damaged"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[test]
fn a_damaged_record_before_the_newest_segment_is_refused() {
    let (dir, store, before) = sled_behind_the_log(3);
    let segment = take_log(&dir.path().join("data"), &before);
    drop(store);
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = records_end(&segment, &bytes) - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    // A newer segment after it: the damage is no longer a torn tail.
    let newer = segment.with_file_name(format!("{:020}.log", 1_000_000));
    std::fs::write(&newer, b"").unwrap();
    match SledStore::open_with(&before, Durability::Fsync, &quiet_options()) {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("damaged"), "{message}"),
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let (dir, store, _) = sled_behind_the_log(3);
    let data = dir.path().join("data");
    assert_eq!(segments(&data).len(), 1);
    drop(store);
    assert!(wal_files(&data, true).is_empty());
    let reopened = SledStore::open_with(&data, Durability::Fsync, &quiet_options()).unwrap();
    assert_eq!(reopened.wal_totals().replayed_at_open, 0);
    assert_eq!(reopened.max_seq(2).unwrap(), 3);
}

/// A store in a temporary directory whose log is due for a checkpoint at
/// every sync (a new segment each time the checkpointer is idle).
fn checkpointing_store() -> (TempDir, std::path::PathBuf, SledStore) {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let options = super::SledOptions {
        checkpoint_every: std::time::Duration::ZERO,
        ..quiet_options()
    };
    let store = SledStore::open_with(&data, Durability::Fsync, &options).unwrap();
    (dir, data, store)
}

#[test]
fn the_checkpointer_deletes_segments_sled_has_made_redundant() {
    let (dir, data, store) = checkpointing_store();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut n = 0;
    // Every sync may start a new segment; the old ones go once sled is
    // durable. Keep writing until a checkpoint is done (the first one
    // deletes the first segment).
    let first = segments(&data)[0].clone();
    while store.wal_totals().checkpoints == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in 20 s"
        );
        n += 1;
        store.apply(&[send(1, 2, msg_id(n, 0))]).unwrap();
        store.sync().unwrap();
    }
    assert!(!first.exists());
    assert!(segments(&data).len() <= 2, "{:?}", segments(&data));
    // What the deleted segments held is in sled, durably: a copy of the
    // directory now (sled's files as they are, the remaining log) opens
    // with every message.
    let copy = dir.path().join("copy");
    copy_data(&data, &copy);
    drop(store);
    let reopened = SledStore::open_with(&copy, Durability::Fsync, &quiet_options()).unwrap();
    assert_eq!(reopened.max_seq(2).unwrap(), n);
}

/// Whether bytes past the block of a segment's last record are not all
/// zero: the segment is a recycled file that still holds older frames.
fn holds_older_frames(segment: &Path) -> bool {
    let bytes = std::fs::read(segment).unwrap();
    let end = records_end(segment, &bytes);
    let block = super::wal::BLOCK;
    bytes[end.next_multiple_of(block)..].iter().any(|b| *b != 0)
}

#[test]
fn a_recycled_segment_replays_only_its_own_records() {
    let (dir, data, store) = checkpointing_store();
    assert!(store.wal_totals().direct);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Every sync may start a new segment, from the spare once a checkpoint
    // has made one. Batches of 1 and of 40 sends make segments of unequal
    // sizes, until the one being written is shorter than the file it took
    // over.
    let mut n = 0;
    let mut round = 0u32;
    loop {
        round += 1;
        let sends = if round.is_multiple_of(4) { 40 } else { 1 };
        let batch: Vec<_> = (0..sends)
            .map(|_| {
                n += 1;
                send(1, 2, msg_id(n, 0))
            })
            .collect();
        store.apply(&batch).unwrap();
        store.sync().unwrap();
        let newest = segments(&data).pop().expect("a segment");
        if store.wal_totals().segment_bytes > 0 && holds_older_frames(&newest) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recycled segment in 20 s"
        );
    }
    // The directory as a crash leaves it: the older frames past the
    // newest records are not replayed over them, and nothing is refused.
    let copy = dir.path().join("copy");
    copy_data(&data, &copy);
    drop(store);
    let newest = segments(&copy).pop().unwrap();
    assert!(holds_older_frames(&newest), "the copy holds them too");
    let reopened = SledStore::open_with(&copy, Durability::Fsync, &quiet_options()).unwrap();
    assert_eq!(reopened.max_seq(2).unwrap(), n);
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = reopened.pull(2, after, 500).unwrap();
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.seq;
        ids.extend(page.messages.iter().map(|m| m.msg_id));
    }
    assert_eq!(ids, (1..=n).map(|k| msg_id(k, 0)).collect::<Vec<_>>());
}

#[test]
fn a_logged_record_sled_cannot_take_stops_the_store_and_stays_in_the_log() {
    let (dir, store, _) = sled_behind_the_log(1);
    let data = dir.path().join("data");
    // A record on the disk whose first entry sled takes and whose second
    // names no tree: sled fails it with an error that is not an I/O error.
    let mut record = Vec::new();
    super::wal::encode_insert(&mut record, 0, b"taken", b"value");
    super::wal::encode_insert(&mut record, 250, b"refused", b"value");
    {
        let mut wal = store.wal.as_ref().unwrap().lock().unwrap();
        wal.append(&record);
        wal.sync().unwrap();
    }
    let e = store.engine();
    let err = store.apply_logged(&e.trees, &record).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("unknown tree")),
        "{err:?}"
    );
    assert!(store.failure().unwrap().contains("unknown tree"));
    let refused = store.apply(&[send(1, 2, msg_id(2, 0))]).unwrap_err();
    assert!(
        matches!(&refused, StoreError::Io(m) if m.contains("stopped taking writes")),
        "{refused:?}"
    );
    drop(e);
    drop(store);
    // The record is still in the log, so the next start replays it and
    // refuses to go on without it, instead of losing its second half.
    let reopened = SledStore::open_with(&data, Durability::Fsync, &quiet_options());
    assert!(
        matches!(&reopened, Err(StoreError::Corrupt(m)) if m.contains("unknown tree")),
        "{:?}",
        reopened.err()
    );
}

#[test]
fn a_segment_that_cannot_be_started_stops_later_writes_but_answers_the_batch_before() {
    let (_dir, data, store) = checkpointing_store();
    // The first batch (lsn 1) is due to start segment 2 after it, and a
    // directory has that segment's name.
    let taken =
        data.join(super::wal::WAL_DIR)
            .join(format!("{:020}{}", 2, super::wal::SEGMENT_SUFFIX));
    std::fs::create_dir(&taken).unwrap();
    store.apply(&[send(1, 2, msg_id(1, 0))]).unwrap();
    let failure = store.failure().expect("the store stopped");
    assert!(failure.contains(&taken.display().to_string()), "{failure}");
    let refused = store.apply(&[send(1, 2, msg_id(2, 0))]).unwrap_err();
    assert!(
        matches!(&refused, StoreError::Io(m) if m.contains("stopped taking writes")),
        "{refused:?}"
    );
    drop(store);
    std::fs::remove_dir(&taken).unwrap();
    // The answered batch is there after the restart.
    let reopened = SledStore::open_with(&data, Durability::Fsync, &quiet_options()).unwrap();
    assert_eq!(reopened.max_seq(2).unwrap(), 1);
}

#[test]
fn a_spare_left_by_a_crash_is_removed_at_the_next_start() {
    let (dir, store, _) = sled_behind_the_log(1);
    let data = dir.path().join("data");
    drop(store);
    let spare = data.join(super::wal::WAL_DIR).join("spare");
    std::fs::write(&spare, vec![7u8; 2 << 20]).unwrap();
    // A start that writes no log at all (flush durability) must not keep it.
    let reopened = SledStore::open_with(&data, Durability::Flush, &quiet_options()).unwrap();
    assert!(!spare.exists());
    assert_eq!(reopened.max_seq(2).unwrap(), 1);
}
