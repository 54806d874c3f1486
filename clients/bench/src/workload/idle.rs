//! Workload (1): N logged-in, heartbeating TLS connections that send
//! nothing else; the figure is the server's RSS growth per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{AnyReceiver, Ctx, Side};
use crate::payload::Recorder;
use crate::pigeon::{self, Account, ReceiveUntil};
use crate::report::{Figures, Outcome};
use crate::{mqtt, sys};

/// Parameters of the idle workload.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Seconds to hold them after they are all up (heartbeats go on).
    #[arg(long, default_value_t = 40.0)]
    pub hold: f64,
}

async fn run(ctx: &Ctx, side: Side, args: &IdleArgs) -> Result<Figures> {
    let mut f = Figures::default();
    let accounts = if side == Side::Pigeon {
        ctx.accounts("bi", args.conns, &mut f).await?
    } else {
        vec![Account::default(); args.conns]
    };
    let Some(pid) = ctx.pid(side) else {
        bail!("idle needs the server's pid (--pigeon-pid / --mqtt-pid)");
    };
    // Let connections of the set-up close before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = sys::sample(pid)?;
    let me_base = sys::sample_self();
    let started = Instant::now();
    let stop = CancellationToken::new();
    let up = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let hold_until = ctx.deadline(Duration::from_secs_f64(args.hold) + Duration::from_secs(600));
    let tasks: Vec<_> = accounts
        .into_iter()
        .enumerate()
        .map(|(i, account)| {
            let (dialer, addr) = (ctx.dialer.clone(), ctx.addr(side));
            let (permits, up, stop) = (permits.clone(), up.clone(), stop.clone());
            tokio::spawn(async move {
                let permit = permits.acquire_owned().await?;
                let conn = match side {
                    Side::Pigeon => AnyReceiver::Pigeon(
                        pigeon::connect(&dialer, addr, &account, None, false).await?,
                    ),
                    Side::Mosquitto => {
                        // A clean session: nothing is left on the broker after.
                        let id = format!("pb-i{i}");
                        AnyReceiver::Mqtt(mqtt::connect(&dialer, addr, id, true).await?.0)
                    }
                };
                drop(permit);
                up.fetch_add(1, Ordering::Relaxed);
                let until = ReceiveUntil {
                    stop,
                    deadline: hold_until,
                    bodies: None,
                };
                conn.run(Recorder::new(false), until).await?;
                anyhow::Ok(())
            })
        })
        .collect();
    let connect_deadline = ctx.deadline(Duration::from_secs(600));
    // Bounded by the deadline.
    while up.load(Ordering::Relaxed) < args.conns as u64 && Instant::now() < connect_deadline {
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = up.load(Ordering::Relaxed);
    f.add("connections", connected as f64);
    f.add("connect_all_s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = sys::sample(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held = sys::sample(pid)?;
    let me = sys::sample_self();
    stop.cancel();
    let mut failed = 0;
    for task in tasks {
        if task.await?.is_err() {
            failed += 1;
        }
    }
    let per = |a: u64, b: u64| (a as f64 - b as f64) / connected.max(1) as f64;
    f.add("server_rss_base_mib", base.rss_kib as f64 / 1024.0);
    f.add("server_rss_held_mib", held.rss_kib as f64 / 1024.0);
    f.add(
        "server_kib_per_conn_settled",
        per(settled.rss_kib, base.rss_kib),
    );
    f.add("server_kib_per_conn_held", per(held.rss_kib, base.rss_kib));
    f.add("server_peak_kib_per_conn", per(held.peak_kib, base.rss_kib));
    f.add("server_cpu_s_while_held", held.cpu_secs - settled.cpu_secs);
    f.add("bench_kib_per_conn", per(me.rss_kib, me_base.rss_kib));
    f.add("failed_connections", failed as f64);
    Ok(f)
}

/// Idle connections on every side.
pub async fn idle(ctx: &Ctx, sides: &[Side], args: &IdleArgs) -> Result<Outcome> {
    let mut out = Outcome::new("idle", json!({"conns": args.conns, "hold": args.hold}));
    for &side in sides {
        eprintln!("[idle] {}", side.name());
        out.sides
            .push((side.name().into(), run(ctx, side, args).await?));
        // Let the server release what it can before the next side.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    out.notes.push("per-connection figures are (RSS − RSS before connecting) / connections; the process-wide file limit here is 20,000, so N ≤ ~19,500".into());
    Ok(out)
}
