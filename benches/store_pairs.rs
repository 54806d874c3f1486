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

mod support;

use pigeon_server::store::{Durability, SledStore, Store, WriteOp};

use support::{create_users, send_op, Ids};

const PAIRS: usize = 256;

fn main() {
    // `cargo bench` passes `--bench`; the first number is the batch count.
    let batches = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("a temporary dir");
    let store = SledStore::open(dir.path(), Durability::Fsync).expect("the store opens");
    let users = create_users(&store, "u", PAIRS * 2);
    let ids = Ids::default();
    for _ in 0..batches {
        let ops: Vec<WriteOp> = users
            .chunks(2)
            .map(|pair| send_op(&ids, pair[0], pair[1]))
            .collect();
        store.apply(&ops).expect("applied");
        store.sync().expect("synced");
    }
    println!("{batches} batches of {PAIRS} sends applied and synced");
}
