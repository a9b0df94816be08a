//! The `qrelay` command: `serve` runs the relay; `publish` and `play` are the project's
//! own RTMP client over TCP, TLS or QUIC; `token` mints publish/play tokens.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use qrelay::client::{self, ClientOptions, PlayOptions, PublishOptions};
use qrelay::config::{Congestion, RedundancyMode};
use qrelay::server::Shutdown;
use qrelay::transport::tls::Trust;
use qrelay::url::StreamUrl;
use qrelay::Config;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "qrelay", version, about = "Live-media relay: RTMP over TCP and QUIC on one port")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Publish an FLV file to a stream URL, paced at its real time.
    Publish {
        /// FLV file to send.
        file: PathBuf,
        /// rtmp://, rtmps://, rtmp+quic://, rtmpq:// or rtmp://...?quic=1
        url: String,
        /// Start again at the end of the file.
        #[arg(long = "loop")]
        looped: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Play a stream URL into an FLV file (`-o -` for stdout).
    Play {
        /// Stream URL.
        url: String,
        /// Output FLV file, `-` for standard output.
        #[arg(short = 'o', long = "output", default_value = "-")]
        output: String,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Also log each video frame's arrival to this file: media timestamp (ms), wall
        /// clock (ms since the Unix epoch) and keyframe flag, one frame per line.
        #[arg(long)]
        arrivals: Option<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Local RTMP for stock encoders (OBS, ffmpeg), each publish carried to an upstream
    /// relay over RoQR (same stream key), reconnecting when the upstream fails.
    Bridge {
        /// Local address encoders publish to.
        #[arg(long, default_value = "127.0.0.1:1935")]
        listen: std::net::SocketAddr,
        /// Upstream `rtmp+quic://host[:port]/app`; each session's key is appended.
        #[arg(long)]
        upstream: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Load-test an RTMP server (any, over TCP; qrelay also over QUIC): publishers,
    /// players, latency, loss, server CPU and memory.
    Bench(qrelay_bench::BenchArgs),
    /// Print a publish or play token (for `?token=` in the stream key or the app).
    Token(TokenArgs),
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("role").required(true).multiple(true).args(["publish", "play"]))]
struct TokenArgs {
    /// File holding the secret the relay checks tokens with (its `auth.secret_file`);
    /// without it, the secret is taken from QRELAY_AUTH_SECRET.
    #[arg(long, env = "QRELAY_AUTH_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Allow publishing to these session IDs: `live/cam1`, `live/*`, `*` (every session).
    #[arg(long, value_name = "PATTERN")]
    publish: Option<String>,
    /// Allow playing them (with --publish: the same pattern, both roles).
    #[arg(long, value_name = "PATTERN")]
    play: Option<String>,
    /// How long the token is valid: 30s, 15m, 1h, 7d (a bare number is seconds).
    #[arg(long, default_value = "1h", value_parser = qrelay::auth::token::parse_ttl)]
    ttl: Duration,
    /// The audience the relay expects (its `auth.audience`), carried as `aud`.
    #[arg(long, env = "QRELAY_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// The issuer the relay expects (its `auth.issuer`), carried as `iss`.
    #[arg(long, env = "QRELAY_AUTH_ISSUER")]
    issuer: Option<String>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file (every key optional; see README). Options and
    /// `QRELAY_*` environment variables override its values.
    #[arg(long, env = "QRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Config,
}

#[derive(Args, Debug)]
struct TrustArgs {
    /// Trust this CA certificate (PEM), e.g. certs/dev-ca.pem.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Skip certificate verification (development only).
    #[arg(long)]
    insecure: bool,
    /// QUIC congestion controller (bbr, cubic, newreno).
    #[arg(long, default_value_t = Congestion::Bbr)]
    quic_congestion: Congestion,
    /// Redundant copies of QUIC datagrams while the path loses packets (auto, off).
    #[arg(long, default_value_t = RedundancyMode::Auto)]
    quic_redundancy: RedundancyMode,
    /// RoQR: a GOP still unacknowledged this long after it ended is cancelled and sending
    /// resumes at the next keyframe (milliseconds).
    #[arg(long, default_value_t = 1000)]
    max_latency_ms: u64,
}

impl TrustArgs {
    fn options(&self) -> ClientOptions {
        let trust = match (&self.ca, self.insecure) {
            (_, true) => Trust::Insecure,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => Trust::WebPki,
        };
        let mut opts = ClientOptions { trust, ..ClientOptions::default() };
        opts.quic.congestion = self.quic_congestion;
        opts.quic.redundancy = self.quic_redundancy;
        opts.max_latency = Duration::from_millis(self.max_latency_ms);
        opts
    }
}

/// rustls warns about every client that sends an IP address as SNI ("Illegal SNI
/// extension"), which RTMPS encoders pointed at an address do: normal, not a warning.
/// Applied unless `RUST_LOG` says something about rustls itself.
const QUIET_SNI: &str = "rustls::msgs::handshake=error";

fn log_filter() -> tracing_subscriber::EnvFilter {
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    let spec = if env.trim().is_empty() { "info" } else { &env };
    let filter = tracing_subscriber::EnvFilter::try_new(spec).unwrap_or_else(|_| "info".into());
    match (env.contains("rustls"), QUIET_SNI.parse()) {
        (false, Ok(directive)) => filter.add_directive(directive),
        _ => filter,
    }
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    // Colour codes are for people at a terminal, not for log files and pipes.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Which settings the command line and environment gave, for the config merge.
    let serve_matches = matches.subcommand_matches("serve").cloned();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, serve_matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, serve_matches: Option<clap::ArgMatches>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args, serve_matches.unwrap_or_default()).await,
        Command::Token(args) => {
            println!("{}", token(&args)?);
            Ok(())
        }
        Command::Publish { file, url, looped, trust } => {
            let url = parse_url(&url)?;
            let t =
                client::publish_flv(&url, &trust.options(), &file, PublishOptions { looped, unpaced: false })
                    .await?;
            info!(messages = t.messages, bytes = t.bytes, dropped = t.dropped, "publish finished");
            Ok(())
        }
        Command::Play { url, output, duration, arrivals, trust } => {
            let url = parse_url(&url)?;
            let duration = duration.map(Duration::from_secs_f64);
            let opts = trust.options();
            let t = if output == "-" {
                client::play_to_flv(&url, &opts, &mut tokio::io::stdout(), PlayOptions { duration, arrivals })
                    .await?
            } else {
                let mut f =
                    tokio::fs::File::create(&output).await.with_context(|| format!("creating {output}"))?;
                client::play_to_flv(&url, &opts, &mut f, PlayOptions { duration, arrivals }).await?
            };
            info!(messages = t.messages, bytes = t.bytes, "play finished");
            Ok(())
        }
        Command::Bridge { listen, upstream, trust } => {
            let opts = qrelay::bridge::BridgeOptions { listen, upstream, client: trust.options() };
            let bridge = qrelay::bridge::Bridge::bind(opts).await?;
            let shutdown = Shutdown::default();
            watch_signals(shutdown.clone());
            info!(listen = %bridge.local_addr()?, "bridge ready: publish RTMP here");
            bridge.run(shutdown.graceful.clone()).await;
            Ok(())
        }
        Command::Bench(args) => {
            let json = args.json.clone();
            let report = qrelay_bench::run(args).await?;
            print!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, report.to_json())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// A stream URL from the command line; an error shows it without its token.
fn parse_url(url: &str) -> anyhow::Result<StreamUrl> {
    StreamUrl::parse(url).with_context(|| format!("bad URL `{}`", qrelay::url::redact_tokens(url)))
}

/// `qrelay token`: the token for the requested pattern and role.
fn token(args: &TokenArgs) -> anyhow::Result<String> {
    use qrelay::auth::token::{mint_for, Expect, Secret, SECRET_ENV};
    use qrelay::auth::TokenRole;
    let (pattern, role) = match (&args.publish, &args.play) {
        (Some(a), Some(b)) if a != b => {
            anyhow::bail!("--publish and --play name different patterns; a token holds one (make two tokens)")
        }
        (Some(p), Some(_)) => (p, TokenRole::Both),
        (Some(p), None) => (p, TokenRole::Publish),
        (None, Some(p)) => (p, TokenRole::Play),
        (None, None) => anyhow::bail!("--publish PATTERN or --play PATTERN is required"),
    };
    let secret = Secret::load(args.secret_file.as_deref())?
        .with_context(|| format!("no secret: give --secret-file FILE or set {SECRET_ENV}"))?;
    let expect = Expect { audience: args.audience.clone(), issuer: args.issuer.clone(), leeway_s: 0 };
    Ok(mint_for(&secret, &expect, pattern, role, args.ttl)?)
}

async fn serve(args: ServeArgs, matches: clap::ArgMatches) -> anyhow::Result<()> {
    let config = Config::resolve(&args.settings, &matches, args.config.as_deref())?;
    let server = qrelay::Server::bind(config).await?;
    let shutdown = Shutdown::default();
    watch_signals(shutdown.clone());
    Ok(server.run(shutdown).await?)
}

/// SIGTERM: graceful (a second one: immediate). SIGINT: immediate. The handlers are
/// installed before this returns, so before the relay says it listens: a signal sent
/// as soon as it does must not meet the default action (death, no clean stop).
fn watch_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return warn!("cannot install signal handlers"),
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if shutdown.graceful.is_cancelled() {
                        shutdown.immediate.cancel();
                    } else {
                        info!("SIGTERM: finishing sessions");
                        shutdown.graceful.cancel();
                    }
                }
                _ = int.recv() => {
                    info!("SIGINT: stopping now");
                    shutdown.immediate.cancel();
                    shutdown.graceful.cancel();
                }
            }
        }
    });
}
