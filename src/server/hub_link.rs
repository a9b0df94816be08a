//! The session↔hub rules every transport shares, free of sockets: a publish or play
//! request waits for the gate, then the hub (one publisher per session ID, a relayed
//! publish within `max_hops`, players wait for a publisher up to `play_wait_ms`);
//! refusals answer with their status code and are counted; the end of a stream ends its
//! players. A publisher that unpublishes ends its stream; one whose session ends
//! otherwise leaves its players a grace, and one replaced by a new publisher (a
//! takeover) has its session closed. The byte-stream driver
//! (`connection.rs`) and the RoQR driver (`roqr_conn.rs`) own the I/O and call in here
//! with the message-level [`ServerCore`] of their framing.
//!
//! Two ways a session is ended from outside, both selected on by the drivers: its
//! [`Peer`]'s end token (the control API's `DELETE`), and the drain (SIGTERM or
//! `POST /api/drain`): a publisher that declared E-RTMP reconnect support is asked to
//! reconnect and keeps publishing until it leaves; any other publisher is ended at its
//! next video keyframe, so its players get whole GOPs up to the end.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::connection::ConnContext;
use crate::gate::{Decision, Refusal, Request, Role};
use crate::hub::{Peer, Publisher, Subscriber, Takeover};
use crate::media::frame::MediaKind;
use crate::reason::Reason;
use crate::registry::PublisherLease;
use crate::relay::hops;
use crate::rtmp::session::{ServerCore, ServerEvent};

/// A player's hub side, with whatever its transport keeps per player (`W`: the byte
/// stream's sink for direct writes, RoQR's media sender).
pub(super) struct Player<W> {
    pub(super) sub: Subscriber,
    /// Playing (the publisher is there), not waiting for it.
    pub(super) live: bool,
    /// Until when it may wait for the publisher.
    deadline: Instant,
    pub(super) writer: W,
}

/// What a player waits for next.
pub(super) enum PlayerEvent {
    /// Waiting ended: live (`true`) or the wait timed out.
    Live(bool),
    /// Something to write (`true`), or the stream ended and everything was taken.
    Ready(bool),
}

/// What the driver does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Go on.
    Continue,
    /// Write what the session has to say, then close (refusals, an ended stream).
    CloseAfterFlush,
}

/// What a session does when the relay drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// Go on: a player until its stream ends, a publisher until its next keyframe or
    /// until it reconnects elsewhere.
    Continue,
    /// Close now (nothing to finish).
    Close,
}

/// One session's hub handles and its pending request.
pub(super) struct HubLink<W> {
    ctx: ConnContext,
    peer: SocketAddr,
    transport: &'static str,
    pub(super) publisher: Option<Publisher>,
    pub(super) player: Option<Player<W>>,
    /// The publisher's registry lease, held as long as `publisher`.
    lease: Option<PublisherLease>,
    pending: Option<Request>,
    /// This session as the control API sees it; its id is fixed for the session.
    peer_id: u64,
    /// Cancelled by the control API to end the session.
    end: CancellationToken,
    /// Draining: the publisher ends at its next video keyframe.
    end_at_keyframe: bool,
    /// The publish ended for the drain: the driver closes the session.
    drained: bool,
    /// Video went through this session's publish (a drain then waits for a keyframe).
    saw_video: bool,
    /// The request the gate allowed and that has not ended yet: the gate hears of its end
    /// once (`Gate::ended`), however it ends.
    allowed: Option<Request>,
    /// This address's place among publishers, held as long as the publish.
    publisher_place: Option<crate::transport::admission::PublisherPermit>,
    /// Until when the session may go without asking to publish or play; `None` once it
    /// asked.
    role_by: Option<Instant>,
}

impl<W: Default> HubLink<W> {
    pub(super) fn new(ctx: ConnContext, peer: SocketAddr, transport: &'static str) -> Self {
        let peer_id = ctx.hub.next_peer_id();
        let ctx_role_timeout = ctx.config.role_timeout_ms;
        Self {
            ctx,
            peer,
            transport,
            publisher: None,
            player: None,
            lease: None,
            pending: None,
            allowed: None,
            peer_id,
            end: CancellationToken::new(),
            end_at_keyframe: false,
            drained: false,
            saw_video: false,
            publisher_place: None,
            role_by: Some(Instant::now() + std::time::Duration::from_millis(ctx_role_timeout)),
        }
    }

    /// Resolves when the session went `role_timeout_ms` without asking to publish or
    /// play; pending for ever once it asked.
    pub(super) async fn role_deadline(&self) {
        match self.role_by {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// The token the control API cancels to end this session (the driver selects on it).
    pub(super) fn end_token(&self) -> CancellationToken {
        self.end.clone()
    }

    fn as_peer(&self) -> Arc<Peer> {
        Peer::new(self.peer_id, self.transport, Some(self.peer), self.end.clone())
    }

    /// The control API ended this session: a player is told its play stopped, a
    /// publisher's stream ends (its players drain and end). Counted; the driver writes
    /// what the session has to say and closes.
    pub(super) fn on_ended_by_api(&mut self, core: &mut ServerCore) -> Option<Player<W>> {
        self.pending = None;
        if let Some(p) = self.publisher.take() {
            // Ended, not lost: no grace for a successor.
            p.finish();
            info!("publish ended through the control API");
        }
        let player = self.player.take();
        if player.is_some() {
            info!("play ended through the control API");
            core.stop_play("Stopped by the relay's operator");
        }
        player
    }

    /// The relay drains (SIGTERM or `POST /api/drain`).
    pub(super) fn on_drain(&mut self, core: &mut ServerCore) -> Drain {
        if self.publisher.is_some() {
            if core.supports_reconnect() {
                info!("draining: asking the publisher to reconnect");
                core.request_reconnect("The relay is shutting down; reconnect to continue");
                return Drain::Continue;
            }
            if self.saw_video {
                info!("draining: the publish ends at its next keyframe");
                self.end_at_keyframe = true;
                return Drain::Continue;
            }
            // Audio only: every frame is a boundary.
            if let Some(p) = self.publisher.take() {
                p.finish();
            }
            info!("draining: publish ended");
            return Drain::Close;
        }
        // A live player stays until its stream ends; anyone else goes now.
        if self.live_player() {
            Drain::Continue
        } else {
            Drain::Close
        }
    }

    /// Whether the drain ended this session's publish (the driver then closes it).
    pub(super) fn drained(&self) -> bool {
        self.drained
    }

    /// Acts on an event of the session core. A player that stopped is returned, for the
    /// driver to take its writer back.
    pub(super) fn on_event(&mut self, event: ServerEvent) -> Option<Player<W>> {
        match event {
            ServerEvent::PublishRequest { session_id, app, key, .. } => {
                self.pending = Some(self.request(Role::Publish, session_id, app, key));
            }
            ServerEvent::PlayRequest { session_id, app, key, .. } => {
                self.pending = Some(self.request(Role::Play, session_id, app, key));
            }
            ServerEvent::Media(frame) => {
                let video = frame.kind() == MediaKind::Video;
                if self.end_at_keyframe && video && frame.is_keyframe() {
                    // The GOP before it went out whole; this one is not started.
                    if let Some(p) = self.publisher.take() {
                        p.finish();
                        info!("draining: publish ended at a keyframe");
                    }
                    self.end_at_keyframe = false;
                    self.drained = true;
                }
                if let Some(p) = &mut self.publisher {
                    self.saw_video |= video;
                    p.send(frame);
                }
            }
            ServerEvent::Unpublish => {
                self.lease = None;
                if let Some(p) = self.publisher.take() {
                    p.finish();
                    info!("publish ended by the publisher");
                    self.end_allowed();
                }
            }
            ServerEvent::StopPlay => {
                let p = self.player.take()?;
                info!(skipped = p.sub.skipped(), "play stopped by the player");
                self.end_allowed();
                return Some(p);
            }
        }
        None
    }

    /// Asks the gate about a pending request and applies the answer. Awaited in the
    /// session's own task: a slow decision holds up nobody else.
    pub(super) async fn decide_pending(&mut self, core: &mut ServerCore) -> Next {
        let Some(request) = self.pending.take() else { return Next::Continue };
        let decision = self.ctx.decide(&request).await;
        self.on_decision(core, request, decision).await
    }

    fn request(&mut self, role: Role, session_id: String, app: String, key: String) -> Request {
        tracing::Span::current().record("session_id", session_id.as_str());
        self.role_by = None;
        Request { role, session_id, app, key, peer: self.peer, transport: self.transport }
    }

    async fn on_decision(&mut self, core: &mut ServerCore, request: Request, decision: Decision) -> Next {
        if decision == Decision::Allow {
            // Whatever follows (even the hub's or the registry's refusal), the gate hears
            // of the end.
            self.end_allowed();
            self.allowed = Some(request.clone());
        }
        match (request.role, decision) {
            (Role::Publish, Decision::Allow) => {
                let hops = match self.relayed_hops(core) {
                    Ok(hops) => hops,
                    Err(refusal) => {
                        self.ctx.counters.count(Reason::HopLimit);
                        warn!(reason = %refusal, "publish refused");
                        core.reject_publish("NetStream.Publish.BadName", &refusal);
                        self.end_allowed();
                        return Next::CloseAfterFlush;
                    }
                };
                self.publish(core, &request, hops).await
            }
            (Role::Play, Decision::Allow) => {
                info!("play requested");
                let sub = self.ctx.hub.subscribe(&request.session_id);
                sub.identify(self.as_peer());
                // Subscribed first: a pull that is just ending sees this player and
                // starts again (`Puller::want`).
                if !self.ctx.hub.is_live(&request.session_id) {
                    // A player that is itself a pulling relay says how far the stream
                    // would have travelled; a malformed count starts no pull.
                    let hops = hops::announced_hops(core.connect_property(hops::HOPS_PROPERTY));
                    self.ctx.puller.want(&request.session_id, hops.unwrap_or(u32::MAX));
                }
                let deadline = Instant::now() + self.ctx.hub.config().play_wait;
                self.player = Some(Player { sub, live: false, deadline, writer: W::default() });
                Next::Continue
            }
            (Role::Publish, Decision::Refuse(Refusal { reason, message })) => {
                self.ctx.counters.count(reason);
                warn!(%reason, detail = %message, "publish refused by the gate");
                core.reject_publish("NetStream.Publish.BadName", &message);
                Next::CloseAfterFlush
            }
            (Role::Play, Decision::Refuse(Refusal { reason, message })) => {
                self.ctx.counters.count(reason);
                warn!(%reason, detail = %message, "play refused by the gate");
                core.reject_play("NetStream.Play.Failed", &message);
                Next::CloseAfterFlush
            }
        }
    }

    /// Resolves when another publisher took this session's place; pending for ever
    /// without a publisher.
    pub(super) async fn publisher_replaced(&self) {
        match &self.publisher {
            Some(p) => p.replaced().await,
            None => std::future::pending().await,
        }
    }

    /// This session's publisher was replaced: it lets go of the stream (which goes on
    /// with the new publisher) and the session closes.
    pub(super) fn on_replaced(&mut self) {
        self.publisher = None;
        self.end_allowed();
    }

    /// Whether a publish may replace the current publisher of its session ID: one that
    /// presents the same publish token (where publishing needs one, so the gate checked
    /// it) at once, as an encoder reconnecting with its own key does; anyone else only a
    /// publisher silent for `publisher_takeover_ms` (a frozen encoder, a connection dead
    /// without a reset).
    fn takeover(&self, request: &Request) -> Takeover {
        match crate::auth::publish_credential(&self.ctx.config.auth, request) {
            Some(token) => Takeover::SameOwner(self.ctx.hub.owner(token)),
            None => Takeover::IfSilent,
        }
    }

    /// The hub's answer to an allowed publish that came through `hops` relays, then the
    /// cluster registry's.
    async fn publish(&mut self, core: &mut ServerCore, request: &Request, hops: u32) -> Next {
        let place = match self.ctx.admission.admit_publisher(self.peer.ip()) {
            Ok(place) => place,
            Err(refusal) => {
                let reason = Reason::of_refusal(refusal);
                self.ctx.counters.count(reason);
                warn!(%reason, "publish refused: {refusal}");
                core.reject_publish("NetStream.Publish.BadName", &refusal.to_string());
                self.end_allowed();
                return Next::CloseAfterFlush;
            }
        };
        match self.ctx.hub.publish_with(&request.session_id, self.takeover(request), hops) {
            Ok(p) => {
                // Claimed here first (the hub's claim is instant and local), then in
                // the cluster, so two publishers racing on one node never both ask
                // the registry.
                let registry = self.ctx.registry.clone();
                let counters = self.ctx.counters.clone();
                match PublisherLease::acquire(registry, &request.session_id, counters).await {
                    Ok(lease) => self.lease = Some(lease),
                    Err(node) => {
                        // Refused, not lost: the stream ends here, no grace.
                        p.finish();
                        self.ctx.counters.count(Reason::PublishedElsewhere);
                        warn!(%node, "publish refused: another node publishes this session ID");
                        let why = format!("the stream is being published on {node}");
                        core.reject_publish("NetStream.Publish.BadName", &why);
                        self.end_allowed();
                        return Next::CloseAfterFlush;
                    }
                }
                info!(key = %redact(&request.key), hops, "publish started");
                self.publisher_place = Some(place);
                core.accept_publish();
                p.identify(self.as_peer());
                self.publisher = Some(p);
                Next::Continue
            }
            Err(e) => {
                self.ctx.counters.count(Reason::of_hub(&e));
                warn!(reason = %Reason::of_hub(&e), detail = %e, "publish refused");
                core.reject_publish("NetStream.Publish.BadName", &e.to_string());
                self.end_allowed();
                Next::CloseAfterFlush
            }
        }
    }

    /// The relays a publish came through (what a forwarding relay announced in
    /// `connect`), or why it is refused: a malformed count, or more than `max_hops`.
    fn relayed_hops(&self, core: &ServerCore) -> Result<u32, String> {
        let hops = hops::announced_hops(core.connect_property(hops::HOPS_PROPERTY))?;
        let max = self.ctx.config.max_hops;
        if hops > max {
            return Err(format!("the stream passed {hops} relays, more than max_hops ({max})"));
        }
        Ok(hops)
    }

    /// Tells the gate that the request it allowed ended (once), and frees the address's
    /// publisher place.
    fn end_allowed(&mut self) {
        self.publisher_place = None;
        if let Some(request) = self.allowed.take() {
            self.ctx.gate.ended(&request);
        }
    }

    /// What the player waits for next; pending for ever without a player.
    pub(super) async fn player_event(&self) -> PlayerEvent {
        match &self.player {
            Some(p) if !p.live => {
                let remaining = p.deadline.saturating_duration_since(Instant::now());
                PlayerEvent::Live(p.sub.wait_live(remaining).await)
            }
            Some(p) => PlayerEvent::Ready(p.sub.ready().await),
            None => std::future::pending().await,
        }
    }

    /// The wait for the publisher ended.
    pub(super) fn on_live(&mut self, core: &mut ServerCore, live: bool) -> Next {
        if live {
            info!("play started");
            if let Some(p) = self.player.as_mut() {
                p.live = true;
            }
            core.accept_play();
            Next::Continue
        } else {
            self.ctx.counters.count(Reason::StreamNotFound);
            info!("no publisher within the play wait");
            core.reject_play("NetStream.Play.StreamNotFound", "no such stream is being published");
            self.player = None;
            self.end_allowed();
            Next::CloseAfterFlush
        }
    }

    /// The played stream ended and everything was taken: the player is told and goes.
    /// Returns it, for the driver to finish its writer.
    pub(super) fn on_stream_end(&mut self, core: &mut ServerCore) -> Option<Player<W>> {
        let player = self.player.take();
        if let Some(p) = &player {
            info!(skipped = p.sub.skipped(), "stream ended; closing player");
        }
        core.play_ended();
        self.end_allowed();
        player
    }

    /// Whether a live player is attached (it stays through a graceful shutdown until its
    /// stream ends).
    pub(super) fn live_player(&self) -> bool {
        self.player.as_ref().is_some_and(|p| p.live)
    }
}

impl<W> Drop for HubLink<W> {
    /// The session is over: a publish or play still on ended with it.
    fn drop(&mut self) {
        if let Some(request) = self.allowed.take() {
            self.ctx.gate.ended(&request);
        }
    }
}

/// A stream key for logs: the name without its query (tokens stay out of logs).
fn redact(key: &str) -> &str {
    key.split('?').next().unwrap_or_default()
}
