//! The hub: live streams by session ID (`app/stream_key`), their GOP caches, and bounded
//! fan-out to subscribers.
//!
//! One publisher per session ID. A player may subscribe before the publisher arrives: it
//! registers on the (empty) stream and waits for it to go live. The publisher never
//! waits on a subscriber: each subscriber has its own bounded queue and a subscriber
//! that falls behind skips to the next keyframe ([`subscriber`]).
//!
//! Locks, outermost first, each held only for in-memory updates: the hub map (which
//! stream is which session ID), a stream's cache and subscriber list (`stream.rs`), a
//! subscriber's queue. The hub lock is never held while a stream lock is taken: the map
//! is looked up (and the stream's user count changed, an atomic) under it, then dropped,
//! and only then is the stream locked. No lock but a subscriber's own queue lock is held
//! over a socket write (`subscriber.rs`).

mod stream;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue: QueueLimits::default(),
            max_gop_bytes: 32 * 1024 * 1024,
            max_publishers: 1_000,
            play_wait: Duration::from_secs(30),
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

/// Shared handle to the registry of live streams. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    config: HubConfig,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Live publishers; changed only under the `streams` lock.
    publishers: std::sync::atomic::AtomicUsize,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig) -> Self {
        Self { inner: Arc::new(HubInner { config, ..HubInner::default() }) }
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
            .or_insert_with(|| Arc::new(Stream::new(session_id, self.inner.config)))
            .clone()
    }

    /// Claims the session ID for a publisher. Dropping the [`Publisher`] ends the stream.
    pub fn publish(&self, session_id: &str) -> Result<Publisher, HubError> {
        // Claimed under the hub lock so `release` cannot remove the entry in between.
        let mut streams = self.streams();
        let live = self.inner.publishers.load(Ordering::Relaxed);
        if live >= self.inner.config.max_publishers {
            return Err(HubError::TooManyPublishers(self.inner.config.max_publishers));
        }
        let stream = self.entry(&mut streams, session_id);
        if !stream.claim_publisher() {
            return Err(HubError::AlreadyPublishing(session_id.to_owned()));
        }
        self.inner.publishers.store(live + 1, Ordering::Relaxed);
        drop(streams);
        // The stream lock only now, with the hub lock released.
        stream.start_publish();
        Ok(Publisher::new(stream, self.clone()))
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

    /// Number of stream entries (live or with waiting players).
    pub fn len(&self) -> usize {
        self.streams().len()
    }

    /// Whether no stream entry exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The publisher of `stream` went away (after ending the stream for its players).
    fn unpublished(&self, stream: &Arc<Stream>) {
        let mut streams = self.streams();
        let live = self.inner.publishers.load(Ordering::Relaxed);
        self.inner.publishers.store(live.saturating_sub(1), Ordering::Relaxed);
        if stream.unclaim_publisher() {
            Self::remove(&mut streams, stream);
        }
    }

    /// A subscriber of `stream` went away (after leaving its list).
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
