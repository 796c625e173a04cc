//! How long a failed job waits before its next attempt.

use std::time::Duration;

/// Exponential backoff with equal jitter: attempt `n` waits a random time in
/// `[ceiling(n) / 2, ceiling(n)]`, where `ceiling(n) = min(cap, base * 2^(n-1))`. The jitter
/// spreads out retries of many jobs that failed together; the floor keeps a schedule's
/// length predictable, so a kind's promise ("retries span at least 24 h") holds for every
/// draw ([`Backoff::min_span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The longest wait after `attempt` (1-based) failed attempts.
    pub fn ceiling(self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait in `[ceiling(attempt) / 2, ceiling(attempt)]`.
    pub fn delay(self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::random_range(ceiling / 2..=ceiling))
    }

    /// The shortest time from the first failure to the last attempt of a job with
    /// `max_attempts` attempts that fails every time: the sum of the shortest waits.
    pub fn min_span(self, max_attempts: u32) -> Duration {
        (1..max_attempts).map(|attempt| self.ceiling(attempt) / 2).sum()
    }
}
