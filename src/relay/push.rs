//! Push forwarding: every published stream whose session ID matches a rule is published,
//! while it is live, to each of the rule's targets (another qrelay over TCP or QUIC,
//! nginx-rtmp, a platform's ingest).
//!
//! [`Forwarding`] is the hub's [`LiveWatcher`]: when a publish starts it subscribes one
//! hub subscriber per target, before the first frame, and spawns a forward task for
//! each. A forward publishes its subscriber's frames to its target with the project's
//! client ([`RtmpClient`]; tunnel-mapped QUIC sessions to one node share a connection of
//! the [`QuicPool`]). When the target fails it reconnects with [`Backoff`] while the
//! stream is live, and starts the new session as a late joiner does (metadata, sequence
//! headers, the cached GOP: [`Subscriber::rejoin`]). It ends when the stream does.
//!
//! Independence: each forward has its own bounded queue, so a slow or dead target skips
//! frames in its own queue (or reconnects) and neither the publisher, nor its players,
//! nor another target ever waits for it.
//!
//! Not forwarded: a target that resolves to this relay (a loop), and a stream whose next
//! hop would pass more than `max_hops` relays ([`super::hops`]). Every failure is logged
//! with the target (query removed, a key other than the stream's own shown as `***`) and
//! counted under a [`Reason`]. [`Forwarding::status`] lists every running forward for the
//! control plane.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use super::backoff::Backoff;
use super::hops;
use super::node::{is_self, NodeUrl};
use crate::client::{ClientError, ClientOptions, QuicPool, RtmpClient};
use crate::config::Config;
use crate::hub::{Hub, LiveStream, LiveWatcher, Subscriber};
use crate::reason::{Counters, Reason};
use crate::rtmp::session::{ClientMode, SessionError};
use crate::url::StreamUrl;

/// How long a forward whose stream ended may take to end its target session politely
/// (FCUnpublish, deleteStream, the QUIC connection's close).
const FINISH_LIMIT: Duration = Duration::from_secs(3);

/// One forwarding rule: streams whose session ID matches `streams` go to every URL in
/// `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    /// Session-ID pattern: `*` matches any run of characters (`/` included), every other
    /// character itself (`live/*`, `*/cam1`, `live/cam1`).
    pub streams: String,
    /// Target URLs. One without a stream key (`rtmp://host/live`, or any URL ending in
    /// `/`) gets the stream's key appended; one with a key publishes under that key.
    pub to: Vec<String>,
}

impl ForwardRule {
    /// Reads the command-line form `PATTERN=URL[,URL...]`.
    pub fn parse_arg(arg: &str) -> Result<Self, String> {
        let (streams, to) =
            arg.split_once('=').ok_or_else(|| format!("`{arg}` is not PATTERN=URL[,URL...]"))?;
        let rule = ForwardRule {
            streams: streams.trim().to_owned(),
            to: to.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
        };
        rule.validate()?;
        Ok(rule)
    }

    /// Checks the pattern and every target URL, naming the part at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.streams.is_empty() {
            return Err("a forward rule needs a `streams` pattern".into());
        }
        if self.to.is_empty() {
            return Err(format!("forward rule `{}` has no target (`to`)", self.streams));
        }
        for target in &self.to {
            StreamUrl::target(target, "key")
                .map_err(|e| format!("forward rule `{}`: target `{target}`: {e}", self.streams))?;
        }
        Ok(())
    }

    /// Whether the rule applies to `session_id`.
    pub fn matches(&self, session_id: &str) -> bool {
        crate::glob::matches(&self.streams, session_id)
    }
}

/// Where a forward is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Connecting to the target (the first time, or again after a wait).
    Connecting,
    /// Publishing to the target.
    Connected,
    /// Waiting before the next attempt, after the target failed.
    BackingOff,
}

/// A forward as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardStatus {
    /// The stream forwarded.
    pub session_id: String,
    /// The target, redacted (no query; a key other than the stream's own as `***`).
    pub target: String,
    /// Where the forward is.
    pub state: ForwardState,
    /// Since when it is in that state.
    pub since: SystemTime,
    /// Payload bytes of audio, video and data sent to the target, over every session.
    pub bytes_sent: u64,
    /// Sessions started after the first one failed (attempts that worked or not).
    pub reconnects: u32,
    /// Why the target last failed, if it did.
    pub last_error: Option<String>,
}

/// What a forward task and the status list share.
#[derive(Debug)]
struct Shared {
    session_id: String,
    target: String,
    state: Mutex<(ForwardState, SystemTime, Option<String>)>,
    bytes_sent: AtomicU64,
    reconnects: AtomicU32,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, (ForwardState, SystemTime, Option<String>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: ForwardState) {
        let mut st = self.state();
        if st.0 != state {
            st.0 = state;
            st.1 = SystemTime::now();
        }
    }

    fn failed(&self, error: String) {
        self.state().2 = Some(error);
    }

    fn status(&self) -> ForwardStatus {
        let (state, since, last_error) = self.state().clone();
        ForwardStatus {
            session_id: self.session_id.clone(),
            target: self.target.clone(),
            state,
            since,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error,
        }
    }
}

/// A running forward, as the registry holds it.
#[derive(Debug)]
struct Entry {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

/// Settings of every forward.
#[derive(Debug, Clone)]
struct Settings {
    max_hops: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    /// A target that takes no data this long is given up on (and reconnected).
    write_timeout: Duration,
    client: ClientOptions,
}

/// Push forwarding: the rules, the running forwards and their status. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Forwarding {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: RwLock<Arc<[ForwardRule]>>,
    settings: Settings,
    /// Where this relay listens: a target there is a loop.
    local: SocketAddr,
    /// How other nodes reach this one (`node_url`): a target naming it is a loop too.
    me: Option<NodeUrl>,
    counters: Arc<Counters>,
    pool: QuicPool,
    forwards: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    tasks: TaskTracker,
    /// Stops every forward at once (immediate shutdown).
    stop: CancellationToken,
}

impl Forwarding {
    /// Forwarding with `config`'s rules for a relay listening on `local` and known to
    /// other nodes as `me`, counting failures in `counters`.
    pub fn new(config: &Config, local: SocketAddr, me: Option<NodeUrl>, counters: Arc<Counters>) -> Self {
        let client = super::client_options(config);
        let settings = Settings {
            max_hops: config.max_hops,
            backoff_min: Duration::from_millis(config.forward_backoff_min_ms),
            backoff_max: Duration::from_millis(config.forward_backoff_max_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            client: client.clone(),
        };
        let per_conn = usize::try_from(config.max_quic_streams).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(Inner {
                rules: RwLock::new(config.forward.clone().into()),
                settings,
                local,
                me,
                counters,
                pool: QuicPool::new(client, per_conn),
                forwards: Mutex::default(),
                next_id: AtomicU64::new(0),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Replaces the rules (validated first). Streams that go live from now on follow the
    /// new rules; running forwards go on until their stream ends.
    pub fn set_rules(&self, rules: Vec<ForwardRule>) -> Result<(), String> {
        rules.iter().try_for_each(ForwardRule::validate)?;
        *self.inner.rules.write().unwrap_or_else(|e| e.into_inner()) = rules.into();
        Ok(())
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<ForwardRule> {
        self.inner.rules().to_vec()
    }

    /// Every running forward, by session ID then target.
    pub fn status(&self) -> Vec<ForwardStatus> {
        let mut list: Vec<ForwardStatus> = self.inner.lock().values().map(|e| e.shared.status()).collect();
        list.sort_by(|a, b| (&a.session_id, &a.target).cmp(&(&b.session_id, &b.target)));
        list
    }

    /// The running forwards of one stream.
    pub fn status_of(&self, session_id: &str) -> Vec<ForwardStatus> {
        let mut list = self.status();
        list.retain(|s| s.session_id == session_id);
        list
    }

    /// Stops every forward now, without ending the target sessions politely.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Resolves once [`stop`](Self::stop) was called.
    pub async fn stopped(&self) {
        self.inner.stop.cancelled().await;
    }

    /// Waits until every forward task has ended (they end with their streams, or at
    /// [`stop`](Self::stop)).
    pub async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.tasks.reopen();
    }
}

impl LiveWatcher for Forwarding {
    fn went_live(&self, hub: &Hub, live: &LiveStream) {
        self.inner.went_live(hub, live);
    }
}

impl Inner {
    fn rules(&self) -> Arc<[ForwardRule]> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.forwards.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a forward per distinct target of every rule matching the stream. Runs on
    /// the publisher's task: subscribes (so no frame is missed) and spawns, nothing more.
    fn went_live(self: &Arc<Self>, hub: &Hub, live: &LiveStream) {
        // Forwards still finishing an earlier publish of this session ID give way: two
        // sessions of ours publishing one key to a target would refuse each other.
        for entry in self.lock().values().filter(|e| e.shared.session_id == live.session_id) {
            entry.cancel.cancel();
        }
        let rules = self.rules();
        let mut targets: Vec<&str> = Vec::new();
        for rule in rules.iter().filter(|r| r.matches(&live.session_id)) {
            for to in &rule.to {
                if !targets.contains(&to.as_str()) {
                    targets.push(to);
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let hops = live.hops.saturating_add(1);
        if hops > self.settings.max_hops {
            self.counters.count(Reason::HopLimit);
            warn!(
                session_id = %live.session_id,
                hops,
                max_hops = self.settings.max_hops,
                "not forwarded: the next hop would pass more relays than max_hops"
            );
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(session_id = %live.session_id, "not forwarded: no async runtime to run forwards on");
            return;
        };
        // The key is the session ID's last segment (the app may have several).
        let key = live.session_id.rsplit('/').next().unwrap_or_default();
        let mut started = HashSet::new();
        for to in targets {
            let url = match StreamUrl::target(to, key) {
                Ok(url) => url,
                Err(e) => {
                    // Rules are validated, but this stream's key is part of the URL.
                    self.counters.count(Reason::TargetUnreachable);
                    warn!(session_id = %live.session_id, reason = %e, "not forwarded: no valid target URL");
                    continue;
                }
            };
            if !started.insert(url.to_string()) {
                continue;
            }
            let sub = hub.subscribe(&live.session_id);
            let shared = Arc::new(Shared {
                session_id: live.session_id.clone(),
                target: url.redacted_target(key),
                state: Mutex::new((ForwardState::Connecting, SystemTime::now(), None)),
                bytes_sent: AtomicU64::new(0),
                reconnects: AtomicU32::new(0),
            });
            let cancel = self.stop.child_token();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.lock().insert(id, Entry { shared: shared.clone(), cancel: cancel.clone() });
            let span = info_span!("forward", session_id = %live.session_id, to = %shared.target);
            let target_key = crate::url::without_query(&url.key);
            let secret_key = (target_key != key).then(|| target_key.to_owned());
            let forward = Forward { inner: self.clone(), shared, url, sub, cancel, hops, secret_key };
            let inner = self.clone();
            self.tasks.spawn_on(
                async move {
                    forward.run().await;
                    inner.lock().remove(&id);
                }
                .instrument(span),
                &runtime,
            );
        }
    }
}

/// One stream going to one target.
struct Forward {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    url: StreamUrl,
    sub: Subscriber,
    cancel: CancellationToken,
    /// What this relay announces to the target (the stream's hops plus this one).
    hops: u32,
    /// The target's stream key when it is not the stream's own: it may be a credential,
    /// so it is kept out of the logs and the status (a target's error may quote it).
    secret_key: Option<String>,
}

/// How a connected session ended.
enum SessionEnd {
    /// The stream ended: the target session was ended politely.
    StreamEnded,
    /// Stopped from outside (shutdown, a new publish of the session ID).
    Cancelled,
    /// The target failed.
    Failed(Reason, String),
}

impl Forward {
    async fn run(mut self) {
        if self.is_loop().await {
            self.inner.counters.count(Reason::RelayLoop);
            warn!(listen = %self.inner.local, "not forwarded: the target is this relay (a loop)");
            return;
        }
        let mut opts = self.inner.settings.client.clone();
        opts.connect_properties.push(hops::hops_property(self.hops));
        let settings = &self.inner.settings;
        let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
        let mut first = true;
        loop {
            self.shared.set(ForwardState::Connecting);
            let connect = RtmpClient::connect_pooled(&self.url, ClientMode::Publish, &opts, &self.inner.pool);
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                c = connect => c,
            };
            // What a failed attempt or session was, for the log and the counters.
            let failure = match attempt {
                Err(e) => (connect_failure(&e), e.to_string()),
                Ok(client) => {
                    // After a reconnect, the target starts as a late joiner would (the
                    // first session had the subscriber's queue from the publish's start).
                    if !first && !self.sub.rejoin() {
                        finish(client).await;
                        info!("stream ended while reconnecting");
                        return;
                    }
                    backoff.reset();
                    self.shared.set(ForwardState::Connected);
                    info!(hops = self.hops, reconnect = !first, "forwarding");
                    match self.publish(client).await {
                        SessionEnd::StreamEnded => {
                            info!(
                                bytes = self.shared.bytes_sent.load(Ordering::Relaxed),
                                "stream ended; forward done"
                            );
                            return;
                        }
                        SessionEnd::Cancelled => return,
                        SessionEnd::Failed(reason, error) => (reason, error),
                    }
                }
            };
            first = false;
            let (reason, error) = failure;
            let error = match &self.secret_key {
                Some(key) => error.replace(key.as_str(), "***"),
                None => error,
            };
            self.inner.counters.count(reason);
            let delay = backoff.next_delay();
            warn!(%reason, error = %error, retry_in_ms = delay.as_millis() as u64, "forward target failed");
            self.shared.failed(format!("{reason}: {error}"));
            self.shared.set(ForwardState::BackingOff);
            if !self.wait_out(delay).await {
                return;
            }
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the target is this relay: it names this node's `node_url`, or an address
    /// its host resolves to is where we listen. A name that does not resolve is left to
    /// the connection attempts (which fail, are counted and retried: DNS may come back).
    async fn is_loop(&self) -> bool {
        let (host, port) = (self.url.host.as_str(), self.url.port);
        if self.inner.me.as_ref().is_some_and(|me| me.host_port() == (host, port)) {
            return true;
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(mut addrs) => addrs.any(|a| is_self(a, self.inner.local)),
            Err(_) => false,
        }
    }

    /// Publishes the subscriber's frames to the target until the stream ends, the target
    /// fails or the forward is cancelled. A send that makes no progress for the write
    /// timeout counts as a failed target: the queue meanwhile skips, bounded.
    async fn publish(&mut self, mut client: RtmpClient) -> SessionEnd {
        let write_timeout = self.inner.settings.write_timeout;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return SessionEnd::Cancelled,
                frame = self.sub.recv() => {
                    let Some(frame) = frame else {
                        finish(client).await;
                        return SessionEnd::StreamEnded;
                    };
                    let len = frame.payload().len() as u64;
                    let send = client.send_media(frame.kind(), frame.timestamp(), frame.payload().clone());
                    let sent = tokio::select! {
                        _ = self.cancel.cancelled() => return SessionEnd::Cancelled,
                        sent = tokio::time::timeout(write_timeout, send) => sent,
                    };
                    match sent {
                        Ok(Ok(())) => {
                            self.shared.bytes_sent.fetch_add(len, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => return SessionEnd::Failed(session_failure(&e), e.to_string()),
                        Err(_) => {
                            let error = format!("the target took no data for {write_timeout:?}");
                            return SessionEnd::Failed(Reason::TargetStalled, error);
                        }
                    }
                }
                open = client.read_input() => {
                    // Answers the target asked for (acknowledgements, pings) go out now.
                    let open = match open {
                        Ok(true) => tokio::time::timeout(write_timeout, client.flush()).await,
                        Ok(false) => Ok(Err(ClientError::Closed)),
                        Err(e) => Ok(Err(e)),
                    };
                    match open {
                        Ok(Ok(())) => while client.poll_event().is_some() {},
                        Ok(Err(ClientError::Closed)) => {
                            return SessionEnd::Failed(Reason::TargetLost, "the target closed the connection".into());
                        }
                        Ok(Err(e)) => return SessionEnd::Failed(session_failure(&e), e.to_string()),
                        Err(_) => {
                            let error = format!("the target took no data for {write_timeout:?}");
                            return SessionEnd::Failed(Reason::TargetStalled, error);
                        }
                    }
                }
            }
        }
    }

    /// Waits `delay` before the next attempt, taking (and dropping) the stream's frames
    /// meanwhile: the next session starts from the stream's cache instead. `false` when
    /// the stream ended or the forward was cancelled.
    async fn wait_out(&mut self, delay: Duration) -> bool {
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = &mut wait => return true,
                frame = self.sub.recv() => {
                    if frame.is_none() {
                        info!("stream ended while the target was failing; forward done");
                        return false;
                    }
                }
            }
        }
    }
}

/// Ends a target session politely, bounded.
async fn finish(client: RtmpClient) {
    let _ = tokio::time::timeout(FINISH_LIMIT, client.finish()).await;
}

/// The reason a connection attempt failed: the target refused what it understood, or it
/// could not be reached (or understood) at all.
fn connect_failure(e: &ClientError) -> Reason {
    match e {
        ClientError::Session(SessionError::Refused { .. }) | ClientError::Closed => Reason::TargetRefused,
        _ => Reason::TargetUnreachable,
    }
}

/// The reason a publishing session failed.
fn session_failure(e: &ClientError) -> Reason {
    match e {
        ClientError::Session(SessionError::Refused { .. }) => Reason::TargetRefused,
        _ => Reason::TargetLost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_session_ids() {
        let rule = |p: &str| ForwardRule { streams: p.into(), to: vec!["rtmp://h/live".into()] };
        let cases = [
            ("live/*", "live/cam1", true),
            ("live/*", "live/a/b", true),
            ("live/*", "other/cam1", false),
            ("live/*", "live", false),
            ("*/cam1", "a/b/cam1", true),
            ("live/cam*", "live/cam", true),
            ("live/c*m*1", "live/cxxmyy1", true),
            ("live/c*m*1", "live/cxxmyy2", false),
            ("live/cam1", "live/cam1", true),
            ("live/cam1", "live/cam10", false),
            ("*", "anything/at/all", true),
            ("**a", "bba", true),
        ];
        for (pattern, id, want) in cases {
            assert_eq!(rule(pattern).matches(id), want, "{pattern} vs {id}");
        }
    }

    #[test]
    fn command_line_rules_are_parsed_and_checked() {
        let r = ForwardRule::parse_arg("live/*=rtmp://a/live, rtmp+quic://b:2000/live/x").unwrap();
        assert_eq!(r.streams, "live/*");
        assert_eq!(r.to, ["rtmp://a/live", "rtmp+quic://b:2000/live/x"]);
        // The target's own query keeps its `=`.
        let r = ForwardRule::parse_arg("a/b=rtmp://h/live?token=x=y").unwrap();
        assert_eq!(r.to, ["rtmp://h/live?token=x=y"]);
        for (bad, part) in [
            ("live/*", "PATTERN=URL"),
            ("=rtmp://h/live", "pattern"),
            ("live/*=", "no target"),
            ("live/*=foo://h/live", "foo"),
            ("live/*=rtmp://h:0/live", "bad port"),
            ("live/*=rtmp://h/", "missing app"),
        ] {
            let e = ForwardRule::parse_arg(bad).unwrap_err();
            assert!(e.contains(part), "{bad}: {e}");
        }
    }

    #[test]
    fn failures_are_classified() {
        let refused =
            ClientError::Session(SessionError::Refused { code: "c".into(), description: "d".into() });
        assert_eq!(connect_failure(&refused), Reason::TargetRefused);
        assert_eq!(connect_failure(&ClientError::Resolve("h".into())), Reason::TargetUnreachable);
        assert_eq!(session_failure(&refused), Reason::TargetRefused);
        assert_eq!(
            session_failure(&ClientError::Io(std::io::ErrorKind::BrokenPipe.into())),
            Reason::TargetLost
        );
    }
}
