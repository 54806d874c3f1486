//! Workloads (2) and (3): 1:1 messages between sender/receiver pairs.
//!
//! - throughput: every sender sends as fast as its window of unanswered
//!   sends allows; the figure is answered sends and deliveries per second
//!   in the measured window (after a warm-up), and per server CPU second.
//! - latency: a fixed total rate, spread evenly over the pairs on a fixed
//!   schedule that does not wait for answers (open loop). Each body carries
//!   the time the schedule meant it to leave; the receiver records "now −
//!   intended", so a stalled sender's late messages count as late
//!   (coordinated omission corrected).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{join_receivers, open_receivers, open_senders, reset_receivers, Ctx, Meter, Side};
use crate::payload::{self, Percentiles, Recorder, Timeline};
use crate::pigeon::ReceiveUntil;
use crate::report::{Figures, Outcome};

/// Parameters shared by both pair workloads.
#[derive(Debug, Clone, clap::Args)]
pub struct PairArgs {
    /// Sender/receiver pairs (2 connections each).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Message body bytes (at least the 20-byte header).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Warm-up seconds, sent but not counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// At most this many sends in total (warm-up included).
    #[arg(long, default_value_t = 2_000_000)]
    pub count: u64,
    /// Unanswered sends per sender connection.
    #[arg(long, default_value_t = 8)]
    pub window: u32,
}

/// Account name prefixes of the pairs.
const SENDERS: &str = "bps";
const RECEIVERS: &str = "bpr";

/// Run throughput (rate None) or latency (Some(msgs/s)) on `side`.
pub async fn run(ctx: &Ctx, side: Side, args: &PairArgs, rate: Option<f64>) -> Result<Figures> {
    let mut f = Figures::default();
    let (senders, receivers) = if side == Side::Pigeon {
        (
            ctx.accounts(SENDERS, args.pairs, &mut f).await?,
            ctx.accounts(RECEIVERS, args.pairs, &mut f).await?,
        )
    } else {
        (Vec::new(), vec![Default::default(); args.pairs])
    };
    reset_receivers(ctx, side, &receivers).await?;
    let receivers = if side == Side::Pigeon {
        // A reset on a fresh data dir re-registers: take the new user ids.
        ctx.accounts(RECEIVERS, args.pairs, &mut f).await?
    } else {
        receivers
    };
    let connecting = Instant::now();
    let window = if rate.is_some() {
        args.window.max(1024)
    } else {
        args.window
    };
    let receiving = open_receivers(ctx, side, &receivers, false).await?;
    let mut senders = open_senders(ctx, side, &senders, &receivers, window).await?;
    f.add("connect_s", connecting.elapsed().as_secs_f64());

    let warmup = Duration::from_secs_f64(args.warmup);
    let measured = Duration::from_secs_f64(args.secs);
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + warmup;
    let end = window_start + measured;
    if end > ctx.hard_deadline {
        bail!("the run would pass --max-secs");
    }
    let delivered = super::counter();
    let stop = CancellationToken::new();
    let receivers_done = ctx.deadline(measured + warmup + Duration::from_secs(120));
    let tasks: Vec<_> = receiving
        .into_iter()
        .map(|r| {
            let until = ReceiveUntil {
                stop: stop.clone(),
                deadline: receivers_done,
                bodies: None,
            };
            let mut recorder = Recorder::counting(false, window_start, &delivered);
            if ctx.timeline {
                recorder.timeline = Some(Timeline::default());
            }
            r.spawn(recorder, until)
        })
        .collect();

    // Each sender's share of the count; the latency schedule per sender.
    let per_sender = args.count / args.pairs.max(1) as u64;
    let pairs = args.pairs.max(1) as f64;
    let size = args.size;
    let mut runs = Vec::with_capacity(senders.len());
    for (i, mut sender) in senders.drain(..).enumerate() {
        runs.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded by the per-sender count and the end time.
            while n < per_sender {
                let at = match rate {
                    // Sender i's k-th message: slot k * pairs + i of the whole schedule.
                    Some(r) => start + Duration::from_secs_f64((n as f64 * pairs + i as f64) / r),
                    None => Instant::now().max(start),
                };
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                sender.send(payload::make(size, at, i as u32, n)).await?;
                n += 1;
            }
            anyhow::Ok((sender, n))
        }));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let meter = Meter::start(ctx.pid(side))?;
    let delivered_at_start = delivered.load(Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let in_window = delivered.load(Ordering::Relaxed) - delivered_at_start;
    let secs = meter.secs();
    // Server CPU over the measured window only.
    let mut window_figures = Figures::default();
    meter.finish(&mut window_figures, Some(("deliveries", in_window)))?;

    let mut sent = 0u64;
    let answer_deadline = ctx.deadline(Duration::from_secs(120));
    let mut finishing = Vec::new();
    for run in runs {
        let (sender, n) = run.await??;
        sent += n;
        finishing.push(tokio::spawn(sender.finish(answer_deadline)));
    }
    let mut answered = 0;
    for f in finishing {
        answered += f.await??;
    }
    // Every message sent in the window and after must reach its receiver.
    let expected_from_window = {
        let drain_deadline = ctx.deadline(Duration::from_secs(60));
        let mut last = delivered.load(Ordering::Relaxed);
        // Bounded by the deadline; stops once deliveries stop growing for 2 s.
        let mut quiet = 0;
        while Instant::now() < drain_deadline && quiet < 20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = delivered.load(Ordering::Relaxed);
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        last
    };
    stop.cancel();
    let all = join_receivers(tasks, false).await?;

    f.add("sends", sent as f64);
    f.add("answered", answered as f64);
    f.add("window_s", secs);
    f.add("deliveries_in_window", in_window as f64);
    f.add("deliveries_per_s", in_window as f64 / secs);
    if rate.is_some() {
        f.add("target_rate_per_s", rate.unwrap_or_default());
    }
    f.0.extend(window_figures.0);
    f.add("delivered_after_warmup", expected_from_window as f64);
    let label = if rate.is_some() {
        "latency"
    } else {
        "closed_loop_latency"
    };
    f.latency(label, &Percentiles::of(&all.latency()));
    if let Some(timeline) = &all.timeline {
        // A side line, not a figure: one entry per bucket.
        eprintln!(
            "{}",
            json!({
                "timeline": side.name(),
                "bucket_ms": Timeline::BUCKET_MS,
                "slow_us": Timeline::SLOW_US,
                "buckets": timeline.buckets,
            })
        );
    }
    Ok(f)
}

/// Throughput on every side, side by side.
pub async fn throughput(ctx: &Ctx, sides: &[Side], args: &PairArgs) -> Result<Outcome> {
    let mut out = Outcome::new("throughput", json!(args_json(args, None)));
    for &side in sides {
        eprintln!("[throughput] {}", side.name());
        out.sides
            .push((side.name().into(), run(ctx, side, args, None).await?));
    }
    out.notes.push(format!(
        "closed loop: each sender keeps up to {} sends unanswered; send→receive latency here is not coordinated-omission corrected (see `latency`)",
        args.window
    ));
    Ok(out)
}

/// Latency at a fixed rate on every side.
pub async fn latency(ctx: &Ctx, sides: &[Side], args: &PairArgs, rate: f64) -> Result<Outcome> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let mut out = Outcome::new("latency", json!(args_json(args, Some(rate))));
    for &side in sides {
        eprintln!("[latency] {}", side.name());
        out.sides
            .push((side.name().into(), run(ctx, side, args, Some(rate)).await?));
    }
    out.notes.push(
        "open loop: fixed schedule, latency = received by the recipient − intended send time (coordinated omission corrected)".into(),
    );
    Ok(out)
}

fn args_json(args: &PairArgs, rate: Option<f64>) -> serde_json::Value {
    json!({
        "pairs": args.pairs, "size": args.size, "secs": args.secs, "warmup": args.warmup,
        "count": args.count, "window": args.window, "rate": rate,
    })
}
