//! Edge pull on demand: a player asking for a stream that has no publisher here makes
//! this node play it from an origin and publish it into its own hub, where it is an
//! ordinary stream (GOP cache, bounded fan-out). One upstream session per stream however
//! many players watch it; QUIC upstreams share one connection per node (tunnel mapping,
//! [`QuicPool`]). The upstream closes `pull_idle_ms` after the last player left, and is
//! re-made with backoff when it fails, while the players stay: the stream is spliced
//! ([`Splice`]) onto the new upstream.
//!
//! Origins are the registry's holder of the session ID, then the static `--origin` list,
//! in order; this node itself is never one (a loop), and a play that came from another
//! relay past the hop limit does not start a pull.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::backoff::Backoff;
use super::hops;
use super::node::{is_self, relay_mapping, NodeUrl};
use super::splice::Splice;
use crate::auth::token::TokenRole;
use crate::auth::Auth;
use crate::client::{ClientError, ClientOptions, QuicPool, RtmpClient};
use crate::hub::{Hub, HubError, Publisher};
use crate::media::frame::Frame;
use crate::reason::{Counters, Reason};
use crate::registry::Registry;
use crate::rtmp::session::{ClientEvent, ClientMode};
use crate::url::{StreamUrl, Transport};

/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Reaching an origin and having the play request sent: seconds even across a continent,
/// so an origin that died (its address still in the registry until its lease expires)
/// costs a failover little.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// An upstream that sends nothing this long while playing is gone (a TCP path that broke
/// without a reset; QUIC notices sooner through its idle timeout). Longer than an
/// origin's publisher grace, during which it legitimately sends nothing.
const UPSTREAM_SILENCE: Duration = Duration::from_secs(10);

/// What the puller needs to know.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Static origins, tried in order after the registry's answer.
    pub origins: Vec<NodeUrl>,
    /// This node's own URL (never pulled from).
    pub me: Option<NodeUrl>,
    /// The relay's bound address (never pulled from either).
    pub local: SocketAddr,
    /// How long an upstream stays after its last player left.
    pub idle: Duration,
    /// Relays a stream may pass through (`max_hops`).
    pub max_hops: u32,
    /// This node's token secret, when it has one: a cluster shares it, and a pull then
    /// carries a play token it minted, so origins that require tokens let edges in.
    pub auth: Option<Arc<Auth>>,
    /// Mint pull tokens for streams this node plays openly too (`[auth]
    /// mint_pull_tokens`); otherwise only where its own players need a token.
    pub mint_for_open_play: bool,
    /// Pulls at once (`max_pulls`): every distinct session ID a player names would
    /// otherwise start one, and each is outbound work on the origins.
    pub max_pulls: usize,
    /// How long an origin's "no such stream" is believed (`pull_not_found_ms`): new
    /// players of that session ID start no pull meanwhile.
    pub not_found_for: Duration,
    /// How to reach upstreams.
    pub client: ClientOptions,
}

/// Starts and tracks the pulls of one relay. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Puller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    registry: Arc<dyn Registry>,
    settings: PullSettings,
    pool: QuicPool,
    counters: Arc<Counters>,
    /// Session IDs with a pull task, and where each is.
    active: Mutex<HashMap<String, PullStatus>>,
    /// Session IDs every origin said it does not have, until when that is believed.
    not_found: Mutex<HashMap<String, tokio::time::Instant>>,
    shutdown: CancellationToken,
}

/// Where a pull is, for the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullStatus {
    /// The origin tried or pulled from last (a node URL: no stream key, no token).
    pub origin: Option<String>,
    /// `resolving`, `connecting`, `pulling` or `retrying`.
    pub state: &'static str,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
}

/// One upstream session to make: where, what, and how.
struct Link<'a> {
    node: &'a NodeUrl,
    session_id: &'a str,
    /// Relays the stream will have passed here (announced upstream, kept in the hub).
    hops: u32,
    client: &'a ClientOptions,
}

/// How one upstream session ended.
enum Outcome {
    /// The stream ended upstream (its publisher left): it ends here too.
    Ended,
    /// No player has wanted it for the idle time, or the relay is stopping.
    Idle,
    /// A local publisher took the session ID; nothing to pull.
    Local,
    /// The session could not start on this node.
    Failed(ClientError),
    /// It was playing and broke.
    Lost(ClientError),
}

impl Puller {
    /// A puller for `hub`; `shutdown` stops every pull.
    pub fn new(
        hub: Hub,
        registry: Arc<dyn Registry>,
        settings: PullSettings,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> Self {
        let mut settings = settings;
        settings.client.connect_timeout = settings.client.connect_timeout.min(UPSTREAM_CONNECT_TIMEOUT);
        // Sessions per pooled connection: the origin's `max_quic_streams`, which a
        // cluster shares; past it, another connection to the same node opens.
        let per_conn = settings.client.quic.max_bidi_streams as usize;
        let pool = QuicPool::new(settings.client.clone(), per_conn);
        Self {
            inner: Arc::new(Inner {
                hub,
                registry,
                settings,
                pool,
                counters,
                active: Mutex::default(),
                not_found: Mutex::default(),
                shutdown,
            }),
        }
    }

    /// Whether there is anywhere to pull from.
    pub fn enabled(&self) -> bool {
        !self.inner.settings.origins.is_empty() || self.inner.registry.lease().is_some()
    }

    /// A player subscribed to `session_id`, which has no publisher here: pulls it unless
    /// a pull is already on its way. `hops` is how many relays the player's side already
    /// is (0 for a player, more for a relay pulling from this one): a pull that would make
    /// the chain longer than `max_hops` is not started (a loop of origins ends here).
    pub fn want(&self, session_id: &str, hops: u32) {
        if !self.enabled() {
            return;
        }
        let hops = hops.saturating_add(1);
        if hops > self.inner.settings.max_hops {
            self.inner.counters.count(Reason::HopLimit);
            warn!(session_id, hops, "not pulled: the chain would pass more relays than max_hops");
            return;
        }
        if self.inner.known_absent(session_id) {
            self.inner.counters.count(Reason::UpstreamFailed);
            debug!(session_id, "not pulled: the origins said no such stream a moment ago");
            return;
        }
        {
            let mut active = self.inner.active();
            let full = active.len() >= self.inner.settings.max_pulls;
            match active.entry(session_id.to_owned()) {
                std::collections::hash_map::Entry::Occupied(_) => return,
                std::collections::hash_map::Entry::Vacant(_) if full => {
                    drop(active);
                    self.inner.counters.count(Reason::PullLimit);
                    return warn!(
                        session_id,
                        max = self.inner.settings.max_pulls,
                        "not pulled: max_pulls reached"
                    );
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(PullStatus { origin: None, state: "resolving", last_error: None });
                }
            }
        }
        let this = self.clone();
        let session_id = session_id.to_owned();
        let span = info_span!("pull", session_id = %session_id);
        tokio::spawn(
            async move {
                this.run(&session_id, hops).await;
                this.inner.active().remove(&session_id);
                // A player that arrived as this pull was ending found it active and
                // started nothing: it is subscribed by now, so it is seen here.
                if this.inner.hub.watch_subscribers(&session_id).is_some_and(|w| *w.borrow() > 0)
                    && !this.inner.hub.is_live(&session_id)
                {
                    this.want(&session_id, hops - 1);
                }
            }
            .instrument(span),
        );
    }

    /// Session IDs being pulled now.
    pub fn pulling(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.active().keys().cloned().collect();
        v.sort();
        v
    }

    /// Where the pull of `session_id` is, if it is pulled.
    pub fn status_of(&self, session_id: &str) -> Option<PullStatus> {
        self.inner.active().get(session_id).cloned()
    }

    /// Records where the pull of `session_id` is.
    fn report(&self, session_id: &str, origin: &NodeUrl, state: &'static str, error: Option<String>) {
        if let Some(s) = self.inner.active().get_mut(session_id) {
            s.origin = Some(origin.to_string());
            s.state = state;
            if error.is_some() {
                s.last_error = error;
            }
        }
    }

    /// QUIC connections open to upstream nodes.
    pub fn upstream_connections(&self) -> usize {
        self.inner.pool.connections()
    }

    /// Pulls `session_id` until it ends upstream, idles out or the relay stops.
    async fn run(&self, session_id: &str, hops: u32) {
        let inner = &self.inner;
        let mut client = inner.settings.client.clone();
        client.connect_properties.push(hops::hops_property(hops));
        let Some(mut players) = inner.hub.watch_subscribers(session_id) else { return };
        let mut publisher: Option<Publisher> = None;
        let mut splice = Splice::default();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let nodes = self.candidates(session_id).await;
            if nodes.is_empty() {
                debug!("no origin known for the stream yet");
            }
            let mut all_absent = !nodes.is_empty();
            for node in nodes {
                self.report(session_id, &node, "connecting", None);
                let link = Link { node: &node, session_id, hops, client: &client };
                let outcome = self.session(link, &mut publisher, &mut splice, &mut players).await;
                match outcome {
                    Outcome::Ended => {
                        info!(%node, "stream ended upstream");
                        // Ended, not lost: the players get the end now, without a grace.
                        if let Some(p) = publisher.take() {
                            p.finish();
                        }
                        return;
                    }
                    Outcome::Idle | Outcome::Local => return,
                    Outcome::Failed(e) => {
                        all_absent &= is_not_found(&e);
                        inner.counters.count(Reason::UpstreamFailed);
                        warn!(%node, reason = %e, "cannot pull from this origin");
                        self.report(session_id, &node, "retrying", Some(e.to_string()));
                    }
                    Outcome::Lost(e) => {
                        inner.counters.count(Reason::UpstreamLost);
                        self.report(session_id, &node, "retrying", Some(e.to_string()));
                        warn!(%node, reason = %e, "upstream lost; pulling again");
                        splice.reconnected();
                        backoff.reset();
                        break;
                    }
                }
            }
            if all_absent {
                inner.remember_absent(session_id);
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = idle(&mut players, inner.settings.idle) => return,
                _ = inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Where `session_id` may be pulled from, best first, without this node.
    async fn candidates(&self, session_id: &str) -> Vec<NodeUrl> {
        let inner = &self.inner;
        let mut nodes = Vec::new();
        match inner.registry.resolve(session_id).await {
            Ok(Some(node)) => nodes.push(node),
            Ok(None) => {}
            Err(e) => {
                inner.counters.count(Reason::RegistryUnavailable);
                warn!(reason = %e, "registry lookup failed; trying the static origins");
            }
        }
        for o in &inner.settings.origins {
            if !nodes.contains(o) {
                nodes.push(o.clone());
            }
        }
        let me = inner.settings.me.as_ref();
        let mut out = Vec::with_capacity(nodes.len());
        for node in nodes {
            if Some(&node) == me || self.resolves_to_self(&node).await {
                debug!(%node, "not pulling from this node itself");
                continue;
            }
            out.push(node);
        }
        out
    }

    async fn resolves_to_self(&self, node: &NodeUrl) -> bool {
        let local = self.inner.settings.local;
        match tokio::net::lookup_host(node.host_port()).await {
            Ok(mut addrs) => addrs.any(|a| is_self(a, local)),
            Err(_) => false,
        }
    }

    /// One upstream session on `node`: plays the stream there and publishes it here.
    async fn session(
        &self,
        Link { node, session_id, hops, client: options }: Link<'_>,
        publisher: &mut Option<Publisher>,
        splice: &mut Splice,
        players: &mut watch::Receiver<usize>,
    ) -> Outcome {
        let inner = &self.inner;
        let url = match upstream_url(node, session_id, inner.settings.minter(session_id)) {
            Ok(u) => u,
            Err(e) => return Outcome::Failed(e),
        };
        let connect = async {
            if url.transport == Transport::Quic(crate::url::QuicMapping::Tunnel) {
                RtmpClient::connect_pooled(&url, ClientMode::Play, options, &inner.pool).await
            } else {
                RtmpClient::connect(&url, ClientMode::Play, options).await
            }
        };
        let mut client = tokio::select! {
            c = connect => match c {
                Ok(c) => c,
                Err(e) => return Outcome::Failed(e),
            },
            _ = idle(players, inner.settings.idle) => return Outcome::Idle,
            _ = inner.shutdown.cancelled() => return Outcome::Idle,
        };
        let publisher = match publisher {
            Some(p) => p,
            None => match inner.hub.publish_relayed(session_id, hops) {
                Ok(p) => publisher.insert(p),
                Err(HubError::AlreadyPublishing(_)) => return Outcome::Local,
                Err(e) => return Outcome::Failed(ClientError::Unsupported(hub_refusal(&e))),
            },
        };
        info!(%node, "pulling");
        self.report(session_id, node, "pulling", None);
        // Made once: a timer re-made per frame would never run out.
        let idle = idle(players, inner.settings.idle);
        tokio::pin!(idle);
        let silence = tokio::time::sleep(UPSTREAM_SILENCE);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                event = client.read_event() => match event {
                    Ok(Some(ClientEvent::Media { kind, timestamp, payload })) => {
                        silence.as_mut().reset(tokio::time::Instant::now() + UPSTREAM_SILENCE);
                        if let Some(frame) = splice.map(Frame::new(kind, timestamp, payload)) {
                            publisher.send(frame);
                        }
                    }
                    Ok(Some(ClientEvent::StreamEnded)) => return Outcome::Ended,
                    Ok(Some(_)) => {}
                    Ok(None) => return Outcome::Lost(ClientError::Interrupted),
                    Err(e) => return Outcome::Lost(e),
                },
                _ = &mut silence => {
                    let stage = "receiving from the upstream";
                    return Outcome::Lost(ClientError::Timeout { stage, after: UPSTREAM_SILENCE });
                }
                _ = &mut idle => {
                    info!("no players for the idle time; closing the upstream");
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.finish()).await;
                    return Outcome::Idle;
                }
                _ = inner.shutdown.cancelled() => return Outcome::Idle,
            }
        }
    }
}

impl PullSettings {
    /// Who mints the pull's play token for `session_id`, if anyone: the node's own auth,
    /// where its players need a token for it (they proved they may play it), or where the
    /// operator said so. An edge whose play is open would otherwise hand its secret's
    /// authority to anyone who asks it for a stream.
    fn minter(&self, session_id: &str) -> Option<&Auth> {
        let auth = self.auth.as_deref()?;
        let needs_token = auth.mode(session_id, crate::gate::Role::Play) == crate::auth::AuthMode::Token;
        (needs_token || self.mint_for_open_play).then_some(auth)
    }
}

impl Inner {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, PullStatus>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn not_found(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        self.not_found.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the origins said lately that they do not have `session_id`.
    fn known_absent(&self, session_id: &str) -> bool {
        let now = tokio::time::Instant::now();
        let mut cache = self.not_found();
        // Expired entries go as they are met, and all of them once the cache is large,
        // so a flood of names cannot grow it past what `max_pulls` lets in per period.
        if cache.len() > 4 * self.settings.max_pulls {
            cache.retain(|_, until| *until > now);
        }
        match cache.get(session_id) {
            Some(until) if *until > now => true,
            Some(_) => {
                cache.remove(session_id);
                false
            }
            None => false,
        }
    }

    /// Every origin asked said it has no `session_id`.
    fn remember_absent(&self, session_id: &str) {
        if !self.settings.not_found_for.is_zero() {
            let until = tokio::time::Instant::now() + self.settings.not_found_for;
            self.not_found().insert(session_id.to_owned(), until);
        }
    }
}

/// Whether an origin's refusal says it has no such stream (rather than that it could
/// not be reached, or refused us).
fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Session(crate::rtmp::session::SessionError::Refused { code, .. }) if code.ends_with("StreamNotFound"))
}

/// How long a pull's play token is valid: it is checked once, when the play starts.
const PULL_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The URL of `session_id` on `node`, in the mapping relay links use, with a play token
/// when this node can mint one.
fn upstream_url(node: &NodeUrl, session_id: &str, auth: Option<&Auth>) -> Result<StreamUrl, ClientError> {
    let token = auth.and_then(|a| a.mint(session_id, TokenRole::Play, PULL_TOKEN_TTL).ok());
    let path = match token {
        Some(t) => format!("{session_id}?token={t}"),
        None => session_id.to_owned(),
    };
    let mut url = node
        .stream_url(&path)
        .map_err(|_| ClientError::Unsupported("the session ID does not make a URL on this origin"))?;
    if let Some(mapping) = relay_mapping(node) {
        url.transport = Transport::Quic(mapping);
    }
    Ok(url)
}

fn hub_refusal(e: &HubError) -> &'static str {
    match e {
        HubError::AlreadyPublishing(_) => "a local publisher has the session ID",
        HubError::TooManyPublishers(_) => "this relay is at its publisher limit",
    }
}

/// Resolves once nobody has subscribed for `idle` in a row.
async fn idle(players: &mut watch::Receiver<usize>, idle: Duration) {
    loop {
        if players.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(idle) => return,
            r = players.wait_for(|n| *n > 0) => if r.is_err() { return },
        }
    }
}
