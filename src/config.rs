//! The one configuration type, for a TOML file (serde; unknown keys refused), the command
//! line and the environment (clap; `--chunk-size` or `QRELAY_CHUNK_SIZE` for
//! `chunk_size`): what the command line or environment sets wins over the file, which
//! wins over the defaults ([`Config::resolve`]). Every limit the relay enforces lives here
//! with its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hub::{HubConfig, QueueLimits};
use crate::relay::node::NodeUrl;
use crate::relay::push::ForwardRule;
use crate::rtmp::chunk::DecoderLimits;
use crate::rtmp::session::SessionConfig;
use crate::transport::quic::QuicSettings;

/// Relay configuration. All durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// One address and port for RTMP over TCP and for QUIC over UDP.
    #[arg(long, env = "QRELAY_LISTEN", default_value_t = Config::default().listen)]
    pub listen: SocketAddr,
    /// PEM certificate chain for QUIC and RTMPS; a development CA is made when absent.
    #[arg(long, env = "QRELAY_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    #[arg(long, env = "QRELAY_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where the development CA and localhost certificate are made and reused.
    #[arg(long, env = "QRELAY_CERT_DIR", default_value_os_t = Config::default().cert_dir)]
    pub cert_dir: PathBuf,
    /// Outbound RTMP chunk size.
    #[arg(long, env = "QRELAY_CHUNK_SIZE", default_value_t = Config::default().chunk_size)]
    pub chunk_size: u32,
    /// Smallest chunk size a peer may set (1-byte chunks cost a header per byte).
    #[arg(long, env = "QRELAY_MIN_CHUNK_SIZE", default_value_t = Config::default().min_chunk_size)]
    pub min_chunk_size: u32,
    /// Largest chunk size a peer may set.
    #[arg(long, env = "QRELAY_MAX_CHUNK_SIZE", default_value_t = Config::default().max_chunk_size)]
    pub max_chunk_size: u32,
    /// Largest RTMP message accepted.
    #[arg(long, env = "QRELAY_MAX_MESSAGE_SIZE", default_value_t = Config::default().max_message_size)]
    pub max_message_size: u32,
    /// Bytes of partial messages one connection may hold.
    #[arg(long, env = "QRELAY_MAX_PENDING_BYTES", default_value_t = Config::default().max_pending_bytes)]
    pub max_pending_bytes: usize,
    /// Streams being published at once (a publisher over this is refused).
    #[arg(long, env = "QRELAY_MAX_PUBLISHERS", default_value_t = Config::default().max_publishers)]
    pub max_publishers: usize,
    /// Streams one address (an IPv4 address, an IPv6 /64) may publish at once, so one
    /// peer cannot hold every publisher slot.
    #[arg(long, env = "QRELAY_MAX_PUBLISHERS_PER_IP", default_value_t = Config::default().max_publishers_per_ip)]
    pub max_publishers_per_ip: usize,
    /// The process's memory budget (`2GiB`, `512MiB`, bytes; `auto`: three quarters of
    /// the machine's or the cgroup's memory). While the resident set is over it, new
    /// connections and publishers are refused (counted `memory_budget`).
    #[arg(long, env = "QRELAY_MAX_MEMORY", default_value = "auto")]
    pub max_memory: String,
    /// How long a session may go without asking to publish or play; it is closed then
    /// (counted `no_role`), however much else it sends.
    #[arg(long, env = "QRELAY_ROLE_TIMEOUT_MS", default_value_t = Config::default().role_timeout_ms)]
    pub role_timeout_ms: u64,
    /// Pulls from origins at once; a player of another stream not live here is not
    /// pulled for (counted `pull_limit`) and waits out its play wait.
    #[arg(long, env = "QRELAY_MAX_PULLS", default_value_t = Config::default().max_pulls)]
    pub max_pulls: usize,
    /// How long an edge believes its origins' "no such stream": players of that stream
    /// arriving meanwhile start no pull (0: never cached).
    #[arg(long, env = "QRELAY_PULL_NOT_FOUND_MS", default_value_t = Config::default().pull_not_found_ms)]
    pub pull_not_found_ms: u64,
    /// Streams `/metrics` gives series of their own (the most watched first); the rest
    /// are left out of the per-stream families, so a flood of session IDs cannot grow a
    /// scrape without bound.
    #[arg(long, env = "QRELAY_METRICS_MAX_STREAMS", default_value_t = Config::default().metrics_max_streams)]
    pub metrics_max_streams: usize,
    /// How long a player waits for a publisher that has not arrived.
    #[arg(long, env = "QRELAY_PLAY_WAIT_MS", default_value_t = Config::default().play_wait_ms)]
    pub play_wait_ms: u64,
    /// Per-subscriber queue bound in payload bytes.
    #[arg(long, env = "QRELAY_QUEUE_MAX_BYTES", default_value_t = Config::default().queue_max_bytes)]
    pub queue_max_bytes: usize,
    /// Per-subscriber queue bound in media duration.
    #[arg(long, env = "QRELAY_QUEUE_MAX_MS", default_value_t = Config::default().queue_max_ms)]
    pub queue_max_ms: u64,
    /// Largest GOP cached for late joiners.
    #[arg(long, env = "QRELAY_MAX_GOP_BYTES", default_value_t = Config::default().max_gop_bytes)]
    pub max_gop_bytes: usize,
    /// Time allowed for the RTMP handshake and connect.
    #[arg(long, env = "QRELAY_HANDSHAKE_TIMEOUT_MS", default_value_t = Config::default().handshake_timeout_ms)]
    pub handshake_timeout_ms: u64,
    /// A publisher or not-yet-playing session silent this long is closed.
    #[arg(long, env = "QRELAY_IDLE_TIMEOUT_MS", default_value_t = Config::default().idle_timeout_ms)]
    pub idle_timeout_ms: u64,
    /// A write to a player that makes no progress this long closes it.
    #[arg(long, env = "QRELAY_WRITE_TIMEOUT_MS", default_value_t = Config::default().write_timeout_ms)]
    pub write_timeout_ms: u64,
    /// Send each write to a TCP player at once (TCP_NODELAY). Off lets Nagle's algorithm
    /// hold a frame until the previous one is acknowledged: less CPU per byte, as
    /// nginx-rtmp and SRS run by default, for up to a round trip of added latency.
    #[arg(long, env = "QRELAY_TCP_NODELAY", action = clap::ArgAction::Set, default_value_t = Config::default().tcp_nodelay)]
    pub tcp_nodelay: bool,
    /// Longest the relay holds a frame to write it to a stream's players together with
    /// the frames that follow, one write per player instead of one per frame (much less
    /// CPU per delivered byte). A frame that finds the players idle goes at once, and a
    /// video frame goes at once with the audio held before it: audio rides with the next
    /// video frame and video is not delayed. 0 writes every frame at once. At most 1000.
    #[arg(long, env = "QRELAY_WRITE_COALESCE_MS", default_value_t = Config::default().write_coalesce_ms)]
    pub write_coalesce_ms: u64,
    /// A batch of held frames this large, in payload bytes, is written at once.
    #[arg(long, env = "QRELAY_WRITE_COALESCE_BYTES", default_value_t = Config::default().write_coalesce_bytes)]
    pub write_coalesce_bytes: usize,
    /// Hold video frames too, as SRS's merged writes do: fewer writes still (less CPU
    /// with many players) for up to `write_coalesce_ms` of added latency on every frame.
    /// Raise `write_coalesce_bytes` with it (a video frame is larger than the default).
    /// Off by default: pictures are never delayed.
    #[arg(long, env = "QRELAY_WRITE_COALESCE_VIDEO", action = clap::ArgAction::Set, default_value_t = Config::default().write_coalesce_video)]
    pub write_coalesce_video: bool,
    /// QUIC congestion controller, server and client side. BBR by default: loss-based
    /// controllers (CUBIC, NewReno) halve their window on every loss and starve a live
    /// stream at the 0.5–5 % loss of the networks QUIC ingest is for (README, "QUIC on bad networks").
    #[arg(long, env = "QRELAY_QUIC_CONGESTION", default_value_t = Config::default().quic_congestion)]
    pub quic_congestion: Congestion,
    /// Redundant copies of QUIC datagrams on lossy paths, server and client side. `auto`
    /// sends each datagram two or three times while the measured loss calls for it and
    /// the path does not queue, so random loss rarely costs a retransmission (README,
    /// "QUIC on bad networks"); `off` sends each once.
    #[arg(long, env = "QRELAY_QUIC_REDUNDANCY", default_value_t = Config::default().quic_redundancy)]
    pub quic_redundancy: RedundancyMode,
    /// The RTT QUIC assumes before it has measured one. quinn's default (333 ms, the
    /// RFC 9002 value) makes the first loss timers slow; 100 ms suits most ingest paths
    /// and is corrected by the first sample.
    #[arg(long, env = "QRELAY_QUIC_INITIAL_RTT_MS", default_value_t = Config::default().quic_initial_rtt_ms)]
    pub quic_initial_rtt_ms: u64,
    /// Largest UDP payload MTU discovery may probe up to, and the largest this endpoint
    /// accepts from peers. Discovery stops at what the path carries (about 1452-1472 on
    /// Ethernet); jumbo-frame and loopback paths reach this bound, with fewer packets per
    /// byte. Each connection may buffer up to ten datagrams of this size.
    #[arg(long, env = "QRELAY_QUIC_MAX_MTU", default_value_t = Config::default().quic_max_mtu)]
    pub quic_max_mtu: u16,
    /// RoQR players (per-track mapping): a GOP still unacknowledged this long after it
    /// ended is cancelled and the player continues from the next keyframe, so a player
    /// behind a slow link lags at most about this plus one GOP.
    #[arg(long, env = "QRELAY_MAX_LATENCY_MS", default_value_t = Config::default().max_latency_ms)]
    pub max_latency_ms: u64,
    /// QUIC idle timeout.
    #[arg(long, env = "QRELAY_QUIC_IDLE_TIMEOUT_MS", default_value_t = Config::default().quic_idle_timeout_ms)]
    pub quic_idle_timeout_ms: u64,
    /// QUIC keep-alive interval (must be below the idle timeout).
    #[arg(long, env = "QRELAY_QUIC_KEEP_ALIVE_MS", default_value_t = Config::default().quic_keep_alive_ms)]
    pub quic_keep_alive_ms: u64,
    /// Bidirectional streams (RTMP sessions) one QUIC connection may open at once.
    #[arg(long, env = "QRELAY_MAX_QUIC_STREAMS", default_value_t = Config::default().max_quic_streams)]
    pub max_quic_streams: u32,
    /// Connections (TCP plus QUIC) at once.
    #[arg(long, env = "QRELAY_MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    pub max_connections: usize,
    /// Connections from one IP address at once.
    #[arg(long, env = "QRELAY_MAX_CONNECTIONS_PER_IP", default_value_t = Config::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// How long the players of a publisher that went away without unpublishing (lost
    /// connection, `idle_timeout_ms`, replaced) stay connected waiting for a new publisher
    /// on the same session ID, which then resumes the stream for them. 0: they get the end
    /// of stream at once.
    #[arg(long, env = "QRELAY_PUBLISHER_GRACE_MS", default_value_t = Config::default().publisher_grace_ms)]
    pub publisher_grace_ms: u64,
    /// A publisher that sent no media this long may be replaced at once by a new publisher
    /// on its session ID (the sign that it froze rather than that a second encoder is
    /// hijacking the stream; one presenting the same publish token may replace it at once
    /// anyway). 0: only the same token replaces a publisher.
    #[arg(long, env = "QRELAY_PUBLISHER_TAKEOVER_MS", default_value_t = Config::default().publisher_takeover_ms)]
    pub publisher_takeover_ms: u64,
    /// On SIGTERM (or `POST /api/drain`), how long sessions get to finish before the
    /// relay exits anyway.
    #[arg(long, env = "QRELAY_SHUTDOWN_GRACE_MS", default_value_t = Config::default().shutdown_grace_ms)]
    pub shutdown_grace_ms: u64,
    /// Origins an edge pulls a stream from when a player asks for one not published
    /// here: node URLs (`rtmp+quic://origin:1935`, `rtmp://nginx:1935`), tried in order
    /// after the registry's answer. Repeat the flag (or separate with commas) for more.
    #[arg(long = "origin", env = "QRELAY_ORIGIN", value_delimiter = ',')]
    pub origin: Vec<String>,
    /// How long a pulled stream's upstream stays open after its last player left.
    #[arg(long, env = "QRELAY_PULL_IDLE_MS", default_value_t = Config::default().pull_idle_ms)]
    pub pull_idle_ms: u64,
    /// Cluster registry: `redis://host:port[/db]`, or a Unix socket of a Redis on this
    /// host, `redis+unix:///run/redis.sock[?db=N]`. Without it, each node decides alone
    /// and edges pull from the `origin` list.
    #[arg(long, env = "QRELAY_REGISTRY")]
    pub registry: Option<String>,
    /// How other nodes reach this one (`rtmp+quic://10.0.0.1:1935`), registered with each
    /// local publisher's lease. Defaults to `rtmp+quic://` and the listen address when
    /// that is not a wildcard.
    #[arg(long, env = "QRELAY_NODE_URL")]
    pub node_url: Option<String>,
    /// A publisher's registry lease: another node may take its session ID over this long
    /// after this node stopped refreshing it (it died or lost the registry).
    #[arg(long, env = "QRELAY_REGISTRY_LEASE_MS", default_value_t = Config::default().registry_lease_ms)]
    pub registry_lease_ms: u64,
    /// CA certificates (PEM) trusted on this relay's own outbound links (origins it
    /// pulls from, targets it forwards to); the web PKI roots when absent.
    #[arg(long, env = "QRELAY_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,
    /// Skip certificate checks on outbound links (development only).
    #[arg(long, env = "QRELAY_RELAY_INSECURE", action = clap::ArgAction::Set, default_value_t = false)]
    pub relay_insecure: bool,
    /// Push forwarding: streams whose session ID matches a rule's pattern are published to
    /// each of its targets while live (`[[forward]]` tables in the file). On the command
    /// line `PATTERN=URL[,URL...]`, repeatable (or `;`-separated); it replaces the file's
    /// rules.
    #[arg(long, env = "QRELAY_FORWARD", value_name = "PATTERN=URL[,URL...]",
          value_parser = ForwardRule::parse_arg, value_delimiter = ';')]
    pub forward: Vec<ForwardRule>,
    /// Relays a stream may pass through: a publish announcing more (`qrelayHops`) is
    /// refused, and a stream is not forwarded when its next hop would exceed this.
    #[arg(long, env = "QRELAY_MAX_HOPS", default_value_t = Config::default().max_hops)]
    pub max_hops: u32,
    /// First wait before a failed forward target is tried again; it doubles (jittered)
    /// up to `forward_backoff_max_ms`.
    #[arg(long, env = "QRELAY_FORWARD_BACKOFF_MIN_MS", default_value_t = Config::default().forward_backoff_min_ms)]
    pub forward_backoff_min_ms: u64,
    /// Longest wait between attempts on a failed forward target.
    #[arg(long, env = "QRELAY_FORWARD_BACKOFF_MAX_MS", default_value_t = Config::default().forward_backoff_max_ms)]
    pub forward_backoff_max_ms: u64,
    /// Publish and play tokens (`[auth]`).
    #[command(flatten)]
    pub auth: AuthConfig,
    /// HTTP hooks on publish and play (`[hooks]`).
    #[command(flatten)]
    pub hooks: HooksConfig,
    /// The control API, `/metrics` and the status page: an address, or `off`. Loopback by
    /// default; any other address needs `[api] token`.
    #[arg(long = "http", env = "QRELAY_HTTP_LISTEN", default_value_t = Config::default().http_listen)]
    pub http_listen: HttpListen,
    /// `[api]`: the control API's own settings.
    #[command(flatten)]
    pub api: ApiConfig,
}

/// `[auth]`: whether publishing and playing need a token, globally and per app. Tokens
/// are checked with a secret from `secret_file` or, without one, from the
/// `QRELAY_AUTH_SECRET` environment variable; the secret itself is never part of the
/// configuration (nor of anything that prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the token signing secret (surrounding whitespace ignored).
    #[arg(id = "auth.secret_file", long = "auth-secret-file", env = "QRELAY_AUTH_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Whether publishing needs a token: `open` or `token`.
    #[arg(id = "auth.publish", long = "auth-publish", env = "QRELAY_AUTH_PUBLISH", default_value_t = AuthMode::Open)]
    pub publish: AuthMode,
    /// Whether playing needs a token: `open` or `token`.
    #[arg(id = "auth.play", long = "auth-play", env = "QRELAY_AUTH_PLAY", default_value_t = AuthMode::Open)]
    pub play: AuthMode,
    /// Rules for single apps (`[auth.apps.NAME]`, file only), over the two above.
    #[arg(skip)]
    pub apps: BTreeMap<String, AppAuth>,
    /// An edge pulls with a play token it mints from the shared secret only where its own
    /// players need tokens; set this to mint them for streams it plays openly too (its
    /// open players then reach an origin that wants tokens: a deliberate widening).
    #[arg(
        id = "auth.mint_pull_tokens",
        long = "auth-mint-pull-tokens",
        env = "QRELAY_AUTH_MINT_PULL_TOKENS"
    )]
    pub mint_pull_tokens: bool,
    /// Seconds by which `exp` and `nbf` are stretched: clocks of the relay and of whoever
    /// minted the token disagree a little.
    #[arg(id = "auth.leeway_s", long = "auth-leeway-s", env = "QRELAY_AUTH_LEEWAY_S",
          default_value_t = crate::auth::token::DEFAULT_LEEWAY_S)]
    pub leeway_s: u64,
    /// The `aud` every token must name; tokens the relay mints carry it. Without it, a
    /// token naming an audience is refused.
    #[arg(id = "auth.audience", long = "auth-audience", env = "QRELAY_AUTH_AUDIENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The `iss` every token must carry; tokens the relay mints carry it.
    #[arg(id = "auth.issuer", long = "auth-issuer", env = "QRELAY_AUTH_ISSUER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// PEM public keys (P-256 for `ES256`, Ed25519 for `EdDSA`) of whoever signs tokens
    /// elsewhere: the relay checks tokens with them and cannot mint any.
    #[arg(
        id = "auth.public_keys",
        long = "auth-public-key",
        env = "QRELAY_AUTH_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<PathBuf>,
    /// A JWKS URL (`https://auth.example/.well-known/jwks.json`) with more such keys:
    /// fetched at start, every 5 minutes and when a token names an unknown `kid`.
    #[arg(id = "auth.jwks_url", long = "auth-jwks-url", env = "QRELAY_AUTH_JWKS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret_file: None,
            publish: AuthMode::Open,
            play: AuthMode::Open,
            apps: BTreeMap::new(),
            mint_pull_tokens: false,
            leeway_s: crate::auth::token::DEFAULT_LEEWAY_S,
            audience: None,
            issuer: None,
            public_keys: Vec::new(),
            jwks_url: None,
        }
    }
}

/// `[auth.apps.NAME]`: what differs for the app `NAME` (its whole name, `a/b` for a
/// multi-segment app); an absent key keeps the `[auth]` setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppAuth {
    /// Whether publishing to this app needs a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<AuthMode>,
    /// Whether playing from this app needs a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub play: Option<AuthMode>,
}

/// `[hooks]`: HTTP endpoints told about publishes and plays (a JSON POST). `publish` and
/// `play` decide (2xx allows, anything else or no answer in time refuses); `unpublish`
/// and `stop` are told when an allowed one ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// URL asked before a publish starts.
    #[arg(id = "hooks.publish", long = "hook-publish", env = "QRELAY_HOOK_PUBLISH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// URL told when a publish ends.
    #[arg(id = "hooks.unpublish", long = "hook-unpublish", env = "QRELAY_HOOK_UNPUBLISH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpublish: Option<String>,
    /// URL asked before a play starts.
    #[arg(id = "hooks.play", long = "hook-play", env = "QRELAY_HOOK_PLAY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub play: Option<String>,
    /// URL told when a play ends.
    #[arg(id = "hooks.stop", long = "hook-stop", env = "QRELAY_HOOK_STOP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// How long a hook may take to answer (a publish or play hook that has not answered
    /// by then refuses; a notification is abandoned).
    #[arg(id = "hooks.timeout_ms", long = "hook-timeout-ms", env = "QRELAY_HOOK_TIMEOUT_MS", default_value_t = HooksConfig::default().timeout_ms)]
    pub timeout_ms: u64,
    /// Publish and play decisions waiting for a hook at once; past this a request is
    /// refused at once (fails closed, counted `hook_overloaded`), so anonymous players
    /// cannot turn into unbounded outbound requests.
    #[arg(id = "hooks.max_in_flight", long = "hook-max-in-flight", env = "QRELAY_HOOK_MAX_IN_FLIGHT", default_value_t = HooksConfig::default().max_in_flight)]
    pub max_in_flight: usize,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self { publish: None, unpublish: None, play: None, stop: None, timeout_ms: 2_000, max_in_flight: 256 }
    }
}

impl HooksConfig {
    /// Every configured hook with its key name.
    pub fn urls(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("publish", &self.publish),
            ("unpublish", &self.unpublish),
            ("play", &self.play),
            ("stop", &self.stop),
        ]
        .into_iter()
        .filter_map(|(name, url)| url.as_deref().map(|u| (name, u)))
    }
}

/// The `[api]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token every control API request must carry (`Authorization: Bearer ...`);
    /// required when `http_listen` is not a loopback address.
    /// At least 16 bytes. Without one, the relay makes one at first start and keeps it
    /// in `{cert_dir}/api-token` (0600); reads from loopback need none then. Prefer the
    /// file or the environment to the command line, where other local users see it.
    #[arg(id = "api.token", long = "api-token", env = "QRELAY_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Host names the control API answers to besides IP literals and `localhost`; any
    /// other Host header is refused (DNS rebinding).
    #[arg(id = "api.hosts", long = "api-host", env = "QRELAY_API_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
}

/// Where the control API listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HttpListen {
    /// No HTTP server.
    Off,
    /// This address.
    Addr(SocketAddr),
}

impl HttpListen {
    /// The address, unless off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            HttpListen::Off => None,
            HttpListen::Addr(a) => Some(a),
        }
    }
}

impl std::str::FromStr for HttpListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(HttpListen::Off),
            a => a
                .parse()
                .map(HttpListen::Addr)
                .map_err(|_| format!("expected ADDRESS:PORT or off, not {a:?}")),
        }
    }
}

impl TryFrom<String> for HttpListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<HttpListen> for String {
    fn from(h: HttpListen) -> String {
        h.to_string()
    }
}

impl std::fmt::Display for HttpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpListen::Off => f.write_str("off"),
            HttpListen::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            cert: None,
            key: None,
            cert_dir: PathBuf::from("certs"),
            chunk_size: 4096,
            min_chunk_size: 64,
            max_chunk_size: 1024 * 1024,
            max_message_size: 8 * 1024 * 1024,
            max_pending_bytes: 16 * 1024 * 1024,
            max_publishers: 1_000,
            max_publishers_per_ip: 100,
            role_timeout_ms: 30_000,
            max_memory: "auto".to_owned(),
            metrics_max_streams: 500,
            max_pulls: 1_000,
            pull_not_found_ms: 2_000,
            play_wait_ms: 30_000,
            queue_max_bytes: 8 * 1024 * 1024,
            queue_max_ms: 10_000,
            max_gop_bytes: 32 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            tcp_nodelay: true,
            write_coalesce_ms: 40,
            write_coalesce_bytes: 4096,
            write_coalesce_video: false,
            quic_congestion: Congestion::Bbr,
            quic_redundancy: RedundancyMode::Auto,
            quic_initial_rtt_ms: 100,
            quic_max_mtu: crate::transport::quic::DEFAULT_MAX_MTU,
            max_latency_ms: 1_000,
            quic_idle_timeout_ms: 30_000,
            quic_keep_alive_ms: 5_000,
            max_quic_streams: 16,
            max_connections: 20_000,
            max_connections_per_ip: 2_000,
            publisher_grace_ms: 5_000,
            publisher_takeover_ms: 2_000,
            shutdown_grace_ms: 5_000,
            http_listen: HttpListen::Addr(SocketAddr::from(([127, 0, 0, 1], 8935))),
            api: ApiConfig::default(),
            origin: Vec::new(),
            pull_idle_ms: 5_000,
            registry: None,
            node_url: None,
            registry_lease_ms: 5_000,
            relay_ca: None,
            relay_insecure: false,
            forward: Vec::new(),
            max_hops: 8,
            forward_backoff_min_ms: 250,
            forward_backoff_max_ms: 5_000,
            auth: AuthConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

/// Longest duration any `*_ms` setting may have (a day): larger values mean nothing for a
/// live relay and would overflow deadline arithmetic.
const MAX_MS: u64 = 24 * 60 * 60 * 1000;

pub use crate::auth::AuthMode;
pub use crate::transport::quic::Congestion;
pub use crate::transport::redundancy::RedundancyMode;

/// Why a configuration was refused. Messages include their cause, which is therefore
/// never also the `source()`: a `{:#}` chain prints each cause once (a TOML error spans
/// several lines).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this type (names the key at fault).
    #[error("parsing {}: {error}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        error: Box<toml::de::Error>,
    },
    /// Values that do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The configuration to run with: `file`'s settings (or the defaults) with every value
    /// that the command line or the environment set (`cli`, parsed from `matches`) on top.
    /// Values clap filled in from its defaults do not override the file.
    pub fn resolve(
        cli: &Config,
        matches: &clap::ArgMatches,
        file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        use clap::parser::ValueSource;
        let base = match file {
            Some(path) => Self::read(path)?,
            None => Config::default(),
        };
        let invalid = |e: toml::ser::Error| ConfigError::Invalid(e.to_string());
        let mut table = toml::Table::try_from(&base).map_err(invalid)?;
        let given = toml::Table::try_from(cli).map_err(invalid)?;
        for id in matches.ids() {
            let name = id.as_str();
            let explicit = matches!(
                matches.value_source(name),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            // `auth.publish` is `publish` in the `[auth]` table.
            let (section, key) = match name.split_once('.') {
                Some((section, key)) => (Some(section), key),
                None => (None, name),
            };
            let from = match section {
                Some(section) => given.get(section).and_then(toml::Value::as_table),
                None => Some(&given),
            };
            let Some(value) = from.and_then(|t| t.get(key)).filter(|_| explicit) else { continue };
            let into = match section {
                Some(section) => {
                    match table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new())) {
                        toml::Value::Table(t) => t,
                        _ => continue,
                    }
                }
                None => &mut table,
            };
            into.insert(key.to_owned(), value.clone());
        }
        let config: Config = table
            .try_into()
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<command line>"), error: Box::new(e) })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file without validating it (values may still be overridden).
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        let config: Self = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), error: Box::new(e) })?;
        config.warn_if_secrets_shared(path);
        Ok(config)
    }

    /// A config file holding the API token must be private like any secret file.
    fn warn_if_secrets_shared(&self, path: &Path) {
        if self.api.token.is_some() {
            crate::files::warn_if_shared(path, "a config file holding [api] token");
        }
    }

    /// Reads a TOML file; absent keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        let config = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { error, .. } => ConfigError::Parse { path: path.to_owned(), error },
            other => other,
        })?;
        config.warn_if_secrets_shared(path);
        Ok(config)
    }

    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<inline>"), error: Box::new(e) })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert and key must be given together");
        }
        if !(128..=16 * 1024 * 1024).contains(&self.chunk_size) {
            return bad("chunk_size must be within 128..=16777216");
        }
        if self.min_chunk_size == 0 || self.min_chunk_size > 128 {
            return bad("min_chunk_size must be within 1..=128 (128 is RTMP's initial size)");
        }
        if self.max_chunk_size < 128 || self.max_chunk_size > crate::rtmp::chunk::MAX_CHUNK_SIZE {
            return bad("max_chunk_size must be within 128..=2147483647");
        }
        if self.max_message_size < 64 * 1024 {
            return bad("max_message_size must be at least 65536");
        }
        if self.quic_keep_alive_ms == 0 || self.quic_keep_alive_ms >= self.quic_idle_timeout_ms {
            return bad("quic_keep_alive_ms must be non-zero and below quic_idle_timeout_ms");
        }
        if !(50..=60_000).contains(&self.max_latency_ms) {
            return bad("max_latency_ms must be within 50..=60000");
        }
        if !(10..=10_000).contains(&self.quic_initial_rtt_ms) {
            return bad("quic_initial_rtt_ms must be within 10..=10000");
        }
        if !(1200..=65_000).contains(&self.quic_max_mtu) {
            return bad("quic_max_mtu must be within 1200..=65000");
        }
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.max_quic_streams == 0
            || self.max_publishers == 0
        {
            return bad("connection and stream limits must be non-zero");
        }
        // Zero would close every connection (or drop every frame) at once.
        let non_zero = [
            ("forward_backoff_min_ms", self.forward_backoff_min_ms),
            ("forward_backoff_max_ms", self.forward_backoff_max_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("queue_max_ms", self.queue_max_ms),
        ];
        for (key, value) in non_zero {
            if !(1..=MAX_MS).contains(&value) {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be within 1..={MAX_MS} (it is {value})"
                )));
            }
        }
        // Zero is meaningful here: no wait for a publisher, no grace on SIGTERM, players
        // ended with their publisher, no takeover.
        let may_be_zero = [
            ("play_wait_ms", self.play_wait_ms),
            ("shutdown_grace_ms", self.shutdown_grace_ms),
            ("publisher_grace_ms", self.publisher_grace_ms),
            ("publisher_takeover_ms", self.publisher_takeover_ms),
            ("quic_idle_timeout_ms", self.quic_idle_timeout_ms),
        ];
        for (key, value) in may_be_zero {
            if value > MAX_MS {
                return Err(ConfigError::Invalid(format!("{key} must be at most {MAX_MS} (it is {value})")));
            }
        }
        if self.write_coalesce_ms > 1000 {
            return bad("write_coalesce_ms must be at most 1000 (it bounds the delay added to live media)");
        }
        if self.max_memory != "auto" {
            crate::transport::memory::parse_size(&self.max_memory)
                .map_err(|e| ConfigError::Invalid(format!("max_memory: {e}")))?;
        }
        if self.queue_max_bytes == 0 {
            return bad("queue_max_bytes must be non-zero (every frame would be dropped)");
        }
        if let Some(token) = &self.api.token {
            if token.trim().len() < crate::control::access::MIN_TOKEN_LEN || token.len() > 4096 {
                return bad("[api] token must be 16 to 4096 bytes (a short token can be guessed)");
            }
        }
        if let HttpListen::Addr(a) = self.http_listen {
            if !a.ip().is_loopback() && self.api.token.is_none() {
                return bad("http_listen on a non-loopback address needs [api] token (or --api-token)");
            }
        }
        for origin in &self.origin {
            NodeUrl::parse(origin).map_err(|e| ConfigError::Invalid(format!("origin `{origin}`: {e}")))?;
        }
        if let Some(registry) = &self.registry {
            if !["redis://", "redis+unix://"].iter().any(|scheme| registry.starts_with(scheme)) {
                return Err(ConfigError::Invalid(format!(
                    "registry `{registry}`: only redis://host:port[/db] and redis+unix:///path[?db=N] are supported"
                )));
            }
            // Port 0 is chosen at bind time, where the node URL is made.
            let listen = SocketAddr::new(self.listen.ip(), self.listen.port().max(1));
            self.node(listen)?;
            if !(300..=MAX_MS).contains(&self.registry_lease_ms) {
                return bad("registry_lease_ms must be at least 300 (three heartbeats fit in a lease)");
            }
        } else if let Some(url) = &self.node_url {
            NodeUrl::parse(url).map_err(|e| ConfigError::Invalid(format!("node_url `{url}`: {e}")))?;
        }
        if self.pull_idle_ms > MAX_MS {
            return bad("pull_idle_ms must be at most a day");
        }
        if self.max_pending_bytes < self.max_message_size as usize {
            return bad("max_pending_bytes must be at least max_message_size (or no message that large arrives whole)");
        }
        if self.forward_backoff_max_ms < self.forward_backoff_min_ms {
            return bad("forward_backoff_max_ms must be at least forward_backoff_min_ms");
        }
        if !(1..=255).contains(&self.max_hops) {
            return bad("max_hops must be within 1..=255");
        }
        for rule in &self.forward {
            rule.validate().map_err(|e| ConfigError::Invalid(format!("forward: {e}")))?;
        }
        self.validate_gates()
    }

    /// Checks `[auth]` and `[hooks]` (whether a needed secret exists is checked when the
    /// server starts: it is read from a file or the environment).
    fn validate_gates(&self) -> Result<(), ConfigError> {
        for app in self.auth.apps.keys() {
            if app.is_empty() || app.contains('?') || app.starts_with('/') || app.ends_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "auth.apps.\"{app}\": an app name without `?` or leading/trailing `/`"
                )));
            }
        }
        if self.auth.leeway_s > crate::auth::token::MAX_LEEWAY_S {
            return Err(ConfigError::Invalid(format!(
                "auth.leeway_s must be at most {} (it is {})",
                crate::auth::token::MAX_LEEWAY_S,
                self.auth.leeway_s
            )));
        }
        for (name, value) in [("audience", &self.auth.audience), ("issuer", &self.auth.issuer)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!("auth.{name} must not be empty when set")));
            }
        }
        if let Some(url) = &self.auth.jwks_url {
            crate::hooks::check_url(url).map_err(|e| ConfigError::Invalid(format!("auth.jwks_url: {e}")))?;
        }
        for (name, url) in self.hooks.urls() {
            crate::hooks::check_url(url).map_err(|e| ConfigError::Invalid(format!("hooks.{name}: {e}")))?;
        }
        let t = self.hooks.timeout_ms;
        let hooked = self.hooks.urls().next().is_some();
        if t == 0 || (hooked && t >= self.handshake_timeout_ms) {
            return Err(ConfigError::Invalid(format!(
                "hooks.timeout_ms must be within 1..{} (below handshake_timeout_ms, which bounds \
                 every publish/play decision; it is {t})",
                self.handshake_timeout_ms
            )));
        }
        Ok(())
    }

    /// This node's URL for other nodes: `node_url`, or QUIC on the address the relay is
    /// bound to (`bound`) when that names one. `None` without either (then only the
    /// embedded registry works).
    pub fn node(&self, bound: SocketAddr) -> Result<Option<NodeUrl>, ConfigError> {
        let url = match (&self.node_url, bound.ip().is_unspecified()) {
            (Some(url), _) => url.clone(),
            (None, false) => format!("rtmp+quic://{bound}"),
            (None, true) if self.registry.is_some() => {
                return Err(ConfigError::Invalid(
                    "node_url is needed with a registry when listen is a wildcard address \
                     (how do other nodes reach this one?)"
                        .into(),
                ))
            }
            (None, true) => return Ok(None),
        };
        NodeUrl::parse(&url).map(Some).map_err(|e| ConfigError::Invalid(format!("node_url `{url}`: {e}")))
    }

    /// The static origins, parsed (checked by `validate`).
    pub fn origins(&self) -> Vec<NodeUrl> {
        self.origin.iter().filter_map(|o| NodeUrl::parse(o).ok()).collect()
    }

    /// Certificate trust for outbound relay links.
    pub fn relay_trust(&self) -> crate::transport::tls::Trust {
        use crate::transport::tls::Trust;
        match (&self.relay_ca, self.relay_insecure) {
            (_, true) => Trust::Insecure,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => Trust::WebPki,
        }
    }

    /// Settings of each RTMP session.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            chunk_size: self.chunk_size,
            window_ack_size: 2_500_000,
            limits: DecoderLimits {
                max_message_size: self.max_message_size,
                min_chunk_size: self.min_chunk_size,
                max_chunk_size: self.max_chunk_size,
                max_pending_bytes: self.max_pending_bytes,
            },
        }
    }

    /// Settings of the QUIC endpoint.
    pub fn quic(&self) -> QuicSettings {
        QuicSettings {
            congestion: self.quic_congestion,
            initial_rtt: Duration::from_millis(self.quic_initial_rtt_ms),
            max_mtu: self.quic_max_mtu,
            idle_timeout: Duration::from_millis(self.quic_idle_timeout_ms),
            keep_alive: Duration::from_millis(self.quic_keep_alive_ms),
            max_bidi_streams: self.max_quic_streams,
            redundancy: self.quic_redundancy,
        }
    }

    /// The memory budget in bytes (`max_memory`, resolved).
    pub fn memory_budget(&self) -> u64 {
        match self.max_memory.as_str() {
            "auto" => crate::transport::memory::default_limit(),
            size => crate::transport::memory::parse_size(size).unwrap_or(u64::MAX),
        }
    }

    /// Settings of the hub.
    pub fn hub(&self) -> HubConfig {
        HubConfig {
            queue: QueueLimits {
                max_bytes: self.queue_max_bytes,
                max_duration: Duration::from_millis(self.queue_max_ms),
            },
            max_gop_bytes: self.max_gop_bytes,
            max_publishers: self.max_publishers,
            play_wait: Duration::from_millis(self.play_wait_ms),
            publisher_grace: Duration::from_millis(self.publisher_grace_ms),
            publisher_takeover: Duration::from_millis(self.publisher_takeover_ms),
            write_coalesce: Duration::from_millis(self.write_coalesce_ms),
            write_coalesce_bytes: self.write_coalesce_bytes,
            write_coalesce_video: self.write_coalesce_video,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn write_coalescing_is_bounded() {
        let c = Config::from_toml(
            "write_coalesce_ms = 350\nwrite_coalesce_bytes = 16384\nwrite_coalesce_video = true\n",
        )
        .unwrap();
        let hub = c.hub();
        assert_eq!((hub.write_coalesce, hub.write_coalesce_bytes), (Duration::from_millis(350), 16_384));
        assert!(hub.write_coalesce_video && !Config::default().hub().write_coalesce_video);
        assert_eq!(Config::default().hub().write_coalesce, Duration::from_millis(40));
        assert!(Config::from_toml("write_coalesce_ms = 1001").is_err(), "the added delay is bounded");
    }

    #[test]
    fn file_overrides_some_keys() {
        let c = Config::from_toml("listen = \"127.0.0.1:2000\"\nplay_wait_ms = 5\ntcp_nodelay = false\n")
            .unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.play_wait_ms, 5);
        assert!(!c.tcp_nodelay);
        assert_eq!(c.quic_congestion, Congestion::Bbr);
        let c = Config::from_toml("quic_congestion = \"cubic\"").unwrap();
        assert_eq!(c.quic_congestion, Congestion::Cubic);
        assert!(Config::from_toml("quic_congestion = \"vegas\"").is_err());
        assert_eq!(Config::default().quic().redundancy, RedundancyMode::Auto);
        let c = Config::from_toml("quic_redundancy = \"off\"").unwrap();
        assert_eq!(c.quic().redundancy, RedundancyMode::Off);
        assert!(Config::from_toml("quic_redundancy = \"always\"").is_err());
        assert!(Config::from_toml("quic_max_mtu = 1000").is_err());
        assert_eq!(c.chunk_size, 4096);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Config::from_toml("lisen = \"127.0.0.1:2000\"").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        assert!(Config::from_toml("chunk_size = 1").is_err());
        assert!(Config::from_toml("quic_keep_alive_ms = 40000").is_err());
        assert!(Config::from_toml("cert = \"a.pem\"").is_err());
    }

    #[test]
    fn nonsensical_values_are_refused_naming_the_key() {
        for key in ["handshake_timeout_ms", "idle_timeout_ms", "write_timeout_ms", "queue_max_ms"] {
            for value in [0, i64::MAX] {
                let e = Config::from_toml(&format!("{key} = {value}")).map(|_| ()).unwrap_err().to_string();
                assert!(e.contains(key), "{key} = {value}: {e}");
            }
        }
        for key in ["play_wait_ms", "shutdown_grace_ms", "publisher_grace_ms", "publisher_takeover_ms"] {
            assert!(Config::from_toml(&format!("{key} = 0")).is_ok(), "{key} = 0 means no wait");
            let e = Config::from_toml(&format!("{key} = {}", i64::MAX)).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = Config::from_toml("queue_max_bytes = 0").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("queue_max_bytes"), "{e}");
        let e = Config::from_toml("max_pending_bytes = 0").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("max_pending_bytes"), "{e}");
    }

    #[test]
    fn auth_and_hooks_tables() {
        let c = Config::from_toml(
            "[auth]\npublish = \"token\"\nsecret_file = \"/s\"\n[auth.apps.private]\nplay = \"token\"\n\
             [auth.apps.\"a/b\"]\npublish = \"open\"\n[hooks]\npublish = \"http://127.0.0.1:9/p\"\ntimeout_ms = 500\n",
        )
        .unwrap();
        assert_eq!((c.auth.publish, c.auth.play), (AuthMode::Token, AuthMode::Open));
        assert_eq!(c.auth.apps["private"], AppAuth { publish: None, play: Some(AuthMode::Token) });
        assert_eq!(c.auth.apps["a/b"].publish, Some(AuthMode::Open));
        assert_eq!((c.auth.leeway_s, &c.auth.audience), (30, &None), "defaults");
        let a =
            Config::from_toml("[auth]\nleeway_s = 5\naudience = \"edge\"\nissuer = \"auth\"").unwrap().auth;
        assert_eq!((a.leeway_s, a.audience.as_deref(), a.issuer.as_deref()), (5, Some("edge"), Some("auth")));
        assert_eq!((c.hooks.publish.as_deref(), c.hooks.timeout_ms), (Some("http://127.0.0.1:9/p"), 500));
        // Without hooks their timeout does not matter.
        assert!(Config::from_toml("handshake_timeout_ms = 1000").is_ok());
        for (bad, key) in [
            ("[auth]\npublish = \"tokens\"", "publish"),
            ("[auth]\nleeway_s = 601", "auth.leeway_s"),
            ("[auth]\naudience = \"\"", "auth.audience"),
            ("[auth]\njwks_url = \"file:///etc/jwks.json\"", "auth.jwks_url"),
            ("[auth]\nsecret = \"x\"", "secret"),
            ("[auth.apps.x]\nplay = \"token\"\nrecord = \"open\"", "record"),
            ("[auth.apps.\"x?y\"]\nplay = \"token\"", "auth.apps"),
            ("[hooks]\npublish = \"ftp://h/x\"", "hooks.publish"),
            ("[hooks]\nstop = \"/relative\"", "hooks.stop"),
            ("[hooks]\ntimeout_ms = 0", "hooks.timeout_ms"),
            (
                "handshake_timeout_ms = 1000\n[hooks]\nplay = \"http://h/p\"\ntimeout_ms = 2000",
                "hooks.timeout_ms",
            ),
        ] {
            let e = Config::from_toml(bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn a_parse_error_is_printed_once() {
        let e = Config::from_toml("lisen = 1").map(|_| ()).unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(text.matches("unknown field").count(), 1, "{text}");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Config,
    }

    fn resolve(args: &[&str]) -> Config {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        Config::resolve(&cli.settings, &matches, cli.config.as_deref()).unwrap()
    }

    #[test]
    fn command_line_and_environment_override_the_file_and_the_file_the_defaults() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.toml");
        std::fs::write(&file, "chunk_size = 1024\nplay_wait_ms = 5\nmax_publishers = 3\n").unwrap();
        let f = file.to_str().unwrap();
        // The file wins over the defaults; clap's own defaults do not override it.
        let c = resolve(&["t", "--config", f]);
        assert_eq!((c.chunk_size, c.play_wait_ms, c.max_publishers), (1024, 5, 3));
        assert_eq!(c.listen, Config::default().listen);
        // The command line wins over the file, for every kind of value.
        let c = resolve(&[
            "t",
            "--config",
            f,
            "--chunk-size",
            "8192",
            "--tcp-nodelay",
            "false",
            "--quic-congestion",
            "cubic",
        ]);
        assert_eq!(
            (c.chunk_size, c.play_wait_ms, c.tcp_nodelay, c.quic_congestion),
            (8192, 5, false, Congestion::Cubic)
        );
        // Nested tables too, over the file's other keys of the same table.
        std::fs::write(&file, "[auth]\npublish = \"token\"\n[auth.apps.p]\nplay = \"token\"\n").unwrap();
        let c = resolve(&["t", "--config", f, "--auth-play", "token", "--hook-play", "http://h/p"]);
        assert_eq!((c.auth.publish, c.auth.play), (AuthMode::Token, AuthMode::Token));
        assert_eq!(c.auth.apps["p"].play, Some(AuthMode::Token));
        assert_eq!(c.hooks.play.as_deref(), Some("http://h/p"));
        let c = resolve(&["t", "--config", f, "--auth-publish", "open"]);
        assert_eq!(c.auth.publish, AuthMode::Open);
        // Public keys: repeated, or comma-separated (as QRELAY_AUTH_PUBLIC_KEYS holds them).
        let c = resolve(&["t", "--auth-public-key", "/a.pem", "--auth-public-key", "/b.pem,/c.pem"]);
        let want: Vec<PathBuf> = ["/a.pem", "/b.pem", "/c.pem"].iter().map(PathBuf::from).collect();
        assert_eq!(c.auth.public_keys, want);
        std::fs::write(&file, "[auth]\npublic_keys = [\"/f.pem\"]\n").unwrap();
        assert_eq!(resolve(&["t", "--config", f]).auth.public_keys, [PathBuf::from("/f.pem")]);
        assert_eq!(resolve(&["t", "--config", f, "--auth-public-key", "/a.pem"]).auth.public_keys, want[..1]);
        std::fs::write(&file, "chunk_size = 1024\nplay_wait_ms = 5\nmax_publishers = 3\n").unwrap();
        // So does the environment (a variable no other test reads).
        std::env::set_var("QRELAY_MAX_GOP_BYTES", "1048576");
        let c = resolve(&["t", "--config", f]);
        std::env::remove_var("QRELAY_MAX_GOP_BYTES");
        assert_eq!((c.max_gop_bytes, c.chunk_size), (1 << 20, 1024));
    }

    #[test]
    fn http_listen_and_the_api_token_from_file_command_line_and_environment() {
        let c = Config::from_toml("http_listen = \"off\"").unwrap();
        assert_eq!(c.http_listen, HttpListen::Off);
        assert_eq!(Config::default().http_listen.to_string(), "127.0.0.1:8935");
        let e = Config::from_toml("http_listen = \"0.0.0.0:8935\"").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("[api] token"), "{e}");
        let c =
            Config::from_toml("http_listen = \"0.0.0.0:8935\"\n[api]\ntoken = \"s3cret-s3cret-s3cret\"\n")
                .unwrap();
        assert_eq!(c.api.token.as_deref(), Some("s3cret-s3cret-s3cret"));
        assert!(
            Config::from_toml("[api]\ntoken = \"short-token\"").is_err(),
            "tokens under 16 bytes refused"
        );
        assert!(Config::from_toml("http_listen = \"nowhere\"").is_err());
        assert!(Config::from_toml("[api]\ntokn = \"x\"").is_err(), "unknown keys in [api] refused");
        assert!(Config::from_toml("[api]\ntoken = \"\"").is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.toml");
        std::fs::write(&file, "http_listen = \"127.0.0.1:9000\"\n[api]\ntoken = \"from-file-0123456789\"\n")
            .unwrap();
        let f = file.to_str().unwrap();
        let c = resolve(&["t", "--config", f]);
        assert_eq!(
            (c.http_listen.to_string(), c.api.token.as_deref()),
            ("127.0.0.1:9000".into(), Some("from-file-0123456789"))
        );
        let c = resolve(&["t", "--config", f, "--http", "off", "--api-token", "from-cli-0123456789"]);
        assert_eq!((c.http_listen, c.api.token.as_deref()), (HttpListen::Off, Some("from-cli-0123456789")));
        let c = resolve(&["t", "--api-token", "cli-only-0123456789", "--api-host", "a.example,b.example"]);
        assert_eq!(c.api.token.as_deref(), Some("cli-only-0123456789"));
        assert_eq!(c.api.hosts, ["a.example", "b.example"]);
    }

    #[test]
    fn forward_rules_come_from_tables_or_the_command_line() {
        let c = Config::from_toml(
            "max_hops = 3\n[[forward]]\nstreams = \"live/*\"\nto = [\"rtmp://10.0.0.5/live\", \"rtmp+quic://edge1/live/renamed\"]\n",
        )
        .unwrap();
        assert_eq!(c.max_hops, 3);
        assert_eq!(c.forward.len(), 1);
        assert_eq!(c.forward[0].to[1], "rtmp+quic://edge1/live/renamed");
        let e = Config::from_toml("[[forward]]\nstreams = \"live/*\"\nto = [\"rtmp://h:0/live\"]\n")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("forward") && e.contains("bad port"), "{e}");
        assert!(Config::from_toml("[[forward]]\nstreams = \"a\"\nto = []\n").is_err());
        assert!(Config::from_toml("[[forward]]\nstreams = \"a\"\nto = [\"rtmp://h/l\"]\nx = 1\n").is_err());
        assert!(Config::from_toml("max_hops = 0").is_err());
        assert!(Config::from_toml("forward_backoff_min_ms = 10\nforward_backoff_max_ms = 5").is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.toml");
        std::fs::write(&file, "[[forward]]\nstreams = \"x/*\"\nto = [\"rtmp://file/live\"]\n").unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(resolve(&["t", "--config", f]).forward[0].streams, "x/*");
        // The command line replaces the file's rules; repeatable, or `;`-separated.
        let c = resolve(&[
            "t",
            "--config",
            f,
            "--forward",
            "live/*=rtmp://a/live,rtmp://b/live/k",
            "--forward",
            "other/*=rtmp://c/x;third=rtmp://d/y",
        ]);
        let got: Vec<(&str, usize)> = c.forward.iter().map(|r| (r.streams.as_str(), r.to.len())).collect();
        assert_eq!(got, [("live/*", 2), ("other/*", 1), ("third", 1)]);
        use clap::CommandFactory;
        let e = Cli::command().try_get_matches_from(["t", "--forward", "live/*=ftp://x/y"]).unwrap_err();
        assert!(e.to_string().contains("ftp"), "{e}");
    }

    #[test]
    fn overrides_are_validated_like_the_file() {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(["t", "--idle-timeout-ms", "0"]).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let e = Config::resolve(&cli.settings, &matches, None).unwrap_err().to_string();
        assert!(e.contains("idle_timeout_ms"), "{e}");
    }
}
