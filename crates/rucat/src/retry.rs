//! Exponential back-off with jitter, for everything that waits for the store or the platform
//! API to come back.

use std::time::Duration;

/// Waits that double from `initial` up to `max`, each shortened by up to a quarter at random so
/// that many processes retrying together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; each call doubles the one after.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(wait)
    }

    /// The wait before attempt `failures + 1`, for a caller that keeps the count itself (a
    /// failure count kept with an engine): `initial` doubled `failures` times, capped at `max`,
    /// with the same jitter.
    pub fn nth(initial: Duration, max: Duration, failures: u32) -> Duration {
        let doublings = failures.min(32);
        let wait = initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(max)
            .min(max);
        jitter(wait)
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Shortens `wait` by up to a quarter at random.
fn jitter(wait: Duration) -> Duration {
    // A uuid v4 carries 122 random bits; a few of them are plenty of jitter.
    let random = (uuid::Uuid::new_v4().as_u128() & 0xffff) as u32;
    wait - wait / 4 * random / 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
        let nominal = [100, 200, 400, 800, 1000, 1000];
        for (wait, nominal) in waits.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *wait <= nominal && *wait >= nominal * 3 / 4,
                "{wait:?} vs {nominal:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn the_nth_wait_doubles_from_the_count_up_to_the_cap() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(60));
        for (failures, nominal) in [
            (0, 100),
            (1, 200),
            (3, 800),
            (20, 60_000),
            (u32::MAX, 60_000),
        ] {
            let wait = Backoff::nth(initial, max, failures);
            let nominal = Duration::from_millis(nominal);
            assert!(
                wait <= nominal && wait >= nominal * 3 / 4,
                "{failures}: {wait:?}"
            );
        }
    }
}
