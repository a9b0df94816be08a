//! The relay: binds the one port (TCP and UDP), prepares TLS, and runs the accept loops
//! until shutdown. Submodules: [`tcp`] and [`quic`] accept and dispatch,
//! [`connection`] drives a session over a byte stream (TCP, TLS, the QUIC tunnel),
//! [`roqr_conn`] a RoQR connection, [`webtransport`] a browser's WebTransport session.
//! The control plane's HTTP server
//! ([`crate::control`]) runs beside the accept loops and stops with them.
//!
//! Graceful shutdown, the drain (SIGTERM or `POST /api/drain`): stop accepting; ask
//! publishers that declared E-RTMP reconnect support to reconnect, end the others at
//! their next keyframe; players drain and close when their stream ends; exit when no
//! session is left or after the grace period. Immediate shutdown (SIGINT): stop now.

pub mod connection;
mod http;
mod hub_link;
pub mod quic;
mod refusal_log;
pub mod roqr_conn;
pub mod tcp;
pub mod webtransport;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::config::Config;
use crate::control::{self, Allocations, Connections, ControlParts, RelayBoard, TokenMinter};
use crate::gate::{self, Gate};
use crate::hub::Hub;
use crate::reason::Counters;
use crate::registry::{Embedded, Redis, Registry};
use crate::relay::pull::{PullSettings, Puller};
use crate::relay::push::Forwarding;
use crate::transport::admission::Admission;
use crate::transport::redundancy::Redundancy;
use crate::transport::{quic as quic_endpoint, tls};
use connection::ConnContext;
use webtransport::WebTransportCerts;

/// The two shutdown signals.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting and let sessions finish (SIGTERM).
    pub graceful: CancellationToken,
    /// Stop now (SIGINT).
    pub immediate: CancellationToken,
}

/// A bound, not yet running relay.
pub struct Server {
    config: Arc<Config>,
    tcp: TcpListener,
    endpoint: quinn::Endpoint,
    redundancy: Redundancy,
    tls: TlsAcceptor,
    local_addr: SocketAddr,
    dev_ca: Option<PathBuf>,
    hub: Hub,
    gate: Arc<dyn Gate>,
    auth: Option<Arc<Auth>>,
    /// The hooks' notification counters, when hooks are configured.
    hooks: Option<Arc<crate::hooks::HookStats>>,
    counters: Arc<Counters>,
    /// The control API's listener and token, unless `http_listen = "off"`.
    http: Option<(TcpListener, control::access::ApiToken)>,
    http_addr: Option<SocketAddr>,
    conns: Connections,
    allocations: Allocations,
    relays: RelayBoard,
    minter: Option<Arc<dyn TokenMinter>>,
    forwarding: Forwarding,
    registry: Arc<dyn Registry>,
    admission: Arc<Admission>,
    /// The certificate hashes browsers need for WebTransport, and their rotation.
    webtransport: WebTransportCerts,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

/// Why the relay could not start. Each message carries its cause (none is also the
/// `source()`), so a `{:#}` chain prints every cause once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is not usable.
    #[error("{0}")]
    Config(crate::config::ConfigError),
    /// The configured gate (tokens, hooks) cannot work: no secret, a bad one...
    #[error("{0}")]
    Gate(gate::GateError),
    /// Certificates could not be loaded or made.
    #[error("{0}")]
    Tls(tls::TlsError),
    /// The QUIC endpoint could not be set up.
    #[error("{0}")]
    Quic(quic_endpoint::QuicError),
    /// The TCP port is taken or not allowed.
    #[error("TCP port for RTMP not available on {addr}: {error}")]
    TcpPort {
        /// The address asked for.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// The control API's address is taken or not allowed.
    #[error("HTTP address for the control API not available on {addr}: {error}")]
    HttpPort {
        /// The address asked for.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// No UDP port next to the TCP one.
    #[error("UDP port for QUIC not available next to TCP on {addr}: {error}")]
    UdpPort {
        /// The address asked for.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// Another socket or TLS set-up failure.
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<crate::config::ConfigError> for ServerError {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<gate::GateError> for ServerError {
    fn from(e: gate::GateError) -> Self {
        Self::Gate(e)
    }
}

impl From<tls::TlsError> for ServerError {
    fn from(e: tls::TlsError) -> Self {
        Self::Tls(e)
    }
}

impl From<quic_endpoint::QuicError> for ServerError {
    fn from(e: quic_endpoint::QuicError) -> Self {
        Self::Quic(e)
    }
}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Tries for a port free on both TCP and UDP when the configured port is 0.
const PORT_ATTEMPTS: usize = 20;

impl Server {
    /// Binds TCP and UDP on the same port and loads (or makes) the certificates.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let port = BoundPort::bind(config.listen)?;
        Self::bind_on(port, config).await
    }

    /// As [`Server::bind`], on a port bound beforehand (`config.listen` is not used):
    /// for a node that must know its own address before it starts (an origin list that
    /// names itself, a forward target that comes up late), with no window in which
    /// another process could take the port.
    pub async fn bind_on(port: BoundPort, config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        // Before any port is taken: a missing secret is a configuration error at start.
        let gate::Configured { gate, auth, hooks } = gate::from_config(&config)?;
        if let Some(jwks) = auth.as_ref().and_then(|a| a.jwks()) {
            // Before listening, so tokens signed with the set's keys are good from the first
            // connection; a failure is logged and retried by the task `run` starts.
            jwks.fetch_logged().await;
        }
        let (identity, created) = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => (tls::load_identity(cert, key)?, false),
            _ => tls::dev_identity(&config.cert_dir)?,
        };
        if let Some(ca) = &identity.dev_ca {
            info!(
                ca = %ca.display(),
                created,
                "development certificate in use; clients trust it with `--ca {}` (or skip checks with --insecure)",
                ca.display()
            );
        }
        let BoundPort { tcp, udp, addr: local_addr } = port;
        let tcp = tcp.listen(TCP_BACKLOG)?;
        // Browsers trust no development CA: without a configured identity, `h3` gets a
        // short-lived certificate they accept by its hash.
        let resolver = Arc::new(tls::AlpnCertResolver::new(
            tls::certified_key(identity.chain.clone(), identity.key.clone_key())?,
            &tls::SERVER_ALPN,
        ));
        let webtransport = if config.cert.is_some() && config.key.is_some() {
            WebTransportCerts::web_pki(local_addr.port())
        } else {
            WebTransportCerts::self_signed(resolver.clone(), local_addr.port())?
        };
        let quic_tls = tls::server_config_resolving(resolver, &tls::SERVER_ALPN)?;
        let (endpoint, redundancy) = quic_endpoint::server_endpoint_with(udp, quic_tls, &config.quic())?;
        let conns = Connections::default();
        conns.set_redundancy(redundancy.clone());
        let tls = TlsAcceptor::from(Arc::new(tls::rtmps_server_config(&identity)?));
        if let Some(ca) = &config.relay_ca {
            // A CA file that cannot be used is an error now, not at the first relay link.
            tls::client_config(&tls::Trust::CaFile(ca.clone()), &[])?;
        }
        let counters = Arc::<Counters>::default();
        let me = config.node(local_addr)?;
        let forwarding = Forwarding::new(&config, local_addr, me, counters.clone());
        let hub = Hub::with_watcher(config.hub(), Arc::new(forwarding.clone()));
        let http = match config.http_listen.addr() {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|error| ServerError::HttpPort { addr, error })?)
            }
            None => None,
        };
        let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
        let http = match http {
            Some(listener) => {
                let token = control::access::ApiToken::resolve(config.api.token.as_deref(), &config.cert_dir)
                    .map_err(|e| {
                        ServerError::Io(std::io::Error::new(
                            e.kind(),
                            format!("the control API token in {}: {e}", config.cert_dir.display()),
                        ))
                    })?;
                if let Some(path) = &token.generated {
                    info!(path = %path.display(), "control API token (needed for POST and DELETE) kept in this file");
                }
                Some((listener, token))
            }
            None => None,
        };
        let registry = registry_from(&config, local_addr)?;
        let config_limits =
            (config.max_connections, config.max_connections_per_ip, config.max_publishers_per_ip);
        let memory_budget = config.memory_budget();
        info!(
            max_memory_mib = memory_budget >> 20,
            "memory budget: new connections and publishers refused above it"
        );
        Ok(Self {
            config: Arc::new(config),
            tcp,
            endpoint,
            redundancy,
            tls,
            local_addr,
            dev_ca: identity.dev_ca,
            hub,
            gate,
            auth,
            hooks,
            counters,
            forwarding,
            http,
            http_addr,
            conns,
            allocations: Allocations::default(),
            relays: RelayBoard::default(),
            minter: None,
            registry,
            admission: Admission::with_budget(
                config_limits.0,
                config_limits.1,
                config_limits.2,
                crate::transport::memory::MemoryBudget::new(memory_budget),
            ),
            webtransport,
        })
    }

    /// Where the control API listens (`None` with `http_listen = "off"`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The control API's bearer token (`None` with `http_listen = "off"`).
    pub fn api_token(&self) -> Option<&str> {
        self.http.as_ref().map(|(_, t)| t.token.as_str())
    }

    /// Session allocations made through `POST /api/sessions` (their forward targets,
    /// for the forwarder).
    pub fn allocations(&self) -> Allocations {
        self.allocations.clone()
    }

    /// Where relay clients (forward, pull) report their state for the control API.
    pub fn relay_board(&self) -> RelayBoard {
        self.relays.clone()
    }

    /// Connections by transport and QUIC statistics, as `/metrics` reports them.
    pub fn transport_stats(&self) -> Connections {
        self.conns.clone()
    }

    /// Gives `POST /api/sessions` a way to make publish and play tokens (without one,
    /// the session URLs carry none).
    pub fn set_token_minter(&mut self, minter: Arc<dyn TokenMinter>) {
        self.minter = Some(minter);
    }

    /// The address both TCP and UDP are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The development CA clients must trust, when the generated certificate is in use.
    pub fn dev_ca(&self) -> Option<&PathBuf> {
        self.dev_ca.as_ref()
    }

    /// Replaces the gate that decides publish and play requests (by default the one the
    /// configuration asks for: tokens, then hooks; with neither, everything goes through).
    pub fn set_gate(&mut self, gate: Arc<dyn Gate>) {
        self.gate = gate;
    }

    /// The token rules and secret, when a secret is configured: mints publish and play
    /// tokens this relay accepts ([`Auth::mint`]).
    pub fn auth(&self) -> Option<Arc<Auth>> {
        self.auth.clone()
    }

    /// Closes and refusals by reason (for tests and metrics).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Connections (TCP and QUIC) open now.
    pub fn connections(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    /// The stream registry (for tests and the control API).
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Push forwarding: its rules (replaceable) and the status of every forward (for
    /// tests and the control API).
    pub fn forwarding(&self) -> Forwarding {
        self.forwarding.clone()
    }

    /// Runs until shutdown.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        if let Some(jwks) = self.auth.as_ref().and_then(|a| a.jwks()) {
            tokio::spawn(jwks.run(shutdown.graceful.clone()));
        }
        let puller = self.puller(shutdown.graceful.clone());
        let ctx = ConnContext {
            hub: self.hub.clone(),
            config: self.config.clone(),
            shutdown: shutdown.graceful.clone(),
            gate: self.gate.clone(),
            counters: self.counters.clone(),
            conns: self.conns.clone(),
            registry: self.registry.clone(),
            puller,
            admission: self.admission.clone(),
            webtransport: self.webtransport.clone(),
        };
        let certs_stop = CancellationToken::new();
        let certs = tokio::spawn(self.webtransport.clone().keep_fresh(certs_stop.clone()));
        self.relays.attach(self.forwarding.clone(), ctx.puller.clone());
        let http_stop = CancellationToken::new();
        let http = self.http.map(|(listener, api_token)| {
            let parts = ControlParts {
                hub: self.hub.clone(),
                counters: self.counters.clone(),
                conns: self.conns.clone(),
                allocations: self.allocations.clone(),
                relays: self.relays.clone(),
                drain: shutdown.graceful.clone(),
                // Tokens in allocated sessions' URLs: the embedder's minter, or the relay's
                // own `[auth]` rules.
                minter: self.minter.clone().or_else(|| self.auth.clone().map(|a| a as Arc<dyn TokenMinter>)),
                rtmp_addr: self.local_addr,
                api_token,
                api_hosts: self.config.api.hosts.clone(),
                grace: Duration::from_millis(self.config.shutdown_grace_ms),
                header_timeout: Duration::from_millis(self.config.handshake_timeout_ms),
                hooks: self.hooks.clone(),
                metrics_max_streams: self.config.metrics_max_streams,
            };
            tokio::spawn(control::serve(listener, parts, http_stop.clone()))
        });
        let admission = self.admission.clone();
        let tasks = TaskTracker::new();
        if let Some(http) = self.http_addr {
            info!(%http, "control API, /metrics and status page on HTTP");
        }
        info!(addr = %self.local_addr, "listening: RTMP on TCP, QUIC on UDP, same port");
        let accept = TaskTracker::new();
        accept.spawn(tcp::accept_loop(
            self.tcp,
            Some(self.tls),
            admission.clone(),
            ctx.clone(),
            tasks.clone(),
        ));
        accept.spawn(quic::accept_loop(
            self.endpoint.clone(),
            self.redundancy.clone(),
            admission,
            ctx,
            tasks.clone(),
        ));
        accept.close();
        // Forwards stop with an immediate shutdown even if this future is dropped first.
        let forwarding = self.forwarding.clone();
        let immediate = shutdown.immediate.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = immediate.cancelled() => forwarding.stop(),
                _ = forwarding.stopped() => {}
            }
        });

        tokio::select! {
            _ = shutdown.graceful.cancelled() => {}
            _ = shutdown.immediate.cancelled() => {}
        }
        // No publisher will come back: players waiting in a grace get their end now.
        self.hub.close();
        accept.wait().await;
        tasks.close();
        if !shutdown.immediate.is_cancelled() {
            info!(sessions = tasks.len(), "draining: waiting for sessions to finish");
            let grace = Duration::from_millis(self.config.shutdown_grace_ms);
            // Forwards end with their streams, politely (their targets' sessions too).
            let drained = async { tokio::join!(tasks.wait(), self.forwarding.wait()) };
            tokio::select! {
                _ = drained => {}
                _ = shutdown.immediate.cancelled() => {}
                _ = tokio::time::sleep(grace) => warn!(sessions = tasks.len(), "grace period over; closing the rest"),
            }
        }
        self.forwarding.stop();
        certs_stop.cancel();
        let _ = certs.await;
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
        // Closed connections drain for three probe timeouts before the endpoint lets go of
        // the UDP port.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // Sessions still running hold the endpoint (and so the UDP port) until they see
        // their connection closed, which is now: give them a moment, so that the port is
        // free when this returns (a restart on the same port).
        let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
        // The control API answers until here (a drain can be watched); its open
        // requests get a moment to finish.
        http_stop.cancel();
        if let Some(mut http) = http {
            if tokio::time::timeout(Duration::from_secs(1), &mut http).await.is_err() {
                http.abort();
            }
        }
        info!("stopped");
        Ok(())
    }
}

impl Server {
    /// The edge puller, from the origins and the registry.
    fn puller(&self, stop: tokio_util::sync::CancellationToken) -> Puller {
        let c = &self.config;
        let mut client = crate::relay::client_options(c);
        client.play_wait = Duration::from_millis(c.play_wait_ms) + Duration::from_secs(5);
        let settings = PullSettings {
            origins: c.origins(),
            me: c.node(self.local_addr).ok().flatten(),
            local: self.local_addr,
            idle: Duration::from_millis(c.pull_idle_ms),
            max_hops: c.max_hops,
            auth: self.auth.clone(),
            mint_for_open_play: c.auth.mint_pull_tokens,
            max_pulls: c.max_pulls.max(1),
            not_found_for: Duration::from_millis(c.pull_not_found_ms),
            client,
        };
        Puller::new(self.hub.clone(), self.registry.clone(), settings, self.counters.clone(), stop)
    }
}

/// The registry the configuration asks for.
fn registry_from(config: &Config, bound: SocketAddr) -> Result<Arc<dyn Registry>, ServerError> {
    let Some(url) = &config.registry else { return Ok(Arc::new(Embedded)) };
    let me = config.node(bound)?.ok_or_else(|| {
        ServerError::Config(crate::config::ConfigError::Invalid("node_url is needed with a registry".into()))
    })?;
    let lease = Duration::from_millis(config.registry_lease_ms);
    // A request may take a third of the lease: a heartbeat that waits longer is late anyway.
    // The URL may hold Redis AUTH's password: logs and errors get it without.
    let shown = crate::url::redact_password(url);
    let redis = Redis::new(url, &me, lease, lease / 3).map_err(|e| {
        ServerError::Config(crate::config::ConfigError::Invalid(format!("registry `{shown}`: {e}")))
    })?;
    info!(registry = %shown, node = %me, "cluster registry: Redis");
    Ok(Arc::new(redis))
}

/// Binds, then runs: the library entry point tests call on port 0.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await
}

/// Pending TCP connections the kernel queues for the accept loop (tokio's default).
const TCP_BACKLOG: u32 = 1024;

/// The relay's one port, TCP and UDP, bound and held but not yet served: until a
/// [`Server`] runs on it, TCP connections to it are refused (the socket does not listen)
/// and nobody else can take it.
#[derive(Debug)]
pub struct BoundPort {
    tcp: tokio::net::TcpSocket,
    udp: UdpSocket,
    addr: SocketAddr,
}

impl BoundPort {
    /// Binds TCP and UDP on the same port of `addr`; with port 0, a port free for both.
    pub fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        let attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
        let mut last_err = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        for _ in 0..attempts {
            let tcp = bind_tcp(addr).map_err(|error| ServerError::TcpPort { addr, error })?;
            let port_addr = tcp.local_addr()?;
            match quic_endpoint::bind_udp(port_addr) {
                Ok(udp) => return Ok(Self { tcp, udp, addr: port_addr }),
                Err(e) => last_err = e,
            }
        }
        Err(ServerError::UdpPort { addr, error: last_err })
    }

    /// The address both are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A TCP socket bound to `addr`, not listening, with `SO_REUSEADDR` as a listener has it
/// (a restarted relay takes its port back while old connections linger in TIME_WAIT).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}
