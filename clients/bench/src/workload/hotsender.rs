//! Overload: hot senders far above the allowed send rate next to ordinary
//! pairs (pigeon only). The pairs send on a fixed open-loop schedule for
//! the whole run (as in `latency`); the hot senders are off in the first
//! measured phase and on in the second, so both latency figures come from
//! the same run and the same server process. A hot sender does not slow
//! down: it writes on its own schedule whatever the answers say, and every
//! answer is counted (accepted, RATE_LIMITED with its retry_after_ms, other).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::{pb, Body, Envelope, ErrorCode};
use serde_json::json;
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

use super::{
    join_receivers, open_receivers, open_senders, reset_receivers, Ctx, Meter, Role, Side,
};
use crate::payload::{self, Percentiles, Recorder};
use crate::pigeon::{ReceiveUntil, Session};
use crate::report::{Figures, Outcome};

/// Parameters of the hot-sender workload.
#[derive(Debug, Clone, clap::Args)]
pub struct HotArgs {
    /// Ordinary sender/receiver pairs.
    #[arg(long, default_value_t = 200)]
    pub pairs: usize,
    /// Messages per second over all ordinary pairs (open loop).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Hot senders (each its own account and connection).
    #[arg(long, default_value_t = 1)]
    pub hot: usize,
    /// Sends per second each hot sender attempts (the server's default
    /// `limits.sends_per_sec` is 50: 500 is 10×).
    #[arg(long, default_value_t = 500.0)]
    pub hot_rate: f64,
    /// Seconds of each measured phase (unloaded, then with hot senders).
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Warm-up seconds before the first phase, sent but not counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

/// What a hot sender's answers were.
#[derive(Default)]
struct HotCounts {
    sent: AtomicU64,
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    other: AtomicU64,
    retry_min_ms: AtomicU64,
    retry_max_ms: AtomicU64,
    retry_missing: AtomicU64,
}

/// When a hot sender sends, and when it stops waiting for answers.
#[derive(Clone, Copy)]
struct HotSchedule {
    rate: f64,
    from: Instant,
    end: Instant,
    answers_by: Instant,
}

/// One hot sender: sends to `to` at the schedule's rate from `from` until
/// `end`, then waits (until `answers_by`) for the answers.
async fn hot_sender(
    session: Session,
    to: u64,
    schedule: HotSchedule,
    tag: String,
    counts: Arc<HotCounts>,
) -> Result<()> {
    let HotSchedule {
        rate,
        from,
        end,
        answers_by,
    } = schedule;
    let (mut sink, mut stream) = session.frames.split();
    let stop = CancellationToken::new();
    let reader = tokio::spawn({
        let (counts, stop) = (counts.clone(), stop.clone());
        async move {
            // Bounded: ends when the stream ends or the writer stops it.
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return anyhow::Ok(()),
                    frame = stream.next() => frame,
                };
                let Some(frame) = frame else {
                    bail!("the server closed a hot sender's connection");
                };
                match frame?.body {
                    Some(Body::Sent(_)) => {
                        counts.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Body::Error(e)) if e.code == ErrorCode::RateLimited as i32 => {
                        counts.rate_limited.fetch_add(1, Ordering::Relaxed);
                        if e.retry_after_ms == 0 {
                            counts.retry_missing.fetch_add(1, Ordering::Relaxed);
                        }
                        let ms = u64::from(e.retry_after_ms);
                        counts.retry_min_ms.fetch_min(ms, Ordering::Relaxed);
                        counts.retry_max_ms.fetch_max(ms, Ordering::Relaxed);
                        if e.fatal {
                            bail!("RATE_LIMITED closed the connection: {}", e.message);
                        }
                    }
                    Some(Body::Error(e)) => {
                        counts.other.fetch_add(1, Ordering::Relaxed);
                        if e.fatal {
                            bail!("fatal error on a hot sender: {}", e.message);
                        }
                    }
                    _ => {} // Notify, Pong.
                }
            }
        }
    });
    let mut n = 0u64;
    // Bounded by the end time: one send per slot of the schedule.
    loop {
        let at = from + Duration::from_secs_f64(n as f64 / rate);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        n += 1;
        let body = Body::Send(pb::SendRequest {
            group_id: 0,
            to_user_id: to,
            to_username: String::new(),
            client_msg_id: format!("{tag}-{n}"),
            content_type: "application/octet-stream".into(),
            content: payload::make(100, at, u32::MAX, n),
        });
        // A write the server does not take is back-pressure, not an error:
        // the schedule runs on, and the answers say what became of it.
        sink.send(Envelope::new(n, body)).await?;
        counts.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Bounded by `answers_by`.
    while Instant::now() < answers_by {
        let answered = counts.accepted.load(Ordering::Relaxed)
            + counts.rate_limited.load(Ordering::Relaxed)
            + counts.other.load(Ordering::Relaxed);
        if answered >= counts.sent.load(Ordering::Relaxed) || reader.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = timeout_at(answers_by.into(), reader).await;
    Ok(())
}

/// Run the hot-sender workload against pigeon.
pub async fn hotsender(ctx: &Ctx, args: &HotArgs) -> Result<Outcome> {
    if !(args.rate > 0.0 && args.hot_rate > 0.0) {
        bail!("--rate and --hot-rate must be above 0");
    }
    let mut f = Figures::default();
    let side = Side::Pigeon;
    let senders = ctx.accounts("bps", args.pairs, &mut f).await?;
    let receivers = ctx.accounts("bpr", args.pairs, &mut f).await?;
    let hot = ctx.accounts("bhs", args.hot, &mut f).await?;
    let hot_to = ctx.accounts("bhr", args.hot, &mut f).await?;
    reset_receivers(ctx, side, &receivers).await?;
    reset_receivers(ctx, side, &hot_to).await?;
    // A reset on a fresh data dir re-registers: take the new user ids.
    let receivers = ctx.accounts("bpr", args.pairs, &mut f).await?;
    let hot_to = ctx.accounts("bhr", args.hot, &mut f).await?;
    let receiving = open_receivers(ctx, side, &receivers, false).await?;
    let mut senders = open_senders(ctx, side, &senders, &receivers, 1024).await?;
    let hot_sessions = ctx.pigeon_sessions(&hot, Role::Sender).await?;

    let measured = Duration::from_secs_f64(args.secs);
    let start = Instant::now() + Duration::from_millis(200);
    let phase1 = start + Duration::from_secs_f64(args.warmup);
    let phase2 = phase1 + measured;
    let end = phase2 + measured;
    if end + Duration::from_secs(60) > ctx.hard_deadline {
        bail!("the run would pass --max-secs");
    }
    let delivered = super::counter();
    let stop = CancellationToken::new();
    let receivers_done = ctx.deadline(end - Instant::now() + Duration::from_secs(120));
    let tasks: Vec<_> = receiving
        .into_iter()
        .map(|r| {
            let until = ReceiveUntil {
                stop: stop.clone(),
                deadline: receivers_done,
                bodies: None,
            };
            let mut recorder = Recorder::counting(false, phase1, &delivered);
            recorder.split_from_ns = payload::nanos_at(phase2);
            r.spawn(recorder, until)
        })
        .collect();

    let pairs = args.pairs.max(1) as f64;
    let (rate, size) = (args.rate, args.size);
    let runs: Vec<_> = senders
        .drain(..)
        .enumerate()
        .map(|(i, mut sender)| {
            tokio::spawn(async move {
                let mut n = 0u64;
                // Bounded by the end time.
                loop {
                    let at = start + Duration::from_secs_f64((n as f64 * pairs + i as f64) / rate);
                    if at >= end {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    sender.send(payload::make(size, at, i as u32, n)).await?;
                    n += 1;
                }
                anyhow::Ok(sender)
            })
        })
        .collect();

    let counts = Arc::new(HotCounts {
        retry_min_ms: AtomicU64::new(u64::MAX),
        ..HotCounts::default()
    });
    let answers_by = end + Duration::from_secs(10);
    let hot_runs: Vec<_> = hot_sessions
        .into_iter()
        .zip(&hot_to)
        .enumerate()
        .map(|(i, (session, to))| {
            let tag = format!("{}-hot{i}", ctx.run_tag);
            let schedule = HotSchedule {
                rate: args.hot_rate,
                from: phase2,
                end,
                answers_by,
            };
            tokio::spawn(hot_sender(session, to.id, schedule, tag, counts.clone()))
        })
        .collect();

    tokio::time::sleep_until(phase1.into()).await;
    let meter = Meter::start(ctx.pigeon_pid)?;
    tokio::time::sleep_until(phase2.into()).await;
    let mut unloaded = Figures::default();
    meter.finish(&mut unloaded, None)?;
    let meter = Meter::start(ctx.pigeon_pid)?;
    tokio::time::sleep_until(end.into()).await;
    let mut loaded = Figures::default();
    meter.finish(&mut loaded, None)?;

    let answer_deadline = ctx.deadline(Duration::from_secs(120));
    let mut sent = 0;
    for run in runs {
        let sender = run.await??;
        sent += sender.finish(answer_deadline).await?;
    }
    for run in hot_runs {
        run.await??;
    }
    // Let the last deliveries arrive: stop once the count is still for 2 s.
    let settle_deadline = ctx.deadline(Duration::from_secs(60));
    let mut last = delivered.load(Ordering::Relaxed);
    let mut quiet = 0;
    while Instant::now() < settle_deadline && quiet < 20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered.load(Ordering::Relaxed);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
    stop.cancel();
    let all = join_receivers(tasks, false).await?;

    let before = Percentiles::of(&all.latency());
    let during = Percentiles::of(&all.latency_late());
    f.add("background_sends_answered", sent as f64);
    f.add("background_delivered_after_warmup", all.delivered as f64);
    f.latency("unloaded_latency", &before);
    f.latency("with_hot_latency", &during);
    if before.p99_ms > 0.0 {
        f.add("p99_with_hot_over_unloaded", during.p99_ms / before.p99_ms);
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    let secs = measured.as_secs_f64();
    f.add("hot_senders", args.hot as f64);
    f.add("hot_sends", load(&counts.sent));
    f.add("hot_attempted_per_s", load(&counts.sent) / secs);
    f.add("hot_accepted", load(&counts.accepted));
    f.add("hot_accepted_per_s", load(&counts.accepted) / secs);
    f.add("hot_rate_limited", load(&counts.rate_limited));
    f.add("hot_other_errors", load(&counts.other));
    f.add(
        "hot_rate_limited_without_retry_after",
        load(&counts.retry_missing),
    );
    if counts.rate_limited.load(Ordering::Relaxed) > 0 {
        f.add("hot_retry_after_min_ms", load(&counts.retry_min_ms));
        f.add("hot_retry_after_max_ms", load(&counts.retry_max_ms));
    }
    for (name, v) in unloaded.0 {
        f.add(format!("unloaded_{name}"), v);
    }
    for (name, v) in loaded.0 {
        f.add(format!("with_hot_{name}"), v);
    }
    let mut out = Outcome::new(
        "hotsender",
        json!({"pairs": args.pairs, "rate": args.rate, "hot": args.hot, "hot_rate": args.hot_rate,
               "secs": args.secs, "warmup": args.warmup, "size": args.size}),
    );
    out.sides.push((side.name().into(), f));
    out.notes.push("one run, two phases: background pairs on a fixed open-loop schedule throughout; hot senders only in the second phase; latency = received − intended send time".into());
    Ok(out)
}
