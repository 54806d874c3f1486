//! Counters, gauges and histograms of one server, rendered as Prometheus
//! text (exposition format 0.0.4) for the admin listener's `/metrics`.
//!
//! Only observes: nothing here changes what the server does, and every
//! recording is one or two relaxed atomic operations, so the hot paths pay
//! no lock. Every label is bounded by construction: request kinds, error
//! codes and platforms are fixed enums of the protocol, never user input,
//! user ids or device ids. Hand-written rather than a metrics crate: the
//! handful of series here do not justify a registry, and the text format is
//! simple.
//!
//! Values that live elsewhere (sessions by platform in the registry, the
//! committer's counters, the store's size) are read at scrape time and
//! passed to [`Metrics::render`] in a [`Scrape`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use pigeon_protocol::{Body, Envelope, ErrorCode, Platform};
use prost::Message as _;

/// Bytes of a frame's length prefix.
const LENGTH_PREFIX: u64 = 4;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtract one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed bucket bounds (upper bounds, ascending).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound plus the +Inf bucket; not cumulative (rendering sums).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending upper bounds; +Inf is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Record one value.
    pub fn observe(&self, value: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // A lost race only retries; the loop ends because each round either
        // wins or sees a newer sum.
        let mut current = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        self.render_series(out, name, "");
    }

    /// The series of one histogram of a labelled family (`labels` like
    /// `provider="apns"`, or empty); the header is written once by the caller.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(bound) => format!("{bound}"),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        // The count is the +Inf bucket, so the two always agree in one scrape.
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }
}

/// Push providers, as metric labels (the index is the push module's
/// `Provider as usize`).
pub const PUSH_PROVIDERS: [&str; 3] = ["apns", "fcm", "webhook"];
/// Outcomes of a push attempt, as metric labels.
pub const PUSH_OUTCOMES: [&str; 4] = ["delivered", "retry", "token_rejected", "failed"];
/// Why a due push was not attempted, or was dropped without success.
pub const PUSH_SKIPS: [&str; 4] = ["online", "unconfigured", "gave_up", "coalesced"];
/// Seconds per provider request.
const PUSH_LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Offline push: attempts by provider and outcome, skips, latency.
#[derive(Debug)]
pub struct PushMetrics {
    attempts: [[Counter; PUSH_OUTCOMES.len()]; PUSH_PROVIDERS.len()],
    skipped: [Counter; PUSH_SKIPS.len()],
    latency: [Histogram; PUSH_PROVIDERS.len()],
    in_flight: [Gauge; PUSH_PROVIDERS.len()],
}

impl Default for PushMetrics {
    fn default() -> Self {
        PushMetrics {
            attempts: Default::default(),
            skipped: Default::default(),
            latency: std::array::from_fn(|_| Histogram::new(PUSH_LATENCY_BOUNDS)),
            in_flight: Default::default(),
        }
    }
}

impl PushMetrics {
    /// One attempt at `provider` (an index into [`PUSH_PROVIDERS`]) with
    /// this outcome label, taking `seconds`. Unknown labels are not counted.
    pub fn attempt(&self, provider: usize, outcome: &str, seconds: f64) {
        let Some(o) = PUSH_OUTCOMES.iter().position(|x| *x == outcome) else {
            return;
        };
        if let (Some(row), Some(latency)) =
            (self.attempts.get(provider), self.latency.get(provider))
        {
            row[o].inc();
            latency.observe(seconds);
        }
    }

    /// A delivery to `provider` (an index into [`PUSH_PROVIDERS`]) started.
    pub fn started(&self, provider: usize) {
        if let Some(g) = self.in_flight.get(provider) {
            g.inc();
        }
    }

    /// A delivery to `provider` ended (however it ended).
    pub fn ended(&self, provider: usize) {
        if let Some(g) = self.in_flight.get(provider) {
            g.dec();
        }
    }

    /// Deliveries in flight to `provider` (a label).
    pub fn in_flight(&self, provider: &str) -> i64 {
        PUSH_PROVIDERS
            .iter()
            .position(|x| *x == provider)
            .map_or(0, |p| self.in_flight[p].get())
    }

    /// Attempts counted for `provider` and `outcome` (labels).
    pub fn attempts(&self, provider: &str, outcome: &str) -> u64 {
        let p = PUSH_PROVIDERS.iter().position(|x| *x == provider);
        let o = PUSH_OUTCOMES.iter().position(|x| *x == outcome);
        match (p, o) {
            (Some(p), Some(o)) => self.attempts[p][o].get(),
            _ => 0,
        }
    }

    /// Count a job not attempted (or dropped) for `reason`, one of [`PUSH_SKIPS`].
    pub fn skip(&self, reason: &str) {
        if let Some(i) = PUSH_SKIPS.iter().position(|x| *x == reason) {
            self.skipped[i].inc();
        }
    }

    /// Jobs skipped for `reason`.
    pub fn skips(&self, reason: &str) -> u64 {
        PUSH_SKIPS
            .iter()
            .position(|x| *x == reason)
            .map_or(0, |i| self.skipped[i].get())
    }

    fn render(&self, o: &mut String) {
        header(
            o,
            "pigeon_push_attempts_total",
            "Push deliveries tried, by provider and outcome.",
            "counter",
        );
        for (provider, row) in PUSH_PROVIDERS.iter().zip(&self.attempts) {
            for (outcome, n) in PUSH_OUTCOMES.iter().zip(row) {
                let _ = writeln!(
                    o,
                    "pigeon_push_attempts_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {}",
                    n.get()
                );
            }
        }
        header(
            o,
            "pigeon_push_skipped_total",
            "Due pushes not sent: device online, provider not configured, \
             attempts exhausted, or deferred to keep one push per coalesce window.",
            "counter",
        );
        for (reason, n) in PUSH_SKIPS.iter().zip(&self.skipped) {
            let _ = writeln!(
                o,
                "pigeon_push_skipped_total{{reason=\"{reason}\"}} {}",
                n.get()
            );
        }
        header(
            o,
            "pigeon_push_in_flight",
            "Push deliveries in flight, by provider.",
            "gauge",
        );
        for (provider, g) in PUSH_PROVIDERS.iter().zip(&self.in_flight) {
            let _ = writeln!(
                o,
                "pigeon_push_in_flight{{provider=\"{provider}\"}} {}",
                g.get()
            );
        }
        header(
            o,
            "pigeon_push_latency_seconds",
            "Seconds per push provider request, by provider.",
            "histogram",
        );
        for (provider, h) in PUSH_PROVIDERS.iter().zip(&self.latency) {
            h.render_series(
                o,
                "pigeon_push_latency_seconds",
                &format!("provider=\"{provider}\""),
            );
        }
    }
}

/// Ops per group commit.
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Seconds per store sync.
const FLUSH_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The request kinds counted (the protocol's client requests).
const REQUEST_KINDS: [&str; 26] = [
    "register",
    "login",
    "logout",
    "ping",
    "send",
    "pull",
    "ack",
    "group_create",
    "group_add",
    "group_remove",
    "group_leave",
    "group_dissolve",
    "group_list",
    "group_members",
    "group_set_role",
    "group_pull",
    "conversations",
    "read",
    "read_count",
    "recall",
    "devices",
    "revoke_device",
    "typing",
    "presence",
    "push_token",
    "app_state",
];
/// Error codes above this share the last slot, labelled "other".
const ERROR_SLOTS: usize = 32;

/// What the server counts itself. One per server (tests run several in one
/// process, so this is not a global).
#[derive(Debug)]
pub struct Metrics {
    /// Connections accepted (before TLS).
    pub connections_accepted: Counter,
    /// Connections open now, logged in or not.
    pub connections_open: Gauge,
    /// Logins that succeeded.
    pub logins: Counter,
    /// Logins refused (bad credentials, disabled user, bad request).
    pub login_failures: Counter,
    /// Notify frames written (after coalescing).
    pub notifies: Counter,
    /// Queue and timeline entries carried inside Notify and GroupNotify
    /// frames (not pulled).
    pub inline_messages: Counter,
    /// Kick frames written.
    pub kicks: Counter,
    /// Frame bytes read (length prefix included; not TLS overhead).
    pub bytes_in: Counter,
    /// Frame bytes written (length prefix included; not TLS overhead).
    pub bytes_out: Counter,
    /// Ops per group commit.
    pub batch_ops: Histogram,
    /// Seconds per store sync of a batch with sends.
    pub flush_seconds: Histogram,
    /// Offline push.
    pub push: PushMetrics,
    requests: [Counter; REQUEST_KINDS.len()],
    errors: [Counter; ERROR_SLOTS],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_accepted: Counter::default(),
            connections_open: Gauge::default(),
            logins: Counter::default(),
            login_failures: Counter::default(),
            notifies: Counter::default(),
            inline_messages: Counter::default(),
            kicks: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            batch_ops: Histogram::new(BATCH_BOUNDS),
            flush_seconds: Histogram::new(FLUSH_BOUNDS),
            push: PushMetrics::default(),
            requests: Default::default(),
            errors: std::array::from_fn(|_| Counter::default()),
        }
    }
}

/// Keeps a connection counted in `connections_open` while it lives.
#[derive(Debug)]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// Values read from elsewhere at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Logged-in sessions per platform (the protocol's platform numbers).
    pub sessions_by_platform: Vec<(i32, u64)>,
    /// Committer: batches applied.
    pub commit_batches: u64,
    /// Committer: syncs (batches with a send).
    pub commit_syncs: u64,
    /// Committer: sends applied (duplicates included).
    pub commit_sends: u64,
    /// Jobs waiting for the writer thread.
    pub commit_queue: u64,
    /// Committer: times a small batch waited for more writes.
    pub commit_lingers: u64,
    /// Devices whose pull acknowledgement waits for the ack writer.
    pub acks_waiting: u64,
    /// Queue entries across all users, if the store answered.
    pub queue_entries: Option<u64>,
    /// Message bodies, if the store answered.
    pub bodies: Option<u64>,
    /// Bytes the store uses on disk, if it answered.
    pub store_bytes: Option<u64>,
    /// Compactions of the store since start.
    pub compactions: crate::store::CompactionTotals,
    /// The store's write-ahead log.
    pub wal: crate::store::WalTotals,
    /// Whether the server is ready (see `/readyz`).
    pub ready: bool,
}

impl Metrics {
    /// Count one request of `kind` (unknown kinds are not counted, so the
    /// label stays bounded).
    pub fn request(&self, kind: &str) {
        if let Some(i) = REQUEST_KINDS.iter().position(|k| *k == kind) {
            self.requests[i].inc();
        }
    }

    /// A frame read from a client: its bytes and its request kind.
    pub fn frame_in(&self, envelope: &Envelope) {
        self.bytes_in
            .add(envelope.encoded_len() as u64 + LENGTH_PREFIX);
        // Only client request kinds are counted (see REQUEST_KINDS).
        if let Some(body) = &envelope.body {
            self.request(body.name());
        }
    }

    /// A frame about to be written: its bytes, and notifies, kicks and
    /// errors by code.
    pub fn frame_out(&self, envelope: &Envelope) {
        self.bytes_out
            .add(envelope.encoded_len() as u64 + LENGTH_PREFIX);
        match &envelope.body {
            Some(Body::Notify(n)) => {
                self.notifies.inc();
                self.inline_messages.add(n.messages.len() as u64);
            }
            Some(Body::GroupNotify(n)) => self.inline_messages.add(n.messages.len() as u64),
            Some(Body::Kick(_)) => self.kicks.inc(),
            Some(Body::Error(e)) => self.error(e.code),
            _ => {}
        }
    }

    /// Count a new connection as accepted and open; it stays open until the
    /// guard drops (however the connection's task ends).
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_accepted.inc();
        self.connections_open.inc();
        OpenConnection(self.clone())
    }

    /// Requests counted of `kind`.
    pub fn requests(&self, kind: &str) -> u64 {
        REQUEST_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.requests[i].get())
    }

    /// Count one error frame sent with wire code `code`.
    pub fn error(&self, code: i32) {
        let slot = usize::try_from(code)
            .unwrap_or(ERROR_SLOTS - 1)
            .min(ERROR_SLOTS - 1);
        self.errors[slot].inc();
    }

    /// Everything as Prometheus text.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        counter(
            o,
            "pigeon_connections_accepted_total",
            "TCP connections accepted.",
            self.connections_accepted.get(),
        );
        gauge(
            o,
            "pigeon_connections_open",
            "Connections open, logged in or not.",
            self.connections_open.get(),
        );
        header(
            o,
            "pigeon_sessions",
            "Logged-in sessions by platform.",
            "gauge",
        );
        for platform in 1..=6 {
            let n = scrape
                .sessions_by_platform
                .iter()
                .find(|(p, _)| *p == platform)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(
                o,
                "pigeon_sessions{{platform=\"{}\"}} {n}",
                platform_label(platform)
            );
        }
        header(
            o,
            "pigeon_logins_total",
            "Login attempts by result.",
            "counter",
        );
        let _ = writeln!(
            o,
            "pigeon_logins_total{{result=\"ok\"}} {}",
            self.logins.get()
        );
        let _ = writeln!(
            o,
            "pigeon_logins_total{{result=\"failed\"}} {}",
            self.login_failures.get()
        );
        header(
            o,
            "pigeon_requests_total",
            "Client requests by kind.",
            "counter",
        );
        for (kind, n) in REQUEST_KINDS.iter().zip(&self.requests) {
            let _ = writeln!(o, "pigeon_requests_total{{kind=\"{kind}\"}} {}", n.get());
        }
        counter(
            o,
            "pigeon_notifies_total",
            "Notify frames written (after coalescing).",
            self.notifies.get(),
        );
        counter(
            o,
            "pigeon_notify_inline_messages_total",
            "Queue and timeline entries sent inside Notify and GroupNotify frames, so not pulled.",
            self.inline_messages.get(),
        );
        counter(
            o,
            "pigeon_kicks_total",
            "Kick frames written.",
            self.kicks.get(),
        );
        counter(
            o,
            "pigeon_bytes_in_total",
            "Frame bytes read from clients.",
            self.bytes_in.get(),
        );
        counter(
            o,
            "pigeon_bytes_out_total",
            "Frame bytes written to clients.",
            self.bytes_out.get(),
        );
        header(
            o,
            "pigeon_errors_total",
            "Error frames sent, by wire code.",
            "counter",
        );
        for (code, n) in self.errors.iter().enumerate() {
            let n = n.get();
            if n > 0 {
                let _ = writeln!(
                    o,
                    "pigeon_errors_total{{code=\"{}\"}} {n}",
                    error_label(code)
                );
            }
        }
        counter(
            o,
            "pigeon_commit_batches_total",
            "Group-commit batches applied.",
            scrape.commit_batches,
        );
        counter(
            o,
            "pigeon_commit_syncs_total",
            "Store syncs (batches holding a send).",
            scrape.commit_syncs,
        );
        counter(
            o,
            "pigeon_stored_sends_total",
            "Sends applied by the writer (duplicates included).",
            scrape.commit_sends,
        );
        gauge(
            o,
            "pigeon_commit_queue_depth",
            "Writes waiting for the writer thread.",
            scrape.commit_queue as i64,
        );
        counter(
            o,
            "pigeon_commit_lingers_total",
            "Small batches that waited messaging.commit_linger_us for more writes.",
            scrape.commit_lingers,
        );
        gauge(
            o,
            "pigeon_acks_waiting",
            "Devices whose pull acknowledgement waits for the ack writer.",
            scrape.acks_waiting as i64,
        );
        self.batch_ops
            .render(o, "pigeon_commit_batch_ops", "Ops per group commit.");
        self.flush_seconds.render(
            o,
            "pigeon_commit_flush_seconds",
            "Seconds per durable store sync.",
        );
        if let Some(n) = scrape.queue_entries {
            gauge(
                o,
                "pigeon_queue_entries",
                "Queue entries across all users (refreshed at most every 15 s).",
                n as i64,
            );
        }
        if let Some(n) = scrape.bodies {
            gauge(
                o,
                "pigeon_message_bodies",
                "Stored message bodies (refreshed at most every 15 s).",
                n as i64,
            );
        }
        if let Some(n) = scrape.store_bytes {
            gauge(
                o,
                "pigeon_store_disk_bytes",
                "Bytes the store uses on disk.",
                n as i64,
            );
        }
        counter(
            o,
            "pigeon_store_compactions_total",
            "Compactions of the store (files rewritten to give space back).",
            scrape.compactions.count,
        );
        seconds_counter(
            o,
            "pigeon_store_compaction_pause_seconds_total",
            "Seconds writes waited for compactions.",
            scrape.compactions.writes_paused_ms,
        );
        gauge(
            o,
            "pigeon_wal_replayed_records",
            "Write-ahead log records replayed when the store was opened (0 after a clean stop).",
            scrape.wal.replayed_at_open as i64,
        );
        counter(
            o,
            "pigeon_wal_checkpoints_total",
            "Checkpoints: the store's files made durable behind the write-ahead log.",
            scrape.wal.checkpoints,
        );
        seconds_counter(
            o,
            "pigeon_wal_checkpoint_seconds_total",
            "Seconds the checkpoints took.",
            scrape.wal.checkpoint_ms,
        );
        gauge(
            o,
            "pigeon_wal_segment_bytes",
            "Bytes in the write-ahead log segment being written.",
            scrape.wal.segment_bytes as i64,
        );
        gauge(
            o,
            "pigeon_wal_direct_io",
            "1 if the write-ahead log writes with O_DIRECT and O_DSYNC, 0 if it appends and fdatasyncs.",
            i64::from(scrape.wal.direct),
        );
        let name = "pigeon_commit_phase_seconds_total";
        header(
            o,
            name,
            "Seconds the committer spent on batches under the write-ahead log, by phase; \
             their summed rate is how busy the one writer is.",
            "counter",
        );
        for (phase, micros) in [
            ("work", scrape.wal.work_us),
            ("log", scrape.wal.log_us),
            ("apply", scrape.wal.apply_us),
        ] {
            let seconds = micros as f64 / 1e6;
            let _ = writeln!(o, "{name}{{phase=\"{phase}\"}} {seconds}");
        }
        self.push.render(o);
        gauge(
            o,
            "pigeon_ready",
            "1 when /readyz answers 200.",
            i64::from(scrape.ready),
        );
        out
    }
}

/// The label of a protocol platform number ("ios", "android", ...).
pub fn platform_label(platform: i32) -> &'static str {
    match Platform::try_from(platform) {
        Ok(Platform::Ios) => "ios",
        Ok(Platform::Android) => "android",
        Ok(Platform::Web) => "web",
        Ok(Platform::Desktop) => "desktop",
        Ok(Platform::MiniProgram) => "mini_program",
        Ok(Platform::Cli) => "cli",
        _ => "unspecified",
    }
}

fn error_label(slot: usize) -> String {
    if slot == ERROR_SLOTS - 1 {
        return "other".to_owned();
    }
    match i32::try_from(slot)
        .ok()
        .and_then(|c| ErrorCode::try_from(c).ok())
    {
        Some(code) => code.as_str_name().to_ascii_lowercase(),
        None => format!("code_{slot}"),
    }
}

// Every `let _ = writeln!(out, ...)` in this file writes to a String,
// which cannot fail; the result is ignored for that reason only.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

/// A counter of seconds kept in milliseconds.
fn seconds_counter(out: &mut String, name: &str, help: &str, millis: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {}", millis as f64 / 1000.0);
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_the_count() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 56.5\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
    }

    #[test]
    fn push_series_carry_provider_and_outcome_labels() {
        let m = Metrics::default();
        m.push.attempt(0, "delivered", 0.02);
        m.push.attempt(1, "retry", 3.0);
        m.push.attempt(7, "delivered", 1.0); // no such provider: ignored
        m.push.attempt(0, "exploded", 1.0); // no such outcome: ignored
        m.push.skip("online");
        m.push.started(2);
        let text = m.render(&Scrape::default());
        assert!(text
            .contains("pigeon_push_attempts_total{provider=\"apns\",outcome=\"delivered\"} 1\n"));
        assert!(text.contains("pigeon_push_attempts_total{provider=\"fcm\",outcome=\"retry\"} 1\n"));
        assert!(text.contains("pigeon_push_skipped_total{reason=\"online\"} 1\n"));
        assert!(text.contains("pigeon_push_in_flight{provider=\"webhook\"} 1\n"));
        assert!(
            text.contains("pigeon_push_latency_seconds_bucket{provider=\"apns\",le=\"0.025\"} 1\n")
        );
        assert!(text.contains("pigeon_push_latency_seconds_count{provider=\"fcm\"} 1\n"));
        assert_eq!(
            text.matches("# TYPE pigeon_push_latency_seconds ").count(),
            1
        );
        assert!(!text.contains("exploded"));
    }

    #[test]
    fn labels_stay_bounded() {
        let m = Metrics::default();
        m.request("send");
        m.request("made-up kind");
        m.error(6);
        m.error(9_999);
        m.error(-1);
        assert_eq!(m.requests("send"), 1);
        let text = m.render(&Scrape::default());
        assert!(text.contains("pigeon_requests_total{kind=\"send\"} 1"));
        assert!(!text.contains("made-up"));
        assert!(text.contains("pigeon_errors_total{code=\"auth_failed\"} 1"));
        assert!(text.contains("pigeon_errors_total{code=\"other\"} 2"));
        assert!(text.contains("pigeon_sessions{platform=\"ios\"} 0"));
    }
}
