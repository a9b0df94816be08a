//! Reconnect delays for relay clients (push forwards, pulls): exponential from a floor to
//! a ceiling, jittered so that clients that failed together (an upstream restarting)
//! do not all come back in the same instant.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays between attempts: each step doubles up to the ceiling, and the delay is
/// drawn between half the step and the whole step ("equal jitter"), so it is never
/// more than the ceiling nor less than half the floor.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Delays from `min` up to `max` (a `max` below `min` means `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), step: min }
    }

    /// The delay before the next attempt; the one after will be about twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(unit_random())
    }

    /// Back to the floor, after an attempt that worked.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

/// A number in [0, 1) from the standard library's randomly keyed hasher (no dependency
/// for a few bits of jitter; not for anything secret).
fn unit_random() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_bounds_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut b = Backoff::new(min, max);
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(d >= step / 2 && d <= step, "{d:?} outside [{:?}, {step:?}]", step / 2);
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn delays_are_jittered() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay());
        }
        assert!(seen.len() > 10, "only {} distinct delays of 20", seen.len());
    }
}
