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

use super::{Ctx, Meter, Side};
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
            let (tls, handshake) = dialer.tls(addr).await?;
            Ok((Some(Box::new(tls)), handshake))
        }
        Kind::Pigeon => {
            let session = pigeon::connect(dialer, addr, account, None).await?;
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
        .map(|a| spawn_open(ctx, kind, addr, a.clone(), warm_permits.clone(), deadline))
        .collect();
    let mut held = Vec::with_capacity(warm.len());
    for task in warm {
        held.push(task.await??.0);
    }
    f.add("warm_connect_s", warm_started.elapsed().as_secs_f64());
    drop(held);
    // Let the server see every close before the storm.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let in_flight = args.in_flight.unwrap_or(accounts.len()).max(1);
    let permits = Arc::new(Semaphore::new(in_flight));
    let meter = Meter::start(pid)?;
    let started = Instant::now();
    let tasks: Vec<_> = accounts
        .iter()
        .map(|a| spawn_open(ctx, kind, addr, a.clone(), permits.clone(), deadline))
        .collect();
    let mut times = payload::histogram();
    let resumed = AtomicU64::new(0);
    let mut failed = 0u64;
    let mut held = Vec::with_capacity(tasks.len());
    let mut last = started;
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok((conn, handshake, done)) => {
                held.push(conn);
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
    f.latency("ready_after", &Percentiles::of(&times));
    if let Some(e) = first_error {
        eprintln!("first storm failure: {e}");
    }
    Ok(f)
}

type Opened = (Option<Box<dyn Send>>, Handshake, Instant);

fn spawn_open(
    ctx: &Ctx,
    kind: Kind,
    addr: SocketAddr,
    account: Account,
    permits: Arc<Semaphore>,
    deadline: Instant,
) -> tokio::task::JoinHandle<Result<Opened>> {
    let dialer = ctx.dialer.clone();
    tokio::spawn(async move {
        let _permit = permits.acquire_owned().await?;
        let (conn, handshake) = open(&dialer, kind, addr, &account, deadline).await?;
        Ok((conn, handshake, Instant::now()))
    })
}

/// The storm against pigeon, and against the bare TLS baseline if given.
pub async fn storm(ctx: &Ctx, args: &StormArgs) -> Result<Outcome> {
    let mut setup = Figures::default();
    let accounts = ctx.accounts("bi", args.clients, &mut setup).await?;
    let mut out = Outcome::new(
        "storm",
        json!({"clients": args.clients, "in_flight": args.in_flight, "baseline": args.baseline}),
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
