//! Who publishes a stream, sans-IO (times are passed in): nobody, an active publisher, or
//! nobody for a while — the grace after a publisher went away, during which its players
//! stay and a new publisher resumes the stream.
//!
//! ```text
//!            claim                 lost (players attached, grace > 0)
//!   Free ───────────► Active ──────────────────────────────────► Grace
//!    ▲                 │ ▲  claim by a takeover (Takeover::Now, or     │
//!    │ finish, lost    │ └─ IfSilent and no media for the threshold)  │ claim: resume
//!    │ (no grace)      │                                             │
//!    └─────────────────┘◄────────────── expire (deadline) ───────────┘
//! ```
//!
//! Each claim gets a new generation; a publisher's handle carries its own, so the handle
//! of a publisher that was replaced can neither send into the stream nor end it. A claim
//! made with credentials remembers whose they were ([`Owner`]), so that the same owner may
//! replace its own publisher at once.

use std::time::{Duration, Instant};

/// Whether a publish may replace the current publisher of its session ID. The session
/// layer decides: without credentials only a silent publisher may be replaced; a request
/// that presents the current publisher's own credentials may replace it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Never: a second publisher is refused while the first holds the session ID.
    Never,
    /// When the current publisher sent no media for the hub's takeover threshold
    /// (`publisher_takeover_ms`; never when that is 0).
    IfSilent,
    /// The request presents these credentials: it replaces a publisher that presented
    /// the same at once, any other as [`Takeover::IfSilent`]; the new claim remembers them.
    SameOwner(Owner),
    /// At once (the requester is known to own the stream).
    Now,
}

/// Whose credentials a claim was made with: a keyed hash of them ([`crate::hub::Hub::owner`]),
/// so the hub keeps no secret and compares in constant size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub(super) u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Active { generation: u64, last_media: Instant, owner: Option<Owner> },
    Grace { generation: u64, since: Instant, until: Instant },
}

/// How a claim was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claimed {
    /// Nobody published: a new stream (it needs a publisher slot).
    Fresh,
    /// A publisher in grace is succeeded, this long after it went away.
    Resumed(Duration),
    /// An active publisher is replaced; it had been silent this long.
    TookOver(Duration),
}

/// What became of a claim whose publisher went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lost {
    /// It was no longer the current claim (replaced): nothing changes.
    NotCurrent,
    /// The stream ended.
    Ended,
    /// The stream waits for a new publisher until then.
    Grace(Instant),
}

/// A stream's publisher claim.
#[derive(Debug)]
pub(super) struct Claim {
    state: State,
    /// The last generation handed out.
    generation: u64,
}

impl Default for Claim {
    fn default() -> Self {
        Self { state: State::Free, generation: 0 }
    }
}

impl Claim {
    /// Whether a publish now would be granted, and how (nothing changes yet).
    /// `silence` is the takeover threshold for [`Takeover::IfSilent`] (zero: never).
    pub(super) fn decide(&self, now: Instant, takeover: Takeover, silence: Duration) -> Option<Claimed> {
        match self.state {
            State::Free => Some(Claimed::Fresh),
            State::Grace { since, .. } => Some(Claimed::Resumed(now.saturating_duration_since(since))),
            State::Active { last_media, owner, .. } => {
                let silent = now.saturating_duration_since(last_media);
                let is_silent = !silence.is_zero() && silent >= silence;
                let replace = match takeover {
                    Takeover::Never => false,
                    Takeover::IfSilent => is_silent,
                    Takeover::SameOwner(o) => owner == Some(o) || is_silent,
                    Takeover::Now => true,
                };
                replace.then_some(Claimed::TookOver(silent))
            }
        }
    }

    /// Grants the claim [`Claim::decide`] allowed: a new active publisher, owned by the
    /// credentials `takeover` carried, if any. Returns its generation.
    pub(super) fn commit(&mut self, now: Instant, takeover: Takeover) -> u64 {
        self.generation += 1;
        let owner = match takeover {
            Takeover::SameOwner(o) => Some(o),
            _ => None,
        };
        self.state = State::Active { generation: self.generation, last_media: now, owner };
        self.generation
    }

    /// The current publisher's generation, if one is active.
    pub(super) fn active(&self) -> Option<u64> {
        match self.state {
            State::Active { generation, .. } => Some(generation),
            _ => None,
        }
    }

    /// Whether a stream is claimed in grace.
    pub(super) fn in_grace(&self) -> bool {
        matches!(self.state, State::Grace { .. })
    }

    /// Media from publisher `generation`: `false` if it is not the active one (its frame
    /// must be ignored).
    pub(super) fn media(&mut self, generation: u64, now: Instant) -> bool {
        match &mut self.state {
            State::Active { generation: g, last_media, .. } if *g == generation => {
                *last_media = now;
                true
            }
            _ => false,
        }
    }

    /// Publisher `generation` went away without ending its stream; `grace` is how long
    /// its stream waits for a successor (zero: it ends now).
    pub(super) fn lose(&mut self, generation: u64, now: Instant, grace: Duration) -> Lost {
        if self.active() != Some(generation) {
            return Lost::NotCurrent;
        }
        if grace.is_zero() {
            self.state = State::Free;
            return Lost::Ended;
        }
        let until = now + grace;
        self.state = State::Grace { generation, since: now, until };
        Lost::Grace(until)
    }

    /// Publisher `generation` ended its stream: `true` when it was the active one.
    pub(super) fn finish(&mut self, generation: u64) -> bool {
        let current = self.active() == Some(generation);
        if current {
            self.state = State::Free;
        }
        current
    }

    /// The grace of `generation` is over if `now` is past its deadline and nobody resumed
    /// meanwhile: `true` when the stream ended.
    pub(super) fn expire(&mut self, generation: u64, now: Instant) -> bool {
        match self.state {
            State::Grace { generation: g, until, .. } if g == generation && now >= until => {
                self.state = State::Free;
                true
            }
            _ => false,
        }
    }

    /// Ends a grace at once (the relay is shutting down): `true` when there was one.
    pub(super) fn end_grace(&mut self) -> bool {
        let grace = self.in_grace();
        if grace {
            self.state = State::Free;
        }
        grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_active_publisher_is_refused_until_it_is_silent_for_the_threshold() {
        let t0 = Instant::now();
        let mut c = Claim::default();
        assert_eq!(c.decide(t0, Takeover::IfSilent, 2000 * MS), Some(Claimed::Fresh));
        let g1 = c.commit(t0, Takeover::Never);
        assert!(c.media(g1, t0 + 500 * MS));
        assert_eq!(c.decide(t0 + 2499 * MS, Takeover::IfSilent, 2000 * MS), None, "still active");
        assert_eq!(c.decide(t0 + 2499 * MS, Takeover::Never, 2000 * MS), None);
        assert_eq!(c.decide(t0 + 2499 * MS, Takeover::Now, 2000 * MS), Some(Claimed::TookOver(1999 * MS)));
        assert_eq!(
            c.decide(t0 + 2500 * MS, Takeover::IfSilent, 2000 * MS),
            Some(Claimed::TookOver(2000 * MS))
        );
        assert_eq!(c.decide(t0 + 9000 * MS, Takeover::IfSilent, Duration::ZERO), None, "0 disables it");
        assert_eq!(c.decide(t0 + 9000 * MS, Takeover::Never, 2000 * MS), None);
    }

    #[test]
    fn the_same_owner_replaces_its_publisher_at_once_and_others_only_after_the_silence() {
        let t0 = Instant::now();
        let (alice, mallory) = (Owner(1), Owner(2));
        let mut c = Claim::default();
        c.commit(t0, Takeover::SameOwner(alice));
        let at = t0 + 10 * MS;
        assert_eq!(c.decide(at, Takeover::SameOwner(alice), 2000 * MS), Some(Claimed::TookOver(10 * MS)));
        assert_eq!(c.decide(at, Takeover::SameOwner(mallory), 2000 * MS), None, "other credentials");
        assert_eq!(c.decide(at, Takeover::IfSilent, 2000 * MS), None);
        let later = t0 + 2000 * MS;
        assert!(c.decide(later, Takeover::SameOwner(mallory), 2000 * MS).is_some(), "silent: as IfSilent");
        // A claim made without credentials has no owner to match.
        c.commit(later, Takeover::IfSilent);
        assert_eq!(c.decide(later, Takeover::SameOwner(alice), 2000 * MS), None);
    }

    #[test]
    fn a_replaced_publisher_can_neither_send_nor_end_the_stream() {
        let t0 = Instant::now();
        let mut c = Claim::default();
        let old = c.commit(t0, Takeover::Never);
        let new = c.commit(t0 + 3000 * MS, Takeover::Never);
        assert_ne!(old, new);
        assert!(!c.media(old, t0 + 3001 * MS));
        assert!(c.media(new, t0 + 3001 * MS));
        assert_eq!(c.lose(old, t0 + 3002 * MS, 5000 * MS), Lost::NotCurrent);
        assert!(!c.finish(old));
        assert_eq!(c.active(), Some(new));
    }

    #[test]
    fn a_lost_publisher_leaves_a_grace_that_a_successor_resumes_or_that_expires() {
        let t0 = Instant::now();
        let mut c = Claim::default();
        let g1 = c.commit(t0, Takeover::Never);
        assert_eq!(c.lose(g1, t0 + 100 * MS, 5000 * MS), Lost::Grace(t0 + 5100 * MS));
        assert!(c.in_grace());
        assert!(!c.media(g1, t0 + 200 * MS), "a lost publisher sends nothing more");
        assert!(!c.expire(g1, t0 + 5099 * MS), "not before the deadline");
        assert_eq!(
            c.decide(t0 + 1100 * MS, Takeover::Never, Duration::ZERO),
            Some(Claimed::Resumed(1000 * MS))
        );
        let g2 = c.commit(t0 + 1100 * MS, Takeover::Never);
        assert!(!c.expire(g1, t0 + 9000 * MS), "a resumed grace does not expire");
        assert_eq!(c.active(), Some(g2));

        assert_eq!(c.lose(g2, t0 + 2000 * MS, 5000 * MS), Lost::Grace(t0 + 7000 * MS));
        assert!(c.expire(g2, t0 + 7000 * MS));
        assert_eq!(c.decide(t0 + 7001 * MS, Takeover::Never, Duration::ZERO), Some(Claimed::Fresh));
    }

    #[test]
    fn no_grace_ends_at_once_and_finish_ends_regardless() {
        let t0 = Instant::now();
        let mut c = Claim::default();
        let g = c.commit(t0, Takeover::Never);
        assert_eq!(c.lose(g, t0, Duration::ZERO), Lost::Ended);
        let g = c.commit(t0, Takeover::Never);
        assert!(c.finish(g));
        assert!(!c.finish(g), "once");
        let g = c.commit(t0, Takeover::Never);
        c.lose(g, t0, 5000 * MS);
        assert!(c.end_grace());
        assert!(!c.end_grace());
        assert_eq!(c.decide(t0, Takeover::Never, Duration::ZERO), Some(Claimed::Fresh));
    }
}
