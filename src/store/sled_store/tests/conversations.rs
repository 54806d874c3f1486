//! Schema 4 → 5: one conversation record per pair instead of one per user,
//! and a migration that survives being cut off anywhere.

use std::path::Path;

use prost::Message;
use tempfile::TempDir;

use super::open_sled;
use crate::store::contract::{msg_id, send};
use crate::store::records::{decode, pair_key, split_pair, ConvValue, PairConvValue};
use crate::store::sled_store::{SledStore, META_SCHEMA_VERSION, SCHEMA_VERSION};
use crate::store::{Conversation, ConversationKey, Durability, Store, UserId, WriteOp};

const USERS: [UserId; 4] = [1, 2, 3, 4];

/// Where a cut-off migration may have left a store (see
/// `SledStore::migrate_conversations`).
#[derive(Clone, Copy, Debug)]
enum Left {
    /// Schema 4 as a version 4 pigeond wrote it.
    Untouched,
    /// The first pass wrote some pairs' records, one user's side of them.
    HalfOfTheFirstPass,
    /// The first pass finished; the second emptied the first per-user
    /// records in key order.
    HalfOfTheSecondPass,
}

/// A store with 1:1 traffic in every shape: both directions, one-way, a
/// note to self, a read position moved by a Read rather than a send.
fn traffic(path: &Path) -> Vec<Vec<Conversation>> {
    let store = SledStore::open(path, Durability::Fsync).unwrap();
    let ops = [
        send(1, 2, msg_id(10, 0)),
        send(2, 1, msg_id(11, 0)),
        send(1, 2, msg_id(12, 0)),
        send(3, 1, msg_id(13, 0)),
        send(4, 4, msg_id(14, 0)),
        send(2, 3, msg_id(15, 0)),
    ];
    store.apply(&ops).unwrap();
    let read = WriteOp::Read {
        user: 2,
        conversation: ConversationKey::Peer(1),
        seq: 3,
        now_ms: 20,
    };
    store.apply(&[read]).unwrap();
    store.sync().unwrap();
    views(&store)
}

/// Every user's conversations, by peer.
fn views(store: &SledStore) -> Vec<Vec<Conversation>> {
    USERS
        .iter()
        .map(|&user| {
            let mut found = store.conversations(user).unwrap();
            found.sort_by_key(|c| c.peer);
            found
        })
        .collect()
}

/// The schema 4 record of `user`'s side of `pair`.
fn per_user(pair: &PairConvValue, user: UserId, peer: UserId) -> ConvValue {
    let (read_seq, peer_read_seq) = if user <= peer {
        (pair.low_read_seq, pair.high_read_seq)
    } else {
        (pair.high_read_seq, pair.low_read_seq)
    };
    ConvValue {
        last_seq: pair.last_seq,
        read_seq,
        peer_read_seq,
        last_msg_id: pair.last_msg_id,
        last_from: pair.last_from,
        last_activity_ms: pair.last_activity_ms,
    }
}

/// Rewrites the closed store at `path` as schema 4 had it, then as a
/// migration cut off at `left` would have left it.
fn downgrade(path: &Path, left: Left) {
    let db = open_sled(path);
    let index = db.open_tree("userpeer_conv").unwrap();
    let pairs = db.open_tree("pair_conv").unwrap();
    let records: Vec<_> = pairs.iter().map(Result::unwrap).collect();
    assert_eq!(records.len(), 4, "pairs 1-2, 1-3, 2-3 and 4-4");
    pairs.clear().unwrap();
    for (n, (key, raw)) in records.iter().enumerate() {
        let (low, high) = split_pair(key).unwrap();
        let pair: PairConvValue = decode("conversation", raw).unwrap();
        for (user, peer) in [(low, high), (high, low)] {
            let old = per_user(&pair, user, peer);
            index
                .insert(pair_key(user, peer), old.encode_to_vec())
                .unwrap();
        }
        match left {
            Left::Untouched => {}
            Left::HalfOfTheFirstPass if n % 2 == 0 => {
                let low_side = PairConvValue {
                    high_read_seq: 0,
                    ..pair.clone()
                };
                pairs.insert(key, low_side.encode_to_vec()).unwrap();
            }
            Left::HalfOfTheFirstPass => {}
            Left::HalfOfTheSecondPass => {
                pairs.insert(key, raw.clone()).unwrap();
            }
        }
    }
    if let Left::HalfOfTheSecondPass = left {
        // The second pass goes in key order: 1→2, 1→3, 2→1 and 2→3 are
        // emptied (both sides of the pair 1, 2), the rest not yet.
        let done: Vec<_> = index.iter().keys().take(4).map(Result::unwrap).collect();
        for key in done {
            index.insert(key, &[][..]).unwrap();
        }
    }
    db.open_tree("meta")
        .unwrap()
        .insert(META_SCHEMA_VERSION, &4u32.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
}

fn migrates_from(left: Left) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    let before = traffic(&path);
    assert_eq!(before[0].len(), 2, "user 1 talks with 2 and 3");
    assert_eq!(
        (before[1][0].read_seq, before[0][0].peer_read_seq),
        (3, 3),
        "user 2 read up to 3, and user 1 sees it"
    );
    downgrade(&path, left);

    let store = SledStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(views(&store), before, "{left:?}");
    // The pair's counter goes on from where the old records left it.
    let outcome = store.apply(&[send(2, 1, msg_id(30, 0))]).unwrap();
    let crate::store::WriteOutcome::Sent { conv_seq, .. } = outcome[0] else {
        panic!("{:?}", outcome[0]);
    };
    assert_eq!(conv_seq, 4);
    store.sync().unwrap();
    drop(store);

    let db = open_sled(&path);
    let version = db.open_tree("meta").unwrap().get(META_SCHEMA_VERSION);
    assert_eq!(
        version.unwrap().as_deref(),
        Some(&SCHEMA_VERSION.to_be_bytes()[..])
    );
    let index = db.open_tree("userpeer_conv").unwrap();
    assert_eq!(
        index.len(),
        7,
        "both sides of three pairs, one note to self"
    );
    assert!(index.iter().values().all(|v| v.unwrap().is_empty()));
    drop((index, db));
    let report = crate::store::verify(&path).unwrap();
    assert!(report.is_clean(), "{left:?}: {report:?}");
}

#[test]
fn a_schema_4_store_gets_one_conversation_record_per_pair() {
    migrates_from(Left::Untouched);
}

#[test]
fn a_migration_cut_off_in_its_first_pass_runs_again_to_the_same_end() {
    migrates_from(Left::HalfOfTheFirstPass);
}

#[test]
fn a_migration_cut_off_in_its_second_pass_runs_again_to_the_same_end() {
    migrates_from(Left::HalfOfTheSecondPass);
}

#[test]
fn verify_names_a_pair_without_its_index_key() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data");
    traffic(&path);
    {
        let db = open_sled(&path);
        db.open_tree("userpeer_conv")
            .unwrap()
            .remove(pair_key(3, 1))
            .unwrap();
        db.flush().unwrap();
    }
    let report = crate::store::verify(&path).unwrap();
    let problems = format!("{report:?}");
    assert!(
        problems.contains("1 → 3: 3 → 1 is missing")
            && problems.contains("pair 1, 3 is not indexed for 3"),
        "{problems}"
    );
}
