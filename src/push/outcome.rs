//! What came of one delivery attempt, and when to try again.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, RETRY_AFTER};
use rand::Rng;

/// The longest Retry-After honoured; a provider asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The result of one attempt, as the worker acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the notification.
    Delivered,
    /// Worth trying again: 429, 5xx, a timeout, a connection error, an
    /// expired credential. `after` is the provider's Retry-After.
    Retry {
        /// The provider's Retry-After, if it gave one.
        after: Option<Duration>,
        /// Short, for logs (never a token).
        reason: String,
    },
    /// The provider says the device token is dead for good.
    TokenRejected {
        /// Short, for logs.
        reason: String,
    },
    /// Refused for a reason retrying will not fix (a bad payload, a bad
    /// topic, a misconfigured credential).
    Failed {
        /// Short, for logs.
        reason: String,
    },
}

impl Outcome {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::TokenRejected { .. } => "token_rejected",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// A retryable outcome with no Retry-After.
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            after: None,
            reason: reason.into(),
        }
    }
}

/// The Retry-After header as a duration: delta-seconds or an HTTP date
/// (relative to `now`), capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let after = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(after.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter: a uniformly random delay in
/// `[0, min(cap, base * 2^(attempt - 1))]` for the `attempt`th retry
/// (1-based). Full jitter spreads the retries of many devices that failed
/// together (a provider outage) instead of stampeding back in step.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = backoff_ceiling(attempt, base, cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=millis))
}

/// The upper bound of [`backoff`] for the `attempt`th retry.
pub fn backoff_ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    base.saturating_mul(1u32 << doublings.min(31)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_spreads_below_it() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff_ceiling(1, base, cap), Duration::from_secs(1));
        assert_eq!(backoff_ceiling(3, base, cap), Duration::from_secs(4));
        assert_eq!(backoff_ceiling(7, base, cap), Duration::from_secs(60));
        assert_eq!(backoff_ceiling(500, base, cap), Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff(5, base, cap, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(16)));
        // Full jitter: the delays cover the range, not one point.
        assert!(delays.iter().any(|d| *d < Duration::from_secs(2)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(14)));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
    }
}
