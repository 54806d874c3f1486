//! What one durable commit costs, with the write-ahead log written by
//! `O_DIRECT | O_DSYNC` into prepared segments against appended and
//! fdatasynced (`SledOptions::direct_log`), both in one run.
//!
//! Each round opens a fresh store in a temporary directory and commits
//! `commits` (default 5,000) batches of one 1:1 send, each applied and
//! synced as the committer does at low rates, where every send is its own
//! batch. The rounds alternate the two ways (ABBA order, 8 rounds). Per
//! commit it prints the wall time, the CPU time of the committing thread
//! (`/proc/thread-self/schedstat`, nanoseconds) and of the whole process
//! (`/proc/self/stat`, clock ticks: sled's threads and the checkpointer's
//! preparing of segments included), then the medians of each way and
//! their ratio.
//!
//! ```text
//! cargo bench --bench wal_commit            # or: ... -- 2000 for shorter rounds
//! ```
//!
//! The temporary directories are on the machine's disk (`TMPDIR`): on
//! tmpfs there is no `O_DIRECT`, and the direct rounds say so.

mod support;

use std::time::Instant;

use pigeon_server::store::sled_store::SledOptions;
use pigeon_server::store::{Durability, SledStore, Store};

use support::{create_users, send_op, Ids};

const ROUNDS: usize = 8;
const WARMUP: usize = 200;

/// Nanoseconds the calling thread has run.
fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    stat.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("run time")
}

/// Clock ticks (user + system) of the whole process.
fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    // Fields after the command name, which ends with the last ')'.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

struct Round {
    wall_us: f64,
    thread_cpu_us: f64,
    process_cpu_us: f64,
    direct: bool,
}

fn round(direct_log: bool, commits: usize) -> Round {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let options = SledOptions {
        direct_log,
        ..SledOptions::default()
    };
    let store = SledStore::open_with(dir.path(), Durability::Fsync, &options).expect("opens");
    let users = create_users(&store, "u", 2);
    let ids = Ids::default();
    let commit = || {
        store
            .apply(&[send_op(&ids, users[0], users[1])])
            .expect("applied");
        store.sync().expect("synced");
    };
    for _ in 0..WARMUP {
        commit();
    }
    // Clock ticks: 100 a second (USER_HZ on Linux).
    let tick_us = 1e6 / 100.0;
    let (started, cpu, ticks) = (Instant::now(), thread_cpu_ns(), process_ticks());
    for _ in 0..commits {
        commit();
    }
    let n = commits as f64;
    Round {
        wall_us: started.elapsed().as_secs_f64() * 1e6 / n,
        thread_cpu_us: (thread_cpu_ns() - cpu) as f64 / 1e3 / n,
        process_cpu_us: (process_ticks() - ticks) as f64 * tick_us / n,
        direct: store.wal_totals().direct,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the first number is the commit count.
    let commits = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(5_000);
    let mut direct = Vec::new();
    let mut buffered = Vec::new();
    println!("{commits} commits of one send per round; µs per commit");
    println!("way       wall  writer-cpu  process-cpu");
    for i in 0..ROUNDS {
        // ABBA ABBA: neither way always runs first.
        let way = matches!(i % 4, 0 | 3);
        let r = round(way, commits);
        let name = match (way, r.direct) {
            (true, true) => "direct",
            (true, false) => "direct (refused: buffered)",
            (false, _) => "buffered",
        };
        println!(
            "{name:9} {:6.1} {:10.1} {:12.1}",
            r.wall_us, r.thread_cpu_us, r.process_cpu_us
        );
        if way { &mut direct } else { &mut buffered }.push(r);
    }
    let med = |rounds: &[Round], f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    println!("medians   wall  writer-cpu  process-cpu");
    for (name, rounds) in [("direct", &direct), ("buffered", &buffered)] {
        println!(
            "{name:9} {:6.1} {:10.1} {:12.1}",
            med(rounds, |r| r.wall_us),
            med(rounds, |r| r.thread_cpu_us),
            med(rounds, |r| r.process_cpu_us)
        );
    }
    let ratio = |f: fn(&Round) -> f64| med(&direct, f) / med(&buffered, f);
    println!(
        "direct / buffered: wall {:.2}, writer cpu {:.2}, process cpu {:.2}",
        ratio(|r| r.wall_us),
        ratio(|r| r.thread_cpu_us),
        ratio(|r| r.process_cpu_us)
    );
}
