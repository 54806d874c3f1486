//! Power-loss test: the crash test's clients (1:1 and small-group sends)
//! and checker (`tests/chaos.rs`) against a real pigeond whose data
//! directory, at every SIGKILL, loses every write that was not fsynced.
//!
//! pigeond runs with the test-only `PIGEON_TEST_POWERLOSS_SNAPSHOT=DIR`
//! (src/store/sled_store/powerloss.rs): after each of its fsyncs, before
//! answering, it copies its data directory into DIR as the "last fsynced
//! state". After each kill the test replaces the data directory with the
//! newest complete copy, then restarts pigeond; every second cycle it also
//! kills one during start-up and cuts the power again.
//!
//! With `durability = "fsync"` (the default) the checker must find nothing
//! lost, unexpected, reordered, duplicated, and no seq gap or rewind (in
//! queues or in the group's stream). With
//! `durability = "flush"` a send is answered before any fsync, and the test
//! asserts that the cuts do lose answered sends: the injector can fail a
//! test.
//!
//! CI runs a short run (`PIGEON_POWERLOSS_CYCLES`, default 4 cuts for
//! fsync, 3 for flush). The long run is `PIGEON_POWERLOSS_CYCLES=100 cargo
//! test --release --test powerloss -- --nocapture`; `PIGEON_POWERLOSS_SEED`
//! replays a schedule.

#[path = "chaos/checker.rs"]
mod checker;
mod common;
#[path = "chaos/users.rs"]
mod users;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use checker::Report;
use common::process::{serve_args, Pigeond};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use users::{free_loopback_addr, Swarm, USERS};

/// pigeond's test-only injector variable (`pigeon_server::config`).
const SNAPSHOT_ENV: &str = pigeon_server::config::TEST_POWERLOSS_SNAPSHOT_ENV;

/// Where one pigeond keeps its data and its last fsynced state.
struct Disk {
    data: tempfile::TempDir,
    snapshots: tempfile::TempDir,
    addr: SocketAddr,
    /// What the cuts threw away.
    dropped: Mutex<Dropped>,
}

/// What the cuts threw away: proof that the injector drops something.
#[derive(Debug, Default, Clone, Copy)]
struct Dropped {
    /// Cuts made.
    cuts: u64,
    /// Cuts whose data directory differed from the last fsynced state.
    cuts_with_unsynced_bytes: u64,
    /// Bytes that differed, over every cut (a missing or extra file counts
    /// its whole length).
    unsynced_bytes: u64,
}

impl Disk {
    fn new() -> Disk {
        Disk {
            data: tempfile::tempdir().unwrap(),
            snapshots: tempfile::tempdir().unwrap(),
            addr: free_loopback_addr(),
            dropped: Mutex::default(),
        }
    }

    fn args(&self) -> Vec<OsString> {
        serve_args(self.data.path(), &self.addr.to_string(), &[])
    }

    fn env<'a>(&'a self, durability: &'a str) -> [(&'a str, &'a OsStr); 2] {
        [
            (SNAPSHOT_ENV, self.snapshots.path().as_os_str()),
            ("PIGEON_MESSAGING_DURABILITY", OsStr::new(durability)),
        ]
    }

    async fn start(&self, durability: &str) -> Pigeond {
        Pigeond::start_with_env(self.args(), &self.env(durability))
            .await
            .0
    }

    /// Kills `server` and puts the last fsynced state in place of the data
    /// directory: everything written after the last fsync is gone.
    async fn cut_power(&self, server: Pigeond) {
        server.kill().await;
        let state = newest_state(self.snapshots.path());
        let data = self.data.path();
        let differing = differing_bytes(data, &state);
        {
            let mut dropped = self.dropped.lock().unwrap();
            dropped.cuts += 1;
            dropped.cuts_with_unsynced_bytes += u64::from(differing > 0);
            dropped.unsynced_bytes += differing;
        }
        fs::remove_dir_all(data).unwrap();
        copy_dir(&state, data);
    }
}

/// The newest complete copy (`state.<n>`) in the injector's directory.
fn newest_state(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state."))
        })
        .max()
        .expect("pigeond took a snapshot when it opened its store")
}

/// Bytes that differ between the data directory and a state (the lock
/// file aside, which the injector does not copy).
fn differing_bytes(data: &Path, state: &Path) -> u64 {
    let mut names = BTreeSet::new();
    for dir in [data, state] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue; // a subdirectory only one side has
        };
        for entry in entries {
            names.insert(entry.unwrap().file_name());
        }
    }
    names.remove(OsStr::new("pigeond.lock"));
    let mut differing = 0;
    for name in names {
        let (a, b) = (data.join(&name), state.join(&name));
        if a.is_dir() || b.is_dir() {
            differing += differing_bytes(&a, &b);
            continue;
        }
        let a = fs::read(a).unwrap_or_default();
        let b = fs::read(b).unwrap_or_default();
        let common = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        differing += (common + a.len().abs_diff(b.len())) as u64;
    }
    differing
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What one run saw.
struct Outcome {
    seed: u64,
    answered: usize,
    unknown: usize,
    report: Report,
    dropped: Dropped,
}

/// Clients send to each other while pigeond, in `durability`, loses power
/// `cycles` times at random moments.
async fn run(durability: &str, default_cycles: u64) -> Outcome {
    let cycles = env_number("PIGEON_POWERLOSS_CYCLES").unwrap_or(default_cycles);
    let seed = env_number("PIGEON_POWERLOSS_SEED").unwrap_or_else(|| rand::rng().random());
    eprintln!("powerloss ({durability}): {cycles} cuts, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = Disk::new();

    // Users and their group are made with fsync durability whatever the
    // run tests, so that a cut never loses an account (the sdk would stop
    // for good) or the group.
    let server = disk.start("fsync").await;
    let names: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    let (group, group_id) = users::set_up(disk.addr, &names).await;
    disk.cut_power(server).await;
    let mut server = disk.start(durability).await;
    let swarm = Swarm::start(disk.addr, &names, group_id);

    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        disk.cut_power(server).await;
        if cycle % 2 == 1 {
            // Cut again while it is starting and opening the store.
            let (starting, _serving) = Pigeond::spawn_with_env(disk.args(), &disk.env(durability));
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
            disk.cut_power(starting).await;
        }
        server = disk.start(durability).await;
    }

    let logs = swarm.finish(disk.addr).await;
    server.kill().await;
    let report = checker::check(&logs, &[group]);
    if !report.is_clean() {
        if let Ok(path) = std::env::var("PIGEON_POWERLOSS_DUMP") {
            fs::write(path, format!("{logs:#?}")).unwrap();
        }
    }
    let outcome = Outcome {
        seed,
        answered: logs.iter().map(|l| l.answered.len()).sum(),
        unknown: logs.iter().map(|l| l.unknown.len()).sum(),
        report,
        dropped: *disk.dropped.lock().unwrap(),
    };
    eprintln!(
        "powerloss ({durability}): seed {seed}, {cycles} cycles, {} answered, {} unknown: \
         {:#?}; {:?}",
        outcome.answered, outcome.unknown, outcome.report, outcome.dropped
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_messages_survive_power_loss_with_fsync_durability() {
    let outcome = run("fsync", 4).await;
    assert!(
        outcome.report.direct.answered > 0 && outcome.report.group.answered > 0,
        "no 1:1 or no group send was answered at all: {:?}",
        outcome.report
    );
    assert!(
        outcome.report.is_clean(),
        "anomalies (seed {}): {:?}",
        outcome.seed,
        outcome.report
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_drops_answered_sends_with_flush_durability() {
    let outcome = run("flush", 3).await;
    assert!(outcome.answered > 0, "no send was answered at all");
    assert!(
        outcome.report.direct.lost + outcome.report.group.lost > 0,
        "the cuts lost nothing answered before an fsync (seed {}): {:?}; \
         the injector is not dropping unsynced writes",
        outcome.seed,
        outcome.report
    );
}
