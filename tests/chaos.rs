//! Crash test: clients driven by the sdk send uniquely numbered messages to
//! each other and to a small group of them all (created at set-up), while a
//! real pigeond process is killed with SIGKILL at random moments and
//! restarted — every second kill lands within 50 ms of start, while the
//! store is still opening, as a supervisor's restart loop would. A checker
//! then reads every client's log and counts lost, unexpected, reordered,
//! duplicated messages, gaps or rewinds in a device's seqs and in a group's
//! seqs as each member saw them, and group messages shown to some members
//! only (see `tests/chaos/checker.rs`).
//!
//! CI runs a short run (`PIGEON_CHAOS_CYCLES`, default 6 kill cycles). The
//! long run is `PIGEON_CHAOS_CYCLES=100 cargo test --release --test chaos
//! -- --nocapture`; `PIGEON_CHAOS_SEED` replays a schedule.

#[path = "chaos/checker.rs"]
mod checker;
mod common;
#[path = "chaos/users.rs"]
mod users;

use std::time::Duration;

use common::process::{serve_args, Pigeond};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use users::{free_loopback_addr, Swarm, USERS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_messages_survive_sigkill_at_random_moments() {
    let cycles: u32 = std::env::var("PIGEON_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("PIGEON_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("chaos: {cycles} kill cycles, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let addr = free_loopback_addr();
    let args = || serve_args(data.path(), &addr.to_string(), &[]);
    let (mut server, _) = Pigeond::start(args()).await;

    let names: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    let (group, group_id) = users::set_up(addr, &names).await;
    let swarm = Swarm::start(addr, &names, group_id);

    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        server.kill().await;
        if cycle % 2 == 1 {
            // Kill again while it is starting and opening the store.
            let (starting, _serving) = Pigeond::spawn(args());
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
            starting.kill().await;
        }
        server = Pigeond::start(args()).await.0;
    }
    let logs = swarm.finish(addr).await;
    server.kill().await;

    let report = checker::check(&logs, &[group]);
    let answered: usize = logs.iter().map(|l| l.answered.len()).sum();
    let unknown: usize = logs.iter().map(|l| l.unknown.len()).sum();
    eprintln!(
        "chaos: seed {seed}, {cycles} cycles, {answered} answered, {unknown} unknown: {report:#?}"
    );
    assert!(
        report.direct.answered > 0 && report.group.answered > 0,
        "no 1:1 or no group send was answered at all: {report:?}"
    );
    assert!(report.is_clean(), "anomalies (seed {seed}): {report:?}");
}
