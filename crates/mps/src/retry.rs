//! The one retry policy of outbound calls: exponential backoff up to a cap, full jitter, and a
//! bound on attempts. Vendor push, webhooks, the e-mail channel and ingestion reconnects each
//! configure it with their own first delay, cap and attempts.

use std::time::Duration;

/// The shortest wait unless the ceiling is shorter: a reconnect loop never spins.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// When to try again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the wait after the first failure; doubled per failure.
    first: Duration,
    /// The largest ceiling, however many failures.
    cap: Duration,
    /// Tries in all, the first included; `None` tries for ever (a consumer reconnecting).
    attempts: Option<u32>,
}

impl Backoff {
    /// At most `attempts` tries, waiting from `first` up to `cap` between them.
    pub const fn new(first: Duration, cap: Duration, attempts: u32) -> Backoff {
        Backoff {
            first,
            cap,
            attempts: Some(attempts),
        }
    }

    /// Tries for ever, waiting from `first` up to `cap` between them.
    pub const fn unbounded(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            attempts: None,
        }
    }

    /// Whether to stop after failed attempt `failures` (from 1).
    pub fn gives_up(&self, failures: u32) -> bool {
        self.attempts.is_some_and(|attempts| failures >= attempts)
    }

    /// The wait after failed attempt `failures` (from 1): drawn evenly up to `first` doubled
    /// per earlier failure and capped (full jitter), so that many nodes retrying together
    /// spread out instead of arriving in waves.
    pub fn delay(&self, failures: u32) -> Duration {
        self.ceiling(failures)
            .mul_f64(rand::random::<f64>())
            .max(MIN_WAIT.min(self.ceiling(failures)))
    }

    fn ceiling(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(1 << failures.saturating_sub(1).min(30))
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let backoff = Backoff::new(100 * MS, 1000 * MS, 5);
        let ceilings: Vec<_> = (1..=6).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(backoff.ceiling(u32::MAX), 1000 * MS);
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let backoff = Backoff::unbounded(200 * MS, 5000 * MS);
        for failures in [1, 2, 5, 10, 1000] {
            let ceiling = backoff.ceiling(failures);
            let delays: Vec<_> = (0..200).map(|_| backoff.delay(failures)).collect();
            assert!(delays.iter().all(|d| *d >= MIN_WAIT && *d <= ceiling));
            // Full jitter: the draws spread over the whole range, not one point.
            assert!(delays.iter().any(|d| *d < ceiling / 2));
            assert!(delays.iter().any(|d| *d > ceiling / 2));
        }
    }

    #[test]
    fn tiny_delays_stay_within_their_cap() {
        let backoff = Backoff::new(Duration::ZERO, Duration::ZERO, 2);
        assert_eq!(backoff.delay(1), Duration::ZERO);
        let backoff = Backoff::new(Duration::from_micros(10), Duration::from_micros(10), 2);
        assert!(backoff.delay(3) <= Duration::from_micros(10));
    }

    #[test]
    fn attempts_stop() {
        let backoff = Backoff::new(MS, MS, 3);
        assert!(!backoff.gives_up(1));
        assert!(!backoff.gives_up(2));
        assert!(backoff.gives_up(3));
        assert!(!Backoff::unbounded(MS, MS).gives_up(u32::MAX));
    }
}
