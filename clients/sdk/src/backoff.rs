//! Reconnect delays: exponential backoff with full jitter.
//!
//! A small pure state machine; the caller supplies the randomness, so tests
//! are deterministic with a seeded rng. Owns no timers and no I/O.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "full jitter": the n-th delay is uniform in
/// `[0, min(cap, base * factor^n)]`. Spreads a crowd of clients that lost the
/// same server over the whole window instead of letting them return in waves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    factor: u32,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 200 ms, doubling, capped at 30 s.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(200), 2, Duration::from_secs(30))
    }
}

impl Backoff {
    /// A backoff starting at `base`, multiplied by `factor` (at least 1) per
    /// attempt, never above `cap`.
    pub fn new(base: Duration, factor: u32, cap: Duration) -> Backoff {
        Backoff {
            base,
            factor: factor.max(1),
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay: `min(cap, base * factor^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let growth = self.factor.checked_pow(self.attempt).unwrap_or(u32::MAX);
        self.base
            .checked_mul(growth)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The next delay (uniform in `[0, ceiling]`), and one step of growth.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        if ceiling < self.cap {
            self.attempt = self.attempt.saturating_add(1);
        }
        let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// How many delays were handed out since the last reset (stops counting
    /// once the cap is reached).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Start over from `base`, e.g. after a connection that stayed up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(200), 2, Duration::from_secs(30))
    }

    #[test]
    fn delays_stay_within_zero_and_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = backoff();
        for _ in 0..100 {
            let ceiling = b.ceiling();
            let delay = b.next_delay(&mut rng);
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
        }
    }

    #[test]
    fn ceiling_doubles_per_attempt() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = backoff();
        let mut ceilings = Vec::new();
        for _ in 0..5 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(ceilings, [200, 400, 800, 1600, 3200]);
    }

    #[test]
    fn ceiling_is_capped_and_never_overflows() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = backoff();
        for _ in 0..1000 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        // Counting stops at the cap, so huge attempt counts cannot overflow.
        assert!(b.attempt() < 20, "{}", b.attempt());
    }

    #[test]
    fn reset_returns_to_the_base() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = backoff();
        for _ in 0..6 {
            b.next_delay(&mut rng);
        }
        assert!(b.ceiling() > Duration::from_millis(200));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(200));
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(200));
    }

    #[test]
    fn jitter_spreads_delays_over_the_window() {
        let mut rng = StdRng::seed_from_u64(4);
        let delays: Vec<_> = (0..200)
            .map(|_| Backoff::default().next_delay(&mut rng).as_millis())
            .collect();
        assert!(delays.iter().any(|d| *d < 50));
        assert!(delays.iter().any(|d| *d > 150));
    }

    #[test]
    fn same_seed_gives_same_delays() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut b = backoff();
            (0..10).map(|_| b.next_delay(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
    }

    #[test]
    fn factor_of_zero_is_treated_as_constant_backoff() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut b = Backoff::new(Duration::from_millis(100), 0, Duration::from_secs(1));
        for _ in 0..10 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
