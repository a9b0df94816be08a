//! The hub: live streams by session ID (`app/stream_key`), their GOP caches, and bounded
//! fan-out to subscribers.
//!
//! One publisher per session ID. A player may subscribe before the publisher arrives: it
//! registers on the (empty) stream and waits for it to go live. The publisher never
//! waits on a subscriber: each subscriber has its own bounded queue and a subscriber
//! that falls behind skips to the next keyframe ([`subscriber`]).

mod stream;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use stream::{Publisher, StreamStats};
pub use subscriber::{DirectSink, QueueLimits, Subscriber};

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

    /// Claims the session ID for a publisher. Dropping the [`Publisher`] ends the stream.
    pub fn publish(&self, session_id: &str) -> Result<Publisher, HubError> {
        // Claimed under the hub lock so `release` cannot remove the entry in between.
        let mut streams = self.streams();
        let live = self.inner.publishers.load(Ordering::Relaxed);
        if live >= self.inner.config.max_publishers {
            return Err(HubError::TooManyPublishers(self.inner.config.max_publishers));
        }
        let stream = streams
            .entry(session_id.to_owned())
            .or_insert_with(|| Arc::new(Stream::new(session_id, self.inner.config)))
            .clone();
        if !stream.claim_publisher() {
            return Err(HubError::AlreadyPublishing(session_id.to_owned()));
        }
        self.inner.publishers.store(live + 1, Ordering::Relaxed);
        drop(streams);
        Ok(Publisher::new(stream, self.clone()))
    }

    /// Subscribes to a session ID, live or not yet. Wait for it with
    /// [`Subscriber::wait_live`]. Dropping the subscriber unsubscribes.
    pub fn subscribe(&self, session_id: &str) -> Subscriber {
        let mut streams = self.streams();
        let stream = streams
            .entry(session_id.to_owned())
            .or_insert_with(|| Arc::new(Stream::new(session_id, self.inner.config)))
            .clone();
        stream.subscribe(self.clone())
    }

    /// Session IDs with a live publisher.
    pub fn live_streams(&self) -> Vec<String> {
        let streams: Vec<Arc<Stream>> = self.streams().values().cloned().collect();
        let mut live: Vec<String> =
            streams.iter().filter(|s| s.stats().live).map(|s| s.session_id().to_owned()).collect();
        live.sort();
        live
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

    /// Removes a stream entry that has neither publisher nor subscribers. Called when
    /// either goes away, under the hub lock so a concurrent publish/subscribe cannot
    /// pick up an entry that is being removed.
    fn unpublished(&self, stream: &Arc<Stream>) {
        let streams = self.streams();
        let live = self.inner.publishers.load(Ordering::Relaxed);
        self.inner.publishers.store(live.saturating_sub(1), Ordering::Relaxed);
        drop(streams);
        self.release(stream);
    }

    fn release(&self, stream: &Arc<Stream>) {
        let mut streams = self.streams();
        if let Some(current) = streams.get(stream.session_id()) {
            if Arc::ptr_eq(current, stream) && stream.is_unused() {
                streams.remove(stream.session_id());
            }
        }
    }
}

#[cfg(test)]
mod tests;
