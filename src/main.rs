//! The `qrelay` command: `serve` runs the relay; `publish` and `play` are the project's
//! own RTMP client over TCP, TLS or QUIC.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use qrelay::client::{self, ClientOptions, PlayOptions, PublishOptions};
use qrelay::config::Congestion;
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
    Serve(ServeArgs),
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
    /// Load-test an RTMP server (any, over TCP; qrelay also over QUIC): publishers,
    /// players, latency, loss, server CPU and memory.
    Bench(qrelay::bench::BenchArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file (every key optional; see README).
    #[arg(long, env = "QRELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address and port for both TCP (RTMP) and UDP (QUIC).
    #[arg(long, env = "QRELAY_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain (with --key); without it a development CA is used.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Directory of the development CA and certificate.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// How long a player waits for a publisher, in milliseconds.
    #[arg(long)]
    play_wait_ms: Option<u64>,
    /// QUIC congestion controller (bbr, cubic, newreno).
    #[arg(long, env = "QRELAY_QUIC_CONGESTION")]
    quic_congestion: Option<Congestion>,
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
}

impl TrustArgs {
    fn options(&self) -> ClientOptions {
        let trust = match (&self.ca, self.insecure) {
            (_, true) => Trust::Insecure,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => Trust::WebPki,
        };
        let mut opts = ClientOptions { trust, ..ClientOptions::default() };
        opts.config.quic_congestion = self.quic_congestion;
        opts
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Publish { file, url, looped, trust } => {
            let url = StreamUrl::parse(&url).with_context(|| format!("bad URL `{url}`"))?;
            let t =
                client::publish_flv(&url, &trust.options(), &file, PublishOptions { looped, unpaced: false })
                    .await?;
            info!(messages = t.messages, bytes = t.bytes, "publish finished");
            Ok(())
        }
        Command::Play { url, output, duration, arrivals, trust } => {
            let url = StreamUrl::parse(&url).with_context(|| format!("bad URL `{url}`"))?;
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
        Command::Bench(args) => {
            let json = args.json.clone();
            let report = qrelay::bench::run(args).await?;
            print!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, report.to_json())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let (Some(cert), Some(key)) = (args.cert, args.key) {
        config.cert = Some(cert);
        config.key = Some(key);
    }
    if let Some(dir) = args.cert_dir {
        config.cert_dir = dir;
    }
    if let Some(ms) = args.play_wait_ms {
        config.play_wait_ms = ms;
    }
    if let Some(cc) = args.quic_congestion {
        config.quic_congestion = cc;
    }
    let server = qrelay::Server::bind(config).await?;
    let shutdown = Shutdown::default();
    tokio::spawn(watch_signals(shutdown.clone()));
    server.run(shutdown).await
}

/// SIGTERM: graceful (a second one: immediate). SIGINT: immediate.
async fn watch_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return warn!("cannot install signal handlers"),
    };
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
}
