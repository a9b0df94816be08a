//! Reconnect delays for relay links: exponential from `min` to `max`, with jitter so that
//! the edges of a failed origin do not all come back in the same instant.

use std::time::Duration;

/// Delays between attempts; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// xorshift state: jitter needs no quality, only spread between nodes and streams.
    seed: u64,
}

impl Backoff {
    /// Delays from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Self { min, max: max.max(min), next: min, seed }
    }

    /// The delay before the next attempt: the current step, minus up to a quarter of it.
    pub fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = step.mul_f64((self.seed % 1000) as f64 / 4000.0);
        step - jitter
    }

    /// Back to the shortest delay (the link worked).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_bound_with_at_most_a_quarter_off() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut b = Backoff::new(min, max);
        let steps: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (d, step) in steps.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            let step = Duration::from_millis(step);
            assert!(*d <= step && *d >= step * 3 / 4, "{d:?} vs {step:?}");
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
