//! The hub: live streams by session ID (`app/stream_key`), their GOP caches, and bounded
//! fan-out to subscribers.
//!
//! One publisher per session ID. A player may subscribe before the publisher arrives: it
//! registers on the (empty) stream and waits for it to go live. The publisher never
//! waits on a subscriber: each subscriber has its own bounded queue and a subscriber
//! that falls behind skips to the next keyframe ([`subscriber`]).
//!
//! A publisher that goes away without unpublishing (its connection lost, or closed for
//! silence) leaves its players attached for `publisher_grace`; a new publisher on the
//! same session ID within it resumes the stream for them: its configuration first, then
//! its first keyframe, with timestamps shifted to follow what they had (`timeline.rs`).
//! A publisher silent for `publisher_takeover` may be replaced at once by a new one
//! ([`Takeover`], decided by the session layer; the claim machine is `claim.rs`).
//!
//! Locks, outermost first, each held only for in-memory updates: the hub map (which
//! stream is which session ID), a stream's publisher claim (held by its publisher over a
//! push, never by players), its cache and subscriber list (`stream.rs`), a subscriber's
//! queue. The hub lock is never held while a stream lock is taken: the map
//! is looked up (and the stream's user count changed, an atomic) under it, then dropped,
//! and only then is the stream locked. No lock but a subscriber's own queue lock is held
//! over a socket write (`subscriber.rs`).
//!
//! A [`LiveWatcher`] given at construction hears of every publish that starts (the
//! relay's push forwarding starts its forwards there, `relay::push`): one place that
//! sees every publisher, whatever brought it (an encoder, a relay upstream).

mod claim;
mod coalesce;
mod peer;
mod stream;
mod subscriber;
mod timeline;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use claim::{Owner, Takeover};
pub use peer::{Peer, PlayerInfo, PublisherInfo, StreamInfo};
pub use stream::{Publisher, StreamStats};
pub use subscriber::{DirectSink, Handback, QueueLimits, Subscriber};

use stream::Stream;

/// Hub settings.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Per-subscriber queue bounds.
    pub queue: QueueLimits,
    /// Largest GOP kept for late joiners, in bytes; a longer GOP is not cached (late
    /// joiners then wait for the next keyframe).
    pub max_gop_bytes: usize,
    /// Streams live at once; a publisher over this is refused.
    pub max_publishers: usize,
    /// How long a player that arrives before the publisher waits for it.
    pub play_wait: Duration,
    /// How long the players of a publisher that went away wait for a new one (zero: the
    /// stream ends at once).
    pub publisher_grace: Duration,
    /// A publisher that sent no media this long may be replaced by a new publish on its
    /// session ID ([`Takeover::IfSilent`]; zero: never).
    pub publisher_takeover: Duration,
    /// Longest a frame is held so that a stream's players get it in one write with the
    /// frames that follow (`coalesce.rs`); zero writes every frame at once. Zero by
    /// default here (a hub built alone, in tests, writes at once); the relay's
    /// configuration sets it (`write_coalesce_ms`).
    pub write_coalesce: Duration,
    /// A held batch of this many payload bytes is written at once.
    pub write_coalesce_bytes: usize,
    /// Video frames are held too (SRS's merged writes); otherwise a video frame goes at
    /// once with what was held before it.
    pub write_coalesce_video: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue: QueueLimits::default(),
            max_gop_bytes: 32 * 1024 * 1024,
            max_publishers: 1_000,
            play_wait: Duration::from_secs(30),
            publisher_grace: Duration::from_secs(5),
            publisher_takeover: Duration::from_secs(2),
            write_coalesce: Duration::ZERO,
            write_coalesce_bytes: 4096,
            write_coalesce_video: false,
        }
    }
}

/// Why the hub refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// Another publisher holds the session ID.
    #[error("session {0} already has a publisher")]
    AlreadyPublishing(String),
    /// The relay is at `max_publishers`.
    #[error("the relay is at its limit of {0} publishers")]
    TooManyPublishers(usize),
}

/// How often publishers came and went other than by a plain publish and unpublish, since
/// the hub started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherEvents {
    /// Publishers that went away leaving their players waiting (a grace started).
    pub graces: u64,
    /// Graces a new publisher ended by resuming the stream.
    pub resumed: u64,
    /// Graces that ran out: their players got the end of stream.
    pub expired: u64,
    /// Publishers replaced by a new one (a takeover).
    pub taken_over: u64,
}

/// [`PublisherEvents`] as they are counted.
#[derive(Debug, Default)]
struct EventCounters {
    graces: AtomicU64,
    resumed: AtomicU64,
    expired: AtomicU64,
    taken_over: AtomicU64,
}

/// A publish that just started, as a [`LiveWatcher`] hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// The session ID published.
    pub session_id: String,
    /// Relays the stream came through before this one: 0 when an encoder publishes here,
    /// one more per relay that forwarded it (`relay::hops`).
    pub hops: u32,
}

/// Hears of every publish that starts: once per publish, when its first frame arrives
/// and before that frame is fanned out, with no hub or stream lock held. A subscription
/// made from [`went_live`](LiveWatcher::went_live) therefore gets the whole publish, and
/// a publish that is refused after the hub's claim (by the cluster registry) and so
/// never sends anything is never announced. It runs on the publisher's task and must
/// not wait: spawn whatever takes time.
pub trait LiveWatcher: Send + Sync + fmt::Debug {
    /// `stream` went live on `hub`.
    fn went_live(&self, hub: &Hub, stream: &LiveStream);
}

/// Shared handle to the registry of live streams. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    config: HubConfig,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Publisher slots taken (live streams and streams in grace).
    publishers: AtomicUsize,
    events: Arc<EventCounters>,
    /// Shutting down: no more graces.
    closing: AtomicBool,
    /// Keys the hash of publishers' credentials ([`Hub::owner`]): random per hub, so a
    /// colliding credential cannot be made up front.
    owners: std::collections::hash_map::RandomState,
    /// Told of every publish that starts.
    watcher: Option<Arc<dyn LiveWatcher>>,
    /// The last [`Peer`] id handed out.
    peer_ids: AtomicU64,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig) -> Self {
        Self { inner: Arc::new(HubInner { config, ..HubInner::default() }) }
    }

    /// An empty hub whose publishes `watcher` hears of.
    pub fn with_watcher(config: HubConfig, watcher: Arc<dyn LiveWatcher>) -> Self {
        Self { inner: Arc::new(HubInner { config, watcher: Some(watcher), ..HubInner::default() }) }
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // mutation is a single insert/remove), so a poisoned lock is still usable.
        self.inner.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream entry for `session_id`, made if missing, with one more user counted.
    /// Hub lock held by the caller; the stream's own lock is not taken.
    fn entry(&self, streams: &mut HashMap<String, Arc<Stream>>, session_id: &str) -> Arc<Stream> {
        streams
            .entry(session_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Stream::new(session_id, self.inner.config, self.inner.events.clone()))
            })
            .clone()
    }

    /// Claims the session ID for a publisher, replacing a silent one
    /// ([`Takeover::IfSilent`]). See [`Hub::publish_with`].
    pub fn publish(&self, session_id: &str) -> Result<Publisher, HubError> {
        self.publish_with(session_id, Takeover::IfSilent, 0)
    }

    /// [`publish`](Self::publish) for a stream that came through `hops` relays already
    /// (what the [`LiveWatcher`] is told, so forwards can bound the chain).
    pub fn publish_relayed(&self, session_id: &str, hops: u32) -> Result<Publisher, HubError> {
        self.publish_with(session_id, Takeover::IfSilent, hops)
    }

    /// Claims the session ID for a publisher of a stream that came through `hops` relays.
    /// A stream in its grace is resumed; an active publisher is replaced as `takeover`
    /// allows (its [`Publisher::replaced`] resolves), or the claim is refused. Dropping
    /// the [`Publisher`] starts a grace; [`Publisher::finish`] ends the stream. Only a
    /// fresh publish is announced to the [`LiveWatcher`]: a resumed one continues the
    /// stream its subscribers (forwards among them) already follow.
    pub fn publish_with(
        &self,
        session_id: &str,
        takeover: Takeover,
        hops: u32,
    ) -> Result<Publisher, HubError> {
        // Counted as a user under the hub lock so `release` cannot remove the entry
        // before the claim holds it.
        let stream = {
            let mut streams = self.streams();
            let stream = self.entry(&mut streams, session_id);
            stream.add_user();
            stream
        };
        // The stream's locks only now, with the hub lock released.
        let claimed = stream.claim(Instant::now(), takeover, || self.reserve_slot());
        match claimed {
            Ok((generation, claimed)) => {
                let fresh = claimed == claim::Claimed::Fresh;
                if !fresh {
                    // The claim continues the one before, which holds a user already.
                    self.release(&stream);
                }
                Ok(Publisher::new(stream, self.clone(), generation, fresh.then_some(hops)))
            }
            Err(e) => {
                self.release(&stream);
                Err(e)
            }
        }
    }

    /// The owner that `credential` (a publish token the gate accepted) stands for, to
    /// claim with [`Takeover::SameOwner`]. Only a keyed hash is kept.
    pub fn owner(&self, credential: &str) -> Owner {
        use std::hash::BuildHasher;
        Owner(self.inner.owners.hash_one(credential))
    }

    /// Takes a publisher slot unless all are taken.
    fn reserve_slot(&self) -> bool {
        let max = self.inner.config.max_publishers;
        self.inner
            .publishers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Counts of graces, resumes, expiries and takeovers so far.
    pub fn publisher_events(&self) -> PublisherEvents {
        let e = &self.inner.events;
        PublisherEvents {
            graces: e.graces.load(Ordering::Relaxed),
            resumed: e.resumed.load(Ordering::Relaxed),
            expired: e.expired.load(Ordering::Relaxed),
            taken_over: e.taken_over.load(Ordering::Relaxed),
        }
    }

    /// The relay is shutting down: streams in grace end now (no publisher can come back)
    /// and publishers that go away from now on end their streams at once.
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let streams: Vec<Arc<Stream>> = self.streams().values().cloned().collect();
        for stream in streams {
            if stream.end_grace() {
                self.unpublished(&stream);
            }
        }
    }

    fn closing(&self) -> &AtomicBool {
        &self.inner.closing
    }

    /// Subscribes to a session ID, live or not yet. Wait for it with
    /// [`Subscriber::wait_live`]. Dropping the subscriber unsubscribes.
    pub fn subscribe(&self, session_id: &str) -> Subscriber {
        let stream = {
            let mut streams = self.streams();
            let stream = self.entry(&mut streams, session_id);
            // Counted as a user before the hub lock goes, so a concurrent release cannot
            // remove the entry this subscriber is about to join.
            stream.add_user();
            stream
        };
        stream.subscribe(self.clone())
    }

    /// Session IDs with a live publisher.
    pub fn live_streams(&self) -> Vec<String> {
        let streams: Vec<Arc<Stream>> = self.streams().values().cloned().collect();
        let mut live: Vec<String> =
            streams.iter().filter(|s| s.is_live()).map(|s| s.session_id().to_owned()).collect();
        live.sort();
        live
    }

    /// Whether `session_id` has a live publisher.
    pub fn is_live(&self, session_id: &str) -> bool {
        self.streams().get(session_id).is_some_and(|s| s.is_live())
    }

    /// Follows the number of subscribers of `session_id`'s stream entry, if it exists.
    /// The entry goes when it has neither publisher nor subscribers; the receiver then
    /// reads zero for ever, and a new entry for the same session ID is another stream.
    pub fn watch_subscribers(&self, session_id: &str) -> Option<tokio::sync::watch::Receiver<usize>> {
        let stream = self.streams().get(session_id).cloned();
        stream.map(|s| s.watch_subscribers())
    }

    /// Statistics of one stream, if it exists.
    pub fn stats(&self, session_id: &str) -> Option<StreamStats> {
        let stream = self.streams().get(session_id).cloned();
        stream.map(|s| s.stats())
    }

    /// A fresh id for a [`Peer`].
    pub fn next_peer_id(&self) -> u64 {
        self.inner.peer_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Every stream entry (live, in grace, or with waiting players), by session ID. The
    /// hub lock for a list of pointers, then each stream's lock for a few clones: fan-out
    /// never waits for it.
    pub fn snapshot(&self) -> Vec<StreamInfo> {
        let mut streams: Vec<Arc<Stream>> = self.streams().values().cloned().collect();
        streams.sort_by(|a, b| a.session_id().cmp(b.session_id()));
        streams.iter().map(|s| s.info()).collect()
    }

    /// One stream entry, with its players.
    pub fn stream_info(&self, session_id: &str) -> Option<StreamInfo> {
        let stream = self.streams().get(session_id).cloned();
        stream.map(|s| s.info())
    }

    /// Asks the publisher of `session_id` to end; `false` when there is none (or it has
    /// no session to end).
    pub fn end_publisher(&self, session_id: &str) -> bool {
        let stream = self.streams().get(session_id).cloned();
        match stream.and_then(|s| s.publisher()) {
            Some(peer) => {
                peer.end();
                true
            }
            None => false,
        }
    }

    /// Asks the player with peer id `id` to end, on `session_id` or (with `None`) on any
    /// stream; `false` when there is no such player.
    pub fn end_player(&self, session_id: Option<&str>, id: u64) -> bool {
        let streams: Vec<Arc<Stream>> = match session_id {
            Some(sid) => self.streams().get(sid).cloned().into_iter().collect(),
            None => self.streams().values().cloned().collect(),
        };
        for stream in streams {
            if let Some(peer) = stream.player(id) {
                peer.end();
                return true;
            }
        }
        false
    }

    /// Number of stream entries (live or with waiting players).
    pub fn len(&self) -> usize {
        self.streams().len()
    }

    /// Whether no stream entry exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells the watcher that `stream`'s publish is under way (its first frame is about
    /// to be fanned out).
    fn announce(&self, session_id: &str, hops: u32) {
        if let Some(watcher) = &self.inner.watcher {
            watcher.went_live(self, &LiveStream { session_id: session_id.to_owned(), hops });
        }
    }

    /// The claim on `stream` ended (after the stream ended for its players): its slot
    /// and its user go.
    fn unpublished(&self, stream: &Arc<Stream>) {
        let _ =
            self.inner.publishers.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.release(stream);
    }

    /// A user of `stream` went away: a subscriber (after leaving its list), a refused
    /// publish request or an ended claim.
    fn release(&self, stream: &Arc<Stream>) {
        let mut streams = self.streams();
        if stream.remove_user() {
            Self::remove(&mut streams, stream);
        }
    }

    /// Removes a stream entry that has neither publisher nor subscribers. Under the hub
    /// lock, where users are counted, so a concurrent publish/subscribe cannot pick up an
    /// entry that is being removed.
    fn remove(streams: &mut HashMap<String, Arc<Stream>>, stream: &Arc<Stream>) {
        if streams.get(stream.session_id()).is_some_and(|current| Arc::ptr_eq(current, stream)) {
            streams.remove(stream.session_id());
        }
    }
}

#[cfg(test)]
mod tests;
