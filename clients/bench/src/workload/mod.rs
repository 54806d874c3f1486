//! What every workload shares: the servers under test, accounts, the
//! server-side meter (/proc), and one sender/receiver shape over both
//! pigeon and MQTT so a workload is written once and run against either.

pub mod drain;
pub mod fanout;
pub mod hotsender;
pub mod idle;
pub mod pairs;
pub mod store;
pub mod storm;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::net::Dialer;
use crate::payload::Recorder;
use crate::pigeon::{self, Account, Accounts, ReceiveUntil, Session};
use crate::report::Figures;
use crate::{mqtt, sys};

/// What a pigeon session is for: a sender ignores its own queue's
/// notifies, so it does not ask for their entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends, reads only answers.
    Sender,
    /// Receives.
    Receiver,
}

/// Which server a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// pigeond.
    Pigeon,
    /// mosquitto over MQTT 3.1.1.
    Mosquitto,
}

impl Side {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Side::Pigeon => "pigeon",
            Side::Mosquitto => "mosquitto",
        }
    }
}

/// The servers under test and how to reach them.
pub struct Ctx {
    /// TLS and source addresses.
    pub dialer: Arc<Dialer>,
    /// pigeond's address.
    pub pigeon: SocketAddr,
    /// pigeond's pid, for CPU and RSS.
    pub pigeon_pid: Option<u32>,
    /// mosquitto's TLS listener.
    pub mqtt: SocketAddr,
    /// mosquitto's pid.
    pub mqtt_pid: Option<u32>,
    /// Known pigeon accounts.
    pub accounts: tokio::sync::Mutex<Accounts>,
    /// Password logins at once during set-up.
    pub setup_concurrency: usize,
    /// Connections opened at once (token logins, MQTT connects).
    pub connect_concurrency: usize,
    /// Unique per invocation: keeps client_msg_ids fresh across runs.
    pub run_tag: String,
    /// No workload phase runs past this.
    pub hard_deadline: Instant,
    /// pigeon receivers ask for new entries inside Notify.
    pub inline: bool,
    /// Pair workloads print deliveries by send time (see `Timeline`).
    pub timeline: bool,
}

impl Ctx {
    /// The address of a side.
    pub fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::Pigeon => self.pigeon,
            Side::Mosquitto => self.mqtt,
        }
    }

    /// The server pid of a side.
    pub fn pid(&self, side: Side) -> Option<u32> {
        match side {
            Side::Pigeon => self.pigeon_pid,
            Side::Mosquitto => self.mqtt_pid,
        }
    }

    /// `now + d`, but never past the hard deadline.
    pub fn deadline(&self, d: Duration) -> Instant {
        (Instant::now() + d).min(self.hard_deadline)
    }

    /// Accounts `prefix0 .. prefix{n-1}`, registering the missing ones;
    /// adds the set-up time to `figures` when there was any.
    pub async fn accounts(
        &self,
        prefix: &str,
        n: usize,
        figures: &mut Figures,
    ) -> Result<Vec<Account>> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let started = Instant::now();
        let accounts = self
            .accounts
            .lock()
            .await
            .ensure(&self.dialer, &names, self.setup_concurrency)
            .await?;
        let secs = started.elapsed().as_secs_f64();
        if secs > 1.0 {
            figures.accumulate("setup_accounts_s", secs);
        }
        Ok(accounts)
    }

    /// Token logins for `accounts`, `connect_concurrency` at once, in order;
    /// receivers ask for inline entries unless the run is `--pull-only`.
    pub async fn pigeon_sessions(&self, accounts: &[Account], role: Role) -> Result<Vec<Session>> {
        let renewed = Mutex::new(Vec::new());
        let inline = role == Role::Receiver && self.inline;
        let sessions: Vec<Result<Session>> = futures_util::stream::iter(
            accounts
                .iter()
                .map(|a| pigeon::connect(&self.dialer, self.pigeon, a, Some(&renewed), inline)),
        )
        .buffered(self.connect_concurrency.max(1))
        .collect()
        .await;
        let renewed = renewed.into_inner().expect("not poisoned");
        if !renewed.is_empty() {
            let mut known = self.accounts.lock().await;
            for account in renewed {
                known.update(account);
            }
            known.save()?;
        }
        sessions.into_iter().collect()
    }
}

/// CPU and memory of a server over one phase.
pub struct Meter {
    pid: Option<u32>,
    start: Option<sys::ProcSample>,
    threads: Option<sys::ThreadSample>,
    me: sys::ProcSample,
    started: Instant,
    peak_reset: bool,
}

impl Meter {
    /// Start measuring (and reset the server's peak RSS when allowed).
    pub fn start(pid: Option<u32>) -> Result<Meter> {
        let peak_reset = pid.is_some_and(sys::reset_peak);
        Ok(Meter {
            pid,
            start: sys::sample_opt(pid)?,
            threads: pid.map(sys::sample_threads).transpose()?,
            me: sys::sample_self(),
            started: Instant::now(),
            peak_reset,
        })
    }

    /// Seconds since start.
    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Add server CPU seconds, RSS and peak RSS to `f`; with `work` (what
    /// was done, how many), also CPU per unit of it, of the server, of each
    /// group of its threads, and of the bench itself.
    pub fn finish(&self, f: &mut Figures, work: Option<(&str, u64)>) -> Result<()> {
        let me = sys::sample_self();
        let bench_cpu = me.cpu_secs - self.me.cpu_secs;
        f.add("bench_cpu_s", bench_cpu);
        // Per unit of work only when there was some.
        let counted = work.filter(|(_, n)| *n > 0);
        if let Some((name, n)) = counted {
            f.add(
                format!("bench_cpu_us_per_{name}"),
                bench_cpu * 1e6 / n as f64,
            );
        }
        let (Some(start), Some(pid)) = (self.start, self.pid) else {
            return Ok(());
        };
        // Threads read inside the process's readings (after them at the
        // start, before them at the end), so their sum stays within its.
        let threads = match (&self.threads, counted) {
            (Some(before), Some(_)) => Some((before, sys::sample_threads(pid)?)),
            _ => None,
        };
        let end = sys::sample(pid)?;
        let cpu = end.cpu_secs - start.cpu_secs;
        f.add("server_cpu_s", cpu);
        f.add("server_cpu_util", cpu / self.secs().max(1e-9));
        if let Some((name, n)) = work {
            if cpu > 0.0 {
                f.add(format!("{name}_per_server_cpu_s"), n as f64 / cpu);
            }
        }
        if let Some((name, n)) = counted {
            let us_per = |secs: f64| secs * 1e6 / n as f64;
            f.add(format!("server_cpu_us_per_{name}"), us_per(cpu));
            // Where the server's CPU went: groups of threads that used at
            // least 1 % of it, one row each.
            for (group, secs) in threads
                .iter()
                .flat_map(|(before, after)| sys::thread_cpu_between(before, after))
                .filter(|(_, secs)| *secs >= cpu / 100.0)
            {
                f.add(format!("server_cpu_us_per_{name}[{group}]"), us_per(secs));
            }
        }
        f.add("server_rss_start_mib", start.rss_kib as f64 / 1024.0);
        f.add("server_rss_mib", end.rss_kib as f64 / 1024.0);
        let peak = if self.peak_reset {
            "server_peak_rss_mib"
        } else {
            "server_lifetime_peak_rss_mib"
        };
        f.add(peak, end.peak_kib as f64 / 1024.0);
        if self.peak_reset {
            let delta = end.peak_kib as f64 - start.rss_kib as f64;
            f.add("server_peak_rss_delta_mib", delta / 1024.0);
        }
        Ok(())
    }
}

/// A sending connection on either side, bound to one recipient.
pub enum AnySender {
    /// pigeon: the recipient's user id.
    Pigeon(pigeon::Sender, u64),
    /// MQTT: the recipient's topic.
    Mqtt(mqtt::Sender, String),
}

impl AnySender {
    /// Send one body to the bound recipient (waits for window room).
    pub async fn send(&mut self, body: Bytes) -> Result<()> {
        match self {
            AnySender::Pigeon(s, to) => s.send(*to, body).await,
            AnySender::Mqtt(s, topic) => s.send(topic.clone(), body).await,
        }
    }

    /// Wait for every answer; returns how many were positive.
    pub async fn finish(self, deadline: Instant) -> Result<u64> {
        match self {
            AnySender::Pigeon(s, _) => {
                let (answered, refused) = s.finish(deadline).await?;
                if refused > 0 {
                    bail!("{refused} sends refused by the server");
                }
                Ok(answered)
            }
            AnySender::Mqtt(s, _) => s.finish(deadline).await,
        }
    }
}

/// Every sender sends `per_user` messages of `size` bytes to its recipient,
/// all senders at once; fails unless every send was acknowledged by
/// `deadline`. Used to fill queues before a measurement.
pub async fn queue_messages(
    senders: Vec<AnySender>,
    per_user: u64,
    size: usize,
    deadline: Instant,
) -> Result<()> {
    let expected = senders.len() as u64 * per_user;
    let runs: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                for n in 0..per_user {
                    s.send(crate::payload::make(size, Instant::now(), i as u32, n))
                        .await?;
                }
                s.finish(deadline).await
            })
        })
        .collect();
    let mut stored = 0;
    for run in runs {
        stored += run.await??;
    }
    if stored != expected {
        bail!("only {stored} of {expected} sends were acknowledged");
    }
    Ok(())
}

/// Senders `i` → receivers `i` on `side`: the pigeon accounts of the
/// pairs' receivers (for their ids) or the MQTT inbox topics.
pub async fn open_senders(
    ctx: &Ctx,
    side: Side,
    senders: &[Account],
    receivers: &[Account],
    window: u32,
) -> Result<Vec<AnySender>> {
    match side {
        Side::Pigeon => {
            let sessions = ctx.pigeon_sessions(senders, Role::Sender).await?;
            Ok(sessions
                .into_iter()
                .zip(receivers)
                .enumerate()
                .map(|(i, (s, r))| {
                    let tag = format!("{}-{i}", ctx.run_tag);
                    AnySender::Pigeon(pigeon::Sender::start(s.frames, window, tag), r.id)
                })
                .collect())
        }
        Side::Mosquitto => {
            let n = receivers.len();
            let conns: Vec<Result<mqtt::Conn>> =
                futures_util::stream::iter((0..n).map(|i| async move {
                    let id = format!("pb-s{i}");
                    Ok(mqtt::connect(&ctx.dialer, ctx.mqtt, id, true).await?.0)
                }))
                .buffered(ctx.connect_concurrency.max(1))
                .collect()
                .await;
            conns
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    Ok(AnySender::Mqtt(
                        mqtt::Sender::start(c?, window),
                        mqtt::inbox(i),
                    ))
                })
                .collect()
        }
    }
}

/// A receiving connection ready to run: a pigeon session or an MQTT
/// session already subscribed (or resumed).
pub enum AnyReceiver {
    /// Logged in.
    Pigeon(Session),
    /// Connected with a persistent session.
    Mqtt(mqtt::Conn),
}

impl AnyReceiver {
    /// Connect receiver `i` (pigeon: token login as `account`, asking for
    /// inline entries if `inline`; MQTT: resume the persistent session
    /// `pb-r{i}`).
    pub async fn connect(
        dialer: &Dialer,
        side: Side,
        addr: SocketAddr,
        account: &Account,
        i: usize,
        inline: bool,
    ) -> Result<AnyReceiver> {
        match side {
            Side::Pigeon => Ok(AnyReceiver::Pigeon(
                pigeon::connect(dialer, addr, account, None, inline).await?,
            )),
            Side::Mosquitto => {
                let (conn, _, _) = mqtt::connect(dialer, addr, format!("pb-r{i}"), false).await?;
                Ok(AnyReceiver::Mqtt(conn))
            }
        }
    }

    /// Receive until `until`; returns the recorder.
    pub async fn run(self, mut recorder: Recorder, until: ReceiveUntil) -> Result<Recorder> {
        match self {
            AnyReceiver::Pigeon(s) => {
                pigeon::receive(s, &mut recorder, until).await?;
            }
            AnyReceiver::Mqtt(c) => mqtt::receive(c, &mut recorder, until).await?,
        }
        Ok(recorder)
    }

    /// Receive on a task of its own.
    pub fn spawn(self, recorder: Recorder, until: ReceiveUntil) -> JoinHandle<Result<Recorder>> {
        tokio::spawn(self.run(recorder, until))
    }
}

/// Connect the receivers of `side`: pigeon token logins, or MQTT
/// persistent sessions (`clean_session = false`) subscribed to their inbox.
pub async fn open_receivers(
    ctx: &Ctx,
    side: Side,
    receivers: &[Account],
    subscribe: bool,
) -> Result<Vec<AnyReceiver>> {
    match side {
        Side::Pigeon => Ok(ctx
            .pigeon_sessions(receivers, Role::Receiver)
            .await?
            .into_iter()
            .map(AnyReceiver::Pigeon)
            .collect()),
        Side::Mosquitto => {
            let n = receivers.len();
            let conns: Vec<Result<mqtt::Conn>> =
                futures_util::stream::iter((0..n).map(|i| async move {
                    let (mut conn, _, _) =
                        mqtt::connect(&ctx.dialer, ctx.mqtt, format!("pb-r{i}"), false).await?;
                    if subscribe {
                        mqtt::subscribe(&mut conn, mqtt::inbox(i)).await?;
                    }
                    Ok(conn)
                }))
                .buffered(ctx.connect_concurrency.max(1))
                .collect()
                .await;
            conns
                .into_iter()
                .map(|c| c.map(AnyReceiver::Mqtt))
                .collect()
        }
    }
}

/// Wait for every receiver; returns their merged record.
pub async fn join_receivers(
    tasks: Vec<JoinHandle<Result<Recorder>>>,
    track: bool,
) -> Result<Recorder> {
    let mut all = Recorder::new(track);
    let mut failures = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok(r) => all.merge(r),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.context(format!("{failures} receivers failed")));
    }
    Ok(all)
}

/// A counter of deliveries shared by one run's receivers.
pub fn counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

/// Make every receiver's queue empty before a measurement: pigeon pulls and
/// acks its backlog; MQTT drops any stored session (clean connect), then
/// makes a persistent one and subscribes.
pub async fn reset_receivers(ctx: &Ctx, side: Side, receivers: &[Account]) -> Result<()> {
    match side {
        Side::Pigeon => {
            let sessions = ctx.pigeon_sessions(receivers, Role::Receiver).await?;
            let deadline = ctx.deadline(Duration::from_secs(120));
            let tasks: Vec<_> = sessions
                .into_iter()
                .map(|s| {
                    let backlog = s.login.max_seq.saturating_sub(s.login.acked_seq);
                    let until = ReceiveUntil {
                        stop: CancellationToken::new(),
                        deadline,
                        bodies: Some(backlog),
                    };
                    AnyReceiver::Pigeon(s).spawn(Recorder::new(false), until)
                })
                .collect();
            join_receivers(tasks, false).await?;
        }
        Side::Mosquitto => {
            let n = receivers.len();
            let done: Vec<Result<()>> = futures_util::stream::iter((0..n).map(|i| async move {
                let id = format!("pb-r{i}");
                let (conn, _, _) = mqtt::connect(&ctx.dialer, ctx.mqtt, id.clone(), true).await?;
                mqtt::disconnect(conn).await?;
                let (mut conn, _, _) = mqtt::connect(&ctx.dialer, ctx.mqtt, id, false).await?;
                mqtt::subscribe(&mut conn, mqtt::inbox(i)).await?;
                mqtt::disconnect(conn).await
            }))
            .buffered(ctx.connect_concurrency.max(1))
            .collect()
            .await;
            done.into_iter().collect::<Result<Vec<()>>>()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_splits_the_servers_cpu_per_unit_of_work_by_thread() {
        // This test process stands in for the server: its own threads are
        // read from /proc like pigeond's.
        let pid = std::process::id();
        let meter = Meter::start(Some(pid)).unwrap();
        let before = sys::sample(pid).unwrap().cpu_secs;
        // Spin until the kernel has counted 3 ticks more; bounded by 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while sys::sample(pid).unwrap().cpu_secs < before + 0.03 && Instant::now() < deadline {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let mut f = Figures::default();
        meter.finish(&mut f, Some(("deliveries", 1000))).unwrap();
        let total =
            f.0.iter()
                .find(|(n, _)| n == "server_cpu_us_per_deliveries");
        let total = total.map(|(_, v)| *v).unwrap();
        assert!(total >= 30.0, "{f:?}");
        let threads: Vec<f64> =
            f.0.iter()
                .filter(|(n, _)| n.starts_with("server_cpu_us_per_deliveries["))
                .map(|(_, v)| *v)
                .collect();
        assert!(!threads.is_empty(), "{f:?}");
        assert!(threads.iter().sum::<f64>() <= total + 1e-6, "{f:?}");
        assert!(f.0.iter().any(|(n, _)| n == "bench_cpu_us_per_deliveries"));
    }
}
