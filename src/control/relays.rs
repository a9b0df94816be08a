//! What the relay's outbound clients (push forwarding, pull) report about each stream,
//! for the control API: they write their state here, `GET /api/streams/{app}/{key}`
//! shows it. Nothing here moves media.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::relay::pull::Puller;
use crate::relay::push::Forwarding;

/// One forward target of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardState {
    /// The target URL (without its query: tokens stay out of the API).
    pub url: String,
    /// `connecting`, `forwarding`, `retrying`, `failed`... as the forwarder names it.
    pub state: String,
    /// The last error, if any.
    pub error: Option<String>,
    /// Media payload bytes forwarded.
    pub bytes_sent: u64,
}

/// Where a stream is pulled from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullState {
    /// The origin URL (without its query).
    pub url: String,
    /// `connecting`, `pulling`, `retrying`... as the puller names it.
    pub state: String,
    /// The last error, if any.
    pub error: Option<String>,
}

/// A stream's relay state: empty until a forwarder or puller reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelayState {
    /// Push targets.
    pub forward: Vec<ForwardState>,
    /// The origin this stream is pulled from, if it is.
    pub pull: Option<PullState>,
}

/// Relay state by session ID. Cheap to clone. The relay's own forwarding and puller are
/// read when asked (their state lives with them); other reporters write here.
#[derive(Debug, Clone, Default)]
pub struct RelayBoard {
    inner: Arc<Mutex<HashMap<String, RelayState>>>,
    sources: Arc<std::sync::OnceLock<(Forwarding, Puller)>>,
}

impl RelayBoard {
    fn map(&self) -> MutexGuard<'_, HashMap<String, RelayState>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the forward state of `session_id`.
    pub fn set_forward(&self, session_id: &str, forward: Vec<ForwardState>) {
        self.map().entry(session_id.to_owned()).or_default().forward = forward;
    }

    /// Replaces the pull state of `session_id`.
    pub fn set_pull(&self, session_id: &str, pull: Option<PullState>) {
        self.map().entry(session_id.to_owned()).or_default().pull = pull;
    }

    /// Forgets `session_id` (its forwarders and puller stopped).
    pub fn clear(&self, session_id: &str) {
        self.map().remove(session_id);
    }

    /// Reads forward and pull state from the relay's own forwarding and puller (once).
    pub fn attach(&self, forwarding: Forwarding, puller: Puller) {
        let _ = self.sources.set((forwarding, puller));
    }

    /// The state of `session_id` (empty when nobody reported).
    pub fn get(&self, session_id: &str) -> RelayState {
        let mut state = self.map().get(session_id).cloned().unwrap_or_default();
        if let Some((forwarding, puller)) = self.sources.get() {
            state.forward.extend(forwarding.status_of(session_id).into_iter().map(|f| {
                ForwardState {
                    url: f.target,
                    state: match f.state {
                        crate::relay::push::ForwardState::Connecting => "connecting",
                        crate::relay::push::ForwardState::Connected => "forwarding",
                        crate::relay::push::ForwardState::BackingOff => "retrying",
                    }
                    .to_owned(),
                    error: f.last_error,
                    bytes_sent: f.bytes_sent,
                }
            }));
            if let Some(p) = puller.status_of(session_id) {
                state.pull = Some(PullState {
                    url: p.origin.unwrap_or_default(),
                    state: p.state.to_owned(),
                    error: p.last_error,
                });
            }
        }
        state
    }
}
