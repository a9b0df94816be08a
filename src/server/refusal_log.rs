//! Logs refused connections without letting a flood of them flood the log: the first
//! refusal at once, then at most one line a second saying how many were left out.
//! Every refusal is still counted under its reason (`/metrics`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// Shortest time between two refusal lines.
const EVERY: Duration = Duration::from_secs(1);

/// One log's rate limit.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// Logs (or counts as left out) a refused connection from `peer` over `transport`.
    pub(super) fn refused(
        &self,
        transport: &str,
        peer: std::net::SocketAddr,
        reason: &dyn std::fmt::Display,
    ) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, left_out) = &mut *st;
        if last.is_some_and(|t| now.duration_since(t) < EVERY) {
            *left_out += 1;
            return;
        }
        let also = std::mem::take(left_out);
        *last = Some(now);
        drop(st);
        if also > 0 {
            warn!(%peer, %reason, also_refused = also, "{transport} connection refused (and {also} more since the last line)");
        } else {
            warn!(%peer, %reason, "{transport} connection refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_once_a_second() {
        let log = RefusalLog::default();
        let peer = "127.0.0.1:1".parse().unwrap();
        for _ in 0..1000 {
            log.refused("tcp", peer, &"limit");
        }
        let st = log.state.lock().unwrap();
        assert_eq!(st.1, 999, "all but the first left out until a second passed");
    }
}
