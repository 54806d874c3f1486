//! Micro-benchmarks of the data path's pieces, under criterion:
//!
//! - `codec`: encode and decode one 100-byte send frame, and a pull page of
//!   100 messages (what a draining device receives);
//! - `store/append`: one `Store::apply` of N sends then `sync` (the
//!   committer's group commit), for N = 1, 32, 256, with fsync and with
//!   buffered durability, so the flush's share is visible;
//! - `store/append_pairs`: the same with each of the batch's 256 sends
//!   between a different pair of users, as the server's 1:1 load makes
//!   them (every send writes its own queue tops and conversation records);
//! - `store/pull_ack_collect`: pull 100 queued entries, ack them, collect
//!   them (entries and bodies deleted), sync.
//! - `store/group_send`: one group message applied and synced, for small
//!   groups of 10, 100 and 500 members (one queue entry per member) and
//!   large groups of 10, 1,000 and 10,000 members (one timeline entry
//!   whatever the size): the fan-out cost per member, and its absence.
//!
//! ```text
//! cargo bench --bench micro
//! cargo bench --bench micro -- codec          # one group
//! ```
//!
//! Temporary directories only; nothing touches the network.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use pigeon_protocol::pb;
use pigeon_protocol::{Body, Codec, Envelope};
use pigeon_server::store::{Durability, SledStore, Store, WriteOp, WriteOutcome};
use tokio_util::codec::{Decoder, Encoder};

use support::{create_users, now_ms, send_op, Ids, PAYLOAD};

fn send_envelope(i: u64) -> Envelope {
    Envelope::new(
        i,
        Body::Send(pb::SendRequest {
            group_id: 0,
            to_user_id: 2,
            to_username: String::new(),
            client_msg_id: format!("m{i}"),
            content_type: "text/plain".into(),
            content: Bytes::from(vec![b'x'; PAYLOAD]),
        }),
    )
}

fn page_envelope(n: u64) -> Envelope {
    let messages = (1..=n)
        .map(|seq| pb::Message {
            seq,
            msg_id: seq << 16,
            from_user_id: 1,
            from_username: "alice".into(),
            to_user_id: 2,
            to_username: "bob".into(),
            from_device_id: "phone".into(),
            content_type: "text/plain".into(),
            content: Bytes::from(vec![b'x'; PAYLOAD]),
            sent_at_ms: 1_700_000_000_000,
            client_msg_id: format!("m{seq}"),
            ..Default::default()
        })
        .collect();
    Envelope::new(
        7,
        Body::Pulled(pb::PullResponse {
            messages,
            max_seq: n,
            has_more: false,
            acked_seq: 0,
        }),
    )
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, envelope) in [
        ("send_100B", send_envelope(1)),
        ("page_100x100B", page_envelope(100)),
    ] {
        let mut encoded = BytesMut::new();
        Codec::default()
            .encode(&envelope, &mut encoded)
            .expect("encodes");
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            let mut buf = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                buf.clear();
                Codec::default()
                    .encode(&envelope, &mut buf)
                    .expect("encodes");
            })
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter_batched(
                || encoded.clone(),
                |mut src| Codec::default().decode(&mut src).expect("decodes"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn open(durability: Durability) -> (tempfile::TempDir, SledStore, u64, u64) {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let store = SledStore::open(dir.path(), durability).expect("the store opens");
    let alice = store
        .create_user("alice", "x", now_ms())
        .expect("created")
        .expect("new")
        .id;
    let bob = store
        .create_user("bob", "x", now_ms())
        .expect("created")
        .expect("new")
        .id;
    (dir, store, alice, bob)
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/append");
    group.measurement_time(Duration::from_secs(5));
    for (mode, durability) in [
        ("fsync", Durability::Fsync),
        ("buffered", Durability::Buffered),
    ] {
        let (_dir, store, alice, bob) = open(durability);
        let ids = Ids::default();
        for batch in [1usize, 32, 256] {
            group.throughput(Throughput::Elements(batch as u64));
            apply_and_sync(&mut group, BenchmarkId::new(mode, batch), &store, || {
                (0..batch).map(|_| send_op(&ids, alice, bob)).collect()
            });
        }
    }
    group.finish();
}

fn append_pairs(c: &mut Criterion) {
    const PAIRS: usize = 256;
    let mut group = c.benchmark_group("store/append_pairs");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(PAIRS as u64));
    let (_dir, store, _, _) = open(Durability::Fsync);
    let users = create_users(&store, "u", PAIRS * 2);
    let ids = Ids::default();
    apply_and_sync(&mut group, BenchmarkId::new("fsync", PAIRS), &store, || {
        users
            .chunks(2)
            .map(|pair| send_op(&ids, pair[0], pair[1]))
            .collect()
    });
    group.finish();
}

/// Times one `apply` of the ops `make` returns, then `sync` (the
/// committer's group commit); making the ops is not timed.
fn apply_and_sync(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    store: &SledStore,
    make: impl Fn() -> Vec<WriteOp>,
) {
    group.bench_function(id, |b| {
        b.iter_batched(
            &make,
            |ops| {
                store.apply(&ops).expect("applied");
                store.sync().expect("synced");
            },
            BatchSize::SmallInput,
        )
    });
}

fn pull_ack_collect(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/pull_ack_collect");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(100));
    let (_dir, store, alice, bob) = open(Durability::Fsync);
    let ids = Ids::default();
    store
        .apply(&[WriteOp::Touch {
            user: bob,
            device_id: "bench".into(),
            platform: 6,
            now_ms: now_ms(),
        }])
        .expect("touched");
    group.bench_function("fsync_100", |b| {
        b.iter_batched(
            || {
                let ops: Vec<_> = (0..100).map(|_| send_op(&ids, alice, bob)).collect();
                store.apply(&ops).expect("queued");
                store.sync().expect("synced");
            },
            |()| {
                let page = store.pull(bob, 0, 100).expect("pulled");
                let top = page.messages.last().map_or(0, |m| m.seq);
                let now = now_ms();
                store
                    .apply(&[
                        WriteOp::Ack {
                            user: bob,
                            device_id: "bench".into(),
                            seq: top,
                            now_ms: now,
                            if_present: false,
                        },
                        WriteOp::Collect {
                            user: bob,
                            active_since_ms: 0,
                            retain_since_ms: now + 1,
                            limit: 1000,
                        },
                    ])
                    .expect("acked and collected");
                store.sync().expect("synced");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A store with `members` users in one group owned by the first.
/// A store with one group of `members`: its owner, its id, and the ids
/// to send with (they go on from the group's creation, whose event took
/// the first one: a second `Ids` could hand it out again).
fn group_store(members: usize, large: bool) -> (tempfile::TempDir, SledStore, u64, u64, Ids) {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let store = SledStore::open(dir.path(), Durability::Fsync).expect("the store opens");
    let ids = create_users(&store, "m", members);
    let threshold = if large { 1 } else { members as u32 };
    let msg_ids = Ids::default();
    let created = store
        .apply(&[WriteOp::CreateGroup {
            owner: ids[0],
            name: "bench".into(),
            members: ids.clone(),
            large_threshold: threshold,
            max_members: 100_000,
            now_ms: now_ms(),
            msg_id: msg_ids.next(),
        }])
        .expect("group created");
    let group = match &created[0] {
        WriteOutcome::GroupChanged { group, .. } => *group,
        other => panic!("create group: {other:?}"),
    };
    store.sync().expect("synced");
    (dir, store, ids[0], group, msg_ids)
}

fn group_send(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/group_send");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    for (kind, large, sizes) in [
        ("small", false, &[10usize, 100, 500][..]),
        ("large", true, &[10usize, 1_000, 10_000][..]),
    ] {
        for &members in sizes {
            let (_dir, store, owner, group_id, ids) = group_store(members, large);
            apply_and_sync(&mut group, BenchmarkId::new(kind, members), &store, || {
                let mut op = send_op(&ids, owner, 0);
                if let WriteOp::Send { message, .. } = &mut op {
                    message.group = group_id;
                }
                vec![op]
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    codec,
    append,
    append_pairs,
    pull_ack_collect,
    group_send
);
criterion_main!(benches);
