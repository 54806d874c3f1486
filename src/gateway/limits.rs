//! Rate limits at the edge: token buckets per connection (requests, sends),
//! failed-login limits per account name and per peer address, and a cap on
//! TLS handshakes in progress per peer address.
//!
//! Every table here is bounded: when one fills up, the oldest half of its
//! entries is forgotten, which only ever makes a limit more lenient.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most keys a [`FailureLimiter`] or [`HandshakeGate`] remembers.
const TABLE_CAP: usize = 100_000;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Take one token, or say how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// Counts failures per key in a sliding window and blocks a key that has
/// too many, until the window passes.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl FailureLimiter {
    /// Allow `max_failures` per `window` per key.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        FailureLimiter {
            max_failures,
            window,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Ok if the key may try now; else how long until it may.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let keys = self.keys.lock().expect("limiter lock is never poisoned");
        let Some(w) = keys.get(key) else {
            return Ok(());
        };
        let ends = w.started + self.window;
        if w.failures >= self.max_failures && now < ends {
            Err(ends - now)
        } else {
            Ok(())
        }
    }

    /// Record a failure for the key.
    pub fn failed(&self, key: &str, now: Instant) {
        let mut keys = self.keys.lock().expect("limiter lock is never poisoned");
        if keys.len() >= TABLE_CAP && !keys.contains_key(key) {
            forget_oldest_half(&mut keys, |w| w.started);
        }
        let w = keys.entry(key.to_owned()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= w.started + self.window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }

    /// Forget the key's failures (after a success).
    pub fn succeeded(&self, key: &str) {
        self.keys
            .lock()
            .expect("limiter lock is never poisoned")
            .remove(key);
    }
}

fn forget_oldest_half<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    age: impl Fn(&V) -> Instant,
) {
    let mut started: Vec<Instant> = map.values().map(&age).collect();
    started.sort_unstable();
    let cutoff = started[started.len() / 2];
    map.retain(|_, v| age(v) > cutoff);
}

/// Caps TLS handshakes in progress per peer address, so one address
/// cannot tie up the accept path with connections that never finish.
#[derive(Debug, Clone)]
pub struct HandshakeGate {
    max_per_ip: u32,
    in_progress: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// Holds one handshake slot; frees it when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    ip: IpAddr,
    gate: HandshakeGate,
}

impl HandshakeGate {
    /// At most `max_per_ip` handshakes in progress per address.
    pub fn new(max_per_ip: u32) -> Self {
        HandshakeGate {
            max_per_ip,
            in_progress: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for a handshake from `ip`, or None if it has too many already.
    pub fn enter(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        let mut map = self
            .in_progress
            .lock()
            .expect("gate lock is never poisoned");
        let count = map.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            ip,
            gate: self.clone(),
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut map = self
            .gate
            .in_progress
            .lock()
            .expect("gate lock is never poisoned");
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, t0);
        for _ in 0..3 {
            bucket.take(t0).unwrap();
        }
        let wait = bucket.take(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        bucket.take(t0 + Duration::from_millis(100)).unwrap();
        assert!(bucket.take(t0 + Duration::from_millis(100)).is_err());
        // Idle time refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            bucket.take(later).unwrap();
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn failures_block_a_key_for_the_rest_of_the_window() {
        let t0 = Instant::now();
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            limiter.check("alice", t0).unwrap();
            limiter.failed("alice", t0);
        }
        let wait = limiter
            .check("alice", t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        limiter.check("bob", t0).unwrap();
        limiter
            .check("alice", t0 + Duration::from_secs(60))
            .unwrap();
        limiter.failed("alice", t0 + Duration::from_secs(61));
        limiter
            .check("alice", t0 + Duration::from_secs(61))
            .unwrap();
        limiter.succeeded("alice");
        assert!(limiter.keys.lock().unwrap().is_empty());
    }

    #[test]
    fn handshake_slots_are_capped_per_address_and_freed_on_drop() {
        let gate = HandshakeGate::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = gate.enter(a).unwrap();
        let _s2 = gate.enter(a).unwrap();
        assert!(gate.enter(a).is_none());
        assert!(gate.enter(b).is_some());
        drop(s1);
        assert!(gate.enter(a).is_some());
    }
}
