//! The message body every workload sends, and the receiving side's record
//! of it: a 20-byte header (intended send time, sender, sequence), padded to
//! the requested size, so a receiver can measure latency and find lost or
//! duplicated messages without any shared state with the sender.
//!
//! ```text
//! 0        8        12       20                 size
//! +--------+--------+--------+------ ... -------+
//! | t (ns) | sender | n      | 'x' padding      |
//! +--------+--------+--------+------ ... -------+
//! ```
//!
//! t is the time the schedule meant the message to leave, in nanoseconds
//! since the Unix epoch (so a receiver can tell this run's messages from a
//! backlog an earlier run left): recording against it (not against when it
//! really left) is what corrects for coordinated omission.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Bytes of header at the start of each body.
pub const HEADER: usize = 20;

/// A monotonic instant and the Unix time (ns) it stands for.
fn anchor() -> (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970");
        (Instant::now(), unix.as_nanos() as u64)
    })
}

/// Unix time in ns of the monotonic instant `at` (monotonic within a run).
pub fn nanos_at(at: Instant) -> u64 {
    let (base, unix) = anchor();
    if at >= base {
        unix + (at - base).as_nanos() as u64
    } else {
        unix - (base - at).as_nanos() as u64
    }
}

/// A body of `size` bytes (at least the header) meant to leave at `at`.
pub fn make(size: usize, at: Instant, sender: u32, n: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(size.max(HEADER));
    body.put_u64(nanos_at(at));
    body.put_u32(sender);
    body.put_u64(n);
    body.resize(size.max(HEADER), b'x');
    body.freeze()
}

/// (intended send time in ns since epoch, sender, n), if `body` has a header.
pub fn parse(body: &[u8]) -> Option<(u64, u32, u64)> {
    let header = body.get(..HEADER)?;
    let t = u64::from_be_bytes(header[0..8].try_into().ok()?);
    let sender = u32::from_be_bytes(header[8..12].try_into().ok()?);
    let n = u64::from_be_bytes(header[12..20].try_into().ok()?);
    Some((t, sender, n))
}

/// A new latency histogram in microseconds: 1 µs to 10 minutes, 3 digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one receiver saw: deliveries, latencies, and (when asked) duplicates.
pub struct Recorder {
    /// Send → received latency, µs (allocated at the first sample: an idle
    /// connection's recorder must stay small).
    latency: Option<Histogram<u64>>,
    /// Every body received, stale ones included.
    pub received: u64,
    /// Bodies received that were meant to leave at or after `record_from_ns`.
    pub delivered: u64,
    /// Bodies seen before (only counted when tracking is on).
    pub duplicates: u64,
    /// Bodies without a header.
    pub malformed: u64,
    /// Only bodies meant to leave from this Unix time (ns) on count: older
    /// ones are a warm-up or an earlier run's backlog.
    pub record_from_ns: u64,
    /// Also count deliveries here (shared by all receivers of a run).
    pub counter: Option<Arc<AtomicU64>>,
    /// Bodies meant to leave from this Unix time (ns) on go to a second
    /// histogram (`latency_late`): one run, two phases.
    pub split_from_ns: u64,
    late: Option<Histogram<u64>>,
    seen: Option<HashSet<(u32, u64)>>,
    /// Deliveries by intended send time, when asked (`--timeline`).
    pub timeline: Option<Timeline>,
}

/// Deliveries by intended send time in buckets of [`Timeline::BUCKET_MS`]
/// from the recorder's `record_from_ns`: whether slow deliveries come in
/// bursts (a stall) or spread out (queueing).
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Per bucket: deliveries, deliveries slower than [`Timeline::SLOW_US`],
    /// and the slowest, µs.
    pub buckets: Vec<[u64; 3]>,
}

impl Timeline {
    /// Bucket width.
    pub const BUCKET_MS: u64 = 100;
    /// What counts as slow.
    pub const SLOW_US: u64 = 10_000;
    /// Buckets kept at most (10 minutes).
    const MAX_BUCKETS: usize = 6_000;

    fn record(&mut self, since_ns: u64, micros: u64) {
        let i = (since_ns / (Self::BUCKET_MS * 1_000_000)) as usize;
        if i >= Self::MAX_BUCKETS {
            return;
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, [0; 3]);
        }
        let b = &mut self.buckets[i];
        b[0] += 1;
        b[1] += u64::from(micros > Self::SLOW_US);
        b[2] = b[2].max(micros);
    }

    fn merge(&mut self, other: &Timeline) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), [0; 3]);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
            mine[2] = mine[2].max(theirs[2]);
        }
    }
}

impl Recorder {
    /// A recorder; `track` keeps every (sender, n) to find duplicates.
    pub fn new(track: bool) -> Recorder {
        Recorder {
            latency: None,
            received: 0,
            delivered: 0,
            duplicates: 0,
            malformed: 0,
            record_from_ns: 0,
            counter: None,
            split_from_ns: u64::MAX,
            late: None,
            seen: track.then(HashSet::new),
            timeline: None,
        }
    }

    /// A recorder counting only bodies meant to leave from `from` on, and
    /// adding each to `counter`.
    pub fn counting(track: bool, from: Instant, counter: &Arc<AtomicU64>) -> Recorder {
        let mut r = Recorder::new(track);
        r.record_from_ns = nanos_at(from);
        r.counter = Some(counter.clone());
        r
    }

    /// Note one received body.
    pub fn on_body(&mut self, body: &[u8]) {
        let now = nanos_at(Instant::now());
        self.received += 1;
        let Some((t, sender, n)) = parse(body) else {
            self.malformed += 1;
            return;
        };
        if t < self.record_from_ns {
            return;
        }
        self.delivered += 1;
        if let Some(counter) = &self.counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(seen) = &mut self.seen {
            if !seen.insert((sender, n)) {
                self.duplicates += 1;
            }
        }
        let micros = now.saturating_sub(t) / 1000;
        if let Some(timeline) = &mut self.timeline {
            timeline.record(t - self.record_from_ns, micros);
        }
        let into = if t >= self.split_from_ns {
            &mut self.late
        } else {
            &mut self.latency
        };
        into.get_or_insert_with(histogram)
            .saturating_record(micros.max(1));
    }

    /// The latency of bodies meant to leave from `split_from_ns` on.
    pub fn latency_late(&self) -> Histogram<u64> {
        self.late.clone().unwrap_or_else(histogram)
    }

    /// The latency histogram (empty if nothing was recorded).
    pub fn latency(&self) -> Histogram<u64> {
        self.latency.clone().unwrap_or_else(histogram)
    }

    /// Distinct (sender, n) seen, when tracking.
    pub fn distinct(&self) -> Option<usize> {
        self.seen.as_ref().map(HashSet::len)
    }

    /// Fold another receiver's record into this one.
    pub fn merge(&mut self, other: Recorder) {
        if let Some(theirs) = &other.latency {
            self.latency
                .get_or_insert_with(histogram)
                .add(theirs)
                .expect("histograms with the same bounds");
        }
        if let Some(theirs) = &other.late {
            self.late
                .get_or_insert_with(histogram)
                .add(theirs)
                .expect("histograms with the same bounds");
        }
        if let Some(theirs) = &other.timeline {
            self.timeline
                .get_or_insert_with(Timeline::default)
                .merge(theirs);
        }
        self.received += other.received;
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.malformed += other.malformed;
        if let (Some(mine), Some(theirs)) = (&mut self.seen, other.seen) {
            // Receivers have disjoint senders in every workload, so a merge
            // only unions; duplicates were counted per receiver.
            mine.extend(theirs);
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarise a µs histogram.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_pads() {
        let at = Instant::now();
        let body = make(100, at, 7, 42);
        assert_eq!(body.len(), 100);
        assert_eq!(parse(&body), Some((nanos_at(at), 7, 42)));
        assert_eq!(make(3, at, 1, 1).len(), HEADER);
        assert_eq!(parse(b"short"), None);
    }

    #[test]
    fn recorder_counts_duplicates() {
        let mut r = Recorder::new(true);
        let body = make(30, Instant::now(), 1, 1);
        r.on_body(&body);
        r.on_body(&body);
        r.on_body(&make(30, Instant::now(), 1, 2));
        assert_eq!((r.delivered, r.duplicates, r.distinct()), (3, 1, Some(2)));
    }

    #[test]
    fn timeline_buckets_by_due_time_and_merges() {
        let ms = 1_000_000;
        let mut a = Timeline::default();
        a.record(5 * ms, 2_000);
        a.record(250 * ms, 30_000);
        a.record(260 * ms, 11_000);
        let mut b = Timeline::default();
        b.record(50 * ms, 12_000);
        // Past the last bucket: dropped, not a panic or a huge allocation.
        b.record(u64::MAX, 1);
        a.merge(&b);
        assert_eq!(a.buckets, [[2, 1, 12_000], [0, 0, 0], [2, 2, 30_000]]);
    }
}
