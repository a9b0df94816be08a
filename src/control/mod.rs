//! The control plane: an HTTP server on its own address (`http_listen`, loopback by
//! default) with the JSON API, Prometheus `/metrics`, the status page and the drain
//! trigger. It reads what the relay counts anyway (hub snapshots, reason counters,
//! connection gauges) and acts through handles the sessions select on (a peer's end
//! token, the graceful-shutdown token); it never touches the media path.
//!
//! - [`http`]: routes, bearer check, JSON errors.
//! - [`api`]: the JSON shapes.
//! - [`metrics`]: the Prometheus collector.
//! - [`conns`]: connections by transport and QUIC statistics per connection class.
//! - [`rates`]: bitrates from byte counters sampled once a second.
//! - [`sessions`]: session allocation (`POST /api/sessions`) and the token hook.
//! - [`relays`]: forward/pull state that the relay clients report.
//! - [`process`]: the relay's own RSS, CPU and file descriptors.
//! - [`server`]: HTTP/1.1 connections, bounded in number and in header time.

pub mod access;
mod api;
pub mod conns;
mod http;
mod metrics;
pub mod process;
pub mod rates;
pub mod relays;
mod server;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use conns::{ConnGuard, ConnKind, Connections};
pub use relays::{ForwardState, PullState, RelayBoard, RelayState};
pub use server::MAX_CONNECTIONS;
pub use sessions::{Allocation, Allocations, TokenMinter};

use crate::hub::Hub;
use crate::reason::Counters;

/// The status page: one static file, no build step.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the control plane reads and acts on.
#[derive(Debug)]
pub struct ControlParts {
    /// The stream registry.
    pub hub: Hub,
    /// Closes and refusals by reason.
    pub counters: Arc<Counters>,
    /// Connections by transport.
    pub conns: Connections,
    /// Session allocations.
    pub allocations: Allocations,
    /// Forward/pull state of streams.
    pub relays: RelayBoard,
    /// Cancelled to drain (the relay's graceful-shutdown signal).
    pub drain: CancellationToken,
    /// Makes tokens for allocated sessions, when the relay has one.
    pub minter: Option<Arc<dyn TokenMinter>>,
    /// The RTMP/QUIC address, for the URLs of allocated sessions.
    pub rtmp_addr: SocketAddr,
    /// The bearer token (configured, or generated and kept beside the development CA).
    pub api_token: access::ApiToken,
    /// Host names (besides IP literals and `localhost`) the API answers to.
    pub api_hosts: Vec<String>,
    /// The drain's grace period.
    pub grace: Duration,
    /// Longest a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How the hooks' notifications went, when hooks are configured.
    pub hooks: Option<Arc<crate::hooks::HookStats>>,
    /// Streams with series of their own in `/metrics`.
    pub metrics_max_streams: usize,
}

/// Shared state of the HTTP handlers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    allocations: Allocations,
    relays: RelayBoard,
    drain: CancellationToken,
    minter: Option<Arc<dyn TokenMinter>>,
    rtmp_addr: SocketAddr,
    api_token: access::ApiToken,
    api_hosts: Vec<String>,
    grace: Duration,
    rates: rates::Rates,
    registry: Registry,
}

/// Serves the control API on `listener` until `stop` is cancelled, sampling bitrates
/// meanwhile.
pub async fn serve(listener: TcpListener, parts: ControlParts, stop: CancellationToken) {
    let registry = metrics::registry(
        metrics::Sources {
            hub: parts.hub.clone(),
            counters: parts.counters,
            conns: parts.conns,
            hooks: parts.hooks,
            allocations: parts.allocations.clone(),
        },
        parts.metrics_max_streams,
    );
    let control = Control {
        inner: Arc::new(Inner {
            hub: parts.hub,
            allocations: parts.allocations,
            relays: parts.relays,
            drain: parts.drain,
            minter: parts.minter,
            rtmp_addr: parts.rtmp_addr,
            api_token: parts.api_token,
            api_hosts: parts.api_hosts,
            grace: parts.grace,
            rates: rates::Rates::default(),
            registry,
        }),
    };
    let sampler = tokio::spawn(sample_rates(control.clone(), stop.clone()));
    server::serve(listener, http::router(control), parts.header_timeout, stop).await;
    sampler.abort();
}

/// Samples every stream's byte counters once a second for the bitrates.
async fn sample_rates(control: Control, stop: CancellationToken) {
    let mut tick = tokio::time::interval(rates::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            at = tick.tick() => {
                let streams = control.inner.hub.snapshot();
                control.inner.rates.sample(&streams, at);
            }
        }
    }
}
