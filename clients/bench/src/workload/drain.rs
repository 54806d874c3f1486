//! Workload (4): offline drain. Receivers go offline with an empty queue,
//! each gets `per_user` messages from its own sender, then all reconnect at
//! once; the figure is the time from the reconnect until every message is
//! in, and the check is that none was lost or duplicated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{open_senders, queue_messages, reset_receivers, AnyReceiver, Ctx, Meter, Side};
use crate::payload::{Percentiles, Recorder};
use crate::pigeon::ReceiveUntil;
use crate::report::{Figures, Outcome};

/// Parameters of the drain workload.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Offline receivers (each with its own sender).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Messages queued for each receiver.
    #[arg(long, default_value_t = 100)]
    pub per_user: u64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Give up on the drain after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub secs: f64,
    /// Unanswered sends per sender while queueing.
    #[arg(long, default_value_t = 32)]
    pub window: u32,
}

async fn run(ctx: &Ctx, side: Side, args: &DrainArgs) -> Result<Figures> {
    let mut f = Figures::default();
    let (senders, receivers) = if side == Side::Pigeon {
        (
            ctx.accounts("bps", args.users, &mut f).await?,
            ctx.accounts("bpr", args.users, &mut f).await?,
        )
    } else {
        (Vec::new(), vec![Default::default(); args.users])
    };
    reset_receivers(ctx, side, &receivers).await?;
    let receivers = if side == Side::Pigeon {
        // A reset on a fresh data dir re-registers: take the new user ids.
        ctx.accounts("bpr", args.users, &mut f).await?
    } else {
        receivers
    };

    // Queue: every sender sends per_user messages to its offline receiver.
    let queueing = Instant::now();
    let senders = open_senders(ctx, side, &senders, &receivers, args.window).await?;
    let queued_from = Instant::now();
    let deadline = ctx.deadline(Duration::from_secs(300));
    let (per_user, size) = (args.per_user, args.size);
    queue_messages(senders, per_user, size, deadline).await?;
    let expected = args.users as u64 * per_user;
    f.add("queue_s", queueing.elapsed().as_secs_f64());
    // Let the server settle (sessions closed, flushes done) before the storm.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Drain: all receivers reconnect at once.
    let meter = Meter::start(ctx.pid(side))?;
    let started = Instant::now();
    let drain_deadline = ctx.deadline(Duration::from_secs_f64(args.secs));
    let stop = CancellationToken::new();
    let delivered = super::counter();
    // Each receiver connects and starts reading at once, as a real client
    // would; at most --connect-concurrency handshakes are in flight.
    let permits = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let tasks: Vec<_> = receivers
        .iter()
        .enumerate()
        .map(|(i, account)| {
            let until = ReceiveUntil {
                stop: stop.clone(),
                deadline: drain_deadline,
                bodies: Some(per_user),
            };
            let recorder = Recorder::counting(true, queued_from, &delivered);
            let (dialer, addr, account) = (ctx.dialer.clone(), ctx.addr(side), account.clone());
            let inline = ctx.inline;
            let permits = permits.clone();
            tokio::spawn(async move {
                let permit = permits.acquire_owned().await?;
                let receiver =
                    AnyReceiver::connect(&dialer, side, addr, &account, i, inline).await?;
                let connected = Instant::now();
                drop(permit);
                let record = receiver.run(recorder, until).await?;
                anyhow::Ok((record, connected, Instant::now()))
            })
        })
        .collect();
    let mut all = Recorder::new(true);
    let mut last = started;
    let mut last_connected = started;
    let mut short = 0usize;
    for task in tasks {
        let (record, connected, done) = task.await??;
        last_connected = last_connected.max(connected);
        if record.delivered < per_user || record.distinct() != Some(per_user as usize) {
            short += 1;
        }
        last = last.max(done);
        all.merge(record);
    }
    let drain_s = (last - started).as_secs_f64();
    let connected_s = (last_connected - started).as_secs_f64();
    meter.finish(&mut f, Some(("deliveries", all.delivered)))?;

    f.add("messages", expected as f64);
    f.add("connect_all_s", connected_s);
    f.add("drain_s", drain_s);
    f.add("messages_per_s", all.delivered as f64 / drain_s.max(1e-9));
    f.add("delivered", all.delivered as f64);
    f.add("distinct", all.distinct().unwrap_or(0) as f64);
    f.add("duplicates", all.duplicates as f64);
    f.add(
        "lost",
        expected.saturating_sub(all.distinct().unwrap_or(0) as u64) as f64,
    );
    f.add("receivers_short", short as f64);
    f.latency("queued_age", &Percentiles::of(&all.latency()));
    Ok(f)
}

/// Drain on every side, side by side.
pub async fn drain(ctx: &Ctx, sides: &[Side], args: &DrainArgs) -> Result<Outcome> {
    let mut out = Outcome::new(
        "drain",
        json!({"users": args.users, "per_user": args.per_user, "size": args.size, "window": args.window}),
    );
    for &side in sides {
        eprintln!("[drain] {}", side.name());
        out.sides
            .push((side.name().into(), run(ctx, side, args).await?));
    }
    out.notes.push(
        "drain_s runs from the start of the reconnect until the last receiver has all its messages (TLS handshakes and logins included); lost/duplicates are checked per (sender, n)".into(),
    );
    Ok(out)
}
