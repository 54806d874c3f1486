//! Workload (7): disk bytes per queued message, and whether an ack-then-
//! collect queue gives its space back. Reads the server's data directory;
//! pigeon only. Entries are collected only past `history_retention`, so
//! the server must run with a short one for the "after" figure to mean
//! anything (docs/performance.md shows the config).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{open_senders, queue_messages, reset_receivers, Ctx, Side};
use crate::report::{Figures, Outcome};
use crate::sys;

/// Parameters of the store workload.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The server's data directory (measured with the server running).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Receivers (each with its own sender).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Messages queued per receiver.
    #[arg(long, default_value_t = 100)]
    pub per_user: u64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds to wait before each disk reading (flushes, collection).
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// After the acks: read the disk every half second for up to this many
    /// seconds, stopping early once it is back within 20 % of where it
    /// started (pigeond compacts after a collector sweep, every
    /// `messaging.gc_interval`).
    #[arg(long, default_value_t = 90.0)]
    pub reclaim_wait: f64,
}

/// Run the store workload (pigeon only).
pub async fn store(ctx: &Ctx, args: &StoreArgs) -> Result<Outcome> {
    let mut f = Figures::default();
    let senders = ctx.accounts("bps", args.users, &mut f).await?;
    let receivers = ctx.accounts("bpr", args.users, &mut f).await?;
    let settle = Duration::from_secs_f64(args.settle);
    eprintln!("[store] emptying queues");
    reset_receivers(ctx, Side::Pigeon, &receivers).await?;
    reset_receivers(ctx, Side::Pigeon, &senders).await?;
    // A reset on a fresh data dir re-registers: take the new user ids.
    let senders = ctx.accounts("bps", args.users, &mut f).await?;
    let receivers = ctx.accounts("bpr", args.users, &mut f).await?;
    tokio::time::sleep(settle).await;
    let before = sys::disk_usage(&args.data_dir)?;

    eprintln!("[store] queueing");
    let started = Instant::now();
    let deadline = ctx.deadline(Duration::from_secs(300));
    let (per_user, size) = (args.per_user, args.size);
    let open = open_senders(ctx, Side::Pigeon, &senders, &receivers, 32).await?;
    queue_messages(open, per_user, size, deadline).await?;
    let expected = args.users as u64 * per_user;
    f.add("queue_s", started.elapsed().as_secs_f64());
    tokio::time::sleep(settle).await;
    let queued = sys::disk_usage(&args.data_dir)?;

    eprintln!("[store] pulling and acknowledging everything");
    reset_receivers(ctx, Side::Pigeon, &receivers).await?;
    reset_receivers(ctx, Side::Pigeon, &senders).await?;
    let acked = Instant::now();
    let until = acked + Duration::from_secs_f64(args.reclaim_wait);
    let after = loop {
        let now = sys::disk_usage(&args.data_dir)?;
        if now.0 as f64 <= before.0 as f64 * 1.2 || Instant::now() >= until {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    f.add("reclaim_s", acked.elapsed().as_secs_f64());

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    f.add("messages", expected as f64);
    f.add("disk_before_mib", mib(before.0));
    f.add("disk_queued_mib", mib(queued.0));
    f.add("disk_after_ack_mib", mib(after.0));
    f.add(
        "bytes_per_queued_msg",
        (queued.0 as f64 - before.0 as f64) / expected as f64,
    );
    f.add(
        "apparent_bytes_per_queued_msg",
        (queued.1 as f64 - before.1 as f64) / expected as f64,
    );
    f.add("after_over_before", after.0 as f64 / before.0.max(1) as f64);
    let mut out = Outcome::new(
        "store",
        json!({"users": args.users, "per_user": args.per_user, "size": args.size, "settle": args.settle, "reclaim_wait": args.reclaim_wait}),
    );
    out.sides.push(("pigeon".into(), f));
    out.notes.push("disk = allocated blocks under the data dir (apparent sizes in the JSON); each message is queued for its recipient and in the sender's own queue, and both are acked before the last reading, which is taken once the disk is back within 20% of the first or after --reclaim-wait (reclaim_s says when)".into());
    Ok(out)
}
