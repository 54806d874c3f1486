//! Workload (6): a reconnect storm. N clients connect and log in (so each
//! has a TLS session ticket and a token), all drop, then all reconnect at
//! once: the figure is the time until every one is logged in and caught
//! up. With `--baseline ADDR` (a `pigeon-bench tls-server`) the same storm
//! of bare TLS handshakes runs too, for the ratio.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Ctx, Meter, Role, Side};
use crate::net::{Dialer, Handshake};
use crate::payload::{self, Percentiles, Recorder};
use crate::pigeon::{self, Account, ReceiveUntil};
use crate::report::{Figures, Outcome};

/// Parameters of the storm workload.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Clients.
    #[arg(long, default_value_t = 19_000)]
    pub clients: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub secs: f64,
    /// Also storm a bare TLS server at this address (`pigeon-bench tls-server`).
    #[arg(long)]
    pub baseline: Option<SocketAddr>,
    /// Reconnects in flight at once during the storm (default: all).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Messages queued for every client while it is offline, so each must
    /// also catch up (sent by up to 1,000 `bps` accounts before the storm).
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,
    /// A client whose connect or login fails (refused, RATE_LIMITED, closed)
    /// tries again after a full-jitter exponential backoff (100 ms doubling
    /// to 5 s) until the deadline, as a real client does; without it the
    /// first failure counts as failed.
    #[arg(long)]
    pub retry: bool,
}

/// What is stormed.
#[derive(Clone, Copy)]
enum Kind {
    Pigeon,
    Bare,
}

/// Open one client: a handshake, and for pigeon a token login plus a
/// catch-up pull when the queue is ahead. Returns what to keep open.
async fn open(
    dialer: &Dialer,
    kind: Kind,
    addr: SocketAddr,
    account: &Account,
    deadline: Instant,
) -> Result<(Option<Box<dyn Send>>, Handshake)> {
    match kind {
        Kind::Bare => {
            let (tls, handshake) = dialer.tls_as(addr, &account.name).await?;
            Ok((Some(Box::new(tls)), handshake))
        }
        Kind::Pigeon => {
            let session = pigeon::connect(dialer, addr, account, None, false).await?;
            let handshake = session.handshake;
            let backlog = session
                .login
                .max_seq
                .saturating_sub(session.login.acked_seq);
            if backlog == 0 {
                return Ok((Some(Box::new(session.frames)), handshake));
            }
            let until = ReceiveUntil {
                stop: CancellationToken::new(),
                deadline,
                bodies: Some(backlog),
            };
            pigeon::receive(session, &mut Recorder::new(false), until).await?;
            Ok((None, handshake))
        }
    }
}

/// Warm up (every client connects once, then all drop), then the storm.
async fn storm_once(
    ctx: &Ctx,
    kind: Kind,
    addr: SocketAddr,
    pid: Option<u32>,
    accounts: &[Account],
    args: &StormArgs,
) -> Result<Figures> {
    let mut f = Figures::default();
    let deadline = ctx.deadline(Duration::from_secs_f64(args.secs));
    let warm_permits = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let warm_started = Instant::now();
    let warm: Vec<_> = accounts
        .iter()
        .map(|a| {
            let permits = warm_permits.clone();
            spawn_open(ctx, kind, addr, a.clone(), permits, deadline, args.retry)
        })
        .collect();
    let mut held = Vec::with_capacity(warm.len());
    for task in warm {
        held.push(task.await??.0);
    }
    f.add("warm_connect_s", warm_started.elapsed().as_secs_f64());
    drop(held);
    // Let the server see every close before the storm.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if matches!(kind, Kind::Pigeon) && args.backlog > 0 {
        eprintln!("[storm] queueing {} messages per client", args.backlog);
        let queueing = Instant::now();
        queue_backlog(ctx, accounts, args.backlog).await?;
        f.add("backlog_per_client", args.backlog as f64);
        f.add("backlog_queue_s", queueing.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let in_flight = args.in_flight.unwrap_or(accounts.len()).max(1);
    let permits = Arc::new(Semaphore::new(in_flight));
    let meter = Meter::start(pid)?;
    let started = Instant::now();
    let tasks: Vec<_> = accounts
        .iter()
        .map(|a| {
            let permits = permits.clone();
            spawn_open(ctx, kind, addr, a.clone(), permits, deadline, args.retry)
        })
        .collect();
    let mut times = payload::histogram();
    let resumed = AtomicU64::new(0);
    let mut failed = 0u64;
    let (mut total_retries, mut retried) = (0u64, 0u64);
    let mut held = Vec::with_capacity(tasks.len());
    let mut last = started;
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok((conn, handshake, done, retries)) => {
                held.push(conn);
                total_retries += u64::from(retries);
                retried += u64::from(retries > 0);
                if handshake == Handshake::Resumed {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                let micros = (done - started).as_micros() as u64;
                times.saturating_record(micros.max(1));
                last = last.max(done);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = (last - started).as_secs_f64();
    meter.finish(&mut f, Some(("logins", accounts.len() as u64 - failed)))?;
    drop(held);
    f.add("clients", accounts.len() as f64);
    f.add("storm_s", secs);
    f.add(
        "per_s",
        (accounts.len() as u64 - failed) as f64 / secs.max(1e-9),
    );
    f.add("resumed_tls", resumed.load(Ordering::Relaxed) as f64);
    f.add("failed", failed as f64);
    f.add("clients_that_retried", retried as f64);
    f.add("retries", total_retries as f64);
    f.latency("ready_after", &Percentiles::of(&times));
    if let Some(e) = first_error {
        eprintln!("first storm failure: {e}");
    }
    Ok(f)
}

type Opened = (Option<Box<dyn Send>>, Handshake, Instant, u32);

fn spawn_open(
    ctx: &Ctx,
    kind: Kind,
    addr: SocketAddr,
    account: Account,
    permits: Arc<Semaphore>,
    deadline: Instant,
    retry: bool,
) -> tokio::task::JoinHandle<Result<Opened>> {
    let dialer = ctx.dialer.clone();
    tokio::spawn(async move {
        let _permit = permits.acquire_owned().await?;
        let mut attempt = 0u32;
        // Bounded by the deadline (and a single attempt without retry).
        loop {
            match open(&dialer, kind, addr, &account, deadline).await {
                Ok((conn, handshake)) => return Ok((conn, handshake, Instant::now(), attempt)),
                Err(e) if !retry || Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    let cap = (100u64 << attempt.min(6)).min(5_000);
                    let pause = Duration::from_millis(jitter(&account.name, attempt) % (cap + 1));
                    attempt += 1;
                    if Instant::now() + pause >= deadline {
                        anyhow::bail!("still failing at the deadline after {attempt} tries");
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    })
}

/// A pseudo-random number per (client, attempt): full jitter without a
/// random number crate.
fn jitter(name: &str, attempt: u32) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((name, attempt))
}

/// Queue `per_client` messages for every client, from up to 1,000 `bps`
/// senders (sender i sends to clients i, i + senders, ...).
async fn queue_backlog(ctx: &Ctx, clients: &[Account], per_client: u64) -> Result<()> {
    let mut setup = Figures::default();
    let senders = ctx
        .accounts("bps", clients.len().min(1000), &mut setup)
        .await?;
    let sessions = ctx.pigeon_sessions(&senders, Role::Sender).await?;
    let n = sessions.len();
    let deadline = ctx.deadline(Duration::from_secs(300));
    let runs: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, session)| {
            let to: Vec<u64> = clients.iter().skip(i).step_by(n).map(|a| a.id).collect();
            let tag = format!("{}-backlog{i}", ctx.run_tag);
            tokio::spawn(async move {
                let mut sender = pigeon::Sender::start(session.frames, 32, tag);
                for k in 0..per_client {
                    for &user in &to {
                        let body = payload::make(100, Instant::now(), i as u32, k);
                        sender.send(user, body).await?;
                    }
                }
                let (answered, refused) = sender.finish(deadline).await?;
                if refused > 0 {
                    anyhow::bail!("{refused} backlog sends refused");
                }
                anyhow::Ok(answered)
            })
        })
        .collect();
    let mut stored = 0;
    for run in runs {
        stored += run.await??;
    }
    let expected = clients.len() as u64 * per_client;
    if stored != expected {
        anyhow::bail!("only {stored} of {expected} backlog sends were acknowledged");
    }
    Ok(())
}

/// The storm against pigeon, and against the bare TLS baseline if given.
pub async fn storm(ctx: &Ctx, args: &StormArgs) -> Result<Outcome> {
    let mut setup = Figures::default();
    let accounts = ctx.accounts("bi", args.clients, &mut setup).await?;
    let mut out = Outcome::new(
        "storm",
        json!({"clients": args.clients, "in_flight": args.in_flight, "baseline": args.baseline,
               "backlog": args.backlog, "retry": args.retry}),
    );
    eprintln!("[storm] pigeon");
    let mut f = storm_once(
        ctx,
        Kind::Pigeon,
        ctx.pigeon,
        ctx.pigeon_pid,
        &accounts,
        args,
    )
    .await?;
    f.0.extend(setup.0);
    out.sides.push((Side::Pigeon.name().into(), f));
    if let Some(addr) = args.baseline {
        eprintln!("[storm] bare TLS at {addr}");
        let f = storm_once(ctx, Kind::Bare, addr, None, &accounts, args).await?;
        out.sides.push(("bare_tls".into(), f));
    }
    out.notes.push("storm_s: from the first reconnect until the last client is logged in (token) and caught up; the warm-up gives every client a session ticket, so resumed_tls counts how many the server accepted".into());
    Ok(out)
}
