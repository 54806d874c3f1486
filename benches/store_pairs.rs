//! A fixed amount of the writer's store work, for instruction counts:
//! `batches` (default 30) batches of 256 sends between 256 different pairs
//! of users, each applied and synced with `fsync` durability, as the
//! committer applies the 1:1 load. Wall-clock and CPU time on a shared VM
//! vary by ±20 % from run to run; instruction counts do not, so compare
//! builds with callgrind on the main thread:
//!
//! ```text
//! cargo bench --bench store_pairs --no-run        # prints the binary's path
//! valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/deps/store_pairs-HASH 30
//! callgrind_annotate --inclusive=yes cg.out | grep store_pairs::main
//! ```
//!
//! (The total includes sled's background threads, whose work depends on
//! timing; the main thread's does not.) Temporary directories only.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pigeon_server::store::{
    Durability, NewMessage, SledStore, Store, WriteOp, MSG_ID_COUNTER_BITS,
};

const PAIRS: usize = 256;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

fn main() {
    // `cargo bench` passes `--bench`; the first number is the batch count.
    let batches = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("a temporary dir");
    let store = SledStore::open(dir.path(), Durability::Fsync).expect("the store opens");
    let users: Vec<u64> = (0..PAIRS * 2)
        .map(|i| {
            store
                .create_user(&format!("u{i}"), "x", now_ms())
                .expect("created")
                .expect("new")
                .id
        })
        .collect();
    let mut msg_id = now_ms() << MSG_ID_COUNTER_BITS;
    for _ in 0..batches {
        let ops: Vec<WriteOp> = users
            .chunks(2)
            .map(|pair| {
                msg_id += 1;
                WriteOp::Send {
                    message: NewMessage {
                        msg_id,
                        from: pair[0],
                        group: 0,
                        from_device: "bench".into(),
                        to: pair[1],
                        client_msg_id: format!("c{msg_id}"),
                        content_type: "text/plain".into(),
                        content: Bytes::from(vec![b'x'; 100]),
                    },
                    dedupe_since_ms: 0,
                    push: Default::default(),
                }
            })
            .collect();
        store.apply(&ops).expect("applied");
        store.sync().expect("synced");
    }
    println!("{batches} batches of {PAIRS} sends applied and synced");
}
