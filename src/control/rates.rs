//! Bitrates in and out per stream and per player, from the hub's byte counters sampled
//! once a second: the media path only adds to counters, and the rate arithmetic happens
//! here, off it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::hub::StreamInfo;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Sample {
    bytes: u64,
    at: Instant,
    /// Bits per second over the last interval.
    bps: u64,
}

impl Sample {
    /// The next sample of a counter now at `bytes`; a counter that went backwards (a
    /// new stream entry under the same name) starts over.
    fn next(prev: Option<&Sample>, bytes: u64, at: Instant) -> Sample {
        let bps = match prev {
            Some(p) if bytes >= p.bytes && at > p.at => {
                let secs = (at - p.at).as_secs_f64();
                ((bytes - p.bytes) as f64 * 8.0 / secs) as u64
            }
            _ => 0,
        };
        Sample { bytes, at, bps }
    }
}

#[derive(Debug, Default)]
struct State {
    streams_in: HashMap<String, Sample>,
    streams_out: HashMap<String, Sample>,
    players: HashMap<u64, Sample>,
}

/// The latest rates. Readers take a short lock on a small map.
#[derive(Debug, Default)]
pub struct Rates {
    state: Mutex<State>,
}

impl Rates {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a sample of every stream and player; streams and players that are gone
    /// are forgotten.
    pub fn sample(&self, streams: &[StreamInfo], at: Instant) {
        let mut st = self.state();
        let mut streams_in = HashMap::with_capacity(streams.len());
        let mut streams_out = HashMap::with_capacity(streams.len());
        let mut players = HashMap::new();
        for s in streams {
            let id = &s.session_id;
            streams_in.insert(id.clone(), Sample::next(st.streams_in.get(id), s.bytes_in, at));
            streams_out.insert(id.clone(), Sample::next(st.streams_out.get(id), s.bytes_out, at));
            for p in &s.players {
                if let Some(peer) = &p.peer {
                    players.insert(peer.id, Sample::next(st.players.get(&peer.id), p.bytes_sent, at));
                }
            }
        }
        *st = State { streams_in, streams_out, players };
    }

    /// Bits per second into and out of `session_id` over the last sample interval.
    pub fn stream(&self, session_id: &str) -> (u64, u64) {
        let st = self.state();
        let rate = |m: &HashMap<String, Sample>| m.get(session_id).map_or(0, |s| s.bps);
        (rate(&st.streams_in), rate(&st.streams_out))
    }

    /// Bits per second to player `id`.
    pub fn player(&self, id: u64) -> u64 {
        self.state().players.get(&id).map_or(0, |s| s.bps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_bits_over_the_interval_and_restarts_on_a_reset() {
        let t0 = Instant::now();
        let a = Sample::next(None, 1000, t0);
        assert_eq!(a.bps, 0);
        let b = Sample::next(Some(&a), 1000 + 125_000, t0 + Duration::from_secs(1));
        assert_eq!(b.bps, 1_000_000);
        let c = Sample::next(Some(&b), 10, t0 + Duration::from_secs(2));
        assert_eq!(c.bps, 0, "a counter that went backwards is a new one");
    }
}
