//! The push worker: one task that pulls due jobs from the [`Outbox`] and
//! hands each to its provider, at most `push.concurrency` in flight per
//! provider, one at a time per device.
//!
//! It sleeps until the outbox says a job was written, a retry it scheduled
//! comes due, a delivery finishes, or `push.poll_interval` passes (which
//! catches retries scheduled by an earlier process). Time comes from
//! tokio's monotonic clock anchored to the wall clock at start, so a wall
//! clock step does not make the worker spin or stall.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Push;
use crate::metrics::{Metrics, PUSH_PROVIDERS};

use super::outcome::{backoff, Outcome};
use super::payload::Notice;
use super::{Outbox, Provider, Providers, PushJob, PushTarget};

/// Jobs asked of the outbox per round beyond those already in flight.
const FETCH_EXTRA: usize = 256;

/// The worker's rules, from `[push]`.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `push.alert_title`.
    pub alert_title: String,
    /// `push.content_preview`.
    pub content_preview: bool,
    /// `push.coalesce_window`.
    pub coalesce_window: Duration,
    /// `push.concurrency`, per provider.
    pub concurrency: usize,
    /// `push.backoff_base`.
    pub backoff_base: Duration,
    /// `push.backoff_cap`.
    pub backoff_cap: Duration,
    /// `push.max_attempts`.
    pub max_attempts: u32,
    /// `push.poll_interval`.
    pub poll_interval: Duration,
    /// How long deliveries in flight get to finish at shutdown before they
    /// are abandoned (their jobs stay in the outbox for the next start).
    pub shutdown_grace: Duration,
}

impl WorkerSettings {
    /// The settings of a `[push]` section.
    pub fn from_config(push: &Push) -> WorkerSettings {
        WorkerSettings {
            alert_title: push.alert_title.clone(),
            content_preview: push.content_preview,
            coalesce_window: push.coalesce_window,
            concurrency: push.concurrency,
            backoff_base: push.backoff_base,
            backoff_cap: push.backoff_cap,
            max_attempts: push.max_attempts,
            poll_interval: push.poll_interval,
            shutdown_grace: push.request_timeout,
        }
    }
}

/// Wall-clock milliseconds that advance with tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    /// Anchored now.
    pub fn start() -> Clock {
        Clock {
            wall_ms: crate::clock::now_ms(),
            start: Instant::now(),
        }
    }

    /// Now, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.wall_ms + self.start.elapsed().as_millis() as u64
    }

    /// The tokio instant of a wall-clock ms.
    fn instant(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms.saturating_sub(self.wall_ms))
    }
}

type DeviceKey = (u64, String);

/// What a finished delivery tells the loop.
struct Finished {
    key: DeviceKey,
    provider: Provider,
    /// The provider accepted a push now (starts the coalesce window).
    pushed: bool,
    /// A retry was scheduled for this time.
    retry_at: Option<u64>,
    /// The outbox failed to record the outcome: leave the device alone
    /// until then rather than retry in a tight loop.
    hold_until: Option<u64>,
}

/// What every delivery task shares.
struct Shared<O> {
    outbox: Arc<O>,
    providers: Arc<Providers>,
    settings: WorkerSettings,
    metrics: Arc<Metrics>,
    clock: Clock,
}

/// Run until `shutdown`; then give deliveries in flight
/// `settings.shutdown_grace` to finish.
pub async fn run<O: Outbox>(
    outbox: Arc<O>,
    providers: Arc<Providers>,
    settings: WorkerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        outbox,
        providers,
        settings,
        metrics,
        clock: Clock::start(),
    });
    let mut state = State::default();
    tracing::info!(
        apns = shared.providers.apns.is_some(),
        fcm = shared.providers.fcm.is_some(),
        webhook = shared.providers.webhook.is_some(),
        "push worker started"
    );
    loop {
        state.expire(shared.clock.now_ms(), shared.settings.coalesce_window);
        state.dispatch(&shared).await;
        let now = shared.clock.now_ms();
        let poll = now + shared.settings.poll_interval.as_millis() as u64;
        let wake = state
            .wakeups
            .peek()
            .map_or(poll, |Reverse(t)| (*t).min(poll));
        let wake = shared.clock.instant(wake);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = state.tasks.join_next_with_id() => state.finish(&shared, done),
            _ = shared.outbox.wait_for_work() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    state.drain(&shared).await;
    tracing::info!("push worker stopped");
}

#[derive(Default)]
struct State {
    tasks: JoinSet<Finished>,
    /// Devices with a delivery in flight, and which task has each.
    in_flight: HashSet<DeviceKey>,
    task_keys: HashMap<tokio::task::Id, (DeviceKey, Provider)>,
    per_provider: [usize; 3],
    /// When each device last got a push (for the coalesce window).
    last_push: HashMap<DeviceKey, u64>,
    /// Devices left alone until a time after an outbox error.
    holds: HashMap<DeviceKey, u64>,
    /// Times at which a job this worker scheduled comes due.
    wakeups: BinaryHeap<Reverse<u64>>,
}

impl State {
    fn expire(&mut self, now: u64, window: Duration) {
        let window = window.as_millis() as u64;
        while self.wakeups.peek().is_some_and(|Reverse(t)| *t <= now) {
            self.wakeups.pop();
        }
        self.last_push.retain(|_, at| *at + window > now);
        self.holds.retain(|_, until| *until > now);
    }

    fn free(&self, provider: Provider, concurrency: usize) -> bool {
        self.per_provider[provider as usize] < concurrency
    }

    /// Start deliveries for the due jobs there is room for.
    async fn dispatch<O: Outbox>(&mut self, shared: &Arc<Shared<O>>) {
        let concurrency = shared.settings.concurrency;
        if Provider::ALL.iter().all(|p| !self.free(*p, concurrency)) {
            return;
        }
        let now = shared.clock.now_ms();
        let limit = self.in_flight.len() + FETCH_EXTRA;
        let jobs = match shared.outbox.due(now, limit).await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "reading the push outbox failed; trying again later");
                return;
            }
        };
        let window = shared.settings.coalesce_window.as_millis() as u64;
        for job in jobs {
            let key = (job.user, job.device_id.clone());
            if self.in_flight.contains(&key) || self.holds.contains_key(&key) {
                continue;
            }
            if shared.outbox.is_online(job.user, &job.device_id) {
                shared.metrics.push.skip("online");
                record(shared.outbox.done(&job).await, "done (device online)");
                continue;
            }
            let Some(provider) = shared.providers.serving(&job.target) else {
                tracing::warn!(
                    user = job.user,
                    device = %job.device_id,
                    provider = Provider::of(&job.target).label(),
                    "push dropped: its provider is not configured"
                );
                shared.metrics.push.skip("unconfigured");
                record(shared.outbox.done(&job).await, "done (no provider)");
                continue;
            };
            if let Some(last) = self.last_push.get(&key) {
                let next = last + window;
                if next > now {
                    // Keep one push per window: this one goes when it ends,
                    // with whatever badge the job has by then.
                    shared.metrics.push.skip("coalesced");
                    let ok = record(
                        shared.outbox.retry(&job, next, job.attempts).await,
                        "deferring a coalesced push",
                    );
                    if ok {
                        self.wakeups.push(Reverse(next));
                    } else {
                        self.holds.insert(key, next);
                    }
                    continue;
                }
            }
            if !self.free(provider, concurrency) {
                continue;
            }
            self.start(shared, job, key, provider);
        }
    }

    fn start<O: Outbox>(
        &mut self,
        shared: &Arc<Shared<O>>,
        job: PushJob,
        key: DeviceKey,
        provider: Provider,
    ) {
        self.per_provider[provider as usize] += 1;
        self.in_flight.insert(key.clone());
        shared.metrics.push.started(provider as usize);
        let task = deliver(shared.clone(), job, key.clone(), provider);
        let handle = self.tasks.spawn(task);
        self.task_keys.insert(handle.id(), (key, provider));
    }

    fn finish<O: Outbox>(
        &mut self,
        shared: &Shared<O>,
        done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some((key, provider)) = self.task_keys.remove(&id) else {
            return;
        };
        self.per_provider[provider as usize] -= 1;
        self.in_flight.remove(&key);
        shared.metrics.push.ended(provider as usize);
        let finished = match done {
            Ok((_, finished)) => finished,
            Err(error) => {
                // A panic in a delivery is a bug; the job stays in the outbox.
                tracing::error!(%error, user = key.0, "a push delivery task failed");
                let until = shared.clock.now_ms() + shared.settings.backoff_cap.as_millis() as u64;
                self.holds.insert(key, until);
                self.wakeups.push(Reverse(until));
                return;
            }
        };
        debug_assert!(finished.key == key && finished.provider == provider);
        let now = shared.clock.now_ms();
        if finished.pushed {
            self.last_push.insert(finished.key.clone(), now);
        }
        if let Some(at) = finished.retry_at {
            self.wakeups.push(Reverse(at));
        }
        if let Some(until) = finished.hold_until {
            self.holds.insert(finished.key, until);
            self.wakeups.push(Reverse(until));
        }
    }

    /// Let deliveries in flight finish within the grace period, then
    /// abandon the rest (their jobs stay in the outbox).
    async fn drain<O: Outbox>(&mut self, shared: &Shared<O>) {
        let grace = tokio::time::sleep(shared.settings.shutdown_grace);
        tokio::pin!(grace);
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = &mut grace => {
                    tracing::warn!(
                        in_flight = self.tasks.len(),
                        "push deliveries abandoned at shutdown; they are retried at the next start"
                    );
                    self.tasks.shutdown().await;
                    break;
                }
                Some(done) = self.tasks.join_next_with_id() => self.finish(shared, done),
            }
        }
        // Aborted tasks were not finished above.
        for (_, (_, provider)) in self.task_keys.drain() {
            shared.metrics.push.ended(provider as usize);
        }
    }
}

/// Log a failed outbox write; returns whether it succeeded.
fn record(result: Result<(), crate::store::StoreError>, what: &str) -> bool {
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, what, "the push outbox refused a write");
            false
        }
    }
}

/// One delivery: send, then record the outcome in the outbox.
async fn deliver<O: Outbox>(
    shared: Arc<Shared<O>>,
    job: PushJob,
    key: DeviceKey,
    provider: Provider,
) -> Finished {
    let settings = &shared.settings;
    let notice = Notice::for_job(&job, &settings.alert_title, settings.content_preview);
    let started = Instant::now();
    let now = shared.clock.now_ms();
    let outcome = shared.providers.deliver(&job, &notice, now).await;
    shared.metrics.push.attempt(
        provider as usize,
        outcome.label(),
        started.elapsed().as_secs_f64(),
    );
    let mut finished = Finished {
        key,
        provider,
        pushed: false,
        retry_at: None,
        hold_until: None,
    };
    let now = shared.clock.now_ms();
    let fields = (job.user, job.device_id.as_str(), provider.label());
    let written = match &outcome {
        Outcome::Delivered => {
            tracing::debug!(
                user = fields.0,
                device = fields.1,
                provider = fields.2,
                badge = job.badge,
                "push delivered"
            );
            finished.pushed = true;
            shared.outbox.done(&job).await
        }
        Outcome::TokenRejected { reason } => {
            tracing::info!(user = fields.0, device = fields.1, provider = fields.2, %reason, "push token rejected; removing it");
            shared.outbox.token_rejected(&job).await
        }
        Outcome::Failed { reason } => {
            tracing::warn!(user = fields.0, device = fields.1, provider = fields.2, %reason, "push refused; dropping it");
            shared.outbox.done(&job).await
        }
        Outcome::Retry { after, reason } => {
            let attempts = job.attempts.saturating_add(1);
            if attempts >= settings.max_attempts {
                tracing::warn!(user = fields.0, device = fields.1, provider = fields.2, attempts, %reason, "push failed too often; dropping it");
                shared.metrics.push.skip("gave_up");
                shared.outbox.done(&job).await
            } else {
                let delay = after.unwrap_or_else(|| {
                    backoff(
                        attempts,
                        settings.backoff_base,
                        settings.backoff_cap,
                        &mut rand::rng(),
                    )
                });
                let at = now + delay.as_millis() as u64;
                tracing::debug!(user = fields.0, device = fields.1, provider = fields.2, attempts, delay_ms = delay.as_millis() as u64, %reason, "push will be retried");
                finished.retry_at = Some(at);
                shared.outbox.retry(&job, at, attempts).await
            }
        }
    };
    if !record(written, outcome.label()) {
        let hold = settings.backoff_cap.min(Duration::from_secs(30));
        finished.hold_until = Some(now + hold.as_millis() as u64);
    }
    finished
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 3] = [Provider::Apns, Provider::Fcm, Provider::Webhook];

    /// The provider a target goes to.
    pub fn of(target: &PushTarget) -> Provider {
        match target {
            PushTarget::Apns { .. } => Provider::Apns,
            PushTarget::Fcm { .. } => Provider::Fcm,
            PushTarget::Webhook => Provider::Webhook,
        }
    }

    /// The metrics and log label.
    pub fn label(self) -> &'static str {
        PUSH_PROVIDERS[self as usize]
    }
}
